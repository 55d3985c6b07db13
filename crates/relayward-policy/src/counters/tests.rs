//! The in-process counters end to end: counting at every level, the baseline, restrictions,
//! eviction, memory layout and known recipients.

use std::net::IpAddr;

use relayward_core::{Address, ConnectorId, SenderClass, TenantId};

use super::blocks::*;
use super::tenant::*;
use super::*;
use crate::evidence::{RejectionSample, Sample};
use crate::limits::SenderRestriction;

fn addr(s: &str) -> Address {
    Address::parse(s, false).unwrap()
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn msg<'a>(
    tenant: TenantId,
    class: SenderClass,
    sender: Option<&'a Address>,
    rcpts: &'a [Address],
) -> MessageEvent<'a> {
    MessageEvent {
        tenant,
        connector: ConnectorId(7),
        class,
        sender,
        mismatch: false,
        header_from_domain: None,
        recipients: rcpts,
        external_recipients: rcpts.len() as u32,
        client_ip: Some("192.0.2.10".parse().unwrap()),
        queue_id: Some("Q1"),
        message_id: Some("<m@x>"),
    }
}

#[test]
fn record_counts_every_level_and_evidence() {
    let c = InProcessCounters::new(CountersConfig::default());
    let rcpts = [addr("a@ext.example"), addr("b@other.example")];
    let reg = addr("Alice@tenant.example");
    for i in 0..10 {
        c.record(
            T0 + i * 1000,
            &msg(TenantId(1), SenderClass::Registered, Some(&reg), &rcpts),
        );
    }
    for i in 0..30 {
        let s = addr(&format!("x{i}@spam{}.example", i % 15));
        c.record(
            T0 + 10_000 + i * 100,
            &msg(TenantId(1), SenderClass::Unregistered, Some(&s), &rcpts),
        );
    }
    let snap = c.record(
        T0 + 14_000,
        &msg(TenantId(1), SenderClass::Null, None, &rcpts),
    );
    let h = snap.windows.hour;
    assert_eq!(h.messages, 41);
    assert_eq!(h.recipients, 82);
    assert_eq!(h.unregistered_messages, 30);
    assert_eq!(h.null_messages, 1);
    assert_eq!(h.not_registered(), 31);
    assert!(
        (14..=16).contains(&h.unregistered_domains),
        "{}",
        h.unregistered_domains
    );
    assert!((28..=32).contains(&h.unregistered_senders));
    assert_eq!(h.recipient_domains, 2);
    assert_eq!(snap.windows.minute.messages, 41);
    assert_eq!(snap.connector.unwrap().windows.minute.messages, 41);
    assert!(snap.sender.is_none());

    let reg_usage = c.sender_usage(T0 + 15_000, TenantId(1), "alice@tenant.example");
    assert_eq!(reg_usage.messages_last_minute, 10);
    assert_eq!(reg_usage.recipients_last_day, 20);

    let obs = c.observations(T0 + 15_000, TenantId(1));
    assert_eq!(obs.top_unregistered_domains.len(), 15);
    assert_eq!(obs.top_unregistered_domains[0].count, 2);
    assert_eq!(obs.top_source_ips[0].key, "192.0.2.10");
    assert_eq!(obs.top_source_ips[0].count, 31);
    assert_eq!(obs.samples.len(), 16);
    assert_eq!(obs.series_5min.len(), 12);
    assert_eq!(obs.series_hourly.len(), 24);
    assert_eq!(obs.series_hourly.last().unwrap().unregistered_messages, 30);

    // Remote replies land in the tenant, connector and sender windows.
    let s = c.record_remote_reply(
        T0 + 16_000,
        &RemoteReplyEvent {
            tenant: TenantId(1),
            connector: Some(ConnectorId(7)),
            sender: Some(&reg),
            class: RemoteClass::SpamBlock,
            queue_id: Some("Q9"),
            reply: Some("550 5.7.1 blocked"),
        },
    );
    assert_eq!(s.windows.hour.remote_spam, 1);
    assert_eq!(s.sender.unwrap().hour.remote_spam, 1);
    assert_eq!(
        c.observations(T0 + 16_000, TenantId(1))
            .rejection_samples
            .len(),
        1
    );
}

