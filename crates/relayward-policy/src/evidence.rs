//! The evidence kept with every restriction-state transition (DESIGN.md "Restriction states":
//! every transition records who/what caused it, when, and the evidence), and the bounded
//! structures the counters use to collect it on the per-message path.
//!
//! The top-k tables are the space-saving algorithm (Metwally, Agrawal, El Abbadi 2005),
//! written by hand: it is twenty lines, and the crates that offer it either allocate per
//! update or bring a count-min sketch we do not need.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt::Display;
use std::net::IpAddr;

use relayward_core::{ConnectorId, SenderClass, TenantId, TenantState};
use serde::{Deserialize, Serialize};

use crate::counters::{Baseline, SeriesPoint, Windows};
use crate::detector::{Cause, Shape, Signal, Transition};

/// One row of a top-k table. The true count lies in `count - error ..= count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopEntry {
    pub key: String,
    pub count: u64,
    /// Over-estimation bound inherited from the entry it replaced (0: exact).
    pub error: u64,
}

/// Space-saving top-k: at most `k` entries, O(k) per update, no allocation once full except
/// the key of a newcomer.
#[derive(Debug, Clone)]
pub struct TopK<K> {
    k: usize,
    entries: Vec<(K, u64, u64)>,
}

impl<K> TopK<K> {
    pub fn new(k: usize) -> Self {
        TopK {
            k: k.max(1),
            entries: Vec::new(),
        }
    }

    /// Count `n` more for `key`; `make` builds the owned key only when it is new.
    pub fn add<Q>(&mut self, key: &Q, n: u64, make: impl FnOnce(&Q) -> K)
    where
        Q: ?Sized + PartialEq,
        K: Borrow<Q>,
    {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0.borrow() == key) {
            e.1 += n;
            return;
        }
        if self.entries.len() < self.k {
            self.entries.push((make(key), n, 0));
            return;
        }
        // Replace the smallest: the newcomer inherits its count as the error bound.
        let (idx, _) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.1)
            .expect("k >= 1 and the table is full");
        let min = self.entries[idx].1;
        self.entries[idx] = (make(key), min + n, min);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, u64, u64)> {
        self.entries.iter().map(|(k, c, e)| (k, *c, *e))
    }
}

/// Two generations of a [`TopK`], each covering `period_ms` of clock time, so the table
/// reports the last one to two periods rather than everything since the entry was created.
#[derive(Debug, Clone)]
pub struct RecentTopK<K> {
    period_ms: i64,
    generation: i64,
    current: TopK<K>,
    previous: TopK<K>,
}

impl<K: Display> RecentTopK<K> {
    pub fn new(k: usize, period_ms: i64) -> Self {
        RecentTopK {
            period_ms: period_ms.max(1),
            generation: i64::MIN,
            current: TopK::new(k),
            previous: TopK::new(k),
        }
    }

    fn rotate(&mut self, now_ms: i64) {
        let g = now_ms.div_euclid(self.period_ms);
        if g == self.generation {
            return;
        }
        if g == self.generation.wrapping_add(1) {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        } else {
            self.current.clear();
            self.previous.clear();
        }
        self.generation = g;
    }

    pub fn add<Q>(&mut self, now_ms: i64, key: &Q, n: u64, make: impl FnOnce(&Q) -> K)
    where
        Q: ?Sized + PartialEq,
        K: Borrow<Q>,
    {
        self.rotate(now_ms);
        self.current.add(key, n, make);
    }

    /// Both generations merged, largest first, at most `k` rows.
    pub fn report(&self, now_ms: i64) -> Vec<TopEntry> {
        let g = now_ms.div_euclid(self.period_ms);
        let mut rows: Vec<TopEntry> = Vec::new();
        let mut take = |t: &TopK<K>| {
            for (k, c, e) in t.iter() {
                let key = k.to_string();
                match rows.iter_mut().find(|r| r.key == key) {
                    Some(r) => {
                        r.count += c;
                        r.error += e;
                    }
                    None => rows.push(TopEntry {
                        key,
                        count: c,
                        error: e,
                    }),
                }
            }
        };
        if g == self.generation {
            take(&self.current);
            take(&self.previous);
        } else if g == self.generation.wrapping_add(1) {
            take(&self.current);
        }
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        rows.truncate(self.current.k);
        rows
    }
}

/// A bounded ring: the newest `cap` items.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    cap: usize,
    items: VecDeque<T>,
}

impl<T: Clone> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            cap,
            items: VecDeque::new(),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.cap == 0 {
            return;
        }
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Oldest first.
    pub fn to_vec(&self) -> Vec<T> {
        self.items.iter().cloned().collect()
    }
}

