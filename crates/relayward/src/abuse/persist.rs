//! After a transition, on the worker: the state, transition row and evidence written to the
//! store (retried), the tenant's unregistered mail held, the alerts sent.

use super::*;

impl Abuse {
    // -----------------------------------------------------------------------------------------
    // After a transition (the worker)

    pub(super) async fn persist(&self, job: Job) {
        let Job {
            transition: t,
            mut evidence,
            exclude,
        } = job;
        evidence.connector_changes = self.connector_changes(t.tenant, t.at_ms).await;
        let evidence_json = serde_json::to_string(&evidence).unwrap_or_else(|_| "{}".into());
        let record = NewTransition {
            tenant_id: t.tenant,
            at_ms: t.at_ms,
            from: t.from,
            to: t.to,
            cause: "detector".into(),
            summary: t.summary.clone(),
            probation_until_ms: t.probation_until_ms,
            evidence: evidence_json,
            attestation: None,
        };
        // Kept on disk since it was made (Abuse::pending): while the store is unreachable this
        // keeps trying (the tenant's state holds in memory meanwhile), and a restart picks it
        // up; it leaves the file once the store has it (or has another in its place).
        let mut delay = Duration::from_millis(200);
        let mut recorded = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.store.record_transition(&record, "detector").await {
                Ok(r) => {
                    recorded = Some(r);
                    break;
                }
                Err(StoreError::Conflict(why)) => {
                    // Someone else (an operator, another node) moved the tenant meanwhile: the
                    // store wins.
                    tracing::warn!(tenant = t.tenant.0, %why, "detector transition superseded");
                    self.done_pending();
                    lock(&self.overrides).remove(&t.tenant);
                    if let Err(e) = self.sync().await {
                        tracing::warn!(error = %e, "detector state reload failed");
                    }
                    return;
                }
                Err(e @ StoreError::Unavailable(_)) => {
                    if attempt == 1 {
                        tracing::error!(tenant = t.tenant.0, error = %e, "store unreachable: transition kept on disk, retried until it answers");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) if attempt < 6 => {
                    tracing::error!(tenant = t.tenant.0, attempt, error = %e, "cannot record transition");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(tenant = t.tenant.0, error = %e, "transition not recorded: applied in memory only");
                    break;
                }
            }
        }
        self.done_pending();
        let Some((transition_id, version)) = recorded else {
            // Still applied in memory; the next restart starts from the store's state.
            return;
        };
        self.announce(version);
        let connectors = self.store.list_connectors(Some(t.tenant)).await.ok();
        let names: HashMap<ConnectorId, String> = connectors
            .iter()
            .flatten()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        if let Some(o) = lock(&self.overrides).get_mut(&t.tenant) {
            if o.state == t.to {
                o.version = Some(version);
            }
        }
        let held = if t.to.blocks_unregistered() || t.to.blocks_all() {
            self.hold_unregistered(t.tenant, exclude.as_deref()).await
        } else {
            0
        };
        if held > 0 {
            tracing::warn!(
                tenant = t.tenant.0,
                held,
                "queued unregistered-sender mail held"
            );
        }
        for alert in self.transition_alerts(&t, transition_id, &evidence, held, &names) {
            let me = self.me.clone();
            self.spawn(async move {
                if let Some(me) = me.upgrade() {
                    me.alerts.send(&alert).await;
                }
            });
        }
    }

    /// The oldest kept transition (the one the worker just finished) leaves the file.
    fn done_pending(&self) {
        if let Err(e) = self.pending.pop_front() {
            tracing::error!(error = %e, "transition kept on disk not removed");
        }
    }

    /// The tenant's connector changes of the 7 days before `at_ms`, from the audit log.
    pub(super) async fn connector_changes(
        &self,
        tenant: TenantId,
        at_ms: i64,
    ) -> Vec<ConnectorChange> {
        let since = at_ms.div_euclid(1000) - relayward_policy::connector_audit::RECENT_SECS;
        match self
            .store
            .connector_changes(tenant, relayward_core::Timestamp(since))
            .await
        {
            Ok(entries) => entries
                .into_iter()
                .map(|e| ConnectorChange {
                    // 0: a change recorded before the audit log kept connector ids, to a
                    // connector deleted since.
                    connector: e.connector_id.unwrap_or(ConnectorId(0)),
                    at_ms: e.at.0.saturating_mul(1000),
                    actor: e.actor,
                    action: e.action,
                    detail: e.detail,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "connector changes not read for the evidence");
                Vec::new()
            }
        }
    }
}
