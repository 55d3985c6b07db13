//! Outbound content scanning with a real rspamd (`[scan] rspamd_url`): its own instance per test
//! (`tests/peers/rspamd/`: one scanner worker on loopback, no network lookups, marker rules), a
//! relay in-process, real SMTP sessions. Needs the Debian package `rspamd` (and curl); without it
//! the test says SKIPPED, or fails under CI.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward::clock::{Clock, ManualClock, SystemClock};
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_admin::TokenScope;
use relayward_core::{TenantId, TenantState, TraceQuery};
use relayward_policy::counters::Counters;
use relayward_testkit::{SmtpClient, SmtpSink};
use serde_json::json;

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const BLOCKED_750: &str =
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains";

/// A private rspamd; stopped on drop.
struct Rspamd {
    _state: tempfile::TempDir,
    pid: u32,
    port: u16,
}

impl Rspamd {
    fn start() -> Option<Rspamd> {
        let installed = Command::new("rspamd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "rspamd is missing (apt-get install rspamd)"
            );
            println!("SKIPPED: rspamd is not installed (apt-get install rspamd)");
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/rspamd/start.sh");
        let out = Command::new("sh")
            .arg(script)
            .arg(port.to_string())
            .arg(state.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rspamd did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        Some(Rspamd {
            _state: state,
            pid,
            port,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if self.pid != 0 {
            unsafe {
                libc::kill(self.pid as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && unsafe { libc::kill(self.pid as i32, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.pid = 0;
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn message(from: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@scan.example>\r\n\r\n{body}\r\n"
    )
}

async fn send(relay: &Running, from: &str, to: &str, subject: &str, body: &str) -> String {
    let ip: IpAddr = "127.0.0.31".parse().unwrap();
    let mut c = SmtpClient::connect_from(ip, relay.smtp_addrs[0])
        .await
        .unwrap();
    c.read_reply().await.unwrap();
    c.ehlo("mail.scan.example").await.unwrap();
    let data = message(from, to, subject, body);
    let (_, reply) = c.send_message(from, &[to], data.as_bytes()).await.unwrap();
    c.quit().await.ok();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_verdicts_decide_mark_trace_and_feed_the_detector() {
    let Some(mut rspamd) = Rspamd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let mut config = Config::default();
    config.server.hostname = "relay.test".into();
    config.server.data_dir = dir.path().join("data");
    config.server.directory_poll_ms = 100;
    config.delivery.smart_host = Some(sink.addr().to_string());
    config.admin.address = "127.0.0.1:0".parse().unwrap();
    config.listeners = vec![ListenerConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        ..ListenerConfig::default()
    }];
    config.scan.rspamd_url = Some(rspamd.url());
    config.validate().unwrap();
    let relay = start_with(
        config,
        StartOptions {
            clock: Arc::new(ManualClock::new(SystemClock.now_ms())),
        },
    )
    .await
    .unwrap();
    let store = relay.store.clone();
    let (_, operator) = relayward_admin::create_token(&*store, TokenScope::Operator, "t", "t")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", relay.admin_addr.unwrap());
    let post = |path: String, body: serde_json::Value| {
        let req = http
            .post(format!("{base}{path}"))
            .bearer_auth(&operator)
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let t = post(
        "/v1/tenants".into(),
        json!({"name": "scan", "admin_emails": []}),
    )
    .await;
    let tenant = t["id"].as_i64().unwrap();
    post(
        format!("/v1/tenants/{tenant}/domains"),
        json!({"domain": "scan.example", "verified": true}),
    )
    .await;
    post(
        format!("/v1/tenants/{tenant}/connectors"),
        json!({"name": "onprem", "kind": "on-premises", "ip_ranges": ["127.0.0.31/32"], "allow_unregistered": true}),
    )
    .await;
    let from = "news@scan.example";
    let deadline = Instant::now() + Duration::from_secs(5);
    // Clean mail passes (once the connector is in the relay's directory).
    loop {
        let r = send(&relay, from, "a@dest.example", "clean", "Hello.").await;
        if r.starts_with("250 ") {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // rspamd's reject is a 550 5.7.1 with its message; nothing is kept.
    let r = send(&relay, from, "a@dest.example", "gtube", GTUBE).await;
    assert_eq!(r, "550 5.7.1 Gtube pattern");
    // soft reject: 451 with its message.
    let r = send(
        &relay,
        from,
        "a@dest.example",
        "soft",
        "RELAYWARD-TEST-SOFT-REJECT",
    )
    .await;
    assert_eq!(r, "451 4.7.1 relayward test: try again later");
    // add header: accepted and marked.
    let r = send(
        &relay,
        from,
        "a@dest.example",
        "marked",
        "RELAYWARD-TEST-ADD-HEADER",
    )
    .await;
    assert!(r.starts_with("250 "), "{r}");
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    let marked = got
        .iter()
        .find(|m| m.data_text().contains("Subject: marked"))
        .expect("the marked message was delivered");
    assert!(
        marked.data_text().contains("X-Spam: Yes\r\n"),
        "{}",
        marked.data_text()
    );
    assert!(marked
        .data_text()
        .contains("X-Spam-Score: 7.00 / 15.00\r\n"));
    let clean = got
        .iter()
        .find(|m| m.data_text().contains("Subject: clean"))
        .unwrap();
    assert!(!clean.data_text().contains("X-Spam"));
    assert_eq!(got.len(), 2, "the refused messages were not kept");

    // The verdicts are in the trace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = store
            .search_trace(&TraceQuery {
                tenant_id: Some(TenantId(tenant)),
                ..Default::default()
            })
            .await
            .unwrap();
        let details: Vec<String> = ev.iter().filter_map(|e| e.detail.clone()).collect();
        let has = |s: &str| details.iter().any(|d| d.contains(s));
        if has("scan: rspamd action=[no action]")
            && has("reason=content_scan scan: rspamd action=[reject] score=15.00")
            && has("action=[add header] score=7.00/15.00 symbols=RELAYWARD_TEST_ADD_HEADER")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{details:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A tenant whose mail turns spammy: its spam verdicts block it from unregistered domains,
    // with the verdicts as evidence; its registered clean mail still flows.
    for i in 0..10 {
        let r = send(
            &relay,
            from,
            "b@dest.example",
            &format!("spam{i}"),
            "RELAYWARD-TEST-REJECT",
        )
        .await;
        assert!(r.starts_with("550 5.7.1"), "{r}");
    }
    relay.abuse.idle().await;
    let now = relay.abuse.now_ms();
    let hour = relay
        .abuse
        .counters()
        .snapshot(now, TenantId(tenant))
        .windows
        .hour;
    assert_eq!((hour.scanned, hour.scan_spam), (14, 13), "{hour:?}");
    assert_eq!(
        relay.abuse.status(TenantId(tenant)).state,
        TenantState::BlockedUnregistered
    );
    let block = store
        .list_transitions(TenantId(tenant), 0)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("blocked");
    println!("spammy tenant blocked: {}", block.summary);
    assert!(block.summary.contains("spam_verdicts"), "{}", block.summary);
    let r = send(
        &relay,
        "x@elsewhere.example",
        "c@dest.example",
        "unreg",
        "Hello.",
    )
    .await;
    assert_eq!(r, BLOCKED_750);
    let r = send(&relay, from, "c@dest.example", "still", "Hello.").await;
    assert!(r.starts_with("250 "), "{r}");

    // rspamd down: the tenant's server is told to retry (on_failure = tempfail).
    rspamd.stop();
    let r = send(&relay, from, "c@dest.example", "down", "Hello.").await;
    assert_eq!(r, "451 4.7.1 Content scan unavailable, try again later");
    relay.shutdown().await;
}
