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
//! | `unregistered_domains` | running hour | distinct unregistered sender domains, less those that passed DKIM | max(domain floor, k × baseline) |
//! | `unregistered_share` | running hour | share of unregistered mail minus its baseline share | 0.3 |
//! | `spam_rejections` | running hour | remote spam/policy blocks ÷ remote replies | 5 % |
//! | `header_mismatch` | running hour | mismatches ÷ registered messages | 50 % |
//! | `spam_verdicts` | running hour | content scanner spam verdicts ÷ scanned messages | 10 % |
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

use crate::counters::{
    CountersConfig, Snapshot, WindowStats, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS,
};
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
    /// Spam verdicts of the content scanner (rspamd) ÷ scanned messages in the running hour.
    /// Defaults: warn above 10 %, block above 30 %, at least 10 spam verdicts.
    SpamVerdictRule,
    0.1,
    0.3,
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

/// `[detector.forwarding]`: how much more unregistered mail a tenant gets in the running hour
/// when that mail looks forwarded rather than sprayed.
///
/// Three traits of the hour's unregistered mail are scored from 0 (spray-shaped) to 1
/// (forwarding-shaped):
/// * **recipients**: the share of messages with a recipient that already got unregistered
///   mail of the tenant in an earlier clock hour (forwarding reaches the same people again,
///   spray new ones), 1 at or above `known_recipients_full`; 0 when messages average more
///   than `max_recipients_per_message` recipients;
/// * **dkim**: messages carrying a signature that verifies for their header From domain ÷
///   unregistered and null-sender messages (a message not yet verified counts as failing);
/// * **familiar**: messages whose domain the tenant sent from before (first seen two hours or
///   more earlier, in more than one clock hour) ÷ unregistered and null-sender messages.
///
/// The likeness is their mean when at least `min_traits` of them reach 0.5, else 0, halved
/// (`new_connector_factor`) when the message's connector was created or changed within
/// `new_connector_secs`. The floors and the burst budget of the unregistered rules are
/// multiplied by `1 + (max_allowance - 1) × likeness`. Nothing is judged before
/// `min_messages` unregistered messages in the hour (the floor covers them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingRule {
    pub enabled: bool,
    pub max_allowance: f64,
    pub min_messages: u64,
    pub known_recipients_full: f64,
    pub max_recipients_per_message: f64,
    pub min_traits: u32,
    pub new_connector_secs: u64,
    pub new_connector_factor: f64,
}

impl Default for ForwardingRule {
    fn default() -> Self {
        ForwardingRule {
            enabled: true,
            max_allowance: 8.0,
            min_messages: 10,
            known_recipients_full: 0.5,
            max_recipients_per_message: 3.0,
            min_traits: 2,
            new_connector_secs: 7 * 24 * 3600,
            new_connector_factor: 0.5,
        }
    }
}

/// What [`Detector::shape`] reads off one window.
struct Traits {
    window: Window,
    messages: u64,
    known: f64,
    recipients: f64,
    distinct: f64,
    per_message: f64,
    dkim: f64,
    familiar: f64,
    judged: bool,
    likeness: f64,
}

/// `[detector.dkim]`: verifying the DKIM signatures of accepted unregistered mail, after the
/// 250 and off the SMTP path, for the forwarding signals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimVerifyConfig {
    pub enabled: bool,
    /// Messages waiting for verification at most; beyond, a message counts as not verified.
    pub max_queued: usize,
    /// Verifications at once.
    pub concurrency: usize,
    /// Per message, key lookups included.
    pub timeout_ms: u64,
    /// Key records cached (per selector and domain, for their TTL).
    pub cache_entries: usize,
}

impl Default for DkimVerifyConfig {
    fn default() -> Self {
        DkimVerifyConfig {
            enabled: true,
            max_queued: 2048,
            concurrency: 16,
            timeout_ms: 5000,
            cache_entries: 10_000,
        }
    }
}

/// One trait of [`Shape`]: what was observed and its score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Trait {
    pub observed: f64,
    /// 0 = spray-shaped, 1 = forwarding-shaped.
    pub score: f64,
}

