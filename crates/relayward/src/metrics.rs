//! The relay's metrics: one Prometheus recorder per process (the `metrics` facade, so every
//! crate counts with `metrics::counter!` and needs no handle), gauges read off the running relay
//! at each scrape, and counts derived from the trace (refusals by reason, delivery outcomes,
//! DSNs), so they agree with what `relayward trace` shows.
//!
//! Names follow Prometheus conventions: `relayward_<area>_<what>_<unit>`, counters end in
//! `_total`, durations are seconds. No tenant label unless `[metrics] per_tenant = true`, and
//! then at most [`MAX_TENANT_LABELS`] tenants get one (the rest count as `other`).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use relayward_core::{TenantId, TenantState, TraceEvent, TraceKind};

/// Tenants that get a label of their own with `per_tenant`.
pub const MAX_TENANT_LABELS: usize = 1000;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("relayward_spool_commit_batch_messages".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
            })
            .expect("static bucket lists are valid");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows none of it");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "relayward_smtp_connections_total",
        "SMTP connections by listener role and outcome (served, refused at the connection limit)"
    );
    describe_gauge!("relayward_smtp_sessions_active", "SMTP sessions open now");
    describe_counter!("relayward_smtp_replies_total", "SMTP replies sent, by code");
    describe_counter!(
        "relayward_smtp_refusals_total",
        "Refused SMTP commands by code and reason (the relay rule's reason code, or protocol)"
    );
    describe_counter!(
        "relayward_smtp_messages_accepted_total",
        "Messages accepted (250 after DATA) by sender class and attribution method"
    );
    describe_counter!(
        "relayward_smtp_accepted_bytes_total",
        Unit::Bytes,
        "Bytes of accepted messages"
    );
    describe_counter!(
        "relayward_smtp_accepted_recipients_total",
        "Recipients of accepted messages"
    );
    describe_histogram!(
        "relayward_spool_commit_seconds",
        Unit::Seconds,
        "From hand-off to the flush that made a message durable: what a 250 waits for"
    );
    describe_histogram!(
        "relayward_spool_write_fsync_seconds",
        Unit::Seconds,
        "Writing and flushing one group of messages"
    );
    describe_histogram!(
        "relayward_spool_commit_batch_messages",
        "Messages per group commit"
    );
    describe_counter!(
        "relayward_spool_commit_failures_total",
        "Group commits that failed (each of their messages got a 4xx)"
    );
    describe_gauge!(
        "relayward_queue_messages",
        "Messages in the delivery queue by state (waiting includes held)"
    );
    describe_counter!(
        "relayward_delivery_attempts_total",
        "Delivery attempts answered by a remote server, by the class of its reply"
    );
    describe_counter!(
        "relayward_delivery_results_total",
        "Recipients delivered, deferred or bounced"
    );
    describe_counter!(
        "relayward_dsn_sent_total",
        "Delivery status notifications queued"
    );
    describe_counter!(
        "relayward_detector_evaluations_total",
        "Abuse detector evaluations"
    );
    describe_counter!(
        "relayward_detector_transitions_total",
        "Abuse detector transitions by target state and deciding rule"
    );
    describe_gauge!("relayward_tenants", "Tenants by restriction state");
    describe_gauge!(
        "relayward_sender_restrictions",
        "Senders restricted now (over their per-sender limits)"
    );
    describe_histogram!(
        "relayward_store_trace_write_seconds",
        Unit::Seconds,
        "Writing one batch of trace events to the store"
    );
    describe_gauge!(
        "relayward_trace_backlog",
        "Trace events waiting to be written"
    );
    describe_counter!(
        "relayward_tenant_messages_accepted_total",
        "Messages accepted per tenant ([metrics] per_tenant)"
    );
}

