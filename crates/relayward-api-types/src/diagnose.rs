//! The relay's decision for a client and transaction, step by step.

use relayward_policy::diagnose::Diagnosis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
            tenant_id: d.attributed.map(|a| a.tenant_id.0),
            connector_id: d.attributed.map(|a| a.connector_id.0),
            method: d.attributed.map(|a| a.method.as_str().to_string()),
            sender_class: d.class.map(|c| c.as_str().to_string()),
        }
    }

    /// What a tenant admin may see of a decision about another tenant or nobody: the reply.
    pub fn redacted(self) -> DiagnosisView {
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
