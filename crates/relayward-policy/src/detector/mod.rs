//! The abuse detector: rules over a tenant's [`Snapshot`](crate::counters::Snapshot) and the
//! restriction-state machine (DESIGN.md "Restriction states"), as pure functions of the time,
//! the tenant's current state and the counters. The caller stores the transitions, their
//! [`Evidence`](crate::evidence::Evidence) and tells every node.
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
//!
//! `config` holds the thresholds and their validation, `rules` the signals read off a snapshot
//! and the shape of the tenant's unregistered mail, `state` the restriction-state machine.

mod config;
mod rules;
mod state;

pub use config::{
    BurstRule, DetectorConfig, DetectorConfigError, DkimVerifyConfig, DomainsRule, ForwardingRule,
    MismatchRule, ShareRule, SpamRule, SpamVerdictRule, VolumeRule,
};
pub use rules::{Level, Rule, Shape, Signal, Trait, Window};
pub use state::{BlockScope, Cause, TenantStatus, Transition, TransitionError};

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
}

#[cfg(test)]
mod simulate;
#[cfg(test)]
mod tests;