/// What the running hour's unregistered mail looks like, and the allowance it earns (see
/// [`ForwardingRule`]). Kept in every transition's evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// The window the traits are computed over: the running hour, or the day when the hour
    /// holds fewer than `min_messages`.
    #[serde(default)]
    pub window: Window,
    /// Unregistered and null-sender messages of that window.
    pub messages: u64,
    /// Share of unregistered messages to a recipient seen in an earlier hour.
    pub recipients: Trait,
    /// Distinct recipient addresses ÷ recipients of unregistered mail.
    #[serde(default)]
    pub distinct_recipients: f64,
    /// Average recipients per unregistered message.
    pub recipients_per_message: f64,
    /// Share of messages with a DKIM signature verifying for their header From domain.
    pub dkim: Trait,
    pub dkim_checked: u64,
    /// Share of messages from domains the tenant sent from before.
    pub familiar: Trait,
    /// Age of the message's connector since it was created or changed, when known.
    pub connector_age_secs: Option<u64>,
    pub new_connector: bool,
    /// Whether enough traffic was seen to judge.
    pub judged: bool,
    pub likeness: f64,
    /// What the hourly floors are multiplied by.
    pub allowance: f64,
    /// What the burst budget is multiplied by: the lesser of the hour's allowance and the last
    /// minute's own.
    #[serde(default)]
    pub burst_allowance: f64,
}

impl Shape {
    pub fn describe(&self) -> String {
        if !self.judged {
            return format!(
                "shape not judged ({} unregistered messages), allowance x1",
                self.messages
            );
        }
        let age = match self.connector_age_secs {
            Some(s) => format!(
                ", connector changed {:.1} days ago{}",
                s as f64 / 86_400.0,
                if self.new_connector { " (new)" } else { "" }
            ),
            None => String::new(),
        };
        format!(
            "shape of {} messages ({:?}): known recipients {:.2} (distinct {:.2}, {:.1}/message) score {:.2}, \
             dkim pass {:.2} of {} checked score {:.2}, familiar domains {:.2} score {:.2}{age}; \
             likeness {:.2}, allowance x{:.1} (burst x{:.1})",
            self.messages,
            self.window,
            self.recipients.observed,
            self.distinct_recipients,
            self.recipients_per_message,
            self.recipients.score,
            self.dkim.observed,
            self.dkim_checked,
            self.dkim.score,
            self.familiar.observed,
            self.familiar.score,
            self.likeness,
            self.allowance,
            self.burst_allowance,
        )
    }
}

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
    pub spam_verdicts: SpamVerdictRule,
    pub forwarding: ForwardingRule,
    pub dkim: DkimVerifyConfig,
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
            spam_verdicts: SpamVerdictRule::default(),
            forwarding: ForwardingRule::default(),
            dkim: DkimVerifyConfig::default(),
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
            (
                "spam_verdicts",
                self.spam_verdicts.warn_rate,
                self.spam_verdicts.block_rate,
            ),
        ];
        for (name, warn, block) in pairs {
            if !(warn > 0.0 && warn <= block) {
                return Err(format!(
                    "detector.{name}: need 0 < warn <= block, got {warn} and {block}"
                ));
            }
        }
        let fw = &self.forwarding;
        if fw.max_allowance < 1.0 {
            return Err(format!(
                "detector.forwarding.max_allowance must be >= 1, not {}",
                fw.max_allowance
            ));
        }
        in_unit(
            "forwarding.known_recipients_full",
            fw.known_recipients_full,
            true,
        )?;
        if fw.max_recipients_per_message < 1.0 {
            return Err("detector.forwarding.max_recipients_per_message must be >= 1".into());
        }
        if !(1..=3).contains(&fw.min_traits) {
            return Err(format!(
                "detector.forwarding.min_traits must be 1, 2 or 3, not {}",
                fw.min_traits
            ));
        }
        in_unit(
            "forwarding.new_connector_factor",
            fw.new_connector_factor,
            false,
        )?;
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
    SpamVerdicts,
    /// Hard bounces per delivered or bounced recipient (the reputation module).
    BounceRate,
    /// Spam complaints per delivered or bounced recipient (the reputation module).
    ComplaintRate,
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
            Rule::SpamVerdicts => "spam_verdicts",
            Rule::BounceRate => "bounce_rate",
            Rule::ComplaintRate => "complaint_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    #[default]
    Hour,
    Day,
    Week,
}

