//! A real Postfix as a tenant's on-premises server (issue 10): its own instance in a temporary
//! directory, relaying everything through relayward's TLS listener with a client certificate
//! for its host name `mail.contoso.example`, which the tenant's certificate connector names.
//!
//! ```text
//! sendmail -C DIR ──► Postfix (mail.contoso.example) ──STARTTLS + client cert──► relayward
//!                        │ NDRs for its senders                                      │ smart_host
//!                        ▼                                                           ▼
//!                   `mailboxes` sink                                           `next_hop` sink
//! ```
//!
//! Postfix has no smtpd and delivers nothing locally: mail is submitted with its `sendmail`,
//! and the NDRs it generates for `someone@outside.example` and `cron@mail.contoso.example`
//! (the senders' mailboxes) go through a transport map straight to the `mailboxes` sink, where
//! the test reads them. Needs root (Postfix's master runs as root) and the Debian package
//! `postfix`; without it the test says SKIPPED, or fails under CI.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{postfix_or_skip, Relay};
use relayward_testkit::{IssuedCert, Received, SmtpClient, SmtpSink, TestPki};

/// The Postfix server's host name, and the name on its certificate and the connector.
const HOST: &str = "mail.contoso.example";
const BLOCKED: &str =
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains";
/// How long one step may take (Postfix queue runs, relayward's delivery).
const STEP: Duration = Duration::from_secs(60);

/// One Postfix instance with its own configuration and queue directories; stopped on drop.
struct Postfix {
    dir: tempfile::TempDir,
    commands: PathBuf,
    running: bool,
}

