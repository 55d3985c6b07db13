//! The way back from a restriction, shared by the CLI (and meant for the admin API): the tenant
//! admin's request for unblock with its checks, the operator's unblock and block. Each is a
//! transition validated by the detector's state machine and recorded in the store (state,
//! transitions row, audit entry, directory version bump), which a running relay picks up on its
//! next directory poll.

use std::fmt;

use anyhow::anyhow;
use relayward_core::{Tenant, TenantId, TenantState};
use relayward_policy::detector::{BlockScope, Cause, Detector, TenantStatus, Transition};
use relayward_policy::evidence::Evidence;
use relayward_store::{NewTransition, Store};
use serde_json::json;

use super::cause_text;

pub use relayward_policy::unblock::{Attestation, Missing};

#[derive(Debug)]
pub enum WayBackError {
    /// The transition does not apply in the tenant's state.
    NotAllowed(String),
    /// What the tenant admin still has to do, one item each.
    Missing(Vec<Missing>),
    Other(anyhow::Error),
}

impl fmt::Display for WayBackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WayBackError::NotAllowed(why) => f.write_str(why),
            WayBackError::Missing(items) => write!(f, "missing: {}", join(items)),
            WayBackError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for WayBackError {}

/// The items, one sentence each, `; ` between.
pub fn join(items: &[Missing]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<anyhow::Error> for WayBackError {
    fn from(e: anyhow::Error) -> Self {
        WayBackError::Other(e)
    }
}

impl From<relayward_store::StoreError> for WayBackError {
    fn from(e: relayward_store::StoreError) -> Self {
        WayBackError::Other(e.into())
    }
}

/// The tenant's restriction status as the detector reads it.
pub async fn status(store: &dyn Store, tenant: TenantId) -> anyhow::Result<TenantStatus> {
    let s = store
        .tenant_status(tenant)
        .await?
        .ok_or_else(|| anyhow!("no tenant {tenant}"))?;
    Ok(TenantStatus {
        state: s.state,
        since_ms: s.since_ms,
        probation_until_ms: s.probation_until_ms,
    })
}

/// Records a transition made by a person (audited with its actor). Returns its id.
pub async fn record(
    store: &dyn Store,
    t: &Transition,
    attestation: Option<serde_json::Value>,
) -> anyhow::Result<i64> {
    let evidence = Evidence::new(t, Default::default());
    let actor = match &t.cause {
        Cause::Tenant { actor } | Cause::Operator { actor } => actor.clone(),
        Cause::Detector => "detector".to_string(),
    };
    let (id, _) = store
        .record_transition(
            &NewTransition {
                tenant_id: t.tenant,
                at_ms: t.at_ms,
                from: t.from,
                to: t.to,
                cause: cause_text(&t.cause).to_string(),
                summary: t.summary.clone(),
                probation_until_ms: t.probation_until_ms,
                evidence: serde_json::to_string(&evidence)?,
                attestation: attestation.map(|a| a.to_string()),
            },
            &actor,
        )
        .await?;
    Ok(id)
}

/// What is still missing before `tenant` may move to under_review ([`relayward_policy::unblock::missing`]
/// on the tenant's latest block evidence, verified domains and declared forwarded domains).
pub async fn unblock_checklist(
    store: &dyn Store,
    tenant: &Tenant,
    a: &Attestation,
) -> anyhow::Result<Vec<Missing>> {
    let evidence = latest_block_evidence(store, tenant).await?;
    let verified = store.list_domains(Some(tenant.id)).await?;
    let forwarded = store.forwarded_domains(tenant.id).await?;
    Ok(relayward_policy::unblock::missing(
        evidence.as_ref(),
        &verified,
        &forwarded,
        a,
    ))
}

/// The evidence of the tenant's latest block from unregistered domains.
pub async fn latest_block_evidence(
    store: &dyn Store,
    tenant: &Tenant,
) -> anyhow::Result<Option<Evidence>> {
    Ok(store
        .list_transitions(tenant.id, 100)
        .await?
        .into_iter()
        .find(|r| r.to == TenantState::BlockedUnregistered)
        .and_then(|r| serde_json::from_str(&r.evidence).ok()))
}

/// The tenant admin asks for unblock: blocked_unregistered -> under_review, once
/// [`unblock_checklist`] is empty. Declares the forwarded domains of `a`. Returns the
/// transition and its id.
pub async fn request_unblock(
    store: &dyn Store,
    detector: &Detector,
    tenant: &Tenant,
    a: &Attestation,
    actor: &str,
    now_ms: i64,
) -> Result<(Transition, i64), WayBackError> {
    let current = status(store, tenant.id).await?;
    // The state first: nothing else matters when there is nothing to unblock.
    detector
        .request_unblock(now_ms, tenant.id, &current, actor)
        .map_err(|e| WayBackError::NotAllowed(e.to_string()))?;
    let missing = unblock_checklist(store, tenant, a).await?;
    if !missing.is_empty() {
        return Err(WayBackError::Missing(missing));
    }
    if !a.forwarded_domains.is_empty() {
        store
            .declare_forwarded_domains(tenant.id, &a.forwarded_domains, actor)
            .await?;
    }
    let t = detector
        .request_unblock(now_ms, tenant.id, &current, actor)
        .map_err(|e| WayBackError::NotAllowed(e.to_string()))?;
    let id = record(
        store,
        &t,
        Some(json!({
            "domains_registered": a.domains_registered,
            "connectors_reviewed": a.connectors_reviewed,
            "servers_secured": a.servers_secured,
            "forwarded_domains": a.forwarded_domains,
        })),
    )
    .await?;
    Ok((t, id))
}

/// The operator lifts a block: -> probation (tightened thresholds for `probation_secs`).
pub async fn operator_unblock(
    store: &dyn Store,
    detector: &Detector,
    tenant: &Tenant,
    actor: &str,
    now_ms: i64,
) -> Result<(Transition, i64), WayBackError> {
    let current = status(store, tenant.id).await?;
    let t = detector
        .operator_unblock(now_ms, tenant.id, &current, actor)
        .map_err(|e| WayBackError::NotAllowed(e.to_string()))?;
    let id = record(store, &t, None).await?;
    Ok((t, id))
}

/// The operator blocks by hand.
pub async fn operator_block(
    store: &dyn Store,
    detector: &Detector,
    tenant: &Tenant,
    scope: BlockScope,
    actor: &str,
    now_ms: i64,
) -> Result<(Transition, i64), WayBackError> {
    let current = status(store, tenant.id).await?;
    let t = detector
        .operator_block(now_ms, tenant.id, &current, scope, actor)
        .map_err(|e| WayBackError::NotAllowed(e.to_string()))?;
    let id = record(store, &t, None).await?;
    Ok((t, id))
}
