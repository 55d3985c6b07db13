//! What the admin API asks of the running relay: tenant restriction states (abuse detector),
//! per-sender restrictions and the queue. The binary implements [`RelayControl`] over its
//! detector, limiter and spool; the API does the access checks (token scope, 404 for another
//! tenant's objects) before it calls in, so an implementation never sees a foreign request.
//!
//! Auditing: tenant state changes ([`RelayControl::request_unblock`], [`RelayControl::unblock`],
//! [`RelayControl::block`]) are recorded by the implementation with the `actor` given, as
//! `Store::set_tenant_state` does with its evidence. Queue operations and the removal of a
//! sender restriction, which have no store record of their own, are audited by the API after
//! the implementation reports success.

use async_trait::async_trait;
use relayward_core::TenantId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such object (404). `what` reads like `message 0123ABC`.
    #[error("{0} not found")]
    NotFound(String),
    /// The operation does not apply in the current state, e.g. unblocking an active tenant (409).
    #[error("{0}")]
    NotAllowed(String),
    /// A request value the implementation refuses (422).
    #[error("invalid {field}: {detail}")]
    Invalid { field: String, detail: String },
    /// The relay part that would do it is not running or not reachable (503).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type ControlResult<T> = Result<T, ControlError>;

pub use relayward_api_types::status::{
    Block, QueueOpOutcome, QueueOperation, QueuedMessage, QueuedRecipient, RequestUnblock,
    SenderRestrictionView, TenantStatusReport, TransitionView, Unblock,
};
pub use relayward_policy::detector::BlockScope;

/// The relay's side of the admin API; implemented by the binary over the detector, the sender
/// limiter and the spool. See the module docs for who audits what.
#[async_trait]
pub trait RelayControl: Send + Sync + 'static {
    async fn tenant_status(&self, tenant: TenantId) -> ControlResult<TenantStatusReport>;
    /// `blocked_unregistered` -> `under_review`; [`ControlError::NotAllowed`] from other states.
    async fn request_unblock(
        &self,
        tenant: TenantId,
        request: &RequestUnblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;
    /// Operator: a blocked or under-review tenant -> `probation`.
    async fn unblock(
        &self,
        tenant: TenantId,
        request: &Unblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;
    /// Operator: block by hand.
    async fn block(
        &self,
        tenant: TenantId,
        request: &Block,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;

    /// Spooled messages, of one tenant when `tenant` is given.
    async fn queue_list(&self, tenant: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>>;
    async fn queue_show(&self, queue_id: &str) -> ControlResult<Option<QueuedMessage>>;
    async fn queue_hold(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    async fn queue_release(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    /// Attempt every pending recipient now.
    async fn queue_retry(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    /// Remove the message; with `send_dsn` the sender gets a DSN for each pending recipient.
    async fn queue_delete(
        &self,
        queue_id: &str,
        send_dsn: bool,
        actor: &str,
    ) -> ControlResult<QueueOpOutcome>;

    /// The tenant's senders currently restricted by the per-sender limits.
    async fn sender_restrictions(
        &self,
        tenant: TenantId,
    ) -> ControlResult<Vec<SenderRestrictionView>>;
    /// Lifts a restriction; `false` when the sender was not restricted. `sender` is a
    /// validated address with its domain lowercased.
    async fn remove_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        actor: &str,
    ) -> ControlResult<bool>;

    /// The relay's live directory snapshot; `None` without a relay (the API then loads the
    /// store's).
    fn directory(&self) -> Option<std::sync::Arc<relayward_policy::Directory>> {
        None
    }

    /// The relay's live suppression lists; `None` without a relay (the API then loads the
    /// store's).
    fn suppressions(
        &self,
    ) -> Option<std::sync::Arc<relayward_policy::suppression::SuppressionList>> {
        None
    }

    /// The per-sender limits' verdict for one more message, without counting it or
    /// restricting anyone; `None` without a relay.
    fn sender_limit_verdict(
        &self,
        _tenant: TenantId,
        _sender: &relayward_core::Address,
    ) -> Option<Result<(), relayward_core::Reply>> {
        None
    }

    /// Standing sender restrictions as (tenant, sender key), for answers without a relay.
    async fn restricted_senders(&self) -> std::collections::HashSet<(TenantId, String)> {
        Default::default()
    }

    /// The relay's metrics in the Prometheus text format; `None` without a relay.
    /// The per-sender limits of tenants without their own (`[detector.sender_limits]`).
    fn default_sender_limits(&self) -> relayward_policy::limits::SenderLimits {
        relayward_policy::limits::SenderLimits::default()
    }

    fn metrics_text(&self) -> Option<String> {
        None
    }

    /// The relay's own readiness checks (listeners, spool); the API adds the store's.
    async fn readiness(&self) -> Vec<crate::health::Check> {
        vec![crate::health::Check {
            name: "relay".into(),
            ok: false,
            detail: Some("the relay is not running".into()),
            optional: false,
        }]
    }
}

/// A [`RelayControl`] for an API running without the relay (tests, `relayward serve` with the
/// relay off): everything answers 503.
pub struct Unavailable;

#[async_trait]
impl RelayControl for Unavailable {
    async fn tenant_status(&self, _: TenantId) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn request_unblock(
        &self,
        _: TenantId,
        _: &RequestUnblock,
        _: &str,
    ) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn unblock(
        &self,
        _: TenantId,
        _: &Unblock,
        _: &str,
    ) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn block(&self, _: TenantId, _: &Block, _: &str) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn queue_list(&self, _: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>> {
        Err(unavailable())
    }
    async fn queue_show(&self, _: &str) -> ControlResult<Option<QueuedMessage>> {
        Err(unavailable())
    }
    async fn queue_hold(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_release(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_retry(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_delete(&self, _: &str, _: bool, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn sender_restrictions(&self, _: TenantId) -> ControlResult<Vec<SenderRestrictionView>> {
        Err(unavailable())
    }
    async fn remove_sender_restriction(
        &self,
        _: TenantId,
        _: &str,
        _: &str,
    ) -> ControlResult<bool> {
        Err(unavailable())
    }
}

fn unavailable() -> ControlError {
    ControlError::Unavailable("the relay is not running in this process".into())
}
