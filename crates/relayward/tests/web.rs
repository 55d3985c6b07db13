//! The web admin center in a real browser: Debian's Chromium driven by Playwright
//! (`playwright-core`, the npm package in tests/web/) against the relay running in-process, its
//! admin listener on loopback, real SMTP sessions from 127.0.x.y and an in-test DNS server.
//!
//! A tenant's compromised server floods mail from unregistered domains until the detector
//! blocks the tenant (5.7.750). Then, in the browser (tests/web/admin-center.mjs): the tenant
//! admin signs in, sees the block with the exact reply and the evidence, reads the traffic
//! charts, adds and verifies the evidence's domains against the in-test DNS (the script asks
//! this test to publish each TXT record), disables the suspicious connector, releases a
//! restricted sender and requests unblock; the operator signs in, sees the request and
//! unblocks; the tenant's banner shows probation; another tenant's pages stay out of reach,
//! URL tampering included. Each page is screenshotted at 1280×800 and 390×844.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or `RELAYWARD_CHROMIUM`) and `npm ci` in
//! tests/web; without them the test says "skipped" and passes, except under CI.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward::clock::{Clock, ManualClock, SystemClock};
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_admin::TokenScope;
use relayward_core::{SenderClass, TenantId, TenantState, TraceEvent, TraceKind};
use relayward_policy::limits::{LimitAction, SenderLimits};
use relayward_testkit::{DnsServer, SmtpClient, SmtpSink};
use serde_json::{json, Value};

const BLOCKED_750: &str =
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains";
const HOUR_MS: i64 = 3_600_000;
/// The whole browser suite, generously; it takes well under a minute.
const SUITE_TIMEOUT: Duration = Duration::from_secs(150);

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Node, Chromium and the npm packages; `None` (after "skipped: ...") when one is missing on
/// a developer machine. Under CI a missing one fails the test.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let skip = |why: &str| {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}, and CI must run the browser suite (.ci/run installs it)"
        );
        println!("skipped: {why}");
        None
    };
    let node = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("node"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    let Some(node) = node else {
        return skip("node is not installed (Node 20 or later)");
    };
    let chromium = std::env::var_os("RELAYWARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        return skip(&format!(
            "{} is missing (apt-get install --no-install-recommends chromium, or set RELAYWARD_CHROMIUM)",
            chromium.display()
        ));
    }
    if !suite_dir()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return skip("the npm packages are missing (cd crates/relayward/tests/web && npm ci)");
    }
    Some((node, chromium))
}

struct Relay {
    _dir: tempfile::TempDir,
    /// The detector's clock: the operator's review comes an hour after the incident.
    clock: Arc<ManualClock>,
    relay: Running,
    sink: SmtpSink,
    dns: Arc<DnsServer>,
    http: reqwest::Client,
    base: String,
}

impl Relay {
    async fn start() -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let sink = SmtpSink::start("127.0.0.1:0").await;
        let dns = Arc::new(DnsServer::start().await);
        let mut config = Config::default();
        config.server.hostname = "relay.test".into();
        config.server.data_dir = dir.path().join("data");
        config.server.directory_poll_ms = 100;
        config.server.detector_interval_ms = 100;
        config.delivery.smart_host = Some(sink.addr().to_string());
        config.delivery.retry_schedule_secs = vec![3600];
        config.delivery.dns_resolver = Some(dns.addr());
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        // A sender over five messages a minute is restricted: the Senders page has one. Until
        // lifted, not until midnight: the detector's clock moves an hour on below, which would
        // end a restriction for the day when the suite runs in the day's last hour.
        config.sender_limits = Some(SenderLimits {
            messages_per_minute: 5,
            action: LimitAction::Block,
            ..SenderLimits::default()
        });
        config.listeners = vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            ..ListenerConfig::default()
        }];
        config.validate().unwrap();
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let relay = start_with(
            config,
            StartOptions {
                clock: clock.clone(),
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", relay.admin_addr.expect("admin listener"));
        Relay {
            _dir: dir,
            clock,
            relay,
            sink,
            dns,
            http: reqwest::Client::new(),
            base,
        }
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
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn session(&self, ip: &str) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, self.relay.smtp_addrs[0])
            .await
            .unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo("mail.contoso.example").await.unwrap();
        c
    }
}

