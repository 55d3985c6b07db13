//! The relay as attackers try it: SMTP smuggling sequences from the public tool lists, control
//! bytes in commands, pipelining floods and password guessing, over real SMTP on loopback, with
//! a deliberately lenient next hop (it also ends data at "\n.\n", as vulnerable servers do) so
//! that anything smuggled through would show up there as a second transaction.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{provision_acme, python, Relay};
use relayward_testkit::SmtpSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The end-of-data look-alikes of the published SMTP smuggling research and tools
/// (SEC Consult, December 2023; CVE-2023-51764/51765/51766), each followed by a pipelined
/// second transaction with a registered sender the attacker does not own.
const SEQUENCES: &[(&str, &[u8])] = &[
    ("LF.LF", b"\n.\n"),
    ("LF.CR", b"\n.\r"),
    ("CR.LF", b"\r.\n"),
    ("CR.CR", b"\r.\r"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CRLF.CRCRLF", b"\r\n.\r\r\n"),
    ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
    ("CRLF NUL.CRLF", b"\r\n\x00.\r\n"),
];

const SMUGGLED: &[u8] = b"MAIL FROM:<ceo@acme.example>\r\nRCPT TO:<victim@dest.example>\r\nDATA\r\nFrom: <ceo@acme.example>\r\nSubject: smuggled\r\n\r\nPay the invoice.\r\n";

async fn read_until_close(s: &mut BufReader<TcpStream>) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_replies(s: &mut BufReader<TcpStream>, n: usize) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .count()
        < n
    {
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(k > 0, "closed; got {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
    got
}

/// One session: a message whose body holds `seq` and then a smuggled transaction, ended by a
/// real CRLF.CRLF, then QUIT. Returns everything the relay answered after the 354.
async fn smuggle(addr: SocketAddr, seq: &[u8]) -> String {
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read_replies(&mut s, 1).await;
    s.get_mut()
        .write_all(b"EHLO attacker.test\r\n")
        .await
        .unwrap();
    read_replies(&mut s, 1).await;
    s.get_mut()
        .write_all(b"MAIL FROM:<user@acme.example>\r\nRCPT TO:<rcpt@dest.example>\r\nDATA\r\n")
        .await
        .unwrap();
    let r = read_replies(&mut s, 3).await;
    assert!(r.contains("354"), "{r}");
    let mut blob = b"From: <user@acme.example>\r\nSubject: carrier\r\n\r\nfirst line".to_vec();
    blob.extend_from_slice(seq);
    blob.extend_from_slice(SMUGGLED);
    blob.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    s.get_mut().write_all(&blob).await.unwrap();
    read_until_close(&mut s).await
}

fn queued(replies: &str) -> usize {
    replies.matches("250 2.0.0 Ok: queued as").count()
}

fn has_bare_cr_or_lf(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
            || (b == b'\r' && data.get(i + 1) != Some(&b'\n'))
    })
}