/// Counts what the trace records: refusals by reason, delivery outcomes, DSNs.
pub fn count_trace(event: &TraceEvent) {
    match event.kind {
        TraceKind::Refused => {
            let code = event
                .reply
                .as_deref()
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .map_or("other", relayward_core::reply::code_label);
            let reason = event
                .detail
                .as_deref()
                .and_then(reason_of)
                .unwrap_or("protocol");
            metrics::counter!("relayward_smtp_refusals_total", "code" => code, "reason" => reason)
                .increment(1);
        }
        TraceKind::Attempt => {
            let remote = event
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with("remote host"));
            let class = match (remote, event.reply.as_deref()) {
                (true, Some(r)) => {
                    let code: u16 = r.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                    let text = r.get(3..).unwrap_or("").trim_start_matches(['-', ' ']);
                    match relayward_policy::counters::classify_remote_reply(code, "", text) {
                        relayward_policy::counters::RemoteClass::Delivered => "delivered",
                        relayward_policy::counters::RemoteClass::SpamBlock => "spam_block",
                        relayward_policy::counters::RemoteClass::BadMailbox => "bad_mailbox",
                        relayward_policy::counters::RemoteClass::Other => "other",
                    }
                }
                _ => "no_answer",
            };
            metrics::counter!("relayward_delivery_attempts_total", "remote_class" => class)
                .increment(1);
        }
        TraceKind::Delivered | TraceKind::Deferred | TraceKind::Bounced => {
            metrics::counter!("relayward_delivery_results_total", "result" => event.kind.as_str())
                .increment(1);
        }
        TraceKind::DsnSent => metrics::counter!("relayward_dsn_sent_total").increment(1),
        _ => {}
    }
}

/// The `reason=` code of a refusal's explanation, when it is one of the relay rule's.
fn reason_of(detail: &str) -> Option<&'static str> {
    let code = detail
        .split_whitespace()
        .find_map(|w| w.strip_prefix("reason="))?;
    relayward_policy::RefusalReason::ALL
        .iter()
        .map(|r| r.as_str())
        .find(|r| *r == code)
}

/// Tenants with a label of their own so far (`per_tenant`).
static TENANT_LABELS: Mutex<Option<HashSet<TenantId>>> = Mutex::new(None);

/// An accepted message of `tenant`, with `per_tenant`.
pub fn count_tenant_message(tenant: TenantId) {
    let mut labels = TENANT_LABELS.lock().unwrap_or_else(|e| e.into_inner());
    let set = labels.get_or_insert_with(HashSet::new);
    let label = if set.contains(&tenant) || set.len() < MAX_TENANT_LABELS {
        set.insert(tenant);
        tenant.to_string()
    } else {
        "other".to_string()
    };
    metrics::counter!("relayward_tenant_messages_accepted_total", "tenant" => label).increment(1);
}

/// What the scrape reads off the running relay.
pub struct Live<'a> {
    pub directory: &'a relayward_policy::Directory,
    pub queue_waiting: usize,
    pub queue_delivering: usize,
    pub sender_restrictions: usize,
    pub trace_backlog: usize,
}

/// Sets the gauges from `live` and renders every metric.
pub fn render(live: &Live<'_>) -> String {
    let handle = handle();
    let mut by_state = std::collections::HashMap::<TenantState, usize>::new();
    for t in live.directory.tenants() {
        *by_state.entry(t.state).or_default() += 1;
    }
    for state in TenantState::ALL {
        metrics::gauge!("relayward_tenants", "state" => state.as_str())
            .set(*by_state.get(state).unwrap_or(&0) as f64);
    }
    metrics::gauge!("relayward_queue_messages", "state" => "waiting")
        .set(live.queue_waiting as f64);
    metrics::gauge!("relayward_queue_messages", "state" => "delivering")
        .set(live.queue_delivering as f64);
    metrics::gauge!("relayward_sender_restrictions").set(live.sender_restrictions as f64);
    metrics::gauge!("relayward_trace_backlog").set(live.trace_backlog as f64);
    handle.run_upkeep();
    handle.render()
}
