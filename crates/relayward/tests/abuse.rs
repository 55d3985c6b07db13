//! The abuse detector end to end, on a simulated clock: the relay runs in-process
//! (`serve::start_with` and a `ManualClock`), tenants' servers are real SMTP sessions from
//! 127.0.0.x, the next hop is an in-test sink, alerts go to an in-test webhook receiver, and
//! the way back runs through the CLI's own functions. Each scenario prints its figures.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use relayward::abuse::alerts;
use relayward::clock::{Clock, ManualClock};
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_core::{TenantId, TenantState};
use relayward_policy::counters::Counters;
use relayward_store::Store;
use relayward_testkit::{DnsServer, SmtpClient, SmtpSink, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOUR: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 86_400_000;

const BLOCKED_750: &str =
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains";
const RESTRICTED_518: &str = "550 5.1.8 Access denied, bad outbound sender";

// ---------------------------------------------------------------------------------------------
// A webhook receiver: a tiny HTTP/1.1 server that records each POST.

#[derive(Debug, Clone)]
struct Post {
    headers: HashMap<String, String>,
    body: serde_json::Value,
    raw: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

struct Hook {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Hook {
    /// Answers 503 to the first `fail_first` requests, then 200.
    async fn start(fail_first: usize) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let p = posts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let posts = p.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut headers = HashMap::new();
                    for line in head.lines().skip(1) {
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let raw = buf[head_end..head_end + len].to_vec();
                    let fail = failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if fail { 503 } else { 200 };
                    posts.lock().unwrap().push(Post {
                        headers,
                        body: serde_json::from_slice(&raw).unwrap_or_default(),
                        raw,
                        status,
                    });
                    let reply = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        if fail { "Service Unavailable" } else { "OK" }
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Hook { addr, posts }
    }

    fn url(&self) -> String {
        format!("http://{}/relayward", self.addr)
    }

    /// Alerts answered 200.
    fn delivered(&self) -> Vec<Post> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.status == 200)
            .cloned()
            .collect()
    }

    fn named(&self, name: &str) -> Vec<Post> {
        self.delivered()
            .into_iter()
            .filter(|p| p.body["alert"] == name)
            .collect()
    }

    /// Every alert delivered exactly once (retries carry the same id).
    fn assert_once_each(&self) {
        let mut ids: HashMap<String, usize> = HashMap::new();
        for p in self.delivered() {
            *ids.entry(p.body["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        for (id, n) in ids {
            assert_eq!(n, 1, "alert {id} delivered {n} times");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay under test

struct Harness {
    _dir: tempfile::TempDir,
    config: Config,
    clock: Arc<ManualClock>,
    relay: Option<Running>,
    sink: SmtpSink,
    hook: Hook,
    pki: Option<(TestPki, relayward_testkit::IssuedCert)>,
}

impl Harness {
    /// A relay delivering to a sink, alerting a webhook that fails its first request; with
    /// `tls`, STARTTLS with client certificates from a test CA.
    async fn new(tls: bool, clock_ms: i64) -> Harness {
        Harness::with_dns(tls, clock_ms, None).await
    }

    /// [`Harness::new`] with `dns` as the relay's resolver (DKIM keys, domain checks).
    async fn with_dns(tls: bool, clock_ms: i64, dns: Option<SocketAddr>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sink = SmtpSink::start("127.0.0.1:0").await;
        let hook = Hook::start(1).await;
        let mut config = Config::default();
        config.server.hostname = "relay.test".into();
        config.server.data_dir = dir.path().join("data");
        config.server.directory_poll_ms = 100;
        config.server.detector_interval_ms = 100;
        config.delivery.smart_host = Some(sink.addr().to_string());
        config.delivery.dns_resolver = dns;
        // A deferred message stays queued for the whole test.
        config.delivery.retry_schedule_secs = vec![3600];
        config.alerts.webhook_url = Some(hook.url());
        config.alerts.webhook_secret = Some("hook-secret".into());
        config.alerts.webhook_backoff_ms = 50;
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        let mut listener = ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            ..ListenerConfig::default()
        };
        let mut pki = None;
        if tls {
            let ca = TestPki::new();
            let server = ca.issue_server(&["relay.test"]);
            let client = ca.issue_client("mail.hybrid.example");
            let p = |name: &str, text: &str| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).unwrap();
                path
            };
            listener.tls_cert = Some(p("server.pem", &server.chain_pem));
            listener.tls_key = Some(p("server.key", &server.key_pem));
            listener.tls_client_ca = Some(p("ca.pem", ca.ca_pem()));
            pki = Some((ca, client));
        }
        config.listeners = vec![listener];
        config.validate().unwrap();
        let clock = Arc::new(ManualClock::new(clock_ms));
        let mut h = Harness {
            _dir: dir,
            config,
            clock,
            relay: None,
            sink,
            hook,
            pki,
        };
        h.start().await;
        h
    }

    async fn start(&mut self) {
        let relay = start_with(
            self.config.clone(),
            StartOptions {
                clock: self.clock.clone(),
            },
        )
        .await
        .unwrap();
        self.relay = Some(relay);
    }

    async fn restart(&mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
        self.start().await;
    }

    fn relay(&self) -> &Running {
        self.relay.as_ref().unwrap()
    }

    fn store(&self) -> Arc<dyn Store> {
        self.relay().store.clone()
    }

    /// Runs an admin command through the CLI's own functions, on the simulated clock.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<()> {
        common::in_process::admin(&self.config, self.clock.clone(), args).await
    }

    async fn ok(&self, args: &[&str]) {
        common::in_process::admin_ok(&self.config, self.clock.clone(), args).await
    }

    /// Tenant `name` with domain `<name>.example` and an IP connector for `ip` that may relay
    /// unregistered senders (a hybrid server that forwards).
    async fn tenant(&self, name: &str, ip: &str) -> TenantId {
        common::in_process::hybrid_tenant(&self.config, self.clock.clone(), name, ip).await;
        let id = self.store().find_tenant(name).await.unwrap().unwrap().id;
        self.wait_tenant_state(id, TenantState::Active).await;
        id
    }

    /// Until the running relay's directory shows `state` for the tenant, and every change made
    /// so far (connectors added right after the tenant, say).
    async fn wait_tenant_state(&self, tenant: TenantId, state: TenantState) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.relay().directory.current();
            if now.tenant(tenant).map(|t| t.state) == Some(state)
                && self.relay().abuse.status(tenant).state == state
                && now.version >= self.store().directory_version().await.unwrap()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {tenant} not {state} in the relay"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A session from `ip`, greeted and EHLO'd; with `tls`, STARTTLS with the client
    /// certificate first.
    async fn session(&self, ip: &str, tls: bool) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, self.relay().smtp_addrs[0])
            .await
            .unwrap();
        let (code, _) = c.read_reply().await.unwrap();
        assert_eq!(code, 220);
        c.ehlo("mail.hybrid.example").await.unwrap();
        if tls {
            let (ca, client) = self.pki.as_ref().unwrap();
            c.starttls(ca.client_config_with_cert(client), "relay.test")
                .await
                .unwrap();
            c.ehlo("mail.hybrid.example").await.unwrap();
        }
        c
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The first message the sink accepted that matches `pred`, waiting up to 10 s for it.
    async fn wait_mail(
        &self,
        what: &str,
        pred: impl Fn(&relayward_testkit::Received) -> bool,
    ) -> relayward_testkit::Received {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.sink.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(Instant::now() < deadline, "no {what} reached the sink");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nHello.\r\n"
    )
}

/// One message; the final reply (or the first refusal) as a line.
async fn send(c: &mut SmtpClient, from: &str, to: &[&str], subject: &str) -> String {
    let data = message(from, to[0], subject);
    let (_, text) = c.send_message(from, to, data.as_bytes()).await.unwrap();
    text
}

/// The message as text, quoted-printable soft breaks and escapes decoded.
fn body_text(m: &relayward_testkit::Received) -> String {
    let raw = m.data_text().replace("=\r\n", "");
    let mut out = Vec::new();
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250 2.0.0 Ok: queued as ")
}

/// Noon UTC of the current day: far from midnight for the scenarios, and within a day of the
/// system clock (the audit log, on the system clock, decides what "the last 7 days" are).
fn today_noon_ms() -> i64 {
    let now = relayward::clock::SystemClock.now_ms();
    now.div_euclid(DAY_MS) * DAY_MS + DAY_MS / 2
}

// ---------------------------------------------------------------------------------------------
// (a) A hybrid tenant: steady registered mail, a little forwarded mail, 30 days. Never touched.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_tenant_is_never_warned_or_blocked_in_30_days() {
    let start = today_noon_ms() - 30 * DAY_MS;
    let h = Harness::new(false, start).await;
    let tenant = h.tenant("hybrid", "127.0.0.2").await;
    let real = Instant::now();
    let mut c = h.session("127.0.0.2", false).await;
    let forwarded = [
        "gmail.example",
        "outlook.example",
        "club.example",
        "list.example",
    ];
    let (mut registered, mut unregistered, mut nulls, mut refused) = (0, 0, 0, 0);
    let mut peak_hour_unreg = 0;
    for day in 0..30i64 {
        let weekend = matches!(day % 7, 5 | 6);
        for hour in 0..24i64 {
            // Office hours carry the registered mail; forwarding goes on all day.
            let office = (8..18).contains(&hour);
            let mut batch: Vec<(String, Option<String>)> = Vec::new();
            let reg = match (office, weekend) {
                (true, false) => 8 + (hour as usize % 3),
                (true, true) => 2,
                _ => 1,
            };
            for i in 0..reg {
                batch.push((
                    format!("user{}@hybrid.example", (day + hour + i as i64) % 40),
                    None,
                ));
            }
            for k in 0..(1 + (hour % 2)) {
                let d = forwarded[((day + hour + k) % 4) as usize];
                batch.push((format!("friend{}@{d}", (hour + k) % 7), Some(d.to_string())));
            }
            // Every fifth day at 15:00 a mailing list forwards a clump at once, and once a
            // month a busy thread brings 60 in an hour (still within the floor).
            if day % 5 == 2 && hour == 15 {
                for i in 0..25 {
                    batch.push((
                        format!("member{i}@list.example"),
                        Some("list.example".into()),
                    ));
                }
            }
            if day == 17 && hour == 10 {
                for i in 0..60 {
                    let d = forwarded[i % 3];
                    batch.push((format!("thread{i}@{d}"), Some(d.to_string())));
                }
            }
            // An NDR from the on-premises server now and then.
            let ndr = hour == 3 || hour == 14;
            let n = batch.len() + ndr as usize;
            let step = HOUR / (n as u32 + 1);
            let mut hour_unreg = 0;
            for (i, (from, fwd)) in batch.iter().enumerate() {
                h.advance(step);
                let to = if fwd.is_some() {
                    "someone@elsewhere.example"
                } else {
                    "customer@partner.example"
                };
                let r = send(&mut c, from, &[to], &format!("a-{day}-{hour}-{i}")).await;
                if !accepted(&r) {
                    refused += 1;
                    eprintln!("refused: {from}: {r}");
                    continue;
                }
                if fwd.is_some() {
                    unregistered += 1;
                    hour_unreg += 1;
                } else {
                    registered += 1;
                }
            }
            if ndr {
                h.advance(step);
                let r = send(
                    &mut c,
                    "",
                    &["postmaster@partner.example"],
                    &format!("ndr-{day}"),
                )
                .await;
                if accepted(&r) {
                    nulls += 1;
                    hour_unreg += 1;
                } else {
                    refused += 1;
                }
            }
            peak_hour_unreg = peak_hour_unreg.max(hour_unreg);
            let now = h.clock.now_ms();
            let next_hour = (now.div_euclid(3_600_000) + 1) * 3_600_000;
            h.clock.set(next_hour.max(now));
            h.relay().abuse.tick();
        }
    }
    h.relay().abuse.idle().await;
    let transitions = h.store().list_transitions(tenant, 0).await.unwrap();
    let warned = transitions
        .iter()
        .filter(|t| t.to == TenantState::Warned)
        .count();
    let blocked = transitions
        .iter()
        .filter(|t| t.to == TenantState::BlockedUnregistered || t.to == TenantState::BlockedAll)
        .count();
    let snap = h
        .relay()
        .abuse
        .counters()
        .snapshot(h.clock.now_ms(), tenant);
    println!(
        "(a) hybrid tenant, 30 simulated days over real SMTP in {:.1} s: {registered} registered, \
         {unregistered} forwarded unregistered, {nulls} null-sender accepted, {refused} refused; \
         peak hour {peak_hour_unreg} unregistered; baseline {:.1} msg/h, {:.2} unregistered/h; \
         false warns {warned}, false blocks {blocked}",
        real.elapsed().as_secs_f64(),
        snap.baseline.messages_per_hour,
        snap.baseline.unregistered_per_hour,
    );
    assert_eq!(refused, 0);
    assert!(transitions.is_empty(), "{transitions:#?}");
    assert_eq!(
        h.store()
            .tenant_status(tenant)
            .await
            .unwrap()
            .unwrap()
            .state,
        TenantState::Active
    );
    assert!(h.hook.delivered().is_empty());
    c.quit().await.ok();
}

