//! What the in-process counters hold per tenant: its windows and baseline, and what its
//! unregistered, null-sender and mismatched traffic leaves behind.

use std::collections::HashMap;
use std::net::IpAddr;

use relayward_core::ConnectorId;

use crate::evidence::{RecentTopK, RejectionSample, Ring, Sample};

use super::blocks::*;
use super::config::CountersConfig;
use super::events::{Baseline, Windows};
use super::share::Remote;
use super::{HOUR_MS, MINUTE_MS, SECOND_MS};

/// What a tenant's unregistered, null-sender and mismatched traffic leaves behind.
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    pub(super) domains: Stamps,
    pub(super) senders: Stamps,
    /// Recipient addresses of unregistered mail: forwarding reaches a few, spray many.
    pub(super) recipients: Stamps,
    /// Domains of unregistered mail that passed DKIM.
    pub(super) dkim_domains: Stamps,
    /// Which recipients of unregistered mail were seen in which clock hour.
    pub(super) known_recipients: KnownRecipients,
    /// Distinct unregistered domains of the current clock hour, for the baseline.
    pub(super) clock_hour: i64,
    pub(super) clock_hour_domains: [u64; 4],
    pub(super) top_domains: RecentTopK<Box<str>>,
    pub(super) top_senders: RecentTopK<Box<str>>,
    pub(super) top_ips: RecentTopK<IpAddr>,
    pub(super) samples: Ring<Sample>,
    /// When each unregistered domain (P1, or P2 of a mismatch) was first and last seen, and in
    /// how many distinct hours: what the tenant's own traffic looks like, as against one-off
    /// spam domains. Bounded; the least recently seen is forgotten first.
    pub(super) history: HashMap<Box<str>, DomainSeen>,
}

/// One domain of [`Suspect::history`].
#[derive(Debug, Clone, Copy)]
pub(super) struct DomainSeen {
    pub(super) first_ms: i64,
    pub(super) last_hour: i64,
    pub(super) hours: u32,
    pub(super) messages: u32,
}

/// Domains remembered per tenant.
pub(super) const HISTORY_DOMAINS: usize = 512;
/// A domain is part of the tenant's own traffic when first seen this long before the moment
/// asked about...
pub(super) const FAMILIAR_BEFORE_MS: i64 = 2 * HOUR_MS;
/// ...and seen in at least this many distinct clock hours;
pub(super) const FAMILIAR_HOURS: u32 = 2;
/// or it recurs: at least this many messages (a spray of random domains has one or two each).
pub(super) const RECURRING_MESSAGES: u32 = 5;

impl Suspect {
    pub(super) fn remember(&mut self, now_ms: i64, domain: &str) {
        let hour = now_ms.div_euclid(HOUR_MS);
        if let Some(d) = self.history.get_mut(domain) {
            d.messages = d.messages.saturating_add(1);
            if d.last_hour != hour {
                d.last_hour = hour;
                d.hours = d.hours.saturating_add(1);
            }
            return;
        }
        if self.history.len() >= HISTORY_DOMAINS {
            // Forget the stalest of a small sample: O(1) per insert, close to LRU.
            if let Some(k) = self
                .history
                .iter()
                .take(16)
                .min_by_key(|(_, d)| d.last_hour)
                .map(|(k, _)| k.clone())
            {
                self.history.remove(&k);
            }
        }
        self.history.insert(
            Box::from(domain),
            DomainSeen {
                first_ms: now_ms,
                last_hour: hour,
                hours: 1,
                messages: 1,
            },
        );
    }

    /// Whether `domain` was part of the tenant's traffic before now: first seen
    /// [`FAMILIAR_BEFORE_MS`] ago or more, in [`FAMILIAR_HOURS`] clock hours. Recurrence within
    /// the incident does not count here: a spammer rotating a few domains makes them recur.
    pub(super) fn seen_before(&self, now_ms: i64, domain: &str) -> bool {
        self.history
            .get(domain)
            .is_some_and(|d| d.first_ms <= now_ms - FAMILIAR_BEFORE_MS && d.hours >= FAMILIAR_HOURS)
    }

