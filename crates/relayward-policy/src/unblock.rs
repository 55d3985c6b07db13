//! The way back from a block, as rules: what a tenant admin attests when asking for unblock,
//! what the evidence of the block still asks for ([`missing`]), and the checklist a tenant admin
//! sees ([`checklist`]). The transitions themselves are the detector's state machine; recording
//! them is the store's.

use std::collections::BTreeSet;
use std::fmt;

use relayward_core::{AcceptedDomain, SenderClass, TenantState};

use crate::evidence::Evidence;

/// What a tenant admin attests when asking for unblock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attestation {
    /// Every domain the tenant sends from is registered and verified.
    pub domains_registered: bool,
    /// Connector changes of the last 7 days were reviewed.
    pub connectors_reviewed: bool,
    /// The servers that sent the mail were found and secured.
    pub servers_secured: bool,
    /// Domains of the evidence whose mail the tenant forwards for others (normalized).
    pub forwarded_domains: Vec<String>,
}

impl Attestation {
    /// Everything attested: a request through the admin API is itself the attestation.
    pub fn all(forwarded_domains: Vec<String>) -> Attestation {
        Attestation {
            domains_registered: true,
            connectors_reviewed: true,
            servers_secured: true,
            forwarded_domains,
        }
    }

    pub fn gives(&self, item: Attest) -> bool {
        match item {
            Attest::DomainsRegistered => self.domains_registered,
            Attest::ConnectorsReviewed => self.connectors_reviewed,
            Attest::ServersSecured => self.servers_secured,
        }
    }
}

/// One statement of an [`Attestation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attest {
    DomainsRegistered,
    ConnectorsReviewed,
    ServersSecured,
}

impl Attest {
    pub const ALL: [Attest; 3] = [
        Attest::DomainsRegistered,
        Attest::ConnectorsReviewed,
        Attest::ServersSecured,
    ];

    /// What the statement says.
    pub fn what(self) -> &'static str {
        match self {
            Attest::DomainsRegistered => "every domain you send from is registered",
            Attest::ConnectorsReviewed => "connector changes were reviewed",
            Attest::ServersSecured => "the servers that sent the mail are secured",
        }
    }
}

/// One thing still missing before a request for unblock is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Domains of the evidence that look like the tenant's own traffic and are neither
    /// verified accepted domains nor declared forwarded.
    UnregisteredDomains(Vec<String>),
    /// Connector changes in the evidence (`action detail` each), not acknowledged.
    ConnectorChanges(Vec<String>),
    NotAttested(Attest),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::UnregisteredDomains(domains) => write!(
                f,
                "these domains in the evidence are neither verified accepted domains of the tenant nor declared forwarded: {} (register and verify them, or declare them forwarded)",
                domains.join(", ")
            ),
            Missing::ConnectorChanges(changes) => write!(
                f,
                "{} connector change(s) in the evidence ({}) not acknowledged: review them",
                changes.len(),
                changes.join("; ")
            ),
            Missing::NotAttested(item) => write!(f, "not attested: {}", item.what()),
        }
    }
}

/// Every unregistered sender domain the evidence names (top list and samples), sorted.
pub fn unregistered_domains(e: &Evidence) -> Vec<String> {
    let mut out: BTreeSet<String> = e
        .observations
        .top_unregistered_domains
        .iter()
        .map(|t| t.key.to_ascii_lowercase())
        .collect();
    for s in &e.observations.samples {
        if s.class != SenderClass::Unregistered {
            continue;
        }
        if let Some((_, domain)) = s.sender.as_deref().and_then(|a| a.rsplit_once('@')) {
            out.insert(domain.to_ascii_lowercase());
        }
    }
    out.into_iter().collect()
}

/// The evidence's unregistered domains split in two: those that look like the tenant's own
/// traffic (seen before the incident, recurring), which the tenant registers or declares
/// forwarded, and one-off domains of the incident itself (spam senders: nothing to do). Evidence
/// recorded without that distinction puts every domain in the first group.
pub fn split_domains(e: &Evidence) -> (Vec<String>, Vec<String>) {
    let all = unregistered_domains(e);
    match &e.observations.familiar_domains {
        None => (all, Vec::new()),
        Some(familiar) => all
            .into_iter()
            .partition(|d| familiar.iter().any(|f| f.eq_ignore_ascii_case(d))),
    }
}

