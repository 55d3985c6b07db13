//! Evidence as people read it: the summary lines of alerts and `relayward tenant show`, and the
//! steps that get a tenant unblocked.

use std::collections::HashMap;

use relayward_core::{ConnectorId, TenantState};
use relayward_policy::detector::{Rule, Signal, Window};
use relayward_policy::evidence::{Evidence, TopEntry};

use crate::table::time_ms;

fn top(entries: &[TopEntry], n: usize) -> String {
    entries
        .iter()
        .take(n)
        .map(|e| format!("{} ({})", e.key, e.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a rule measured, in words.
fn rule_text(s: &Signal) -> String {
    let window = match s.window {
        Window::Minute => "in the last minute",
        Window::Hour => "in the last hour",
        Window::Day => "in the last 24 hours",
        Window::Week => "in the last 7 days",
    };
    let pct = |v: f64| format!("{:.1} %", v * 100.0);
    match s.rule {
        Rule::UnregisteredVolume => format!(
            "{} messages from unregistered or null senders {window} (warn above {:.0}, block above {:.0})",
            s.observed, s.warn_threshold, s.block_threshold
        ),
        Rule::UnregisteredBurst => format!(
            "{} messages from unregistered or null senders {window} (warn above {:.0}, block above {:.0})",
            s.observed, s.warn_threshold, s.block_threshold
        ),
        Rule::UnregisteredDomains => format!(
            "{} distinct unregistered sender domains {window} (warn above {:.0}, block above {:.0})",
            s.observed, s.warn_threshold, s.block_threshold
        ),
        Rule::UnregisteredShare => format!(
            "share of unregistered mail {window} {} above the usual (warn above {}, block above {})",
            pct(s.observed),
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
        Rule::SpamRejections => format!(
            "{} of remote replies {window} refused the mail as spam or by policy, {} refusals (warn above {}, block above {})",
            pct(s.observed),
            s.events,
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
        Rule::HeaderMismatch => format!(
            "{} of registered messages {window} had a header From outside the tenant's domains, {} messages (warn above {}, block above {})",
            pct(s.observed),
            s.events,
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
        Rule::BounceRate => format!(
            "{} of delivered or bounced recipients {window} were hard bounces, {} bounces (warn above {}, block above {})",
            pct(s.observed),
            s.events,
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
        Rule::ComplaintRate => format!(
            "{} of delivered or bounced recipients {window} complained of spam, {} complaints (warn above {}, block above {})",
            pct(s.observed),
            s.events,
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
        Rule::SpamVerdicts => format!(
            "{} of scanned messages {window} were judged spam by the content scanner, {} verdicts (warn above {}, block above {})",
            pct(s.observed),
            s.events,
            pct(s.warn_threshold),
            pct(s.block_threshold)
        ),
    }
}

/// Is this one of the rules about unregistered-sender mail?
pub fn is_unregistered_rule(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::UnregisteredVolume
            | Rule::UnregisteredBurst
            | Rule::UnregisteredDomains
            | Rule::UnregisteredShare
    )
}

/// The connector that carried most unregistered and null-sender mail in the last hour.
pub fn spike_connector(e: &Evidence) -> Option<(ConnectorId, u64)> {
    e.observations
        .connectors
        .iter()
        .map(|c| (c.connector, c.windows.hour.not_registered()))
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(_, n)| *n)
}

pub use relayward_policy::unblock::{split_domains, unregistered_domains};

/// The evidence summary: the rules that decided, the counts, top domains, senders and source
/// addresses, the connectors, their recent changes, and sample messages.
pub fn evidence_lines(e: &Evidence, connector_names: &HashMap<ConnectorId, String>) -> Vec<String> {
    let name = |id: ConnectorId| match connector_names.get(&id) {
        Some(n) => format!("{n} (id {id})"),
        None => format!("id {id}"),
    };
    let o = &e.observations;
    let mut out = Vec::new();
    for s in &e.signals {
        out.push(format!(
            "Rule {} at {:?} level: {}",
            s.rule.as_str(),
            s.level,
            rule_text(s)
        ));
    }
    if let Some(shape) = &e.shape {
        out.push(format!("Traffic {}", shape.describe()));
    }
    let (m, h, d) = (&o.windows.minute, &o.windows.hour, &o.windows.day);
    out.push(format!(
        "Last hour: {} messages, {} from unregistered senders ({} distinct domains, {} distinct addresses), {} null-sender, {} header From mismatches; last minute: {} messages, {} unregistered; last 24 hours: {} messages, {} unregistered",
        h.messages,
        h.unregistered_messages,
        h.unregistered_domains,
        h.unregistered_senders,
        h.null_messages,
        h.mismatches,
        m.messages,
        m.not_registered(),
        d.messages,
        d.not_registered(),
    ));
    if h.refused > 0 || d.refused > 0 {
        out.push(format!(
            "Refused by the tenant's restriction state: {} in the last hour, {} in the last 24 hours",
            h.refused, d.refused
        ));
    }
    if h.scanned > 0 {
        out.push(format!(
            "Content scan in the last hour: {} of {} messages judged spam",
            h.scan_spam, h.scanned
        ));
    }
    if h.dkim_checked > 0 {
        out.push(format!(
            "DKIM of unregistered mail in the last hour: {} of {} checked verified for their header From domain ({} distinct domains)",
            h.dkim_pass, h.dkim_checked, h.dkim_pass_domains
        ));
    }
    if h.remote_total() > 0 {
        out.push(format!(
            "Remote replies in the last hour: {} delivered, {} refused as spam or by policy, {} unknown mailbox, {} other",
            h.remote_delivered, h.remote_spam, h.remote_bad_mailbox, h.remote_other
        ));
    }
    out.push(format!(
        "Usual volume (hourly baseline over {} hours): {:.0} messages, {:.1} unregistered, {:.1} unregistered domains",
        o.baseline.hours,
        o.baseline.messages_per_hour,
        o.baseline.unregistered_per_hour,
        o.baseline.unregistered_domains_per_hour
    ));
    if !o.top_unregistered_domains.is_empty() {
        out.push(format!(
            "Top unregistered sender domains: {}",
            top(&o.top_unregistered_domains, 10)
        ));
    }
    if !o.top_unregistered_senders.is_empty() {
        out.push(format!(
            "Top unregistered senders: {}",
            top(&o.top_unregistered_senders, 10)
        ));
    }
    if !o.top_source_ips.is_empty() {
        out.push(format!(
            "Source IP addresses: {}",
            top(&o.top_source_ips, 10)
        ));
    }
    for c in &o.connectors {
        let w = &c.windows.hour;
        out.push(format!(
            "Connector {}: {} messages in the last hour, {} of them from unregistered or null senders",
            name(c.connector),
            w.messages,
            w.not_registered()
        ));
    }
    if e.connector_changes.is_empty() {
        out.push("Connector changes in the last 7 days: none".into());
    } else {
        for c in &e.connector_changes {
            out.push(format!(
                "Connector change {}: {} {} by {}: {}",
                time_ms(c.at_ms),
                c.action,
                name(c.connector),
                c.actor,
                c.detail
            ));
        }
    }
    for s in o.samples.iter().rev().take(5) {
        out.push(format!(
            "Sample: queue id {}, Message-ID {}, sender <{}> ({}{}), from {}, connector {}, at {}",
            s.queue_id.as_deref().unwrap_or("-"),
            s.message_id.as_deref().unwrap_or("-"),
            s.sender.as_deref().unwrap_or(""),
            s.class,
            if s.mismatch {
                ", header From mismatch"
            } else {
                ""
            },
            s.client_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into()),
            name(s.connector),
            time_ms(s.at_ms)
        ));
    }
    for r in o.rejection_samples.iter().rev().take(3) {
        out.push(format!(
            "Remote refusal: queue id {}, sender <{}>: {}",
            r.queue_id.as_deref().unwrap_or("-"),
            r.sender.as_deref().unwrap_or(""),
            r.reply.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// What the tenant's admins should do now.
pub fn steps(tenant: &str, to: TenantState) -> Vec<String> {
    match to {
        TenantState::BlockedUnregistered | TenantState::UnderReview => vec![
            "Find the server or account that sent this mail (see the source IP addresses, the connector and the samples above) and secure it: patch it, rotate its credentials, and close any open relay.".into(),
            "Review the connector changes of the last 7 days and undo any you did not make.".into(),
            "Register every domain you legitimately send from (`relayward domain add` and `relayward domain verify`); mail you forward for others (mailing lists, forwarding rules) can be declared with --forwarded-domain.".into(),
            format!("Then ask for unblock: `relayward tenant request-unblock {tenant} --domains-registered --connectors-reviewed --servers-secured [--forwarded-domain DOMAIN]...`. The relay operator reviews the request; after an unblock the tenant is on probation (tighter thresholds) for 7 days."),
            "Mail from your registered domains keeps flowing meanwhile; queued mail from unregistered senders is held, not delivered.".into(),
        ],
        TenantState::BlockedAll => vec![
            "Every message of the tenant is refused (550 5.7.705). Secure the servers that send through the relay, then contact the relay operator to be unblocked.".into(),
        ],
        TenantState::Warned => vec![
            "No mail is refused yet. Check that the mail above is yours: register the domains you send from, and secure the server or connector if it is not.".into(),
            "If the volume keeps rising, unregistered senders will be refused with 550 5.7.750.".into(),
        ],
        _ => Vec::new(),
    }
}

/// One line on a tenant's reputation: its level and both windows' rates.
pub fn reputation_line(r: &relayward_policy::reputation::ReputationStatus) -> String {
    let window = |name: &str, w: &relayward_policy::reputation::Rates| {
        format!(
            "{name}: {} messages, bounces {:.2} %, complaints {:.3} %{}",
            w.messages,
            w.bounce_rate * 100.0,
            w.complaint_rate * 100.0,
            if w.representative {
                ""
            } else {
                " (below the minimum volume)"
            }
        )
    };
    format!(
        "reputation: {} ({}; {})",
        r.level.as_str(),
        window("24 h", &r.day),
        window("7 days", &r.week)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::{SenderClass, TenantId};
    use relayward_policy::detector::{Cause, Level, Transition};
    use relayward_policy::evidence::{Observations, Sample};

    #[test]
    fn summary_names_rule_domains_and_samples() {
        let t = Transition {
            tenant: TenantId(1),
            at_ms: 1_767_225_600_000,
            from: TenantState::Active,
            to: TenantState::BlockedUnregistered,
            cause: Cause::Detector,
            signals: vec![Signal {
                rule: Rule::UnregisteredDomains,
                window: Window::Hour,
                level: Level::Block,
                observed: 21.0,
                warn_threshold: 5.0,
                block_threshold: 20.0,
                events: 21,
                armed: true,
            }],
            probation_until_ms: None,
            summary: "block-level signal".into(),
            shape: None,
        };
        let obs = Observations {
            top_unregistered_domains: vec![TopEntry {
                key: "spam1.example".into(),
                count: 3,
                error: 0,
            }],
            samples: vec![Sample {
                at_ms: t.at_ms,
                class: SenderClass::Unregistered,
                mismatch: false,
                connector: ConnectorId(4),
                sender: Some("x@Spam2.example".into()),
                client_ip: Some("192.0.2.9".parse().unwrap()),
                queue_id: Some("Q1".into()),
                message_id: Some("<m@x>".into()),
            }],
            ..Observations::default()
        };
        let e = Evidence::new(&t, obs);
        let names = HashMap::from([(ConnectorId(4), "edge".to_string())]);
        let text = evidence_lines(&e, &names).join("\n");
        assert!(text.contains("Rule unregistered_domains at Block level: 21 distinct unregistered sender domains in the last hour (warn above 5, block above 20)"), "{text}");
        assert!(text.contains("Top unregistered sender domains: spam1.example (3)"));
        assert!(text.contains("queue id Q1, Message-ID <m@x>, sender <x@Spam2.example>"));
        assert!(text.contains("connector edge (id 4)"));
        assert_eq!(
            unregistered_domains(&e),
            vec!["spam1.example".to_string(), "spam2.example".to_string()]
        );
        assert!(steps("acme", TenantState::BlockedUnregistered)[3]
            .contains("relayward tenant request-unblock acme"));
    }
}
