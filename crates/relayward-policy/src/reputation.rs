//! Per-tenant sending reputation: the rolling hard-bounce and complaint rates of the mail the
//! relay delivered for a tenant, over the last 24 hours and the last 7 days, and what they call
//! for. The levels follow Amazon SES's published figures: a bounce rate of 5 % or a complaint rate
//! of 0.1 % puts an account under review, 10 % or 0.5 % may pause it.
//!
//! * `warn`: the tenant's admins are alerted (once per crossing).
//! * `act`: the tenant's mail leaves from the `high_risk` egress pool, so its bounces and
//!   complaints stop weighing on the addresses everyone else sends from.
//! * `block`: the tenant is blocked from unregistered domains, with the rates as evidence.
//!
//! A rate counts only over a representative volume (`min_messages_day`, `min_messages_week`):
//! three bounces out of ten messages say little about a sender.

use std::collections::HashMap;
use std::sync::Mutex;

use relayward_core::{ReputationHour, TenantId};
use serde::{Deserialize, Serialize};

use crate::counters::HOUR_MS;
use crate::detector::{Level, Rule, Signal, Window};

/// `[reputation]`: levels as fractions (0.05 = 5 %).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    pub enabled: bool,
    pub bounce_warn: f64,
    pub bounce_act: f64,
    pub bounce_block: f64,
    pub complaint_warn: f64,
    pub complaint_act: f64,
    pub complaint_block: f64,
    /// Messages delivered or bounced in 24 hours before the day's rates count.
    pub min_messages_day: u64,
    /// The same over 7 days.
    pub min_messages_week: u64,
    /// How long a hard-bounced recipient stays on the tenant's suppression list.
    pub suppression_days: u32,
    /// The operator's own bounce classification rules, tried before the built-in ones
    /// (`contrib/bounce-rules.toml` shows the format).
    pub bounce_rules: Option<std::path::PathBuf>,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            enabled: true,
            bounce_warn: 0.05,
            bounce_act: 0.10,
            bounce_block: 0.20,
            complaint_warn: 0.001,
            complaint_act: 0.005,
            complaint_block: 0.01,
            min_messages_day: 500,
            min_messages_week: 2_000,
            suppression_days: 14,
            bounce_rules: None,
        }
    }
}

/// Why a `[reputation]` section is refused; the text names the key.
#[derive(Debug, thiserror::Error)]
pub enum ReputationConfigError {
    /// The operator's bounce rules file cannot be read or compiled.
    #[error("reputation.bounce_rules: {0}")]
    BounceRules(#[source] crate::bounce::BounceRulesError),
    /// A rate's warn, act and block levels are not ordered within [0, 1].
    #[error("reputation: {rate}_warn <= {rate}_act <= {rate}_block, each between 0 and 1")]
    Thresholds { rate: &'static str },
}

impl ReputationConfig {
    pub fn validate(&self) -> Result<(), ReputationConfigError> {
        if let Some(path) = &self.bounce_rules {
            crate::bounce::BounceClassifier::with_extra_file(path)
                .map_err(ReputationConfigError::BounceRules)?;
        }
        for (name, warn, act, block) in [
            (
                "bounce",
                self.bounce_warn,
                self.bounce_act,
                self.bounce_block,
            ),
            (
                "complaint",
                self.complaint_warn,
                self.complaint_act,
                self.complaint_block,
            ),
        ] {
            let ordered =
                (0.0..=1.0).contains(&warn) && warn <= act && act <= block && block <= 1.0;
            if !ordered {
                return Err(ReputationConfigError::Thresholds { rate: name });
            }
        }
        Ok(())
    }
}

/// What the rates call for, in increasing order.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ReputationLevel {
    #[default]
    Good,
    Warn,
    /// Routed through the `high_risk` egress pool.
    Act,
    /// Blocked from unregistered domains.
    Block,
}

impl ReputationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ReputationLevel::Good => "good",
            ReputationLevel::Warn => "warn",
            ReputationLevel::Act => "act",
            ReputationLevel::Block => "block",
        }
    }
}

/// One outcome the rates are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A recipient delivered.
    Delivered,
    /// A recipient refused permanently as not existing (a hard bounce, by the bounce classifier).
    HardBounce,
    /// A recipient (or their provider's feedback loop) reported the mail as spam.
    Complaint,
}

/// The rates over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Recipients delivered or hard-bounced.
    pub messages: u64,
    pub bounces: u64,
    pub complaints: u64,
    pub bounce_rate: f64,
    pub complaint_rate: f64,
    /// `messages` reached the window's minimum volume: the rates count.
    pub representative: bool,
}

