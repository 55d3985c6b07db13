//! The shared IPs' protection from the receiving side's answers, over real SMTP: a provider's
//! rate-limit replies slow delivery to it, and spam complaints arriving as ARF feedback reports
//! on the SRS listener count against the right tenant, suppress the complaining recipient,
//! route the tenant through the high-risk pool and then block it from unregistered domains.
//! The relay runs in-process; its next hop is an in-test sink on loopback.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use relayward::clock::{Clock, SystemClock};
use relayward::config::{Config, ListenerConfig};
use relayward::serve::{start_with, Running, StartOptions};
use relayward_core::{TenantId, TenantState, TraceKind, TraceQuery};
use relayward_testkit::{SmtpClient, SmtpSink};

struct Harness {
    _dir: tempfile::TempDir,
    config: Config,
    relay: Running,
    sink: SmtpSink,
}

impl Harness {
    async fn start(sink: SmtpSink, dir: tempfile::TempDir, mut config: Config) -> Harness {
        config.server.hostname = "relay.test".into();
        config.server.data_dir = dir.path().join("data");
        config.server.directory_poll_ms = 100;
        config.server.detector_interval_ms = 100;
        config.delivery.smart_host = Some(sink.addr().to_string());
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        // The default listener's fixed port would collide with the other tests.
        for l in &mut config.listeners {
            if l.address.port() == ListenerConfig::default().address.port() {
                l.address = "127.0.0.1:0".parse().unwrap();
            }
        }
        config.validate().unwrap();
        let relay = start_with(config.clone(), StartOptions::default())
            .await
            .unwrap();
        Harness {
            _dir: dir,
            config,
            relay,
            sink,
        }
    }

    /// Tenant `name`, its verified domain `<name>.example`, an IP connector for `ip` allowed
    /// to relay unregistered senders; waits until the running relay knows it.
    async fn tenant(&self, name: &str, ip: &str) -> i64 {
        common::in_process::hybrid_tenant(&self.config, Arc::new(SystemClock), name, ip).await;
        let id = self
            .relay
            .store
            .find_tenant(name)
            .await
            .unwrap()
            .unwrap()
            .id;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.relay.directory.current().version
            < self.relay.store.directory_version().await.unwrap()
        {
            assert!(Instant::now() < deadline, "directory not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id.0
    }

    async fn session(&self, ip: &str) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, self.relay.smtp_addrs[0])
            .await
            .unwrap();
        assert_eq!(c.read_reply().await.unwrap().0, 220);
        c.ehlo("mail.tenant.example").await.unwrap();
        c
    }

    /// Waits until the sink accepted `n` messages.
    async fn delivered(&self, n: usize, within: Duration) -> Vec<relayward_testkit::Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.sink.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages delivered",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The message the sink accepted for `rcpt`, waiting up to 10 s for it.
    async fn delivered_to(&self, rcpt: &str) -> relayward_testkit::Received {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self
                .sink
                .messages()
                .into_iter()
                .find(|m| m.recipients() == [rcpt])
            {
                return m;
            }
            assert!(Instant::now() < deadline, "nothing delivered to {rcpt}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn trace(&self, tenant: i64) -> Vec<relayward_core::TraceEvent> {
        self.relay.flush_trace().await;
        let mut events = self
            .relay
            .store
            .search_trace(&TraceQuery {
                tenant_id: Some(TenantId(tenant)),
                limit: 1000,
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        events.sort_by_key(|e| (e.at_ms, e.id));
        events
    }
}

/// An SRS domain with its listener beside the relay listener (`smtp_addrs[1]`), and the
/// feedback address when given.
fn with_srs(config: &mut Config, feedback_address: Option<&str>) {
    config.srs = Some(relayward::forwarding::SrsSection {
        domain: "srs.relay.test".into(),
        secrets: vec!["reputation-test-secret".into()],
        feedback_address: feedback_address.map(str::to_string),
        ..Default::default()
    });
    config.listeners = vec![
        ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            ..ListenerConfig::default()
        },
        ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            role: relayward::forwarding::ListenerRole::Srs,
            ..ListenerConfig::default()
        },
    ];
}

fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@tenant.example>\r\n\r\nHello.\r\n"
    )
}

