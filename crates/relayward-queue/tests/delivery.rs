//! Outbound delivery end to end: spool -> scheduler -> DNS -> SMTP sinks on loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::auth_sink::AuthSink;
use common::{body, config, parse_dsn, store, wait_until, Relay};
use relayward_core::TraceKind;
use relayward_queue::{
    admin, request_control, AdminOutcome, ControlOp, RecipientStatus, Spool, TenantRoute,
};
use relayward_testkit::{DnsServer, Extensions, SmtpSink, TestPki};

const T: Duration = Duration::from_secs(5);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn sinks(lasts: &[u8]) -> Vec<SmtpSink> {
    let ips: Vec<IpAddr> = lasts.iter().map(|l| ip(*l)).collect();
    SmtpSink::start_group(&ips).await
}

/// DNS for the sender's domain, whose MX collects DSNs.
fn origin_mx(dns: &DnsServer, last: u8) {
    dns.add_mx("origin.test", 10, "mx.origin.test");
    dns.add_a("mx.origin.test", [127, 0, 0, last].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_and_fallback_to_next_mx() {
    let s = sinks(&[2, 3, 4]).await;
    let (mx1, mx2, mx3) = (&s[0], &s[1], &s[2]);
    mx1.reply_greeting("421 4.3.2 Service not available, closing channel");
    let dns = DnsServer::start().await;
    // example.com: best MX answers 421, the next one works, the worst must not be used.
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_mx("example.com", 20, "mx2.example.com");
    dns.add_mx("example.com", 30, "mx3.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    dns.add_a("mx2.example.com", [127, 0, 0, 3].into());
    dns.add_a("mx3.example.com", [127, 0, 0, 4].into());
    // down.test: best MX is unreachable (nothing listens there).
    dns.add_mx("down.test", 5, "gone.down.test");
    dns.add_a("gone.down.test", [127, 0, 0, 254].into());
    dns.add_mx("down.test", 50, "mx3.example.com");
    // pref.test: both up, lower preference wins.
    dns.add_mx("pref.test", 20, "mx3.example.com");
    dns.add_mx("pref.test", 10, "mx2.example.com");

    let relay = Relay::start(config(&dns, mx1.addr().port()));
    relay.send("alice@origin.test", &["bob@example.com"], &body("one"));
    relay.send("alice@origin.test", &["carol@down.test"], &body("two"));
    relay.send("alice@origin.test", &["dave@pref.test"], &body("three"));

    let at_mx2 = mx2.wait_for(2, T).await;
    let mut rcpts: Vec<String> = at_mx2.iter().flat_map(|m| m.recipients()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@example.com", "dave@pref.test"]);
    let at_mx3 = mx3.wait_for(1, T).await;
    assert_eq!(at_mx3[0].recipients(), ["carol@down.test"]);
    assert!(mx1.connections() >= 1, "the best MX was tried first");
    assert!(mx1.transactions().is_empty());
    assert_eq!(at_mx2[0].mail_from, "alice@origin.test");
    assert_eq!(at_mx2[0].helo, "relay.test");
    // The body arrives intact (dot-stuffing undone by the sink).
    assert!(at_mx2[0].data_text().contains("\r\n.leading dot\r\n"));
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert!(wait_until(T, || relay.events.kinds_for("bob@example.com").len() == 2).await);
    let events = relay.events.all();
    let attempt = events
        .iter()
        .find(|e| e.kind == TraceKind::Attempt && e.recipient.as_deref() == Some("bob@example.com"))
        .unwrap();
    assert_eq!(
        attempt.detail.as_deref(),
        Some("remote host mx2.example.com")
    );
    assert!(attempt.reply.as_deref().unwrap().starts_with("250"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_when_there_is_no_mx() {
    let s = sinks(&[2]).await;
    let dns = DnsServer::start().await;
    dns.add_a("nomx.test", [127, 0, 0, 2].into());
    let relay = Relay::start(config(&dns, s[0].addr().port()));
    relay.send("alice@origin.test", &["bob@nomx.test"], &body("a"));
    let got = s[0].wait_for(1, T).await;
    assert_eq!(got[0].recipients(), ["bob@nomx.test"]);
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert!(
        wait_until(T, || relay.events.kinds_for("bob@nomx.test")
            == [TraceKind::Attempt, TraceKind::Delivered])
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_nxdomain_bounce_at_once() {
    let s = sinks(&[2]).await;
    let origin = &s[0];
    let dns = DnsServer::start().await;
    origin_mx(&dns, 2);
    dns.add_mx("nullmx.test", 0, ".");
    let relay = Relay::start(config(&dns, origin.addr().port()));
    relay.send("alice@origin.test", &["bob@nullmx.test"], &body("null"));
    relay.send("alice@origin.test", &["eve@nowhere.test"], &body("nx"));

    let got = origin.wait_for(2, T).await;
    let mut statuses = Vec::new();
    for m in &got {
        assert_eq!(m.mail_from, "", "DSNs are sent with the null sender");
        assert_eq!(m.recipients(), ["alice@origin.test"]);
        let dsn = parse_dsn(&m.data);
        assert_eq!(dsn.per_recipient.len(), 1);
        assert_eq!(dsn.rcpt_field(0, "Action"), Some("failed"));
        assert!(dsn.rcpt_field(0, "Remote-MTA").is_none());
        statuses.push((
            dsn.rcpt_field(0, "Final-Recipient").unwrap().to_string(),
            dsn.rcpt_field(0, "Status").unwrap().to_string(),
            dsn.rcpt_field(0, "Diagnostic-Code").unwrap().to_string(),
        ));
    }
    statuses.sort();
    assert_eq!(statuses[0].0, "rfc822; bob@nullmx.test");
    assert_eq!(statuses[0].1, "5.1.10");
    assert!(statuses[0].2.contains("556 5.1.10"), "{}", statuses[0].2);
    assert_eq!(statuses[1].0, "rfc822; eve@nowhere.test");
    assert_eq!(statuses[1].1, "5.1.2");
    // One attempt each: nothing was retried.
    assert_eq!(relay.events.count(TraceKind::Deferred), 0);
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failure_defers() {
    let s = sinks(&[2]).await;
    let dns = DnsServer::start().await;
    dns.add_mx("broken.test", 10, "mx.broken.test");
    dns.add_a("mx.broken.test", [127, 0, 0, 2].into());
    dns.set_servfail("broken.test");
    let relay = Relay::start(config(&dns, s[0].addr().port()));
    let id = relay.send("alice@origin.test", &["bob@broken.test"], &body("dns"));
    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&id)
            .map(|e| e.recipients[0].status == RecipientStatus::Deferred)
            .unwrap_or(false))
        .await
    );
    let reply = relay.spool.read_envelope(&id).unwrap().recipients[0]
        .last_reply
        .clone()
        .unwrap();
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    // The DNS recovers: the retry delivers.
    dns.clear_servfail("broken.test");
    let got = s[0].wait_for(1, T).await;
    assert_eq!(got[0].recipients(), ["bob@broken.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_resolver_down_defers_never_bounces() {
    let s = sinks(&[2]).await;
    let dns = DnsServer::start().await;
    let mut cfg = config(&dns, s[0].addr().port());
    // Nothing answers there: every query times out or is refused.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    cfg.dns_resolver = Some(dead.local_addr().unwrap());
    drop(dead);
    let relay = Relay::start(cfg);
    let id = relay.send("alice@origin.test", &["bob@anywhere.test"], &body("dead"));
    assert!(
        wait_until(Duration::from_secs(40), || relay
            .spool
            .read_envelope(&id)
            .map(|e| e.recipients[0].status == RecipientStatus::Deferred)
            .unwrap_or(false))
        .await
    );
    let e = relay.spool.read_envelope(&id).unwrap();
    let reply = e.recipients[0].last_reply.clone().unwrap();
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    assert_eq!(relay.events.count(TraceKind::Bounced), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_host_receives_everything() {
    let s = sinks(&[3]).await;
    let dns = DnsServer::start().await;
    dns.add_a("smarthost.test", [127, 0, 0, 3].into());
    let mut cfg = config(&dns, 1); // the MX port must not matter
    cfg.smart_host = Some(format!("smarthost.test:{}", s[0].addr().port()));
    let relay = Relay::start(cfg);
    // Neither domain exists in DNS: with a smart host, no MX lookup happens.
    relay.send(
        "alice@origin.test",
        &["a@nowhere.test", "b@elsewhere.test"],
        &body("sh"),
    );
    let got = s[0].wait_for(1, T).await;
    assert_eq!(got[0].recipients(), ["a@nowhere.test", "b@elsewhere.test"]);
    assert!(dns
        .queries()
        .iter()
        .all(|(name, _)| name.trim_end_matches('.') == "smarthost.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_route_with_auth_and_verified_tls() {
    let pki = TestPki::new();
    let cert = pki.issue_server(&["relay.tenant7.test"]);
    let tenant_server = AuthSink::start(
        SocketAddr::new(ip(5), 0),
        pki.server_config_for(&cert),
        "tenant7",
        "s3cret",
    )
    .await;
    // Tenant 8 requires TLS from a hop that does not offer it.
    let plain = SmtpSink::start(SocketAddr::new(ip(6), 0)).await;
    let dns = DnsServer::start().await;
    dns.add_a("relay.tenant7.test", [127, 0, 0, 5].into());
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), pki.ca_pem()).unwrap();

    let mut cfg = config(&dns, 1);
    cfg.tenant_routes.insert(
        7,
        TenantRoute {
            host: format!("relay.tenant7.test:{}", tenant_server.addr.port()),
            auth_user: Some("tenant7".into()),
            auth_password: Some("s3cret".into()),
            require_tls: true,
            verify_tls: true,
            tls_ca_file: Some(ca.path().to_path_buf()),
        },
    );
    cfg.tenant_routes.insert(
        8,
        TenantRoute {
            host: plain.addr().to_string(),
            require_tls: true,
            ..Default::default()
        },
    );
    let relay = Relay::start(cfg);
    relay.send_with("alice@t7.test", &["bob@example.com"], &body("t7"), |e| {
        e.tenant_id = Some(7)
    });
    let t8 = relay.send_with("carol@t8.test", &["dan@example.com"], &body("t8"), |e| {
        e.tenant_id = Some(8)
    });

    assert!(wait_until(T, || !tenant_server.received().is_empty()).await);
    let got = tenant_server.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(
        got[0].auth,
        Some(("".into(), "tenant7".into(), "s3cret".into()))
    );
    assert_eq!(got[0].mail_from, "alice@t7.test");
    assert_eq!(got[0].rcpts, ["bob@example.com"]);

    // Tenant 8: deferred, never sent in plaintext.
    assert!(
        wait_until(T, || {
            relay
                .spool
                .read_envelope(&t8)
                .map(|e| e.recipients[0].status == RecipientStatus::Deferred)
                .unwrap_or(false)
        })
        .await
    );
    let env = relay.spool.read_envelope(&t8).unwrap();
    let reply = env.recipients[0].last_reply.clone().unwrap();
    assert!(reply.contains("TLS is required"), "{reply}");
    assert!(plain.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_is_retried_on_the_schedule() {
    let s = sinks(&[2]).await;
    let mx = &s[0];
    mx.reply_data_times("451 4.3.0 Try again later", 1);
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx.example.com");
    dns.add_a("mx.example.com", [127, 0, 0, 2].into());
    let relay = Relay::start(config(&dns, mx.addr().port()));
    let started = Instant::now();
    let id = relay.send("alice@origin.test", &["bob@example.com"], &body("retry"));

    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&id)
            .map(|e| e.recipients[0].status == RecipientStatus::Deferred)
            .unwrap_or(false))
        .await,
        "the deferral is recorded in the spool"
    );
    let env = relay.spool.read_envelope(&id).unwrap();
    assert_eq!(env.recipients[0].attempts, 1);
    assert_eq!(
        env.recipients[0].last_reply.as_deref(),
        Some("451 4.3.0 Try again later")
    );
    let got = mx.wait_for(1, T).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retried after ~1 s, not at once"
    );
    assert_eq!(got[0].recipients(), ["bob@example.com"]);
    assert_eq!(mx.transactions().len(), 2);
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert!(
        wait_until(T, || relay.events.kinds_for("bob@example.com")
            == [
                TraceKind::Attempt,
                TraceKind::Deferred,
                TraceKind::Attempt,
                TraceKind::Delivered
            ])
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_produces_one_well_formed_dsn() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_rcpt(
        "nobody@example.com",
        "550 5.1.1 <nobody@example.com>: No such user",
    );
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let relay = Relay::start(config(&dns, mx.addr().port()));
    let received_at = relayward_core::now() - 30;
    relay.send_with(
        "alice@origin.test",
        &["nobody@example.com"],
        &body("bounce"),
        |e| {
            e.dsn_envid = Some("ENV-12345".into());
            e.received_at = received_at.0;
            e.recipients[0].orcpt = Some("rfc822;Nobody@Example.com".into());
        },
    );

    let got = origin.wait_for(1, T).await;
    let m = &got[0];
    assert_eq!(m.mail_from, "");
    assert_eq!(m.recipients(), ["alice@origin.test"]);
    assert_eq!(m.header("Auto-Submitted").as_deref(), Some("auto-replied"));
    assert_eq!(m.header("To").as_deref(), Some("<alice@origin.test>"));
    let dsn = parse_dsn(&m.data);
    assert_eq!(dsn.subject, "Undelivered Mail Returned to Sender");
    assert_eq!(dsn.field("Reporting-MTA"), Some("dns; relay.test"));
    assert_eq!(dsn.field("Original-Envelope-Id"), Some("ENV-12345"));
    let arrival = dsn.field("Arrival-Date").unwrap();
    let parsed = mail_parser::DateTime::parse_rfc822(arrival).expect("RFC 5322 date");
    assert_eq!(parsed.to_timestamp(), received_at.0);
    assert_eq!(dsn.per_recipient.len(), 1);
    assert_eq!(
        dsn.rcpt_field(0, "Original-Recipient"),
        Some("rfc822;Nobody@Example.com")
    );
    assert_eq!(
        dsn.rcpt_field(0, "Final-Recipient"),
        Some("rfc822; nobody@example.com")
    );
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("failed"));
    assert_eq!(dsn.rcpt_field(0, "Status"), Some("5.1.1"));
    assert_eq!(
        dsn.rcpt_field(0, "Remote-MTA"),
        Some("dns; mx1.example.com")
    );
    assert_eq!(
        dsn.rcpt_field(0, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <nobody@example.com>: No such user")
    );
    assert!(dsn.rcpt_field(0, "Last-Attempt-Date").is_some());
    assert!(dsn.human.contains("nobody@example.com"));
    // No RET: headers only.
    assert_eq!(dsn.returned_type, "text/rfc822-headers");
    assert!(dsn.returned.contains("Subject: bounce"));
    assert!(!dsn.returned.contains("Hello."));

    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(origin.messages().len(), 1, "exactly one DSN");
    assert_eq!(mx.messages().len(), 0);
    assert_eq!(relay.events.count(TraceKind::DsnSent), 1);
    assert_eq!(
        relay.events.kinds_for("nobody@example.com"),
        [TraceKind::Attempt, TraceKind::Bounced]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failure_names_only_the_failed_recipients() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_rcpt("bad1@example.com", "550 5.1.1 No such user");
    mx.reply_rcpt(
        "bad2@example.com",
        "553 5.1.3 Bad destination mailbox address syntax",
    );
    mx.reply_rcpt("quiet@example.com", "550 5.1.1 No such user");
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let relay = Relay::start(config(&dns, mx.addr().port()));
    relay.send_with(
        "alice@origin.test",
        &[
            "ok1@example.com",
            "bad1@example.com",
            "bad2@example.com",
            "ok2@example.com",
            "quiet@example.com",
        ],
        &body("partial"),
        |e| {
            e.dsn_ret = Some("FULL".into());
            e.recipients[4].notify = vec!["NEVER".into()];
        },
    );

    let delivered = mx.wait_for(1, T).await;
    assert_eq!(
        delivered.len(),
        1,
        "one transaction for the accepted recipients"
    );
    assert_eq!(
        delivered[0].recipients(),
        ["ok1@example.com", "ok2@example.com"]
    );
    let got = origin.wait_for(1, T).await;
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(
        dsn.final_recipients(),
        ["rfc822; bad1@example.com", "rfc822; bad2@example.com"],
        "NOTIFY=NEVER and delivered recipients are not named"
    );
    assert_eq!(dsn.rcpt_field(1, "Status"), Some("5.1.3"));
    assert!(dsn.field("Original-Envelope-Id").is_none());
    // RET=FULL: the whole message comes back.
    assert_eq!(dsn.returned_type, "message/rfc822");
    assert!(dsn.returned.contains("Hello."));
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_gets_a_delivered_dsn() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let relay = Relay::start(config(&dns, mx.addr().port()));
    relay.send_with(
        "alice@origin.test",
        &["bob@example.com", "eve@example.com"],
        &body("ok"),
        |e| {
            e.recipients[0].notify = vec!["SUCCESS".into(), "FAILURE".into()];
        },
    );
    mx.wait_for(1, T).await;
    let got = origin.wait_for(1, T).await;
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.subject, "Successful Mail Delivery Report");
    assert_eq!(dsn.final_recipients(), ["rfc822; bob@example.com"]);
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("delivered"));
    assert_eq!(dsn.rcpt_field(0, "Status"), Some("2.0.0"));
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_notice_is_sent_once() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_data("451 4.3.0 Mailbox busy");
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let mut cfg = config(&dns, mx.addr().port());
    cfg.delay_warning = Some(Duration::from_secs(5));
    let relay = Relay::start(cfg);
    // Received 10 s ago: the first deferral is already past the 5 s warning time.
    let id = relay.send_with(
        "alice@origin.test",
        &["bob@example.com", "never@example.com"],
        &body("slow"),
        |e| {
            e.received_at -= 10;
            e.recipients[1].notify = vec!["NEVER".into()];
        },
    );
    let got = origin.wait_for(1, T).await;
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.subject, "Delayed Mail (still being retried)");
    assert_eq!(dsn.final_recipients(), ["rfc822; bob@example.com"]);
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("delayed"));
    assert_eq!(dsn.rcpt_field(0, "Status"), Some("4.3.0"));
    assert_eq!(
        dsn.rcpt_field(0, "Diagnostic-Code"),
        Some("smtp; 451 4.3.0 Mailbox busy")
    );
    assert!(dsn.rcpt_field(0, "Will-Retry-Until").is_some());
    // Two more failed attempts, still one notice; the message stays queued.
    mx.wait_for_transactions(3, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.messages().len(), 1);
    let env = relay.spool.read_envelope(&id).unwrap();
    assert!(env
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Deferred));
    assert!(env.recipients[0].attempts >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_bounces_with_4_4_7() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_rcpt(
        "bob@example.com",
        "450 4.2.1 Mailbox temporarily unavailable",
    );
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let mut cfg = config(&dns, mx.addr().port());
    cfg.max_lifetime = Duration::from_secs(3);
    let relay = Relay::start(cfg);
    relay.send_with(
        "alice@origin.test",
        &["bob@example.com"],
        &body("old"),
        |e| {
            e.received_at -= 1;
        },
    );
    let got = origin.wait_for(1, T).await;
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("failed"));
    assert_eq!(dsn.rcpt_field(0, "Status"), Some("4.4.7"));
    assert_eq!(
        dsn.rcpt_field(0, "Diagnostic-Code"),
        Some("smtp; 450 4.2.1 Mailbox temporarily unavailable")
    );
    assert!(
        mx.transactions().len() >= 2,
        "retried until the lifetime ended"
    );
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert!(
        wait_until(T, || relay.events.kinds_for("bob@example.com").last()
            == Some(&TraceKind::Bounced))
        .await
    );
    let kinds = relay.events.kinds_for("bob@example.com");
    assert!(kinds.contains(&TraceKind::Deferred));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_of_a_bounce() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_rcpt("nobody@example.com", "550 5.1.1 No such user");
    mx.reply_rcpt("postmaster@example.com", "550 5.1.1 No such user");
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let relay = Relay::start(config(&dns, mx.addr().port()));
    relay.send("", &["nobody@example.com"], &body("dsn"));
    mx.wait_for_transactions(1, T).await;
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(origin.transactions().is_empty());
    assert_eq!(relay.events.count(TraceKind::DsnSent), 0);
    assert_eq!(
        relay.events.kinds_for("nobody@example.com"),
        [TraceKind::Attempt, TraceKind::Bounced]
    );
    drop(relay);

    // With a postmaster: the failed bounce goes there, once; a failed notice to the postmaster
    // itself is dropped (no loop).
    let mut cfg = config(&dns, mx.addr().port());
    cfg.postmaster = Some("postmaster@origin.test".into());
    let relay = Relay::start(cfg);
    relay.send("", &["nobody@example.com"], &body("dsn2"));
    let got = origin.wait_for(1, T).await;
    assert_eq!(got[0].recipients(), ["postmaster@origin.test"]);
    assert_eq!(got[0].mail_from, "");
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.final_recipients(), ["rfc822; nobody@example.com"]);
    let mut cfg = config(&dns, mx.addr().port());
    cfg.postmaster = Some("postmaster@example.com".into());
    let relay2 = Relay::start(cfg);
    relay2.send("", &["postmaster@example.com"], &body("dsn3"));
    assert!(wait_until(T, || relay2.in_spool().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay2.events.count(TraceKind::DsnSent), 0);
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_capabilities_are_respected() {
    let s = sinks(&[2, 3, 4, 5]).await;
    let (seven_bit, small, origin, utf8) = (&s[0], &s[1], &s[2], &s[3]);
    seven_bit.set_extensions(Extensions {
        eight_bit_mime: false,
        smtputf8: false,
        ..Extensions::default()
    });
    small.set_extensions(Extensions {
        size: Some(1000),
        ..Extensions::default()
    });
    let dns = DnsServer::start().await;
    dns.add_mx("old.test", 10, "mx.old.test");
    dns.add_a("mx.old.test", [127, 0, 0, 2].into());
    dns.add_mx("small.test", 10, "mx.small.test");
    dns.add_a("mx.small.test", [127, 0, 0, 3].into());
    dns.add_mx("new.test", 10, "mx.new.test");
    dns.add_a("mx.new.test", [127, 0, 0, 5].into());
    origin_mx(&dns, 4);
    let relay = Relay::start(config(&dns, origin.addr().port()));
    let eight_bit = "From: a@origin.test\r\nSubject: caf\u{e9}\r\n\r\nCaf\u{e9} cr\u{e8}me\r\n";
    relay.send_with(
        "alice@origin.test",
        &["bob@old.test"],
        eight_bit.as_bytes(),
        |e| {
            e.body_8bit = true;
        },
    );
    // 7-bit content to the same hop goes through, without BODY=8BITMIME.
    relay.send("alice@origin.test", &["carol@old.test"], &body("plain"));
    let big = [body("big"), vec![b'x'; 4000]].concat();
    relay.send("alice@origin.test", &["dan@small.test"], &big);
    // 8-bit to a hop that offers 8BITMIME: announced.
    relay.send_with(
        "alice@origin.test",
        &["erin@new.test"],
        eight_bit.as_bytes(),
        |e| {
            e.body_8bit = true;
        },
    );

    let dsns = origin.wait_for(2, T).await;
    let mut seen: Vec<(String, String)> = dsns
        .iter()
        .map(|m| {
            let d = parse_dsn(&m.data);
            (
                d.rcpt_field(0, "Final-Recipient").unwrap().to_string(),
                d.rcpt_field(0, "Status").unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("rfc822; bob@old.test".to_string(), "5.6.3".to_string()),
            ("rfc822; dan@small.test".to_string(), "5.3.4".to_string()),
        ]
    );
    let plain = seven_bit.wait_for(1, T).await;
    assert_eq!(plain[0].recipients(), ["carol@old.test"]);
    assert_eq!(
        seven_bit.transactions().len(),
        1,
        "the 8-bit message was never sent"
    );
    assert!(
        small.transactions().is_empty(),
        "the oversized message was never sent"
    );
    let eight = utf8.wait_for(1, T).await;
    assert!(eight[0].mail_params.iter().any(|p| p == "BODY=8BITMIME"));
    assert!(eight[0].data_text().contains("Caf\u{e9}"));
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused() {
    let s = sinks(&[2]).await;
    let mx = &s[0];
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    let mut cfg = config(&dns, mx.addr().port());
    cfg.max_per_destination = 1;
    let relay = Relay::start(cfg);
    for i in 0..5 {
        relay.send(
            "alice@origin.test",
            &[&format!("r{i}@example.com")],
            &body(&format!("m{i}")),
        );
    }
    let got = mx.wait_for(5, T).await;
    assert_eq!(mx.connections(), 1, "one connection for five messages");
    assert!(got.iter().all(|m| m.connection == got[0].connection));
    assert!(wait_until(T, || relay.scheduler.idle_connections() == 1).await);
    // Past the idle timeout the connection is closed.
    assert!(wait_until(T, || relay.scheduler.idle_connections() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_delete_through_the_control_directory() {
    let s = sinks(&[2, 3]).await;
    let (mx, origin) = (&s[0], &s[1]);
    mx.reply_data("451 4.3.0 Try again later");
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    origin_mx(&dns, 3);
    let relay = Relay::start(config(&dns, mx.addr().port()));
    let id = relay.send("alice@origin.test", &["bob@example.com"], &body("held"));
    mx.wait_for_transactions(1, T).await;
    let root = relay.dir.path().to_path_buf();

    // The CLI's view: the spool is owned by the server, so the request goes to the directory.
    let cfg = config(&dns, mx.addr().port());
    assert!(matches!(
        admin(&root, &cfg, id, ControlOp::Hold).unwrap(),
        AdminOutcome::Requested
    ));
    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&id)
            .map(|e| e.held)
            .unwrap_or(false))
        .await
    );
    let env = relay.spool.read_envelope(&id).unwrap();
    assert_eq!(env.recipients[0].status, RecipientStatus::Held);
    let attempts = mx.transactions().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mx.transactions().len(), attempts, "no attempts while held");

    request_control(&root, id, ControlOp::Release).unwrap();
    mx.wait_for_transactions(attempts + 1, T).await;
    assert!(!relay.spool.read_envelope(&id).unwrap().held);

    request_control(&root, id, ControlOp::Delete { send_dsn: true }).unwrap();
    assert!(wait_until(T, || relay.spool.read_envelope(&id).is_err()).await);
    let got = origin.wait_for(1, T).await;
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("failed"));
    assert!(dsn
        .rcpt_field(0, "Diagnostic-Code")
        .unwrap()
        .contains("deleted by the relay operator"));
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert!(std::fs::read_dir(root.join("control"))
        .unwrap()
        .next()
        .is_none());
    let kinds = relay.events.kinds_for("bob@example.com");
    for k in [TraceKind::Held, TraceKind::Released, TraceKind::Deleted] {
        assert!(kinds.contains(&k), "{k:?} traced: {kinds:?}");
    }

    // Direct API, and unknown ids.
    let id2 = relay.send("alice@origin.test", &["carol@example.com"], &body("x"));
    relay.scheduler.hold(id2).await.unwrap();
    assert!(relay.spool.read_envelope(&id2).unwrap().held);
    relay.scheduler.delete(id2, false).await.unwrap();
    assert!(relay.spool.read_envelope(&id2).is_err());
    let missing = relay.spool.new_queue_id();
    assert!(relay.scheduler.release(missing).await.is_err());
    assert_eq!(relay.scheduler.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_without_a_server_and_requests_applied_at_start() {
    let s = sinks(&[2]).await;
    let mx = &s[0];
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    let cfg = config(&dns, mx.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let spool = Spool::open(dir.path()).unwrap();
        let a = store(
            &spool,
            "alice@origin.test",
            &["a@example.com"],
            &body("a"),
            |_| {},
        );
        let b = store(
            &spool,
            "alice@origin.test",
            &["b@example.com"],
            &body("b"),
            |_| {},
        );
        (a, b)
    };
    // No server: applied directly.
    match admin(dir.path(), &cfg, a, ControlOp::Hold).unwrap() {
        AdminOutcome::Applied(events) => assert_eq!(events[0].kind, TraceKind::Held),
        other => panic!("{other:?}"),
    }
    // Left for the next server start.
    request_control(dir.path(), b, ControlOp::Hold).unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let relay = Relay::start_on(Arc::new(dir), spool, cfg);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(mx.transactions().is_empty(), "both held");
    relay.scheduler.release(b).await.unwrap();
    let got = mx.wait_for(1, T).await;
    assert_eq!(got[0].recipients(), ["b@example.com"]);
    assert!(relay.spool.read_envelope(&a).unwrap().held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_survive_a_restart() {
    let s = sinks(&[2]).await;
    let mx = &s[0];
    mx.reply_data("451 4.3.0 Try again later");
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", [127, 0, 0, 2].into());
    let mut cfg = config(&dns, mx.addr().port());
    cfg.retry_schedule = vec![Duration::from_secs(2)];
    let relay = Relay::start(cfg.clone());
    let deferred = relay.send(
        "alice@origin.test",
        &["bob@example.com", "carol@example.com"],
        &body("r"),
    );
    mx.wait_for_transactions(1, T).await;
    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&deferred)
            .map(|e| e.recipients[0].attempts == 1)
            .unwrap_or(false))
        .await
    );
    let (dir, spool) = relay.stop().await;
    // Stored while no scheduler runs (never submitted).
    let queued = store(
        &spool,
        "alice@origin.test",
        &["dan@example.com"],
        &body("q"),
        |_| {},
    );

    mx.reset_replies();
    let relay = Relay::start_on(dir, spool, cfg);
    let got = mx.wait_for(2, T).await;
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.recipients()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["bob@example.com", "carol@example.com", "dan@example.com"]
    );
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    let _ = queued;
}

/// Throughput with a smart host: 5,000 messages of 5 KB pre-stored, delivered to one sink.
/// `cargo test -p relayward-queue --release --test delivery -- --ignored --nocapture bench_smart_host`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_smart_host_5k() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let sink = SmtpSink::start("127.0.0.2:0").await;
    let dns = DnsServer::start().await;
    let base = std::env::var_os("RELAYWARD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap().parent().unwrap().into());
    let dir = Arc::new(tempfile::tempdir_in(base).unwrap());
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let mut payload = body("bench");
    while payload.len() < 5 * 1024 {
        payload.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n");
    }
    let t = Instant::now();
    let ids: Vec<_> = (0..n).map(|_| spool.new_queue_id()).collect();
    let envs: Vec<_> = ids
        .iter()
        .map(|id| relayward_queue::Envelope {
            queue_id: *id,
            received_at: relayward_core::now().0,
            tenant_id: Some(1),
            connector_id: None,
            client_ip: "192.0.2.1".into(),
            helo: "client".into(),
            auth_user: None,
            tls: false,
            sender: "alice@origin.test".into(),
            original_sender: None,
            sender_class: relayward_core::SenderClass::Registered,
            header_from_mismatch: false,
            spam_verdict: false,
            message_id: None,
            size: payload.len() as u64,
            body_8bit: false,
            smtputf8: false,
            dsn_ret: None,
            dsn_envid: None,
            recipients: vec![relayward_queue::Recipient::new("bob@example.com")],
            held: false,
        })
        .collect();
    for (ids, envs) in ids.chunks(64).zip(envs.chunks(64)) {
        spool
            .store_many(ids.iter().zip(envs).map(|(id, e)| (id, e, &payload)))
            .unwrap();
    }
    eprintln!(
        "stored {n} messages of {} bytes in {:?}",
        payload.len(),
        t.elapsed()
    );

    let mut cfg = config(&dns, 25);
    cfg.smart_host = Some(sink.addr().to_string());
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    cfg.max_workers = workers;
    cfg.max_per_destination = workers;
    let t = Instant::now();
    let relay = Relay::start_on(dir, spool, cfg);
    let deadline = Duration::from_secs(600);
    assert!(wait_until(deadline, || relay.events.delivered() >= n).await);
    let elapsed = t.elapsed();
    assert_eq!(sink.messages().len(), n);
    assert_eq!(relay.in_spool().len(), 0);
    eprintln!(
        "delivered {n} messages in {elapsed:?}: {:.0} messages/s ({} workers, {} connections)",
        n as f64 / elapsed.as_secs_f64(),
        workers,
        sink.connections()
    );
}

/// A server that answers 421 to a pipelined MAIL or RCPT closes the connection without
/// answering the rest of the batch: the deferral keeps its 421 (what the trace, the DSN and
/// the bounce classifier read), not the closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_in_a_pipelined_batch_is_the_reply_recorded() {
    let s = sinks(&[2]).await;
    let mx = &s[0];
    let limited = "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints";
    mx.reply_mail_times(limited, 1);
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx.example.com");
    dns.add_a("mx.example.com", [127, 0, 0, 2].into());
    let mut cfg = config(&dns, mx.addr().port());
    cfg.retry_schedule = vec![Duration::from_secs(3600)];
    let relay = Relay::start(cfg);
    let id = relay.send(
        "alice@origin.test",
        &["bob@example.com", "carol@example.com"],
        &body("rate limited"),
    );
    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&id)
            .map(|e| e
                .recipients
                .iter()
                .all(|r| r.status == RecipientStatus::Deferred))
            .unwrap_or(false))
        .await,
        "both recipients deferred"
    );
    let env = relay.spool.read_envelope(&id).unwrap();
    for r in &env.recipients {
        assert_eq!(r.last_reply.as_deref(), Some(limited), "{r:?}");
    }
    relay.stop().await;
}
