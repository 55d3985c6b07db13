//! A real postsrsd for the SRS tests: found or installed with apt, started on loopback ports
//! (under libfaketime when a fixed time is wanted), asked through Postfix's tcp_table protocol,
//! and cleaned up without leaving processes behind.

pub mod vectors;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DAY: u64 = 86_400;

/// postsrsd's answer to one lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(String),
    /// postsrsd's `500` message, verbatim.
    Refused(String),
}

/// Finds postsrsd, installing it (and libfaketime) with apt when missing and possible.
/// `None` only where apt cannot be used (not root, or no apt-get).
pub fn postsrsd_binary() -> Option<PathBuf> {
    let find = || {
        [
            "/usr/sbin/postsrsd",
            "/usr/bin/postsrsd",
            "/usr/local/sbin/postsrsd",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    };
    if find().is_none() || faketime_lib().is_none() {
        apt_install(&["postsrsd", "faketime"]);
    }
    find()
}

pub fn faketime_lib() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
}

pub fn apt_install(packages: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !install() {
            eprintln!("apt-get install {} failed", packages.join(" "));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One postsrsd daemon on loopback, speaking Postfix's tcp_table protocol
/// (`get <key>` -> `200 <value>` | `500 <reason>`), killed on drop.
pub struct PostSrsd {
    pub child: Child,
    pub forward: Option<BufReader<TcpStream>>,
    pub reverse: Option<BufReader<TcpStream>>,
    pub _dir: tempfile::TempDir,
}

pub struct DaemonSpec<'a> {
    pub secrets: &'a [String],
    pub domain: &'a str,
    pub hash_length: usize,
    pub exclude: &'a [String],
    /// Unix time postsrsd sees (through libfaketime); `None`: the real clock.
    pub fake_now: Option<u64>,
}

impl PostSrsd {
    pub fn start(binary: &Path, spec: &DaemonSpec) -> PostSrsd {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, spec.secrets.join("\n") + "\n").unwrap();
        // The forward port is tried first so that a clash on either shows up as a failed start.
        for _attempt in 0..5 {
            let (fport, rport) = (free_port(), free_port());
            let mut cmd = Command::new(binary);
            cmd.arg(format!("-s{}", secret_file.display()))
                .arg(format!("-d{}", spec.domain))
                .arg("-l127.0.0.1")
                .arg(format!("-f{fport}"))
                .arg(format!("-r{rport}"))
                .arg(format!("-n{}", spec.hash_length))
                .arg(format!("-N{}", spec.hash_length))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if !spec.exclude.is_empty() {
                cmd.arg(format!("-X{}", spec.exclude.join(",")));
            }
            if let Some(now) = spec.fake_now {
                let lib = faketime_lib().expect("libfaketime is needed for a fixed time");
                cmd.env("LD_PRELOAD", lib)
                    .env("TZ", "UTC")
                    .env("FAKETIME", time_of(now))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            let mut child = cmd.spawn().expect("spawn postsrsd");
            let deadline = Instant::now() + Duration::from_secs(10);
            let connected = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break None; // exited: most likely a port clash
                }
                if let (Ok(f), Ok(r)) = (
                    TcpStream::connect(("127.0.0.1", fport)),
                    TcpStream::connect(("127.0.0.1", rport)),
                ) {
                    break Some((f, r));
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match connected {
                Some((f, r)) => {
                    for s in [&f, &r] {
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    }
                    return PostSrsd {
                        child,
                        forward: Some(BufReader::new(f)),
                        reverse: Some(BufReader::new(r)),
                        _dir: dir,
                    };
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("postsrsd did not start");
    }

    pub fn query(conn: &mut BufReader<TcpStream>, key: &str) -> Outcome {
        assert!(
            key.bytes().all(|b| b.is_ascii_graphic() && b != b'%'),
            "keep test keys free of url-encoding: {key}"
        );
        conn.get_mut()
            .write_all(format!("get {key}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("200", v)) => Outcome::Ok(url_decode(v)),
            Some(("500", m)) => Outcome::Refused(m.to_string()),
            _ => panic!("postsrsd answered {line:?}"),
        }
    }

    pub fn forward(&mut self, addr: &str) -> Outcome {
        Self::query(self.forward.as_mut().unwrap(), addr)
    }

    pub fn reverse(&mut self, addr: &str) -> Outcome {
        Self::query(self.reverse.as_mut().unwrap(), addr)
    }
}

impl Drop for PostSrsd {
    fn drop(&mut self) {
        // Closing the connections ends postsrsd's per-connection processes; once the daemon is
        // killed they are re-parented to this process (a subreaper), which reaps them.
        self.forward.take();
        self.reverse.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        reap_orphaned_postsrsd();
    }
}

/// postsrsd forks a process per connection and reaps them lazily; killing the daemon orphans
/// them. As a child subreaper this test process inherits them instead of init (which, in a
/// container, may never reap), so a test run leaves no zombies behind.
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag on this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

/// Reaps this process's postsrsd children left over from killed daemons (and only those).
pub fn reap_orphaned_postsrsd() {
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut alive = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let mut fields = tail.split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            if !head.ends_with("(postsrsd") || ppid != Some(&me.to_string()) {
                continue;
            }
            if state == Some("Z") {
                // SAFETY: pid is a zombie child of this process; waitpid only reaps it.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            } else {
                alive += 1;
            }
        }
        if alive == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, the format libfaketime takes.
pub fn time_of(secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (secs / DAY) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % DAY;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