async fn send(c: &mut SmtpClient, from: &str, to: &str, subject: &str) -> String {
    let data = message(from, to, subject);
    let (_, text) = c.send_message(from, &[to], data.as_bytes()).await.unwrap();
    text
}

/// The queue id in a `250 2.0.0 Ok: queued as <id>` reply.
fn queue_id(reply: &str) -> String {
    reply
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

const GMAIL_RATE_LIMIT: &str = "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.";

/// A provider answering with Gmail's rate-limit reply is slowed: the attempt that got it says
/// so in the trace, and the next messages go one a second (half of 120 a minute) instead of
/// all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_destination_is_slowed() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let mut config = Config::default();
    config.delivery.retry_schedule_secs = vec![1];
    config.delivery.throttle_rate_per_minute = 120;
    config.delivery.throttle_restore_secs = 600;
    let h = Harness::start(sink, tempfile::tempdir().unwrap(), config).await;
    let tenant = h.tenant("acme", "127.0.0.1").await;

    h.sink.reply_mail_times(GMAIL_RATE_LIMIT, 1);
    let mut c = h.session("127.0.0.1").await;
    let first = send(&mut c, "news@acme.example", "a@gmail.test", "first").await;
    assert!(first.starts_with("250 "), "{first}");
    // The refused attempt, recorded (so the relay has read the reply).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.trace(tenant).await.iter().any(|e| {
        e.kind == TraceKind::Attempt && e.reply.as_deref().is_some_and(|r| r.contains("4.7.28"))
    }) {
        assert!(Instant::now() < deadline, "no refused attempt in the trace");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..4 {
        let r = send(
            &mut c,
            "news@acme.example",
            &format!("b{i}@gmail.test"),
            &format!("next{i}"),
        )
        .await;
        assert!(r.starts_with("250 "), "{r}");
    }
    h.delivered(5, Duration::from_secs(20)).await;

    let events = h.trace(tenant).await;
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e.kind == TraceKind::Attempt)
        .collect();
    let slowed = attempts
        .iter()
        .find(|e| e.reply.as_deref().is_some_and(|r| r.contains("4.7.28")))
        .unwrap_or_else(|| panic!("the refused attempt is traced: {attempts:#?}"));
    let detail = slowed.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("destination 127.0.0.1 throttled to 8 concurrent, 60/min"),
        "{detail}"
    );
    let ok: Vec<i64> = attempts
        .iter()
        .filter(|e| e.reply.as_deref().is_some_and(|r| r.starts_with('2')))
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(ok.len(), 5, "{attempts:#?}");
    let gaps: Vec<i64> = ok.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "after the rate-limit reply at {} ms: successful attempts at {:?} ms (gaps {gaps:?})",
        slowed.at_ms,
        ok.iter().map(|t| t - slowed.at_ms).collect::<Vec<_>>()
    );
    // One a second; an unthrottled relay sends these within milliseconds of each other.
    for g in &gaps {
        assert!(*g >= 900, "attempts {g} ms apart: {gaps:?}");
    }
    assert!(ok[0] - slowed.at_ms >= 900);
    c.quit().await.unwrap();
    h.relay.shutdown().await;
}

/// The Yahoo feedback-loop report of the fixture, made to complain about `queue_id` (the
/// relay's id in the original's Received header) sent to `recipient`.
fn arf_about(queue_id: &str, recipient: &str) -> Vec<u8> {
    let sample = String::from_utf8(relayward_testkit::fixture("arf-yahoo-cfl.eml")).unwrap();
    assert!(sample.contains("1HZE9ZVMHW301AYD") && sample.contains("pat.reader@yahoo.com"));
    sample
        .replace("1HZE9ZVMHW301AYD", queue_id)
        .replace("pat.reader@yahoo.com", recipient)
        .into_bytes()
}

/// One message to the SRS listener from Yahoo's feedback sender; the final reply.
async fn report(h: &Harness, to: &str, data: &[u8]) -> (u16, String) {
    let mut c = SmtpClient::connect(h.relay.smtp_addrs[1]).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 220);
    c.ehlo("sonic-fbl-2.mail.bf2.yahoo.test").await.unwrap();
    let r = c
        .send_message("feedback@arf.mail.yahoo.com", &[to], data)
        .await
        .unwrap();
    let _ = c.quit().await;
    r
}

