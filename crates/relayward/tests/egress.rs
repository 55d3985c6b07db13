//! Egress pools end to end: the relay in-process with `[[egress_pool]]`s on 127.0.0.0/8,
//! tenants provisioned with the real CLI, mail sent over SMTP, next hops found through the
//! test DNS server. The sinks record the address each message came from, which tells the
//! pool: default 127.0.0.2, high_risk 127.0.0.3, forwarding 127.0.0.4, and a pool of tenant
//! `pinned`'s own, 127.0.0.5.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use relayward::config::Config;
use relayward::serve::{start_with, Running, StartOptions};
use relayward_core::{TenantState, TraceEvent, TraceKind, TraceQuery};
use relayward_store::NewTransition;
use relayward_testkit::{DnsServer, Received, SmtpClient, SmtpSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_relayward");
const POOLS: &str = r#"
[[egress_pool]]
name = "default"
source_addresses = ["127.0.0.2"]

[[egress_pool]]
name = "high_risk"
source_addresses = ["127.0.0.3"]
ehlo_hostname = "bulk.relay.test"

[[egress_pool]]
name = "forwarding"
source_addresses = ["127.0.0.4"]

[[egress_pool]]
name = "dedicated"
source_addresses = ["127.0.0.5"]
tenants = ["pinned"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Harness {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    dns: DnsServer,
    /// MX of dest.example.
    dest: SmtpSink,
    /// MX of the senders' domains (acme.example, bouncy.example, orig.example,
    /// pinned.example): DSNs land here.
    home: SmtpSink,
    relay: Option<Running>,
}

impl Harness {
    /// `extra`: more TOML (the pools).
    async fn new(extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sinks = SmtpSink::start_group(&[ip("127.0.0.20"), ip("127.0.0.21")]).await;
        let [dest, home]: [SmtpSink; 2] = sinks.try_into().ok().unwrap();
        let dns = DnsServer::start().await;
        dns.add_mx("dest.example", 10, "mx.dest.example");
        dns.add_a("mx.dest.example", [127, 0, 0, 20].into());
        for domain in [
            "acme.example",
            "bouncy.example",
            "orig.example",
            "pinned.example",
        ] {
            dns.add_mx(domain, 10, "mx.home.example");
        }
        dns.add_a("mx.home.example", [127, 0, 0, 21].into());
        let rspamd = rspamd_stub().await;
        let config_path = dir.path().join("relayward.toml");
        std::fs::write(
            &config_path,
            format!(
                r#"[server]
hostname = "relay.test"
data_dir = "{data}"
directory_poll_ms = 100

[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[delivery]
mx_port = {port}
dns_resolver = "{dns}"
retry_schedule_secs = [3600]

[srs]
domain = "srs.relay.test"
secrets = ["egress-test-secret"]

[scan]
rspamd_url = "http://{rspamd}"

{extra}
"#,
                data = dir.path().join("data").display(),
                port = dest.addr().port(),
                dns = dns.addr(),
            ),
        )
        .unwrap();
        Harness {
            _dir: dir,
            config_path,
            dns,
            dest,
            home,
            relay: None,
        }
    }

    async fn start(&mut self) {
        let config = Config::load(Some(&self.config_path)).unwrap();
        self.relay = Some(start_with(config, StartOptions::default()).await.unwrap());
    }

    fn relay(&self) -> &Running {
        self.relay.as_ref().unwrap()
    }

    /// The real binary's CLI on this relay's configuration; must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = cli(&self.config_path, args).await;
        assert!(
            out.status.success(),
            "relayward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Tenant `name` with `<name>.example` verified and an IP connector for `ip` that may relay
    /// unregistered senders (forwarding).
    async fn tenant(&self, name: &str, ip: &str) {
        self.ok(&["tenant", "add", name]).await;
        let domain = format!("{name}.example");
        self.ok(&["domain", "add", name, &domain, "--verified"])
            .await;
        let cidr = format!("{ip}/32");
        self.ok(&[
            "connector",
            "add",
            name,
            "--name",
            "onprem",
            "--kind",
            "on-premises",
            "--ip",
            &cidr,
            "--allow-unregistered",
        ])
        .await;
    }

    /// Sends one message from a session opened from `client_ip`; asserts it was accepted.
    async fn send(&self, client_ip: &str, from: &str, rcpts: &[&str], subject: &str) {
        let mut c = SmtpClient::connect_from(ip(client_ip), self.relay().smtp_addrs[0])
            .await
            .unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo("client.test").await.unwrap();
        let data = format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nThis is {subject}.\r\n",
            rcpts[0]
        );
        let (code, text) = c.send_message(from, rcpts, data.as_bytes()).await.unwrap();
        assert_eq!(code, 250, "{subject}: {text}");
    }

    /// The details of the attempt events for `rcpt`, once at least `n` are in the trace.
    async fn attempts(&self, rcpt: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events: Vec<TraceEvent> = self
                .relay()
                .store
                .search_trace(&TraceQuery {
                    recipient: Some(rcpt.into()),
                    ..TraceQuery::default()
                })
                .await
                .unwrap();
            let mut attempts: Vec<(i64, String)> = events
                .into_iter()
                .filter(|e| e.kind == TraceKind::Attempt)
                .map(|e| (e.id, e.detail.unwrap_or_default()))
                .collect();
            if attempts.len() >= n {
                attempts.sort();
                return attempts.into_iter().map(|(_, d)| d).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{n} attempts for {rcpt} not traced: {attempts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

async fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(&args)
            .env_remove("RELAYWARD_URL")
            .env_remove("RELAYWARD_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Answers rspamd's `/checkv2` over HTTP: `add header` (a spam verdict the relay lets through)
/// for a message containing "SPAMMY", `no action` otherwise.
async fn rspamd_stub() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + length {
                        break;
                    }
                }
                let spam = String::from_utf8_lossy(&req).contains("SPAMMY");
                let action = if spam { "add header" } else { "no action" };
                let body = format!(
                    r#"{{"action":"{action}","score":7.5,"required_score":15.0,"symbols":{{"TEST_MARKER":{{}}}}}}"#
                );
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// The first message on `sink` whose subject is `subject`, waiting up to 10 s.
async fn arrived(sink: &SmtpSink, subject: &str) -> Received {
    wait_mail(sink, subject, |m| {
        m.header("Subject").as_deref() == Some(subject)
    })
    .await
}

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
                .map(|m| (m.mail_from.clone(), m.header("Subject")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_mail_leaves_from_its_pool() {
    let mut h = Harness::new(POOLS).await;
    h.tenant("acme", "127.0.0.1").await;
    h.tenant("pinned", "127.0.0.6").await;
    // A tenant of its own for the bounce, so that the bounce leaves acme's standing alone.
    h.tenant("bouncy", "127.0.0.7").await;
    h.dest
        .reply_rcpt("nobody@dest.example", "550 5.1.1 No such user");
    h.start().await;

    // A registered sender: default.
    h.send(
        "127.0.0.1",
        "alice@acme.example",
        &["bob@dest.example"],
        "registered",
    )
    .await;
    let m = arrived(&h.dest, "registered").await;
    assert_eq!(m.peer.ip(), ip("127.0.0.2"));
    assert_eq!(m.helo, "relay.test");

    // A recipient refused with 550 5.1.1: the relay's DSN (null sender) goes back to the
    // sender from high_risk, with that pool's EHLO name.
    h.send(
        "127.0.0.7",
        "frank@bouncy.example",
        &["nobody@dest.example"],
        "bounced",
    )
    .await;
    let dsn = wait_mail(&h.home, "DSN", |m| {
        m.mail_from.is_empty() && m.recipients() == ["frank@bouncy.example"]
    })
    .await;
    assert_eq!(dsn.peer.ip(), ip("127.0.0.3"));
    assert_eq!(dsn.helo, "bulk.relay.test");

    // Forwarded mail of an outside sender, SRS-rewritten: forwarding.
    h.send(
        "127.0.0.1",
        "carol@orig.example",
        &["bob@dest.example"],
        "forwarded",
    )
    .await;
    let m = arrived(&h.dest, "forwarded").await;
    assert!(m.mail_from.starts_with("SRS0="), "{}", m.mail_from);
    assert_eq!(m.peer.ip(), ip("127.0.0.4"));

    // The content scanner's "add header" verdict: high_risk.
    h.send(
        "127.0.0.1",
        "alice@acme.example",
        &["bob@dest.example"],
        "SPAMMY offer",
    )
    .await;
    let m = arrived(&h.dest, "SPAMMY offer").await;
    assert_eq!(m.header("X-Spam").as_deref(), Some("Yes"));
    assert_eq!(m.peer.ip(), ip("127.0.0.3"));

    // A pinned tenant: its pool, whatever it sends.
    h.send(
        "127.0.0.6",
        "dan@pinned.example",
        &["bob@dest.example"],
        "pinned",
    )
    .await;
    assert_eq!(arrived(&h.dest, "pinned").await.peer.ip(), ip("127.0.0.5"));

    let attempts = h.attempts("bob@dest.example", 4).await;
    assert_eq!(
        attempts,
        [
            "remote host mx.dest.example, pool default from 127.0.0.2",
            "remote host mx.dest.example, pool forwarding (srs) from 127.0.0.4",
            "remote host mx.dest.example, pool high_risk (spam verdict) from 127.0.0.3",
            "remote host mx.dest.example, pool dedicated (pinned) from 127.0.0.5",
        ]
    );
    assert_eq!(
        h.attempts("nobody@dest.example", 1).await,
        ["remote host mx.dest.example, pool default from 127.0.0.2"]
    );
    assert_eq!(
        h.attempts("frank@bouncy.example", 1).await,
        ["remote host mx.home.example, pool high_risk (null sender) from 127.0.0.3"]
    );

    // acme is warned: its next message, registered or not, leaves from high_risk.
    let store = h.relay().store.clone();
    let acme = store.find_tenant("acme").await.unwrap().unwrap();
    store
        .record_transition(
            &NewTransition {
                tenant_id: acme.id,
                at_ms: relayward::clock::Clock::now_ms(&relayward::clock::SystemClock),
                from: TenantState::Active,
                to: TenantState::Warned,
                cause: "operator".into(),
                summary: "egress test".into(),
                probation_until_ms: None,
                evidence: "{}".into(),
                attestation: None,
            },
            "operator:test",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.relay().abuse.status(acme.id).state != TenantState::Warned {
        assert!(Instant::now() < deadline, "the relay never saw acme warned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(
        "127.0.0.1",
        "alice@acme.example",
        &["erin@dest.example"],
        "after the warning",
    )
    .await;
    assert_eq!(
        arrived(&h.dest, "after the warning").await.peer.ip(),
        ip("127.0.0.3")
    );
    assert_eq!(
        h.attempts("erin@dest.example", 1).await,
        ["remote host mx.dest.example, pool high_risk (tenant risk) from 127.0.0.3"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_both_families_binds_ipv6_for_an_ipv6_mx() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: no ::1 here");
        return;
    }
    let pools = r#"
[[egress_pool]]
name = "default"
source_addresses = ["127.0.0.2", "::1"]
"#;
    let mut h = Harness::new(pools).await;
    let v6 = SmtpSink::start(SocketAddr::new(ip("::1"), h.dest.addr().port())).await;
    h.dns.add_mx("v6.example", 10, "mx.v6.example");
    h.dns.add_aaaa("mx.v6.example", "::1".parse().unwrap());
    h.tenant("acme", "127.0.0.1").await;
    h.start().await;
    h.send(
        "127.0.0.1",
        "alice@acme.example",
        &["bob@v6.example"],
        "over ipv6",
    )
    .await;
    h.send(
        "127.0.0.1",
        "alice@acme.example",
        &["bob@dest.example"],
        "over ipv4",
    )
    .await;
    assert_eq!(arrived(&v6, "over ipv6").await.peer.ip(), ip("::1"));
    assert_eq!(
        arrived(&h.dest, "over ipv4").await.peer.ip(),
        ip("127.0.0.2")
    );
    assert_eq!(
        h.attempts("bob@v6.example", 1).await,
        ["remote host mx.v6.example, pool default from ::1"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_pools_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, POOLS).unwrap();
    let out = cli(&path, &["check-config"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("[[egress_pool]]").count(), 4, "{text}");
    assert!(text.contains("name = \"high_risk\""), "{text}");
    assert!(
        text.contains("ehlo_hostname = \"bulk.relay.test\""),
        "{text}"
    );
    assert!(text.contains("tenants = [\"pinned\"]"), "{text}");

    for (bad, reason) in [
        (
            "[[egress_pool]]\nname = \"default\"\nsource_addresses = [\"127.0.0.2\"]\n\
             [[egress_pool]]\nname = \"default\"\nsource_addresses = [\"127.0.0.3\"]\n",
            "egress_pool \"default\" is defined twice",
        ),
        (
            "[[egress_pool]]\nname = \"high_risk\"\nsource_addresses = []\n",
            "egress_pool \"high_risk\": source_addresses is empty",
        ),
        (
            "[[egress_pool]]\nname = \"high-risk\"\nsource_addresses = [\"127.0.0.3\"]\n",
            "egress_pool \"high-risk\": no mail would leave from it",
        ),
    ] {
        std::fs::write(&path, bad).unwrap();
        let out = cli(&path, &["check-config"]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(err.contains(reason), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_to_a_tenant_that_does_not_exist_stops_the_start() {
    let mut h = Harness::new(POOLS).await;
    let config = Config::load(Some(&h.config_path)).unwrap();
    let err = match start_with(config, StartOptions::default()).await {
        Ok(_) => panic!("started with a pin to a missing tenant"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("egress_pool \"dedicated\": no tenant \"pinned\""),
        "{err}"
    );
    h.tenant("pinned", "127.0.0.6").await;
    h.start().await;
    h.shutdown().await;
}
