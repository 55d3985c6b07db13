//! A tenant's traffic simulated hour by hour on a clock the tests drive: the relay, the counters
//! and the detector of one tenant, for the detector's scenario tests.

use relayward_core::{Address, ConnectorId, SenderClass, TenantId, TenantState};

use super::*;
use crate::counters::{
    Counters, InProcessCounters, MessageEvent, RemoteClass, RemoteReplyEvent, HOUR_MS, MINUTE_MS,
};
use crate::evidence::Evidence;

/// 2026-01-01T00:00:00Z, a Thursday.
pub(super) const T0: i64 = 1_767_225_600_000;
pub(super) const DAY: i64 = 24 * HOUR_MS;
pub(super) const TENANT: TenantId = TenantId(42);
pub(super) const CONNECTOR: i64 = 7;

/// xorshift64*: deterministic scenarios without a dependency.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda > 30.0 {
            // Knuth's product underflows for large λ: the normal approximation is plenty.
            let z = (-2.0 * self.unit().max(1e-12).ln()).sqrt()
                * (std::f64::consts::TAU * self.unit()).cos();
            return (lambda + lambda.sqrt() * z).round().max(0.0) as u64;
        }
        let l = (-lambda).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.unit();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

pub(super) fn addr(s: &str) -> Address {
    Address::parse(s, false).unwrap()
}

#[derive(Debug, Clone)]
pub(super) enum Ev {
    Registered {
        sender: u32,
        mismatch: bool,
    },
    Unregistered(Address),
    Null,
    Reply(RemoteClass),
    /// Periodic re-evaluation without traffic (recovery needs it).
    Tick,
}

/// A tenant's usual traffic.
#[derive(Debug, Clone)]
pub(super) struct Profile {
    pub(super) registered_per_weekday: f64,
    pub(super) registered_per_weekend_day: f64,
    pub(super) unregistered_per_hour: f64,
    pub(super) unregistered_domains: Vec<String>,
    pub(super) null_per_hour: f64,
    pub(super) mismatch_rate: f64,
    /// Remote replies: (spam, bad mailbox, other) shares; the rest delivered.
    pub(super) replies: (f64, f64, f64),
}

impl Profile {
    /// 2,000 registered messages a weekday (600 on weekends) with a daily cycle, ~20
    /// forwarded unregistered messages an hour from 3 domains, 2 NDRs an hour.
    pub(super) fn hybrid() -> Profile {
        Profile {
            registered_per_weekday: 2000.0,
            registered_per_weekend_day: 600.0,
            unregistered_per_hour: 20.0,
            unregistered_domains: vec![
                "gmail.example".into(),
                "outlook.example".into(),
                "club.example".into(),
            ],
            null_per_hour: 2.0,
            mismatch_rate: 0.01,
            replies: (0.002, 0.015, 0.006),
        }
    }
}

/// Share of a day's mail in each UTC hour: night trough, afternoon peak.
pub(super) fn daily_cycle() -> [f64; 24] {
    let mut w = [0.0; 24];
    for (h, x) in w.iter_mut().enumerate() {
        *x = (1.0 + 0.9 * (std::f64::consts::TAU * (h as f64 - 9.0) / 24.0).sin()).max(0.05);
    }
    let sum: f64 = w.iter().sum();
    w.map(|x| x / sum)
}

pub(super) fn reply_class(rng: &mut Rng, (spam, bad, other): (f64, f64, f64)) -> RemoteClass {
    let u = rng.unit();
    if u < spam {
        RemoteClass::SpamBlock
    } else if u < spam + bad {
        RemoteClass::BadMailbox
    } else if u < spam + bad + other {
        RemoteClass::Other
    } else {
        RemoteClass::Delivered
    }
}

/// One hour of `p`'s traffic starting at `start` (a multiple of an hour), unsorted.
pub(super) fn hour_of(rng: &mut Rng, p: &Profile, start: i64) -> Vec<(i64, Ev)> {
    let cycle = daily_cycle();
    let hour = ((start - T0) / HOUR_MS) as usize;
    // T0 is a Thursday: days 2 and 3 of each week are the weekend.
    let weekend = matches!((hour / 24) % 7, 2 | 3);
    let per_day = if weekend {
        p.registered_per_weekend_day
    } else {
        p.registered_per_weekday
    };
    let mut out = Vec::new();
    let at = |rng: &mut Rng| start + rng.below(HOUR_MS as u64) as i64;
    for _ in 0..rng.poisson(per_day * cycle[hour % 24]) {
        let t = at(rng);
        let mismatch = rng.unit() < p.mismatch_rate;
        out.push((
            t,
            Ev::Registered {
                sender: rng.below(300) as u32,
                mismatch,
            },
        ));
        out.push((t + 30_000, Ev::Reply(reply_class(rng, p.replies))));
    }
    let mut unregistered = rng.poisson(p.unregistered_per_hour);
    // Now and then a mailing list forwards a clump at once.
    let clump = rng.unit() < 0.05;
    if clump {
        let t = at(rng);
        for i in 0..15 {
            let d = &p.unregistered_domains[0];
            out.push((
                t + i * 2_000,
                Ev::Unregistered(addr(&format!("list-{i}@{d}"))),
            ));
        }
        unregistered = unregistered.saturating_sub(5);
    }
    for _ in 0..unregistered {
        let t = at(rng);
        let d = &p.unregistered_domains[rng.below(p.unregistered_domains.len() as u64) as usize];
        let local = rng.below(40);
        out.push((t, Ev::Unregistered(addr(&format!("person{local}@{d}")))));
        out.push((t + 30_000, Ev::Reply(reply_class(rng, p.replies))));
    }
    for _ in 0..rng.poisson(p.null_per_hour) {
        out.push((at(rng), Ev::Null));
    }
    for i in 0..12 {
        out.push((start + i * 5 * MINUTE_MS, Ev::Tick));
    }
    out
}

