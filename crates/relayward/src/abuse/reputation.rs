//! The tenant's sending reputation in the relay: delivery outcomes and complaints feed the
//! rates (relayward_policy::reputation), and a level crossing is acted on here: an alert at
//! `warn`, high-risk routing from `act` on, and a block from unregistered domains at `block`.

use relayward_core::{TenantId, TenantState, TraceEvent, TraceKind};
use relayward_policy::bounce::BounceClassifier;
use relayward_policy::detector::{Cause, Transition};
use std::sync::atomic::Ordering;

use relayward_policy::counters::HOUR_MS;
use relayward_policy::reputation::{
    LevelChange, Outcome, Reputation, ReputationLevel, ReputationStatus, WINDOW_HOURS,
};
use relayward_store::Store;

use crate::config::Config;
use serde_json::json;

use super::{alerts, Abuse};

/// How often counted outcomes are written to the store.
const WRITE_EVERY_MS: i64 = 10_000;

/// A tenant's rates from the store alone (the CLI without a running relay): what the relays
/// wrote, which is at most `WRITE_EVERY_MS` behind.
pub async fn reputation_from_store(
    store: &dyn Store,
    config: &Config,
    tenant: TenantId,
    now_ms: i64,
) -> anyhow::Result<ReputationStatus> {
    let rep = Reputation::new(config.reputation.clone());
    let from = now_ms.div_euclid(HOUR_MS) - WINDOW_HOURS + 1;
    rep.load(&store.reputation_hours(Some(tenant), from).await?);
    Ok(rep.status(tenant, now_ms))
}

