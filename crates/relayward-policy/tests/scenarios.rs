//! The detector's scenario suite: shapes of traffic operators see, compromise and legitimate,
//! run on a simulated clock with fixed seeds through the real counters and detector.
//!
//! Each scenario is a tenant with a history (its usual traffic) and, for a compromise, an
//! attack. The runner plays the relay's part: a message of a blocked tenant that its state
//! refuses is refused (and counted so), an accepted unregistered message gets its DKIM result a
//! moment later, a delivered message its remote reply. It prints one table (copied into
//! `bench/RESULTS.md`) and asserts the bounds: every compromise blocked with at most
//! `burst_budget` attack messages accepted, every legitimate shape never blocked.
//!
//! `cargo nextest run -p relayward-policy --test scenarios --no-capture` prints the table.

use std::collections::HashMap;

use relayward_core::{Address, ConnectorId, SenderClass, TenantId, TenantState};
use relayward_policy::counters::{
    Counters, DkimEvent, InProcessCounters, MessageEvent, RemoteClass, RemoteReplyEvent, DAY_MS,
    HOUR_MS, MINUTE_MS, SECOND_MS,
};
use relayward_policy::detector::{Detector, DetectorConfig, TenantStatus, Transition};

/// Thursday 2026-01-01 00:00 UTC.
const T0: i64 = 1_767_225_600_000;
const TENANT: TenantId = TenantId(42);
/// The tenant's connector of long standing.
const MAIN: ConnectorId = ConnectorId(7);
const REGISTERED: &str = "tenant.example";

// ---------------------------------------------------------------------------------------------
// Random numbers (xorshift*, fixed seeds)

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
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
    /// Zipf-like pick from `n` items: a few are common, most are rare.
    fn zipf(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((n as f64).powf(u) - 1.0).floor() as u64 % n.max(1)
    }
}

fn addr(s: &str) -> Address {
    Address::parse(s, false).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Debug, Clone)]
struct Msg {
    connector: ConnectorId,
    class: SenderClass,
    sender: Option<Address>,
    /// Header From domain when it differs from P1's (a mismatch when P1 is registered).
    header_from: Option<String>,
    recipients: Vec<Address>,
    /// Part of the attack (what "leaked" counts).
    attack: bool,
    /// A DKIM signature verifying for the header From domain.
    dkim_pass: bool,
    /// The remote reply its delivery gets.
    reply: RemoteClass,
}

#[derive(Debug, Clone)]
enum Ev {
    Msg(Box<Msg>),
    Dkim {
        connector: ConnectorId,
        pass: bool,
        domain: Option<String>,
    },
    Reply(ConnectorId, RemoteClass),
    Tick,
    /// A connector is created or changed (its age starts again).
    ConnectorChanged(ConnectorId),
}

// ---------------------------------------------------------------------------------------------
// The relay's part

#[derive(Default, Debug, Clone)]
struct Outcome {
    attack_sent: u64,
    attack_accepted: u64,
    /// Attack messages accepted before the block (or all, when never blocked).
    leaked: u64,
    legit_sent: u64,
    legit_refused: u64,
    legit_unregistered: u64,
    warnings: u64,
    blocks: u64,
    first_attack_ms: Option<i64>,
    blocked_ms: Option<i64>,
    block_summary: String,
}