/// A tenant's reputation as the status pages show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReputationStatus {
    pub level: ReputationLevel,
    pub day: Rates,
    pub week: Rates,
    /// Each rate at or above a level, explained ("bounce rate 12.0 % over 24 h (600 messages)
    /// at or above the act level 10.0 %").
    pub reasons: Vec<String>,
}

/// A tenant's level changed.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelChange {
    pub tenant: TenantId,
    pub from: ReputationLevel,
    pub to: ReputationLevel,
    pub status: ReputationStatus,
}

const HOURS: usize = 7 * 24;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Hours since the epoch this bucket holds.
    hour: i64,
    delivered: u32,
    bounces: u32,
    complaints: u32,
}

#[derive(Debug)]
struct TenantRep {
    buckets: Box<[Bucket; HOURS]>,
    level: ReputationLevel,
}

impl TenantRep {
    fn new() -> TenantRep {
        TenantRep {
            buckets: Box::new([Bucket::default(); HOURS]),
            level: ReputationLevel::Good,
        }
    }

    fn bucket(&mut self, hour: i64) -> &mut Bucket {
        let b = &mut self.buckets[hour.rem_euclid(HOURS as i64) as usize];
        if b.hour != hour {
            *b = Bucket {
                hour,
                ..Bucket::default()
            };
        }
        b
    }

    fn sum(&self, now_hour: i64, hours: i64) -> (u64, u64, u64) {
        let mut t = (0u64, 0u64, 0u64);
        for b in self.buckets.iter() {
            if b.hour > now_hour - hours && b.hour <= now_hour {
                t.0 += u64::from(b.delivered);
                t.1 += u64::from(b.bounces);
                t.2 += u64::from(b.complaints);
            }
        }
        t
    }
}

/// The rates of every tenant, hour by hour over 7 days (168 buckets of 20 bytes per tenant that
/// sent anything). Counted in memory on the delivery path; the counts not yet written are kept
/// apart ([`Reputation::take_unwritten`]) for the store, which a restart loads back
/// ([`Reputation::load`]).
pub struct Reputation {
    config: ReputationConfig,
    tenants: Mutex<HashMap<TenantId, TenantRep>>,
    /// Counts since the last write, by tenant and hour.
    unwritten: Mutex<HashMap<(TenantId, i64), ReputationHour>>,
}

/// Hours the rates look back on.
pub const WINDOW_HOURS: i64 = HOURS as i64;

fn rates((delivered, bounces, complaints): (u64, u64, u64), min: u64) -> Rates {
    let messages = delivered + bounces;
    let rate = |n: u64| {
        if messages == 0 {
            0.0
        } else {
            n as f64 / messages as f64
        }
    };
    Rates {
        messages,
        bounces,
        complaints,
        bounce_rate: rate(bounces),
        complaint_rate: rate(complaints),
        representative: messages >= min.max(1),
    }
}

impl Reputation {
    pub fn new(config: ReputationConfig) -> Reputation {
        Reputation {
            config,
            tenants: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
        }
    }

    /// Adds stored hours (at start, or to show a tenant's rates without a running relay).
    pub fn load(&self, rows: &[ReputationHour]) {
        let mut tenants = self.lock();
        for r in rows {
            let rep = tenants.entry(r.tenant_id).or_insert_with(TenantRep::new);
            let b = rep.bucket(r.hour);
            b.delivered = b.delivered.saturating_add(r.delivered);
            b.bounces = b.bounces.saturating_add(r.bounces);
            b.complaints = b.complaints.saturating_add(r.complaints);
        }
    }

    /// The levels the loaded counts stand at, taken as the tenants' current levels without
    /// reporting them as changes (they were acted on when they were reached).
    pub fn settle(&self, now_ms: i64) {
        let hour = now_ms.div_euclid(HOUR_MS);
        let mut tenants = self.lock();
        for rep in tenants.values_mut() {
            rep.level = self.status_of(rep, hour).level;
        }
    }

    /// The counts recorded since the last call, for the store.
    pub fn take_unwritten(&self) -> Vec<ReputationHour> {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        unwritten.drain().map(|(_, r)| r).collect()
    }

    /// Puts back counts the store did not take, to be written with the next batch.
    pub fn restore_unwritten(&self, rows: Vec<ReputationHour>) {
        for r in rows {
            self.add_unwritten(r);
        }
    }

    fn add_unwritten(&self, r: ReputationHour) {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        let e = unwritten
            .entry((r.tenant_id, r.hour))
            .or_insert(ReputationHour {
                tenant_id: r.tenant_id,
                hour: r.hour,
                ..ReputationHour::default()
            });
        e.delivered = e.delivered.saturating_add(r.delivered);
        e.bounces = e.bounces.saturating_add(r.bounces);
        e.complaints = e.complaints.saturating_add(r.complaints);
    }

