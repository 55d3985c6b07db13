//! Egress pools over real SMTP: the scheduler binds its connections to the chosen pool's
//! source addresses on 127.0.0.0/8 (and ::1), the sinks record which address each message came
//! from, and the trace's attempt events name the pool and the address.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{body, config, parse_dsn, wait_until, Relay};
use relayward_core::{TraceEvent, TraceKind};
use relayward_queue::{EgressPool, EgressRisk, RecipientStatus};
use relayward_testkit::{DnsServer, SmtpSink};

const T: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, addrs: &[&str], ehlo: Option<&str>) -> EgressPool {
    EgressPool {
        name: name.into(),
        source_addresses: addrs.iter().map(|a| ip(a)).collect(),
        ehlo_hostname: ehlo.map(str::to_string),
    }
}

/// example.com's MX and origin.test's (the senders' domain, where DSNs go).
async fn mx_and_origin(dns: &DnsServer) -> (SmtpSink, SmtpSink) {
    let s = SmtpSink::start_group(&[ip("127.0.0.30"), ip("127.0.0.31")]).await;
    let [mx, origin]: [SmtpSink; 2] = s.try_into().ok().unwrap();
    dns.add_mx("example.com", 10, "mx.example.com");
    dns.add_a("mx.example.com", [127, 0, 0, 30].into());
    dns.add_mx("origin.test", 10, "mx.origin.test");
    dns.add_a("mx.origin.test", [127, 0, 0, 31].into());
    (mx, origin)
}