/// The relay, the counters and the detector of one tenant, on a simulated clock.
pub(super) struct Sim {
    pub(super) counters: InProcessCounters,
    pub(super) detector: Detector,
    pub(super) status: TenantStatus,
    pub(super) transitions: Vec<Transition>,
    pub(super) evidence: Vec<Evidence>,
    /// Times of accepted unregistered and null-sender messages.
    pub(super) accepted_unregistered: Vec<i64>,
    /// Off: only count (a tenant whose history predates the scenario).
    pub(super) evaluating: bool,
    pub(super) refused: u64,
    pub(super) rcpts: Vec<Address>,
    pub(super) rng: Rng,
}

impl Sim {
    pub(super) fn new(cfg: DetectorConfig, seed: u64) -> Sim {
        cfg.validate().unwrap();
        Sim {
            counters: InProcessCounters::new(cfg.counters_config()),
            detector: Detector::new(cfg),
            status: TenantStatus::active(T0),
            transitions: Vec::new(),
            evidence: Vec::new(),
            accepted_unregistered: Vec::new(),
            evaluating: true,
            refused: 0,
            rcpts: (0..60)
                .map(|i| addr(&format!("r{i}@dest{}.example", i % 20)))
                .collect(),
            rng: Rng(seed),
        }
    }

    pub(super) fn apply(&mut self, now: i64, snap: &crate::counters::Snapshot) {
        if !self.evaluating {
            return;
        }
        if let Some(t) = self.detector.evaluate(now, TENANT, &self.status, snap) {
            self.take(now, t);
        }
    }

    pub(super) fn take(&mut self, now: i64, t: Transition) {
        let ev = Evidence::new(&t, self.counters.observations(now, TENANT));
        self.status = self.status.apply(&t);
        self.transitions.push(t);
        self.evidence.push(ev);
    }

    pub(super) fn send(
        &mut self,
        now: i64,
        class: SenderClass,
        sender: Option<&Address>,
        mismatch: bool,
    ) {
        let state = self.status.state;
        if state.blocks_all() || (class != SenderClass::Registered && state.blocks_unregistered()) {
            self.refused += 1;
            return;
        }
        let n = 1 + self.rng.below(3) as usize;
        let first = self.rng.below(self.rcpts.len() as u64 - 3) as usize;
        let rcpts = &self.rcpts[first..first + n];
        let snap = self.counters.record(
            now,
            &MessageEvent {
                tenant: TENANT,
                connector: ConnectorId(CONNECTOR),
                class,
                sender,
                mismatch,
                header_from_domain: None,
                recipients: rcpts,
                external_recipients: n as u32,
                client_ip: Some("198.51.100.25".parse().unwrap()),
                queue_id: Some("4XyZ0Q"),
                message_id: Some("<abc@host>"),
            },
        );
        if class != SenderClass::Registered {
            self.accepted_unregistered.push(now);
        }
        self.apply(now, &snap);
    }

    pub(super) fn run(&mut self, mut events: Vec<(i64, Ev)>) {
        events.sort_by_key(|(t, _)| *t);
        for (t, ev) in events {
            match ev {
                Ev::Registered { sender, mismatch } => {
                    let s = addr(&format!("user{sender}@hybrid.example"));
                    self.send(t, SenderClass::Registered, Some(&s), mismatch);
                }
                Ev::Unregistered(s) => self.send(t, SenderClass::Unregistered, Some(&s), false),
                Ev::Null => self.send(t, SenderClass::Null, None, false),
                Ev::Reply(class) => {
                    let snap = self.counters.record_remote_reply(
                        t,
                        &RemoteReplyEvent {
                            tenant: TENANT,
                            connector: Some(ConnectorId(CONNECTOR)),
                            sender: None,
                            class,
                            queue_id: Some("4XyZ0Q"),
                            reply: Some("550 5.7.1 Message rejected as spam"),
                        },
                    );
                    self.apply(t, &snap);
                }
                Ev::Tick => {
                    let snap = self.counters.snapshot(t, TENANT);
                    self.apply(t, &snap);
                }
            }
        }
    }

    /// `hours` hours of `p`'s traffic from `start`, plus `extra` events.
    pub(super) fn run_profile(
        &mut self,
        p: &Profile,
        start: i64,
        hours: i64,
        extra: Vec<(i64, Ev)>,
    ) {
        let mut events = extra;
        for h in 0..hours {
            let mut hour = hour_of(&mut self.rng, p, start + h * HOUR_MS);
            events.append(&mut hour);
        }
        self.run(events);
    }

    pub(super) fn blocked_at(&self) -> Option<&Transition> {
        self.transitions
            .iter()
            .find(|t| t.to == TenantState::BlockedUnregistered)
    }
}