struct Sim {
    counters: InProcessCounters,
    detector: Detector,
    status: TenantStatus,
    transitions: Vec<Transition>,
    changed: HashMap<ConnectorId, i64>,
    out: Outcome,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(DetectorConfig::default())
    }

    fn with(cfg: DetectorConfig) -> Sim {
        cfg.validate().unwrap();
        let mut changed = HashMap::new();
        changed.insert(MAIN, T0 - 90 * DAY_MS);
        Sim {
            counters: InProcessCounters::new(cfg.counters_config()),
            detector: Detector::new(cfg),
            status: TenantStatus::active(T0),
            transitions: Vec::new(),
            changed,
            out: Outcome::default(),
        }
    }

    fn evaluate(&mut self, now: i64, mut snap: relayward_policy::counters::Snapshot) {
        snap.connector_changed_ms = snap
            .connector
            .and_then(|c| self.changed.get(&c.connector).copied());
        if let Some(t) = self.detector.evaluate(now, TENANT, &self.status, &snap) {
            match t.to {
                TenantState::Warned => self.out.warnings += 1,
                TenantState::BlockedUnregistered | TenantState::BlockedAll => {
                    self.out.blocks += 1;
                    if self.out.blocked_ms.is_none() {
                        self.out.blocked_ms = Some(now);
                        self.out.block_summary = t.summary.clone();
                    }
                }
                _ => {}
            }
            self.status = self.status.apply(&t);
            self.transitions.push(t);
        }
    }

    /// Plays `events` in time order; returns follow-ups (DKIM results, replies) merged in.
    fn run(&mut self, mut events: Vec<(i64, Ev)>) {
        events.sort_by_key(|(t, _)| *t);
        let mut later: std::collections::BinaryHeap<std::cmp::Reverse<(i64, u64)>> =
            Default::default();
        let mut pending: HashMap<u64, Ev> = HashMap::new();
        let mut seq = 0u64;
        let mut it = events.into_iter().peekable();
        loop {
            let next_main = it.peek().map(|(t, _)| *t);
            let next_later = later.peek().map(|r| r.0 .0);
            let (now, ev) = match (next_main, next_later) {
                (None, None) => break,
                (Some(a), Some(b)) if b < a => {
                    let std::cmp::Reverse((t, k)) = later.pop().unwrap();
                    (t, pending.remove(&k).unwrap())
                }
                (None, Some(_)) => {
                    let std::cmp::Reverse((t, k)) = later.pop().unwrap();
                    (t, pending.remove(&k).unwrap())
                }
                _ => it.next().unwrap(),
            };
            let mut follow = |at: i64, ev: Ev| {
                seq += 1;
                pending.insert(seq, ev);
                later.push(std::cmp::Reverse((at, seq)));
            };
            match ev {
                Ev::Msg(m) => {
                    let effective = relayward_policy::counters::effective_class(
                        m.class,
                        m.header_from.is_some() && m.class == SenderClass::Registered,
                    );
                    if m.attack {
                        self.out.attack_sent += 1;
                        self.out.first_attack_ms.get_or_insert(now);
                    } else {
                        self.out.legit_sent += 1;
                        if effective != SenderClass::Registered {
                            self.out.legit_unregistered += 1;
                        }
                    }
                    let state = self.status.state;
                    if state.blocks_all()
                        || (effective != SenderClass::Registered && state.blocks_unregistered())
                    {
                        if !m.attack {
                            self.out.legit_refused += 1;
                        }
                        self.counters.record_refused(now, TENANT, Some(m.connector));
                        continue;
                    }
                    if m.attack {
                        self.out.attack_accepted += 1;
                        if self.out.blocked_ms.is_none() {
                            self.out.leaked += 1;
                        }
                    }
                    let mismatch = m.header_from.is_some() && m.class == SenderClass::Registered;
                    let hf = m
                        .header_from
                        .clone()
                        .or_else(|| m.sender.as_ref().map(|a| a.domain.clone()));
                    let external = m.recipients.len() as u32;
                    let snap = self.counters.record(
                        now,
                        &MessageEvent {
                            tenant: TENANT,
                            connector: m.connector,
                            class: m.class,
                            sender: m.sender.as_ref(),
                            mismatch,
                            header_from_domain: hf.as_deref(),
                            recipients: &m.recipients,
                            external_recipients: external,
                            client_ip: Some("198.51.100.25".parse().unwrap()),
                            queue_id: Some("4XyZ0Q"),
                            message_id: None,
                        },
                    );
                    self.evaluate(now, snap);
                    if effective != SenderClass::Registered {
                        follow(
                            now + 2 * SECOND_MS,
                            Ev::Dkim {
                                connector: m.connector,
                                pass: m.dkim_pass,
                                domain: hf.clone(),
                            },
                        );
                    }
                    follow(now + 30 * SECOND_MS, Ev::Reply(m.connector, m.reply));
                }
                Ev::Dkim {
                    connector,
                    pass,
                    domain,
                } => {
                    let snap = self.counters.record_dkim(
                        now,
                        &DkimEvent {
                            tenant: TENANT,
                            connector: Some(connector),
                            pass,
                            domain: domain.as_deref(),
                        },
                    );
                    self.evaluate(now, snap);
                }
                Ev::Reply(connector, class) => {
                    let snap = self.counters.record_remote_reply(
                        now,
                        &RemoteReplyEvent {
                            tenant: TENANT,
                            connector: Some(connector),
                            sender: None,
                            class,
                            queue_id: None,
                            reply: Some("550 5.7.1 Message rejected as spam"),
                        },
                    );
                    self.evaluate(now, snap);
                }
                Ev::Tick => {
                    let snap = self.counters.snapshot(now, TENANT);
                    self.evaluate(now, snap);
                }
                Ev::ConnectorChanged(c) => {
                    self.changed.insert(c, now);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// Share of a day's mail in each UTC hour: night trough, afternoon peak.
fn daily_cycle() -> [f64; 24] {
    let mut w = [0.0; 24];
    for (h, x) in w.iter_mut().enumerate() {
        *x = (1.0 + 0.9 * (std::f64::consts::TAU * (h as f64 - 9.0) / 24.0).sin()).max(0.05);
    }
    let sum: f64 = w.iter().sum();
    w.map(|x| x / sum)
}

fn is_weekend(t: i64) -> bool {
    // T0 is a Thursday: days 2 and 3 of each week are the weekend.
    matches!(((t - T0).div_euclid(DAY_MS)) % 7, 2 | 3)
}

fn reply(rng: &mut Rng, spam: f64, bad: f64) -> RemoteClass {
    let u = rng.unit();
    if u < spam {
        RemoteClass::SpamBlock
    } else if u < spam + bad {
        RemoteClass::BadMailbox
    } else {
        RemoteClass::Delivered
    }
}

/// A tenant's usual traffic.
#[derive(Clone)]
struct Profile {
    connector: ConnectorId,
    registered_per_weekday: f64,
    registered_per_weekend_day: f64,
    /// Forwarded (unregistered) messages a day.
    forwarded_per_day: f64,
    /// Correspondent domains forwarded mail comes from (Zipf-distributed).
    forward_domains: u64,
    /// Distinct people whose mail is forwarded (the recipients).
    forward_recipients: u64,
    forward_dkim_pass: f64,
    null_per_day: f64,
    mismatch_rate: f64,
}

impl Profile {
    /// A hybrid tenant: 2,000 registered messages a weekday, a little forwarding.
    fn hybrid() -> Profile {
        Profile {
            connector: MAIN,
            registered_per_weekday: 2000.0,
            registered_per_weekend_day: 600.0,
            forwarded_per_day: 240.0,
            forward_domains: 8,
            forward_recipients: 25,
            forward_dkim_pass: 0.8,
            null_per_day: 30.0,
            mismatch_rate: 0.005,
        }
    }

    /// A university: its staff send from the registered domain; students' school mail is
    /// forwarded to their personal mailboxes, from hundreds of outside domains.
    fn university() -> Profile {
        Profile {
            connector: MAIN,
            registered_per_weekday: 6000.0,
            registered_per_weekend_day: 1500.0,
            forwarded_per_day: 4000.0,
            forward_domains: 400,
            forward_recipients: 600,
            forward_dkim_pass: 0.85,
            null_per_day: 80.0,
            mismatch_rate: 0.005,
        }
    }
}

/// `hours` hours of `p` from `start`, `scale` times the usual volume.
fn traffic(rng: &mut Rng, p: &Profile, start: i64, hours: i64, scale: f64) -> Vec<(i64, Ev)> {
    let cycle = daily_cycle();
    let mut out = Vec::new();
    for h in 0..hours {
        let hs = start + h * HOUR_MS;
        let hod = (hs.div_euclid(HOUR_MS) % 24) as usize;
        let per_day = if is_weekend(hs) {
            p.registered_per_weekend_day
        } else {
            p.registered_per_weekday
        };
        let at = |rng: &mut Rng| hs + rng.below(HOUR_MS as u64) as i64;
        for _ in 0..rng.poisson(per_day * cycle[hod] * scale) {
            let t = at(rng);
            let sender = addr(&format!("user{}@{REGISTERED}", rng.below(300)));
            let n = 1 + rng.below(3) as usize;
            let recipients = (0..n)
                .map(|_| {
                    addr(&format!(
                        "c{}@dest{}.example",
                        rng.below(5000),
                        rng.below(200)
                    ))
                })
                .collect();
            let header_from = rng
                .chance(p.mismatch_rate)
                .then(|| "partner-newsletter.example".to_string());
            let r = reply(rng, 0.002, 0.01);
            out.push((
                t,
                Ev::Msg(Box::new(Msg {
                    connector: p.connector,
                    class: SenderClass::Registered,
                    sender: Some(sender),
                    header_from,
                    recipients,
                    attack: false,
                    dkim_pass: true,
                    reply: r,
                })),
            ));
        }
        // Forwarding follows the day like the rest, and clumps now and then (a list post).
        let mut fwd = rng.poisson(p.forwarded_per_day * cycle[hod] * scale);
        if rng.chance(0.05) && fwd > 0 {
            let t = at(rng);
            let d = rng.zipf(p.forward_domains);
            for i in 0..15 {
                let r = rng_recipient(rng, p);
                out.push((t + i * 2_000, forwarded(rng, p, d, r, p.connector)));
            }
            fwd = fwd.saturating_sub(15);
        }
        for _ in 0..fwd {
            let t = at(rng);
            let d = rng.zipf(p.forward_domains);
            let r = rng_recipient(rng, p);
            out.push((t, forwarded(rng, p, d, r, p.connector)));
        }
        for _ in 0..rng.poisson(p.null_per_day * cycle[hod] * scale) {
            let t = at(rng);
            out.push((
                t,
                Ev::Msg(Box::new(Msg {
                    connector: p.connector,
                    class: SenderClass::Null,
                    sender: None,
                    header_from: None,
                    recipients: vec![addr(&format!("user{}@{REGISTERED}", rng.below(300)))],
                    attack: false,
                    dkim_pass: false,
                    reply: RemoteClass::Delivered,
                })),
            ));
        }
        for i in 0..12 {
            out.push((hs + i * 5 * MINUTE_MS + 1, Ev::Tick));
        }
    }
    out
}

fn rng_recipient(rng: &mut Rng, p: &Profile) -> u64 {
    rng.zipf(p.forward_recipients)
}

fn forwarded(rng: &mut Rng, p: &Profile, domain: u64, rcpt: u64, connector: ConnectorId) -> Ev {
    let sender = addr(&format!("person{}@corr{domain}.example", rng.below(30)));
    Ev::Msg(Box::new(Msg {
        connector,
        class: SenderClass::Unregistered,
        sender: Some(sender),
        header_from: None,
        recipients: vec![addr(&format!("student{rcpt}@personal.example"))],
        attack: false,
        dkim_pass: rng.chance(p.forward_dkim_pass),
        reply: reply(rng, 0.003, 0.01),
    }))
}

/// An attack: `rate` messages a second for `secs` seconds from `start`, `make(rng, i)` making
/// the i-th.
fn attack(
    rng: &mut Rng,
    start: i64,
    rate: f64,
    secs: i64,
    mut make: impl FnMut(&mut Rng, i64) -> Msg,
) -> Vec<(i64, Ev)> {
    let n = (rate * secs as f64) as i64;
    (0..n)
        .map(|i| {
            let mut m = make(rng, i);
            m.attack = true;
            (
                start + (i as f64 * 1000.0 / rate) as i64,
                Ev::Msg(Box::new(m)),
            )
        })
        .collect()
}

/// Spam: an unregistered sender to fresh recipients, no DKIM, often refused as spam.
fn spam(rng: &mut Rng, connector: ConnectorId, sender: &str) -> Msg {
    let n = 1 + rng.below(4) as usize;
    Msg {
        connector,
        class: SenderClass::Unregistered,
        sender: Some(addr(sender)),
        header_from: None,
        recipients: (0..n)
            .map(|_| {
                addr(&format!(
                    "v{}@isp{}.example",
                    rng.next() % 10_000_000,
                    rng.below(50)
                ))
            })
            .collect(),
        attack: true,
        dkim_pass: false,
        reply: reply(rng, 0.25, 0.15),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Row {
    name: &'static str,
    compromise: bool,
    out: Outcome,
}

/// Days of history before an attack, and the attack's start: a weekday afternoon.
const WARM_DAYS: i64 = 7;

fn attack_start(days: i64) -> i64 {
    T0 + days * DAY_MS + 14 * HOUR_MS + 17 * MINUTE_MS + 3_500
}

/// A hybrid tenant with `WARM_DAYS` of history, then `attack` (built from the attack start),
/// with the tenant's own traffic running on for a day after it.
fn compromise(seed: u64, make: impl FnOnce(&mut Rng, i64) -> Vec<(i64, Ev)>) -> Outcome {
    let mut rng = Rng(seed);
    let mut sim = Sim::new();
    let p = Profile::hybrid();
    let start = attack_start(WARM_DAYS);
    let hour = start - start.rem_euclid(HOUR_MS);
    sim.run(traffic(&mut rng, &p, T0, (hour - T0) / HOUR_MS, 1.0));
    assert_eq!(sim.out.blocks, 0, "warm-up blocked the tenant");
    // The table counts the attack's own warnings and blocks.
    sim.out.warnings = 0;
    let mut events = make(&mut rng, start);
    events.append(&mut traffic(&mut rng, &p, hour, 24, 1.0));
    sim.run(events);
    sim.out
}

fn scenarios() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = |name, compromise, out| {
        rows.push(Row {
            name,
            compromise,
            out,
        })
    };

    // -- compromise -------------------------------------------------------------------------
    row(
        "random-domain burst (20/s, a new domain each)",
        true,
        compromise(101, |rng, s| {
            attack(rng, s, 20.0, 600, |rng, i| {
                spam(rng, MAIN, &format!("info{i}@promo{i}.example"))
            })
        }),
    );
    row(
        "few rotating domains (10/s, 4 lookalikes)",
        true,
        compromise(102, |rng, s| {
            attack(rng, s, 10.0, 900, |rng, i| {
                spam(
                    rng,
                    MAIN,
                    &format!("billing{}@paypa1-{}.example", i % 97, i % 4),
                )
            })
        }),
    );
    row(
        "null-sender flood (backscatter, 15/s)",
        true,
        compromise(103, |rng, s| {
            attack(rng, s, 15.0, 600, |rng, _| Msg {
                sender: None,
                class: SenderClass::Null,
                ..spam(rng, MAIN, "x@y.example")
            })
        }),
    );
    row(
        "header-From spoofing (registered P1, brand P2, 5/s)",
        true,
        compromise(104, |rng, s| {
            let brands = [
                "bank-secure.example",
                "parcel-notice.example",
                "mail-admin.example",
            ];
            attack(rng, s, 5.0, 1800, |rng, i| Msg {
                class: SenderClass::Registered,
                sender: Some(addr(&format!("user{}@{REGISTERED}", i % 300))),
                header_from: Some(brands[(i % 3) as usize].to_string()),
                ..spam(rng, MAIN, "x@y.example")
            })
        }),
    );
    row(
        "slow drip over days (150/h, fresh domains)",
        true,
        compromise(105, |rng, s| {
            attack(rng, s, 150.0 / 3600.0, 3 * 86_400, |rng, i| {
                spam(rng, MAIN, &format!("news@drip{}.example", i))
            })
        }),
    );
    row(
        "slow drip, 3 domains (300/h)",
        true,
        compromise(106, |rng, s| {
            attack(rng, s, 300.0 / 3600.0, 2 * 86_400, |rng, i| {
                spam(
                    rng,
                    MAIN,
                    &format!("offers{}@deal{}.example", i % 50, i % 3),
                )
            })
        }),
    );
    row(
        "burst split over two connectors (2 × 8/s)",
        true,
        compromise(107, |rng, s| {
            let mut a = attack(rng, s, 8.0, 600, |rng, i| {
                spam(rng, MAIN, &format!("a{i}@split{}.example", i % 40))
            });
            let mut b = attack(rng, s + 300, 8.0, 600, |rng, i| {
                spam(
                    rng,
                    ConnectorId(8),
                    &format!("b{i}@other{}.example", i % 40),
                )
            });
            a.append(&mut b);
            a
        }),
    );
    row(
        "new connector created, then used (DKIM-signed own domains)",
        true,
        compromise(108, |rng, s| {
            let mut ev = vec![(s - 10 * MINUTE_MS, Ev::ConnectorChanged(ConnectorId(9)))];
            ev.extend(attack(rng, s, 6.0, 1800, |rng, i| Msg {
                dkim_pass: true,
                ..spam(
                    rng,
                    ConnectorId(9),
                    &format!("hello@fresh{}.example", i % 6),
                )
            }));
            ev
        }),
    );
    row(
        "spam-class rejections rising (within the floor)",
        true,
        compromise(109, |rng, s| {
            // 90 an hour from 4 domains: under the floor, so only remote verdicts tell.
            attack(rng, s, 90.0 / 3600.0, 6 * 3600, |rng, i| Msg {
                reply: reply(rng, 0.5, 0.1),
                ..spam(rng, MAIN, &format!("sale{}@shop{}.example", i % 20, i % 4))
            })
        }),
    );

    // -- legitimate -------------------------------------------------------------------------
    {
        let mut rng = Rng(201);
        let mut sim = Sim::new();
        sim.run(traffic(&mut rng, &Profile::hybrid(), T0, 30 * 24, 1.0));
        row("hybrid tenant's month", false, sim.out);
    }
    {
        // Its first day on the relay is the hardest: no history, no baseline.
        let mut rng = Rng(202);
        let mut sim = Sim::new();
        sim.run(traffic(&mut rng, &Profile::university(), T0, 14 * 24, 1.0));
        row(
            "university forwarding (14 days from its first)",
            false,
            sim.out,
        );
    }
    {
        let mut rng = Rng(203);
        let mut sim = Sim::new();
        let p = Profile::hybrid();
        let start = attack_start(WARM_DAYS);
        let hour = start - start.rem_euclid(HOUR_MS);
        sim.run(traffic(&mut rng, &p, T0, (hour - T0) / HOUR_MS, 1.0));
        // 20,000 newsletters in an hour from a registered address, 3 % bounce.
        let mut ev: Vec<(i64, Ev)> = (0..20_000)
            .map(|i| {
                (
                    hour + i * 180,
                    Ev::Msg(Box::new(Msg {
                        connector: MAIN,
                        class: SenderClass::Registered,
                        sender: Some(addr(&format!("news@{REGISTERED}"))),
                        header_from: None,
                        recipients: vec![addr(&format!("sub{i}@isp{}.example", i % 40))],
                        attack: false,
                        dkim_pass: true,
                        reply: reply(&mut rng, 0.004, 0.03),
                    })),
                )
            })
            .collect();
        ev.append(&mut traffic(&mut rng, &p, hour, 24, 1.0));
        sim.run(ev);
        row("newsletter from a registered domain", false, sim.out);
    }
    {
        // Monday morning after a holiday: four times the usual volume for three hours.
        let mut rng = Rng(204);
        let mut sim = Sim::new();
        let p = Profile::hybrid();
        let monday = T0 + 4 * DAY_MS;
        sim.run(traffic(&mut rng, &p, T0, 4 * 24 + 8, 1.0));
        let mut ev = traffic(&mut rng, &p, monday + 8 * HOUR_MS, 3, 4.0);
        ev.append(&mut traffic(&mut rng, &p, monday + 11 * HOUR_MS, 24, 1.0));
        sim.run(ev);
        row("Monday spike (4x for 3 hours)", false, sim.out);
    }
    {
        let mut rng = Rng(205);
        let mut sim = Sim::new();
        sim.changed.insert(MAIN, T0);
        sim.run(traffic(&mut rng, &Profile::hybrid(), T0, 48, 1.0));
        row("a tenant's first days (new connector)", false, sim.out);
    }
    {
        // After a week, all mail moves to a new connector (a new server), forwarding included.
        let mut rng = Rng(206);
        let mut sim = Sim::new();
        let p = Profile::university();
        sim.run(traffic(&mut rng, &p, T0, 7 * 24, 1.0));
        let moved = Profile {
            connector: ConnectorId(11),
            ..p.clone()
        };
        let at = T0 + 7 * DAY_MS;
        let mut ev = vec![(at - MINUTE_MS, Ev::ConnectorChanged(ConnectorId(11)))];
        ev.append(&mut traffic(&mut rng, &moved, at, 3 * 24, 1.0));
        sim.run(ev);
        row("migration to a new connector (university)", false, sim.out);
    }
    rows
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| shape | kind | attack sent | leaked | time to block | warnings | blocks | legit refused |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let o = &r.out;
        let ttb = match (o.first_attack_ms, o.blocked_ms) {
            (Some(a), Some(b)) if r.compromise => format!("{:.1} s", (b - a) as f64 / 1000.0),
            _ if r.compromise => "never".into(),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            if r.compromise {
                "compromise"
            } else {
                "legitimate"
            },
            if r.compromise {
                o.attack_sent.to_string()
            } else {
                "-".into()
            },
            if r.compromise {
                o.leaked.to_string()
            } else {
                "-".into()
            },
            ttb,
            o.warnings,
            o.blocks,
            o.legit_refused,
        ));
    }
    s
}

#[test]
fn scenario_table() {
    let budget = DetectorConfig::default().burst_budget;
    let rows = scenarios();
    println!("{}", table(&rows));
    for r in &rows {
        if r.compromise {
            println!("{}: {}", r.name, r.out.block_summary);
        } else {
            println!(
                "{}: {} messages, {} unregistered or null{}",
                r.name,
                r.out.legit_sent,
                r.out.legit_unregistered,
                match r.out.blocked_ms {
                    Some(t) => format!(
                        "; blocked at +{:.1} h: {}",
                        (t - T0) as f64 / HOUR_MS as f64,
                        r.out.block_summary
                    ),
                    None => String::new(),
                }
            );
        }
    }
    assert!(rows.len() >= 12);
    let mut failures = Vec::new();
    for r in &rows {
        let o = &r.out;
        if r.compromise {
            if o.blocked_ms.is_none() {
                failures.push(format!("{}: never blocked", r.name));
            } else if o.leaked > budget {
                failures.push(format!("{}: {} leaked > {budget}", r.name, o.leaked));
            }
        } else if o.blocks > 0 {
            failures.push(format!("{}: {} blocks", r.name, o.blocks));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The forwarding signals are what let the university through: without them (the allowance off
/// and every DKIM result a failure) the same fortnight is blocked.
#[test]
fn without_forwarding_signals_the_university_is_blocked() {
    let mut cfg = DetectorConfig::default();
    cfg.forwarding.enabled = false;
    let mut rng = Rng(202);
    let mut sim = Sim::with(cfg);
    let mut p = Profile::university();
    p.forward_dkim_pass = 0.0;
    sim.run(traffic(&mut rng, &p, T0, 14 * 24, 1.0));
    println!(
        "university without forwarding signals: {} blocks, first at +{:.1} h: {}",
        sim.out.blocks,
        sim.out
            .blocked_ms
            .map_or(f64::NAN, |t| (t - T0) as f64 / HOUR_MS as f64),
        sim.out.block_summary
    );
    assert!(sim.out.blocks > 0);
}