impl Abuse {
    /// Loads the counts of the last 7 days from the store (at start): the rates and levels go on
    /// where they were.
    pub async fn load_reputation(&self) -> anyhow::Result<()> {
        let now = self.now_ms();
        let from = now.div_euclid(HOUR_MS) - WINDOW_HOURS + 1;
        let rows = self.store.reputation_hours(None, from).await?;
        self.reputation.load(&rows);
        self.reputation.settle(now);
        self.last_reputation_write.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the outcomes counted since the last write; kept for the next one when the store
    /// does not take them.
    pub async fn write_reputation(&self) {
        let rows = self.reputation.take_unwritten();
        if rows.is_empty() {
            return;
        }
        let keep_from = self.now_ms().div_euclid(HOUR_MS) - WINDOW_HOURS;
        if let Err(e) = self.store.add_reputation_hours(&rows, keep_from).await {
            tracing::warn!(error = %e, rows = rows.len(), "reputation counts not written; retrying");
            self.reputation.restore_unwritten(rows);
        }
    }

    /// A delivery-side trace event: a recipient's final outcome counts towards the tenant's
    /// bounce rate (a delivery, or a hard bounce the remote server gave).
    pub(super) fn reputation_outcome(&self, ev: &TraceEvent) {
        let Some(tenant) = ev.tenant_id else { return };
        let outcome = match ev.kind {
            TraceKind::Delivered => Outcome::Delivered,
            // A bounce the relay made itself (expiry, no route) is no verdict on the address.
            TraceKind::Bounced if ev.detail.is_none() => {
                let Some(reply) = ev.reply.as_deref() else {
                    return;
                };
                if !BounceClassifier::current()
                    .classify_reply(reply)
                    .class
                    .is_hard()
                {
                    return;
                }
                Outcome::HardBounce
            }
            _ => return,
        };
        let now = self.now_ms();
        if let Some(change) = self.reputation.record(tenant, now, outcome) {
            self.reputation_changed(now, change);
        }
    }

    /// A hard bounce that came back later as a DSN (mail a receiver first accepted).
    pub fn returned_hard_bounce(&self, tenant: TenantId) {
        let now = self.now_ms();
        if let Some(change) = self.reputation.record(tenant, now, Outcome::HardBounce) {
            self.reputation_changed(now, change);
        }
    }

    /// A spam complaint (a feedback report) about a message of `tenant`.
    pub fn complaint(&self, tenant: TenantId) {
        let now = self.now_ms();
        metrics::counter!("relayward_complaints_total").increment(1);
        if let Some(change) = self.reputation.record(tenant, now, Outcome::Complaint) {
            self.reputation_changed(now, change);
        }
    }

    /// The tenant's rates and level now.
    pub fn reputation_status(&self, tenant: TenantId) -> ReputationStatus {
        self.reputation.status(tenant, self.now_ms())
    }

    /// Whether the tenant's reputation alone sends its mail through the high-risk pool.
    pub(super) fn reputation_high_risk(&self, tenant: TenantId) -> bool {
        self.reputation.level(tenant) >= ReputationLevel::Act
    }

    /// Rates fall as hours leave the windows (called by the detector's tick, once a minute).
    pub(super) fn reputation_tick(&self) {
        let now = self.now_ms();
        for change in self.reputation.refresh(now) {
            self.reputation_changed(now, change);
        }
    }

    /// Writes the counts every `WRITE_EVERY_MS` (called by every detector tick).
    pub(super) fn reputation_write_tick(&self) {
        let now = self.now_ms();
        let last = self.last_reputation_write.load(Ordering::Relaxed);
        if now - last < WRITE_EVERY_MS
            || self
                .last_reputation_write
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let me = self.me.clone();
        self.spawn(async move {
            if let Some(me) = me.upgrade() {
                me.write_reputation().await;
            }
        });
    }

    fn reputation_changed(&self, now: i64, change: LevelChange) {
        tracing::warn!(
            tenant = change.tenant.0,
            from = change.from.as_str(),
            to = change.to.as_str(),
            reasons = %change.status.reasons.join("; "),
            "tenant reputation level changed"
        );
        if change.to <= change.from {
            return;
        }
        if change.to >= ReputationLevel::Warn && change.from < ReputationLevel::Act {
            self.reputation_alert(now, &change);
        }
        if change.to == ReputationLevel::Block {
            self.reputation_block(now, &change);
        }
    }

    /// Blocks the tenant from unregistered domains, the rates as the evidence's signals.
    fn reputation_block(&self, now: i64, change: &LevelChange) {
        let seen = self.status(change.tenant);
        if !matches!(
            seen.state,
            TenantState::Active | TenantState::Warned | TenantState::Probation
        ) {
            return;
        }
        let signals = self.reputation.signals(&change.status);
        let summary = format!("reputation: {}", change.status.reasons.join("; "));
        metrics::counter!(
            "relayward_detector_transitions_total",
            "to" => TenantState::BlockedUnregistered.as_str(),
            "rule" => signals.first().map_or("none", |s| s.rule.as_str())
        )
        .increment(1);
        let t = Transition {
            tenant: change.tenant,
            at_ms: now,
            from: seen.state,
            to: TenantState::BlockedUnregistered,
            cause: Cause::Detector,
            signals,
            probation_until_ms: None,
            summary,
            shape: None,
        };
        self.take(t, seen, None);
    }

    fn reputation_alert(&self, now: i64, change: &LevelChange) {
        let dir = self.directory.current();
        let Some(tenant) = dir.tenant(change.tenant) else {
            return;
        };
        let effect = match change.to {
            ReputationLevel::Warn => "Nothing changes yet: mail flows as before. Above the act level the tenant's mail leaves from the relay's high-risk addresses; above the block level the tenant is blocked from sending from unregistered domains.".to_string(),
            ReputationLevel::Act => "The tenant's mail now leaves from the relay's high-risk addresses. Above the block level the tenant is blocked from sending from unregistered domains.".to_string(),
            _ => format!(
                "Mail from unregistered domains and from the null sender is refused with \"{}\".",
                relayward_core::reply::BLOCKED_UNREGISTERED
            ),
        };
        let what = format!(
            "The bounce or complaint rate of tenant {} reached the {} level: {}.",
            tenant.name,
            change.to.as_str(),
            change.status.reasons.join("; ")
        );
        let steps = vec![
            "Remove addresses that bounce from your lists (relayward suppresses each hard-bounced recipient for you; `relayward suppression list` shows them).".to_string(),
            "Send only to recipients who asked for your mail, and honour unsubscribe requests at once.".to_string(),
            "Check that no server or account of yours sends mail you do not know about.".to_string(),
        ];
        let alert = self.alert(
            alerts::TENANT_REPUTATION,
            format!(
                "reputation-{}-{}-{}",
                change.tenant,
                change.to.as_str(),
                now / 3_600_000
            ),
            tenant,
            &what,
            &effect,
            &change.status.reasons,
            &steps,
            json!({ "reputation": change.status, "level": change.to }),
        );
        let me = self.me.clone();
        self.spawn(async move {
            if let Some(me) = me.upgrade() {
                me.alerts.send(&alert).await;
            }
        });
    }
}
