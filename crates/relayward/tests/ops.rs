//! Operations endpoints on the admin listener: `/metrics` read with a real Prometheus text
//! parser (`prometheus_client` from PyPI) before and after real SMTP sessions, its access rule,
//! `/healthz`, and `/readyz` turning not-ready when the spool's file system goes read-only.

mod common;

use relayward_core::TenantId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward::clock::ManualClock;
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_admin::TokenScope;
use relayward_testkit::{SmtpClient, SmtpSink};
use serde_json::{json, Value};

struct Relay {
    _dir: tempfile::TempDir,
    relay: Running,
    sink: SmtpSink,
    http: reqwest::Client,
    base: String,
}

async fn start(data_dir: Option<std::path::PathBuf>, metrics_public: bool) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let mut config = Config::default();
    config.server.hostname = "relay.test".into();
    config.server.data_dir = data_dir.unwrap_or_else(|| dir.path().join("data"));
    config.server.directory_poll_ms = 100;
    config.delivery.smart_host = Some(sink.addr().to_string());
    config.admin.address = "127.0.0.1:0".parse().unwrap();
    config.admin.metrics_public = metrics_public;
    config.listeners = vec![ListenerConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        ..ListenerConfig::default()
    }];
    config.validate().unwrap();
    let relay = start_with(
        config,
        StartOptions {
            clock: Arc::new(ManualClock::new(relayward::clock::SystemClock.now_ms())),
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", relay.admin_addr.unwrap());
    Relay {
        _dir: dir,
        relay,
        sink,
        http: reqwest::Client::new(),
        base,
    }
}

use relayward::clock::Clock;

impl Relay {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ctype, resp.text().await.unwrap())
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn session(&self, ip: &str) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, self.relay.smtp_addrs[0])
            .await
            .unwrap();
        let (code, _) = c.read_reply().await.unwrap();
        assert_eq!(code, 220);
        c.ehlo("mail.ops.example").await.unwrap();
        c
    }
}