fn relay(sink: &SmtpSink, limits: &str) -> Relay {
    let mut r = Relay::new(&format!(
        "[delivery]\nsmart_host = \"{}\"\nretry_schedule_secs = [1]\n\n[limits]\n{limits}\n",
        sink.addr()
    ));
    provision_acme(&r);
    r.start();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_yield_one_clean_message_each() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let relay = relay(&sink, "");
    for (name, seq) in SEQUENCES {
        let replies = smuggle(relay.addr, seq).await;
        assert_eq!(queued(&replies), 1, "{name}: relay answered {replies:?}");
        assert!(replies.contains("221"), "{name}: {replies:?}");
    }
    // A transaction pipelined after a real CRLF.CRLF is a transaction of its own, and the
    // relay rule applies to it like to any other (here the sender is registered: accepted).
    let replies = smuggle(relay.addr, b"\r\n.\r\n").await;
    assert_eq!(queued(&replies), 2, "control: {replies:?}");

    let n = SEQUENCES.len() + 2;
    let got = sink.wait_for(n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_all = sink.transactions();
    assert_eq!(got_all.len(), n, "next hop saw extra transactions");
    assert_eq!(got.len(), n);
    let from_ceo = got_all
        .iter()
        .filter(|m| m.mail_from == "ceo@acme.example")
        .count();
    assert_eq!(
        from_ceo, 1,
        "only the control's legitimate second transaction"
    );
    for m in &got_all {
        assert!(m.accepted());
        assert!(
            !has_bare_cr_or_lf(&m.data),
            "bare CR/LF reached the next hop: {:?}",
            m.data_text()
        );
    }
    // Normalisation is counted in the trace.
    let trace = relay.ok(&["trace", "--tenant", "acme", "--json"]);
    assert!(trace.contains("bare_line_ends="), "{trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_line_ends_rejected_by_policy_keep_nothing() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let relay = relay(&sink, "bare_line_ends = \"reject\"");
    for (name, seq) in SEQUENCES {
        let replies = smuggle(relay.addr, seq).await;
        if name.contains("NUL") {
            // No bare CR or LF in this one: only the NUL, which is content.
            assert_eq!(queued(&replies), 1, "{name}: {replies:?}");
            continue;
        }
        assert_eq!(queued(&replies), 0, "{name}: {replies:?}");
        assert!(
            replies.contains("550 5.5.2 Bare CR or LF not allowed"),
            "{name}: {replies:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.transactions().len(), 1);
    let queue = relay.ok(&["queue", "list", "--json"]);
    assert!(!queue.contains("user@acme.example"), "{queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_and_pipelining_floods() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let relay = relay(&sink, "max_pipelined = 20");
    let mut s = BufReader::new(TcpStream::connect(relay.addr).await.unwrap());
    read_replies(&mut s, 1).await;
    for line in [
        &b"EHLO bad\x00host.test\r\n"[..],
        b"EHLO bad\x01host\r\n",
        b"NOOP \x7f\r\n",
        b"MAIL FROM:<user@acme.example>\x00 SIZE=10\r\n",
        b"EHLO a\rb\r\n",
    ] {
        s.get_mut().write_all(line).await.unwrap();
        let r = read_replies(&mut s, 1).await;
        assert!(r.starts_with("500 5.5.2"), "{line:?}: {r}");
    }
    // A clean EHLO still works.
    s.get_mut().write_all(b"EHLO good.test\r\n").await.unwrap();
    assert!(read_replies(&mut s, 1).await.contains("250 DSN"));

    // A large pipelined group of recipients is fine...
    let mut group = b"MAIL FROM:<user@acme.example>\r\n".to_vec();
    for i in 0..60 {
        group.extend_from_slice(format!("RCPT TO:<r{i}@dest.example>\r\n").as_bytes());
    }
    group.extend_from_slice(b"RSET\r\n");
    s.get_mut().write_all(&group).await.unwrap();
    let r = read_replies(&mut s, 62).await;
    assert_eq!(r.matches("250 2.1.5").count(), 60, "{r}");
    // ...a flood of other commands sent ahead of our replies is not.
    let flood = b"NOOP\r\n".repeat(50);
    s.get_mut().write_all(&flood).await.unwrap();
    let rest = read_until_close(&mut s).await;
    assert!(
        rest.contains("421 4.7.0 Too many pipelined commands"),
        "{rest}"
    );
    assert!(rest.matches("250 2.0.0 Ok").count() <= 20, "{rest}");
}

// ---------------------------------------------------------------------------------------------
// Password guessing, driven by Python's smtplib over STARTTLS.

/// Records the body of every HTTP POST it gets (the alert webhook).
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        b.lock().unwrap().push(body.to_string());
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        break;
                    }
                }
            }
        }
    });
    (url, bodies)
}

/// One AUTH attempt per argument `user:password[@source_ip]`, each on a fresh STARTTLS
/// session; prints the reply code of each (235, 535, 454...).
const SMTPLIB_LOGINS: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
for spec in sys.argv[2:]:
    cred, _, src = spec.partition("@")
    user, _, password = cred.partition(":")
    s = smtplib.SMTP("127.0.0.1", port, source_address=(src or "127.0.0.1", 0), timeout=20)
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("printer.test")
    # One AUTH PLAIN per attempt (login() would retry with LOGIN after a 535).
    s.user, s.password = user, password
    try:
        s.auth("PLAIN", s.auth_plain)
        print(235)
    except smtplib.SMTPAuthenticationError as e:
        print(e.smtp_code)
    except smtplib.SMTPResponseException as e:
        print(e.smtp_code)
    s.quit()
