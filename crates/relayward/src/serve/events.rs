//! Where sessions and deliveries report: the trace writer (batched, off the SMTP path), the
//! connectors' last use, and the abuse detector's view of delivery replies and AUTH lockouts.

use super::*;

/// The scheduler's trace events go to the trace writer, and each attempt's remote reply to the
/// abuse detector.
pub(super) struct DeliveryTap {
    pub(super) events: Arc<EventWriter>,
    /// Weak: the detector holds the scheduler (holds, alert emails).
    pub(super) abuse: std::sync::Weak<Abuse>,
}

impl relayward_queue::DeliveryEvents for DeliveryTap {
    fn trace(&self, event: TraceEvent) {
        if let Some(abuse) = self.abuse.upgrade() {
            abuse.delivery_event(&event);
        }
        relayward_queue::DeliveryEvents::trace(&*self.events, event)
    }
}

/// What SMTP sessions report: trace and connector use to the writer, AUTH lockouts to the
/// abuse detector (audit and alert).
pub(super) struct SessionEvents {
    pub(super) events: Arc<EventWriter>,
    pub(super) abuse: std::sync::Weak<Abuse>,
}

impl relayward_smtp::Events for SessionEvents {
    fn trace(&self, event: TraceEvent) {
        // Mail the tenant's restriction state refused is counted for the evidence.
        if let (TraceKind::Refused, Some(tenant), Some(text)) =
            (event.kind, event.tenant_id, event.reply.as_deref())
        {
            let state_refusal = [reply::BLOCKED_UNREGISTERED, reply::TENANT_BLOCKED]
                .iter()
                .any(|r| text.starts_with(&r.to_string()));
            if state_refusal {
                if let Some(abuse) = self.abuse.upgrade() {
                    abuse.refused(tenant, event.connector_id);
                }
            }
        }
        relayward_smtp::Events::trace(&*self.events, event)
    }

    fn connector_used(&self, connector: ConnectorId) {
        self.events.connector_used(connector)
    }

    fn auth_locked(&self, event: relayward_smtp::AuthLockoutEvent) {
        if let Some(abuse) = self.abuse.upgrade() {
            abuse.auth_locked(event);
        }
    }
}

const CONNECTOR_TOUCH_EVERY: Duration = Duration::from_secs(2);

/// Writes the connectors' last use gathered since the previous call.
pub(super) async fn touch_used(
    store: &dyn Store,
    used: &Mutex<HashMap<ConnectorId, relayward_core::Timestamp>>,
) {
    let used: Vec<(ConnectorId, relayward_core::Timestamp)> = used
        .lock()
        .map(|mut m| m.drain().collect())
        .unwrap_or_default();
    if !used.is_empty() {
        if let Err(e) = store.touch_connectors(&used).await {
            tracing::warn!(error = %e, "connector last-use update failed");
        }
    }
}

/// Trace events and connector use, written to the store in batches off the SMTP path.
pub struct EventWriter {
    tx: mpsc::Sender<Batch>,
    /// This node's name, on every event (cluster mode).
    node: Option<Arc<str>>,
    used: Arc<Mutex<HashMap<ConnectorId, relayward_core::Timestamp>>>,
}