/// Parses Prometheus text with `prometheus_client`'s parser: `name{label="v",...}` → value
/// (labels sorted). `None` (after SKIPPED) without the parser on a developer machine.
fn parse(text: &str) -> Option<HashMap<String, f64>> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let have = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus_client is missing (pip install prometheus-client)"
        );
        println!("SKIPPED: prometheus_client not available (pip install prometheus-client)");
        return None;
    }
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let out = common::python(script, &[file.path().to_str().unwrap()])?;
    Some(serde_json::from_str(&out).unwrap())
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_sessions_and_need_an_operator_token() {
    let r = start(None, false).await;
    let store = r.relay.store.clone();
    let (_, operator) =
        relayward_admin::create_token(&*store, TokenScope::Operator, "ops test", "test")
            .await
            .unwrap();
    let t = r
        .post(
            "/v1/tenants",
            &operator,
            json!({"name": "ops", "admin_emails": []}),
        )
        .await;
    let tenant = t["id"].as_i64().unwrap();
    r.post(
        &format!("/v1/tenants/{tenant}/domains"),
        &operator,
        json!({"domain": "ops.example", "verified": true}),
    )
    .await;
    r.post(
        &format!("/v1/tenants/{tenant}/connectors"),
        &operator,
        json!({"name": "onprem", "kind": "on-premises", "ip_ranges": ["127.0.0.9/32"]}),
    )
    .await;
    let (_, tenant_token) = relayward_admin::create_token(
        &*store,
        TokenScope::Tenant(TenantId(tenant)),
        "ops tenant",
        "test",
    )
    .await
    .unwrap();

    // Access: an operator token, nothing less.
    assert_eq!(r.get("/metrics", None).await.0, 401);
    assert_eq!(r.get("/metrics", Some(&tenant_token)).await.0, 403);
    let (status, ctype, before) = r.get("/metrics", Some(&operator)).await;
    assert_eq!(status, 200, "{before}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let Some(before) = parse(&before) else {
        return;
    };

    // One accepted message, one unattributed client refused (5.7.64).
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        // The connector reaches the relay's directory within its poll.
        let mut c = r.session("127.0.0.9").await;
        let data = b"From: <a@ops.example>\r\nTo: <b@dest.example>\r\nSubject: m\r\n\r\nHi.\r\n";
        let (_, reply) = c
            .send_message("a@ops.example", &["b@dest.example"], data)
            .await
            .unwrap();
        if reply.starts_with("250 ") {
            break c;
        }
        assert!(Instant::now() < deadline, "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.quit().await.ok();
    let mut stranger = r.session("127.0.0.10").await;
    let (code, text) = stranger.cmd("MAIL FROM:<x@ops.example>").await.unwrap();
    assert_eq!(code, 550, "{text}");
    stranger.quit().await.ok();
    r.sink.wait_for(1, Duration::from_secs(10)).await;

    // The counters moved by what happened (and the trace-derived ones once it is counted).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (status, _, text) = r.get("/metrics", Some(&operator)).await;
        assert_eq!(status, 200);
        let after = parse(&text).unwrap();
        let delivered = value(
            &after,
            "relayward_delivery_results_total{result=\"delivered\"}",
        ) - value(
            &before,
            "relayward_delivery_results_total{result=\"delivered\"}",
        );
        if delivered >= 1.0 {
            break after;
        }
        assert!(Instant::now() < deadline, "no delivery counted: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta = |k: &str| value(&after, k) - value(&before, k);
    for (key, at_least) in [
        (
            "relayward_smtp_messages_accepted_total{method=\"ip\",sender_class=\"registered\"}",
            1.0,
        ),
        (
            "relayward_smtp_refusals_total{code=\"550\",reason=\"not_attributed\"}",
            1.0,
        ),
        (
            "relayward_smtp_connections_total{outcome=\"served\",role=\"relay\"}",
            2.0,
        ),
        ("relayward_smtp_replies_total{code=\"250\"}", 3.0),
        ("relayward_smtp_replies_total{code=\"550\"}", 1.0),
        ("relayward_spool_commit_seconds_count{}", 1.0),
        ("relayward_spool_write_fsync_seconds_count{}", 1.0),
        ("relayward_detector_evaluations_total{}", 1.0),
        (
            "relayward_delivery_attempts_total{remote_class=\"delivered\"}",
            1.0,
        ),
    ] {
        assert!(delta(key) >= at_least, "{key}: moved by {}", delta(key));
    }
    assert!(delta("relayward_smtp_accepted_bytes_total{}") >= 50.0);
    assert_eq!(value(&after, "relayward_tenants{state=\"active\"}"), 1.0);
    assert_eq!(
        value(&after, "relayward_tenants{state=\"blocked_unregistered\"}"),
        0.0
    );
    assert_eq!(value(&after, "relayward_smtp_sessions_active{}"), 0.0);
    // No tenant label by default.
    assert!(
        !after.keys().any(|k| k.contains("tenant=")),
        "a tenant label without per_tenant"
    );

    // Probes: no token needed.
    let (status, _, body) = r.get("/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = r.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    r.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_needs_no_token() {
    let r = start(None, true).await;
    let (status, _, text) = r.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.contains("relayward_tenants"), "{text}");
    r.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_not_ready_when_the_spool_cannot_be_written() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let Some(fs) = common::SmallFs::mount(&data, "32m") else {
        return;
    };
    let r = start(Some(data.clone()), false).await;
    let (status, _, body) = r.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");

    let filler = common::fill(&fs.0);
    let (status, _, body) = r.get("/readyz", None).await;
    println!("full spool file system: /readyz {status} {body}");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let spool = check("spool");
    assert_eq!(spool["ok"], false, "{body}");
    assert!(
        spool["detail"].as_str().unwrap().contains("not writable"),
        "{body}"
    );
    // Only what is broken is reported broken.
    assert_eq!(check("listeners")["ok"], true, "{body}");
    assert_eq!(check("store")["ok"], true, "{body}");

    std::fs::remove_file(filler).unwrap();
    let (status, _, body) = r.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    r.relay.shutdown().await;
}
