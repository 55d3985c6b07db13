//! Admin operations on queued messages: retry now, hold, release, delete (with or without a DSN).
//!
//! A server owns its spool (flock), so a separate CLI process cannot change envelopes itself. It
//! asks instead: [`request_control`] drops a file `<spool>/control/<micros>-<QUEUEID>.<op>`
//! (written to a dot-file, fsynced, renamed: the scheduler never sees half a request), which the
//! running scheduler picks up within `control_poll_interval`, applies and deletes. Requests left
//! while no server ran are applied at the next start. The time prefix keeps several requests for
//! one message in the order they were made (hold, then release).
//!
//! When no server runs, [`admin`] applies the operation to the spool directly ([`apply_offline`]).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use relayward_core::{ConnectorId, TenantId, TraceEvent, TraceKind};

use crate::config::DeliveryConfig;
use crate::dsn::{self, DsnAction, DsnRecipient};
use crate::spool::{Envelope, QueueId, RecipientStatus, Spool, SpoolError};

/// Name of the control directory inside the spool root.
pub const CONTROL_DIR: &str = "control";
/// Markers "the delay DSN of this message was sent", one empty file per message.
pub const NOTICES_DIR: &str = "notices";

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("control request I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build DSN: {0}")]
    Dsn(String),
    #[error("unknown control operation {0:?}")]
    BadOp(String),
    #[error("the scheduler stopped before the operation was applied")]
    Stopped,
}

/// An admin operation on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlOp {
    /// Attempt every pending recipient now (a held message stays held).
    RetryNow,
    /// Stop delivery attempts until released.
    Hold,
    Release,
    /// Remove the message; with `send_dsn` the sender gets a "failed" DSN for every pending
    /// recipient (subject to NOTIFY).
    Delete {
        send_dsn: bool,
    },
}

impl ControlOp {
    /// The file-name suffix of the op.
    pub fn as_str(&self) -> &'static str {
        match self {
            ControlOp::RetryNow => "retry",
            ControlOp::Hold => "hold",
            ControlOp::Release => "release",
            ControlOp::Delete { send_dsn: false } => "delete",
            ControlOp::Delete { send_dsn: true } => "bounce",
        }
    }
}

impl fmt::Display for ControlOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ControlOp {
    type Err = DeliveryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "retry" => ControlOp::RetryNow,
            "hold" => ControlOp::Hold,
            "release" => ControlOp::Release,
            "delete" => ControlOp::Delete { send_dsn: false },
            "bounce" => ControlOp::Delete { send_dsn: true },
            _ => return Err(DeliveryError::BadOp(s.to_string())),
        })
    }
}