    /// Domains that look like the tenant's own traffic as of `now_ms`: seen before the incident
    /// in more than one hour, or recurring.
    pub(super) fn familiar(&self, now_ms: i64) -> Vec<String> {
        let mut v: Vec<String> = self
            .history
            .iter()
            .filter(|(_, d)| {
                (d.first_ms <= now_ms - FAMILIAR_BEFORE_MS && d.hours >= FAMILIAR_HOURS)
                    || d.messages >= RECURRING_MESSAGES
            })
            .map(|(k, _)| k.to_string())
            .collect();
        v.sort();
        v
    }

    pub(super) fn new(cfg: &CountersConfig) -> Self {
        let period = cfg.top_k_period_secs.max(1) as i64 * SECOND_MS;
        Suspect {
            domains: Stamps::new(),
            senders: Stamps::new(),
            recipients: Stamps::new(),
            dkim_domains: Stamps::new(),
            known_recipients: KnownRecipients::new(),
            clock_hour: i64::MIN,
            clock_hour_domains: [0; 4],
            top_domains: RecentTopK::new(cfg.top_k, period),
            top_senders: RecentTopK::new(cfg.top_k, period),
            top_ips: RecentTopK::new(cfg.top_k, period),
            samples: Ring::new(cfg.samples),
            history: HashMap::new(),
        }
    }

    pub(super) fn clock_hour_count(&self, hour: i64) -> f64 {
        if self.clock_hour != hour {
            return 0.0;
        }
        let set: u32 = self.clock_hour_domains.iter().map(|w| w.count_ones()).sum();
        linear_count(256, set as usize)
    }
}

#[derive(Debug, Clone)]
pub(super) struct TenantEntry {
    pub(super) last_seen_ms: i64,
    pub(super) minute: BucketRing<6, { 10 * SECOND_MS }>,
    pub(super) hour: BucketRing<12, { 5 * MINUTE_MS }>,
    pub(super) day: BucketRing<24, HOUR_MS>,
    pub(super) base_tick: i64,
    pub(super) recipient_domains: Stamps,
    pub(super) baseline: BaselineState,
    pub(super) suspect: Option<Box<Suspect>>,
    pub(super) rejections: Option<Box<Ring<RejectionSample>>>,
    pub(super) connectors: Vec<(ConnectorId, Compact)>,
    pub(super) senders: HashMap<Box<str>, Compact>,
    /// Counted since the last export of the cluster share (`share.rs`).
    pub(super) dirty: bool,
    /// What the other nodes of a cluster counted (`share.rs`); `None` on a single node.
    pub(super) remote: Option<Box<Remote>>,
}

impl TenantEntry {
    pub(super) fn new(now_ms: i64) -> Self {
        TenantEntry {
            last_seen_ms: now_ms,
            minute: BucketRing::new(),
            hour: BucketRing::new(),
            day: BucketRing::new(),
            base_tick: now_ms.div_euclid(TICK_MS),
            recipient_domains: Stamps::new(),
            baseline: BaselineState {
                next_hour: now_ms.div_euclid(HOUR_MS),
                b: Baseline::default(),
            },
            suspect: None,
            rejections: None,
            connectors: Vec::new(),
            senders: HashMap::new(),
            dirty: false,
            remote: None,
        }
    }

    /// The current tick relative to the base, rebasing the stamps when they near overflow.
    pub(super) fn tick(&mut self, now_ms: i64) -> u16 {
        let tick = now_ms.div_euclid(TICK_MS).max(self.base_tick);
        if tick - self.base_tick + 1 > REBASE_AT {
            let new_base = tick - KEEP_TICKS;
            let shift = new_base - self.base_tick;
            self.recipient_domains.shift(shift);
            if let Some(s) = &mut self.suspect {
                s.domains.shift(shift);
                s.senders.shift(shift);
                s.recipients.shift(shift);
                s.dkim_domains.shift(shift);
            }
            if let Some(r) = &mut self.remote {
                r.shift(shift);
            }
            self.base_tick = new_base;
        }
        (tick - self.base_tick + 1) as u16
    }

