//! The accept pipeline: an accepted message is rewritten (SRS, DKIM) and scanned where
//! configured, written to the spool and flushed with its group (the 250 waits for that), counted
//! by the abuse detector (which may hold it), handed to the scheduler and traced.

use super::*;

/// Accepted messages go to the spool; `enqueue` returns only once they are fsynced.
pub(super) struct SpoolSink {
    pub(super) spool: Arc<Spool>,
    /// Accepted messages are written and flushed in batches (group commit).
    pub(super) commit: GroupCommitter,
    pub(super) scheduler: Arc<Scheduler>,
    /// Counts accepted messages for the abuse detector.
    pub(super) abuse: Option<Arc<Abuse>>,
    /// SRS rewriting and DKIM signing before the message is spooled.
    pub(super) forwarding: Option<Arc<crate::forwarding::Forwarding>>,
    /// `[metrics] per_tenant`.
    pub(super) per_tenant_metrics: bool,
    /// `[scan]`: rspamd before the 250.
    pub(super) scanner: Option<Arc<crate::scan::Scanner>>,
    pub(super) events: Arc<EventWriter>,
}

#[async_trait]
impl MessageSink for SpoolSink {
    fn new_queue_id(&self) -> String {
        self.spool.new_queue_id().to_string()
    }

    async fn enqueue(&self, mut msg: IncomingMessage) -> Result<(), relayward_smtp::EnqueueError> {
        use relayward_smtp::EnqueueError;
        // The content scan first: a refusal keeps nothing; a mark changes the message.
        let mut scanned = None;
        let mut spam_verdict = false;
        if let Some(scanner) = &self.scanner {
            let verdict = scanner.scan(&mut msg).await;
            let spam = match &verdict {
                crate::scan::Verdict::Accept { spam, .. }
                | crate::scan::Verdict::Refuse { spam, .. } => *spam,
            };
            if let Some(abuse) = &self.abuse {
                abuse.scan_verdict(msg.tenant_id, msg.connector_id, spam);
            }
            match verdict {
                crate::scan::Verdict::Refuse { reply, detail, .. } => {
                    return Err(EnqueueError::Refused { reply, detail });
                }
                crate::scan::Verdict::Accept { detail, .. } => {
                    spam_verdict = spam;
                    let mut ev = TraceEvent::new(TraceKind::Queued);
                    ev.queue_id = Some(msg.queue_id.clone());
                    ev.tenant_id = Some(msg.tenant_id);
                    ev.connector_id = Some(msg.connector_id);
                    ev.sender = msg.sender.as_ref().map(|a| a.to_string());
                    ev.detail = Some(detail);
                    scanned = Some(ev);
                }
            }
        }
        let accepted = self
            .abuse
            .as_ref()
            .map(|a| AcceptedMessage::of(&msg, a.verifies_dkim()));
        let now = relayward_core::now();
        let mut envelope = Envelope {
            queue_id: msg
                .queue_id
                .parse()
                .map_err(|e| EnqueueError::Unavailable(format!("bad queue id: {e}")))?,
            received_at: msg.received_at,
            tenant_id: Some(msg.tenant_id.0),
            connector_id: Some(msg.connector_id.0),
            client_ip: msg.client_ip.to_string(),
            helo: msg.helo,
            auth_user: msg.auth_user,
            tls: msg.tls,
            sender: msg.sender.map(|a| a.to_string()).unwrap_or_default(),
            original_sender: None,
            sender_class: msg.sender_class,
            header_from_mismatch: msg.header_from_mismatch,
            spam_verdict,
            message_id: msg.message_id,
            size: msg.data.len() as u64,
            body_8bit: msg.body_8bit,
            smtputf8: msg.smtputf8,
            dsn_ret: msg.dsn_ret,
            dsn_envid: msg.dsn_envid,
            recipients: msg
                .recipients
                .into_iter()
                .map(|r| Recipient {
                    address: r.address.to_string(),
                    orcpt: r.orcpt,
                    notify: r.notify,
                    status: RecipientStatus::Queued,
                    attempts: 0,
                    next_attempt_at: now.0,
                    last_reply: None,
                })
                .collect(),
            held: false,
        };
        let mut data = msg.data;
        let forwarded = match &self.forwarding {
            Some(f) => f.prepare(&mut envelope, &mut data).await.map(|ev| (f, ev)),
            None => None,
        };
        let id = envelope.queue_id;
        let tenant = msg.tenant_id;
        self.commit
            .store(id, envelope, data)
            .await
            .map_err(|e| match e {
                relayward_queue::CommitError::StorageFull(e) => EnqueueError::StorageFull(e),
                relayward_queue::CommitError::Failed(e) => EnqueueError::Unavailable(e),
            })?;
        if let Some((f, ev)) = forwarded {
            f.trace(ev);
        }
        if self.per_tenant_metrics {
            crate::metrics::count_tenant_message(tenant);
        }
        if let Some(ev) = scanned {
            relayward_smtp::Events::trace(&*self.events, ev);
        }
        // The abuse detector counts the durable message; mail its tenant may no longer send
        // (it raced the block, or caused it) is held instead of delivered.
        match (&self.abuse, accepted) {
            (Some(abuse), Some(m)) if abuse.accepted(&m, id.as_str()) => {
                if let Err(e) = self.scheduler.hold(id).await {
                    tracing::warn!(queue_id = %id, error = %e, "cannot hold message of a blocked tenant");
                    self.scheduler.submit(id);
                }
            }
            _ => self.scheduler.submit(id),
        }
        Ok(())
    }
}
