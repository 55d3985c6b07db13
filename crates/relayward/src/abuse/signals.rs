//! Signals in: accepted messages, DKIM results, scan verdicts, refusals and delivery
//! outcomes are counted; each tick evaluates the tenants and takes the detector's transitions
//! (the in-memory state changes at once, the store and the alerts follow on the worker).

use super::*;

impl Abuse {
    // -----------------------------------------------------------------------------------------
    // Signals in

    /// An accepted message, durable in the spool: count it and evaluate its tenant. Returns
    /// true when the message must be held rather than delivered (its tenant is blocked for
    /// its sender class: it raced the block, or it caused it).
    pub fn accepted(&self, m: &AcceptedMessage, queue_id: &str) -> bool {
        let now = self.now_ms();
        let dir = self.directory.current();
        let external = m
            .recipients
            .iter()
            .filter(|r| !dir.is_registered(m.tenant, &r.domain))
            .count();
        let snap = self.counters.record(
            now,
            &MessageEvent {
                tenant: m.tenant,
                connector: m.connector,
                class: m.class,
                sender: m.sender.as_ref(),
                mismatch: m.mismatch,
                header_from_domain: m.header_from_domain.as_deref(),
                recipients: &m.recipients,
                external_recipients: external as u32,
                client_ip: Some(m.client_ip),
                queue_id: Some(queue_id),
                message_id: m.message_id.as_deref(),
            },
        );
        self.consider(now, m.tenant, &snap, Some(queue_id));
        let effective = relayward_policy::counters::effective_class(m.class, m.mismatch);
        if effective != SenderClass::Registered {
            self.check_dkim(m);
        }
        let state = self.status(m.tenant).state;
        state.blocks_all() || (effective != SenderClass::Registered && state.blocks_unregistered())
    }

    /// Verifies a suspect message's DKIM signatures off the SMTP path, or counts it as not
    /// verified at once when it has none (or the queue is full).
    pub(super) fn check_dkim(&self, m: &AcceptedMessage) {
        // The domain the message was counted under: P2 of a mismatch, else P1.
        let counted = if m.mismatch {
            m.header_from_domain.clone()
        } else {
            m.sender.as_ref().map(|a| a.domain.to_ascii_lowercase())
        };
        let (tenant, connector) = (m.tenant, m.connector);
        match (&self.dkim, &m.dkim_data, &m.header_from_domain) {
            (Some(check), Some(data), Some(from)) if check.reserve() => {
                let check = check.clone();
                let data = data.clone();
                let from = from.clone();
                let me = self.me.clone();
                self.spawn(async move {
                    let pass = check.verify(&data, &from).await;
                    if let Some(abuse) = me.upgrade() {
                        let domain = counted.filter(|c| dkim_check::aligned(&from, c));
                        abuse.dkim_result(tenant, connector, pass, domain.as_deref());
                    }
                });
            }
            _ => self.dkim_result(tenant, connector, false, None),
        }
    }

    /// The DKIM verdict on an accepted suspect message.
    pub fn dkim_result(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        pass: bool,
        domain: Option<&str>,
    ) {
        let now = self.now_ms();
        let snap = self.counters.record_dkim(
            now,
            &DkimEvent {
                tenant,
                connector: Some(connector),
                pass,
                domain,
            },
        );
        // A failure changes no rule's input (the shares count unverified mail as failing
        // already): only a pass is worth evaluating.
        if pass {
            self.consider(now, tenant, &snap, None);
        }
    }

    /// The content scanner's verdict on a message of `tenant` (spam: it was refused, or
    /// marked).
    pub fn scan_verdict(&self, tenant: TenantId, connector: ConnectorId, spam: bool) {
        let now = self.now_ms();
        let snap = self
            .counters
            .record_scan(now, tenant, Some(connector), spam);
        self.consider(now, tenant, &snap, None);
    }

    /// A message refused because of its tenant's restriction state, for the counts and the
    /// evidence.
    pub fn refused(&self, tenant: TenantId, connector: Option<ConnectorId>) {
        self.counters
            .record_refused(self.now_ms(), tenant, connector);
    }