enum Batch {
    Event(Box<TraceEvent>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl EventWriter {
    /// `spill`: where events wait while the store is unreachable (`None`: they are dropped).
    pub fn start(
        store: Arc<dyn Store>,
        node: Option<String>,
        spill: Option<Arc<crate::spill::Spill>>,
    ) -> EventWriter {
        let (tx, mut rx) = mpsc::channel::<Batch>(65_536);
        let used: Arc<Mutex<HashMap<ConnectorId, relayward_core::Timestamp>>> = Arc::default();
        let used_bg = used.clone();
        tokio::spawn(async move {
            let mut buf: Vec<TraceEvent> = Vec::with_capacity(512);
            // The store did not answer the last write.
            // (Or events are waiting in `spill` for it, kept by an earlier run that ended during
            // an outage: written first.)
            let mut outage = spill.as_deref().is_some_and(|s| !s.is_empty());
            if let Some(spill) = spill.as_deref().filter(|_| outage) {
                drain(&*store, spill, &mut outage).await;
            }
            // Connector use reaches the store within this long even when nothing else
            // happens after a connector's only message (the "unused" audit flag relies on it).
            let mut touch = tokio::time::interval(CONNECTOR_TOUCH_EVERY);
            touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    b = rx.recv() => match b {
                        Some(b) => Some(b),
                        None => break,
                    },
                    _ = touch.tick() => None,
                };
                let mut waiters = Vec::new();
                let mut push = |b: Batch, buf: &mut Vec<TraceEvent>| match b {
                    Batch::Event(e) => buf.push(*e),
                    Batch::Flush(w) => waiters.push(w),
                };
                let Some(first) = first else {
                    if let Some(spill) = spill.as_deref().filter(|_| outage) {
                        drain(&*store, spill, &mut outage).await;
                    }
                    touch_used(&*store, &used_bg).await;
                    continue;
                };
                push(first, &mut buf);
                while buf.len() < 512 {
                    match rx.try_recv() {
                        Ok(b) => push(b, &mut buf),
                        Err(_) => break,
                    }
                }
                if !buf.is_empty() {
                    write_or_keep(&*store, spill.as_deref(), &buf, &mut outage).await;
                    buf.clear();
                }
                if !waiters.is_empty() {
                    touch_used(&*store, &used_bg).await;
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
            touch_used(&*store, &used_bg).await;
        });
        EventWriter {
            tx,
            used,
            node: node.map(Arc::from),
        }
    }

    /// Events waiting to be written.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Batch::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes `events`; while the store is unreachable (and until what was kept then is written,
/// so that the trace keeps its order) they go to `spill`.
async fn write_or_keep(
    store: &dyn Store,
    spill: Option<&crate::spill::Spill>,
    events: &[TraceEvent],
    outage: &mut bool,
) {
    // During an outage new events go straight to disk, after those kept before them; the
    // periodic tick tries the store.
    if let Some(s) = spill.filter(|_| *outage) {
        keep(s, events);
        return;
    }
    let started = std::time::Instant::now();
    let written = store.record_trace(events).await;
    metrics::histogram!("relayward_store_trace_write_seconds").record(started.elapsed());
    match written {
        Ok(()) => {}
        Err(e @ relayward_store::StoreError::Unavailable(_)) if spill.is_some() => {
            let s = spill.expect("checked");
            if !*outage {
                *outage = true;
                tracing::warn!(
                    error = %e,
                    file = %s.path().display(),
                    "store unreachable: trace events kept on disk until it answers"
                );
            }
            keep(s, events);
        }
        Err(e) => tracing::error!(error = %e, events = events.len(), "trace write failed"),
    }
}

fn keep(spill: &crate::spill::Spill, events: &[TraceEvent]) {
    match spill.append(events) {
        Ok(crate::spill::Appended::Kept) => {}
        Ok(crate::spill::Appended::Full) => {
            metrics::counter!("relayward_trace_dropped_total").increment(events.len() as u64);
            tracing::error!(
                events = events.len(),
                "trace events dropped: the store has been unreachable for long, and the file keeping them is full"
            );
        }
        Err(e) => {
            metrics::counter!("relayward_trace_dropped_total").increment(events.len() as u64);
            tracing::error!(error = %e, events = events.len(), "trace events dropped: cannot keep them on disk");
        }
    }
}

/// Writes what `spill` kept, in one transaction; the outage ends once it is written and the
/// file gone.
async fn drain(store: &dyn Store, spill: &crate::spill::Spill, outage: &mut bool) {
    let events: Vec<TraceEvent> = match spill.read() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, file = %spill.path().display(), "kept trace events unreadable");
            return;
        }
    };
    if store.record_trace(&events).await.is_err() {
        return;
    }
    match spill.clear() {
        Ok(()) => {
            *outage = false;
            tracing::info!(
                events = events.len(),
                "store reachable: trace events kept meanwhile written"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, file = %spill.path().display(), "cannot remove the written trace events")
        }
    }
}

impl relayward_queue::DeliveryEvents for EventWriter {
    fn trace(&self, event: TraceEvent) {
        relayward_smtp::Events::trace(self, event)
    }
}

impl relayward_smtp::Events for EventWriter {
    fn trace(&self, mut event: TraceEvent) {
        crate::metrics::count_trace(&event);
        if event.node.is_none() {
            event.node = self.node.as_deref().map(str::to_string);
        }
        if self.tx.try_send(Batch::Event(Box::new(event))).is_err() {
            tracing::warn!("trace queue full: event dropped");
        }
    }

    fn connector_used(&self, connector: ConnectorId) {
        if let Ok(mut m) = self.used.lock() {
            m.insert(connector, relayward_core::now());
        }
    }
}
