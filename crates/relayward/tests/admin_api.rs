//! The admin API wired into the running relay: real HTTP on loopback, real SMTP sessions from
//! 127.0.x.y, an in-test DNS server for domain verification and an in-test next hop.
//!
//! - The way back through the API alone: a tenant blocked by the detector (5.7.750) sees why,
//!   registers and verifies the domains of the evidence, disables the suspicious connector and
//!   asks for unblock; the operator unblocks; the next MAIL gets 250 at once. The relay runs
//!   in-process on a simulated clock (`serve::start_with`).
//! - The CLI in remote mode (`--server`/`--token`) against the real `relayward serve`.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward::clock::{Clock, ManualClock};
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_admin::TokenScope;
use relayward_core::{TenantId, TenantState};
use relayward_testkit::{DnsServer, SmtpClient, SmtpSink};
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;
const BLOCKED_750: &str =
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains";

// ---------------------------------------------------------------------------------------------
// HTTP

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: std::net::SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// `(status, body)`; the body is `null` when empty.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, v)
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, token, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn post_ok(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, v) = self.post(path, token, body).await;
        assert!((200..300).contains(&status), "POST {path}: {status} {v}");
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The relay in-process

struct Harness {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    relay: Running,
    _sink: SmtpSink,
    dns: DnsServer,
    api: Api,
}

/// Noon UTC of the current day: far from midnight, within a day of the system clock (the audit
/// log's "last 7 days" are on the system clock).
fn today_noon_ms() -> i64 {
    let now = relayward::clock::SystemClock.now_ms();
    now.div_euclid(DAY_MS) * DAY_MS + DAY_MS / 2
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sink = SmtpSink::start("127.0.0.1:0").await;
        let dns = DnsServer::start().await;
        let mut config = Config::default();
        config.server.hostname = "relay.test".into();
        config.server.data_dir = dir.path().join("data");
        // Slow polls: whatever the test sees at once is the API's doing, not the poll's.
        config.server.directory_poll_ms = 60_000;
        config.server.detector_interval_ms = 100;
        config.delivery.smart_host = Some(sink.addr().to_string());
        config.delivery.retry_schedule_secs = vec![3600];
        config.delivery.dns_resolver = Some(dns.addr());
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        config.listeners = vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            ..ListenerConfig::default()
        }];
        config.validate().unwrap();
        let clock = Arc::new(ManualClock::new(today_noon_ms()));
        let relay = start_with(
            config,
            StartOptions {
                clock: clock.clone(),
            },
        )
        .await
        .unwrap();
        let api = Api::new(relay.admin_addr.expect("admin API on"));
        Harness {
            _dir: dir,
            clock,
            relay,
            _sink: sink,
            dns,
            api,
        }
    }

    async fn session(&self, ip: &str) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, self.relay.smtp_addrs[0])
            .await
            .unwrap();
        let (code, _) = c.read_reply().await.unwrap();
        assert_eq!(code, 220);
        c.ehlo("mail.comeback.example").await.unwrap();
        c
    }
}

async fn send(c: &mut SmtpClient, from: &str, to: &str, subject: &str) -> String {
    let data = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nHello.\r\n"
    );
    let (_, text) = c.send_message(from, &[to], data.as_bytes()).await.unwrap();
    text
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250 2.0.0 Ok: queued as ")
}

