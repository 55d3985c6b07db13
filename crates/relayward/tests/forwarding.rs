//! Forwarding end to end on loopback: SRS rewriting of relayed mail from unregistered senders,
//! the SRS listener sending a remote bounce back to the original sender (and refusing
//! everything else), and DKIM signatures that verify against the key the CLI told the operator
//! to publish, served by an in-test DNS server.
//!
//! The relay runs in-process (`serve::start_with`) from a TOML file that the real binary's CLI
//! commands use too. Next hops: `dest.example`'s MX is a sink on 127.0.0.2, `orig.example`'s
//! (the original sender's domain) a sink on 127.0.0.3, found through the test DNS server.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use relayward::config::Config;
use relayward::serve::{start_with, Running, StartOptions};
use relayward_core::{TraceKind, TraceQuery};
use relayward_testkit::{DnsServer, IssuedCert, Received, SmtpClient, SmtpSink, TestPki};

const BIN: &str = env!("CARGO_BIN_EXE_relayward");
const SRS_DOMAIN: &str = "srs.relay.test";
const DAY: u64 = 86_400;

struct Harness {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    dns: DnsServer,
    /// MX of dest.example (127.0.0.2).
    dest: SmtpSink,
    /// MX of orig.example, the original sender's domain (127.0.0.3).
    orig: SmtpSink,
    pki: TestPki,
    client_cert: IssuedCert,
    relay: Option<Running>,
}

impl Harness {
    /// `srs_rate`: the SRS listener's messages per source per minute. `extra`: more TOML.
    async fn new(srs_rate: u32, extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sinks = SmtpSink::start_group(&[ip("127.0.0.2"), ip("127.0.0.3")]).await;
        let [dest, orig]: [SmtpSink; 2] = sinks.try_into().ok().unwrap();
        let dns = DnsServer::start().await;
        dns.add_mx("dest.example", 10, "mx.dest.example");
        dns.add_a("mx.dest.example", [127, 0, 0, 2].into());
        dns.add_mx("orig.example", 10, "mx.orig.example");
        dns.add_a("mx.orig.example", [127, 0, 0, 3].into());

        let pki = TestPki::new();
        let server = pki.issue_server(&["relay.test"]);
        let client_cert = pki.issue_client("mail.hybrid.example");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = file("server.pem", &server.chain_pem);
        let key = file("server.key", &server.key_pem);
        let ca = file("ca.pem", pki.ca_pem());
        // The SRS secret stays out of the TOML, in a file only its owner may read.
        let secrets = file(
            "srs.secrets",
            "# newest first\ncurrent-secret\nretired-secret\n",
        );
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config_path = file(
            "relayward.toml",
            &format!(
                r#"[server]
hostname = "relay.test"
data_dir = "{data}"
directory_poll_ms = 100

[[listener]]
address = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
tls_client_ca = "{ca}"

[[listener]]
address = "127.0.0.1:0"
role = "srs"

[admin]
address = "127.0.0.1:0"

[delivery]
mx_port = {port}
dns_resolver = "{dns}"
retry_schedule_secs = [3600]

[srs]
domain = "{SRS_DOMAIN}"
secrets_file = "{secrets}"
max_returns_per_ip_per_minute = {srs_rate}

{extra}
"#,
                data = dir.path().join("data").display(),
                cert = cert.display(),
                key = key.display(),
                ca = ca.display(),
                port = dest.addr().port(),
                dns = dns.addr(),
                secrets = secrets.display(),
            ),
        );
        Harness {
            dir,
            config_path,
            dns,
            dest,
            orig,
            pki,
            client_cert,
            relay: None,
        }
    }

    fn config(&self) -> Config {
        Config::load(Some(&self.config_path)).unwrap()
    }

    async fn start(&mut self) {
        let relay = start_with(self.config(), StartOptions::default())
            .await
            .unwrap();
        self.relay = Some(relay);
    }

    fn relay(&self) -> &Running {
        self.relay.as_ref().unwrap()
    }