async fn send(c: &mut SmtpClient, from: &str, to: &str, subject: &str) -> String {
    let data = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@contoso.example>\r\n\r\nHello.\r\n"
    );
    c.send_message(from, &[to], data.as_bytes())
        .await
        .unwrap()
        .1
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250 2.0.0 Ok: queued as ")
}

/// A week of the tenant's ordinary traffic before today, as its trace would hold it: the
/// 7-day chart has something to draw besides the incident.
fn history(tenant: i64, now_ms: i64) -> Vec<TraceEvent> {
    let this_hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let mut events = Vec::new();
    for h in 2..(6 * 24) {
        let start = this_hour - h * HOUR_MS;
        let hour_of_day = start.rem_euclid(24 * HOUR_MS) / HOUR_MS;
        let office = (8..18).contains(&hour_of_day);
        let (registered, null) = if office { (4 + h % 3, h % 2) } else { (1, 0) };
        for i in 0..(registered + null) {
            let mut e = TraceEvent::new(TraceKind::Received);
            e.at_ms = start + 60_000 * (i + 1);
            e.tenant_id = Some(TenantId(tenant));
            e.queue_id = Some(format!("H{h}X{i}"));
            e.client_ip = Some("127.0.0.7".into());
            e.sender_class = Some(if i < registered {
                SenderClass::Registered
            } else {
                SenderClass::Null
            });
            e.sender = Some(if i < registered {
                format!("user{i}@contoso.example")
            } else {
                String::new()
            });
            e.recipient = Some("customer@partner.example".into());
            events.push(e);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_center_in_a_browser() {
    let Some((node, chromium)) = browser_or_skip() else {
        return;
    };
    // The charts are per clock hour: keep the incident and the checks in one hour.
    let into_hour = SystemClock.now_ms().rem_euclid(HOUR_MS);
    if into_hour > HOUR_MS - 60_000 {
        tokio::time::sleep(Duration::from_millis((HOUR_MS - into_hour + 1000) as u64)).await;
    }
    let r = Relay::start().await;
    let store = r.relay.store.clone();
    let (_, operator) = relayward_admin::create_token(&*store, TokenScope::Operator, "ops", "test")
        .await
        .unwrap();

    // Two tenants. Contoso: its domain, its hybrid server (which forwards), and a legacy
    // connector someone added this week for a whole /22.
    let contoso = r
        .post(
            "/v1/tenants",
            &operator,
            json!({"name": "contoso", "admin_emails": ["admin@contoso.example"]}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let tp = format!("/v1/tenants/{contoso}");
    r.post(
        &format!("{tp}/domains"),
        &operator,
        json!({"domain": "contoso.example", "verified": true}),
    )
    .await;
    r.post(
        &format!("{tp}/connectors"),
        &operator,
        json!({"name": "onprem", "kind": "on-premises", "ip_ranges": ["127.0.0.7/32"], "allow_unregistered": true}),
    )
    .await;
    r.post(
        &format!("{tp}/connectors"),
        &operator,
        json!({"name": "legacy-smtp", "kind": "on-premises", "ip_ranges": ["127.0.8.0/22"], "allow_unregistered": true}),
    )
    .await;
    let fabrikam = r
        .post("/v1/tenants", &operator, json!({"name": "fabrikam"}))
        .await["id"]
        .as_i64()
        .unwrap();
    r.post(
        &format!("/v1/tenants/{fabrikam}/domains"),
        &operator,
        json!({"domain": "fabrikam-secret.example", "verified": true}),
    )
    .await;
    r.post(
        &format!("/v1/tenants/{fabrikam}/connectors"),
        &operator,
        json!({"name": "fabrikam-edge", "kind": "partner", "ip_ranges": ["127.0.9.1/32"]}),
    )
    .await;
    let token = |tenant: i64, label: &str| {
        let r = &r;
        let operator = operator.clone();
        let label = label.to_string();
        async move {
            r.post(
                "/v1/tokens",
                &operator,
                json!({"scope": "tenant", "tenant_id": tenant, "label": label}),
            )
            .await
        }
    };
    let contoso_admin = token(contoso, "contoso admin").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let fabrikam_admin = token(fabrikam, "fabrikam admin").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = token(contoso, "former admin").await;
    let resp = r
        .http
        .delete(format!("{}/v1/tokens/{}", r.base, revoked["id"]))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let revoked = revoked["token"].as_str().unwrap().to_string();

    let now_ms = SystemClock.now_ms();
    store.record_trace(&history(contoso, now_ms)).await.unwrap();

    // Ordinary mail first: a report the partner's server defers stays queued, and a
    // newsletter over its sender limit is restricted (5.1.8).
    r.sink
        .reply_rcpt("slow@partner.example", "451 4.3.2 Try again later");
    let mut onprem = r.session("127.0.0.7").await;
    let report = send(
        &mut onprem,
        "reports@contoso.example",
        "slow@partner.example",
        "report",
    )
    .await;
    assert!(accepted(&report), "{report}");
    let report_id = report.rsplit(' ').next().unwrap().to_string();
    let mut restricted = None;
    for i in 0..8 {
        let reply = send(
            &mut onprem,
            "newsletter@contoso.example",
            "reader@partner.example",
            &format!("news{i}"),
        )
        .await;
        if !accepted(&reply) {
            restricted = Some(reply);
            break;
        }
    }
    assert_eq!(
        restricted.as_deref(),
        Some("550 5.1.8 Access denied, bad outbound sender")
    );
    onprem.quit().await.ok();

    // The compromised server behind the legacy connector floods mail from domains contoso
    // never registered: blocked with 5.7.750.
    let mut legacy = r.session("127.0.8.9").await;
    let spam_domains = [
        "newco.example",
        "newco-mail.example",
        "partner-list.example",
    ];
    let mut refusal = None;
    for i in 0..600 {
        let from = format!("staff{i}@{}", spam_domains[i % 3]);
        let reply = send(
            &mut legacy,
            &from,
            "client@elsewhere.example",
            &format!("f{i}"),
        )
        .await;
        if !accepted(&reply) {
            refusal = Some(reply);
            break;
        }
    }
    assert_eq!(refusal.as_deref(), Some(BLOCKED_750));
    // A few more tries: refused, and counted as refused in the charts.
    for i in 0..3 {
        let (_, reply) = legacy
            .cmd(&format!("MAIL FROM:<late{i}@newco.example>"))
            .await
            .unwrap();
        assert_eq!(reply, BLOCKED_750);
    }
    legacy.quit().await.ok();
    r.relay.abuse.idle().await;
    r.relay.flush_trace().await;
    assert_eq!(
        store
            .tenant_status(TenantId(contoso))
            .await
            .unwrap()
            .unwrap()
            .state,
        TenantState::BlockedUnregistered
    );
    // The admin and the operator act an hour later, for the detector: its last-hour windows
    // no longer hold the burst when the tenant is let out on probation. (The message trace and
    // the charts stay on the wall clock.)
    r.clock.advance(Duration::from_secs(3700));

    // The browser suite.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = Command::new(&node)
        .arg(suite_dir().join("admin-center.mjs"))
        .current_dir(suite_dir())
        .env("RELAYWARD_URL", &r.base)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &shots)
        .env("OPERATOR_TOKEN", &operator)
        .env("TENANT_TOKEN", &contoso_admin)
        .env("OTHER_TENANT_TOKEN", &fabrikam_admin)
        .env("REVOKED_TOKEN", &revoked)
        .env("TENANT_ID", contoso.to_string())
        .env("OTHER_TENANT_ID", fabrikam.to_string())
        .env("QUEUED_ID", &report_id)
        .env("BLOCKED_REPLY", BLOCKED_750)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let dns = r.dns.clone();
    // The script asks for DNS records to be published, as the tenant admin would at its DNS
    // host, and waits for the answer; everything else it prints is its log.
    let conversation = tokio::task::spawn_blocking(move || {
        let mut stdin = stdin;
        let mut log = Vec::new();
        let mut published = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("@publish-txt ") {
                let (domain, value) = rest.split_once(' ').expect("@publish-txt DOMAIN VALUE");
                dns.add_txt(domain, &["v=spf1 -all"]);
                dns.add_txt(domain, &[value]);
                published.push(domain.to_string());
                writeln!(stdin, "published {domain}").unwrap();
                stdin.flush().unwrap();
            }
            println!("{line}");
            log.push(line);
        }
        (log, published)
    });
    let errors = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            eprintln!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SUITE_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("the browser suite did not finish within {SUITE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (log, published) = conversation.await.unwrap();
    let stderr = errors.await.unwrap();
    assert!(
        status.success(),
        "the browser suite failed ({status}):\n{stderr}"
    );
    let summary = log
        .iter()
        .find(|l| l.starts_with("web suite: "))
        .unwrap_or_else(|| panic!("no summary from the browser suite:\n{}", log.join("\n")));
    assert!(summary.ends_with(", 0 failed"), "{summary}");
    let mut published_sorted = published.clone();
    published_sorted.sort();
    assert_eq!(
        published_sorted,
        [
            "newco-mail.example",
            "newco.example",
            "partner-list.example"
        ]
    );

    // What the browser did is what the relay holds now.
    assert_eq!(
        store
            .tenant_status(TenantId(contoso))
            .await
            .unwrap()
            .unwrap()
            .state,
        TenantState::Probation
    );
    let domains = store.list_domains(Some(TenantId(contoso))).await.unwrap();
    for d in spam_domains {
        assert!(
            domains.iter().any(|x| x.domain == d && x.verified),
            "{d} not verified: {domains:?}"
        );
    }
    let connectors = store
        .list_connectors(Some(TenantId(contoso)))
        .await
        .unwrap();
    let legacy_connector = connectors.iter().find(|c| c.name == "legacy-smtp").unwrap();
    assert!(!legacy_connector.enabled);
    assert!(
        connectors
            .iter()
            .find(|c| c.name == "onprem")
            .unwrap()
            .enabled
    );
    let audit = store
        .list_audit(Some(TenantId(contoso)), 500)
        .await
        .unwrap();
    let by_tenant_admin = |action: &str| {
        audit
            .iter()
            .any(|e| e.action == action && e.actor.ends_with(&format!("/tenant:{contoso}")))
    };
    for action in [
        "domain.add",
        "domain.verify",
        "connector.update",
        "tenant.request_unblock",
        "sender.unrestrict",
    ] {
        assert!(
            by_tenant_admin(action),
            "no {action} by the tenant admin: {audit:?}"
        );
    }
    assert!(audit
        .iter()
        .any(|e| e.action == "tenant.state" && e.actor.ends_with("/operator")));
    // Nothing of fabrikam changed.
    assert_eq!(
        store
            .tenant_status(TenantId(fabrikam))
            .await
            .unwrap()
            .map_or(TenantState::Active, |s| s.state),
        TenantState::Active
    );
    assert!(store
        .list_audit(Some(TenantId(fabrikam)), 100)
        .await
        .unwrap()
        .iter()
        .all(|e| !e.actor.contains(&format!("tenant:{contoso}"))));
    // The very next unregistered MAIL through the hybrid server relays again.
    let mut onprem = r.session("127.0.0.7").await;
    let reply = send(
        &mut onprem,
        "member@forwarded-list.example",
        "a@elsewhere.example",
        "after",
    )
    .await;
    assert!(accepted(&reply), "{reply}");
    onprem.quit().await.ok();

    let mut files: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    println!("screenshots in {}: {}", shots.display(), files.join(" "));
    for page in [
        "tenant-status-blocked",
        "tenant-traffic",
        "tenant-domains",
        "tenant-connectors",
        "tenant-trace",
        "tenant-message",
        "tenant-senders",
        "tenant-status-under-review",
        "operator-tenants",
        "operator-review",
        "operator-audit",
        "operator-queue",
        "operator-tokens",
        "tenant-status-probation",
    ] {
        for size in ["1280x800", "390x844"] {
            let name = format!("{page}-{size}.png");
            assert!(files.contains(&name), "no screenshot {name}");
        }
    }
    r.relay.shutdown().await;
}
