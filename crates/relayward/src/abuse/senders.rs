//! Per-sender limits: the verdict for a sender, restrictions recorded and lifted.

use super::*;

impl Abuse {
    // -----------------------------------------------------------------------------------------
    // Sender limits

    /// The per-sender limits' verdict for one more message from `sender`, without counting it
    /// or restricting anyone (for `diagnose`).
    pub fn peek_sender(&self, tenant: TenantId, sender: &Address) -> Result<(), Reply> {
        match self.limiter.check_sender(self.now_ms(), tenant, sender, 1) {
            SenderDecision::Allow => Ok(()),
            SenderDecision::Restrict { .. } => Err(reply::SENDER_RESTRICTED),
            SenderDecision::Alert { .. } => Ok(()),
        }
    }

    /// The suppression lists (checked at RCPT, kept up to the store's by the directory poll).
    pub fn suppressions(&self) -> &Arc<crate::suppression::Suppressions> {
        &self.suppressions
    }

    /// Puts `address` on `tenant`'s suppression list (`None`: the global list); see
    /// [`crate::suppression::Suppressions::suppress`].
    pub async fn suppress(
        &self,
        tenant: Option<TenantId>,
        address: &str,
        source: relayward_core::SuppressionSource,
        reason: &str,
    ) -> Result<relayward_core::Suppression> {
        self.suppressions
            .suppress(tenant, address, source, reason)
            .await
    }

    /// The live directory snapshot.
    pub fn directory(&self) -> Arc<relayward_policy::Directory> {
        self.directory.current()
    }

    pub(super) fn check_sender(
        &self,
        tenant: TenantId,
        sender: &Address,
        recipients: usize,
    ) -> Result<(), Reply> {
        let now = self.now_ms();
        match self.limiter.check_sender(now, tenant, sender, recipients) {
            SenderDecision::Allow => Ok(()),
            SenderDecision::Restrict { .. } => {
                let key = sender_key(sender);
                if let Some(r) = self.counters.sender_usage(now, tenant, &key).restriction {
                    let new =
                        lock(&self.known_restrictions).insert((tenant, key.clone(), r.since_ms));
                    if new {
                        self.restricted(tenant, key, r);
                    }
                }
                Err(reply::SENDER_RESTRICTED)
            }
            SenderDecision::Alert {
                limit,
                threshold,
                observed,
                reason,
            } => {
                let dir = self.directory.current();
                if let Some(t) = dir.tenant(tenant) {
                    let key = sender_key(sender);
                    let what = format!(
                        "At {}, sender {key} of tenant {} went over its limit: {reason}. The tenant's action for senders over their limits is `alert`: the mail flows.",
                        time_ms(now),
                        t.name
                    );
                    let alert = self.alert(
                        alerts::SENDING_LIMIT_EXCEEDED,
                        format!("sender-limit-{tenant}-{key}-{now}"),
                        t,
                        &what,
                        "No mail was refused.",
                        &[],
                        &["Check the device or application that sends as this address.".into()],
                        json!({"sender": key, "limit": limit, "threshold": threshold, "observed": observed}),
                    );
                    let me = self.me.clone();
                    self.spawn(async move {
                        if let Some(me) = me.upgrade() {
                            me.alerts.send(&alert).await;
                        }
                    });
                }
                Ok(())
            }
        }
    }

    /// A new restriction: into the store (it survives restarts), then the alert.
    pub(super) fn restricted(&self, tenant: TenantId, key: String, r: SenderRestriction) {
        tracing::warn!(tenant = tenant.0, sender = %key, reason = %r.reason, "sender restricted");
        let me = self.me.clone();
        self.spawn(async move {
            let Some(me) = me.upgrade() else { return };
            let record = NewSenderRestriction {
                tenant_id: tenant,
                sender: key.clone(),
                since_ms: r.since_ms,
                until_ms: r.until_ms,
                limit: enum_text(&r.limit),
                action: enum_text(&r.action),
                reason: r.reason.clone(),
            };
            let id = match me.store.add_sender_restriction(&record, "detector").await {
                Ok(id) => {
                    if let Ok(v) = me.store.directory_version().await {
                        me.announce(v);
                    }
                    id
                }
                Err(e) => {
                    tracing::error!(sender = %key, error = %e, "sender restriction not stored");
                    0
                }
            };
            let dir = me.directory.current();
            let Some(t) = dir.tenant(tenant) else { return };
            let until = match r.until_ms {
                Some(u) => format!("until {}", time_ms(u)),
                None => "until an administrator lifts the restriction".into(),
            };
            let what = format!(
                "At {}, sender {key} of tenant {} went over its outbound limit ({}): {}. It is refused with \"{}\" {until}.",
                time_ms(r.since_ms),
                t.name,
                r.limit,
                r.reason,
                reply::SENDER_RESTRICTED
            );
            let steps = vec![
                "Check the device, application or mailbox that sends as this address: a compromised account or a misconfigured application is the usual cause.".to_string(),
                format!(
                    "Once it is fixed, an administrator lifts the restriction: `relayward sender unrestrict {key} --tenant {}`.",
                    t.name
                ),
            ];
            let alert = me.alert(
                alerts::USER_RESTRICTED,
                format!("sender-restriction-{id}-{tenant}-{}", r.since_ms),
                t,
                &what,
                "Other senders of the tenant are not affected.",
                &[],
                &steps,
                json!({
                    "sender": key,
                    "restriction": {
                        "id": id,
                        "since_ms": r.since_ms,
                        "until_ms": r.until_ms,
                        "limit": r.limit,
                        "action": r.action,
                        "reason": r.reason,
                    },
                }),
            );
            me.alerts.send(&alert).await;
        });
    }
}