/// Spam complaints from a provider's feedback loop, end to end: each ARF report is matched to
/// the tenant whose message it names, counted, and its recipient suppressed; at the act level
/// the tenant's mail moves to the high-risk pool, above the block level the tenant is blocked
/// from unregistered domains with the complaint rate as evidence, and its registered mail
/// keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_route_to_high_risk_then_block() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.delivery.retry_schedule_secs = vec![3600];
    config.egress_pools = vec![
        relayward::egress::EgressPoolConfig {
            name: "default".into(),
            source_addresses: vec!["127.0.0.2".parse().unwrap()],
            ..Default::default()
        },
        relayward::egress::EgressPoolConfig {
            name: "high_risk".into(),
            source_addresses: vec!["127.0.0.3".parse().unwrap()],
            ..Default::default()
        },
    ];
    with_srs(&mut config, Some("fbl@srs.relay.test"));
    // 20 messages make a representative day; one complaint in them is 5 % (act), two 10 %
    // (block).
    config.reputation.min_messages_day = 20;
    config.reputation.min_messages_week = 20;
    config.reputation.complaint_warn = 0.02;
    config.reputation.complaint_act = 0.04;
    config.reputation.complaint_block = 0.08;
    let h = Harness::start(sink, dir, config).await;
    let tenant = h.tenant("gardenshop", "127.0.0.1").await;
    let other = h.tenant("bakery", "127.0.0.9").await;

    let mut c = h.session("127.0.0.1").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = send(
            &mut c,
            "deals@gardenshop.example",
            &format!("reader{i}@yahoo.test"),
            &format!("deals{i}"),
        )
        .await;
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
        ids.push(queue_id(&r));
    }
    let got = h.delivered(20, Duration::from_secs(20)).await;
    assert!(got.iter().all(|m| m.peer.ip().to_string() == "127.0.0.2"));

    // A report that names no message of the relay is taken and counts for nobody.
    let (code, text) = report(
        &h,
        "fbl@srs.relay.test",
        &arf_about("NOSUCHID0000", "x@yahoo.test"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    // A report from an ordinary sender to an SRS address is no bounce.
    let (code, text) = report(
        &h,
        "SRS0=abcd=2E=x.example=y@srs.relay.test",
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1"), "{text}");

    // The first complaint: 1 in 20, the act level.
    let (code, text) = report(
        &h,
        "fbl@srs.relay.test",
        &arf_about(&ids[0], "reader0@yahoo.test"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let status = h.relay.abuse.reputation_status(TenantId(tenant));
    assert_eq!(status.day.complaints, 1, "{status:?}");
    assert_eq!(
        status.level,
        relayward_policy::reputation::ReputationLevel::Act,
        "{status:?}"
    );
    assert_eq!(
        h.relay
            .abuse
            .reputation_status(TenantId(other))
            .day
            .complaints,
        0,
        "another tenant's rates are untouched"
    );
    // The same report again (providers resend; anyone can send one) counts once, and a report
    // naming someone who never got the message counts for nothing.
    let (code, text) = report(
        &h,
        "fbl@srs.relay.test",
        &arf_about(&ids[0], "reader0@yahoo.test"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = report(
        &h,
        "fbl@srs.relay.test",
        &arf_about(&ids[2], "stranger@yahoo.test"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(
        h.relay
            .abuse
            .reputation_status(TenantId(tenant))
            .day
            .complaints,
        1
    );
    // The complaining recipient is suppressed for this tenant.
    let r = send(
        &mut c,
        "deals@gardenshop.example",
        "reader0@yahoo.test",
        "again",
    )
    .await;
    assert_eq!(
        r, "550 5.1.10 Recipient address suppressed after a hard bounce",
        "{r}"
    );
    // Still active, but its mail now leaves from the high-risk pool.
    assert_eq!(
        h.relay.abuse.status(TenantId(tenant)).state,
        TenantState::Active
    );
    let r = send(
        &mut c,
        "deals@gardenshop.example",
        "reader20@yahoo.test",
        "after",
    )
    .await;
    assert!(r.starts_with("250 "), "{r}");
    let after = h.delivered_to("reader20@yahoo.test").await;
    assert_eq!(after.peer.ip().to_string(), "127.0.0.3");
    // Another tenant's mail still leaves from the default pool.
    let mut b = h.session("127.0.0.9").await;
    let r = send(
        &mut b,
        "orders@bakery.example",
        "someone@yahoo.test",
        "bread",
    )
    .await;
    assert!(r.starts_with("250 "), "{r}");
    let bread = h.delivered_to("someone@yahoo.test").await;
    assert_eq!(bread.peer.ip().to_string(), "127.0.0.2");

    // The tenant's admins were alerted when the rate crossed the levels.
    let alert = h.delivered_to("admin@gardenshop.example").await;
    assert!(
        alert
            .header("Subject")
            .unwrap_or_default()
            .contains("Tenant bounce or complaint rate too high"),
        "{}",
        alert.data_text()
    );

    // The second complaint: 2 in 21, above the block level.
    let (code, text) = report(
        &h,
        "fbl@srs.relay.test",
        &arf_about(&ids[1], "reader1@yahoo.test"),
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while h.relay.abuse.status(TenantId(tenant)).state != TenantState::BlockedUnregistered {
        assert!(Instant::now() < deadline, "not blocked within a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = send(
        &mut c,
        "someone@unregistered.example",
        "reader5@yahoo.test",
        "spam",
    )
    .await;
    assert_eq!(
        r,
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains"
    );
    let r = send(
        &mut c,
        "deals@gardenshop.example",
        "reader6@yahoo.test",
        "registered",
    )
    .await;
    assert!(r.starts_with("250 "), "registered mail keeps flowing: {r}");

    // The evidence carries the rates.
    h.relay.abuse.idle().await;
    let transitions = h
        .relay
        .store
        .list_transitions(TenantId(tenant), 10)
        .await
        .unwrap();
    let t = transitions
        .iter()
        .find(|t| t.to == TenantState::BlockedUnregistered)
        .expect("the block is recorded");
    assert!(t.summary.contains("complaint rate"), "{}", t.summary);
    let evidence: serde_json::Value = serde_json::from_str(&t.evidence).unwrap();
    let signal = evidence["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rule"] == "complaint_rate" && s["level"] == "block")
        .unwrap_or_else(|| panic!("{evidence:#}"));
    assert!(signal["observed"].as_f64().unwrap() > 0.08);
    println!("blocked: {}", t.summary);

    // The reports are in the trace, attributed.
    h.relay.flush_trace().await;
    let reports = h
        .relay
        .store
        .search_trace(&TraceQuery {
            recipient: Some("fbl@srs.relay.test".into()),
            limit: 10,
            ..TraceQuery::default()
        })
        .await
        .unwrap();
    let details: Vec<String> = reports.iter().filter_map(|e| e.detail.clone()).collect();
    assert!(
        details.iter().any(|d| d
            .contains(&format!("about queue id {} of tenant {tenant}", ids[0]))
            && d.contains("counted as a complaint")
            && d.contains("suppressed reader0@yahoo.test")),
        "{details:#?}"
    );
    for expected in [
        "not in the trace",
        "already counted",
        "stranger@yahoo.test did not receive that message, not counted",
    ] {
        assert!(
            details.iter().any(|d| d.contains(expected)),
            "{expected}: {details:#?}"
        );
    }
    let _ = c.quit().await;
    let _ = b.quit().await;
    h.relay.shutdown().await;
}

/// A hard bounce that comes back later, as a DSN to the SRS address of forwarded mail (the
/// receiver accepted the message first): it reaches the original sender as before, and also
/// counts towards the tenant's bounce rate and suppresses the bounced recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_dsn_counts_and_suppresses() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.delivery.retry_schedule_secs = vec![3600];
    with_srs(&mut config, None);
    let h = Harness::start(sink, dir, config).await;
    let tenant = h.tenant("fabrikam", "127.0.0.1").await;
    let mut c = h.session("127.0.0.1").await;
    let r = send(
        &mut c,
        "orders@shop.example",
        "nobody@dest.example",
        "order",
    )
    .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let forwarded = h.delivered_to("nobody@dest.example").await;
    assert!(
        forwarded.mail_from.starts_with("SRS0=")
            && forwarded.mail_from.ends_with("@srs.relay.test"),
        "{}",
        forwarded.mail_from
    );

    let sample =
        String::from_utf8(relayward_testkit::fixture("dsn-postfix-user-unknown.eml")).unwrap();
    let dsn = sample.replace("1HMXC7Q0W6G1NF6Y", &queue_id(&r));
    let mut s = SmtpClient::connect(h.relay.smtp_addrs[1]).await.unwrap();
    assert_eq!(s.read_reply().await.unwrap().0, 220);
    s.ehlo("mx.dest.example").await.unwrap();
    let (code, text) = s
        .send_message("", &[forwarded.mail_from.as_str()], dsn.as_bytes())
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let _ = s.quit().await;
    // The bounce goes on to the original sender...
    h.delivered_to("orders@shop.example").await;
    // ...and counts against the tenant, whose next message to that address is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h
        .relay
        .abuse
        .reputation_status(TenantId(tenant))
        .day
        .bounces
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the returned bounce was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = send(
        &mut c,
        "orders@shop.example",
        "nobody@dest.example",
        "again",
    )
    .await;
    assert_eq!(
        r, "550 5.1.10 Recipient address suppressed after a hard bounce",
        "{r}"
    );
    let _ = c.quit().await;
    h.relay.shutdown().await;
}

/// Remote hard bounces count towards the tenant's bounce rate (other refusals do not), and
/// the rate is in the tenant's status through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_bounces_make_the_bounce_rate() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.delivery.retry_schedule_secs = vec![3600];
    config.reputation.min_messages_day = 10;
    config.reputation.min_messages_week = 10;
    config.reputation.bounce_warn = 0.1;
    config.reputation.bounce_act = 0.25;
    config.reputation.bounce_block = 0.5;
    let h = Harness::start(sink, dir, config).await;
    let tenant = h.tenant("contoso", "127.0.0.1").await;
    for i in 0..3 {
        h.sink.reply_rcpt(
            &format!("gone{i}@dest.example"),
            format!("550 5.1.1 <gone{i}@dest.example>: Recipient address rejected: User unknown in virtual mailbox table"),
        );
    }
    // A spam refusal is no hard bounce: it does not count towards the rate.
    h.sink
        .reply_rcpt("picky@dest.example", "550 5.7.1 Message rejected as spam");
    let mut c = h.session("127.0.0.1").await;
    let mut rcpts: Vec<String> = (0..3).map(|i| format!("gone{i}@dest.example")).collect();
    rcpts.push("picky@dest.example".into());
    rcpts.extend((0..7).map(|i| format!("ok{i}@dest.example")));
    for (i, rcpt) in rcpts.iter().enumerate() {
        let r = send(&mut c, "info@contoso.example", rcpt, &format!("m{i}")).await;
        assert!(r.starts_with("250 "), "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.relay.abuse.reputation_status(TenantId(tenant));
        if s.day.messages >= 10 {
            assert_eq!(s.day.bounces, 3, "{s:?}");
            assert_eq!(s.day.messages, 10, "{s:?}");
            assert_eq!(
                s.level,
                relayward_policy::reputation::ReputationLevel::Act,
                "{s:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "outcomes not counted: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.relay.abuse.high_risk_routing(TenantId(tenant)));
    let (_, token) = relayward_admin::create_token(
        &*h.relay.store,
        relayward_admin::TokenScope::Tenant(TenantId(tenant)),
        "reputation test",
        "test",
    )
    .await
    .unwrap();
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/tenants/{tenant}/status",
            h.relay.admin_addr.unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["reputation"]["level"], "act", "{status:#}");
    assert_eq!(status["reputation"]["day"]["bounces"], 3, "{status:#}");
    let _ = c.quit().await;

    // The counts outlive a restart, and the CLI reads them from the store without the relay.
    let before = h.relay.abuse.reputation_status(TenantId(tenant));
    let Harness {
        _dir,
        config,
        relay,
        ..
    } = h;
    relay.shutdown().await;
    let now = SystemClock.now_ms();
    let stored = relayward::abuse::reputation_from_store(
        &*relayward_store::open(&config.store_url()).await.unwrap(),
        &config,
        TenantId(tenant),
        now,
    )
    .await
    .unwrap();
    assert_eq!(stored, before);
    let relay = start_with(config.clone(), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(relay.abuse.reputation_status(TenantId(tenant)), before);
    assert!(relay.abuse.high_risk_routing(TenantId(tenant)));
    relay.shutdown().await;
}