/// The detail of `rcpt`'s attempt events, in order.
fn attempts(relay: &Relay, rcpt: &str) -> Vec<String> {
    relay
        .events
        .all()
        .into_iter()
        .filter(|e: &TraceEvent| {
            e.kind == TraceKind::Attempt && e.recipient.as_deref() == Some(rcpt)
        })
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_leave_from_the_pool_and_reuse_never_mixes_pools() {
    let dns = DnsServer::start().await;
    let (mx, _origin) = mx_and_origin(&dns).await;
    let mut cfg = config(&dns, mx.addr().port());
    cfg.max_per_destination = 1;
    cfg.egress_pools = vec![
        pool("default", &["127.0.0.12"], None),
        pool("high_risk", &["127.0.0.13"], Some("bulk.relay.test")),
    ];
    let relay = Relay::start(cfg);

    relay.send("alice@origin.test", &["r1@example.com"], &body("m1"));
    let first = mx.wait_for(1, T).await;
    assert_eq!(first[0].peer.ip(), ip("127.0.0.12"));
    assert_eq!(first[0].helo, "relay.test");
    assert!(wait_until(T, || relay.scheduler.idle_connections() == 1).await);

    // A null-sender message to the same host: the idle default connection is not for it.
    relay.send("", &["r2@example.com"], &body("m2"));
    let second = mx.wait_for(2, T).await;
    assert_eq!(second[1].mail_from, "");
    assert_eq!(second[1].peer.ip(), ip("127.0.0.13"));
    assert_eq!(second[1].helo, "bulk.relay.test");
    assert_ne!(second[1].connection, first[0].connection);

    // Default mail again: back on the first connection, still idle.
    relay.send("alice@origin.test", &["r3@example.com"], &body("m3"));
    let third = mx.wait_for(3, T).await;
    assert_eq!(third[2].peer.ip(), ip("127.0.0.12"));
    assert_eq!(third[2].connection, first[0].connection);
    assert_eq!(mx.connections(), 2);

    assert!(wait_until(T, || relay.events.delivered() == 3).await);
    assert_eq!(
        attempts(&relay, "r1@example.com"),
        ["remote host mx.example.com, pool default from 127.0.0.12"]
    );
    assert_eq!(
        attempts(&relay, "r2@example.com"),
        ["remote host mx.example.com, pool high_risk (null sender) from 127.0.0.13"]
    );
}

/// Tenant 1's standing, as the relay would tell it.
struct Switch(AtomicBool);

impl EgressRisk for Switch {
    fn high_risk(&self, tenant: i64) -> bool {
        tenant == 1 && self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_chosen_again_at_each_attempt() {
    let dns = DnsServer::start().await;
    let (mx, _origin) = mx_and_origin(&dns).await;
    mx.reply_rcpt_times("slow@example.com", "451 4.2.1 Mailbox busy", 1);
    let mut cfg = config(&dns, mx.addr().port());
    cfg.egress_pools = vec![
        pool("default", &["127.0.0.12"], None),
        pool("high_risk", &["127.0.0.13"], None),
    ];
    let risk = Arc::new(Switch(AtomicBool::new(false)));
    let relay = Relay::start_with_risk(cfg, risk.clone());

    let id = relay.send("alice@origin.test", &["slow@example.com"], &body("m1"));
    let refused = mx.wait_for_transactions(1, T).await;
    assert_eq!(refused[0].peer.ip(), ip("127.0.0.12"));
    // The tenant is found at risk while its message waits for the retry.
    risk.0.store(true, Ordering::SeqCst);
    let got = mx.wait_for(1, T).await;
    assert_eq!(got[0].peer.ip(), ip("127.0.0.13"));
    assert!(wait_until(T, || relay.events.delivered() == 1).await);
    assert_eq!(
        attempts(&relay, "slow@example.com"),
        [
            "remote host mx.example.com, pool default from 127.0.0.12",
            "remote host mx.example.com, pool high_risk (tenant risk) from 127.0.0.13"
        ]
    );
    assert!(
        relay.spool.read_envelope(&id).is_err(),
        "delivered and removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_is_not_this_hosts_defers_with_4_4_1() {
    // TEST-NET-3: not an address of this host, so it cannot be bound.
    let foreign = "203.0.113.9";
    if std::net::TcpListener::bind((ip(foreign), 0)).is_ok() {
        println!("SKIPPED: {foreign} is an address of this host");
        return;
    }
    let dns = DnsServer::start().await;
    let (mx, origin) = mx_and_origin(&dns).await;
    let mut cfg = config(&dns, mx.addr().port());
    cfg.egress_pools = vec![
        pool("default", &[foreign], None),
        pool("high_risk", &["127.0.0.13"], None),
    ];
    // The first failure sends the delay notice, which tells the status.
    cfg.delay_warning = Some(Duration::ZERO);
    let relay = Relay::start(cfg);
    let id = relay.send("alice@origin.test", &["bob@example.com"], &body("m1"));

    let got = origin.wait_for(1, T).await;
    assert_eq!(
        got[0].peer.ip(),
        ip("127.0.0.13"),
        "the notice leaves from high_risk"
    );
    let dsn = parse_dsn(&got[0].data);
    assert_eq!(dsn.rcpt_field(0, "Action"), Some("delayed"));
    assert_eq!(dsn.rcpt_field(0, "Status"), Some("4.4.1"));
    let diagnostic = dsn.rcpt_field(0, "Diagnostic-Code").unwrap_or_default();
    assert!(
        diagnostic.contains("cannot bind source address 203.0.113.9"),
        "{diagnostic}"
    );
    assert!(mx.transactions().is_empty());
    let env = relay.spool.read_envelope(&id).unwrap();
    assert_eq!(env.recipients[0].status, RecipientStatus::Deferred);
    // No remote host answered: the detail names the pool only (and the detector ignores it).
    assert_eq!(
        attempts(&relay, "bob@example.com")[0],
        "pool default from 203.0.113.9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_targets_bind_the_pools_ipv6_address_or_go_unbound() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: no ::1 here");
        return;
    }
    let dns = DnsServer::start().await;
    let sink = SmtpSink::start("[::1]:0").await;
    dns.add_mx("v6.test", 10, "mx.v6.test");
    dns.add_aaaa("mx.v6.test", "::1".parse().unwrap());
    let mut cfg = config(&dns, sink.addr().port());
    cfg.egress_pools = vec![
        pool("default", &["127.0.0.12", "::1"], None),
        pool("high_risk", &["127.0.0.13"], None),
    ];
    let relay = Relay::start(cfg);
    relay.send("alice@origin.test", &["a@v6.test"], &body("m1"));
    relay.send("", &["b@v6.test"], &body("m2"));
    let got = sink.wait_for(2, T).await;
    assert!(got
        .iter()
        .all(|m| m.peer.ip() == "::1".parse::<IpAddr>().unwrap()));
    assert!(wait_until(T, || relay.events.delivered() == 2).await);
    assert_eq!(
        attempts(&relay, "a@v6.test"),
        ["remote host mx.v6.test, pool default from ::1"]
    );
    assert_eq!(
        attempts(&relay, "b@v6.test"),
        ["remote host mx.v6.test, pool high_risk (null sender) from ::1 (unbound: no IPv6 address in pool high_risk)"]
    );
}
