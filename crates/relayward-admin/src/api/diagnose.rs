//! `POST /v1/diagnose`: the decision the relay would take right now for a described client and
//! transaction (see `relayward_policy::diagnose`), for the operator or a tenant admin.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use relayward_core::{reply, Address, Reply, TenantId};
use relayward_policy::diagnose::{diagnose, Diagnosis, Question};
use relayward_policy::{ClientFacts, Directory};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::extract::ApiJson;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::AppState;

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagnoseRequest {
    /// The client's address.
    pub ip: String,
    /// Suppose the client presents a verified TLS client certificate with this name.
    #[serde(default)]
    pub cert_name: Option<String>,
    /// Suppose the client authenticated (SMTP AUTH) as this user.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// Suppose the session is TLS (implied by cert_name and auth_user).
    #[serde(default)]
    pub tls: bool,
    /// MAIL FROM; empty for the null sender.
    pub from: String,
    /// RCPT TO addresses, at least one.
    pub to: Vec<String>,
    /// The header From address or domain.
    #[serde(default)]
    pub header_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiagnoseStep {
    /// attribution, mail_from, rcpt_to, sender_limits or header_from.
    pub step: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiagnosisView {
    pub steps: Vec<DiagnoseStep>,
    /// The command that gets the final reply: MAIL, RCPT or DATA.
    pub at: String,
    /// The exact reply the client would get there.
    pub reply: String,
    /// The refusal's machine-readable reason, when the relay rule refuses.
    pub reason: Option<String>,
    /// The refusal's facts, as a refused transaction's trace event carries them.
    pub explanation: Option<String>,
    pub tenant_id: Option<i64>,
    pub connector_id: Option<i64>,
    pub method: Option<String>,
    /// registered, unregistered or null.
    pub sender_class: Option<String>,
}

impl DiagnosisView {
    pub fn from_diagnosis(d: &Diagnosis) -> DiagnosisView {
        DiagnosisView {
            steps: d
                .steps
                .iter()
                .map(|s| DiagnoseStep {
                    step: s.step.to_string(),
                    passed: s.passed,
                    detail: s.detail.clone(),
                })
                .collect(),
            at: d.at.to_string(),
            reply: d.reply.to_string(),
            reason: d.reason.map(str::to_string),
            explanation: d.explanation.clone(),
            tenant_id: d.attributed.map(|a| a.tenant_id),
            connector_id: d.attributed.map(|a| a.connector_id),
            method: d.attributed.map(|a| a.method.as_str().to_string()),
            sender_class: d.class.map(|c| c.as_str().to_string()),
        }
    }

    /// What a tenant admin may see of a decision about another tenant or nobody: the reply.
    fn redacted(self) -> DiagnosisView {
        DiagnosisView {
            steps: vec![DiagnoseStep {
                step: "attribution".into(),
                passed: false,
                detail: "not attributed to your tenant".into(),
            }],
            at: self.at,
            reply: self.reply,
            reason: None,
            explanation: None,
            tenant_id: None,
            connector_id: None,
            method: None,
            sender_class: None,
        }
    }
}

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
            .map_err(|e| ApiError::invalid("cert_name", e))?;
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
    if caller.is_operator() || (view.tenant_id.is_some() && view.tenant_id == caller.tenant()) {
        Ok(Json(view))
    } else {
        Ok(Json(view.redacted()))
    }
}