    pub fn config(&self) -> &ReputationConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantRep>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one outcome; returns the level change it caused, if any.
    pub fn record(&self, tenant: TenantId, now_ms: i64, outcome: Outcome) -> Option<LevelChange> {
        if !self.config.enabled {
            return None;
        }
        let hour = now_ms.div_euclid(HOUR_MS);
        self.add_unwritten(ReputationHour {
            tenant_id: tenant,
            hour,
            delivered: u32::from(outcome == Outcome::Delivered),
            bounces: u32::from(outcome == Outcome::HardBounce),
            complaints: u32::from(outcome == Outcome::Complaint),
        });
        let mut tenants = self.lock();
        let rep = tenants.entry(tenant).or_insert_with(TenantRep::new);
        let b = rep.bucket(hour);
        match outcome {
            Outcome::Delivered => b.delivered = b.delivered.saturating_add(1),
            Outcome::HardBounce => b.bounces = b.bounces.saturating_add(1),
            Outcome::Complaint => b.complaints = b.complaints.saturating_add(1),
        }
        self.update(tenant, rep, hour)
    }

    /// Re-evaluates with time alone (rates fall as old hours leave the windows).
    pub fn refresh(&self, now_ms: i64) -> Vec<LevelChange> {
        let hour = now_ms.div_euclid(HOUR_MS);
        let mut tenants = self.lock();
        let changes = tenants
            .iter_mut()
            .filter_map(|(t, rep)| self.update(*t, rep, hour))
            .collect();
        tenants.retain(|_, rep| rep.buckets.iter().any(|b| b.hour > hour - HOURS as i64));
        changes
    }

    fn update(&self, tenant: TenantId, rep: &mut TenantRep, hour: i64) -> Option<LevelChange> {
        let status = self.status_of(rep, hour);
        (status.level != rep.level).then(|| {
            let from = std::mem::replace(&mut rep.level, status.level);
            LevelChange {
                tenant,
                from,
                to: status.level,
                status,
            }
        })
    }

    /// The tenant's rates and level now.
    pub fn status(&self, tenant: TenantId, now_ms: i64) -> ReputationStatus {
        let hour = now_ms.div_euclid(HOUR_MS);
        match self.lock().get(&tenant) {
            Some(rep) => self.status_of(rep, hour),
            None => ReputationStatus::default(),
        }
    }

    /// The level the tenant was last seen at (what routing follows).
    pub fn level(&self, tenant: TenantId) -> ReputationLevel {
        self.lock()
            .get(&tenant)
            .map_or(ReputationLevel::Good, |r| r.level)
    }

    fn status_of(&self, rep: &TenantRep, hour: i64) -> ReputationStatus {
        let c = &self.config;
        let day = rates(rep.sum(hour, 24), c.min_messages_day);
        let week = rates(rep.sum(hour, HOURS as i64), c.min_messages_week);
        let mut level = ReputationLevel::Good;
        let mut reasons = Vec::new();
        for (window, r) in [("24 h", &day), ("7 days", &week)] {
            if !r.representative {
                continue;
            }
            for (what, rate, warn, act, block) in [
                (
                    "bounce rate",
                    r.bounce_rate,
                    c.bounce_warn,
                    c.bounce_act,
                    c.bounce_block,
                ),
                (
                    "complaint rate",
                    r.complaint_rate,
                    c.complaint_warn,
                    c.complaint_act,
                    c.complaint_block,
                ),
            ] {
                let (l, threshold) = if rate >= block && block > 0.0 {
                    (ReputationLevel::Block, block)
                } else if rate >= act && act > 0.0 {
                    (ReputationLevel::Act, act)
                } else if rate >= warn && warn > 0.0 {
                    (ReputationLevel::Warn, warn)
                } else {
                    continue;
                };
                reasons.push(format!(
                    "{what} {:.2} % over {window} ({} messages) at or above the {} level {:.2} %",
                    rate * 100.0,
                    r.messages,
                    l.as_str(),
                    threshold * 100.0
                ));
                level = level.max(l);
            }
        }
        ReputationStatus {
            level,
            day,
            week,
            reasons,
        }
    }

