//! The store's view: directory overlays of transitions the store does not have yet, and the
//! periodic sync of states, restrictions and limits from the store.

use super::*;

impl Abuse {
    // -----------------------------------------------------------------------------------------
    // The store's view

    /// Keeps in-memory transitions the store does not have yet in a freshly loaded directory;
    /// forgets those it has.
    pub fn overlay(&self, data: &mut DirectoryData) {
        let mut overrides = lock(&self.overrides);
        overrides.retain(|tenant, o| {
            if o.version.is_some_and(|v| data.version >= v) {
                return false;
            }
            if let Some(t) = data.tenants.iter_mut().find(|t| t.id == *tenant) {
                t.state = o.state;
            }
            true
        });
    }

    /// [`Abuse::overlay`] for the tenants of a change set.
    pub fn overlay_delta(&self, delta: &mut relayward_core::DirectoryDelta) {
        let mut overrides = lock(&self.overrides);
        overrides.retain(|tenant, o| {
            if o.version.is_some_and(|v| delta.version >= v) {
                return false;
            }
            if let Some(t) = delta
                .tenants
                .iter_mut()
                .filter_map(|p| p.tenant.as_mut())
                .find(|t| t.id == *tenant)
            {
                t.state = o.state;
            }
            true
        });
    }

    /// Applies the pending in-memory transitions to the current directory snapshot again (a
    /// reload that read the store just before a transition would otherwise undo it).
    pub fn reapply(&self) {
        let pending: Vec<(TenantId, TenantState)> = lock(&self.overrides)
            .iter()
            .map(|(t, o)| (*t, o.state))
            .collect();
        for (tenant, state) in pending {
            self.directory.set_tenant_state(tenant, state);
        }
    }

    /// Loads what the CLI (or another process) may have changed: restriction statuses, sender
    /// restrictions and per-tenant sender limits.
    pub async fn sync(&self) -> Result<()> {
        self.sync_tenants(None).await
    }

    /// [`Abuse::sync`], reading the restriction statuses of `tenants` only (those a directory
    /// change touched; `None`: every tenant's).
    pub async fn sync_tenants(&self, tenants: Option<&[TenantId]>) -> Result<()> {
        let now = self.now_ms();
        let statuses = match tenants {
            None => self.store.tenant_statuses().await?,
            Some(ids) => {
                let mut v = Vec::with_capacity(ids.len());
                for id in ids {
                    v.extend(self.store.tenant_status(*id).await?);
                }
                v
            }
        };
        let mut newly_blocked = Vec::new();
        {
            // Same lock order as `take`: statuses, then overrides.
            let mut map = self.statuses.write().unwrap_or_else(|e| e.into_inner());
            let overrides = lock(&self.overrides);
            for s in statuses {
                if overrides.contains_key(&s.tenant_id) {
                    continue;
                }
                let blocks = |st: TenantState| st.blocks_unregistered() || st.blocks_all();
                let before = map.insert(
                    s.tenant_id,
                    TenantStatus {
                        state: s.state,
                        since_ms: s.since_ms,
                        probation_until_ms: s.probation_until_ms,
                    },
                );
                // Blocked from elsewhere (the CLI): its queued unregistered mail waits too.
                if before.is_some_and(|b| !blocks(b.state)) && blocks(s.state) {
                    newly_blocked.push(s.tenant_id);
                }
            }
        }
        for tenant in newly_blocked {
            let me = self.me.clone();
            self.spawn(async move {
                if let Some(me) = me.upgrade() {
                    let held = me.hold_unregistered(tenant, None).await;
                    tracing::warn!(
                        tenant = tenant.0,
                        held,
                        "tenant blocked: queued unregistered-sender mail held"
                    );
                }
            });
        }

        let limits = self.store.tenant_sender_limits().await?;
        {
            let mut limited = lock(&self.limited_tenants);
            let mut now_limited = HashSet::new();
            for (tenant, json) in limits {
                match serde_json::from_str::<SenderLimits>(&json) {
                    Ok(l) => {
                        self.limiter.set_tenant_limits(tenant, Some(l));
                        now_limited.insert(tenant);
                    }
                    Err(e) => {
                        tracing::warn!(tenant = tenant.0, error = %e, "bad sender limits ignored")
                    }
                }
            }
            for gone in limited.difference(&now_limited) {
                self.limiter.set_tenant_limits(*gone, None);
            }
            *limited = now_limited;
        }

        let rows = self
            .store
            .list_sender_restrictions(None, now, Some(now - DAY_MS))
            .await?;
        for r in rows {
            let current = self
                .counters
                .sender_usage(now, r.tenant_id, &r.sender)
                .restriction;
            if r.standing(now) {
                lock(&self.known_restrictions).insert((r.tenant_id, r.sender.clone(), r.since_ms));
                if current.as_ref().is_some_and(|c| c.since_ms >= r.since_ms) {
                    continue;
                }
                let (Some(limit), Some(action)) = (enum_parse(&r.limit), enum_parse(&r.action))
                else {
                    tracing::warn!(
                        id = r.id,
                        "sender restriction with unknown limit or action ignored"
                    );
                    continue;
                };
                self.counters.set_sender_restriction(
                    r.tenant_id,
                    &r.sender,
                    Some(SenderRestriction {
                        since_ms: r.since_ms,
                        until_ms: r.until_ms,
                        limit,
                        action,
                        reason: r.reason.clone(),
                    }),
                );
            } else if r.lifted_at_ms.is_some()
                && current.as_ref().is_some_and(|c| c.since_ms <= r.since_ms)
            {
                tracing::info!(tenant = r.tenant_id.0, sender = %r.sender, "sender restriction lifted");
                self.counters
                    .set_sender_restriction(r.tenant_id, &r.sender, None);
            }
        }
        Ok(())
    }
}