"#;

/// A server certificate for `relay.test` and its key, written under `dir`.
fn server_cert_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let server = relayward_testkit::TestPki::new().issue_server(&["relay.test"]);
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, &server.chain_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    (cert, key)
}

#[test]
fn password_guessing_is_locked_out_audited_and_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_cert_files(dir.path());
    let tls_port = common::free_port();
    let (hook, posts) = webhook_receiver();
    let mut relay = Relay::new(&format!(
        "[limits]\nauth_max_failures = 5\nauth_lockout_secs = 4\n\n[alerts]\nwebhook_url = \"{hook}\"\n\n[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    provision_acme(&relay);
    const GOOD: &str = "correct horse battery staple";
    let out = relay.cli(&[
        "connector",
        "add",
        "acme",
        "--name",
        "printers",
        "--kind",
        "on-premises",
        "--auth-user",
        "printer",
        "--auth-password",
        GOOD,
    ]);
    assert!(out.status.success());
    relay.start();
    common::wait_for_port(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        &relay.log_path(),
    );
    let port = tls_port.to_string();
    let good = format!("printer:{GOOD}");
    let mut attempts: Vec<String> = (0..5).map(|i| format!("printer:guess{i}")).collect();
    // Locked now: the right password from the same address, another user from the same
    // address, the right password from another address (the user is locked too).
    attempts.push(good.clone());
    attempts.push("nobody:whatever".into());
    attempts.push(format!("{good}@127.0.0.2"));
    // Another user from another address is not affected.
    attempts.push("other:whatever@127.0.0.3".into());
    let args: Vec<&str> = std::iter::once(port.as_str())
        .chain(attempts.iter().map(|s| s.as_str()))
        .collect();
    let Some(codes) = python(SMTPLIB_LOGINS, &args) else {
        return;
    };
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(
        codes,
        ["535", "535", "535", "535", "535", "454", "454", "454", "535"],
        "{}",
        relay.log()
    );
    // The lock lasts the window, then the right password works again.
    std::thread::sleep(Duration::from_secs(5));
    let codes = python(SMTPLIB_LOGINS, &[port.as_str(), good.as_str()]).unwrap();
    assert_eq!(codes.trim(), "235");

    let audit = relay.ok(&["audit", "--tenant", "acme"]);
    assert!(audit.contains("auth.lockout"), "{audit}");
    assert!(audit.contains("127.0.0.1"), "{audit}");
    let list = relay.ok(&["connector", "list", "acme"]);
    let printers = list.lines().find(|l| l.contains("printers")).unwrap();
    assert!(printers.contains("auth-locked"), "{list}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = posts.lock().unwrap().clone();
        if let Some(p) = got
            .iter()
            .find(|p| p.contains("Suspicious authentication failures"))
        {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            assert_eq!(v["client_ip"], "127.0.0.1");
            assert_eq!(v["user"], "printer");
            assert_eq!(v["failures"], 5);
            assert_eq!(v["tenant"]["name"], "acme");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no alert; posts: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing secret in what the relay wrote or answered.
    let everything = format!(
        "{}{}{}{}",
        relay.log(),
        audit,
        posts.lock().unwrap().join("\n"),
        relay.ok(&["trace", "--json"])
    );
    for secret in [GOOD, "guess0", "guess4"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

// ---------------------------------------------------------------------------------------------
// Resource faults.

#[test]
fn disk_full_answers_452_keeps_nothing_and_recovers() {
    let mut relay =
        Relay::new("[delivery]\nsmart_host = \"127.0.0.1:9\"\nretry_schedule_secs = [3600]\n");
    provision_acme(&relay);
    let spool = relay.data_dir().join("spool");
    let Some(_fs) = common::SmallFs::mount(&spool, "4m") else {
        return;
    };
    relay.start();
    let body = format!(
        "From: <user@acme.example>\r\nSubject: big\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(1000)
    );
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    let filler = common::fill(&spool);
    let r = c.send("user@acme.example", &["rcpt@dest.example"], &body);
    assert_eq!(
        r,
        "452 4.3.1 Insufficient system storage",
        "{}",
        relay.log()
    );
    // Nothing half-written is left behind, and nothing is queued.
    let leftovers: Vec<_> = walk(&spool)
        .into_iter()
        .filter(|p| p != &filler && p.is_file() && !p.ends_with("lock"))
        .collect();
    let queue = relay.ok(&["queue", "list", "--json"]);
    assert!(!queue.contains("user@acme.example"), "{queue}");
    // Space returns: the very next message is accepted, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = c.send("user@acme.example", &["rcpt@dest.example"], &body);
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        leftovers
            .iter()
            .all(|p| !p.to_string_lossy().contains("/tmp/")),
        "left in the spool's tmp: {leftovers:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let trace = relay.ok(&["trace", "--tenant", "acme", "--json"]);
        if trace.contains("reason=storage_full") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{trace}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn store_locked_the_relay_keeps_accepting_on_its_directory() {
    let mut relay =
        Relay::new("[delivery]\nsmart_host = \"127.0.0.1:9\"\nretry_schedule_secs = [3600]\n");
    provision_acme(&relay);
    relay.start();
    let db = relay.data_dir().join("relayward.db");
    // Another process holds the database's write lock for the whole session.
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(30)\n")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    for i in 0..3 {
        let r = c.send(
            "user@acme.example",
            &["rcpt@dest.example"],
            &common::message(
                "user@acme.example",
                "rcpt@dest.example",
                &format!("locked{i}"),
            ),
        );
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    // Attribution and the relay rule still answer from memory.
    assert!(c
        .cmd("MAIL FROM:<x@unregistered.example>")
        .starts_with("550 5.7.64"));
    let _ = locker.kill();
    let _ = locker.wait();
}

// ---------------------------------------------------------------------------------------------
// Secrets stay secret.

/// AUTH (right and wrong), admin API calls (right and wrong token, a connector password set),
/// an SRS-rewritten message and a DKIM-signed one, all at debug log level; then every secret is
/// looked for in everything the relay wrote or answered.
const SECRETS_CLIENT: &str = r#"
import json, smtplib, ssl, sys, urllib.request
port, api, token, smtp_pw, wrong_pw, api_pw = sys.argv[1:7]
seen = []
for pw in (smtp_pw, wrong_pw):
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=20)
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("printer.test")
    s.user, s.password = "printer", pw
    try:
        seen.append(repr(s.auth("PLAIN", s.auth_plain)))
        seen.append(repr(s.sendmail("user@acme.example", ["rcpt@dest.example"],
            "From: <user@acme.example>\r\nSubject: signed\r\n\r\nhi\r\n")))
    except smtplib.SMTPException as e:
        seen.append(repr(e))
    s.quit()
s = smtplib.SMTP("127.0.0.1", int(port), source_address=("127.0.0.2", 0), timeout=20)
s.ehlo("fwd.test")
seen.append(repr(s.sendmail("someone@outside.example", ["rcpt@dest.example"],
    "From: <someone@outside.example>\r\nSubject: fwd\r\n\r\nhi\r\n")))
s.quit()
def call(method, path, tok, body=None):
    req = urllib.request.Request(api + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
seen.append(call("GET", "/v1/tenants", token))
seen.append(call("GET", "/v1/tenants", token[:-4] + "XXXX"))
seen.append(call("GET", "/v1/tenants", "rw_999_" + wrong_pw))
seen.append(call("POST", "/v1/tenants/1/connectors", token,
    {"name": "viaapi", "kind": "on-premises", "auth_user": "apiuser", "auth_password": api_pw}))
seen.append(call("POST", "/v1/tenants/1/connectors", token,
    {"name": "short", "kind": "on-premises", "auth_user": "shortuser", "auth_password": "x" + wrong_pw[:3]}))
print(json.dumps(seen))
"#;

#[test]
fn secrets_never_reach_logs_traces_replies_or_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_cert_files(dir.path());
    let tls_port = common::free_port();
    let (hook, posts) = webhook_receiver();
    const SRS_SECRET: &str = "srs-secret-Qx7pLm2Vw9";
    const SMTP_PW: &str = "printer password Zk81Hq";
    const WRONG_PW: &str = "wrong guess Pw55Jn";
    const API_PW: &str = "api connector password Rt63Bv";
    let mut relay = Relay::new(&format!(
        "[delivery]\nsmart_host = \"127.0.0.1:9\"\nretry_schedule_secs = [3600]\n\n[srs]\ndomain = \"srs.relay.test\"\nsecrets = [\"{SRS_SECRET}\"]\n\n[alerts]\nwebhook_url = \"{hook}\"\nwebhook_secret = \"hook-secret-Hh44Ww\"\n\n[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    provision_acme(&relay);
    relay.ok(&[
        "connector",
        "add",
        "acme",
        "--name",
        "printers",
        "--kind",
        "on-premises",
        "--auth-user",
        "printer",
        "--auth-password",
        SMTP_PW,
    ]);
    relay.ok(&[
        "connector",
        "add",
        "acme",
        "--name",
        "fwd",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.2/32",
        "--allow-unregistered",
    ]);
    relay.ok(&["domain", "dkim-key", "acme", "acme.example"]);
    let token_out = relay.ok(&["token", "create", "--operator", "--label", "ops"]);
    let token = token_out.lines().last().unwrap().trim().to_string();
    let token_secret = token.splitn(3, '_').nth(2).unwrap().to_string();
    assert!(token_secret.len() >= 16, "{token}");
    let dkim_key: String = walk(&relay.data_dir().join("dkim"))
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|k| {
            k.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 20)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!dkim_key.is_empty(), "no DKIM key written");
    relay.start_with_env(&[("RUST_LOG", "debug")]);
    common::wait_for_port(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        &relay.log_path(),
    );
    let api = format!("http://{}", relay.admin_addr);
    let port = tls_port.to_string();
    let Some(answers) = python(
        SECRETS_CLIENT,
        &[&port, &api, &token, SMTP_PW, WRONG_PW, API_PW],
    ) else {
        return;
    };
    assert!(answers.contains("235"), "{answers}");
    assert!(answers.contains("viaapi"), "the API call worked: {answers}");
    std::thread::sleep(Duration::from_millis(2500));
    let mut everything = vec![
        ("answers", answers),
        ("log", relay.log()),
        ("trace", relay.ok(&["trace", "--limit", "1000", "--json"])),
        ("audit", relay.ok(&["audit"])),
        (
            "connectors",
            relay.ok(&["connector", "list", "acme", "--json"]),
        ),
        ("queue", relay.ok(&["queue", "list", "--json"])),
        ("alerts", posts.lock().unwrap().join("\n")),
    ];
    // The spooled messages' envelopes (not their DKIM-signed bodies, which carry signatures).
    for p in walk(&relay.data_dir().join("spool")) {
        if p.extension().is_some_and(|e| e == "env" || e == "json") {
            everything.push(("envelope", std::fs::read_to_string(&p).unwrap_or_default()));
        }
    }
    assert!(
        everything[1].1.contains("DEBUG"),
        "the relay logged at debug level"
    );
    assert!(
        everything[2].1.contains("srs: envelope sender rewritten"),
        "the SRS secret was used: {}",
        everything[2].1
    );
    let mut secrets = vec![
        ("SMTP password", SMTP_PW.to_string()),
        ("wrong password", WRONG_PW.to_string()),
        ("API connector password", API_PW.to_string()),
        ("token secret", token_secret),
        ("SRS secret", SRS_SECRET.to_string()),
        ("webhook secret", "hook-secret-Hh44Ww".to_string()),
    ];
    for line in dkim_key.lines() {
        secrets.push(("DKIM private key", line.to_string()));
    }
    for (what, secret) in &secrets {
        for (place, text) in &everything {
            assert!(!text.contains(secret.as_str()), "{what} found in {place}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS: certificates reloaded on SIGHUP and when their files change, sessions kept.

/// Opens a STARTTLS session and prints the SHA-256 of the server certificate; with "hold",
/// waits for a line on stdin, then sends NOOP on the same session and prints the reply.
const TLS_PROBE: &str = r#"
import hashlib, smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.starttls(context=ssl._create_unverified_context())
print(hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest(), s.sock.version(), flush=True)
if len(sys.argv) > 2:
    sys.stdin.readline()
    print(s.noop()[0], flush=True)
s.quit()
"#;

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn tls_certificates_reload_without_dropping_sessions() {
    use std::io::{BufRead, Write};
    let pki = relayward_testkit::TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let install = |c: &relayward_testkit::IssuedCert| {
        std::fs::write(&cert, &c.chain_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
    };
    let (a, b, c) = (
        pki.issue_server(&["a.relay.test"]),
        pki.issue_server(&["b.relay.test"]),
        pki.issue_server(&["c.relay.test"]),
    );
    install(&a);
    let tls_port = common::free_port();
    let mut relay = Relay::new(&format!(
        "[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    relay.start();
    common::wait_for_port(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        &relay.log_path(),
    );
    let port = tls_port.to_string();
    let probe = || -> Option<String> {
        let out = python(TLS_PROBE, &[&port])?;
        Some(out.split_whitespace().next().unwrap().to_string())
    };
    let Some(first) = probe() else { return };
    assert_eq!(first, sha256_hex(&a.cert_der()));
    // A session opened before the change goes on after it.
    let mut held = std::process::Command::new("python3")
        .arg("-c")
        .arg(TLS_PROBE)
        .args([port.as_str(), "hold"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    held_out.read_line(&mut line).unwrap();
    assert!(line.contains("TLSv1.3"), "TLS 1.3 negotiated: {line}");

    // The files change: picked up within a few seconds.
    install(&b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe().unwrap() != sha256_hex(&b.cert_der()) {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    writeln!(held.stdin.as_mut().unwrap()).unwrap();
    let mut noop = String::new();
    held_out.read_line(&mut noop).unwrap();
    assert_eq!(noop.trim(), "250", "the older session was kept");
    held.wait().unwrap();

    // A broken certificate on SIGHUP: the previous one stays, and the log says why.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot a certificate\n").unwrap();
    let pid = relay.pid().unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(probe().unwrap(), sha256_hex(&b.cert_der()));
    assert!(
        relay
            .log()
            .contains("TLS reload failed; the previous certificate stays in use"),
        "{}",
        relay.log()
    );
    // A good one on SIGHUP: at once.
    install(&c);
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while probe().unwrap() != sha256_hex(&c.cert_der()) {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A bounce coming back through the SRS listener while the spool's file system is full gets
/// `452 4.3.1`, as on the DATA path (not `451 4.3.0`), and is taken once there is room.
#[test]
fn disk_full_on_the_srs_listener_answers_452_too() {
    let srs_port = common::free_port();
    let mut relay = Relay::new(&format!(
        "[[listener]]\naddress = \"127.0.0.1:{srs_port}\"\nrole = \"srs\"\n\n\
         [srs]\ndomain = \"srs.relay.test\"\nsecrets = [\"disk-full-secret\"]\n\n\
         [delivery]\nsmart_host = \"127.0.0.1:9\"\nretry_schedule_secs = [3600]\n"
    ));
    let spool = relay.data_dir().join("spool");
    let Some(_fs) = common::SmallFs::mount(&spool, "4m") else {
        return;
    };
    relay.start();
    let srs_addr: SocketAddr = format!("127.0.0.1:{srs_port}").parse().unwrap();
    common::wait_for_port(srs_addr, &relay.log_path());
    let srs = relay.ok(&["srs", "forward", "alice@orig.example"]);
    let srs = srs.trim();
    assert!(srs.ends_with("@srs.relay.test"), "{srs}");
    let bounce = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.dest.example>\r\nTo: <{srs}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(1000)
    );
    let mut c = common::Client::connect(srs_addr);
    c.cmd("EHLO mx.dest.example");
    let filler = common::fill(&spool);
    let r = c.send("", &[srs], &bounce);
    assert_eq!(
        r,
        "452 4.3.1 Insufficient system storage",
        "{}",
        relay.log()
    );
    std::fs::remove_file(&filler).unwrap();
    let r = c.send("", &[srs], &bounce);
    assert!(r.starts_with("250 2.0.0"), "{r}");
}
