//! Holding a blocked tenant's queued unregistered and null-sender mail.

use super::*;

impl Abuse {
    /// Holds the tenant's queued unregistered and null-sender messages (they stay in the
    /// queue; `relayward queue release` or `delete` decides). Reads every queued envelope: a
    /// rare event's price.
    pub(super) async fn hold_unregistered(&self, tenant: TenantId, exclude: Option<&str>) -> usize {
        let Some(scheduler) = self.scheduler.get() else {
            return 0;
        };
        let exclude = exclude.map(str::to_string);
        let ids = self
            .spool
            .blocking(move |s| {
                let mut out = Vec::new();
                for id in s.scan()? {
                    if exclude.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    let Ok(env) = s.read_envelope(&id) else {
                        continue;
                    };
                    if env.tenant_id == Some(tenant.0)
                        && !env.held
                        && (env.sender_class != relayward_core::SenderClass::Registered
                            || env.header_from_mismatch)
                        && env.recipients.iter().any(|r| !r.status.is_final())
                    {
                        out.push(id);
                    }
                }
                Ok(out)
            })
            .await
            .unwrap_or_default();
        let mut held = 0;
        for id in ids {
            match scheduler.hold(id).await {
                Ok(()) => held += 1,
                Err(e) => tracing::debug!(queue_id = %id, error = %e, "not held"),
            }
        }
        held
    }
}