impl Window {
    pub fn duration_ms(self) -> i64 {
        match self {
            Window::Minute => MINUTE_MS,
            Window::Hour => HOUR_MS,
            Window::Day => DAY_MS,
            Window::Week => 7 * DAY_MS,
        }
    }
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
    /// The shape of the unregistered traffic when the detector decided.
    #[serde(default)]
    pub shape: Option<Shape>,
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
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
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

    /// The traits of one window's unregistered mail, before the connector's age counts.
    fn traits(&self, w: &WindowStats, window: Window) -> Traits {
        let r = &self.cfg.forwarding;
        let messages = w.not_registered();
        let unreg = w.unregistered_messages;
        let rcpts = w.unregistered_recipients;
        let per_message = if unreg > 0 {
            rcpts as f64 / unreg as f64
        } else {
            0.0
        };
        let distinct = if rcpts > 0 {
            (w.unregistered_recipient_addrs as f64 / rcpts as f64).min(1.0)
        } else {
            0.0
        };
        let known = if unreg > 0 {
            (w.unregistered_known_recipient as f64 / unreg as f64).min(1.0)
        } else {
            0.0
        };
        let recipients = if per_message > r.max_recipients_per_message {
            0.0
        } else {
            (known / r.known_recipients_full).min(1.0)
        };
        let share = |n: u64| {
            if messages > 0 {
                (n as f64 / messages as f64).min(1.0)
            } else {
                0.0
            }
        };
        let dkim = share(w.dkim_pass);
        let familiar = share(w.unregistered_familiar);
        let judged = r.enabled && messages >= r.min_messages;
        let scores = [recipients, dkim, familiar];
        let holding = scores.iter().filter(|&&x| x >= 0.5).count() as u32;
        let likeness = if judged && holding >= r.min_traits {
            scores.iter().sum::<f64>() / 3.0
        } else {
            0.0
        };
        Traits {
            window,
            messages,
            known,
            recipients,
            distinct,
            per_message,
            dkim,
            familiar,
            judged,
            likeness,
        }
    }

    /// The shape of the running hour's unregistered mail and the allowance it earns.
    pub fn shape(&self, snapshot: &Snapshot) -> Shape {
        let r = &self.cfg.forwarding;
        let hour = &snapshot.windows.hour;
        let connector_age_secs = snapshot
            .connector_changed_ms
            .map(|t| ((snapshot.at_ms - t).max(0) / SECOND_MS) as u64);
        let new_connector = connector_age_secs.is_some_and(|a| a < r.new_connector_secs);
        let age = if new_connector {
            r.new_connector_factor
        } else {
            1.0
        };
        let allowance = |likeness: f64| 1.0 + (r.max_allowance - 1.0) * likeness * age;
        // The running hour when it holds enough to judge; else the day, so that a quiet hour
        // of a forwarding tenant keeps the allowance its traffic earned.
        let mut h = self.traits(hour, Window::Hour);
        if !h.judged {
            let d = self.traits(&snapshot.windows.day, Window::Day);
            if d.judged {
                h = d;
            }
        }
        let hour_allowance = allowance(h.likeness);
        // A burst is judged by its own minute too, so that spray inside an hour of forwarding
        // does not inherit the hour's allowance.
        let m = self.traits(&snapshot.windows.minute, Window::Minute);
        let burst_allowance = if m.judged {
            hour_allowance.min(allowance(m.likeness))
        } else {
            hour_allowance
        };
        Shape {
            messages: h.messages,
            window: h.window,
            recipients: Trait {
                observed: h.known,
                score: h.recipients,
            },
            distinct_recipients: h.distinct,
            recipients_per_message: h.per_message,
            dkim: Trait {
                observed: h.dkim,
                score: h.dkim,
            },
            dkim_checked: hour.dkim_checked,
            familiar: Trait {
                observed: h.familiar,
                score: h.familiar,
            },
            connector_age_secs,
            new_connector,
            judged: h.judged,
            likeness: h.likeness * age,
            allowance: hour_allowance,
            burst_allowance,
        }
    }