    /// The real binary's CLI on this relay's configuration: (success, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let config = self.config_path.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .arg("--config")
                .arg(config)
                .args(&args)
                .env_remove("RELAYWARD_URL")
                .env_remove("RELAYWARD_TOKEN")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args).await;
        assert!(ok, "relayward {args:?} failed: {err}");
        out
    }

    /// Tenant `hybrid`: hybrid.example verified, a certificate connector for
    /// mail.hybrid.example (which may relay unregistered senders: the EOP rule).
    async fn provision_hybrid(&self) {
        self.ok(&["tenant", "add", "hybrid"]).await;
        self.ok(&[
            "domain",
            "add",
            "hybrid",
            "hybrid.example",
            "--verified",
            "--match-subdomains",
        ])
        .await;
        self.ok(&[
            "connector",
            "add",
            "hybrid",
            "--name",
            "edge",
            "--kind",
            "on-premises",
            "--cert-name",
            "mail.hybrid.example",
        ])
        .await;
    }

    /// A session with the tenant's certificate, STARTTLS done, EHLO'd.
    async fn tenant_session(&self) -> SmtpClient {
        let mut c = SmtpClient::connect(self.relay().smtp_addrs[0])
            .await
            .unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo("mail.hybrid.example").await.unwrap();
        c.starttls(
            self.pki.client_config_with_cert(&self.client_cert),
            "relay.test",
        )
        .await
        .unwrap();
        c.ehlo("mail.hybrid.example").await.unwrap();
        c
    }

    fn srs_addr(&self) -> SocketAddr {
        self.relay().smtp_addrs[1]
    }

    /// A session with the SRS listener from `from`, EHLO'd as a remote MX.
    async fn srs_session(&self, from: &str) -> SmtpClient {
        let mut c = SmtpClient::connect_from(ip(from), self.srs_addr())
            .await
            .unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo("mx.dest.example").await.unwrap();
        c
    }

    /// Messages in the relay's spool right now.
    fn spooled(&self) -> usize {
        self.relay().spool.scan().unwrap().len()
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@test.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello,\r\n\r\nthis is {subject}.\r\n"
    )
}

async fn send(c: &mut SmtpClient, from: &str, rcpts: &[&str], body: &str) -> (u16, String) {
    c.send_message(from, rcpts, body.as_bytes()).await.unwrap()
}

