//! relayward-smtp: the inbound SMTP server.
//!
//! Tenants' servers connect here. Each session is attributed to a tenant by
//! `relayward_policy` (certificate, AUTH, source IP), every MAIL/RCPT is decided against the
//! directory snapshot current at that moment, and DATA hands the message to a [`MessageSink`]
//! (the spool) before answering 250.
//!
//! Module layout follows the SMTP phases (Stalwart style): `inbound/ehlo.rs`, `inbound/mail.rs`,
//! `inbound/rcpt.rs`, `inbound/data.rs`, `inbound/auth.rs`, `inbound/starttls.rs`; the read/write
//! loop is `inbound/session.rs`, the accept loop and connection limits `listener.rs`, TLS
//! configuration `tls.rs`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use relayward_core::{Address, ConnectorId, Reply, SenderClass, TenantId, TraceEvent};
use relayward_policy::{Method, SharedDirectory};

mod auth_guard;
mod inbound;
mod listener;
mod tls;

pub use auth_guard::AuthLockoutEvent;
pub use inbound::srs_role::{
    FeedbackError, FeedbackMessage, ReturnRecipient, ReturnedMessage, SrsReturn, SrsReverseError,
    SrsRole,
};
pub use tls::{load_tls, ServerTls};

/// Server-side timeouts (RFC 5321 section 4.5.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the next command line (and for TLS handshakes, AUTH continuations). 5 min.
    pub command: Duration,
    /// Waiting for each block of message data after 354. 3 min.
    pub data_block: Duration,
    /// Longest we take between the final "." and our reply (spooling): past it the client may
    /// give up (its own 10 min timeout), so we answer 451 4.3.0 instead. 10 min.
    pub data_termination: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(5 * 60),
            data_block: Duration::from_secs(3 * 60),
            data_termination: Duration::from_secs(10 * 60),
        }
    }
}

/// What to do with a CR or LF in message data that is not part of a CRLF (RFC 5321 section
/// 2.3.8 forbids them; lenient servers downstream read them as line ends, the root of SMTP
/// smuggling). Either way the end of data is only CRLF "." CRLF after a CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEnds {
    /// Make each a CRLF line end, count it (trace detail `bare_line_ends=N`) and accept.
    #[default]
    Normalize,
    /// Answer `550 5.5.2 Bare CR or LF not allowed` after the data and keep nothing.
    Reject,
}

/// AUTH failure lockout: `max_failures` failed AUTH attempts within `window` from one client
/// address, or for one user name, lock further AUTH from that address or for that user
/// (454 4.7.0, no password checked) until the window has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLockout {
    pub max_failures: usize,
    pub window: Duration,
}

impl Default for AuthLockout {
    fn default() -> Self {
        AuthLockout {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Settings shared by every listener of one [`Server`].
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// EHLO name and the "by" of our Received header.
    pub hostname: String,
    /// A cluster node's name, written after the queue id of our Received header.
    pub node_name: Option<String>,
    /// Advertised as SIZE; larger messages get 552 5.3.4.
    pub max_message_size: u64,
    /// Recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Concurrent sessions over all listeners; more get 421 4.7.0 at the greeting.
    pub max_connections: usize,
    /// Concurrent sessions from one client address; more get 421 4.7.0 at the greeting.
    pub max_connections_per_ip: usize,
    /// Replies of class 5 per session before "421 4.7.0 Too many errors" and close.
    pub max_errors: usize,
    /// Loop detection: a message carrying more Received headers than this gets 554 5.4.6.
    pub max_received_headers: usize,
    /// Commands a client may send ahead of our replies (PIPELINING); more: 421 and close.
    pub max_pipelined: usize,
    pub bare_line_ends: BareLineEnds,
    pub auth_lockout: AuthLockout,
    pub timeouts: Timeouts,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            // The embedded default of DESIGN.md's `[server] hostname`.
            hostname: "relay.example.net".to_string(),
            node_name: None,
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_errors: 10,
            max_received_headers: 50,
            max_pipelined: 100,
            bare_line_ends: BareLineEnds::Normalize,
            auth_lockout: AuthLockout::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Settings of one listening socket.
#[derive(Debug, Clone, Default)]
pub struct ListenerConfig {
    /// Some => STARTTLS offered (or implicit TLS); client certificates requested, optional,
    /// verified (see [`ServerTls`]).
    pub tls: Option<Arc<ServerTls>>,
    /// TLS from the first byte (submissions/465 style). Needs `tls`.
    pub implicit_tls: bool,
    /// Offer and accept AUTH on a cleartext session. Default false: 538 5.7.11.
    pub auth_without_tls: bool,
}

/// One recipient of an [`IncomingMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRecipient {
    pub address: Address,
    /// DSN ORCPT as `rfc822;<address>` (xtext decoded), when the client gave one.
    pub orcpt: Option<String>,
    /// DSN NOTIFY keywords, uppercase (`SUCCESS`, `FAILURE`, `DELAY` or `NEVER`); empty when
    /// the client gave none.
    pub notify: Vec<String>,
}

/// What DATA hands to the queue.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub queue_id: String,
    /// Unix seconds.
    pub received_at: i64,
    pub tenant_id: TenantId,
    pub connector_id: ConnectorId,
    pub method: Method,
    pub client_ip: IpAddr,
    pub helo: String,
    pub auth_user: Option<String>,
    pub tls: bool,
    /// None = null sender (`MAIL FROM:<>`).
    pub sender: Option<Address>,
    pub sender_class: SenderClass,
    pub header_from_mismatch: bool,
    /// The header From domain (lowercase), when the message has a parsable one.
    pub header_from_domain: Option<String>,
    pub message_id: Option<String>,
    /// `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// DSN `RET=` (`FULL` or `HDRS`).
    pub dsn_ret: Option<String>,
    /// DSN `ENVID=` (xtext decoded).
    pub dsn_envid: Option<String>,
    pub recipients: Vec<IncomingRecipient>,
    /// The message with our Received: header prepended, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
}

/// Why a message could not be queued; the reply follows from it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnqueueError {
    /// No space left for the message: `452 4.3.1`. Nothing was kept.
    #[error("insufficient storage: {0}")]
    StorageFull(String),
    /// Anything else: `451 4.3.0`. Nothing was kept.
    #[error("{0}")]
    Unavailable(String),
    /// Refused by a content check (the scanner) with its own reply, permanent or temporary;
    /// `detail` (the verdict) goes to the trace. Nothing was kept.
    #[error("refused by the content scan: {detail}")]
    Refused { reply: Reply, detail: String },
}

