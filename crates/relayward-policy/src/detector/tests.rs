//! The detector's scenarios on simulated traffic: a hybrid tenant left alone, bursts blocked
//! within budget, spam rejections, recovery and probation; and its cost at scale.

use relayward_core::{Address, ConnectorId, SenderClass, TenantId, TenantState};

use super::simulate::*;
use super::*;
use crate::counters::{
    classify_remote_reply, Counters, InProcessCounters, MessageEvent, RemoteClass, HOUR_MS,
    MINUTE_MS,
};
use crate::evidence::Evidence;

// (a) ----------------------------------------------------------------------------------

#[test]
fn hybrid_tenant_is_never_touched_in_30_days() {
    let mut sim = Sim::new(DetectorConfig::default(), 0x5eed);
    let p = Profile::hybrid();
    let mut max_hour_unreg = 0;
    let mut max_hour_domains = 0;
    let mut max_minute_unreg = 0;
    for day in 0..30 {
        let mut events = Vec::new();
        for h in 0..24 {
            events.append(&mut hour_of(&mut sim.rng, &p, T0 + day * DAY + h * HOUR_MS));
        }
        // Sample the windows every 5 minutes for the report.
        for i in 0..288 {
            events.push((T0 + day * DAY + i * 5 * MINUTE_MS + 4 * MINUTE_MS, Ev::Tick));
        }
        events.sort_by_key(|(t, _)| *t);
        for (t, ev) in events {
            let tick = matches!(ev, Ev::Tick);
            sim.run(vec![(t, ev)]);
            if tick {
                let w = sim.counters.snapshot(t, TENANT).windows;
                max_hour_unreg = max_hour_unreg.max(w.hour.not_registered());
                max_hour_domains = max_hour_domains.max(w.hour.unregistered_domains);
                max_minute_unreg = max_minute_unreg.max(w.minute.not_registered());
            }
        }
    }
    let snap = sim.counters.snapshot(T0 + 30 * DAY, TENANT);
    let warned = sim
        .transitions
        .iter()
        .filter(|t| t.to == TenantState::Warned)
        .count();
    let blocked = sim
        .transitions
        .iter()
        .filter(|t| t.to == TenantState::BlockedUnregistered)
        .count();
    println!(
        "(a) hybrid tenant, 30 days: {} unregistered/null accepted, peak hour {} \
         unregistered from {} domains, peak minute {}; baseline {:.0} msg/h, {:.1} \
         unregistered/h, {:.1} domains/h; false warns {warned}, false blocks {blocked}",
        sim.accepted_unregistered.len(),
        max_hour_unreg,
        max_hour_domains,
        max_minute_unreg,
        snap.baseline.messages_per_hour,
        snap.baseline.unregistered_per_hour,
        snap.baseline.unregistered_domains_per_hour,
    );
    assert!(sim.transitions.is_empty(), "{:#?}", sim.transitions);
    assert_eq!(sim.refused, 0);
}

#[test]
fn quiet_hybrid_tenant_first_day_within_floor() {
    // No history at all; 99 forwarded messages from 5 domains in ten minutes.
    let mut sim = Sim::new(DetectorConfig::default(), 7);
    let mut events = Vec::new();
    for i in 0..99 {
        let s = addr(&format!("p{i}@fwd{}.example", i % 5));
        events.push((T0 + 3 * HOUR_MS + i * 6_000, Ev::Unregistered(s)));
    }
    sim.run(events);
    assert!(sim.transitions.is_empty(), "{:#?}", sim.transitions);
}

// (b) ----------------------------------------------------------------------------------

struct BurstOutcome {
    leaked: usize,
    seconds: f64,
    rules: String,
}

/// When the burst of a tenant `warm_days` into its history starts: mid-afternoon.
fn burst_start(warm_days: i64) -> i64 {
    T0 + warm_days * DAY + 14 * HOUR_MS + 17 * MINUTE_MS + 3_500
}