    /// Every enabled rule's verdict on `snapshot` for a tenant in `state` (probation tightens
    /// the thresholds). Cheap: a few dozen float operations.
    pub fn assess(&self, snapshot: &Snapshot, state: TenantState) -> Vec<Signal> {
        self.assess_with(snapshot, state, &self.shape(snapshot))
    }

    fn assess_with(&self, snapshot: &Snapshot, state: TenantState, shape: &Shape) -> Vec<Signal> {
        let cfg = &self.cfg;
        let f = if state == TenantState::Probation {
            cfg.probation_factor
        } else {
            1.0
        };
        let hour = &snapshot.windows.hour;
        let minute = &snapshot.windows.minute;
        let base = &snapshot.baseline;
        // Forwarding-shaped traffic earns a larger allowance on the floors and the budget; the
        // baseline-relative parts are the tenant's own history and need none.
        let a = shape.allowance;
        let floor = cfg.floor_unregistered_per_hour as f64 * f * a;
        let floor_domains = cfg.floor_unregistered_domains_per_hour as f64 * f * a;
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
            let budget = cfg.burst_budget as f64 * shape.burst_allowance.max(1.0);
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
            // A domain whose mail carried a DKIM signature that verified for it is a real
            // sender's (a forwarded original); snowshoe spam's domains are not.
            let domains = hour
                .unregistered_domains
                .saturating_sub(hour.dkim_pass_domains) as u64;
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
        let r = &cfg.spam_verdicts;
        if r.enabled {
            let rate = if hour.scanned > 0 {
                hour.scan_spam as f64 / hour.scanned as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::SpamVerdicts,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.scan_spam,
                hour.scan_spam >= r.min_events,
            ));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
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
            shape: None,
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
        if !matches!(
            status.state,
            TenantState::Active | TenantState::Warned | TenantState::Probation
        ) {
            return None;
        }
        let shape = self.shape(snapshot);
        let mut t = self.decide(now_ms, tenant, status, snapshot, &shape)?;
        if shape.judged {
            t.summary = format!("{}; {}", t.summary, shape.describe());
        }
        t.shape = Some(shape);
        Some(t)
    }

