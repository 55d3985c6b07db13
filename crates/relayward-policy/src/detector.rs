//! The abuse detector: rules over a tenant's [`Snapshot`] and the restriction-state machine
//! (DESIGN.md "Restriction states"), as pure functions of the time, the tenant's current
//! state and the counters. The caller stores the transitions, their [`Evidence`]
//! (crate::evidence) and tells every node.
//!
//! Rules, each with a warn and a block level (see [`DetectorConfig`] for the defaults):
//!
//! | rule | window | observed | warn above |
//! |---|---|---|---|
//! | `unregistered_volume` | running hour | unregistered + null-sender messages | max(floor, k × baseline) |
//! | `unregistered_burst` | last minute | same | baseline per minute + ¼ of the burst budget |
//! | `unregistered_domains` | running hour | distinct unregistered sender domains | max(domain floor, k × baseline) |
//! | `unregistered_share` | running hour | share of unregistered mail minus its baseline share | 0.3 |
//! | `spam_rejections` | running hour | remote spam/policy blocks ÷ remote replies | 5 % |
//! | `header_mismatch` | running hour | mismatches ÷ registered messages | 50 % |
//!
//! The floor is absolute: while the running hour holds no more than
//! `floor_unregistered_per_hour` unregistered messages from no more than
//! `floor_unregistered_domains_per_hour` domains, the unregistered rules stay quiet, so a small
//! hybrid tenant that forwards a little is never touched, even on its first day with no
//! baseline. Rates need a minimum number of events.
//!
//! Any block-level signal, or two warn-level ones, block unregistered senders. The rules are
//! evaluated on every message (the caller calls [`Detector::evaluate`] with the snapshot
//! [`crate::counters::Counters::record`] returned), so a burst is stopped within seconds: the
//! burst rule caps what leaks at the baseline plus half the `burst_budget` per minute once
//! the floor is passed.

use relayward_core::{TenantId, TenantState};
use serde::{Deserialize, Serialize};

use crate::counters::{CountersConfig, Snapshot, SECOND_MS};
use crate::limits::SenderLimits;

// ---------------------------------------------------------------------------------------------
// Configuration (`[detector]` in relayward.toml)

/// A rule relative to the tenant's baseline: warn above `max(floor, warn_factor × baseline)`,
/// block above `block_over_warn ×` that.
macro_rules! relative_rule {
    ($(#[$m:meta])* $name:ident, $warn:expr, $block:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub enabled: bool,
            pub warn_factor: f64,
            pub block_over_warn: f64,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    enabled: true,
                    warn_factor: $warn,
                    block_over_warn: $block,
                }
            }
        }
    };
}

relative_rule!(
    /// Unregistered + null-sender messages in the running hour. Defaults: warn above
    /// max(floor, 3 × baseline), block above 2 × the warn level.
    VolumeRule,
    3.0,
    2.0
);
relative_rule!(
    /// Distinct unregistered sender domains in the running hour. Defaults: warn above
    /// max(domain floor, 3 × baseline), block above 4 × the warn level (20 for a tenant
    /// within the floor).
    DomainsRule,
    3.0,
    4.0
);

/// Unregistered messages in the last minute, once the hour is past the floor: warn above
/// the baseline per minute plus `warn_share_of_budget × burst_budget`, block above the
/// baseline per minute plus `block_share_of_budget × burst_budget` (defaults 1/4 and 1/2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstRule {
    pub enabled: bool,
    pub warn_share_of_budget: f64,
    pub block_share_of_budget: f64,
}

impl Default for BurstRule {
    fn default() -> Self {
        BurstRule {
            enabled: true,
            warn_share_of_budget: 0.25,
            block_share_of_budget: 0.5,
        }
    }
}

/// The share of unregistered mail in the running hour minus the tenant's baseline share, once
/// the hour is past the floor. Defaults: warn above +0.3, block above +0.6.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShareRule {
    pub enabled: bool,
    pub warn_jump: f64,
    pub block_jump: f64,
}

impl Default for ShareRule {
    fn default() -> Self {
        ShareRule {
            enabled: true,
            warn_jump: 0.3,
            block_jump: 0.6,
        }
    }
}