// ---------------------------------------------------------------------------------------------
// (b) A certificate connector suddenly relays a burst from hundreds of unregistered domains.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_burst_through_certificate_connector_is_blocked_within_budget() {
    let start = today_noon_ms() - 2 * DAY_MS;
    let h = Harness::new(true, start).await;
    h.ok(&[
        "tenant",
        "add",
        "hybrid",
        "--admin-email",
        "admin@hybrid.example",
    ])
    .await;
    h.ok(&[
        "domain",
        "add",
        "hybrid",
        "hybrid.example",
        "--verified",
        "--match-subdomains",
    ])
    .await;
    h.ok(&[
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
    let tenant = h.store().find_tenant("hybrid").await.unwrap().unwrap().id;
    h.wait_tenant_state(tenant, TenantState::Active).await;
    // The burst's recipients' server defers: what was accepted stays in the queue.
    let victims: Vec<String> = (0..5)
        .map(|i| format!("victim{i}@target.example"))
        .collect();
    for v in &victims {
        h.sink
            .reply_rcpt(v, "451 4.2.1 Mailbox busy, try again later");
    }

    // Two quiet days: registered mail and a little forwarding.
    let mut c = h.session("127.0.0.3", true).await;
    for hour in 0..48 {
        for i in 0..3 {
            h.advance(HOUR / 4);
            let r = send(
                &mut c,
                &format!("user{i}@hybrid.example"),
                &["customer@partner.example"],
                &format!("warm-{hour}-{i}"),
            )
            .await;
            assert!(accepted(&r), "{r}");
        }
        h.advance(HOUR / 4);
        let r = send(
            &mut c,
            "friend@gmail.example",
            &["someone@elsewhere.example"],
            &format!("fwd-{hour}"),
        )
        .await;
        assert!(accepted(&r), "{r}");
        h.relay().abuse.tick();
    }
    assert!(h
        .store()
        .list_transitions(tenant, 0)
        .await
        .unwrap()
        .is_empty());

    // The burst: a new sender domain with every message, ten a second.
    let burst_start = h.clock.now_ms();
    let real = Instant::now();
    let mut leaked = 0;
    let mut refusal = None;
    for i in 0..500 {
        h.advance(Duration::from_millis(100));
        let from = format!("promo{i}@spam{i}.example");
        let r = send(&mut c, &from, &[&victims[i % 5]], &format!("burst-{i}")).await;
        if accepted(&r) {
            leaked += 1;
        } else {
            refusal = Some(r);
            break;
        }
    }
    let real_secs = real.elapsed().as_secs_f64();
    assert_eq!(refusal.as_deref(), Some(BLOCKED_750));
    h.relay().abuse.idle().await;
    let transitions = h.store().list_transitions(tenant, 0).await.unwrap();
    let block = transitions
        .iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("blocked");
    let budget = h.config.detector.burst_budget;
    let path: Vec<(TenantState, f64)> = transitions
        .iter()
        .rev()
        .map(|t| (t.to, (t.at_ms - burst_start) as f64 / 1000.0))
        .collect();
    println!("(b) transitions (state, simulated seconds after the burst's start): {path:?}");
    println!(
        "(b) burst through the certificate connector: {leaked} unregistered messages accepted \
         between the burst's start and the block (budget {budget}); blocked {:.1} simulated s \
         after the burst started ({real_secs:.2} s real); rules: {}",
        (block.at_ms - burst_start) as f64 / 1000.0,
        block.summary
    );
    assert!(leaked < budget as usize, "{leaked} leaked");

    // Registered senders still get through, unregistered and null senders get 5.7.750.
    let r = send(
        &mut c,
        "user1@hybrid.example",
        &["customer@partner.example"],
        "after-1",
    )
    .await;
    assert!(accepted(&r), "{r}");
    let (_, r) = c.cmd("MAIL FROM:<promo999@spam999.example>").await.unwrap();
    assert_eq!(r, BLOCKED_750);
    let (_, r) = c.cmd("MAIL FROM:<>").await.unwrap();
    assert_eq!(r, BLOCKED_750);
    c.quit().await.ok();
    // A new session too, and the store has it.
    let mut c = h.session("127.0.0.3", true).await;
    let (_, r) = c.cmd("MAIL FROM:<x@fresh-spam.example>").await.unwrap();
    assert_eq!(r, BLOCKED_750);
    c.quit().await.ok();
    assert_eq!(
        h.store()
            .tenant_status(tenant)
            .await
            .unwrap()
            .unwrap()
            .state,
        TenantState::BlockedUnregistered
    );

    // The queued unregistered mail is held; registered mail was delivered.
    let spool = &h.relay().spool;
    let mut held = 0;
    let mut unheld = Vec::new();
    for id in spool.scan().unwrap() {
        let env = spool.read_envelope(&id).unwrap();
        if env.tenant_id == Some(tenant.0)
            && env.sender_class == relayward_core::SenderClass::Unregistered
        {
            if env.held {
                held += 1;
            } else {
                unheld.push(env.queue_id.to_string());
            }
        }
    }
    println!("(b) queued unregistered messages held: {held}");
    assert!(unheld.is_empty(), "not held: {unheld:?}");
    assert_eq!(held, leaked);

    // The checklist asks only about what looks like the tenant's own traffic: the forwarded
    // domain seen every hour for two days, not the burst's one-off spam domains.
    let evidence: relayward_policy::evidence::Evidence =
        serde_json::from_str(&block.evidence).unwrap();
    let (own, spam) = relayward::abuse::report::split_domains(&evidence);
    println!(
        "(b) own-traffic domains {own:?}; one-off spam domains: {}",
        spam.len()
    );
    assert!(own.iter().all(|d| !d.starts_with("spam")), "{own:?}");
    assert!(
        spam.len() >= 10 && spam.iter().all(|d| d.starts_with("spam")),
        "{spam:?}"
    );
    h.advance(HOUR);
    h.ok(&[
        "tenant",
        "request-unblock",
        "hybrid",
        "--domains-registered",
        "--connectors-reviewed",
        "--servers-secured",
        "--forwarded-domain",
        "gmail.example",
    ])
    .await;
    h.wait_mail("registered message after the block", |m| {
        m.mail_from == "user1@hybrid.example" && m.data_text().contains("after-1")
    })
    .await;

    // The evidence: the rule, the domains, the connector, samples.
    let evidence: serde_json::Value = serde_json::from_str(&block.evidence).unwrap();
    let domains = evidence["observations"]["top_unregistered_domains"]
        .as_array()
        .unwrap();
    assert!(
        domains
            .iter()
            .filter(|d| d["key"].as_str().unwrap().starts_with("spam"))
            .count()
            >= 10,
        "{domains:?}"
    );
    assert!(!evidence["observations"]["samples"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(evidence["connector_changes"][0]["action"], "connector.add");

    // Alerts: one per transition and name, with the evidence; the admin email reaches the sink.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .hook
        .named(alerts::TENANT_RESTRICTED_UNREGISTERED)
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.relay().abuse.idle().await;
    h.hook.assert_once_each();
    let posts = h.hook.named(alerts::TENANT_RESTRICTED_UNREGISTERED);
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.body["tenant"]["name"], "hybrid");
    assert_eq!(p.body["transition"]["to"], "blocked_unregistered");
    assert_eq!(p.body["transition"]["id"], block.id);
    assert!(!p.body["evidence"]["signals"].as_array().unwrap().is_empty());
    assert!(p.body["evidence_summary"][0]
        .as_str()
        .unwrap()
        .starts_with("Rule "));
    assert_eq!(
        p.headers["x-relayward-signature"],
        alerts::signature("hook-secret", &p.raw)
    );
    let suspicious = h.hook.named(alerts::SUSPICIOUS_CONNECTOR);
    assert!(
        suspicious.iter().any(
            |p| p.body["transition"]["id"] == block.id && p.body["connector"]["name"] == "edge"
        ),
        "{suspicious:?}"
    );
    // The first request failed (503): it was retried.
    assert!(h.hook.posts.lock().unwrap().iter().any(|p| p.status == 503));
    // One webhook per transition of each kind: as many block alerts as blocks.
    assert_eq!(
        transitions
            .iter()
            .filter(|t| t.to == TenantState::BlockedUnregistered)
            .count(),
        1
    );
    let email = h
        .wait_mail("alert email to the tenant's admin", |m| {
            m.recipients() == ["admin@hybrid.example"]
                && m.data_text()
                    .contains(alerts::TENANT_RESTRICTED_UNREGISTERED)
        })
        .await;
    assert_eq!(email.mail_from, "postmaster@relay.test");
    let text = body_text(&email);
    assert!(text.contains("request-unblock hybrid"), "{text}");
    assert!(text.contains("spam"), "{text}");

    // What `tenant show` prints.
    h.ok(&["tenant", "show", "hybrid"]).await;
}

// ---------------------------------------------------------------------------------------------
// (c) Spam-class remote rejections rising past the rule block the tenant.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_rising_spam_rejections_block() {
    let h = Harness::new(false, today_noon_ms()).await;
    let tenant = h.tenant("spammy", "127.0.0.5").await;
    let spam_rcpts: Vec<String> = (0..40).map(|i| format!("r{i}@strict.example")).collect();
    for r in &spam_rcpts {
        h.sink.reply_rcpt(r, "550 5.7.1 Message rejected as spam");
    }
    let mut c = h.session("127.0.0.5", false).await;
    let start = h.clock.now_ms();
    let mut sent = 0u64;
    let mut spam_sent = 0usize;
    let mut states = Vec::new();
    // Phases of 40 messages over 10 simulated minutes each, a rising share refused as spam.
    for (phase, spam_share) in [0.0, 0.1, 0.2, 0.5].into_iter().enumerate() {
        let spam_n = (40.0 * spam_share) as usize;
        for i in 0..40 {
            h.advance(Duration::from_secs(15));
            let to = if i < spam_n {
                spam_sent += 1;
                spam_rcpts[spam_sent - 1].clone()
            } else {
                format!("ok{i}@partner.example")
            };
            let r = send(
                &mut c,
                &format!("news{}@spammy.example", i % 7),
                &[&to],
                &format!("c-{phase}-{i}"),
            )
            .await;
            assert!(accepted(&r), "{r}");
            sent += 1;
        }
        // Wait until every attempt's reply is counted.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let snap = h
                .relay()
                .abuse
                .counters()
                .snapshot(h.clock.now_ms(), tenant);
            if snap.windows.hour.remote_total() >= sent {
                break;
            }
            assert!(Instant::now() < deadline, "replies not counted: {snap:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.relay().abuse.idle().await;
        let st = h.relay().abuse.status(tenant).state;
        states.push((phase, spam_share, spam_sent, st));
    }
    let transitions = h.store().list_transitions(tenant, 0).await.unwrap();
    let seq: Vec<(TenantState, i64)> = transitions
        .iter()
        .rev()
        .map(|t| (t.to, (t.at_ms - start) / 60_000))
        .collect();
    println!(
        "(c) spam rejections rising: per phase (phase, share, spam refusals so far, state) \
         {states:?}; transitions (state, simulated minute) {seq:?}"
    );
    let block = transitions
        .iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("blocked");
    let ev: serde_json::Value = serde_json::from_str(&block.evidence).unwrap();
    assert!(ev["signals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["rule"] == "spam_rejections" && s["level"] == "block"));
    assert!(!ev["observations"]["rejection_samples"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(states[0].3, TenantState::Active);
    assert_eq!(states[1].3, TenantState::Active, "below the minimum count");
    assert_eq!(states[3].3, TenantState::BlockedUnregistered);
    assert!(transitions.iter().any(|t| t.to == TenantState::Warned));
    // Registered mail still flows; unregistered senders are refused.
    let r = send(
        &mut c,
        "news1@spammy.example",
        &["ok@partner.example"],
        "c-after",
    )
    .await;
    assert!(accepted(&r), "{r}");
    let (_, r) = c
        .cmd("MAIL FROM:<someone@forwarded.example>")
        .await
        .unwrap();
    assert_eq!(r, BLOCKED_750);
    c.quit().await.ok();
    h.relay().abuse.idle().await;
    assert_eq!(
        h.hook.named(alerts::TENANT_RESTRICTED_UNREGISTERED).len(),
        1
    );
    h.hook.assert_once_each();
}

// ---------------------------------------------------------------------------------------------
// (d) A sender over its limits gets 5.1.8 and the tenant's action is applied.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_sender_limits_restrict_and_lift() {
    let noon = today_noon_ms();
    let mut h = Harness::new(false, noon).await;
    let tenant = h.tenant("limits", "127.0.0.6").await;
    let mut c = h.session("127.0.0.6", false).await;

    // 30 messages a minute are allowed; the 31st is refused, until 00:00 UTC.
    for i in 0..30 {
        h.advance(Duration::from_secs(1));
        let r = send(
            &mut c,
            "printer@limits.example",
            &["x@partner.example"],
            &format!("p{i}"),
        )
        .await;
        assert!(accepted(&r), "{i}: {r}");
    }
    h.advance(Duration::from_secs(1));
    let (_, r) = c.cmd("MAIL FROM:<printer@limits.example>").await.unwrap();
    assert_eq!(r, RESTRICTED_518);
    // Whatever the case of the address; other senders are not affected.
    let (_, r) = c.cmd("MAIL FROM:<Printer@limits.example>").await.unwrap();
    assert_eq!(r, RESTRICTED_518);
    let r = send(&mut c, "hr@limits.example", &["x@partner.example"], "hr1").await;
    assert!(accepted(&r), "{r}");
    h.relay().abuse.idle().await;
    let stored = h
        .store()
        .list_sender_restrictions(Some(tenant), h.clock.now_ms(), None)
        .await
        .unwrap();
    let midnight = (noon.div_euclid(DAY_MS) + 1) * DAY_MS;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sender, "printer@limits.example");
    assert_eq!(stored[0].until_ms, Some(midnight));
    assert_eq!(stored[0].action, "block_for_today");
    let alerts_sent = h.hook.named(alerts::USER_RESTRICTED);
    assert_eq!(alerts_sent.len(), 1);
    assert_eq!(alerts_sent[0].body["sender"], "printer@limits.example");
    let email = h
        .wait_mail("user-restricted email", |m| {
            m.recipients() == ["admin@limits.example"]
                && m.data_text().contains(alerts::USER_RESTRICTED)
        })
        .await;
    let text = body_text(&email);
    assert!(
        text.contains("sender unrestrict printer@limits.example --tenant limits"),
        "{text}"
    );
    h.ok(&["sender", "list", "limits"]).await;

    // Still refused a second before midnight, free at 00:00 UTC.
    h.clock.set(midnight - 1000);
    let (_, r) = c.cmd("MAIL FROM:<printer@limits.example>").await.unwrap();
    assert_eq!(r, RESTRICTED_518);
    h.clock.set(midnight);
    let r = send(
        &mut c,
        "printer@limits.example",
        &["x@partner.example"],
        "p-next-day",
    )
    .await;
    assert!(accepted(&r), "{r}");
    println!(
        "(d) printer@limits.example: 30 messages/minute accepted, the 31st refused with 5.1.8 \
         (block_for_today), free again at {}",
        midnight
    );

    // Recipients to external domains per hour: 5 x 100 is the limit, the 501st RCPT is refused.
    let rcpts: Vec<String> = (0..100).map(|i| format!("u{i}@ext{i}.example")).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for i in 0..5 {
        h.advance(Duration::from_secs(10));
        let r = send(&mut c, "app@limits.example", &rcpt_refs, &format!("app{i}")).await;
        assert!(accepted(&r), "{r}");
    }
    h.advance(Duration::from_secs(10));
    let (_, r) = c.cmd("MAIL FROM:<app@limits.example>").await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    let (_, r) = c.cmd("RCPT TO:<late@ext.example>").await.unwrap();
    assert_eq!(r, RESTRICTED_518);
    c.cmd("RSET").await.unwrap();

    // The tenant's own limits and action, set on the command line: block until lifted.
    h.ok(&[
        "tenant",
        "sender-limits",
        "limits",
        "--action",
        "block",
        "--messages-per-minute",
        "5",
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.relay().abuse.sender_limits(tenant).messages_per_minute != 5 {
        assert!(Instant::now() < deadline, "tenant limits not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut n = 0;
    loop {
        h.advance(Duration::from_secs(1));
        let r = send(
            &mut c,
            "bulk@limits.example",
            &["x@partner.example"],
            &format!("b{n}"),
        )
        .await;
        n += 1;
        if r == RESTRICTED_518 {
            break;
        }
        assert!(accepted(&r), "{r}");
    }
    assert_eq!(n, 6, "the 6th message in a minute is refused");
    h.relay().abuse.idle().await;
    // Survives a restart, and days later it still stands.
    c.quit().await.ok();
    h.restart().await;
    h.advance(Duration::from_secs(3 * 86_400));
    let mut c = h.session("127.0.0.6", false).await;
    let (_, r) = c.cmd("MAIL FROM:<bulk@limits.example>").await.unwrap();
    assert_eq!(r, RESTRICTED_518);
    // Until an administrator lifts it.
    h.ok(&[
        "sender",
        "unrestrict",
        "bulk@limits.example",
        "--tenant",
        "limits",
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = c.cmd("MAIL FROM:<bulk@limits.example>").await.unwrap();
        if r.starts_with("250") {
            c.cmd("RSET").await.unwrap();
            break;
        }
        assert_eq!(r, RESTRICTED_518);
        assert!(Instant::now() < deadline, "unrestrict not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h
        .cli(&["sender", "unrestrict", "bulk@limits.example"])
        .await
        .is_err());
    h.relay().abuse.idle().await;
    h.hook.assert_once_each();
    assert_eq!(h.hook.named(alerts::USER_RESTRICTED).len(), 3);
    c.quit().await.ok();
}

// ---------------------------------------------------------------------------------------------
// (e) The way back: request-unblock, operator unblock, probation, active.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_the_way_back_through_the_cli() {
    let h = Harness::new(false, today_noon_ms()).await;
    let tenant = h.tenant("comeback", "127.0.0.7").await;
    let mut c = h.session("127.0.0.7", false).await;
    // A new subsidiary's domains were never registered; its mail floods out at once.
    let domains = [
        "newco.example",
        "newco-mail.example",
        "partner-list.example",
    ];
    let mut leaked = 0;
    for i in 0..400 {
        h.advance(Duration::from_millis(300));
        let from = format!("staff{i}@{}", domains[i % 3]);
        let r = send(
            &mut c,
            &from,
            &["client@elsewhere.example"],
            &format!("e{i}"),
        )
        .await;
        if !accepted(&r) {
            assert_eq!(r, BLOCKED_750);
            break;
        }
        leaked += 1;
    }
    h.relay().abuse.idle().await;
    assert_eq!(
        h.store()
            .tenant_status(tenant)
            .await
            .unwrap()
            .unwrap()
            .state,
        TenantState::BlockedUnregistered
    );
    println!("(e) blocked after {leaked} unregistered messages");

    // The admin finds the cause; hours later asks for unblock. Refused: nothing attested,
    // domains unregistered, connector change not acknowledged.
    h.advance(3 * HOUR);
    let e = h
        .cli(&["tenant", "request-unblock", "comeback"])
        .await
        .unwrap_err()
        .to_string();
    println!("(e) request-unblock refused: {e}");
    assert!(
        e.contains("newco-mail.example, newco.example, partner-list.example"),
        "{e}"
    );
    assert!(e.contains("--connectors-reviewed"), "{e}");
    assert!(e.contains("--servers-secured"), "{e}");
    // Two registered, the third neither registered nor declared: still refused.
    h.ok(&["domain", "add", "comeback", "newco.example", "--verified"])
        .await;
    h.ok(&[
        "domain",
        "add",
        "comeback",
        "newco-mail.example",
        "--verified",
    ])
    .await;
    let attest = [
        "tenant",
        "request-unblock",
        "comeback",
        "--domains-registered",
        "--connectors-reviewed",
        "--servers-secured",
    ];
    let e = h.cli(&attest).await.unwrap_err().to_string();
    assert!(e.contains(": partner-list.example ("), "{e}");
    assert!(!e.contains("newco.example"), "{e}");
    // A domain pending verification does not count either.
    h.ok(&["domain", "add", "comeback", "partner-list.example"])
        .await;
    assert!(h.cli(&attest).await.is_err());
    // Registered now (the operator attests ownership): accepted.
    h.ok(&["domain", "remove", "comeback", "partner-list.example"])
        .await;
    h.ok(&[
        "domain",
        "add",
        "comeback",
        "partner-list.example",
        "--verified",
    ])
    .await;
    h.ok(&attest).await;
    h.wait_tenant_state(tenant, TenantState::UnderReview).await;
    // Under review, unregistered senders stay refused.
    let (_, r) = c.cmd("MAIL FROM:<x@unknown-domain.example>").await.unwrap();
    assert_eq!(r, BLOCKED_750);
    assert!(
        h.cli(&attest).await.is_err(),
        "only from blocked_unregistered"
    );

    // The operator reviews, and unblocks: probation for 7 days with halved thresholds.
    h.advance(HOUR);
    h.ok(&["tenant", "unblock", "comeback"]).await;
    h.wait_tenant_state(tenant, TenantState::Probation).await;
    let st = h.store().tenant_status(tenant).await.unwrap().unwrap();
    let until = st.probation_until_ms.unwrap();
    assert_eq!(until, h.clock.now_ms() + 7 * DAY_MS);
    let r = send(
        &mut c,
        "person@forwarded.example",
        &["a@elsewhere.example"],
        "e-fwd",
    )
    .await;
    assert!(accepted(&r), "{r}");
    let r = send(
        &mut c,
        "staff@newco.example",
        &["a@elsewhere.example"],
        "e-reg",
    )
    .await;
    assert!(accepted(&r), "{r}");

    // A day before the end, still on probation; after it, back to active.
    h.clock.set(until - DAY_MS);
    h.relay().abuse.tick();
    h.relay().abuse.idle().await;
    assert_eq!(h.relay().abuse.status(tenant).state, TenantState::Probation);
    h.clock.set(until + 1000);
    h.relay().abuse.tick();
    h.relay().abuse.idle().await;
    h.wait_tenant_state(tenant, TenantState::Active).await;
    let transitions = h.store().list_transitions(tenant, 0).await.unwrap();
    let path: Vec<(String, String, String)> = transitions
        .iter()
        .rev()
        .map(|t| (t.from.to_string(), t.to.to_string(), t.actor.clone()))
        .collect();
    println!("(e) the way back: {path:?}");
    let tail: Vec<TenantState> = transitions.iter().take(4).map(|t| t.to).rev().collect();
    assert_eq!(
        tail,
        [
            TenantState::BlockedUnregistered,
            TenantState::UnderReview,
            TenantState::Probation,
            TenantState::Active
        ]
    );
    let request = &transitions[2];
    assert_eq!(request.cause, "tenant");
    assert!(request
        .attestation
        .as_deref()
        .unwrap()
        .contains("\"servers_secured\":true"));
    // All of it audited.
    let audit = h.store().list_audit(Some(tenant), 50).await.unwrap();
    assert!(audit.iter().filter(|a| a.action == "tenant.state").count() >= 4);
    h.ok(&["tenant", "show", "comeback"]).await;
    c.quit().await.ok();
}

// ---------------------------------------------------------------------------------------------
// (f) Header-From spoofing: registered envelope senders (a different mailbox each time), other
// brands in the header From. Recipients see P2: the burst is blocked within the budget, then
// spoofed mail gets 5.7.750 at the end of DATA while aligned registered mail flows.

fn spoof(from: &str, header_from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: \"Security Team\" <{header_from}>\r\nSender: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nVerify your account.\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_header_from_spoofing_is_blocked_and_refused_at_data() {
    let start = today_noon_ms() - 2 * DAY_MS;
    let h = Harness::new(false, start).await;
    let tenant = h.tenant("brand", "127.0.0.6").await;
    let mut c = h.session("127.0.0.6", false).await;
    // Two quiet days of aligned mail.
    for hour in 0..48 {
        for i in 0..3 {
            h.advance(HOUR / 3);
            let r = send(
                &mut c,
                &format!("user{i}@brand.example"),
                &["customer@partner.example"],
                &format!("warm-{hour}-{i}"),
            )
            .await;
            assert!(accepted(&r), "{r}");
        }
        h.relay().abuse.tick();
    }
    let burst_start = h.clock.now_ms();
    let mut leaked = 0;
    let mut refusal = None;
    for i in 0..500 {
        h.advance(Duration::from_millis(100));
        let from = format!("mailbox{i}@brand.example");
        let brand = format!("security@bank{}.example", i % 40);
        let to = format!("victim{}@target.example", i % 7);
        let data = spoof(&from, &brand, &to, &format!("phish-{i}"));
        let (_, r) = c
            .send_message(&from, &[&to], data.as_bytes())
            .await
            .unwrap();
        if accepted(&r) {
            leaked += 1;
        } else {
            refusal = Some(r);
            break;
        }
    }
    assert_eq!(refusal.as_deref(), Some(BLOCKED_750));
    h.relay().abuse.idle().await;
    let budget = h.config.detector.burst_budget as usize;
    let transitions = h.store().list_transitions(tenant, 0).await.unwrap();
    let block = transitions
        .iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("blocked");
    println!(
        "(f) header-From spoofing: {leaked} spoofed messages accepted before the block (budget {budget}), blocked {:.1} simulated s after the burst started; rules: {}",
        (block.at_ms - burst_start) as f64 / 1000.0,
        block.summary
    );
    assert!(leaked < budget, "{leaked} leaked");
    // The MAIL FROM is registered, so only the end of DATA can refuse it.
    let from = "fresh@brand.example";
    let data = spoof(from, "security@bank99.example", "v@target.example", "after");
    let (_, r) = c
        .send_message(from, &["v@target.example"], data.as_bytes())
        .await
        .unwrap();
    assert_eq!(r, BLOCKED_750);
    // Aligned registered mail keeps flowing.
    let r = send(
        &mut c,
        "user1@brand.example",
        &["customer@partner.example"],
        "aligned-after",
    )
    .await;
    assert!(accepted(&r), "{r}");
    c.quit().await.ok();
    // The refusal says why (the trace is written in batches: wait for it), and the evidence
    // names the spoofed domains.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = h
            .store()
            .search_trace(&relayward_core::TraceQuery {
                tenant_id: Some(tenant),
                sender: Some(from.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let explained = refused.iter().any(|e| {
            e.detail.as_deref().is_some_and(|d| {
                d.contains("reason=blocked_unregistered_header_from")
                    && d.contains("header_from=bank99.example")
            })
        });
        if explained {
            break;
        }
        assert!(Instant::now() < deadline, "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evidence = serde_json::to_string(&block.evidence).unwrap();
    assert!(evidence.contains("bank"), "{evidence}");
    // What was accepted of the burst is held.
    let spool = &h.relay().spool;
    let unheld: Vec<String> = spool
        .scan()
        .unwrap()
        .into_iter()
        .filter_map(|id| spool.read_envelope(&id).ok())
        .filter(|e| e.tenant_id == Some(tenant.0) && e.header_from_mismatch && !e.held)
        .filter(|e| e.recipients.iter().any(|r| !r.status.is_final()))
        .map(|e| e.queue_id.to_string())
        .collect();
    assert!(unheld.is_empty(), "not held: {unheld:?}");
}

// ---------------------------------------------------------------------------------------------
// (g) Forwarding tells itself apart: originals signed by their senders' own DKIM (dkimpy, keys
// in the test DNS), to the same few people, from correspondents seen before. It passes at
// several times the volume at which a spray (fresh domains, no signature, new recipients) from
// a tenant with the same history is blocked.

/// Signs each `(file, domain)` message in `dir` with dkimpy (selector `s1`); returns the key's
/// TXT value. `None`, after printing SKIPPED, when dkimpy is missing on a developer machine
/// (`pip install dkimpy`); under CI that fails.
fn dkimpy_sign(dir: &std::path::Path, jobs: &[(String, String)]) -> Option<String> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import dkim"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "dkimpy is missing (pip install dkimpy)"
        );
        println!("SKIPPED: dkimpy not available (pip install dkimpy)");
        return None;
    }
    let list: Vec<serde_json::Value> = jobs
        .iter()
        .map(|(f, d)| serde_json::json!({"file": f, "domain": d, "selector": "s1"}))
        .collect();
    std::fs::write(dir.join("jobs.json"), serde_json::to_vec(&list).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dkim_sign.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "dkimpy signing failed (pip install dkimpy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(std::fs::read_to_string(dir.join("key.txt")).unwrap())
}

async fn send_file(
    c: &mut SmtpClient,
    dir: &std::path::Path,
    file: &str,
    from: &str,
    to: &str,
) -> String {
    let data = std::fs::read(dir.join(file)).unwrap();
    let (_, r) = c.send_message(from, &[to], &data).await.unwrap();
    r
}

fn forwarded_original(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: Correspondent <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@orig.example>\r\n\r\nSee you on Thursday.\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_forwarding_with_dkim_passes_where_spray_is_blocked() {
    let dns = DnsServer::start().await;
    // The connectors are made now, on the system clock; the simulated clock runs 8 days later,
    // so that neither counts as new.
    let start = today_noon_ms() + 8 * DAY_MS;
    let h = Harness::with_dns(false, start, Some(dns.addr())).await;
    let school = h.tenant("school", "127.0.0.7").await;
    let sprayed = h.tenant("sprayed", "127.0.0.8").await;

    // Every message either tenant forwards, signed by its sender's domain.
    const WARM_HOURS: usize = 12;
    const WARM_PER_HOUR: usize = 8;
    const FORWARD_HOURS: usize = 3;
    const FORWARD_PER_HOUR: usize = 250;
    let signed = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    let mut plan: Vec<(String, String, String, String)> = Vec::new(); // file, from, to, tenant
    let mut add = |n: usize, tenant: &str, people: &str| {
        let from = format!("person{}@corr{}.example", n % 7, n % 25);
        let to = format!("{people}{}@home.example", n % 4);
        let file = format!("{tenant}-{n}.eml");
        let subject = format!("{tenant}-{n}");
        std::fs::write(
            signed.path().join(&file),
            forwarded_original(&from, &to, &subject),
        )
        .unwrap();
        jobs.push((file.clone(), from.split('@').nth(1).unwrap().to_string()));
        plan.push((file, from, to, tenant.to_string()));
    };
    for n in 0..WARM_HOURS * WARM_PER_HOUR {
        add(n, "school", "kid");
        add(n, "sprayed", "member");
    }
    for n in 0..FORWARD_HOURS * FORWARD_PER_HOUR {
        add(1000 + n, "school", "kid");
    }
    let Some(txt) = dkimpy_sign(signed.path(), &jobs) else {
        return;
    };
    let chunks: Vec<String> = txt
        .as_bytes()
        .chunks(200)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    for i in 0..25 {
        dns.add_txt(&format!("s1._domainkey.corr{i}.example"), &chunks);
    }
    let dir = signed.path();

    // Twelve quiet hours of forwarding for both: the history they share.
    let mut school_c = h.session("127.0.0.7", false).await;
    let mut sprayed_c = h.session("127.0.0.8", false).await;
    let (warm, forward) = plan.split_at(2 * WARM_HOURS * WARM_PER_HOUR);
    for hour in warm.chunks(2 * WARM_PER_HOUR) {
        for (file, from, to, tenant) in hour {
            h.advance(HOUR / (2 * WARM_PER_HOUR) as u32);
            let c = if tenant == "school" {
                &mut school_c
            } else {
                &mut sprayed_c
            };
            let r = send_file(c, dir, file, from, to).await;
            assert!(accepted(&r), "warm-up {file}: {r}");
        }
        h.relay().abuse.idle().await;
        h.relay().abuse.tick();
    }

    // The school forwards 250 an hour for three hours.
    let forward_start = h.clock.now_ms();
    let mut forwarded = 0;
    for (file, from, to, _) in forward {
        h.advance(HOUR / FORWARD_PER_HOUR as u32);
        let r = send_file(&mut school_c, dir, file, from, to).await;
        assert!(
            accepted(&r),
            "forwarded {file} refused after {forwarded}: {r}"
        );
        forwarded += 1;
        // DKIM results arrive within milliseconds; let them, as they would between messages.
        h.relay().abuse.idle().await;
    }
    let school_snap = h
        .relay()
        .abuse
        .counters()
        .snapshot(h.clock.now_ms(), school);
    let shape = h.relay().abuse.detector().shape(&school_snap);
    let hour = school_snap.windows.hour;
    println!("(g) school hour: {hour:?}");
    println!(
        "(g) forwarding: {forwarded} DKIM-signed forwarded messages accepted in {:.1} simulated h \
         ({} an hour); last hour: {} unregistered, {} of {} DKIM-verified, {} distinct domains \
         verified; school state {:?}; {}",
        (h.clock.now_ms() - forward_start) as f64 / 3_600_000.0,
        FORWARD_PER_HOUR,
        hour.unregistered_messages,
        hour.dkim_pass,
        hour.dkim_checked,
        hour.dkim_pass_domains,
        h.relay().abuse.status(school).state,
        shape.describe()
    );
    assert!(
        hour.dkim_pass * 10 >= hour.dkim_checked * 9 && hour.dkim_checked > 0,
        "dkimpy's signatures verify: {hour:?}"
    );
    let school_blocks = h
        .store()
        .list_transitions(school, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.to.blocks_unregistered())
        .count();
    assert_eq!(school_blocks, 0, "forwarding was blocked");
    assert_eq!(h.relay().abuse.status(school).state, TenantState::Active);

    // The other tenant, same history, sprays: fresh domains, no signature, new recipients.
    let spray_start = h.clock.now_ms();
    let mut leaked = 0;
    let mut refusal = None;
    for i in 0..400 {
        h.advance(Duration::from_millis(200));
        let from = format!("offer{i}@deal{i}.example");
        let to = format!("target{i}@victims{}.example", i % 9);
        let r = send(&mut sprayed_c, &from, &[&to], &format!("spray-{i}")).await;
        if accepted(&r) {
            leaked += 1;
        } else {
            refusal = Some(r);
            break;
        }
    }
    assert_eq!(refusal.as_deref(), Some(BLOCKED_750));
    h.relay().abuse.idle().await;
    let block = h
        .store()
        .list_transitions(sprayed, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("spray blocked");
    println!(
        "(g) spray: blocked after {leaked} messages, {:.1} simulated s; {}",
        (block.at_ms - spray_start) as f64 / 1000.0,
        block.summary
    );
    let budget = h.config.detector.burst_budget as usize;
    assert!(leaked < budget, "{leaked} leaked");
    assert!(
        forwarded >= 5 * leaked,
        "forwarding passed {forwarded}, spray was stopped at {leaked}"
    );
    // Refused mail is counted for the evidence.
    for i in 0..3 {
        let r = send(
            &mut sprayed_c,
            &format!("again{i}@deal.example"),
            &["x@victims.example"],
            &format!("again-{i}"),
        )
        .await;
        assert_eq!(r, BLOCKED_750);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = h
            .relay()
            .abuse
            .counters()
            .snapshot(h.clock.now_ms(), sprayed);
        if snap.windows.hour.refused >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "refusals not counted: {snap:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    school_c.quit().await.ok();
    sprayed_c.quit().await.ok();
}