    /// Fold the clock hours completed since the last call into the baseline.
    pub(super) fn fold_baseline(&mut self, now_ms: i64, cfg: &CountersConfig) {
        let current = now_ms.div_euclid(HOUR_MS);
        // After a long silence only the last week matters: older hours have decayed away.
        let mut h = self.baseline.next_hour.max(current - 24 * 7);
        while h < current {
            // Every node's count of the hour, in a cluster.
            let epoch = u32::try_from(h).ok();
            let buckets = [
                epoch.and_then(|e| self.day.bucket(e)),
                epoch.and_then(|e| self.remote.as_ref().and_then(|r| r.day.bucket(e))),
            ];
            let (mut m, mut u) = (0.0, 0.0);
            for c in buckets.into_iter().flatten() {
                m += c[MESSAGES] as f64;
                u += (c[UNREG_MESSAGES] + c[NULL_MESSAGES]) as f64;
            }
            let d = self.suspect.as_ref().map_or(0.0, |s| s.clock_hour_count(h));
            self.baseline.push(m, u, d, cfg);
            h += 1;
        }
        self.baseline.next_hour = self.baseline.next_hour.max(current);
    }

    pub(super) fn touch(&mut self, now_ms: i64, cfg: &CountersConfig) -> u16 {
        self.dirty = true;
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        self.fold_baseline(now_ms, cfg);
        self.tick(now_ms)
    }

    pub(super) fn add(&mut self, now_ms: i64, d: &Counts) {
        self.minute.add(now_ms, d);
        self.hour.add(now_ms, d);
        self.day.add(now_ms, d);
    }

    /// The tenant's windows: this node's counts, plus the other nodes' in a cluster.
    pub(super) fn windows(&self, now_ms: i64, rel: u16) -> Windows {
        let remote = self.remote.as_deref();
        // Distinct counts over the union of this node's bitmap and the others'.
        let counts = |local: Option<&Stamps>, kind: usize| -> [u32; 3] {
            match (local, remote) {
                (Some(l), Some(r)) => l.union_counts(&r.stamps[kind], rel),
                (Some(l), None) => l.counts(rel),
                (None, Some(r)) => r.stamps[kind].counts(rel),
                (None, None) => [0; 3],
            }
        };
        let s = self.suspect.as_deref();
        let dom = counts(s.map(|s| &s.domains), 0);
        let snd = counts(s.map(|s| &s.senders), 1);
        let rcpt = counts(Some(&self.recipient_domains), 2);
        let urc = counts(s.map(|s| &s.recipients), 3);
        let dkd = counts(s.map(|s| &s.dkim_domains), 4);
        let d = |i: usize| [dom[i], snd[i], rcpt[i], urc[i], dkd[i]];
        let mut sums = [
            self.minute.sum(now_ms),
            self.hour.sum(now_ms),
            self.day.sum(now_ms),
        ];
        if let Some(r) = remote {
            for (sum, theirs) in
                sums.iter_mut()
                    .zip([r.minute.sum(now_ms), r.hour.sum(now_ms), r.day.sum(now_ms)])
            {
                for (a, b) in sum.iter_mut().zip(theirs) {
                    *a += b;
                }
            }
        }
        Windows {
            minute: stats(&sums[0], d(0)),
            hour: stats(&sums[1], d(1)),
            day: stats(&sums[2], d(2)),
        }
    }

    pub(super) fn suspect(&mut self, cfg: &CountersConfig) -> &mut Suspect {
        self.suspect
            .get_or_insert_with(|| Box::new(Suspect::new(cfg)))
    }

    pub(super) fn connector(&mut self, now_ms: i64, id: ConnectorId, cap: usize) -> &mut Compact {
        if let Some(i) = self.connectors.iter().position(|(c, _)| *c == id) {
            return &mut self.connectors[i].1;
        }
        if self.connectors.len() >= cap.max(1) {
            if let Some(i) =
                (0..self.connectors.len()).min_by_key(|&i| self.connectors[i].1.last_seen_ms)
            {
                self.connectors.swap_remove(i);
            }
        }
        self.connectors.push((id, Compact::new(now_ms)));
        let last = self.connectors.len() - 1;
        &mut self.connectors[last].1
    }

    pub(super) fn sender(&mut self, now_ms: i64, key: &str, cap: usize) -> &mut Compact {
        if !self.senders.contains_key(key) {
            if self.senders.len() >= cap.max(1) {
                let oldest = self
                    .senders
                    .iter()
                    .min_by_key(|(_, c)| c.last_seen_ms)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.senders.remove(&k);
                }
            }
            self.senders.insert(Box::from(key), Compact::new(now_ms));
        }
        self.senders.get_mut(key).expect("inserted above")
    }
}