macro_rules! rate_rule {
    ($(#[$m:meta])* $name:ident, $warn:expr, $block:expr, $min:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub enabled: bool,
            pub warn_rate: f64,
            pub block_rate: f64,
            /// Below this many events in the hour the rule says nothing.
            pub min_events: u64,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    enabled: true,
                    warn_rate: $warn,
                    block_rate: $block,
                    min_events: $min,
                }
            }
        }
    };
}

rate_rule!(
    /// Remote spam/policy blocks ÷ all remote replies in the running hour. Defaults: warn
    /// above 5 %, block above 15 %, at least 10 spam blocks.
    SpamRule,
    0.05,
    0.15,
    10
);
rate_rule!(
    /// Header From mismatches ÷ registered messages in the running hour. Defaults: warn above
    /// 50 %, block above 90 %, at least 50 mismatches.
    MismatchRule,
    0.5,
    0.9,
    50
);

/// `[detector]`. Every key has a default; durations are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Unregistered (and null-sender) messages an hour that are always allowed. Default 100.
    pub floor_unregistered_per_hour: u64,
    /// ...from at most this many distinct domains. Default 5.
    pub floor_unregistered_domains_per_hour: u64,
    /// Unregistered messages a sudden burst may get through before the tenant is blocked,
    /// counted from the burst's start (a tenant within the floor leaks at most the floor).
    /// Default 200.
    pub burst_budget: u64,
    /// A signal is clear again below `(1 - hysteresis) ×` its warn level. Default 0.2.
    pub hysteresis: f64,
    /// Least time in `warned` (and `probation`) before returning to `active`. Default 3600.
    pub dwell_secs: u64,
    /// Thresholds are multiplied by this during probation. Default 0.5.
    pub probation_factor: f64,
    /// Length of probation after an operator unblocks. Default 604800 (7 days).
    pub probation_secs: u64,
    pub unregistered_volume: VolumeRule,
    pub unregistered_burst: BurstRule,
    pub unregistered_domains: DomainsRule,
    pub unregistered_share: ShareRule,
    pub spam_rejections: SpamRule,
    pub header_mismatch: MismatchRule,
    pub counters: CountersConfig,
    /// Default per-sender limits; tenants may have their own.
    pub sender_limits: SenderLimits,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            floor_unregistered_per_hour: 100,
            floor_unregistered_domains_per_hour: 5,
            burst_budget: 200,
            hysteresis: 0.2,
            dwell_secs: 3600,
            probation_factor: 0.5,
            probation_secs: 7 * 24 * 3600,
            unregistered_volume: VolumeRule::default(),
            unregistered_burst: BurstRule::default(),
            unregistered_domains: DomainsRule::default(),
            unregistered_share: ShareRule::default(),
            spam_rejections: SpamRule::default(),
            header_mismatch: MismatchRule::default(),
            counters: CountersConfig::default(),
            sender_limits: SenderLimits::default(),
        }
    }
}

impl DetectorConfig {
    /// The counters' configuration, with the baseline clipped at the floors.
    pub fn counters_config(&self) -> CountersConfig {
        CountersConfig {
            baseline_clip_min_unregistered: self.floor_unregistered_per_hour as f64,
            baseline_clip_min_domains: self.floor_unregistered_domains_per_hour as f64,
            ..self.counters.clone()
        }
    }

