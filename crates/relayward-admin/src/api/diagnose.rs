//! `POST /v1/diagnose`: the decision the relay would take right now for a described client and
//! transaction (see `relayward_policy::diagnose`), for the operator or a tenant admin.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use relayward_core::{reply, Address, Reply, TenantId};
use relayward_policy::diagnose::{diagnose, Question};
use relayward_policy::{ClientFacts, Directory};

use crate::auth::Caller;
use crate::extract::ApiJson;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::AppState;
pub use relayward_api_types::diagnose::{DiagnoseRequest, DiagnoseStep, DiagnosisView};

/// The question from a request, checked field by field (422 names the field).
pub fn question(dir: &Directory, r: &DiagnoseRequest) -> Result<Question, ApiError> {
    let ip: IpAddr =
        r.ip.trim()
            .parse()
            .map_err(|_| ApiError::invalid("ip", format!("{:?} is not an IP address", r.ip)))?;
    let mut facts = ClientFacts::new(ip.to_canonical());
    if let Some(name) = &r.cert_name {
        let name = name.trim().to_ascii_lowercase();
        relayward_policy::cert_name::validate(&name)
            .map_err(|e| ApiError::invalid("cert_name", e.to_string()))?;
        facts.cert_names = vec![name];
        facts.tls = true;
    }
    if let Some(user) = &r.auth_user {
        match dir.auth_connector(user) {
            Some(c) => facts.auth_connector = Some(c.id),
            None => facts.auth_user_tried = Some(user.clone()),
        }
        facts.tls = true;
    }
    facts.tls |= r.tls;
    let sender = match r.from.trim() {
        "" | "<>" => None,
        s => Some(
            Address::parse(s.trim_matches(['<', '>']), true)
                .map_err(|e| ApiError::invalid("from", format!("{s:?}: {e}")))?,
        ),
    };
    if r.to.is_empty() {
        return Err(ApiError::invalid("to", "at least one recipient"));
    }
    let recipients =
        r.to.iter()
            .map(|t| {
                Address::parse(t.trim().trim_matches(['<', '>']), true)
                    .map_err(|e| ApiError::invalid("to", format!("{t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
    let header_from_domain = r.header_from.as_deref().map(|h| {
        h.rsplit('@')
            .next()
            .unwrap_or(h)
            .trim_matches(['<', '>', ' '])
            .to_lowercase()
    });
    Ok(Question {
        facts,
        sender,
        recipients,
        header_from_domain,
    })
}

/// Diagnose against the relay's live directory and sender limits (or the store's directory and
/// standing restrictions when the relay is not running in this process).
pub async fn run(state: &AppState, r: &DiagnoseRequest) -> ApiResult<DiagnosisView> {
    let dir: Arc<Directory> = match state.control().directory() {
        Some(d) => d,
        None => Arc::new(Directory::new(state.store().load_directory().await?)),
    };
    let q = question(&dir, r)?;
    let restricted = state.control().restricted_senders().await;
    let control = state.control();
    let limits = |tenant: TenantId, sender: &Address| -> Result<(), Reply> {
        if let Some(r) = control.sender_limit_verdict(tenant, sender) {
            return r;
        }
        let key = relayward_policy::counters::sender_key(sender);
        if restricted.contains(&(tenant, key)) {
            Err(reply::SENDER_RESTRICTED)
        } else {
            Ok(())
        }
    };
    let suppressions = match control.suppressions() {
        Some(list) => list,
        None => {
            let list = relayward_policy::suppression::SuppressionList::new();
            list.apply(
                &state
                    .store()
                    .suppression_updates(0, relayward_core::now())
                    .await?,
            );
            Arc::new(list)
        }
    };
    Ok(DiagnosisView::from_diagnosis(&diagnose(
        &dir,
        &q,
        &limits,
        &suppressions,
    )))
}

#[utoipa::path(
    post, path = "/v1/diagnose", operation_id = "diagnoseTransaction", tag = "diagnose",
    summary = "The decision the relay would take right now, step by step",
    description = "Attribution, sender class, relay rule, restriction state and sender limits for a described client and transaction, with the exact reply, by the same rules as a live session. A tenant admin sees the steps only when the client is attributed to its own tenant.",
    request_body = DiagnoseRequest,
    responses(
        (status = 200, description = "The decision", body = DiagnosisView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_diagnose(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DiagnoseRequest>,
) -> ApiResult<Json<DiagnosisView>> {
    let view = run(&state, &body).await?;
    if caller.is_operator()
        || (view.tenant_id.is_some() && view.tenant_id == caller.tenant().map(i64::from))
    {
        Ok(Json(view))
    } else {
        Ok(Json(view.redacted()))
    }
}