    fn decide(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        snapshot: &Snapshot,
        shape: &Shape,
    ) -> Option<Transition> {
        use TenantState::*;
        let from = status.state;
        let mut signals = self.assess_with(snapshot, from, shape);
        if from == Probation {
            // A window that began before the operator's unblock still holds the traffic that
            // was judged and acted on: it cannot block again. Probation's tighter thresholds
            // apply to what comes after (a minute after the unblock, the minute window is all
            // new traffic; an hour after, the hour window).
            let elapsed = now_ms - status.since_ms;
            for s in &mut signals {
                if s.window.duration_ms() > elapsed {
                    s.level = Level::Clear;
                }
            }
        }
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
                let until = status
                    .probation_until_ms
                    .unwrap_or(status.since_ms + self.cfg.probation_secs as i64 * SECOND_MS);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{
        classify_remote_reply, Counters, InProcessCounters, MessageEvent, RemoteClass,
        RemoteReplyEvent, HOUR_MS, MINUTE_MS,
    };
    use crate::evidence::Evidence;
    use relayward_core::{Address, SenderClass};

    /// 2026-01-01T00:00:00Z, a Thursday.
    const T0: i64 = 1_767_225_600_000;
    const DAY: i64 = 24 * HOUR_MS;
    const TENANT: TenantId = 42;
    const CONNECTOR: i64 = 7;

    /// xorshift64*: deterministic scenarios without a dependency.
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
        fn poisson(&mut self, lambda: f64) -> u64 {
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

    fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    #[derive(Debug, Clone)]
    enum Ev {
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
    struct Profile {
        registered_per_weekday: f64,
        registered_per_weekend_day: f64,
        unregistered_per_hour: f64,
        unregistered_domains: Vec<String>,
        null_per_hour: f64,
        mismatch_rate: f64,
        /// Remote replies: (spam, bad mailbox, other) shares; the rest delivered.
        replies: (f64, f64, f64),
    }

    impl Profile {
        /// 2,000 registered messages a weekday (600 on weekends) with a daily cycle, ~20
        /// forwarded unregistered messages an hour from 3 domains, 2 NDRs an hour.
        fn hybrid() -> Profile {
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
    fn daily_cycle() -> [f64; 24] {
        let mut w = [0.0; 24];
        for (h, x) in w.iter_mut().enumerate() {
            *x = (1.0 + 0.9 * (std::f64::consts::TAU * (h as f64 - 9.0) / 24.0).sin()).max(0.05);
        }
        let sum: f64 = w.iter().sum();
        w.map(|x| x / sum)
    }

    fn reply_class(rng: &mut Rng, (spam, bad, other): (f64, f64, f64)) -> RemoteClass {
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
    fn hour_of(rng: &mut Rng, p: &Profile, start: i64) -> Vec<(i64, Ev)> {
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
            let d =
                &p.unregistered_domains[rng.below(p.unregistered_domains.len() as u64) as usize];
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
    struct Sim {
        counters: InProcessCounters,
        detector: Detector,
        status: TenantStatus,
        transitions: Vec<Transition>,
        evidence: Vec<Evidence>,
        /// Times of accepted unregistered and null-sender messages.
        accepted_unregistered: Vec<i64>,
        /// Off: only count (a tenant whose history predates the scenario).
        evaluating: bool,
        refused: u64,
        rcpts: Vec<Address>,
        rng: Rng,
    }

    impl Sim {
        fn new(cfg: DetectorConfig, seed: u64) -> Sim {
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

        fn apply(&mut self, now: i64, snap: &crate::counters::Snapshot) {
            if !self.evaluating {
                return;
            }
            if let Some(t) = self.detector.evaluate(now, TENANT, &self.status, snap) {
                self.take(now, t);
            }
        }

        fn take(&mut self, now: i64, t: Transition) {
            let ev = Evidence::new(&t, self.counters.observations(now, TENANT));
            self.status = self.status.apply(&t);
            self.transitions.push(t);
            self.evidence.push(ev);
        }

        fn send(&mut self, now: i64, class: SenderClass, sender: Option<&Address>, mismatch: bool) {
            let state = self.status.state;
            if state.blocks_all()
                || (class != SenderClass::Registered && state.blocks_unregistered())
            {
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
                    connector: CONNECTOR,
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

        fn run(&mut self, mut events: Vec<(i64, Ev)>) {
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
                                connector: Some(CONNECTOR),
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
        fn run_profile(&mut self, p: &Profile, start: i64, hours: i64, extra: Vec<(i64, Ev)>) {
            let mut events = extra;
            for h in 0..hours {
                let mut hour = hour_of(&mut self.rng, p, start + h * HOUR_MS);
                events.append(&mut hour);
            }
            self.run(events);
        }

        fn blocked_at(&self) -> Option<&Transition> {
            self.transitions
                .iter()
                .find(|t| t.to == TenantState::BlockedUnregistered)
        }
    }

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
        assert_eq!(ev.observations.connectors[0].connector, CONNECTOR);
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
            d.evaluate(T0 + HOUR_MS, 1, &TenantStatus::active(T0), &snap),
            None
        );
        let t = d.evaluate(T0 + HOUR_MS, 1, &status, &snap).unwrap();
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
    fn manual_transitions_are_validated() {
        use TenantState::*;
        let d = Detector::new(DetectorConfig::default());
        let at = |state| TenantStatus {
            state,
            since_ms: T0,
            probation_until_ms: None,
        };
        let now = T0 + HOUR_MS;
        for s in TenantState::ALL {
            let r = d.request_unblock(now, 1, &at(*s), "admin");
            if *s == BlockedUnregistered {
                let t = r.unwrap();
                assert_eq!((t.from, t.to), (BlockedUnregistered, UnderReview));
            } else {
                let e = r.unwrap_err();
                assert!(
                    e.to_string().contains("only from blocked_unregistered"),
                    "{e}"
                );
            }
            let r = d.operator_unblock(now, 1, &at(*s), "noc");
            if matches!(s, UnderReview | BlockedUnregistered | BlockedAll) {
                let t = r.unwrap();
                assert_eq!(t.to, Probation);
                assert_eq!(t.probation_until_ms, Some(now + 7 * DAY));
            } else {
                assert!(r.is_err(), "{s}");
            }
            let r = d.operator_block(now, 1, &at(*s), BlockScope::All, "noc");
            assert_eq!(r.is_ok(), *s != BlockedAll, "{s}");
            let r = d.operator_block(now, 1, &at(*s), BlockScope::Unregistered, "noc");
            assert_eq!(r.is_ok(), *s != BlockedUnregistered, "{s}");
        }
        assert_eq!(
            d.request_unblock(now, 1, &at(Active), "admin").unwrap_err().to_string(),
            "request_unblock is not possible for a tenant in state active (only from blocked_unregistered)"
        );
        // Blocked states and review never move on their own, whatever the counters say.
        let mut snap = crate::counters::Snapshot::default();
        snap.windows.hour.unregistered_messages = 100_000;
        snap.windows.hour.messages = 100_000;
        for s in [BlockedUnregistered, UnderReview, BlockedAll] {
            assert_eq!(d.evaluate(now + 30 * DAY, 1, &at(s), &snap), None);
        }
        // Right after the operator's unblock the burst that caused the block is still in the
        // hour window: it does not block again. New traffic does, once its window holds only
        // what came after the unblock.
        let probation = TenantStatus {
            state: Probation,
            since_ms: now,
            probation_until_ms: Some(now + 7 * DAY),
        };
        assert_eq!(d.evaluate(now + 1_000, 1, &probation, &snap), None);
        assert_eq!(d.evaluate(now + 30 * MINUTE_MS, 1, &probation, &snap), None);
        let t = d
            .evaluate(now + HOUR_MS + 1_000, 1, &probation, &snap)
            .expect("a new hour of the same traffic blocks");
        assert_eq!(t.to, BlockedUnregistered);
        let mut burst = crate::counters::Snapshot::default();
        burst.windows.minute.unregistered_messages = 10_000;
        burst.windows.minute.messages = 10_000;
        burst.windows.hour = burst.windows.minute;
        assert_eq!(d.evaluate(now + 30_000, 1, &probation, &burst), None);
        let t = d
            .evaluate(now + 2 * MINUTE_MS, 1, &probation, &burst)
            .expect("a new burst after the unblock blocks");
        assert_eq!(t.to, BlockedUnregistered);
        assert!(
            t.signals.iter().all(|s| s.window == Window::Minute),
            "{:?}",
            t.signals
        );
    }

    #[test]
    fn config_embeds_in_toml_with_defaults() {
        #[derive(Deserialize)]
        struct File {
            detector: DetectorConfig,
        }
        let f: File = toml::from_str(
            r#"
            [detector]
            floor_unregistered_per_hour = 150
            burst_budget = 300

            [detector.spam_rejections]
            min_events = 20

            [detector.sender_limits]
            action = "block"
            "#,
        )
        .unwrap();
        let c = f.detector;
        assert_eq!(c.floor_unregistered_per_hour, 150);
        assert_eq!(c.spam_rejections.min_events, 20);
        assert_eq!(c.spam_rejections.warn_rate, 0.05);
        assert_eq!(c.unregistered_domains.block_over_warn, 4.0);
        assert_eq!(c.sender_limits.action, crate::limits::LimitAction::Block);
        assert_eq!(c.sender_limits.messages_per_minute, 30);
        assert_eq!(c.counters_config().baseline_clip_min_unregistered, 150.0);
        c.validate().unwrap();
        assert!(toml::from_str::<File>("[detector]\nflor = 1\n").is_err());
        let bad = DetectorConfig {
            burst_budget: 50,
            ..DetectorConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("burst_budget"));
    }

    // Timing ---------------------------------------------------------------------------------

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
            tenant,
            connector: tenant * 10,
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
            let tr = detector.evaluate(now, tenant, &status, &snap);
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
}