impl EnqueueError {
    pub fn reply(&self) -> Reply {
        match self {
            EnqueueError::StorageFull(_) => relayward_core::reply::STORAGE_FULL,
            EnqueueError::Unavailable(_) => relayward_core::reply::LOCAL_PROBLEM,
            EnqueueError::Refused { reply, .. } => reply.clone(),
        }
    }
}

/// Where accepted messages go (the spool).
#[async_trait]
pub trait MessageSink: Send + Sync + 'static {
    fn new_queue_id(&self) -> String;
    /// Ok only once the message is durably on disk (the caller then answers 250).
    async fn enqueue(&self, msg: IncomingMessage) -> Result<(), EnqueueError>;
}

/// Trace and usage events. Must not block: the binary batches them.
pub trait Events: Send + Sync + 'static {
    fn trace(&self, event: TraceEvent);
    /// A connector carried an accepted message (for its `last_used_at`).
    fn connector_used(&self, connector: ConnectorId);
    /// AUTH has just been locked for an address or a user (audit it, alert it). Once per lock.
    fn auth_locked(&self, event: AuthLockoutEvent) {
        tracing::warn!(client_ip = %event.client_ip, user = %event.user, scope = event.scope,
            failures = event.failures, "AUTH locked after repeated failures");
    }
}

/// Per-sender outbound limits (DESIGN.md: a sender over its limits gets `550 5.1.8 Access
/// denied, bad outbound sender`), consulted once a transaction's tenant is known. Called on the
/// session's task: answer from memory, without I/O. `Err(reply)` refuses the command.
pub trait SenderGuard: Send + Sync + 'static {
    /// MAIL FROM with a non-null sender (or the RCPT TO that settled the tenant).
    fn check_mail(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        sender: &Address,
    ) -> Result<(), Reply>;
    /// Each new RCPT TO; `recipients` counts the transaction's recipients with this one.
    fn check_rcpt(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        sender: &Address,
        recipient: &Address,
        recipients: usize,
    ) -> Result<(), Reply>;
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The inbound SMTP server: shared by all listeners, so the connection limits are global.
pub struct Server {
    pub(crate) config: SmtpConfig,
    pub(crate) directory: Arc<SharedDirectory>,
    pub(crate) sink: Arc<dyn MessageSink>,
    pub(crate) events: Arc<dyn Events>,
    pub(crate) limiter: listener::ConnLimiter,
    pub(crate) header_parser: mail_parser::MessageParser,
    pub(crate) auth_guard: auth_guard::AuthGuard,
    /// Per-sender limits; none by default.
    pub(crate) sender_guard: OnceLock<Arc<dyn SenderGuard>>,
    /// Suppressed recipients, refused at RCPT; none by default.
    pub(crate) suppressions: OnceLock<Arc<relayward_policy::suppression::SuppressionList>>,
}

impl Server {
    pub fn new(
        config: SmtpConfig,
        directory: Arc<SharedDirectory>,
        sink: Arc<dyn MessageSink>,
        events: Arc<dyn Events>,
    ) -> Arc<Server> {
        Arc::new(Server {
            auth_guard: auth_guard::AuthGuard::new(config.auth_lockout.clone()),
            config,
            directory,
            sink,
            events,
            limiter: listener::ConnLimiter::default(),
            header_parser: inbound::data::header_parser(),
            sender_guard: OnceLock::new(),
            suppressions: OnceLock::new(),
        })
    }

    /// Consult `guard` at MAIL FROM and RCPT TO. Set once, before the listeners start; a
    /// second guard is ignored.
    pub fn with_sender_guard(self: Arc<Self>, guard: Arc<dyn SenderGuard>) -> Arc<Server> {
        if self.sender_guard.set(guard).is_err() {
            tracing::warn!("sender guard already set; the new one is ignored");
        }
        self
    }

    pub(crate) fn sender_guard(&self) -> Option<&dyn SenderGuard> {
        self.sender_guard.get().map(|g| &**g)
    }

    /// Refuse recipients on `list` (the session tenant's or the global one) at RCPT TO with
    /// 5.1.10. Set once, before the listeners start.
    pub fn with_suppressions(
        self: Arc<Self>,
        list: Arc<relayward_policy::suppression::SuppressionList>,
    ) -> Arc<Server> {
        if self.suppressions.set(list).is_err() {
            tracing::warn!("suppression lists already set; the new ones are ignored");
        }
        self
    }

    pub fn config(&self) -> &SmtpConfig {
        &self.config
    }

    /// Sessions open right now, over all listeners.
    pub fn active_connections(&self) -> usize {
        self.limiter.total()
    }
}
