//! `relayward diagnose` / `POST /v1/diagnose`: the decision the relay would take right now for
//! a described client and transaction, step by step, with the exact reply.
//!
//! It calls the very functions a live session calls, in the order the session calls them
//! ([`attribute`], [`check_mail`], [`check_rcpt`], the sender limits, [`check_header_from`]),
//! so it cannot disagree with the relay about the rules; only the order is restated here.

use relayward_core::{reply, Address, Reply, SenderClass, TenantId};

use crate::relay::{
    attribute, check_header_from, check_mail, check_rcpt, explain, Attributed, Attribution,
    ClientFacts, MailOutcome, Refusal,
};
use crate::suppression::{Hit, SuppressionList};
use crate::Directory;

/// One step of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `attribution`, `mail_from`, `rcpt_to`, `sender_limits`, `suppression`, `header_from`.
    pub step: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub steps: Vec<Step>,
    /// The command that gets the final reply: `MAIL`, `RCPT` or `DATA`.
    pub at: &'static str,
    /// The reply the client would get there (for an accepted message, the 250 after DATA).
    pub reply: Reply,
    /// The refusal's machine-readable reason, when refused by the relay rule.
    pub reason: Option<&'static str>,
    /// The refusal's facts (as in the trace), when refused by the relay rule.
    pub explanation: Option<String>,
    pub attributed: Option<Attributed>,
    pub class: Option<SenderClass>,
}

/// What is being asked about.
#[derive(Debug, Clone)]
pub struct Question {
    pub facts: ClientFacts,
    /// `None`: the null sender.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    /// The header From domain, when given.
    pub header_from_domain: Option<String>,
}