/// What is still missing before a tenant may move from `blocked_unregistered` to
/// `under_review`: every attestation given; every own-traffic domain of the latest block's
/// `evidence` a verified accepted domain (of `verified`) or declared forwarded (before, in
/// `forwarded`, or with the request); the evidence's connector changes acknowledged.
pub fn missing(
    evidence: Option<&Evidence>,
    verified: &[AcceptedDomain],
    forwarded: &[String],
    a: &Attestation,
) -> Vec<Missing> {
    let mut out = Vec::new();
    if let Some(e) = evidence {
        let (own, _spam) = split_domains(e);
        let unregistered: Vec<String> = own
            .into_iter()
            .filter(|d| {
                !verified.iter().any(|v| v.verified && v.covers(d))
                    && !forwarded.contains(d)
                    && !a.forwarded_domains.contains(d)
            })
            .collect();
        if !unregistered.is_empty() {
            out.push(Missing::UnregisteredDomains(unregistered));
        }
        if !e.connector_changes.is_empty() && !a.connectors_reviewed {
            out.push(Missing::ConnectorChanges(
                e.connector_changes
                    .iter()
                    .map(|c| format!("{} {}", c.action, c.detail))
                    .collect(),
            ));
        }
    }
    for item in Attest::ALL {
        // The connector changes above already ask for that review.
        let asked = item == Attest::ConnectorsReviewed
            && out
                .iter()
                .any(|m| matches!(m, Missing::ConnectorChanges(_)));
        if !a.gives(item) && !asked {
            out.push(Missing::NotAttested(item));
        }
    }
    out
}

/// One step of the way back, done or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecklistItem {
    pub met: bool,
    pub text: String,
}

impl fmt::Display for ChecklistItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", if self.met { "x" } else { " " }, self.text)
    }
}

/// The tenant admin's checklist in `state`, and whether a request for unblock would be taken
/// now. `evidence_missing` is [`missing`] with every statement attested (the request attests
/// them); `spam_domains` the one-off domains of the incident; `request_path` where the request
/// is made.
pub fn checklist(
    state: TenantState,
    evidence_missing: &[Missing],
    spam_domains: &[String],
    request_path: &str,
) -> (Vec<ChecklistItem>, bool) {
    use TenantState::*;
    let item = |met: bool, text: &str| ChecklistItem {
        met,
        text: text.to_string(),
    };
    match state {
        BlockedUnregistered | UnderReview | Probation => {
            let requested = state != BlockedUnregistered;
            let can_request = !requested && evidence_missing.is_empty();
            let mut out = vec![match evidence_missing.first() {
                Some(m) => item(false, &m.to_string()),
                None => item(
                    true,
                    "every unregistered sender domain of the evidence that looks like your own traffic is a verified accepted domain or declared forwarded",
                ),
            }];
            if !spam_domains.is_empty() {
                out.push(item(
                    true,
                    &format!(
                        "spam senders seen, nothing to do: {} (one-off domains of the incident, never seen before it)",
                        spam_domains.join(", ")
                    ),
                ));
            }
            out.extend([
                item(
                    requested,
                    "find the server or account that sent the mail (source IP addresses, connector and samples in the evidence) and secure it",
                ),
                item(
                    requested,
                    "review the connectors (their audit flags and the changes of the last 7 days in the evidence) and disable or delete any you did not set up",
                ),
                item(requested, &format!("ask for unblock: {request_path}")),
                item(
                    state == Probation,
                    "the operator reviews the request and unblocks (probation with tightened thresholds)",
                ),
            ]);
            (out, can_request)
        }
        BlockedAll => (
            vec![
                item(
                    false,
                    "find and secure the servers that send through the relay (every message is refused with 5.7.705)",
                ),
                item(
                    false,
                    "contact the relay operator, who unblocks (probation with tightened thresholds)",
                ),
            ],
            false,
        ),
        _ => (Vec::new(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_asked_for_once() {
        let none = Attestation::default();
        let m = missing(None, &[], &[], &none);
        assert_eq!(
            m,
            Attest::ALL.map(Missing::NotAttested).to_vec(),
            "without evidence only the statements are missing"
        );
        assert!(missing(None, &[], &[], &Attestation::all(Vec::new())).is_empty());
    }

    #[test]
    fn checklist_follows_the_state() {
        let (items, can) = checklist(TenantState::BlockedUnregistered, &[], &[], "POST /x");
        assert!(can);
        assert!(items[0].met);
        assert_eq!(items.last().unwrap().to_string().get(..4), Some("[ ] "));
        let pending = [Missing::UnregisteredDomains(vec!["a.example".into()])];
        let (items, can) = checklist(TenantState::BlockedUnregistered, &pending, &[], "POST /x");
        assert!(!can);
        assert!(items[0].to_string().starts_with("[ ] these domains"));
        assert!(items[0].text.contains(": a.example ("));
        let (_, can) = checklist(TenantState::UnderReview, &[], &[], "POST /x");
        assert!(!can, "already requested");
        assert!(checklist(TenantState::Active, &[], &[], "POST /x")
            .0
            .is_empty());
    }
}