#[test]
fn baseline_learns_and_resists_bursts() {
    let c = InProcessCounters::new(CountersConfig::default());
    let rcpt = [addr("r@ext.example")];
    let reg = addr("a@tenant.example");
    let fwd = addr("f@forwarded.example");
    let mut t = T0;
    // Two days: 50 registered and 10 unregistered an hour.
    for _ in 0..48 {
        for i in 0..60 {
            let ev = if i < 10 {
                msg(TenantId(1), SenderClass::Unregistered, Some(&fwd), &rcpt)
            } else {
                msg(TenantId(1), SenderClass::Registered, Some(&reg), &rcpt)
            };
            c.record(t + i * MINUTE_MS, &ev);
        }
        t += HOUR_MS;
    }
    let b = c.snapshot(t, TenantId(1)).baseline;
    assert_eq!(b.hours, 48);
    assert!((b.messages_per_hour - 60.0).abs() < 1.0, "{b:?}");
    assert!((b.unregistered_per_hour - 10.0).abs() < 0.5, "{b:?}");
    assert!((b.unregistered_domains_per_hour - 1.0).abs() < 0.1, "{b:?}");
    // One hour of 5,000 unregistered messages moves it by at most alpha × floor.
    for i in 0..5000 {
        c.record(
            t + i * 700,
            &msg(TenantId(1), SenderClass::Unregistered, Some(&fwd), &rcpt),
        );
    }
    let b2 = c.snapshot(t + HOUR_MS, TenantId(1)).baseline;
    assert!(b2.unregistered_per_hour < 15.0, "{b2:?}");
}

#[test]
fn restrictions_outlive_expiry_and_idle_entries_go() {
    let c = InProcessCounters::new(CountersConfig::default());
    let rcpt = [addr("r@ext.example")];
    let a = addr("a@tenant.example");
    c.record(
        T0,
        &msg(TenantId(1), SenderClass::Registered, Some(&a), &rcpt),
    );
    c.set_sender_restriction(
        TenantId(1),
        "a@tenant.example",
        Some(SenderRestriction {
            since_ms: T0,
            until_ms: None,
            limit: crate::limits::Limit::MessagesPerMinute,
            action: crate::limits::LimitAction::Block,
            reason: "test".into(),
        }),
    );
    assert_eq!(c.tenant_count(), 1);
    assert_eq!(c.expire(T0 + 49 * HOUR_MS), 1);
    assert_eq!(c.tenant_count(), 0);
    let u = c.sender_usage(T0 + 49 * HOUR_MS, TenantId(1), "a@tenant.example");
    assert!(u.restriction.is_some());
    assert_eq!(u.messages_last_minute, 0);
}

#[test]
fn sender_cap_evicts_least_recent() {
    let cfg = CountersConfig {
        max_senders_per_tenant: 3,
        ..CountersConfig::default()
    };
    let c = InProcessCounters::new(cfg);
    let rcpt = [addr("r@ext.example")];
    for i in 0..5 {
        let s = addr(&format!("s{i}@tenant.example"));
        c.record(
            T0 + i,
            &msg(TenantId(1), SenderClass::Registered, Some(&s), &rcpt),
        );
    }
    assert_eq!(
        c.sender_usage(T0 + 10, TenantId(1), "s0@tenant.example")
            .messages_last_minute,
        0
    );
    assert_eq!(
        c.sender_usage(T0 + 10, TenantId(1), "s4@tenant.example")
            .messages_last_minute,
        1
    );
}

#[test]
fn memory_layout() {
    use std::mem::size_of;
    let tenant = size_of::<TenantEntry>();
    let compact = size_of::<Compact>();
    let suspect = size_of::<Suspect>();
    println!(
        "size_of: TenantEntry {tenant} B, Compact (connector/sender) {compact} B, \
         Suspect {suspect} B, Sample {} B, RejectionSample {} B, top-k row (str) {} B, \
         top-k row (ip) {} B",
        size_of::<Sample>(),
        size_of::<RejectionSample>(),
        size_of::<(Box<str>, u64, u64)>(),
        size_of::<(IpAddr, u64, u64)>(),
    );
    // The doc comment of this module quotes these figures.
    assert!(tenant <= 3_900, "{tenant}");
    assert!(compact <= 624, "{compact}");
}