    /// A delivery-side trace event: each attempt's remote reply feeds the tenant's counters.
    pub fn delivery_event(&self, ev: &TraceEvent) {
        self.reputation_outcome(ev);
        self.suppressions.delivery_event(ev);
        if ev.kind != TraceKind::Attempt {
            return;
        }
        // Only what a remote server said: a local failure (no route, refused connection) is
        // no verdict on the tenant's mail.
        if !ev
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("remote host"))
        {
            return;
        }
        let (Some(tenant), Some(reply)) = (ev.tenant_id, ev.reply.as_deref()) else {
            return;
        };
        let Some((code, text)) = split_reply(reply) else {
            return;
        };
        let class = classify_remote_reply(code, "", text);
        let sender = ev
            .sender
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| Address::parse(s, true).ok());
        let now = self.now_ms();
        let snap = self.counters.record_remote_reply(
            now,
            &RemoteReplyEvent {
                tenant,
                connector: ev.connector_id,
                sender: sender.as_ref(),
                class,
                queue_id: ev.queue_id.as_deref(),
                reply: Some(reply),
            },
        );
        self.consider(now, tenant, &snap, None);
    }

    /// Re-evaluates tenants that leave a state with time rather than traffic (warned,
    /// probation), and drops idle counters once a minute.
    pub fn tick(&self) {
        let now = self.now_ms();
        let waiting: Vec<TenantId> = self
            .statuses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| matches!(s.state, TenantState::Warned | TenantState::Probation))
            .map(|(t, _)| *t)
            .collect();
        for tenant in waiting {
            let snap = self.counters.snapshot(now, tenant);
            self.consider(now, tenant, &snap, None);
        }
        if now - self.last_expire_ms.load(Ordering::Relaxed) >= 60_000 {
            self.last_expire_ms.store(now, Ordering::Relaxed);
            self.counters.expire(now);
            self.reputation_tick();
        }
        self.reputation_write_tick();
    }

    pub(super) fn consider(
        &self,
        now: i64,
        tenant: TenantId,
        snap: &Snapshot,
        exclude: Option<&str>,
    ) {
        let seen = self.status(tenant);
        // The connector's age: when it was created or last changed (the directory has it).
        let mut snap = *snap;
        snap.connector_changed_ms = snap.connector.and_then(|c| {
            self.directory
                .current()
                .connector(c.connector)
                .map(|c| c.updated_at.max(c.created_at).0 * 1000)
        });
        metrics::counter!("relayward_detector_evaluations_total").increment(1);
        if let Some(t) = self.detector.evaluate(now, tenant, &seen, &snap) {
            let rule = t.signals.first().map_or("none", |s| s.rule.as_str());
            metrics::counter!(
                "relayward_detector_transitions_total",
                "to" => t.to.as_str(),
                "rule" => rule
            )
            .increment(1);
            self.take(t, seen, exclude);
        }
    }

    /// Applies a detector transition: in memory at once, then (in order) in the store.
    pub(super) fn take(&self, t: Transition, seen: TenantStatus, exclude: Option<&str>) {
        {
            let mut statuses = self.statuses.write().unwrap_or_else(|e| e.into_inner());
            let current = statuses.get(&t.tenant).copied().unwrap_or(seen);
            if current != seen {
                return; // another message moved the tenant first
            }
            statuses.insert(t.tenant, seen.apply(&t));
            lock(&self.overrides).insert(
                t.tenant,
                Override {
                    state: t.to,
                    version: None,
                },
            );
            self.directory.set_tenant_state(t.tenant, t.to);
            tracing::warn!(
                tenant = t.tenant.0,
                from = %t.from,
                to = %t.to,
                summary = %t.summary,
                "abuse detector transition"
            );
            let evidence = Evidence::new(&t, self.counters.observations(t.at_ms, t.tenant));
            self.tasks.start();
            let job = Job {
                transition: t,
                evidence,
                exclude: exclude.map(str::to_string),
            };
            // On disk until the store has it (Abuse::pending).
            if let Err(e) = self.pending.append(&[&job]) {
                tracing::error!(error = %e, "transition not kept on disk");
            }
            if self.jobs.send(job).is_err() {
                self.tasks.done();
            }
        }
    }
}