    /// Reject values that would make the detector meaningless; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let in_unit = |name: &str, v: f64, lo_open: bool| {
            let ok = if lo_open { v > 0.0 } else { v >= 0.0 } && v <= 1.0;
            if ok {
                Ok(())
            } else {
                Err(format!("detector.{name} must be within (0, 1], not {v}"))
            }
        };
        in_unit("probation_factor", self.probation_factor, true)?;
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(format!(
                "detector.hysteresis must be within [0, 1), not {}",
                self.hysteresis
            ));
        }
        for (name, w, b) in [
            (
                "unregistered_volume",
                self.unregistered_volume.warn_factor,
                self.unregistered_volume.block_over_warn,
            ),
            (
                "unregistered_domains",
                self.unregistered_domains.warn_factor,
                self.unregistered_domains.block_over_warn,
            ),
        ] {
            if w <= 0.0 || b < 1.0 {
                return Err(format!(
                    "detector.{name}: warn_factor must be > 0 and block_over_warn >= 1"
                ));
            }
        }
        let pairs = [
            (
                "unregistered_burst",
                self.unregistered_burst.warn_share_of_budget,
                self.unregistered_burst.block_share_of_budget,
            ),
            (
                "unregistered_share",
                self.unregistered_share.warn_jump,
                self.unregistered_share.block_jump,
            ),
            (
                "spam_rejections",
                self.spam_rejections.warn_rate,
                self.spam_rejections.block_rate,
            ),
            (
                "header_mismatch",
                self.header_mismatch.warn_rate,
                self.header_mismatch.block_rate,
            ),
        ];
        for (name, warn, block) in pairs {
            if !(warn > 0.0 && warn <= block) {
                return Err(format!(
                    "detector.{name}: need 0 < warn <= block, got {warn} and {block}"
                ));
            }
        }
        if self.burst_budget <= self.floor_unregistered_per_hour {
            return Err(format!(
                "detector.burst_budget ({}) must exceed floor_unregistered_per_hour ({}): \
                 a tenant within the floor may send it all at once",
                self.burst_budget, self.floor_unregistered_per_hour
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and transitions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    UnregisteredVolume,
    UnregisteredBurst,
    UnregisteredDomains,
    UnregisteredShare,
    SpamRejections,
    HeaderMismatch,
}

impl Rule {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::UnregisteredVolume => "unregistered_volume",
            Rule::UnregisteredBurst => "unregistered_burst",
            Rule::UnregisteredDomains => "unregistered_domains",
            Rule::UnregisteredShare => "unregistered_share",
            Rule::SpamRejections => "spam_rejections",
            Rule::HeaderMismatch => "header_mismatch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    Hour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// At or below the warn level minus hysteresis, or not armed.
    Clear,
    /// Between the hysteresis line and the warn level: not enough to warn, too much to clear.
    Elevated,
    Warn,
    Block,
}

/// One rule's verdict with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub rule: Rule,
    pub window: Window,
    pub level: Level,
    pub observed: f64,
    pub warn_threshold: f64,
    pub block_threshold: f64,
    /// The count behind the observation (messages, domains, rejections, mismatches).
    pub events: u64,
    /// Whether the rule's precondition (floor, minimum events) held; unarmed rules are clear.
    pub armed: bool,
}

impl Signal {
    pub fn describe(&self) -> String {
        let (verb, threshold) = match self.level {
            Level::Block => ("above block level", self.block_threshold),
            Level::Warn => ("above warn level", self.warn_threshold),
            _ => ("below warn level", self.warn_threshold),
        };
        format!(
            "{} {:.3} {} {:.3} ({} events, {:?})",
            self.rule.as_str(),
            self.observed,
            verb,
            threshold,
            self.events,
            self.window
        )
    }
}

/// Who or what caused a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    Detector,
    Tenant { actor: String },
    Operator { actor: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub tenant: TenantId,
    pub at_ms: i64,
    pub from: TenantState,
    pub to: TenantState,
    pub cause: Cause,
    /// The signals that decided (for a return to active: all of them, all clear).
    pub signals: Vec<Signal>,
    /// Set when entering probation.
    pub probation_until_ms: Option<i64>,
    pub summary: String,
}

/// A tenant's restriction state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub state: TenantState,
    /// When the tenant entered `state` (for the dwell time).
    pub since_ms: i64,
    pub probation_until_ms: Option<i64>,
}

impl TenantStatus {
    pub fn active(since_ms: i64) -> Self {
        TenantStatus {
            state: TenantState::Active,
            since_ms,
            probation_until_ms: None,
        }
    }

