//! One delivery attempt of a message: routing, the SMTP transaction per destination, recording
//! each recipient's outcome, DSNs and throttling.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;

use relayward_core::TraceKind;

use crate::control::{
    self, delay_marker, finish_message, remove_message, store_dsn, trace_event, DeliveryError,
};
use crate::dsn::{self, DsnAction, DsnRecipient};
use crate::outbound::delivery::{OutboundMessage, RcptResult};
use crate::routing::Destination;
use crate::spool::{Envelope, QueueId, RecipientStatus, SpoolError};
use crate::throttle::{Admit, ThrottleState};

use super::state::Finish;
use super::{now_ms, Scheduler};

impl Scheduler {
    /// One delivery attempt of every pending recipient of `id`. Returns how it left the message
    /// and the destination slots it holds.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        id: QueueId,
        reserved: Option<Vec<String>>,
    ) -> (Finish, Option<Vec<String>>) {
        // Kept in memory since the 250 when there was room: no read back, no blocking thread.
        let loaded = match self.spool.cached(&id) {
            Some(message) => Ok(message),
            None => {
                self.spool
                    .blocking(move |s| Ok((s.read_envelope(&id)?, Arc::new(s.read_body(&id)?))))
                    .await
            }
        };
        let (mut env, body) = match loaded {
            Ok(x) => x,
            Err(SpoolError::NotFound(_)) => {
                return (Finish::Removed, reserved.or(Some(Vec::new())));
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read spooled message; retrying in a minute");
                return (
                    Finish::Due(now_ms() + 60_000, Vec::new()),
                    reserved.or(Some(Vec::new())),
                );
            }
        };
        let dests = self.destinations(&env);
        let reserved = match reserved {
            Some(r) => r,
            None => {
                let mut st = self.lock();
                if st.saturated(&dests, &|d| self.limit_of(d)).is_some() {
                    drop(st);
                    return (Finish::Park(dests), Some(Vec::new()));
                }
                if let Admit::At(at, _) = self.throttle.admit(&dests, now_ms()) {
                    drop(st);
                    return (Finish::Due(at, dests), Some(Vec::new()));
                }
                st.reserve(&dests);
                dests.clone()
            }
        };
        if env.held {
            return (Finish::Held(dests), Some(reserved));
        }
        let finish = self.deliver(&mut env, &body).await;
        (finish, Some(reserved))
    }

    /// Attempts the pending recipients, then persists and acts on the outcome.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        env: &mut Envelope,
        body: &Arc<Vec<u8>>,
    ) -> Finish {
        let id = env.queue_id;
        // A message whose recipients are held but that is not (an interrupted release).
        for r in &mut env.recipients {
            if r.status == RecipientStatus::Held {
                r.status = RecipientStatus::Queued;
            }
        }
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if !dsn::pending(r) {
                continue;
            }
            let dest = Destination::for_recipient(&self.config, env.tenant_id, &r.address);
            match groups.iter_mut().find(|(d, _)| *d == dest) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((dest, vec![i])),
            }
        }
        if groups.is_empty() {
            let spool = self.spool.clone();
            let _ = spool.blocking(move |s| remove_message(s, &id)).await;
            return Finish::Removed;
        }

        // Chosen now, not at acceptance: the tenant's standing may have changed meanwhile.
        let egress = crate::egress::choose(&self.config, env, self.egress_risk.as_deref());
        let mut results: Vec<(usize, RcptResult)> = Vec::new();
        // Recipient index -> the throttle its attempt put on the destination, for the trace.
        let mut throttled: HashMap<usize, ThrottleState> = HashMap::new();
        for (dest, idx) in &groups {
            let rcpts: Vec<&str> = idx
                .iter()
                .map(|&i| env.recipients[i].address.as_str())
                .collect();
            let msg = OutboundMessage::new(&env.sender, &rcpts, body, env.smtputf8);
            let outcome = self
                .outbound
                .deliver(dest, egress.as_ref(), &msg, &rcpts)
                .await;
            if let Some(state) = self.observe(dest, &outcome) {
                throttled.extend(idx.iter().map(|&i| (i, state.clone())));
            }
            results.extend(idx.iter().copied().zip(outcome));
        }

        let now = relayward_core::now();
        let t_ms = now_ms();
        let received_ms = env.received_at.saturating_mul(1000);
        let expires_ms = received_ms.saturating_add(self.config.max_lifetime.as_millis() as i64);
        let expires = expires_ms / 1000;
        let expired = t_ms >= expires_ms;
        let max_attempts = results
            .iter()
            .map(|(i, _)| env.recipients[*i].attempts + 1)
            .max()
            .unwrap_or(1);
        // Never later than the expiry, so that a message is bounced when its lifetime ends, not
        // up to one retry interval after.
        let next_ms = (t_ms + self.config.retry_delay(max_attempts).as_millis() as i64)
            .min(expires_ms.max(t_ms + 1000));
        let next_secs = (next_ms + 999) / 1000;

        let mut events = Vec::new();
        let mut failed: Vec<DsnRecipient> = Vec::new();
        let mut delayed: Vec<DsnRecipient> = Vec::new();
        let mut delivered: Vec<DsnRecipient> = Vec::new();
        for (i, result) in &results {
            let r = &mut env.recipients[*i];
            r.attempts += 1;
            r.last_reply = Some(result.reply().to_string());
            let entry =
                |action: DsnAction, status: &str, r: &crate::spool::Recipient| DsnRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    action,
                    status: status.to_string(),
                    remote_mta: result.remote().map(str::to_string),
                    diagnostic: Some(result.reply().to_string()),
                    last_attempt: now.0,
                    will_retry_until: (action == DsnAction::Delayed).then_some(expires),
                };
            match result {
                RcptResult::Delivered { reply, .. } => {
                    r.status = RecipientStatus::Delivered;
                    let status = dsn::status_of_reply(reply)
                        .filter(|s| s.starts_with('2'))
                        .unwrap_or_else(|| "2.0.0".into());
                    delivered.push(entry(DsnAction::Delivered, &status, r));
                }
                RcptResult::Failed { status, .. } => {
                    r.status = RecipientStatus::Bounced;
                    failed.push(entry(DsnAction::Failed, status, r));
                }
                RcptResult::Deferred { status, .. } => {
                    if expired {
                        r.status = RecipientStatus::Bounced;
                        let mut e = entry(DsnAction::Failed, "4.4.7", r);
                        if result.remote().is_none() {
                            e.diagnostic = Some(format!(
                                "delivery time expired; last error: {}",
                                result.reply()
                            ));
                        }
                        failed.push(e);
                    } else {
                        r.status = RecipientStatus::Deferred;
                        r.next_attempt_at = next_secs;
                        delayed.push(entry(DsnAction::Delayed, status, r));
                    }
                }
            }
        }
        for (i, result) in &results {
            let r = &env.recipients[*i];
            let mut ev = trace_event(TraceKind::Attempt, env, Some(&r.address));
            ev.reply = Some(result.reply().to_string());
            ev.detail = result.attempt_detail();
            if let Some(state) = throttled.get(i) {
                ev.detail = Some(match ev.detail.take() {
                    Some(d) => format!("{d}; {state}"),
                    None => state.to_string(),
                });
            }
            events.push(ev);
            let (kind, detail) = match (result, r.status) {
                (RcptResult::Delivered { remote, .. }, _) => {
                    (TraceKind::Delivered, Some(format!("remote host {remote}")))
                }
                (RcptResult::Failed { .. }, _) => (TraceKind::Bounced, None),
                (RcptResult::Deferred { .. }, RecipientStatus::Bounced) => (
                    TraceKind::Bounced,
                    Some("4.4.7 delivery time expired".to_string()),
                ),
                (RcptResult::Deferred { .. }, _) => (
                    TraceKind::Deferred,
                    Some(format!("next attempt in {}s", (next_ms - t_ms) / 1000)),
                ),
            };
            let mut ev = trace_event(kind, env, Some(&r.address));
            ev.reply = Some(result.reply().to_string());
            ev.detail = detail;
            events.push(ev);
        }

        // Delay notice: once per message, the first time an attempt fails after delay_warning
        // (the marker file, checked below, says whether it was sent already).
        let warn_delay = match self.config.delay_warning {
            Some(w) => !delayed.is_empty() && t_ms >= received_ms + w.as_millis() as i64,
            None => false,
        };
        if !warn_delay {
            delayed.clear();
        }

        let all_final = env.recipients.iter().all(|r| r.status.is_final());
        let notice_due = [&failed, &delayed, &delivered]
            .iter()
            .any(|entries| entries.iter().any(|e| control::notice_wanted(env, e)));
        if all_final && !notice_due && self.spool.in_journal(&id) {
            // The common end: nothing to store, and the journal records the removal without a
            // flush or a blocking call.
            if let Err(e) = self.spool.remove_finished(&id) {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery outcome; will retry");
                for ev in events {
                    self.events.trace(ev);
                }
                return Finish::Due(now_ms() + 60_000, Vec::new());
            }
            for ev in events {
                self.events.trace(ev);
            }
            return Finish::Removed;
        }
        let spool = self.spool.clone();
        let config = self.config.clone();
        let snapshot = env.clone();
        let body = body.clone();
        let persisted = spool
            .blocking(move |s| {
                let mut delayed = delayed;
                // DSNs first (stored, not yet sent), then the state they report on.
                let mut dsns = Vec::new();
                if !delayed.is_empty() && delay_marker(s.root(), &id).exists() {
                    delayed.clear();
                }
                for entries in [&failed, &delayed, &delivered] {
                    if entries.is_empty() {
                        continue;
                    }
                    match store_dsn(s, &config, &snapshot, &body, entries) {
                        Ok(Some(d)) => dsns.push((d, entries[0].action)),
                        Ok(None) => {}
                        Err(DeliveryError::Spool(e)) => return Err(e),
                        Err(e) => tracing::error!(queue_id = %id, error = %e, "DSN not built"),
                    }
                }
                if !delayed.is_empty() {
                    let marker = delay_marker(s.root(), &id);
                    if let Err(e) = fs::write(&marker, b"") {
                        tracing::warn!(path = %marker.display(), error = %e, "cannot record delay notice");
                    }
                }
                if all_final {
                    finish_message(s, &id)?;
                } else {
                    s.update_envelope(&id, &snapshot)?;
                }
                Ok(dsns)
            })
            .await;
        let dsns = match persisted {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery outcome; will retry");
                for ev in events {
                    self.events.trace(ev);
                }
                return Finish::Due(now_ms() + 60_000, Vec::new());
            }
        };
        for ev in events {
            self.events.trace(ev);
        }
        for ((dsn_id, to), action) in dsns {
            let mut ev = trace_event(TraceKind::DsnSent, env, Some(&to));
            ev.detail = Some(format!("dsn {dsn_id}: {}", action.as_str()));
            self.events.trace(ev);
            self.submit(dsn_id);
        }
        if all_final {
            Finish::Removed
        } else {
            Finish::Due(next_ms, self.destinations(env))
        }
    }

    /// Learns which provider answered for `dest`, and slows it down when it asked for that
    /// (a rate-limit or reputation reply). At most one halving per attempt.
    pub(super) fn observe(
        &self,
        dest: &Destination,
        outcome: &[RcptResult],
    ) -> Option<ThrottleState> {
        let key = dest.key();
        let classifier = relayward_policy::bounce::BounceClassifier::current();
        let mut host = None;
        for r in outcome {
            let Some(remote) = r.remote() else { continue };
            host = Some(remote);
            if matches!(r, RcptResult::Delivered { .. }) {
                continue;
            }
            if classifier
                .classify_reply(r.reply())
                .class
                .slows_destination()
            {
                return Some(self.throttle.slow_down(&key, remote, r.reply(), now_ms()));
            }
        }
        if let Some(host) = host {
            self.throttle.learn(&key, host);
        }
        None
    }
}