// ---------------------------------------------------------------------------------------------
// The way back through the API alone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_does_the_whole_way_back_through_the_api_alone() {
    let h = Harness::new().await;
    let api = &h.api;
    let store = h.relay.store.clone();
    let (_, operator) =
        relayward_admin::create_token(&*store, TokenScope::Operator, "test operator", "test")
            .await
            .unwrap();

    // The operator sets the tenant up: its own domain, the hybrid server that forwards
    // (may relay unregistered senders), and a legacy connector someone added this week.
    let t = api
        .post_ok(
            "/v1/tenants",
            &operator,
            json!({"name": "comeback", "admin_emails": []}),
        )
        .await;
    let tenant = t["id"].as_i64().unwrap();
    let tp = format!("/v1/tenants/{tenant}");
    api.post_ok(
        &format!("{tp}/domains"),
        &operator,
        json!({"domain": "comeback.example", "verified": true}),
    )
    .await;
    api.post_ok(
        &format!("{tp}/connectors"),
        &operator,
        json!({"name": "onprem", "kind": "on-premises", "ip_ranges": ["127.0.0.7/32"], "allow_unregistered": true}),
    )
    .await;
    api.post_ok(
        &format!("{tp}/connectors"),
        &operator,
        json!({"name": "legacy-smtp", "kind": "on-premises", "ip_ranges": ["127.0.8.0/22"], "allow_unregistered": true}),
    )
    .await;
    let created = api
        .post_ok(
            "/v1/tokens",
            &operator,
            json!({"scope": "tenant", "tenant_id": tenant, "label": "comeback admin"}),
        )
        .await;
    let admin = created["token"].as_str().unwrap().to_string();
    let other = api
        .post_ok("/v1/tenants", &operator, json!({"name": "bystander"}))
        .await;
    let bystander = api
        .post_ok(
            "/v1/tokens",
            &operator,
            json!({"scope": "tenant", "tenant_id": other["id"], "label": "bystander admin"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Registered mail flows through the new connector at once (no directory poll needed).
    let mut legacy = h.session("127.0.8.9").await;
    let r = send(
        &mut legacy,
        "staff@comeback.example",
        "a@elsewhere.example",
        "first",
    )
    .await;
    assert!(accepted(&r), "{r}");

    // A compromised server behind the legacy connector floods mail from domains the tenant
    // never registered: the detector blocks unregistered senders with 5.7.750.
    let spam_domains = [
        "newco.example",
        "newco-mail.example",
        "partner-list.example",
    ];
    let mut leaked = 0;
    let mut refusal = None;
    for i in 0..400 {
        h.clock.advance(Duration::from_millis(300));
        let from = format!("staff{i}@{}", spam_domains[i % 3]);
        let r = send(
            &mut legacy,
            &from,
            "client@elsewhere.example",
            &format!("f{i}"),
        )
        .await;
        if !accepted(&r) {
            refusal = Some(r);
            break;
        }
        leaked += 1;
    }
    assert_eq!(refusal.as_deref(), Some(BLOCKED_750), "after {leaked}");
    h.relay.abuse.idle().await;

    // The tenant admin sees the block, why, and what to do.
    let status = api.get(&format!("{tp}/status"), &admin).await;
    assert_eq!(status["state"], "blocked_unregistered", "{status}");
    assert!(status["summary"].as_str().unwrap().contains("by detector"));
    let evidence = &status["evidence"];
    assert!(
        !evidence["signals"].as_array().unwrap().is_empty(),
        "{status}"
    );
    let mut named: Vec<String> = evidence["observations"]["top_unregistered_domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            "newco-mail.example",
            "newco.example",
            "partner-list.example"
        ]
    );
    let checklist: Vec<String> = serde_json::from_value(status["checklist"].clone()).unwrap();
    assert!(checklist[0].starts_with("[ ] "), "{checklist:?}");
    assert!(
        checklist[0].contains("partner-list.example"),
        "{checklist:?}"
    );
    assert!(
        checklist.iter().all(|c| c.starts_with("[ ] ")),
        "{checklist:?}"
    );
    // Another tenant's admin sees nothing of it.
    let (code, _) = api
        .call(
            reqwest::Method::GET,
            &format!("{tp}/status"),
            &bystander,
            None,
        )
        .await;
    assert_eq!(code, 404);

    // Asking now is refused, naming what is missing.
    let (code, p) = api
        .post(&format!("{tp}/request-unblock"), &admin, json!({}))
        .await;
    assert_eq!(code, 409, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("newco-mail.example, newco.example, partner-list.example"),
        "{p}"
    );

    // Register and verify every domain the evidence names: publish the TXT record, verify.
    for domain in &named {
        let d = api
            .post_ok(&format!("{tp}/domains"), &admin, json!({"domain": domain}))
            .await;
        assert_eq!(d["status"], "pending");
        let record = d["verification_record"]["value"].as_str().unwrap();
        let v = api
            .post_ok(
                &format!("{tp}/domains/{domain}/verify"),
                &admin,
                Value::Null,
            )
            .await;
        assert_eq!(v["status"], "not_found", "{v}");
        h.dns.add_txt(domain, &["v=spf1 -all"]);
        h.dns.add_txt(domain, &[record]);
        let v = api
            .post_ok(
                &format!("{tp}/domains/{domain}/verify"),
                &admin,
                Value::Null,
            )
            .await;
        assert_eq!(v["status"], "verified", "{v}");
    }
    let status = api.get(&format!("{tp}/status"), &admin).await;
    assert!(
        status["checklist"][0].as_str().unwrap().starts_with("[x] "),
        "{status}"
    );

    // Review the connectors: the legacy one is new, wide, without a certificate, and carried
    // the unregistered mail. Disable it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let suspicious = loop {
        let connectors = api.get(&format!("{tp}/connectors"), &admin).await;
        let legacy_view = connectors
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "legacy-smtp")
            .unwrap()
            .clone();
        let onprem_view = connectors
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "onprem")
            .unwrap()
            .clone();
        assert_eq!(onprem_view["audit"]["wide_ip_range"], false);
        if legacy_view["audit"]["unregistered_mail_24h"] == true {
            break legacy_view;
        }
        assert!(
            Instant::now() < deadline,
            "unregistered mail not flagged: {legacy_view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let audit = &suspicious["audit"];
    assert_eq!(audit["recently_changed"], true, "{audit}");
    assert_eq!(audit["wide_ip_range"], true, "{audit}");
    assert_eq!(audit["no_certificate"], true, "{audit}");
    assert!(audit["unregistered_messages_24h"].as_u64().unwrap() >= leaked as u64);
    let cid = suspicious["id"].as_i64().unwrap();
    let c = api
        .post_ok(
            &format!("{tp}/connectors/{cid}/disable"),
            &admin,
            Value::Null,
        )
        .await;
    assert_eq!(c["enabled"], false);
    // At once: the compromised server is no longer recognised at all.
    let (_, r) = legacy
        .cmd("MAIL FROM:<staff@comeback.example>")
        .await
        .unwrap();
    assert!(r.contains("5.7.64"), "{r}");
    legacy.quit().await.ok();

    // Ask for unblock; only the operator can grant it.
    let (code, p) = api.post(&format!("{tp}/unblock"), &admin, json!({})).await;
    assert_eq!(code, 403, "{p}");
    let status = api
        .post_ok(
            &format!("{tp}/request-unblock"),
            &admin,
            json!({"comment": "the legacy server was compromised; it is off, the new domains are registered"}),
        )
        .await;
    assert_eq!(status["state"], "under_review", "{status}");
    assert_eq!(
        h.relay
            .directory
            .current()
            .tenant(TenantId(tenant))
            .unwrap()
            .state,
        TenantState::UnderReview
    );
    // Under review, unregistered senders stay refused.
    let mut onprem = h.session("127.0.0.7").await;
    let (_, r) = onprem
        .cmd("MAIL FROM:<x@forwarded-list.example>")
        .await
        .unwrap();
    assert_eq!(r, BLOCKED_750);
    onprem.cmd("RSET").await.unwrap();

    // The operator reviews (status, evidence, the tenant's request) and unblocks.
    let review = api.get(&format!("{tp}/status"), &operator).await;
    assert_eq!(review["state"], "under_review");
    assert!(review["evidence"]["signals"].is_array());
    h.clock.advance(Duration::from_secs(3600));
    let status = api
        .post_ok(
            &format!("{tp}/unblock"),
            &operator,
            json!({"reason": "reviewed with the tenant"}),
        )
        .await;
    assert_eq!(status["state"], "probation", "{status}");
    assert_eq!(
        status["probation_until_ms"].as_i64().unwrap(),
        h.clock.now_ms() + 7 * DAY_MS
    );
    assert!(status["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.as_str().unwrap().starts_with("[x] ")));

    // The very next MAIL from an unregistered domain through the allowed connector: 250.
    let r = send(
        &mut onprem,
        "member@forwarded-list.example",
        "a@elsewhere.example",
        "after-unblock",
    )
    .await;
    assert!(accepted(&r), "{r}");
    let r = send(
        &mut onprem,
        "staff@newco.example",
        "a@elsewhere.example",
        "registered-now",
    )
    .await;
    assert!(accepted(&r), "{r}");
    onprem.quit().await.ok();
    assert_eq!(
        h.relay.abuse.status(TenantId(tenant)).state,
        TenantState::Probation
    );

    // Every step is in the audit log under the token that made it.
    let log = api
        .get(
            &format!("/v1/audit?tenant_id={tenant}&limit=200"),
            &operator,
        )
        .await;
    let entries = log.as_array().unwrap();
    let admin_actor = format!("token:{}/tenant:{tenant}", created["id"]);
    let by = |action: &str, actor: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["actor"] == actor)
    };
    assert!(by("domain.add", &admin_actor), "{log}");
    assert!(by("domain.verify", &admin_actor), "{log}");
    assert!(
        entries.iter().any(|e| e["actor"] == admin_actor
            && e["action"].as_str().unwrap().starts_with("connector.")),
        "{log}"
    );
    assert!(by("tenant.state", &admin_actor), "{log}");
    assert!(by("tenant.request_unblock", &admin_actor), "{log}");
    assert!(
        entries.iter().any(|e| e["action"] == "tenant.state"
            && e["actor"].as_str().unwrap().ends_with("/operator")),
        "{log}"
    );
    let transitions = store.list_transitions(TenantId(tenant), 0).await.unwrap();
    let path: Vec<(TenantState, String)> = transitions
        .iter()
        .rev()
        .map(|t| (t.to, t.cause.clone()))
        .collect();
    println!("the way back through the API: {path:?} after {leaked} leaked messages");
    assert_eq!(
        path.iter().map(|(s, _)| *s).collect::<Vec<_>>()[path.len() - 3..],
        [
            TenantState::BlockedUnregistered,
            TenantState::UnderReview,
            TenantState::Probation
        ]
    );
    h.relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The CLI in remote mode

fn remote(relay: &common::Relay, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("--server")
        .arg(format!("http://{}", relay.admin_addr))
        .args(args)
        .env_remove("RELAYWARD_URL")
        .env_remove("RELAYWARD_TOKEN")
        .env_remove("RELAYWARD_AUTH_PASSWORD");
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.output().unwrap()
}

fn remote_ok(relay: &common::Relay, token: &str, args: &[&str]) -> String {
    let out = remote(relay, Some(token), args);
    assert!(
        out.status.success(),
        "relayward --server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exit 1 with one line `relayward: <detail>` on stderr; returns the detail.
fn remote_err(relay: &common::Relay, token: Option<&str>, args: &[&str]) -> String {
    let out = remote(relay, token, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "relayward --server {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    err.strip_prefix("relayward: ")
        .unwrap_or_else(|| panic!("{err}"))
        .trim_end()
        .to_string()
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap().to_string()
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_to_the_running_relay_through_the_api() {
    let dns = DnsServer::start().await;
    let dns_addr = dns.addr();
    // The next hop refuses connections: accepted mail stays queued (deferred).
    let mut relay = common::Relay::new(&format!(
        "[delivery]\ndns_resolver = \"{dns_addr}\"\nsmart_host = \"127.0.0.1:{}\"\n",
        common::free_port()
    ));
    relay.start();
    common::wait_for_port(relay.admin_addr, &relay.log_path());
    let relay = Arc::new(relay);
    let r = relay.clone();
    let dns = Arc::new(dns);
    let d = dns.clone();
    tokio::task::spawn_blocking(move || walk(&r, &d))
        .await
        .unwrap();
}

fn walk(relay: &common::Relay, dns: &DnsServer) {
    // The first operator token, on the server's own store.
    let out = relay.ok(&["token", "create", "--operator", "--label", "ops laptop"]);
    let op = last_line(&out);
    assert!(op.starts_with("rw_"), "{out}");
    let tokens = json_of(&relay.ok(&["token", "list", "--json"]));
    assert_eq!(
        tokens[0]["created_by"].as_str().unwrap().split(':').next(),
        Some("cli")
    );
    assert!(!relay.ok(&["audit", "--json"]).contains(&op));

    // Without a token: a clear refusal, nothing sent.
    let e = remote_err(relay, None, &["tenant", "list"]);
    assert!(e.contains("--token"), "{e}");
    let e = remote_err(relay, Some("rw_1_nope"), &["tenant", "list"]);
    assert!(e.contains("malformed token"), "{e}");

    // Tenants.
    let acme = remote_ok(
        relay,
        &op,
        &["tenant", "add", "acme", "--admin-email", "it@acme.example"],
    );
    let acme: i64 = acme.trim().parse().unwrap();
    let other: i64 = remote_ok(relay, &op, &["tenant", "add", "other"])
        .trim()
        .parse()
        .unwrap();
    let list = remote_ok(relay, &op, &["tenant", "list"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains("acme") && list.contains("other"), "{list}");
    let list = json_of(&remote_ok(relay, &op, &["tenant", "list", "--json"]));
    assert_eq!(list[0]["admin_emails"][0], "it@acme.example");
    let e = remote_err(relay, Some(&op), &["tenant", "add", "acme"]);
    assert!(e.contains("acme"), "{e}");

    // Domains: add, the TXT record, verify by DNS, list, remove.
    let out = remote_ok(relay, &op, &["domain", "add", "acme", "acme.example"]);
    let record = out
        .lines()
        .last()
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(record.starts_with("relayward-verification="), "{out}");
    let e = remote_err(
        relay,
        Some(&op),
        &["domain", "verify", "acme", "acme.example"],
    );
    assert!(e.contains("no TXT record found"), "{e}");
    dns.add_txt("acme.example", &["relayward-verification=wrongtoken"]);
    let e = remote_err(
        relay,
        Some(&op),
        &["domain", "verify", "acme", "acme.example"],
    );
    assert!(e.contains("none is"), "{e}");
    dns.add_txt("acme.example", &[&record]);
    let out = remote_ok(relay, &op, &["domain", "verify", "acme", "acme.example"]);
    assert_eq!(out.trim(), "acme.example verified");
    remote_ok(
        relay,
        &op,
        &["domain", "add", "acme", "old.example", "--verified"],
    );
    let domains = json_of(&remote_ok(
        relay,
        &op,
        &["domain", "list", "acme", "--json"],
    ));
    assert_eq!(domains.as_array().unwrap().len(), 2);
    assert!(domains
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["verified"] == true));
    assert!(remote_ok(relay, &op, &["domain", "list", "acme"]).contains("verified"));
    let out = remote_ok(relay, &op, &["domain", "remove", "acme", "old.example"]);
    assert_eq!(out.trim(), "old.example removed");
    // A bulk import reads the file here and adds through the API.
    let file = relay.dir.path().join("import.txt");
    std::fs::write(&file, "imported.example\n# comment\nacme.example\n").unwrap();
    let out = remote_ok(
        relay,
        &op,
        &[
            "domain",
            "import",
            "acme",
            file.to_str().unwrap(),
            "--verified",
        ],
    );
    assert_eq!(out.trim(), "1 added, 1 already present");

    // Connectors: add, list, disable, enable, block, unblock, delete.
    remote_ok(
        relay,
        &op,
        &[
            "connector",
            "add",
            "acme",
            "--name",
            "onprem",
            "--kind",
            "on-premises",
            "--ip",
            "127.0.0.1/32",
        ],
    );
    remote_ok(
        relay,
        &op,
        &[
            "connector",
            "add",
            "acme",
            "--name",
            "spare",
            "--kind",
            "partner",
            "--ip",
            "10.0.0.0/16",
        ],
    );
    let table = remote_ok(relay, &op, &["connector", "list", "acme"]);
    assert!(
        table.contains("onprem") && table.contains("wide_ip_range"),
        "{table}"
    );
    remote_ok(relay, &op, &["connector", "disable", "acme", "spare"]);
    let spare = |relay: &common::Relay| {
        let all = json_of(&remote_ok(
            relay,
            &op,
            &["connector", "list", "acme", "--json"],
        ));
        all.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "spare")
            .cloned()
    };
    assert_eq!(spare(relay).unwrap()["enabled"], false);
    remote_ok(relay, &op, &["connector", "enable", "acme", "spare"]);
    remote_ok(relay, &op, &["connector", "block", "acme", "spare"]);
    let s = spare(relay).unwrap();
    assert_eq!(
        (s["enabled"].clone(), s["blocked"].clone()),
        (json!(true), json!(true))
    );
    remote_ok(relay, &op, &["connector", "unblock", "acme", "spare"]);
    assert_eq!(spare(relay).unwrap()["blocked"], false);
    remote_ok(relay, &op, &["connector", "delete", "acme", "spare"]);
    assert!(spare(relay).is_none());
    let e = remote_err(relay, Some(&op), &["connector", "delete", "acme", "spare"]);
    assert!(e.contains("not found"), "{e}");

    // A message through the relay stays queued (its next hop refuses): the queue.
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.acme.example");
    let reply = c.send(
        "user@acme.example",
        &["someone@partner.example"],
        &common::message("user@acme.example", "someone@partner.example", "queued-1"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
    let qid = reply.rsplit(' ').next().unwrap().to_string();
    let queue = remote_ok(relay, &op, &["queue", "list"]);
    assert!(queue.contains(&qid), "{queue}");
    let queue = json_of(&remote_ok(relay, &op, &["queue", "list", "--json"]));
    assert_eq!(queue[0]["tenant_id"], acme);
    let show = remote_ok(relay, &op, &["queue", "show", &qid]);
    assert!(show.contains("someone@partner.example"), "{show}");
    assert_eq!(
        remote_ok(relay, &op, &["queue", "hold", &qid]).trim(),
        format!("{qid}: hold done")
    );
    let m = json_of(&remote_ok(relay, &op, &["queue", "show", &qid, "--json"]));
    assert_eq!(m["held"], true);
    remote_ok(relay, &op, &["queue", "release", &qid]);
    remote_ok(relay, &op, &["queue", "retry", &qid]);
    remote_ok(relay, &op, &["queue", "delete", &qid, "--no-dsn"]);
    let e = remote_err(relay, Some(&op), &["queue", "show", &qid]);
    assert_eq!(e, format!("message {qid} not found"));

    // Trace and audit.
    let trace = json_of(&remote_ok(
        relay,
        &op,
        &["trace", "--queue-id", &qid, "--json"],
    ));
    assert!(!trace.as_array().unwrap().is_empty(), "{trace}");
    assert!(remote_ok(relay, &op, &["trace", "--sender", "user@acme.example"]).contains(&qid));
    let audit = remote_ok(relay, &op, &["audit", "--tenant", "acme"]);
    assert!(
        audit.contains("token:1/operator") && audit.contains("queue.hold"),
        "{audit}"
    );

    // The way back: block, request unblock (a tenant admin), unblock (the operator).
    let out = remote_ok(relay, &op, &["tenant", "block", "acme", "--unregistered"]);
    assert_eq!(out.trim(), "tenant acme: active -> blocked_unregistered");
    let out = remote_ok(relay, &op, &["token", "create", "--tenant", "acme"]);
    let admin = last_line(&out);
    assert!(admin.starts_with("rw_"), "{out}");
    let e = remote_err(relay, Some(&admin), &["tenant", "request-unblock", "acme"]);
    assert!(e.contains("--servers-secured"), "{e}");
    let out = remote_ok(
        relay,
        &admin,
        &[
            "tenant",
            "request-unblock",
            "acme",
            "--domains-registered",
            "--connectors-reviewed",
            "--servers-secured",
        ],
    );
    assert!(out.contains("under_review"), "{out}");
    let e = remote_err(relay, Some(&admin), &["tenant", "unblock", "acme"]);
    assert!(e.contains("only the operator"), "{e}");
    let out = remote_ok(relay, &op, &["tenant", "unblock", "acme"]);
    assert!(out.contains("probation until"), "{out}");
    let show = remote_ok(relay, &admin, &["tenant", "show", "acme"]);
    assert!(show.contains("state: probation"), "{show}");
    assert!(show.contains("acme.example"), "{show}");
    let show = json_of(&remote_ok(
        relay,
        &admin,
        &["tenant", "show", &acme.to_string(), "--json"],
    ));
    assert_eq!(show["status"]["state"], "probation");

    // A tenant token sees its own tenant only: another's is "not found".
    let e = remote_err(relay, Some(&admin), &["tenant", "show", &other.to_string()]);
    assert_eq!(e, format!("no tenant \"{other}\""));
    let e = remote_err(relay, Some(&admin), &["tenant", "show", "other"]);
    assert_eq!(e, "no tenant \"other\"");
    let e = remote_err(relay, Some(&admin), &["tenant", "list"]);
    assert!(e.contains("only the operator"), "{e}");
    assert!(remote_ok(relay, &admin, &["sender", "list"]).starts_with("TENANT"));
    let e = remote_err(
        relay,
        Some(&admin),
        &["sender", "unrestrict", "x@acme.example"],
    );
    assert_eq!(e, "x@acme.example has no standing restriction");

    // Tokens through the API: list, revoke; the revoked one is refused at once.
    let tokens = json_of(&remote_ok(relay, &op, &["token", "list", "--json"]));
    let admin_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == "tenant")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(remote_ok(relay, &op, &["token", "list", "--tenant", "acme"]).contains("tenant"));
    let out = remote_ok(relay, &op, &["token", "revoke", &admin_id.to_string()]);
    assert_eq!(out.trim(), format!("token {admin_id} revoked"));
    let e = remote_err(relay, Some(&admin), &["tenant", "show", "acme"]);
    assert!(e.contains("revoked"), "{e}");
    // And on the local store: revoked, by the token that did it.
    let local = json_of(&relay.ok(&["token", "list", "--json"]));
    let revoked = local
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == admin_id)
        .unwrap();
    assert_eq!(revoked["revoked_by"], "token:1/operator");
    relay.ok(&["token", "revoke", "1"]);
    let e = remote_err(relay, Some(&op), &["tenant", "list"]);
    assert!(e.contains("revoked"), "{e}");
}

/// Every listing prints the same, byte for byte, on the relay's host and through a running
/// relay's API: the CLI has one implementation of each command, over either way in.
#[test]
fn every_listing_prints_the_same_locally_and_through_the_api() {
    // The next hop refuses connections: accepted mail stays queued (deferred).
    let mut relay = common::Relay::new(&format!(
        "[delivery]\nsmart_host = \"127.0.0.1:{}\"\n",
        common::free_port()
    ));
    relay.start();
    common::wait_for_port(relay.admin_addr, &relay.log_path());
    let op = last_line(&relay.ok(&["token", "create", "--operator"]));
    // Something in every listing, half of it made each way.
    relay.ok(&["tenant", "add", "acme", "--admin-email", "it@acme.example"]);
    remote_ok(&relay, &op, &["tenant", "add", "other"]);
    relay.ok(&["domain", "add", "acme", "acme.example", "--verified"]);
    remote_ok(&relay, &op, &["domain", "add", "acme", "pending.example"]);
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
    remote_ok(
        &relay,
        &op,
        &[
            "connector",
            "add",
            "acme",
            "--name",
            "wide",
            "--kind",
            "partner",
            "--ip",
            "10.0.0.0/16",
        ],
    );
    relay.ok(&[
        "domain",
        "allow-header-from",
        "acme",
        "partner.example",
        "--connector",
        "onprem",
    ]);
    remote_ok(
        &relay,
        &op,
        &[
            "suppression",
            "add",
            "acme",
            "gone@dest.example",
            "--days",
            "3",
        ],
    );
    relay.ok(&["suppression", "add", "--global", "trap@dest.example"]);
    remote_ok(
        &relay,
        &op,
        &[
            "tenant",
            "sender-limits",
            "acme",
            "--messages-per-minute",
            "7",
        ],
    );
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.acme.example");
    let reply = c.send(
        "user@acme.example",
        &["someone@partner.example"],
        &common::message("user@acme.example", "someone@partner.example", "both-ways"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
    let qid = reply.rsplit(' ').next().unwrap().to_string();
    remote_ok(&relay, &op, &["queue", "hold", &qid]);

    let listings: Vec<Vec<&str>> = vec![
        vec!["tenant", "list"],
        vec!["tenant", "show", "acme"],
        vec!["tenant", "show", "other"],
        vec!["tenant", "sender-limits", "acme"],
        vec!["domain", "list", "acme"],
        vec!["domain", "header-from", "acme"],
        vec!["connector", "list", "acme"],
        vec!["sender", "list"],
        vec!["suppression", "list", "acme"],
        vec!["suppression", "list", "--global"],
        vec!["token", "list"],
        vec!["queue", "list"],
        vec!["queue", "show", &qid],
        vec!["trace", "--queue-id", &qid],
        vec!["audit", "--tenant", "acme"],
        vec![
            "diagnose",
            "--ip",
            "127.0.0.1",
            "--from",
            "user@acme.example",
            "--to",
            "someone@partner.example",
        ],
    ];
    for args in listings {
        for json in [false, true] {
            let mut args = args.clone();
            if json {
                args.push("--json");
            }
            let local = relay.ok(&args);
            let through_api = remote_ok(&relay, &op, &args);
            assert_eq!(local, through_api, "relayward {args:?}: local vs --server");
            assert!(
                !local.trim().is_empty(),
                "relayward {args:?} printed nothing"
            );
        }
    }
}