    /// The status after `t`.
    pub fn apply(&self, t: &Transition) -> TenantStatus {
        TenantStatus {
            state: t.to,
            since_ms: t.at_ms,
            probation_until_ms: t.probation_until_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockScope {
    /// `blocked_all`: every message refused (5.7.705).
    All,
    /// `blocked_unregistered`: unregistered and null senders refused (5.7.750).
    Unregistered,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{action} is not possible for a tenant in state {from} (only from {allowed})")]
    NotAllowed {
        action: &'static str,
        from: TenantState,
        allowed: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// The detector

#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Detector { cfg }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    fn level(&self, observed: f64, warn: f64, block: f64, armed: bool) -> Level {
        if !armed {
            Level::Clear
        } else if observed > block {
            Level::Block
        } else if observed > warn {
            Level::Warn
        } else if observed > warn * (1.0 - self.cfg.hysteresis) {
            Level::Elevated
        } else {
            Level::Clear
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn signal(
        &self,
        rule: Rule,
        window: Window,
        observed: f64,
        warn: f64,
        block: f64,
        events: u64,
        armed: bool,
    ) -> Signal {
        Signal {
            rule,
            window,
            level: self.level(observed, warn, block, armed),
            observed,
            warn_threshold: warn,
            block_threshold: block,
            events,
            armed,
        }
    }

    /// Every enabled rule's verdict on `snapshot` for a tenant in `state` (probation tightens
    /// the thresholds). Cheap: a few dozen float operations.
    pub fn assess(&self, snapshot: &Snapshot, state: TenantState) -> Vec<Signal> {
        let cfg = &self.cfg;
        let f = if state == TenantState::Probation {
            cfg.probation_factor
        } else {
            1.0
        };
        let hour = &snapshot.windows.hour;
        let minute = &snapshot.windows.minute;
        let base = &snapshot.baseline;
        let floor = cfg.floor_unregistered_per_hour as f64 * f;
        let floor_domains = cfg.floor_unregistered_domains_per_hour as f64 * f;
        let hour_unreg = hour.not_registered();
        let past_floor = hour_unreg as f64 > floor;
        let mut out = Vec::with_capacity(6);

        let r = &cfg.unregistered_volume;
        if r.enabled {
            let warn = floor.max(r.warn_factor * base.unregistered_per_hour * f);
            out.push(self.signal(
                Rule::UnregisteredVolume,
                Window::Hour,
                hour_unreg as f64,
                warn,
                warn * r.block_over_warn,
                hour_unreg,
                true,
            ));
        }

        let r = &cfg.unregistered_burst;
        if r.enabled {
            let expected = base.unregistered_per_hour / 60.0;
            let budget = cfg.burst_budget as f64;
            let minute_unreg = minute.not_registered();
            out.push(self.signal(
                Rule::UnregisteredBurst,
                Window::Minute,
                minute_unreg as f64,
                (expected + budget * r.warn_share_of_budget) * f,
                (expected + budget * r.block_share_of_budget) * f,
                minute_unreg,
                past_floor,
            ));
        }

        let r = &cfg.unregistered_domains;
        if r.enabled {
            let warn = floor_domains.max(r.warn_factor * base.unregistered_domains_per_hour * f);
            let domains = hour.unregistered_domains as u64;
            out.push(self.signal(
                Rule::UnregisteredDomains,
                Window::Hour,
                domains as f64,
                warn,
                warn * r.block_over_warn,
                domains,
                true,
            ));
        }

        let r = &cfg.unregistered_share;
        if r.enabled {
            let share = if hour.messages > 0 {
                hour_unreg as f64 / hour.messages as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::UnregisteredShare,
                Window::Hour,
                share - base.unregistered_share(),
                r.warn_jump * f,
                r.block_jump * f,
                hour_unreg,
                past_floor,
            ));
        }

        let r = &cfg.spam_rejections;
        if r.enabled {
            let total = hour.remote_total();
            let rate = if total > 0 {
                hour.remote_spam as f64 / total as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::SpamRejections,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.remote_spam,
                hour.remote_spam >= r.min_events,
            ));
        }

        let r = &cfg.header_mismatch;
        if r.enabled {
            let registered = hour.registered_messages();
            let rate = if registered > 0 {
                hour.mismatches as f64 / registered as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::HeaderMismatch,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.mismatches,
                hour.mismatches >= r.min_events,
            ));
        }
        out
    }

    fn transition(
        &self,
        now_ms: i64,
        tenant: TenantId,
        from: TenantState,
        to: TenantState,
        cause: Cause,
        signals: Vec<Signal>,
        summary: String,
    ) -> Transition {
        let probation_until_ms = (to == TenantState::Probation)
            .then(|| now_ms + self.cfg.probation_secs as i64 * SECOND_MS);
        Transition {
            tenant,
            at_ms: now_ms,
            from,
            to,
            cause,
            signals,
            probation_until_ms,
            summary,
        }
    }

    /// The detector's move, if any, for a tenant in `status` given `snapshot`. Only
    /// `active`, `warned` and `probation` move on their own; the blocked states and
    /// `under_review` leave only through [`Detector::request_unblock`],
    /// [`Detector::operator_unblock`] and [`Detector::operator_block`].
    pub fn evaluate(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        snapshot: &Snapshot,
    ) -> Option<Transition> {
        use TenantState::*;
        let from = status.state;
        if !matches!(from, Active | Warned | Probation) {
            return None;
        }
        let signals = self.assess(snapshot, from);
        let firing: Vec<Signal> = signals
            .iter()
            .filter(|s| s.level >= Level::Warn)
            .cloned()
            .collect();
        let blocks = firing.iter().filter(|s| s.level == Level::Block).count();
        let describe = |s: &[Signal]| {
            s.iter()
                .map(Signal::describe)
                .collect::<Vec<_>>()
                .join("; ")
        };
        if blocks > 0 || firing.len() >= 2 {
            let why = if blocks > 0 {
                "block-level signal"
            } else {
                "two warn-level signals"
            };
            let summary = format!("{why}: {}", describe(&firing));
            return Some(self.transition(
                now_ms,
                tenant,
                from,
                BlockedUnregistered,
                Cause::Detector,
                firing,
                summary,
            ));
        }
        let clear = signals.iter().all(|s| s.level == Level::Clear);
        let dwelt = now_ms - status.since_ms >= self.cfg.dwell_secs as i64 * SECOND_MS;
        match from {
            Active if firing.len() == 1 => {
                let summary = format!("warn-level signal: {}", describe(&firing));
                Some(self.transition(
                    now_ms,
                    tenant,
                    from,
                    Warned,
                    Cause::Detector,
                    firing,
                    summary,
                ))
            }
            Warned if clear && dwelt => Some(self.transition(
                now_ms,
                tenant,
                from,
                Active,
                Cause::Detector,
                signals,
                "all signals clear for the dwell time".into(),
            )),
            Probation => {
                let until = status.probation_until_ms.unwrap_or(
                    status.since_ms + self.cfg.probation_secs as i64 * SECOND_MS,
                );
                (clear && dwelt && now_ms >= until).then(|| {
                    self.transition(
                        now_ms,
                        tenant,
                        from,
                        Active,
                        Cause::Detector,
                        signals,
                        "probation over, all signals clear".into(),
                    )
                })
            }
            _ => None,
        }
    }

    /// The tenant admin attests that the cause is fixed: `blocked_unregistered` →
    /// `under_review` (unregistered senders stay refused until an operator decides).
    pub fn request_unblock(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        if status.state != TenantState::BlockedUnregistered {
            return Err(TransitionError::NotAllowed {
                action: "request_unblock",
                from: status.state,
                allowed: "blocked_unregistered",
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            TenantState::UnderReview,
            Cause::Tenant {
                actor: actor.to_string(),
            },
            Vec::new(),
            "tenant admin requested unblock".into(),
        ))
    }

    /// An operator lifts a block: `under_review`, `blocked_unregistered` or `blocked_all` →
    /// `probation` for `probation_secs`.
    pub fn operator_unblock(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        use TenantState::*;
        if !matches!(status.state, UnderReview | BlockedUnregistered | BlockedAll) {
            return Err(TransitionError::NotAllowed {
                action: "operator_unblock",
                from: status.state,
                allowed: "under_review, blocked_unregistered, blocked_all",
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            Probation,
            Cause::Operator {
                actor: actor.to_string(),
            },
            Vec::new(),
            "operator unblocked; probation with tightened thresholds".into(),
        ))
    }

    /// An operator blocks by hand: to `blocked_all` from any other state, or to
    /// `blocked_unregistered` from any state but itself (from `blocked_all` this lets
    /// registered mail flow again).
    pub fn operator_block(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        scope: BlockScope,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        let (to, action, allowed) = match scope {
            BlockScope::All => (
                TenantState::BlockedAll,
                "operator_block(all)",
                "any state but blocked_all",
            ),
            BlockScope::Unregistered => (
                TenantState::BlockedUnregistered,
                "operator_block(unregistered)",
                "any state but blocked_unregistered",
            ),
        };
        if status.state == to {
            return Err(TransitionError::NotAllowed {
                action,
                from: status.state,
                allowed,
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            to,
            Cause::Operator {
                actor: actor.to_string(),
            },
            Vec::new(),
            format!("operator blocked ({})", to.as_str()),
        ))
    }
}

