//! `[detector]` in relayward.toml: the rules' thresholds, their defaults and validation.

use serde::{Deserialize, Serialize};

use crate::counters::CountersConfig;
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

/// Why a `[detector]` section is refused; the text names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorConfigError {
    /// A factor or share outside (0, 1] (`[0, 1]` for `forwarding.new_connector_factor`).
    #[error("detector.{key} must be within (0, 1], not {value}")]
    NotAShare { key: &'static str, value: f64 },
    #[error("detector.hysteresis must be within [0, 1), not {0}")]
    Hysteresis(f64),
    /// A baseline-relative rule whose factors cannot order warn below block.
    #[error("detector.{rule}: warn_factor must be > 0 and block_over_warn >= 1")]
    RelativeRule { rule: &'static str },
    /// A rate or share rule whose warn level is not positive or lies above its block level.
    #[error("detector.{rule}: need 0 < warn <= block, got {warn} and {block}")]
    WarnAboveBlock {
        rule: &'static str,
        warn: f64,
        block: f64,
    },
    #[error("detector.forwarding.max_allowance must be >= 1, not {0}")]
    MaxAllowance(f64),
    #[error("detector.forwarding.max_recipients_per_message must be >= 1")]
    MaxRecipientsPerMessage,
    #[error("detector.forwarding.min_traits must be 1, 2 or 3, not {0}")]
    MinTraits(u32),
    #[error(
        "detector.burst_budget ({budget}) must exceed floor_unregistered_per_hour ({floor}): \
         a tenant within the floor may send it all at once"
    )]
    BurstBudgetWithinFloor { budget: u64, floor: u64 },
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

    /// Reject values that would make the detector meaningless; the error names the key.
    pub fn validate(&self) -> Result<(), DetectorConfigError> {
        let in_unit = |key: &'static str, value: f64, lo_open: bool| {
            let ok = if lo_open { value > 0.0 } else { value >= 0.0 } && value <= 1.0;
            if ok {
                Ok(())
            } else {
                Err(DetectorConfigError::NotAShare { key, value })
            }
        };
        in_unit("probation_factor", self.probation_factor, true)?;
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(DetectorConfigError::Hysteresis(self.hysteresis));
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
                return Err(DetectorConfigError::RelativeRule { rule: name });
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
                return Err(DetectorConfigError::WarnAboveBlock {
                    rule: name,
                    warn,
                    block,
                });
            }
        }
        let fw = &self.forwarding;
        if fw.max_allowance < 1.0 {
            return Err(DetectorConfigError::MaxAllowance(fw.max_allowance));
        }
        in_unit(
            "forwarding.known_recipients_full",
            fw.known_recipients_full,
            true,
        )?;
        if fw.max_recipients_per_message < 1.0 {
            return Err(DetectorConfigError::MaxRecipientsPerMessage);
        }
        if !(1..=3).contains(&fw.min_traits) {
            return Err(DetectorConfigError::MinTraits(fw.min_traits));
        }
        in_unit(
            "forwarding.new_connector_factor",
            fw.new_connector_factor,
            false,
        )?;
        if self.burst_budget <= self.floor_unregistered_per_hour {
            return Err(DetectorConfigError::BurstBudgetWithinFloor {
                budget: self.burst_budget,
                floor: self.floor_unregistered_per_hour,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = bad.validate().unwrap_err();
        assert_eq!(
            e,
            DetectorConfigError::BurstBudgetWithinFloor {
                budget: 50,
                floor: 100
            }
        );
        assert_eq!(
            e.to_string(),
            "detector.burst_budget (50) must exceed floor_unregistered_per_hour (100): a tenant \
             within the floor may send it all at once"
        );
        let bad = DetectorConfig {
            probation_factor: 1.5,
            ..DetectorConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "detector.probation_factor must be within (0, 1], not 1.5"
        );
    }
}