pub fn control_dir(spool_root: &Path) -> PathBuf {
    spool_root.join(CONTROL_DIR)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeliveryError + '_ {
    move |source| DeliveryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Asks the server that owns the spool at `spool_root` to apply `op` to `id`. Returns once the
/// request is durable; the server applies it within about a second.
pub fn request_control(spool_root: &Path, id: QueueId, op: ControlOp) -> Result<(), DeliveryError> {
    let dir = control_dir(spool_root);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let name = format!("{micros:020}-{id}.{op}");
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let dest = dir.join(&name);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(b"").map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    Ok(())
}

/// One request found in the control directory.
#[derive(Debug, Clone)]
pub struct ControlRequest {
    pub path: PathBuf,
    pub id: QueueId,
    pub op: ControlOp,
}

/// The pending requests, oldest first. Unparseable files are deleted with a log line.
pub fn pending_requests(spool_root: &Path) -> Result<Vec<ControlRequest>, DeliveryError> {
    let dir = control_dir(spool_root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let parsed = name
            .split_once('-')
            .and_then(|(_, rest)| rest.split_once('.'))
            .and_then(|(id, op)| {
                Some((id.parse::<QueueId>().ok()?, op.parse::<ControlOp>().ok()?))
            });
        match parsed {
            Some((id, op)) => out.push((
                name.to_string(),
                ControlRequest {
                    path: entry.path(),
                    id,
                    op,
                },
            )),
            None => {
                tracing::warn!(file = %entry.path().display(), "ignoring malformed control request");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// Marker path for "delay DSN sent" of `id`.
pub(crate) fn delay_marker(spool_root: &Path, id: &QueueId) -> PathBuf {
    spool_root.join(NOTICES_DIR).join(id.as_str())
}

/// Removes a message and its delay marker.
pub(crate) fn remove_message(spool: &Spool, id: &QueueId) -> Result<(), SpoolError> {
    spool.remove(id)?;
    let _ = fs::remove_file(delay_marker(spool.root(), id));
    Ok(())
}

/// Every recipient is final (delivered or bounced with its DSN stored): see
/// [`Spool::remove_finished`].
pub(crate) fn finish_message(spool: &Spool, id: &QueueId) -> Result<(), SpoolError> {
    spool.remove_finished(id)?;
    let _ = fs::remove_file(delay_marker(spool.root(), id));
    Ok(())
}

/// A trace event about `env` (and one of its recipients).
pub fn trace_event(kind: TraceKind, env: &Envelope, recipient: Option<&str>) -> TraceEvent {
    let mut ev = TraceEvent::new(kind);
    ev.queue_id = Some(env.queue_id.to_string());
    ev.message_id = env.message_id.clone();
    ev.tenant_id = env.tenant_id.map(TenantId);
    ev.connector_id = env.connector_id.map(ConnectorId);
    ev.client_ip = Some(env.client_ip.clone());
    // The sender as received: an SRS rewriting is an envelope detail, the story is the sender's.
    ev.sender = Some(
        env.original_sender
            .clone()
            .unwrap_or_else(|| env.sender.clone()),
    );
    ev.recipient = recipient.map(str::to_string);
    ev.sender_class = Some(env.sender_class);
    ev
}

/// Whether the DSN about `original` reports on `e` (its NOTIFY, or the null sender's rule).
pub(crate) fn notice_wanted(original: &Envelope, e: &DsnRecipient) -> bool {
    if original.sender.is_empty() {
        // Only failures of a null-sender message reach anyone (the postmaster).
        return e.action == DsnAction::Failed;
    }
    let notify = original
        .recipients
        .iter()
        .find(|r| r.address == e.address)
        .map(|r| r.notify.as_slice())
        .unwrap_or(&[]);
    dsn::wanted(notify, e.action)
}

/// Builds, stores (not yet submitted) and returns a DSN about `original`, or `None` when nobody
/// is to receive it (null sender and no postmaster) or no recipient asked for it.
pub(crate) fn store_dsn(
    spool: &Spool,
    config: &DeliveryConfig,
    original: &Envelope,
    body: &[u8],
    entries: &[DsnRecipient],
) -> Result<Option<(QueueId, String)>, DeliveryError> {
    let entries: Vec<DsnRecipient> = entries
        .iter()
        .filter(|e| notice_wanted(original, e))
        .cloned()
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let Some(to) = dsn::recipient_for(original, config.postmaster.as_deref()) else {
        tracing::warn!(
            queue_id = %original.queue_id,
            recipients = entries.len(),
            "delivery of a null-sender message failed and no postmaster is configured: notice dropped"
        );
        return Ok(None);
    };
    let id = spool.new_queue_id();
    let message = dsn::build(&config.hostname, &id, &to, original, body, &entries)
        .map_err(|e| DeliveryError::Dsn(e.to_string()))?;
    let env = dsn::envelope(id, &config.hostname, &to, &message);
    spool.store(&id, &env, &message)?;
    Ok(Some((id, to)))
}

/// What an operation did.
#[derive(Debug, Default)]
pub struct OpResult {
    /// The envelope afterwards; `None` when the message is gone.
    pub envelope: Option<Envelope>,
    /// A DSN that was stored and must be submitted.
    pub dsn: Option<QueueId>,
    pub events: Vec<TraceEvent>,
}

/// Applies `op` to `id` in `spool` (blocking). The caller guarantees nobody else is working on the
/// message: the scheduler's exclusion, or the spool lock when no server runs.
pub fn apply_op(
    spool: &Spool,
    config: &DeliveryConfig,
    id: &QueueId,
    op: ControlOp,
) -> Result<OpResult, DeliveryError> {
    let mut env = spool.read_envelope(id)?;
    let now = relayward_core::now();
    let pending: Vec<usize> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| dsn::pending(r))
        .map(|(i, _)| i)
        .collect();
    let mut result = OpResult::default();
    let per_rcpt = |events: &mut Vec<TraceEvent>, kind: TraceKind, env: &Envelope, detail: &str| {
        for &i in &pending {
            let mut ev = trace_event(kind, env, Some(&env.recipients[i].address));
            ev.detail = Some(detail.to_string());
            events.push(ev);
        }
    };
    match op {
        ControlOp::RetryNow => {
            for &i in &pending {
                env.recipients[i].next_attempt_at = now.0;
            }
            spool.update_envelope(id, &env)?;
        }
        ControlOp::Hold => {
            env.held = true;
            for &i in &pending {
                env.recipients[i].status = RecipientStatus::Held;
            }
            spool.update_envelope(id, &env)?;
            per_rcpt(
                &mut result.events,
                TraceKind::Held,
                &env,
                "held by operator",
            );
        }
        ControlOp::Release => {
            env.held = false;
            for &i in &pending {
                let r = &mut env.recipients[i];
                if r.status == RecipientStatus::Held {
                    r.status = if r.attempts > 0 {
                        RecipientStatus::Deferred
                    } else {
                        RecipientStatus::Queued
                    };
                }
                r.next_attempt_at = now.0;
            }
            spool.update_envelope(id, &env)?;
            per_rcpt(
                &mut result.events,
                TraceKind::Released,
                &env,
                "released by operator",
            );
        }
        ControlOp::Delete { send_dsn } => {
            if send_dsn && !pending.is_empty() {
                let body = spool.read_body(id)?;
                let entries: Vec<DsnRecipient> = pending
                    .iter()
                    .map(|&i| {
                        let r = &env.recipients[i];
                        DsnRecipient {
                            address: r.address.clone(),
                            orcpt: r.orcpt.clone(),
                            action: DsnAction::Failed,
                            status: "5.0.0".into(),
                            remote_mta: None,
                            diagnostic: Some(match &r.last_reply {
                                Some(last) => format!(
                                    "message deleted by the relay operator; last reply: {last}"
                                ),
                                None => "message deleted by the relay operator".into(),
                            }),
                            last_attempt: now.0,
                            will_retry_until: None,
                        }
                    })
                    .collect();
                if let Some((dsn_id, to)) = store_dsn(spool, config, &env, &body, &entries)? {
                    result.dsn = Some(dsn_id);
                    let mut ev = trace_event(TraceKind::DsnSent, &env, Some(&to));
                    ev.detail = Some(format!("dsn {dsn_id}: failed (deleted by operator)"));
                    result.events.push(ev);
                }
            }
            remove_message(spool, id)?;
            per_rcpt(
                &mut result.events,
                TraceKind::Deleted,
                &env,
                if send_dsn {
                    "deleted by operator, DSN sent"
                } else {
                    "deleted by operator"
                },
            );
            return Ok(result);
        }
    }
    result.envelope = Some(env);
    Ok(result)
}

/// [`apply_op`] for a spool that no server runs on. DSNs it creates stay queued until the server
/// starts. Returns the trace events to record.
pub fn apply_offline(
    spool: &Spool,
    config: &DeliveryConfig,
    id: QueueId,
    op: ControlOp,
) -> Result<Vec<TraceEvent>, DeliveryError> {
    Ok(apply_op(spool, config, &id, op)?.events)
}

/// How [`admin`] handled an operation.
#[derive(Debug)]
pub enum AdminOutcome {
    /// No server owned the spool: applied directly; these events should be traced.
    Applied(Vec<TraceEvent>),
    /// A server owns the spool: the request was left in its control directory.
    Requested,
}

/// For the CLI: apply `op` directly when no server runs on `spool_root`, else ask the server.
pub fn admin(
    spool_root: &Path,
    config: &DeliveryConfig,
    id: QueueId,
    op: ControlOp,
) -> Result<AdminOutcome, DeliveryError> {
    match Spool::open(spool_root) {
        Ok(spool) => Ok(AdminOutcome::Applied(apply_offline(
            &spool, config, id, op,
        )?)),
        Err(SpoolError::Locked(_)) => {
            // Fail early on an id the server does not have.
            let ro = Spool::open_read_only(spool_root)?;
            ro.read_envelope(&id)?;
            request_control(spool_root, id, op)?;
            Ok(AdminOutcome::Requested)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let id = QueueId::generate();
        request_control(dir.path(), id, ControlOp::Hold).unwrap();
        request_control(dir.path(), id, ControlOp::Release).unwrap();
        request_control(dir.path(), id, ControlOp::Delete { send_dsn: true }).unwrap();
        fs::write(control_dir(dir.path()).join("garbage"), b"").unwrap();
        let reqs = pending_requests(dir.path()).unwrap();
        let ops: Vec<ControlOp> = reqs.iter().map(|r| r.op).collect();
        assert_eq!(
            ops,
            [
                ControlOp::Hold,
                ControlOp::Release,
                ControlOp::Delete { send_dsn: true }
            ]
        );
        assert!(reqs.iter().all(|r| r.id == id));
        assert!(!control_dir(dir.path()).join("garbage").exists());
    }
}