#[test]
fn a_recipient_of_an_earlier_hour_is_known() {
    let c = InProcessCounters::new(CountersConfig::default());
    let t0 = 1_767_225_600_000 + 10 * HOUR_MS;
    let rcpt = [addr("kid1@home.example")];
    let sender = addr("p@corr.example");
    let ev = |rcpts: &'static [Address]| MessageEvent {
        tenant: TenantId(1),
        connector: ConnectorId(1),
        class: SenderClass::Unregistered,
        sender: Some(&sender),
        mismatch: false,
        header_from_domain: None,
        recipients: rcpts,
        external_recipients: 1,
        client_ip: None,
        queue_id: None,
        message_id: None,
    };
    let rcpt: &'static [Address] = Box::leak(Box::new(rcpt));
    let s = c.record(t0, &ev(rcpt));
    assert_eq!(s.windows.hour.unregistered_known_recipient, 0);
    let s = c.record(t0 + 10 * MINUTE_MS, &ev(rcpt));
    assert_eq!(s.windows.hour.unregistered_known_recipient, 0, "same hour");
    let s = c.record(t0 + HOUR_MS, &ev(rcpt));
    assert_eq!(s.windows.hour.unregistered_known_recipient, 1, "next hour");
    let s = c.record(t0 + HOUR_MS + 5 * MINUTE_MS, &ev(rcpt));
    assert_eq!(
        s.windows.hour.unregistered_known_recipient, 2,
        "still known that hour"
    );
    let s = c.record(t0 + 20 * DAY_MS, &ev(rcpt));
    assert_eq!(
        s.windows.hour.unregistered_known_recipient, 0,
        "forgotten after 14 days"
    );
    let fresh: &'static [Address] = Box::leak(Box::new([addr("new@home.example")]));
    let s = c.record(t0 + 20 * DAY_MS + 1, &ev(fresh));
    assert_eq!(s.windows.hour.unregistered_known_recipient, 0);
}

/// Two nodes counting one tenant: each adds the other's share to its own figures, distinct
/// domains as the union of both bitmaps, a sender's minute across both; a share read again
/// replaces the previous one instead of counting twice.
#[test]
fn shares_of_two_nodes_add_up_without_counting_twice() {
    let a = InProcessCounters::new(CountersConfig::default());
    let b = InProcessCounters::new(CountersConfig::default());
    let t = TenantId(5);
    let rcpts = [addr("r@ext.example")];
    let sender = addr("Same@spam0.example");
    // 20 unregistered messages on each node; domains spam0..spam29 overall, 10 in common.
    for i in 0..20 {
        let s = addr(&format!("u{i}@spam{i}.example"));
        a.record(
            T0 + i * 100,
            &msg(t, SenderClass::Unregistered, Some(&s), &rcpts),
        );
        let s = addr(&format!("u{i}@spam{}.example", i + 10));
        b.record(
            T0 + i * 100,
            &msg(t, SenderClass::Unregistered, Some(&s), &rcpts),
        );
    }
    for i in 0..3 {
        a.record(
            T0 + 3000 + i,
            &msg(t, SenderClass::Unregistered, Some(&sender), &rcpts),
        );
        b.record(
            T0 + 3000 + i,
            &msg(t, SenderClass::Unregistered, Some(&sender), &rcpts),
        );
    }
    let now = T0 + 4000;
    assert_eq!(a.snapshot(now, t).windows.minute.unregistered_messages, 23);

    let read_back = |from: &InProcessCounters| {
        let shares = from.export(false);
        assert_eq!(shares.len(), 1);
        let s = &shares[0];
        OtherShares {
            tenant: s.tenant,
            entries: vec![s.entry.clone()],
            senders: s
                .senders
                .iter()
                .map(|(k, v)| (k.clone(), vec![v.clone()]))
                .collect(),
        }
    };
    let from_b = read_back(&b);
    assert!(from_b
        .senders
        .iter()
        .any(|(k, _)| k == "same@spam0.example"));
    assert!(a.import(now, &from_b));
    let w = a.snapshot(now, t).windows.minute;
    assert_eq!(w.unregistered_messages, 46);
    // 30 distinct domains (spam0..spam29); linear counting on 256 slots, ~5 % error.
    assert!(
        (27..=33).contains(&w.unregistered_domains),
        "{}",
        w.unregistered_domains
    );
    assert_eq!(
        a.sender_usage(now, t, "same@spam0.example")
            .messages_last_minute,
        6
    );

    // The same share read again: still 46, not 69.
    assert!(a.import(now, &from_b));
    assert_eq!(a.snapshot(now, t).windows.minute.unregistered_messages, 46);
    // Nothing counted on B since: its next export is empty, and a full one carries it again.
    assert!(b.export(false).is_empty());
    assert_eq!(b.export(true).len(), 1);
    // A minute later the shared minute has slid out, the hour keeps it.
    let later = now + 61_000;
    let s = a.snapshot(later, t).windows;
    assert_eq!(s.minute.unregistered_messages, 0);
    assert_eq!(s.hour.unregistered_messages, 46);
    // The shared counter store gone: back to this node's own figures.
    a.forget_others();
    assert_eq!(a.snapshot(later, t).windows.hour.unregistered_messages, 23);
    // A malformed or foreign-format share is refused, not half-counted.
    let bad = OtherShares {
        tenant: t,
        entries: vec![vec![SHARE_FORMAT + 1, 0, 0]],
        senders: vec![],
    };
    assert!(!a.import(later, &bad));
    assert_eq!(a.snapshot(later, t).windows.hour.unregistered_messages, 23);
}