    /// The rates as detector signals, for a transition's evidence.
    pub fn signals(&self, status: &ReputationStatus) -> Vec<Signal> {
        let c = &self.config;
        let mut out = Vec::new();
        for (window, r) in [(Window::Day, &status.day), (Window::Week, &status.week)] {
            for (rule, rate, events, warn, block) in [
                (
                    Rule::BounceRate,
                    r.bounce_rate,
                    r.bounces,
                    c.bounce_warn,
                    c.bounce_block,
                ),
                (
                    Rule::ComplaintRate,
                    r.complaint_rate,
                    r.complaints,
                    c.complaint_warn,
                    c.complaint_block,
                ),
            ] {
                let level = if !r.representative {
                    Level::Clear
                } else if rate >= block {
                    Level::Block
                } else if rate >= warn {
                    Level::Warn
                } else {
                    Level::Clear
                };
                out.push(Signal {
                    rule,
                    window,
                    level,
                    observed: rate,
                    warn_threshold: warn,
                    block_threshold: block,
                    events,
                    armed: r.representative,
                });
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.level));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ReputationConfig {
        ReputationConfig {
            min_messages_day: 100,
            min_messages_week: 100,
            ..ReputationConfig::default()
        }
    }

    #[test]
    fn levels_follow_the_rates_over_a_representative_volume() {
        let rep = Reputation::new(small());
        let t = 7;
        let now = 1_000 * HOUR_MS;
        // 6 bounces in 60 messages: 10 %, but not representative yet.
        let mut changes = Vec::new();
        for i in 0..60 {
            let o = if i % 10 == 0 {
                Outcome::HardBounce
            } else {
                Outcome::Delivered
            };
            changes.extend(rep.record(TenantId(t), now, o));
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(rep.status(TenantId(t), now).level, ReputationLevel::Good);
        // 40 more at the same rate: 100 messages, 10 bounces -> act.
        for i in 0..40 {
            let o = if i % 10 == 0 {
                Outcome::HardBounce
            } else {
                Outcome::Delivered
            };
            changes.extend(rep.record(TenantId(t), now, o));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].to, ReputationLevel::Act);
        assert!(changes[0].status.reasons[0].contains("bounce rate 10.00 %"));
        assert_eq!(rep.level(TenantId(t)), ReputationLevel::Act);
        // One complaint in 100 is 1 %: block.
        let c = rep.record(TenantId(t), now, Outcome::Complaint).unwrap();
        assert_eq!(
            (c.from, c.to),
            (ReputationLevel::Act, ReputationLevel::Block)
        );
        let signals = rep.signals(&c.status);
        assert_eq!(signals[0].level, Level::Block);
        assert_eq!(signals[0].rule, Rule::ComplaintRate);
        // A day later the 24 h window is empty and the week alone still counts.
        let later = now + 25 * HOUR_MS;
        assert_eq!(rep.status(TenantId(t), later).day.messages, 0);
        assert_eq!(rep.status(TenantId(t), later).level, ReputationLevel::Block);
        // After 7 days everything is gone.
        let gone = now + 8 * 24 * HOUR_MS;
        let changes = rep.refresh(gone);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, ReputationLevel::Good);
        assert_eq!(rep.status(TenantId(t), gone), ReputationStatus::default());
    }

    #[test]
    fn unwritten_counts_round_trip_through_rows() {
        let rep = Reputation::new(small());
        let now = 10 * HOUR_MS;
        for _ in 0..90 {
            rep.record(TenantId(3), now, Outcome::Delivered);
        }
        for _ in 0..10 {
            rep.record(TenantId(3), now + HOUR_MS, Outcome::HardBounce);
        }
        rep.record(TenantId(3), now + HOUR_MS, Outcome::Complaint);
        let mut rows = rep.take_unwritten();
        rows.sort_by_key(|r| r.hour);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].delivered, rows[0].bounces), (90, 0));
        assert_eq!((rows[1].bounces, rows[1].complaints), (10, 1));
        assert!(rep.take_unwritten().is_empty());
        // A restart: the rows give back the same rates and level, without a change to act on.
        let again = Reputation::new(small());
        again.load(&rows);
        again.settle(now + HOUR_MS);
        assert_eq!(
            again.status(TenantId(3), now + HOUR_MS),
            rep.status(TenantId(3), now + HOUR_MS)
        );
        assert_eq!(again.level(TenantId(3)), ReputationLevel::Block);
        assert!(again.refresh(now + HOUR_MS).is_empty());
        assert!(again.take_unwritten().is_empty());
        // Counts the store did not take go out with the next batch.
        again.restore_unwritten(rows.clone());
        assert_eq!(again.take_unwritten().len(), 2);
    }

    #[test]
    fn warn_below_act() {
        let rep = Reputation::new(small());
        let now = 5 * HOUR_MS;
        for _ in 0..188 {
            rep.record(TenantId(1), now, Outcome::Delivered);
        }
        for _ in 0..12 {
            rep.record(TenantId(1), now, Outcome::HardBounce);
        }
        let s = rep.status(TenantId(1), now);
        assert_eq!(s.level, ReputationLevel::Warn, "{s:?}");
        assert!((s.day.bounce_rate - 0.06).abs() < 1e-9);
        assert!(ReputationConfig::default().validate().is_ok());
        let bad = ReputationConfig {
            bounce_act: 0.01,
            ..ReputationConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "reputation: bounce_warn <= bounce_act <= bounce_block, each between 0 and 1"
        );
    }
}