/// `sender_limits` answers the per-sender limits' verdict without side effects (the relay's
/// current counters, or the stored restrictions when no relay runs); `suppressions`, the
/// suppression lists (the relay's, or the store's).
pub fn diagnose(
    dir: &Directory,
    q: &Question,
    sender_limits: &dyn Fn(TenantId, &Address) -> Result<(), Reply>,
    suppressions: &SuppressionList,
) -> Diagnosis {
    let mut steps = Vec::new();
    let attribution = attribute(dir, &q.facts);
    let connector_text = |id| {
        dir.connector(id).map_or(format!("#{id}"), |c| {
            let tenant = dir.tenant(c.tenant_id).map_or("?", |t| t.name.as_str());
            format!("connector #{} {} of tenant {tenant}", c.id, c.name)
        })
    };
    steps.push(Step {
        step: "attribution",
        passed: !matches!(attribution, Attribution::Unattributed),
        detail: match &attribution {
            Attribution::Attributed(a) => {
                format!("by {}: {}", a.method.as_str(), connector_text(a.connector_id))
            }
            Attribution::Candidates(c) => format!(
                "address connectors of several tenants cover the client ({}): the MAIL FROM, then the RCPT TO domain decides",
                c.iter().map(|&id| connector_text(id)).collect::<Vec<_>>().join(", ")
            ),
            Attribution::Unattributed => "no connector recognises the client".into(),
        },
    });
    let refused = |mut steps: Vec<Step>, step, at, r: Refusal| {
        let explanation = explain(dir, &q.facts, &r);
        steps.push(Step {
            step,
            passed: false,
            detail: format!("{}: {}", r.reason.as_str(), r.reply),
        });
        Diagnosis {
            steps,
            at,
            reason: Some(r.reason.as_str()),
            explanation: Some(explanation),
            attributed: r.attributed,
            class: r.class,
            reply: r.reply,
        }
    };
    let plain = |steps, at, reply: Reply, attributed, class| Diagnosis {
        steps,
        at,
        reply,
        reason: None,
        explanation: None,
        attributed,
        class,
    };
    let (attributed, class) = match check_mail(dir, &q.facts, &attribution, q.sender.as_ref()) {
        Err(r) => return refused(steps, "mail_from", "MAIL", r),
        Ok(MailOutcome::Accepted { attributed, class }) => {
            steps.push(Step {
                step: "mail_from",
                passed: true,
                detail: format!("sender class {}: {}", class.as_str(), reply::SENDER_OK),
            });
            (attributed, class)
        }
        Ok(MailOutcome::PendingRcpt { candidates }) => {
            steps.push(Step {
                step: "mail_from",
                passed: true,
                detail: "the sender domain does not decide the tenant: the first recipient will"
                    .into(),
            });
            let Some(first) = q.recipients.first() else {
                return plain(steps, "RCPT", reply::RELAY_DENIED, None, None);
            };
            match check_rcpt(dir, &q.facts, &candidates, q.sender.as_ref(), first) {
                Err(r) => return refused(steps, "rcpt_to", "RCPT", r),
                Ok(MailOutcome::Accepted { attributed, class }) => {
                    steps.push(Step {
                        step: "rcpt_to",
                        passed: true,
                        detail: format!(
                            "recipient domain {} decides: {}; sender class {}",
                            first.domain,
                            connector_text(attributed.connector_id),
                            class.as_str()
                        ),
                    });
                    (attributed, class)
                }
                Ok(MailOutcome::PendingRcpt { .. }) => {
                    return plain(steps, "RCPT", reply::RELAY_DENIED, None, None)
                }
            }
        }
    };
    if let Some(sender) = &q.sender {
        let at = if matches!(attribution, Attribution::Candidates(_)) {
            "RCPT"
        } else {
            "MAIL"
        };
        if let Err(r) = sender_limits(attributed.tenant_id, sender) {
            steps.push(Step {
                step: "sender_limits",
                passed: false,
                detail: format!("{sender}: {r}"),
            });
            return plain(steps, at, r, Some(attributed), Some(class));
        }
        steps.push(Step {
            step: "sender_limits",
            passed: true,
            detail: format!("{sender} is within its limits"),
        });
    }
    if q.recipients.is_empty() {
        return plain(
            steps,
            "RCPT",
            reply::BAD_SEQUENCE_RCPT_FIRST,
            Some(attributed),
            Some(class),
        );
    }
    // Each suppressed recipient is refused at its RCPT; the message goes on to the others.
    let now = relayward_core::now();
    let hits: Vec<(&Address, Hit)> = q
        .recipients
        .iter()
        .filter_map(|r| Some((r, suppressions.check(attributed.tenant_id, r, now)?)))
        .collect();
    if let Some((_, hit)) = hits.first() {
        let listed = hits
            .iter()
            .map(|(r, h)| format!("{r} ({})", h.describe()))
            .collect::<Vec<_>>()
            .join(", ");
        if hits.len() == q.recipients.len() {
            let r = hit.refusal(attributed, Some(class));
            let mut d = refused(steps, "suppression", "RCPT", r);
            if let Some(step) = d.steps.last_mut() {
                step.detail = format!("{}: {listed}", step.detail);
            }
            return d;
        }
        steps.push(Step {
            step: "suppression",
            passed: true,
            detail: format!(
                "refused at RCPT with {}: {listed}; the other recipients are accepted",
                reply::RECIPIENT_SUPPRESSED
            ),
        });
    } else {
        steps.push(Step {
            step: "suppression",
            passed: true,
            detail: "no recipient is on a suppression list".into(),
        });
    }
    if let Some(from) = &q.header_from_domain {
        match check_header_from(dir, &attributed, class, Some(from)) {
            Err(r) => return refused(steps, "header_from", "DATA", r),
            Ok(mismatch) => steps.push(Step {
                step: "header_from",
                passed: true,
                detail: if mismatch {
                    format!("{from} is not an accepted domain of the tenant: the message counts as unregistered mail (header From mismatch)")
                } else {
                    format!("{from}: aligned")
                },
            }),
        }
    }
    plain(
        steps,
        "DATA",
        Reply::new(250, "2.0.0", "Ok: queued"),
        Some(attributed),
        Some(class),
    )
}