/// The first message on `sink` that matches `pred`, waiting up to 10 s.
async fn wait_mail(sink: &SmtpSink, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = sink.messages().into_iter().find(|m| pred(m)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received; got {:?}",
            sink.messages()
                .iter()
                .map(|m| (m.mail_from.clone(), m.recipients()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subject_is(m: &Received, subject: &str) -> bool {
    m.header("Subject").as_deref() == Some(subject)
}

/// An RFC 3464 bounce as a remote MTA sends it for a message it cannot deliver.
fn remote_dsn(srs_address: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.dest.example>\r\n\
         To: <{srs_address}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <bounce-1@mx.dest.example>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\
         \r\n\
         --b1\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         Your message to <bob@dest.example> could not be delivered.\r\n\
         .leading dot survives the round trip\r\n\
         --b1\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.dest.example\r\n\
         \r\n\
         Final-Recipient: rfc822; bob@dest.example\r\n\
         Action: failed\r\n\
         Status: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n\
         \r\n\
         --b1\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         From: <alice@orig.example>\r\n\
         Subject: fwd-1\r\n\
         \r\n\
         --b1--\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mail_is_srs_rewritten_and_its_bounce_returns_to_the_original_sender() {
    let mut h = Harness::new(20, "").await;
    h.provision_hybrid().await;
    h.dest.reply_rcpt(
        "slow@dest.example",
        "451 4.2.1 Mailbox busy, try again later",
    );
    h.dest
        .reply_rcpt("nobody@dest.example", "550 5.1.1 No such user");
    h.start().await;

    // The tenant's hybrid server forwards mail from an outside sender.
    let mut c = h.tenant_session().await;
    let body = message("alice@orig.example", "bob@dest.example", "fwd-1");
    let (code, text) = send(
        &mut c,
        "alice@orig.example",
        &["bob@dest.example", "slow@dest.example"],
        &body,
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let queue_id = text.rsplit(' ').next().unwrap().to_string();

    // The next hop sees the SRS0 envelope sender; the header From is untouched.
    let got = wait_mail(&h.dest, "forwarded message", |m| subject_is(m, "fwd-1")).await;
    let srs_address = got.mail_from.clone();
    assert!(
        srs_address.starts_with("SRS0=") && srs_address.ends_with(&format!("@{SRS_DOMAIN}")),
        "{srs_address}"
    );
    assert!(
        srs_address.contains("=orig.example=alice@"),
        "{srs_address}"
    );
    assert_eq!(got.recipients(), ["bob@dest.example"]);
    assert_eq!(got.header("From").as_deref(), Some("<alice@orig.example>"));
    assert!(got.data_text().ends_with("this is fwd-1.\r\n"));
    let srs = h.relay().forwarding.srs().unwrap();
    assert_eq!(
        srs.reverse(&srs_address, relayward_core::now().0 as u64)
            .unwrap(),
        "alice@orig.example"
    );

    // The operator can do the same by hand.
    assert_eq!(
        h.ok(&["srs", "reverse", &srs_address]).await,
        "alice@orig.example\n"
    );

    // The envelope keeps the original sender (slow@ is still queued).
    let id = queue_id.parse().unwrap();
    let env = h.relay().spool.read_envelope(&id).unwrap();
    assert_eq!(env.sender, srs_address);
    assert_eq!(env.original_sender.as_deref(), Some("alice@orig.example"));
    assert_eq!(env.sender_class, relayward_core::SenderClass::Unregistered);

    // ...and so does the trace: the rewrite is recorded under the original sender.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = h
            .relay()
            .store
            .search_trace(&TraceQuery {
                sender: Some("alice@orig.example".into()),
                queue_id: Some(queue_id.clone()),
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        let rewritten = events.iter().any(|e| {
            e.kind == TraceKind::Queued
                && e.detail.as_deref()
                    == Some(&format!("srs: envelope sender rewritten to {srs_address}")[..])
        });
        let delivered = events.iter().any(|e| {
            e.kind == TraceKind::Delivered && e.recipient.as_deref() == Some("bob@dest.example")
        });
        if rewritten && delivered {
            break;
        }
        assert!(Instant::now() < deadline, "trace incomplete: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The remote MTA later bounces it: a DSN from <> to the SRS address, at the SRS domain's MX.
    let dsn = remote_dsn(&srs_address);
    let mut mx = h.srs_session("127.0.0.1").await;
    let (code, text) = send(&mut mx, "", &[&srs_address], &dsn).await;
    assert_eq!(code, 250, "{text}");

    // It reaches the original sender's MX with the null sender and the DSN intact.
    let back = wait_mail(&h.orig, "returned bounce", |m| {
        subject_is(m, "Undelivered Mail Returned to Sender")
    })
    .await;
    assert_eq!(back.mail_from, "");
    assert_eq!(back.recipients(), ["alice@orig.example"]);
    let data = back.data_text();
    assert!(data.ends_with(&dsn), "DSN changed on its way back:\n{data}");
    let added = &data[..data.len() - dsn.len()];
    assert!(
        added.starts_with("Received: from mx.dest.example ([127.0.0.1])")
            && added.matches("Received:").count() == 1,
        "only our Received header is added: {added}"
    );
    // The trace ties the return to the SRS address it came in for.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = h
            .relay()
            .store
            .search_trace(&TraceQuery {
                recipient: Some("alice@orig.example".into()),
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        if events.iter().any(|e| {
            e.kind == TraceKind::Received
                && e.tenant_id.is_none()
                && e.sender.as_deref() == Some("<>")
                && e.detail.as_deref() == Some(&format!("srs return to {srs_address}")[..])
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "return not traced: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The relay's own DSN for a recipient the next hop refuses goes straight to the original
    // sender, not to the SRS address.
    let body = message("alice@orig.example", "nobody@dest.example", "fwd-2");
    let (code, text) = send(
        &mut c,
        "alice@orig.example",
        &["nobody@dest.example"],
        &body,
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let own = wait_mail(&h.orig, "relay's DSN", |m| {
        m.data_text().contains("550 5.1.1 No such user") && m.data_text().contains("fwd-2")
    })
    .await;
    assert_eq!(own.mail_from, "");
    assert_eq!(own.recipients(), ["alice@orig.example"]);
    assert!(own.data_text().contains("multipart/report"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_and_null_senders_are_never_rewritten() {
    let mut h = Harness::new(20, "").await;
    h.provision_hybrid().await;
    h.start().await;
    let mut c = h.tenant_session().await;
    for (sender, subject) in [
        ("user@hybrid.example", "reg-1"),
        ("app@eu.hybrid.example", "reg-2"),
        ("", "null-1"),
    ] {
        let body = message("user@hybrid.example", "bob@dest.example", subject);
        let (code, text) = send(&mut c, sender, &["bob@dest.example"], &body).await;
        assert_eq!(code, 250, "{sender}: {text}");
        let got = wait_mail(&h.dest, subject, |m| subject_is(m, subject)).await;
        assert_eq!(got.mail_from, sender, "{subject}");
    }
    // The same session with an outside sender: that one is rewritten.
    let body = message("carol@elsewhere.example", "bob@dest.example", "unreg-1");
    send(
        &mut c,
        "carol@elsewhere.example",
        &["bob@dest.example"],
        &body,
    )
    .await;
    let got = wait_mail(&h.dest, "unreg-1", |m| subject_is(m, "unreg-1")).await;
    assert!(got.mail_from.starts_with("SRS0="), "{}", got.mail_from);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srs_listener_refuses_forged_expired_and_everything_but_bounces() {
    let mut h = Harness::new(3, "").await;
    h.provision_hybrid().await;
    // A connector for 127.0.0.1 by IP: the SRS listener must not care.
    h.ok(&[
        "connector",
        "add",
        "hybrid",
        "--name",
        "local",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.1/32",
        "--allow-unregistered",
    ])
    .await;
    h.start().await;
    let srs = h.relay().forwarding.srs().unwrap();
    let now = relayward_core::now().0 as u64;
    let good = srs.forward("alice@orig.example", now).unwrap();
    let expired = srs.forward("alice@orig.example", now - 30 * DAY).unwrap();
    let (hash, rest) = good["SRS0=".len()..].split_once('=').unwrap();
    let forged_hash: String = hash
        .chars()
        .map(|c| {
            if c.eq_ignore_ascii_case(&'x') {
                'y'
            } else {
                'x'
            }
        })
        .collect();
    let forged = format!("SRS0={forged_hash}={rest}");
    let other_secret = relayward_queue::srs::Srs::new(&relayward_queue::srs::SrsConfig {
        domain: SRS_DOMAIN.into(),
        secrets: vec!["someone-else".into()],
        ..Default::default()
    })
    .unwrap()
    .forward("alice@orig.example", now)
    .unwrap();

    const BAD: &str = "550 5.1.1 Recipient address rejected: not a valid SRS address";
    let mut mx = h.srs_session("127.0.0.1").await;
    assert_eq!(mx.cmd("MAIL FROM:<>").await.unwrap().0, 250);
    for bad in [
        forged.as_str(),
        expired.as_str(),
        other_secret.as_str(),
        "SRS0=abcd@srs.relay.test",
        "bob@srs.relay.test",
        "postmaster@srs.relay.test",
    ] {
        let (_, text) = mx.cmd(&format!("RCPT TO:<{bad}>")).await.unwrap();
        assert_eq!(text, BAD, "{bad}");
    }
    // Nothing to send: DATA is refused and nothing is queued.
    let (code, _) = mx.cmd("DATA").await.unwrap();
    assert_eq!(code, 554);
    mx.cmd("QUIT").await.unwrap();

    // Not a relay: another domain is refused whoever sends, and so is a tenant's own sender.
    // (A new session: the first one has used up most of its allowance of errors.)
    let mut mx = h.srs_session("127.0.0.1").await;
    let (_, text) = mx.cmd("MAIL FROM:<user@hybrid.example>").await.unwrap();
    assert_eq!(
        text,
        "550 5.7.1 Only delivery status notifications (null or postmaster sender) are accepted here"
    );
    let (_, text) = mx.cmd("MAIL FROM:<alice@evil.example>").await.unwrap();
    assert!(text.starts_with("550 5.7.1 "), "{text}");
    let (code, _) = mx
        .cmd("MAIL FROM:<postmaster@mx.dest.example>")
        .await
        .unwrap();
    assert_eq!(code, 250);
    let (_, text) = mx.cmd("RCPT TO:<victim@dest.example>").await.unwrap();
    assert_eq!(text, "550 5.7.64 TenantAttribution; Relay Access Denied");
    let (_, text) = mx.cmd("RCPT TO:<someone@hybrid.example>").await.unwrap();
    assert_eq!(text, "550 5.7.64 TenantAttribution; Relay Access Denied");
    mx.cmd("RSET").await.unwrap();
    // No AUTH either: nobody logs in to the SRS domain's MX.
    let (_, ehlo) = mx.ehlo("mx.dest.example").await.unwrap();
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let (code, _) = mx.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await.unwrap();
    assert_eq!(code, 502);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.spooled(), 0, "nothing may be queued");
    assert!(h.dest.transactions().is_empty() && h.orig.transactions().is_empty());

    // Per-source rate limit: 3 transactions a minute from 127.0.0.9, then 451 4.7.500.
    let mut flood = h.srs_session("127.0.0.9").await;
    for i in 0..3 {
        let (code, text) = flood.cmd("MAIL FROM:<>").await.unwrap();
        assert_eq!(code, 250, "MAIL {i}: {text}");
        flood.cmd("RSET").await.unwrap();
    }
    let (_, text) = flood.cmd("MAIL FROM:<>").await.unwrap();
    assert_eq!(text, "451 4.7.500 Access denied, please try again later");
    // Another source is not affected; a valid address still works from it.
    let mut other = h.srs_session("127.0.0.10").await;
    let (code, text) = send(&mut other, "", &[&good], &remote_dsn(&good)).await;
    assert_eq!(code, 250, "{text}");
    wait_mail(&h.orig, "returned bounce", |m| {
        m.recipients() == ["alice@orig.example"]
    })
    .await;

    // The refusals are traced with the reason, and with no tenant.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = h
            .relay()
            .store
            .search_trace(&TraceQuery {
                recipient: Some(expired.clone()),
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        if let Some(e) = refused.iter().find(|e| e.kind == TraceKind::Refused) {
            assert_eq!(e.tenant_id, None);
            assert_eq!(
                e.detail.as_deref(),
                Some("RCPT (srs: SRS timestamp out of date)")
            );
            break;
        }
        assert!(Instant::now() < deadline, "refusal not traced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown().await;
}

/// The one DKIM signature on `message`, verified with mail-auth against the test DNS server.
async fn dkim_result(dns: &DnsServer, message: &[u8]) -> (DkimResult, String) {
    let auth = MessageAuthenticator(dns.resolver());
    let parsed = AuthenticatedMessage::parse(message).expect("parse message");
    let outputs = auth.verify_dkim(&parsed).await;
    assert_eq!(outputs.len(), 1, "one DKIM signature expected");
    let d = outputs[0]
        .signature()
        .map(|s| s.d.clone())
        .unwrap_or_default();
    (outputs[0].result().clone(), d)
}

/// Publishes the record `relayward ... dkim-key` printed (its only output line).
fn publish(dns: &DnsServer, printed: &str) -> String {
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "only the TXT record is printed: {printed}");
    let (name, rest) = lines[0].split_once(" IN TXT ").expect("TXT record line");
    let strings: Vec<&str> = rest.split("\" \"").map(|s| s.trim_matches('"')).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{rest}");
    assert!(strings.concat().starts_with("v=DKIM1; k="), "{rest}");
    dns.add_txt(name, &strings);
    name.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_verify_against_the_published_keys() {
    let mut h = Harness::new(20, "[dkim]\nsign_srs = true\n").await;
    h.provision_hybrid().await;
    h.ok(&["domain", "add", "hybrid", "rsa.example", "--verified"])
        .await;
    h.start().await;

    // Keys made while the relay runs; it picks them up on its next poll.
    let ed = h
        .ok(&["domain", "dkim-key", "hybrid", "hybrid.example"])
        .await;
    assert_eq!(publish(&h.dns, &ed), "relayward._domainkey.hybrid.example");
    let rsa = h
        .ok(&[
            "domain",
            "dkim-key",
            "hybrid",
            "rsa.example",
            "--algorithm",
            "rsa2048",
            "--selector",
            "s2048",
        ])
        .await;
    assert!(
        rsa.matches("\" \"").count() >= 1,
        "split into strings: {rsa}"
    );
    assert_eq!(publish(&h.dns, &rsa), "s2048._domainkey.rsa.example");
    let srs_key = h.ok(&["srs", "dkim-key"]).await;
    publish(&h.dns, &srs_key);
    for out in [&ed, &rsa, &srs_key] {
        assert!(!out.contains("PRIVATE"), "{out}");
    }
    let key_file = h.dir.path().join("data/dkim/hybrid.example.relayward.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Same selector again: refused (mail signed with the old key must keep verifying).
    let (ok, _, err) = h
        .cli(&["domain", "dkim-key", "hybrid", "hybrid.example"])
        .await;
    assert!(!ok && err.contains("new selector"), "{err}");
    // Only a tenant's own domains get keys.
    let (ok, _, err) = h
        .cli(&["domain", "dkim-key", "hybrid", "orig.example"])
        .await;
    assert!(!ok && err.contains("has no domain"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while h.relay().forwarding.dkim_domains().len() < 3 {
        assert!(Instant::now() < deadline, "keys not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut c = h.tenant_session().await;
    let cases = [
        // (envelope sender, header From, subject, signing domain)
        (
            "user@hybrid.example",
            "user@hybrid.example",
            "dkim-ed",
            "hybrid.example",
        ),
        // A subdomain covered by hybrid.example (match_subdomains): its key signs.
        (
            "app@eu.hybrid.example",
            "app@eu.hybrid.example",
            "dkim-sub",
            "hybrid.example",
        ),
        (
            "app@rsa.example",
            "app@rsa.example",
            "dkim-rsa",
            "rsa.example",
        ),
        // Forwarded mail of an outside sender: the SRS domain's key (sign_srs).
        (
            "alice@orig.example",
            "alice@orig.example",
            "dkim-srs",
            SRS_DOMAIN,
        ),
    ];
    for (sender, from, subject, _) in cases {
        let body = message(from, "bob@dest.example", subject);
        let (code, text) = send(&mut c, sender, &["bob@dest.example"], &body).await;
        assert_eq!(code, 250, "{subject}: {text}");
    }
    for (_, _, subject, domain) in cases {
        let got = wait_mail(&h.dest, subject, |m| subject_is(m, subject)).await;
        assert!(got.data_text().starts_with("DKIM-Signature: "), "{subject}");
        let (result, d) = dkim_result(&h.dns, &got.data).await;
        assert_eq!(result, DkimResult::Pass, "{subject}");
        assert_eq!(d, domain, "{subject}");
    }

    // Header From outside the tenant's domains, registered envelope sender: not signed.
    let body = message("someone@orig.example", "bob@dest.example", "dkim-none");
    send(&mut c, "user@hybrid.example", &["bob@dest.example"], &body).await;
    let got = wait_mail(&h.dest, "dkim-none", |m| subject_is(m, "dkim-none")).await;
    assert!(!got.data_text().contains("DKIM-Signature"));
    h.shutdown().await;
}

#[tokio::test]
async fn config_needs_srs_for_an_srs_listener() {
    let c: Config =
        toml::from_str("[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"srs\"\n").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("[srs]"), "{e}");
    let c: Config = toml::from_str(
        "[srs]\ndomain = \"srs.relay.test\"\nsecrets = [\"k\"]\n[dkim]\nselector = \"s1\"\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.dkim.selector, "s1");
    assert!(!format!("{c:?}").contains("\"k\""), "secrets are redacted");
    let c: Config = toml::from_str("[srs]\ndomain = \"srs.relay.test\"\n").unwrap();
    assert!(c.validate().is_err(), "a secret is needed");
}