impl Postfix {
    /// Writes main.cf and master.cf and starts the instance. `relayhost`: relayward's TLS
    /// listener; `mailboxes`: where the NDRs for its senders are delivered.
    fn start(
        commands: PathBuf,
        relayhost: SocketAddr,
        mailboxes: SocketAddr,
        cert: &IssuedCert,
        ca_pem: &str,
    ) -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("relayward-postfix-")
            .tempdir()
            .unwrap();
        // The postfix user must reach its queue directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut postfix = Postfix {
            dir,
            commands,
            running: false,
        };
        let root = postfix.dir.path().to_path_buf();
        let etc = postfix.config_dir();
        std::fs::create_dir(&etc).unwrap();
        // Postfix creates the queue's subdirectories itself, but not the queue directory.
        std::fs::create_dir(root.join("queue")).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = etc.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let cert_file = write("host.pem", &cert.chain_pem, 0o644);
        let key_file = write("host.key", &cert.key_pem, 0o600);
        let ca_file = write("ca.pem", ca_pem, 0o644);
        // The senders' mailboxes, as far as this test is concerned.
        let transport = write(
            "transport",
            &format!(
                "outside.example mailboxes:[{ip}]:{port}\n{HOST} mailboxes:[{ip}]:{port}\n",
                ip = mailboxes.ip(),
                port = mailboxes.port()
            ),
            0o644,
        );
        write(
            "main.cf",
            &format!(
                r#"# A tenant's on-premises Postfix, written by crates/relayward/tests/postfix.rs.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/maillog
maillog_file_prefixes = {root}

myhostname = {HOST}
mydomain = contoso.example
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Nothing is delivered locally.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =

# Everything goes to relayward, over TLS, with the host's certificate.
relayhost = [{relay_ip}]:{relay_port}
smtp_bind_address = 127.0.0.1
smtp_tls_security_level = encrypt
smtp_tls_cert_file = {cert}
smtp_tls_key_file = {key}
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
# except mail to the senders' mailboxes (the NDRs).
transport_maps = texthash:{transport}

# Retry deferred mail at once when the test flushes the queue.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"#,
                root = root.display(),
                relay_ip = relayhost.ip(),
                relay_port = relayhost.port(),
                cert = cert_file.display(),
                key = key_file.display(),
                ca = ca_file.display(),
                transport = transport.display(),
            ),
            0o644,
        );
        // No smtpd (inet) service at all; nothing chrooted.
        write(
            "master.cf",
            &format!(
                r#"# service type  private unpriv  chroot  wakeup  maxproc command
{services}smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
mailboxes unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/mailboxes
  -o smtp_tls_security_level=none
"#,
                services = common::POSTFIX_SERVICES
            ),
            0o644,
        );
        for action in ["check", "start"] {
            let out = postfix.postfix(&[action]);
            assert!(
                out.status.success(),
                "postfix {action} failed: {}{}\n--- maillog\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                postfix.log()
            );
        }
        postfix.running = true;
        postfix
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn command(&self, name: &str) -> Command {
        Command::new(self.commands.join(name))
    }

    fn postfix(&self, args: &[&str]) -> Output {
        self.command("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .args(args)
            .output()
            .unwrap()
    }

    /// Submits `message` (LF line ends) with Postfix's sendmail, as a local program would.
    fn sendmail(&self, sender: &str, recipient: &str, message: &str) {
        use std::io::Write;
        let mut child = self
            .command("sendmail")
            .arg("-C")
            .arg(self.config_dir())
            .args(["-i", "-f", sender, recipient])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sendmail -f {sender} {recipient} failed: {}\n--- maillog\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Deferred mail is retried now.
    fn flush(&self) {
        self.command("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-f")
            .output()
            .ok();
    }

    /// `postqueue -p`: what is still queued, with the reason.
    fn queue(&self) -> String {
        self.command("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-p")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// The delivery log line (`to=<...>, relay=..., status=...`) for the message submitted with
    /// `subject` (its Message-ID is `<subject@HOST>`), if one with `status` was logged.
    fn outcome(&self, subject: &str, status: &str) -> Option<String> {
        let log = self.log();
        let marker = format!(": message-id=<{subject}@{HOST}>");
        let line = log.lines().find(|l| l.ends_with(&marker))?;
        let head = &line[..line.len() - marker.len()];
        let queue_id = head.rsplit(' ').next()?;
        let to = format!(" {queue_id}: to=<");
        let status = format!(", status={status} ");
        log.lines()
            .find(|l| l.contains(&to) && l.contains(&status))
            .map(|l| l[l.find(&to).unwrap() + 1..].to_string())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            let out = self.postfix(&["stop"]);
            if !out.status.success() {
                self.postfix(&["abort"]);
            }
        }
    }
}

/// relayward with a TLS listener trusting the test CA for client certificates, delivering to
/// `next_hop`; and a Postfix relaying through it with a certificate for [`HOST`].
struct Harness {
    /// First, so that it stops before the relay does.
    postfix: Postfix,
    relay: Relay,
    tls_addr: SocketAddr,
    next_hop: SmtpSink,
    mailboxes: SmtpSink,
    pki: TestPki,
    host_cert: IssuedCert,
    _tls_files: tempfile::TempDir,
}

impl Harness {
    async fn new(commands: PathBuf) -> Harness {
        let next_hop = SmtpSink::start("127.0.0.1:0").await;
        let mailboxes = SmtpSink::start("127.0.0.1:0").await;
        let pki = TestPki::new();
        let host_cert = pki.issue_host(HOST);
        let tls_files = tempfile::tempdir().unwrap();
        let server = pki.issue_server(&["relay.test"]);
        let file = |name: &str, text: &str| {
            let path = tls_files.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let mut relay = Relay::new(&format!(
            "[[listener]]\naddress = \"{tls_addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             tls_client_ca = \"{}\"\n\n[delivery]\nsmart_host = \"{}\"\n",
            file("server.pem", &server.chain_pem).display(),
            file("server.key", &server.key_pem).display(),
            file("ca.pem", pki.ca_pem()).display(),
            next_hop.addr(),
        ));
        relay.ok(&[
            "tenant",
            "add",
            "contoso",
            "--admin-email",
            "admin@contoso.example",
        ]);
        relay.ok(&["domain", "add", "contoso", "contoso.example", "--verified"]);
        relay.ok(&[
            "connector",
            "add",
            "contoso",
            "--name",
            "hybrid",
            "--kind",
            "on-premises",
            "--cert-name",
            HOST,
        ]);
        relay.start();
        common::wait_for_port(tls_addr, &relay.log_path());
        let postfix = Postfix::start(
            commands,
            tls_addr,
            mailboxes.addr(),
            &host_cert,
            pki.ca_pem(),
        );
        Harness {
            postfix,
            relay,
            tls_addr,
            next_hop,
            mailboxes,
            pki,
            host_cert,
            _tls_files: tls_files,
        }
    }

    /// A message from `sender` (envelope and header From) to `recipient`, through Postfix.
    fn submit(&self, sender: &str, recipient: &str, subject: &str) {
        let message = format!(
            "From: <{sender}>\nTo: <{recipient}>\nSubject: {subject}\n\
             Message-ID: <{subject}@{HOST}>\n\nHello,\n\nthis is {subject}.\n"
        );
        self.postfix.sendmail(sender, recipient, &message);
    }

    /// Everything that tells why a step did not happen.
    fn diagnostics(&self) -> String {
        let summary = |sink: &SmtpSink| {
            sink.transactions()
                .iter()
                .map(|m| {
                    format!(
                        "  <{}> -> {:?} subject {:?} reply {:?}\n",
                        m.mail_from,
                        m.recipients(),
                        m.header("subject"),
                        m.data_reply
                    )
                })
                .collect::<String>()
        };
        format!(
            "--- next hop received\n{}--- mailboxes received\n{}--- postqueue -p\n{}\n\
             --- Postfix maillog\n{}\n--- relayward log\n{}",
            summary(&self.next_hop),
            summary(&self.mailboxes),
            self.postfix.queue(),
            self.postfix.log(),
            self.relay.log()
        )
    }

    /// Polls `check`, flushing Postfix's queue now and then, until it gives a value; panics
    /// with the diagnostics when it gives an error, or after [`STEP`].
    async fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Result<Option<T>, String>) -> T {
        let deadline = Instant::now() + STEP;
        let mut last_flush = Instant::now();
        loop {
            match check() {
                Ok(Some(v)) => return v,
                Ok(None) => {}
                Err(e) => panic!("waiting for {what}: {e}\n{}", self.diagnostics()),
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {STEP:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            if last_flush.elapsed() > Duration::from_secs(2) {
                self.postfix.flush();
                last_flush = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The message with `subject` at relayward's next hop.
    async fn delivered(&self, subject: &str) -> Received {
        self.wait(&format!("{subject:?} at the next hop"), || {
            if let Some(line) = self.postfix.outcome(subject, "bounced") {
                return Err(format!("Postfix bounced it: {line}"));
            }
            Ok(self
                .next_hop
                .messages()
                .into_iter()
                .find(|m| m.header("subject").as_deref() == Some(subject)))
        })
        .await
    }

    /// The NDR Postfix sent to `sender`'s mailbox for the message with `subject`.
    async fn ndr(&self, sender: &str, subject: &str) -> Received {
        self.wait(
            &format!("Postfix's NDR to {sender} for {subject:?}"),
            || {
                if let Some(line) = self.postfix.outcome(subject, "sent") {
                    return Err(format!("relayward accepted it: {line}"));
                }
                Ok(self.mailboxes.messages().into_iter().find(|m| {
                    m.recipients() == [sender]
                        && m.data_text().contains(&format!("Subject: {subject}"))
                }))
            },
        )
        .await
    }

    /// relayward's trace events for `sender` of `kind` ("received", "refused"), once some exist.
    async fn traced(&self, sender: &str, kind: &str) -> Vec<serde_json::Value> {
        self.wait(&format!("a {kind} trace event for {sender}"), || {
            let out = self.relay.ok(&["trace", "--sender", sender, "--json"]);
            let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            let found: Vec<_> = events.into_iter().filter(|e| e["kind"] == kind).collect();
            Ok((!found.is_empty()).then_some(found))
        })
        .await
    }

    /// Checks that relayward traced `sender`'s message as received through the certificate
    /// connector, with `class` ("registered", "unregistered").
    async fn assert_received_by_certificate(&self, sender: &str, class: &str) {
        let events = self.traced(sender, "received").await;
        for e in &events {
            let detail = e["detail"].as_str().unwrap_or_default();
            assert!(
                detail.split(' ').any(|d| d == "method=certificate"),
                "{sender}: not attributed by certificate: {e}"
            );
            assert_eq!(e["sender_class"], class, "{sender}: {e}");
            assert_eq!(
                e["client_ip"]
                    .as_str()
                    .map(|ip| ip.starts_with("127.0.0.1")),
                Some(true),
                "{sender}: {e}"
            );
        }
    }

    /// MAIL FROM:<sender> in a session of our own with the host's certificate: relayward's
    /// answer as the running relay sees the directory right now.
    async fn probe(&self, sender: &str) -> String {
        let mut c = SmtpClient::connect(self.tls_addr).await.unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo(HOST).await.unwrap();
        c.starttls(
            self.pki.client_config_with_cert(&self.host_cert),
            "relay.test",
        )
        .await
        .unwrap();
        c.ehlo(HOST).await.unwrap();
        let (_, text) = c.cmd(&format!("MAIL FROM:<{sender}>")).await.unwrap();
        c.quit().await.ok();
        text
    }
}

/// A field of the NDR (the first one called `name`), continuation lines joined and white space
/// runs made one space: Postfix folds long Diagnostic-Code fields.
fn ndr_field(ndr: &Received, name: &str) -> Option<String> {
    let text = ndr.data_text();
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let prefix = format!("{name}:");
    let first = lines.find(|l| l.starts_with(&prefix))?;
    let mut value = first[prefix.len()..].to_string();
    for cont in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push(' ');
        value.push_str(cont);
    }
    Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Checks that `ndr` reports relayward's 5.7.750 refusal of `recipient` at MAIL FROM.
fn assert_blocked_ndr(ndr: &Received, recipient: &str) {
    let text = ndr.data_text();
    assert_eq!(ndr.mail_from, "", "an NDR has the null sender:\n{text}");
    assert!(text.contains("report-type=delivery-status"), "{text}");
    let field = |name| ndr_field(ndr, name);
    assert_eq!(
        field("Final-Recipient").as_deref(),
        Some(&*format!("rfc822; {recipient}")),
        "{text}"
    );
    assert_eq!(field("Action").as_deref(), Some("failed"), "{text}");
    assert_eq!(field("Status").as_deref(), Some("5.7.750"), "{text}");
    assert_eq!(
        field("Diagnostic-Code").as_deref(),
        Some(&*format!("smtp; {BLOCKED}")),
        "{text}"
    );
    // The human-readable part quotes relayward's reply too (wrapped at 80 columns).
    assert!(
        unfolded(ndr).contains(&format!("said: {BLOCKED} (in reply to MAIL FROM command)")),
        "{text}"
    );
}

/// The NDR's text with folded lines unfolded and runs of white space made one space, so that
/// a server reply wrapped over several lines compares as the one line it was.
fn unfolded(ndr: &Received) -> String {
    ndr.data_text()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_through_its_certificate_connector_until_blocked() {
    let Some(commands) = postfix_or_skip() else {
        return;
    };
    let h = Harness::new(commands).await;

    // 1. A registered sender: relayed, attributed by the host's certificate.
    h.submit("alice@contoso.example", "bob@dest.example", "registered-1");
    let m = h.delivered("registered-1").await;
    assert_eq!(m.mail_from, "alice@contoso.example");
    assert_eq!(m.recipients(), ["bob@dest.example"]);
    assert!(
        m.data_text().contains(&format!("by {HOST} (Postfix")),
        "Postfix's Received header: {}",
        m.data_text()
    );
    h.assert_received_by_certificate("alice@contoso.example", "registered")
        .await;
    assert!(
        h.postfix
            .log()
            .contains("Trusted TLS connection established to 127.0.0.1"),
        "Postfix relayed without TLS\n{}",
        h.diagnostics()
    );

    // 2. Forwarded mail of an outside sender: a certificate connector may relay it.
    h.submit("someone@outside.example", "bob@dest.example", "forwarded-1");
    let m = h.delivered("forwarded-1").await;
    assert_eq!(m.mail_from, "someone@outside.example");
    h.assert_received_by_certificate("someone@outside.example", "unregistered")
        .await;

    // The server's own host name is no sender domain of the tenant: relayed as unregistered.
    h.submit("cron@mail.contoso.example", "ops@dest.example", "cron-1");
    let m = h.delivered("cron-1").await;
    assert_eq!(m.mail_from, "cron@mail.contoso.example");
    h.assert_received_by_certificate("cron@mail.contoso.example", "unregistered")
        .await;

    // 3. The operator blocks the tenant's unregistered senders.
    h.relay
        .ok(&["tenant", "block", "contoso", "--unregistered"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = h.probe("probe@outside.example").await;
        if reply == BLOCKED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "block not applied within 5 s: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    h.submit("someone@outside.example", "bob@dest.example", "forwarded-2");
    let ndr = h.ndr("someone@outside.example", "forwarded-2").await;
    assert_blocked_ndr(&ndr, "bob@dest.example");
    // Registered mail keeps flowing.
    h.submit("alice@contoso.example", "bob@dest.example", "registered-2");
    let m = h.delivered("registered-2").await;
    assert_eq!(m.mail_from, "alice@contoso.example");

    // 4. The host name sender is refused just the same: it never became a sender domain.
    h.submit("cron@mail.contoso.example", "ops@dest.example", "cron-2");
    let ndr = h.ndr("cron@mail.contoso.example", "cron-2").await;
    assert_blocked_ndr(&ndr, "ops@dest.example");
    let refused = h.traced("cron@mail.contoso.example", "refused").await;
    assert!(refused.iter().any(|e| e["reply"] == BLOCKED), "{refused:?}");

    // Neither refused message went anywhere but back to its sender.
    for subject in ["forwarded-2", "cron-2"] {
        assert!(
            !h.next_hop
                .messages()
                .iter()
                .any(|m| m.header("subject").as_deref() == Some(subject)),
            "{subject} was relayed after the block\n{}",
            h.diagnostics()
        );
    }
}