/// Longest text kept from a client-supplied identifier (Message-ID, queue id, reply text).
pub const MAX_SAMPLE_TEXT: usize = 128;

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A message that fed a suspicious count (unregistered or null sender, or header mismatch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    pub class: SenderClass,
    pub mismatch: bool,
    pub connector: ConnectorId,
    pub sender: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
}

/// A remote refusal classified as a spam or policy block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionSample {
    pub at_ms: i64,
    pub sender: Option<String>,
    pub queue_id: Option<String>,
    pub reply: Option<String>,
}

/// One connector's share of the tenant's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorActivity {
    pub connector: ConnectorId,
    pub windows: Windows,
}

/// A change to one of the tenant's connectors (from the audit log; filled in by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorChange {
    pub connector: ConnectorId,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// What the counters saw of one tenant: windows, series, top talkers and samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    pub tenant: TenantId,
    pub at_ms: i64,
    /// The tenant's 1-minute, 1-hour and 24-hour totals.
    pub windows: Windows,
    pub baseline: Baseline,
    /// The last hour in 5-minute buckets, oldest first.
    pub series_5min: Vec<SeriesPoint>,
    /// The last 24 hours in 1-hour buckets, oldest first.
    pub series_hourly: Vec<SeriesPoint>,
    pub top_unregistered_domains: Vec<TopEntry>,
    pub top_unregistered_senders: Vec<TopEntry>,
    /// Source addresses of unregistered, null-sender and mismatched messages.
    pub top_source_ips: Vec<TopEntry>,
    pub samples: Vec<Sample>,
    pub rejection_samples: Vec<RejectionSample>,
    pub connectors: Vec<ConnectorActivity>,
    /// Unregistered domains that look like the tenant's own traffic: seen before the incident
    /// in more than one hour, or recurring (several messages). The unblock checklist asks only about these (and about none when
    /// `None`, evidence recorded before this was kept, which asks about every domain).
    #[serde(default)]
    pub familiar_domains: Option<Vec<String>>,
}

/// The record stored with a transition: the decision and what it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub tenant: TenantId,
    pub at_ms: i64,
    pub from: TenantState,
    pub to: TenantState,
    pub cause: Cause,
    /// Rule, level, thresholds and observed value of each signal that decided.
    pub signals: Vec<Signal>,
    /// The shape of the unregistered traffic (forwarding or spray) and the allowance it earned.
    #[serde(default)]
    pub shape: Option<Shape>,
    pub observations: Observations,
    /// Connector changes of the last 7 days; the caller adds them from the store.
    #[serde(default)]
    pub connector_changes: Vec<ConnectorChange>,
}

impl Evidence {
    pub fn new(transition: &Transition, observations: Observations) -> Evidence {
        Evidence {
            tenant: transition.tenant,
            at_ms: transition.at_ms,
            from: transition.from,
            to: transition.to,
            cause: transition.cause.clone(),
            signals: transition.signals.clone(),
            shape: transition.shape,
            observations,
            connector_changes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_saving_keeps_heavy_hitters() {
        // Guaranteed to be kept: keys more frequent than N / k = 200.
        let mut t: TopK<Box<str>> = TopK::new(5);
        for i in 0..1000u32 {
            // Two heavy keys among a stream of singletons.
            let k = match i % 4 {
                0 => "heavy-a".to_string(),
                1 => "heavy-b".to_string(),
                _ => format!("noise-{i}"),
            };
            t.add(k.as_str(), 1, |k: &str| Box::from(k));
        }
        let keys: Vec<&str> = t.iter().map(|(k, _, _)| &**k).collect();
        assert!(
            keys.contains(&"heavy-a") && keys.contains(&"heavy-b"),
            "{keys:?}"
        );
        for (k, c, e) in t.iter() {
            if &**k == "heavy-a" {
                assert!(c - e <= 250 && 250 <= c);
            }
        }
    }

    #[test]
    fn recent_top_k_forgets_old_generations() {
        let mut t: RecentTopK<Box<str>> = RecentTopK::new(5, 1000);
        t.add(0, "old", 10, |k: &str| Box::from(k));
        t.add(1500, "new", 3, |k: &str| Box::from(k));
        let r = t.report(1500);
        assert_eq!(r[0].key, "old");
        assert_eq!(r[1].key, "new");
        let r = t.report(2500);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].key, "new");
        t.add(5000, "later", 1, |k: &str| Box::from(k));
        assert_eq!(t.report(5000).len(), 1);
    }

    #[test]
    fn ring_and_truncation() {
        let mut r = Ring::new(2);
        r.push(1);
        r.push(2);
        r.push(3);
        assert_eq!(r.to_vec(), vec![2, 3]);
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
