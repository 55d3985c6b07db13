//! Runs the real `relayward` binary: CLI commands against a temporary data directory, and
//! `serve` as a child process that tests can SIGKILL and restart.
#![allow(dead_code)]

pub mod in_process;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_relayward");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    /// The admin API's listener.
    pub admin_addr: SocketAddr,
    child: Option<Child>,
}

impl Relay {
    /// A relay on a free loopback port with its own data directory. `extra` is appended to the
    /// generated TOML (e.g. a `[delivery]` section).
    pub fn new(extra: &str) -> Relay {
        Relay::with_server_keys("directory_poll_ms = 200\n", extra)
    }

    /// [`Relay::new`] with `server_keys` as the rest of its `[server]` section.
    pub fn with_server_keys(server_keys: &str, extra: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("relayward.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nhostname = \"relay.test\"\ndata_dir = \"{}\"\n{server_keys}\n[[listener]]\naddress = \"{addr}\"\n\n[admin]\naddress = \"{admin_addr}\"\n\n{extra}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        Relay {
            dir,
            config,
            addr,
            admin_addr,
            child: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RELAYWARD_AUTH_PASSWORD")
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "relayward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// `start` with extra environment variables for the relay (e.g. `RUST_LOG`).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        self.start_with(&[], env);
    }

    /// `start` with arguments after `serve` and extra environment variables.
    pub fn start_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.addr, &self.log_path());
    }

    /// The running relay's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            c.kill().ok();
            c.wait().ok();
            panic!("relay did not stop on SIGTERM");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for_port(addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "relay did not listen on {addr}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A deliberately small blocking SMTP client: one line out, one reply in.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).unwrap())
    }

    /// From a given loopback source address (connectors are told apart by it).
    pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> Client {
        Client::over(connect_from(addr, source))
    }

    fn over(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Each command is one write: no waiting for the previous one's ACK (Nagle).
        s.set_nodelay(true).unwrap();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        c
    }

    /// The whole reply, lines joined with '\n'.
    pub fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            let line = line.trim_end().to_string();
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            all.push(line);
            if last {
                return all.join("\n");
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    /// MAIL, RCPTs and DATA; returns the final reply (or the first refusal).
    pub fn send(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if !r.starts_with("250") {
            return r;
        }
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            if !r.starts_with("250") {
                self.cmd("RSET");
                return r;
            }
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        self.writer.write_all(body.as_bytes()).unwrap();
        self.cmd("\r\n.")
    }
}

/// A TCP connection to `addr` from `source` (port chosen by the kernel).
pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned here, handed to TcpStream at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sockaddr(source, 0);
        let r = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*to.ip(), to.port());
        let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// `GET path` on `addr` over plain HTTP/1.1: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nHello.\r\n"
    )
}

/// Set up tenant `acme` with a verified domain and an IP connector for 127.0.0.1.
pub fn provision_acme(relay: &Relay) {
    relay.ok(&[
        "tenant",
        "add",
        "acme",
        "--admin-email",
        "admin@acme.example",
    ]);
    relay.ok(&["domain", "add", "acme", "acme.example", "--verified"]);
    relay.ok(&[
        "connector",
        "add",
        "acme",
        "--name",
        "onprem",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.1/32",
    ]);
}

/// Runs `script` with python3 (the real clients: smtplib, urllib). `None`, after printing
/// SKIPPED, when python3 is missing on a developer machine; under CI that fails.
pub fn python(script: &str, args: &[&str]) -> Option<String> {
    let out = match Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("SKIPPED: python3 not available ({e})");
            return None;
        }
        Err(e) => panic!("python3: {e}"),
    };
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Postfix's command directory (`postfix`, `sendmail`, `postqueue`), if Postfix is installed.
pub fn postfix_commands() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let postconf = ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("postconf"))
        .find(|p| p.is_file())?;
    let out = Command::new(postconf)
        .args(["-d", "-h", "command_directory"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    ["postfix", "sendmail", "postqueue"]
        .iter()
        .all(|c| dir.join(c).is_file())
        .then_some(dir)
}

/// A small tmpfs mounted over a directory of the relay's (needs root, as CI runs); `None`,
/// after SKIPPED, elsewhere than under CI.
pub struct SmallFs(pub std::path::PathBuf);

impl SmallFs {
    pub fn mount(path: &std::path::Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallFs(path.to_path_buf()));
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (CI runs as root)"
        );
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` to the last byte.
pub fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..1]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// The master.cf services a test's Postfix instance needs besides its SMTP ones (nothing
/// chrooted, nothing delivered locally).
pub const POSTFIX_SERVICES: &str = r#"pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"#;

/// Postfix's command directory when a test can run Postfix here (installed, and root: its
/// master runs as root); else `None` after printing SKIPPED, which fails under CI.
pub fn postfix_or_skip() -> Option<PathBuf> {
    let Some(commands) = postfix_commands() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "postfix is not installed, and CI must run this test (apt-get install postfix)"
        );
        println!("SKIPPED: postfix not installed (apt-get install postfix)");
        return None;
    };
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Postfix tests need root (Postfix's master runs as root), and CI must run them"
        );
        println!("SKIPPED: the Postfix tests need root");
        return None;
    }
    Some(commands)
}