/// Hours of ordinary traffic before the hour of the burst.
fn warm_hours(warm_days: i64) -> i64 {
    let start = burst_start(warm_days);
    (start - start.rem_euclid(HOUR_MS) - T0) / HOUR_MS
}

/// Run `warm_days` (and the morning after) of `p` through `sim`, then from a mid-afternoon
/// instant add a burst of `rate` unregistered messages a second for `secs` seconds,
/// `sender(i)` giving the i-th. With `warm_days` 0 the tenant starts with the burst's hour.
fn burst(
    sim: &mut Sim,
    p: &Profile,
    warm_days: i64,
    rate: i64,
    secs: i64,
    sender: impl Fn(i64) -> Address,
) -> BurstOutcome {
    if warm_days > 0 {
        sim.run_profile(p, T0, warm_hours(warm_days), Vec::new());
        assert!(
            sim.transitions.is_empty(),
            "warm-up: {:#?}",
            sim.transitions
        );
    }
    burst_after(sim, p, warm_days, rate, secs, sender)
}

/// The burst of [`burst`] on a tenant whose history `sim` already holds.
fn burst_after(
    sim: &mut Sim,
    p: &Profile,
    warm_days: i64,
    rate: i64,
    secs: i64,
    sender: impl Fn(i64) -> Address,
) -> BurstOutcome {
    let start = burst_start(warm_days);
    let hour = start - start.rem_euclid(HOUR_MS);
    let burst: Vec<(i64, Ev)> = (0..rate * secs)
        .map(|i| (start + i * 1000 / rate, Ev::Unregistered(sender(i))))
        .collect();
    sim.run_profile(p, hour, 2, burst);
    let t = sim.blocked_at().expect("the burst was blocked").clone();
    let leaked = sim
        .accepted_unregistered
        .iter()
        .filter(|&&a| a >= start && a <= t.at_ms)
        .count();
    BurstOutcome {
        leaked,
        seconds: (t.at_ms - start) as f64 / 1000.0,
        rules: t
            .signals
            .iter()
            .map(|s| format!("{}:{:?}", s.rule.as_str(), s.level))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn report(name: &str, o: &BurstOutcome, budget: u64) {
    println!(
        "(b) {name}: {} unregistered messages accepted from the burst's start to the block, \
         {:.2} simulated seconds; budget {budget}; rules {}",
        o.leaked, o.seconds, o.rules
    );
    assert!((o.leaked as u64) < budget, "{name}: leaked {}", o.leaked);
}

#[test]
fn burst_from_hundreds_of_domains_is_blocked_within_budget() {
    let budget = DetectorConfig::default().burst_budget;
    let p = Profile::hybrid();
    let mut sim = Sim::new(DetectorConfig::default(), 11);
    let o = burst(&mut sim, &p, 3, 50, 60, |i| {
        addr(&format!("info{i}@promo{i}.example"))
    });
    report("hybrid tenant, 50 msg/s each from a new domain", &o, budget);
    assert!(o.rules.contains("unregistered_domains"));

    // The evidence names the domains, the connector, the source IP and samples.
    let ev = sim.evidence.last().unwrap();
    assert_eq!(ev.to, TenantState::BlockedUnregistered);
    assert_eq!(ev.cause, Cause::Detector);
    assert!(ev.observations.top_unregistered_domains.len() >= 15);
    assert_eq!(ev.observations.top_source_ips[0].key, "198.51.100.25");
    assert_eq!(
        ev.observations.connectors[0].connector,
        ConnectorId(CONNECTOR)
    );
    assert_eq!(ev.observations.samples.len(), 16);
    assert_eq!(ev.observations.series_5min.len(), 12);
    let json = serde_json::to_string(ev).unwrap();
    let back: Evidence = serde_json::from_str(&json).unwrap();
    // Floats may come back one ULP off (serde_json without `float_roundtrip`).
    assert_eq!(
        (back.from, back.to, &back.cause),
        (ev.from, ev.to, &ev.cause)
    );
    assert_eq!(back.signals.len(), ev.signals.len());
    assert_eq!(back.signals[0].rule, ev.signals[0].rule);
    let (b, o) = (&back.observations, &ev.observations);
    assert_eq!(b.top_unregistered_domains, o.top_unregistered_domains);
    assert_eq!(b.top_source_ips, o.top_source_ips);
    assert_eq!(b.samples, o.samples);
    assert_eq!(b.series_hourly, o.series_hourly);
    assert_eq!(b.windows.hour, o.windows.hour);
    println!("(b) evidence JSON of the block: {} bytes", json.len());

    // After the block, unregistered senders are refused; registered mail still flows.
    assert!(sim.refused > 0);
    assert_eq!(sim.status.state, TenantState::BlockedUnregistered);
}

#[test]
fn burst_from_one_domain_is_blocked_within_budget() {
    let budget = DetectorConfig::default().burst_budget;
    let p = Profile::hybrid();
    let mut sim = Sim::new(DetectorConfig::default(), 12);
    let o = burst(&mut sim, &p, 3, 50, 60, |i| {
        addr(&format!("sales{}@bulk-offers.example", i % 500))
    });
    report("hybrid tenant, 50 msg/s from one domain", &o, budget);
}

#[test]
fn burst_on_first_day_is_blocked_within_budget() {
    let budget = DetectorConfig::default().burst_budget;
    let p = Profile::hybrid();
    let mut sim = Sim::new(DetectorConfig::default(), 13);
    let o = burst(&mut sim, &p, 0, 50, 60, |i| {
        addr(&format!("x{i}@new{i}.example"))
    });
    report(
        "first-day tenant, 50 msg/s each from a new domain",
        &o,
        budget,
    );
    let mut sim = Sim::new(DetectorConfig::default(), 14);
    let o = burst(&mut sim, &p, 0, 50, 60, |i| {
        addr(&format!("x{i}@one.example"))
    });
    report("first-day tenant, 50 msg/s from one domain", &o, budget);
}

#[test]
fn burst_at_a_big_forwarder_is_blocked_within_budget() {
    // 2,000 forwarded messages an hour from 40 domains is this tenant's normal.
    let budget = DetectorConfig::default().burst_budget;
    let mut p = Profile::hybrid();
    p.unregistered_per_hour = 2000.0;
    p.unregistered_domains = (0..40).map(|i| format!("fwd{i}.example")).collect();
    // A tenant that new would trip the domain rule on its first hour (its floor would have
    // to be raised); this one has a history: three days counted before the scenario.
    let warmed = |seed| {
        let mut sim = Sim::new(DetectorConfig::default(), seed);
        sim.evaluating = false;
        sim.run_profile(&p, T0, warm_hours(3), Vec::new());
        sim.evaluating = true;
        sim.accepted_unregistered.clear();
        sim
    };
    let mut sim = warmed(15);
    let b = sim.counters.snapshot(burst_start(3), TENANT).baseline;
    println!(
        "(b) big forwarder baseline after 3 days: {:.0} unregistered/h from {:.1} domains/h",
        b.unregistered_per_hour, b.unregistered_domains_per_hour
    );
    let o = burst_after(&mut sim, &p, 3, 50, 60, |i| {
        addr(&format!("x{i}@one.example"))
    });
    report(
        "big forwarder (2,000/h from 40 domains), 50 msg/s from one domain",
        &o,
        budget,
    );
    let mut sim = warmed(16);
    let o = burst_after(&mut sim, &p, 3, 50, 60, |i| {
        addr(&format!("x{i}@n{i}.example"))
    });
    report("big forwarder, 50 msg/s each from a new domain", &o, budget);
}

#[test]
fn slow_spread_over_many_domains_is_blocked() {
    // One message a second, each from a new domain: far under any volume rule.
    let p = Profile::hybrid();
    let mut sim = Sim::new(DetectorConfig::default(), 17);
    let o = burst(&mut sim, &p, 3, 1, 3600, |i| {
        addr(&format!("x@slow{i}.example"))
    });
    println!(
        "(b) hybrid tenant, 1 msg/s each from a new domain: {} accepted, {:.0} s, rules {}, \
         baseline {:.1} domains/h",
        o.leaked,
        o.seconds,
        o.rules,
        sim.evidence
            .last()
            .unwrap()
            .observations
            .baseline
            .unregistered_domains_per_hour
    );
    assert!(o.leaked < 40);
}

// (c) ----------------------------------------------------------------------------------

/// A registered-only tenant: 300 messages an hour, each with a remote reply, `spam` of
/// them refused as spam.
fn spam_hours(sim: &mut Sim, start: i64, hours: i64, spam: impl Fn(i64) -> f64) {
    let mut events = Vec::new();
    for h in 0..hours {
        let share = spam(h);
        for i in 0..300 {
            let t = start + h * HOUR_MS + i * 12_000;
            events.push((
                t,
                Ev::Registered {
                    sender: (i % 50) as u32,
                    mismatch: false,
                },
            ));
            let class = if sim.rng.unit() < share {
                classify_remote_reply(550, "5.7.1", "Message rejected as spam")
            } else {
                classify_remote_reply(250, "2.0.0", "OK")
            };
            events.push((t + 20_000, Ev::Reply(class)));
        }
    }
    sim.run(events);
}

#[test]
fn rising_spam_rejections_block() {
    let mut sim = Sim::new(DetectorConfig::default(), 21);
    // 0.5 %, 2 %, 4 % → quiet; 8 % → warned; 20 % → blocked.
    let shares = [0.005, 0.02, 0.04, 0.08, 0.08, 0.20, 0.20];
    spam_hours(&mut sim, T0, shares.len() as i64, |h| shares[h as usize]);
    let states: Vec<_> = sim
        .transitions
        .iter()
        .map(|t| (t.to, (t.at_ms - T0) / 60_000))
        .collect();
    println!("(c) spam rejections rising: transitions (state, minute) {states:?}");
    assert_eq!(sim.transitions[0].to, TenantState::Warned);
    assert_eq!(sim.transitions[0].signals[0].rule, Rule::SpamRejections);
    let b = sim.blocked_at().expect("blocked");
    assert!(b
        .signals
        .iter()
        .any(|s| s.rule == Rule::SpamRejections && s.level == Level::Block));
    assert!(b.at_ms >= T0 + 5 * HOUR_MS, "not before the 20 % hours");
}

#[test]
fn few_spam_rejections_below_minimum_do_not_act() {
    let mut sim = Sim::new(DetectorConfig::default(), 22);
    // Nine rejections out of 60 replies in an hour is 15 %, but below the minimum count.
    let mut events = Vec::new();
    for i in 0..60 {
        let t = T0 + i * MINUTE_MS;
        events.push((
            t,
            Ev::Registered {
                sender: 1,
                mismatch: false,
            },
        ));
        let class = if i % 6 == 0 && i < 54 {
            RemoteClass::SpamBlock
        } else {
            RemoteClass::Delivered
        };
        events.push((t + 1000, Ev::Reply(class)));
    }
    sim.run(events);
    let s = sim.counters.snapshot(T0 + 59 * MINUTE_MS + 2_000, TENANT);
    assert_eq!(s.windows.hour.remote_spam, 9);
    assert!(sim.transitions.is_empty(), "{:#?}", sim.transitions);
}

// (e) ----------------------------------------------------------------------------------

fn small_hybrid() -> Profile {
    Profile {
        registered_per_weekday: 2400.0,
        registered_per_weekend_day: 2400.0,
        unregistered_per_hour: 10.0,
        unregistered_domains: vec!["a-fwd.example".into(), "b-fwd.example".into()],
        null_per_hour: 0.0,
        mismatch_rate: 0.0,
        replies: (0.0, 0.0, 0.0),
    }
}

#[test]
fn warned_returns_to_active_after_dwell() {
    let cfg = DetectorConfig::default();
    let dwell = cfg.dwell_secs as i64 * 1000;
    let mut sim = Sim::new(cfg, 31);
    let p = small_hybrid();
    sim.run_profile(&p, T0, 48, Vec::new());
    assert!(sim.transitions.is_empty());
    // One hour: 30 forwarded messages from 12 domains (warn above 6, block above 24).
    let spike = T0 + 2 * DAY + 10 * HOUR_MS;
    let extra: Vec<(i64, Ev)> = (0..30)
        .map(|i| {
            (
                spike + i * 60_000,
                Ev::Unregistered(addr(&format!("n@club{}.example", i % 12))),
            )
        })
        .collect();
    sim.run_profile(&p, spike, 6, extra);
    let states: Vec<_> = sim
        .transitions
        .iter()
        .map(|t| (t.to, (t.at_ms - spike) / 60_000))
        .collect();
    println!("(e) warn and recover: transitions (state, minutes after the spike) {states:?}");
    assert_eq!(sim.transitions.len(), 2, "{:#?}", sim.transitions);
    let (w, a) = (&sim.transitions[0], &sim.transitions[1]);
    assert_eq!((w.from, w.to), (TenantState::Active, TenantState::Warned));
    assert_eq!(w.signals.len(), 1);
    assert_eq!(w.signals[0].rule, Rule::UnregisteredDomains);
    assert_eq!(w.signals[0].level, Level::Warn);
    assert_eq!((a.from, a.to), (TenantState::Warned, TenantState::Active));
    assert!(a.at_ms - w.at_ms >= dwell, "dwell respected");
    // Clear once the dwell is over and the hour has calmed: the forwarded spike (known
    // recipients, familiar domains) earns an allowance, so that can be before the spike
    // has left the running hour.
    assert!(a.at_ms >= spike + 29 * 60_000 + dwell - 30 * 60_000);
    assert!(a.at_ms <= spike + 3 * HOUR_MS);
}

#[test]
fn probation_halves_thresholds_and_ends_when_clean() {
    let cfg = DetectorConfig::default();
    let d = Detector::new(cfg.clone());
    // The same hour, judged active and on probation: 70 unregistered out of 170.
    let mut snap = crate::counters::Snapshot::default();
    snap.windows.hour.messages = 170;
    snap.windows.hour.unregistered_messages = 70;
    snap.windows.hour.unregistered_domains = 2;
    snap.windows.minute.unregistered_messages = 2;
    snap.baseline.messages_per_hour = 110.0;
    snap.baseline.unregistered_per_hour = 10.0;
    snap.baseline.unregistered_domains_per_hour = 2.0;
    let active: Vec<_> = d.assess(&snap, TenantState::Active);
    let probation: Vec<_> = d.assess(&snap, TenantState::Probation);
    for (a, p) in active.iter().zip(&probation) {
        assert_eq!(p.warn_threshold, a.warn_threshold * 0.5, "{:?}", a.rule);
    }
    assert!(active.iter().all(|s| s.level < Level::Warn), "{active:#?}");
    assert!(probation.iter().filter(|s| s.level >= Level::Warn).count() >= 2);
    let status = TenantStatus {
        state: TenantState::Probation,
        since_ms: T0,
        probation_until_ms: Some(T0 + 7 * DAY),
    };
    assert_eq!(
        d.evaluate(T0 + HOUR_MS, TenantId(1), &TenantStatus::active(T0), &snap),
        None
    );
    let t = d
        .evaluate(T0 + HOUR_MS, TenantId(1), &status, &snap)
        .unwrap();
    assert_eq!(t.to, TenantState::BlockedUnregistered);

    // The whole path: burst → blocked → tenant asks → operator unblocks → 7 days of
    // probation with ordinary traffic → active.
    let mut sim = Sim::new(cfg, 41);
    let p = small_hybrid();
    sim.run_profile(&p, T0, 24, Vec::new());
    let b0 = T0 + DAY + 30 * MINUTE_MS;
    let burst: Vec<(i64, Ev)> = (0..500)
        .map(|i| {
            (
                b0 + i * 20,
                Ev::Unregistered(addr(&format!("s{i}@spam{i}.example"))),
            )
        })
        .collect();
    sim.run_profile(&p, T0 + DAY, 3, burst);
    assert_eq!(sim.status.state, TenantState::BlockedUnregistered);
    let now = T0 + DAY + 3 * HOUR_MS;
    let t = sim
        .detector
        .request_unblock(now, TENANT, &sim.status, "admin@hybrid.example")
        .unwrap();
    assert_eq!(
        t.cause,
        Cause::Tenant {
            actor: "admin@hybrid.example".into()
        }
    );
    sim.take(now, t);
    assert_eq!(sim.status.state, TenantState::UnderReview);
    sim.run_profile(&p, now, 2, Vec::new());
    let now = now + 2 * HOUR_MS;
    assert_eq!(
        sim.status.state,
        TenantState::UnderReview,
        "no automatic exit"
    );
    let t = sim
        .detector
        .operator_unblock(now, TENANT, &sim.status, "noc")
        .unwrap();
    let until = t.probation_until_ms.unwrap();
    assert_eq!(until, now + 7 * DAY);
    sim.take(now, t);
    sim.run_profile(&p, now, 8 * 24, Vec::new());
    let last = sim.transitions.last().unwrap();
    println!(
        "(e) probation: unblocked at day {:.2}, back to active at day {:.2} ({} transitions)",
        (now - T0) as f64 / DAY as f64,
        (last.at_ms - T0) as f64 / DAY as f64,
        sim.transitions.len()
    );
    assert_eq!(
        (last.from, last.to),
        (TenantState::Probation, TenantState::Active)
    );
    assert!(last.at_ms >= until && last.at_ms <= until + 10 * MINUTE_MS);
    assert_eq!(sim.transitions.len(), 5, "{:#?}", sim.transitions);
}

#[test]
fn timing_record_and_evaluate_with_100k_tenants() {
    use std::time::Instant;
    let counters = InProcessCounters::new(DetectorConfig::default().counters_config());
    let detector = Detector::new(DetectorConfig::default());
    let rcpts = [addr("someone@dest.example")];
    let senders: Vec<Address> = (0..16).map(|i| addr(&format!("u{i}@t.example"))).collect();
    let fwd: Vec<Address> = (0..16)
        .map(|i| addr(&format!("p{i}@fwd{i}.example")))
        .collect();
    let mut rng = Rng(99);
    let event = |tenant: i64, i: usize, unregistered: bool| MessageEvent {
        tenant: TenantId(tenant),
        connector: ConnectorId(tenant * 10),
        class: if unregistered {
            SenderClass::Unregistered
        } else {
            SenderClass::Registered
        },
        sender: Some(if unregistered {
            &fwd[i % 16]
        } else {
            &senders[i % 16]
        }),
        mismatch: false,
        header_from_domain: None,
        recipients: &rcpts,
        external_recipients: 1,
        client_ip: Some("192.0.2.1".parse().unwrap()),
        queue_id: Some("Q"),
        message_id: Some("<m@h>"),
    };
    let load = Instant::now();
    for t in 0..100_000i64 {
        counters.record(T0 + t, &event(t, t as usize, t % 10 == 0));
    }
    let load = load.elapsed();
    assert_eq!(counters.tenant_count(), 100_000);
    let status = TenantStatus::active(T0);
    let mut samples = Vec::with_capacity(200_000);
    let start = T0 + 100_000;
    for i in 0..200_000i64 {
        let tenant = rng.below(100_000) as i64;
        let ev = event(tenant, i as usize, i % 4 == 0);
        let now = start + i * 5;
        let t = Instant::now();
        let snap = counters.record(now, &ev);
        let tr = detector.evaluate(now, TenantId(tenant), &status, &snap);
        samples.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(tr);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<u64>() / samples.len() as u64;
    println!(
        "timing ({} build): 100,000 tenants loaded in {:?}; record+evaluate over 200,000 \
         calls: mean {} ns, p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        load,
        mean,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        samples[samples.len() - 1]
    );
}
