//! Suppression lists in the running relay: the in-memory lists the SMTP listener and the policy
//! service check at RCPT (`relayward_policy::suppression`), kept up to the store's, and the
//! automatic additions: a remote's permanent hard-bounce reply to a delivery attempt puts the
//! recipient on its tenant's list for `[reputation] suppression_days`, and complaint intake
//! calls [`Suppressions::suppress`] (a complaint stands until removed).
//!
//! A suppression decided here is in force at once (before the store has it); one made through
//! the admin API of this process is brought in before the API answers; one made by the CLI or
//! another process within `directory_poll_ms` ([`Suppressions::refresh`], run by the directory
//! poll).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use relayward_core::{
    now, Suppression, SuppressionSource, TenantId, Timestamp, TraceEvent, TraceKind,
};
use relayward_policy::bounce::BounceClassifier;
use relayward_policy::suppression::{parse_address_key, SuppressionList};
use relayward_store::Store;
use tokio::sync::mpsc;

/// Who the store records as having made an automatic entry.
pub const RELAY_ACTOR: &str = "relay";

/// Hard bounces waiting for the store; past this many the oldest stays in memory only (it
/// still refuses until restart) and a warning is logged.
const PENDING_WRITES: usize = 65_536;

/// Expired entries are dropped from memory at most this often.
const PRUNE_EVERY_SECS: i64 = 60;

pub struct Suppressions {
    store: Arc<dyn Store>,
    list: Arc<SuppressionList>,
    /// `[reputation] suppression_days`.
    days: u32,
    writes: mpsc::Sender<Suppression>,
    refreshing: tokio::sync::Mutex<()>,
    last_prune: AtomicI64,
}

impl Suppressions {
    /// Must run inside a Tokio runtime: it starts the writer of automatic entries.
    pub fn new(store: Arc<dyn Store>, days: u32) -> Arc<Suppressions> {
        let (writes, rx) = mpsc::channel(PENDING_WRITES);
        tokio::spawn(write_entries(store.clone(), rx));
        Arc::new(Suppressions {
            store,
            list: Arc::new(SuppressionList::new()),
            days,
            writes,
            refreshing: tokio::sync::Mutex::new(()),
            last_prune: AtomicI64::new(0),
        })
    }

    /// The lists the SMTP path reads.
    pub fn list(&self) -> Arc<SuppressionList> {
        self.list.clone()
    }

    /// The expiry of an automatic entry made at `at`.
    fn expiry(&self, at: Timestamp) -> Option<Timestamp> {
        Some(at + i64::from(self.days) * 86_400)
    }

    /// Puts `address` on `tenant`'s list (`None`: the operator's global list): a hard bounce for
    /// `suppression_days`, a complaint or a manual entry until removed. In force at once, and in
    /// the store when this returns. Recorded as made by [`RELAY_ACTOR`].
    pub async fn suppress(
        &self,
        tenant: Option<TenantId>,
        address: &str,
        source: SuppressionSource,
        reason: &str,
    ) -> Result<Suppression> {
        let address = parse_address_key(address)
            .ok_or_else(|| anyhow!("cannot suppress {address:?}: not an email address"))?;
        let at = now();
        let entry = Suppression {
            tenant_id: tenant,
            address,
            source,
            reason: reason.to_string(),
            created_at: at,
            created_by: RELAY_ACTOR.to_string(),
            // Someone who called the mail spam did not ask to hear again in two weeks.
            expires_at: match source {
                SuppressionSource::Manual | SuppressionSource::Complaint => None,
                SuppressionSource::HardBounce => self.expiry(at),
            },
        };
        self.list.insert(&entry);
        let stored = self.store.add_suppression(&entry, RELAY_ACTOR).await?;
        tracing::info!(tenant = ?tenant.map(i64::from), recipient = %stored.address, source = %source,
            "recipient suppressed");
        Ok(stored)
    }

    /// A delivery-side trace event: a remote host's permanent reply that the bounce classifier
    /// calls hard suppresses the recipient for the message's tenant. A failure of the relay's
    /// own (no route, connection refused, expiry) says nothing about the address.
    pub fn delivery_event(&self, ev: &TraceEvent) {
        if ev.kind != TraceKind::Attempt
            || !ev
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with("remote host"))
        {
            return;
        }
        let (Some(tenant), Some(recipient), Some(reply)) =
            (ev.tenant_id, ev.recipient.as_deref(), ev.reply.as_deref())
        else {
            return;
        };
        let permanent = reply.starts_with('5');
        if !permanent
            || !BounceClassifier::current()
                .classify_reply(reply)
                .class
                .is_hard()
        {
            return;
        }
        let Some(address) = parse_address_key(recipient) else {
            return;
        };
        let at = now();
        let entry = Suppression {
            tenant_id: Some(tenant),
            address,
            source: SuppressionSource::HardBounce,
            reason: reply.to_string(),
            created_at: at,
            created_by: RELAY_ACTOR.to_string(),
            expires_at: self.expiry(at),
        };
        self.list.insert(&entry);
        tracing::info!(tenant = tenant.0, recipient = %entry.address, reply,
            "recipient suppressed after a hard bounce");
        if self.writes.try_send(entry).is_err() {
            tracing::warn!(
                tenant = tenant.0,
                recipient,
                "suppression not stored (writer busy or stopped); in force until restart"
            );
        }
    }

    /// Brings the in-memory lists up to the store's (changes made by the admin API, the CLI or
    /// another relay) and drops expired entries from memory once a minute.
    pub async fn refresh(&self) {
        let _one = self.refreshing.lock().await;
        let held = self.list.version();
        let at = now();
        match self.store.suppression_version().await {
            Ok(v) if v == held => {}
            Ok(_) => match self.store.suppression_updates(held, at).await {
                Ok(updates) => {
                    self.list.apply(&updates);
                    tracing::debug!(
                        version = updates.version,
                        changed = updates.changed.len(),
                        removed = updates.removed.len(),
                        "suppression lists reloaded"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "suppression lists reload failed"),
            },
            Err(e) => tracing::warn!(error = %e, "suppression version check failed"),
        }
        if at.0 - self.last_prune.load(Ordering::Relaxed) >= PRUNE_EVERY_SECS {
            self.last_prune.store(at.0, Ordering::Relaxed);
            self.list.prune(at);
        }
    }
}

/// Stores automatic entries one at a time, off the delivery path.
async fn write_entries(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Suppression>) {
    while let Some(entry) = rx.recv().await {
        if let Err(e) = store.add_suppression(&entry, RELAY_ACTOR).await {
            tracing::warn!(error = %e, recipient = %entry.address,
                "suppression not stored; in force until restart");
        }
    }
}
