//! Sizes, caps and the baseline's learning rates of the in-process counters.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// Lock shards; a power of two is not required.
    pub shards: usize,
    /// Tenant, connector and sender entries not updated for this long are dropped.
    pub idle_expiry_secs: u64,
    pub max_connectors_per_tenant: usize,
    /// Beyond this, a new sender evicts the tenant's least recently seen one.
    pub max_senders_per_tenant: usize,
    /// Weight of each completed hour in the baseline (0.05: about a day's memory).
    pub baseline_alpha: f64,
    /// An hour adds at most `max(floor, clip_factor × baseline)` to the unregistered and
    /// domain baselines, so a burst (or a slow ramp) cannot teach the detector that abuse is
    /// normal.
    pub baseline_clip_factor: f64,
    /// Rows of each top-k table (domains, addresses, source IPs).
    pub top_k: usize,
    /// Each top-k generation covers this long; the table reports one to two of them.
    pub top_k_period_secs: u64,
    /// Sample messages kept per tenant.
    pub samples: usize,
    /// Set from `[detector] floor_unregistered_per_hour`.
    #[serde(skip)]
    pub baseline_clip_min_unregistered: f64,
    /// Set from `[detector] floor_unregistered_domains_per_hour`.
    #[serde(skip)]
    pub baseline_clip_min_domains: f64,
}

impl Default for CountersConfig {
    fn default() -> Self {
        CountersConfig {
            shards: 64,
            idle_expiry_secs: 48 * 3600,
            max_connectors_per_tenant: 32,
            max_senders_per_tenant: 1000,
            baseline_alpha: 0.05,
            baseline_clip_factor: 3.0,
            top_k: 20,
            top_k_period_secs: 12 * 3600,
            samples: 16,
            baseline_clip_min_unregistered: 100.0,
            baseline_clip_min_domains: 5.0,
        }
    }
}
