//! The tables and texts the commands print, from the API's answers: one printer per kind of
//! answer, the same locally and with `--server`.

use std::collections::HashMap;

use relayward_client::types::*;
use relayward_policy::evidence::Evidence;

use crate::abuse::report;
use crate::table;

pub fn tenants(tenants: &[TenantView]) {
    let rows = tenants
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.state.to_string(),
                t.admin_emails.join(","),
                table::time(t.created_at),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["ID", "NAME", "STATE", "ADMINS", "CREATED"], &rows);
}

pub fn domains(domains: &[DomainView]) {
    let rows = domains
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.kind.clone(),
                if d.match_subdomains { "yes" } else { "no" }.into(),
                d.status.clone(),
                d.verification_record.value.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["DOMAIN", "KIND", "SUBDOMAINS", "STATUS", "TXT RECORD"],
        &rows,
    );
}

/// A connector's own settings that change how it works, as flags.
fn connector_flags(c: &ConnectorView) -> Vec<&'static str> {
    let mut flags = Vec::new();
    for (on, name) in [
        (c.require_tls, "require-tls"),
        (c.allow_unregistered, "allow-unregistered"),
        (c.restrict_domains_to_ips, "restrict-to-ips"),
        (c.restrict_domains_to_cert, "restrict-to-cert"),
        (!c.enabled, "disabled"),
        (c.blocked, "BLOCKED"),
        (c.audit.cert_name_unverified, "cert-name-unverified"),
        (c.audit.auth_lockout_24h, "auth-locked"),
    ] {
        if on {
            flags.push(name);
        }
    }
    flags
}

pub fn connectors(connectors: &[ConnectorView]) {
    let rows = connectors
        .iter()
        .map(|c| {
            // The audit flags not already among the connector's flags.
            let audit = c
                .audit
                .flags
                .iter()
                .filter(|f| !matches!(f.as_str(), "cert_name_unverified" | "auth_lockout_24h"))
                .map(String::as_str)
                .collect::<Vec<_>>();
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.kind.clone(),
                c.ip_ranges.join(","),
                c.cert_name.clone().unwrap_or_default(),
                c.auth_user.clone().unwrap_or_default(),
                connector_flags(c).join(","),
                c.last_used_at
                    .map(table::time)
                    .unwrap_or_else(|| "never".into()),
                audit.join(","),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "ID",
            "NAME",
            "KIND",
            "IP RANGES",
            "CERT NAME",
            "AUTH USER",
            "FLAGS",
            "LAST USED",
            "AUDIT",
        ],
        &rows,
    );
}

pub fn header_from(declared: &[HeaderFromView], connectors: &[ConnectorView]) {
    let rows = declared
        .iter()
        .map(|a| {
            vec![
                a.domain.clone(),
                a.connector_id
                    .and_then(|id| connectors.iter().find(|c| c.id == id))
                    .map_or("any".to_string(), |c| c.name.clone()),
                table::time(a.declared_at),
                a.declared_by.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["HEADER FROM", "CONNECTOR", "DECLARED", "BY"], &rows);
}

/// Sender restrictions, each with the name of its tenant.
pub fn restrictions(rows: &[(String, SenderRestrictionView)]) {
    let rows = rows
        .iter()
        .map(|(tenant, r)| {
            vec![
                tenant.clone(),
                r.sender.clone(),
                table::time_ms(r.since_ms),
                r.until_ms
                    .map(table::time_ms)
                    .unwrap_or_else(|| "until lifted".into()),
                r.action.clone(),
                r.reason.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["TENANT", "SENDER", "SINCE", "UNTIL", "ACTION", "REASON"],
        &rows,
    );
}

pub fn sender_limits(l: &SenderLimitsView) -> String {
    format!(
        "{} external recipients/hour, {} recipients/day, {} messages/minute, action {}",
        l.external_recipients_per_hour,
        l.recipients_per_day,
        l.messages_per_minute,
        serde_json::to_value(l.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    )
}

pub fn suppressions(list: &[SuppressionView]) {
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.address.clone(),
                s.source.as_str().to_string(),
                table::time(s.created_at),
                match s.expires_at {
                    Some(at) => table::time(at),
                    None => "until removed".into(),
                },
                s.created_by.clone(),
                s.reason.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["ADDRESS", "SOURCE", "SINCE", "UNTIL", "BY", "REASON"],
        &rows,
    );
}

pub fn tokens(tokens: &[TokenInfo]) {
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.scope.clone(),
                t.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                t.label.clone(),
                table::time(t.created_at),
                t.created_by.clone(),
                match t.last_used_at {
                    Some(at) => table::time(at),
                    None => "never".into(),
                },
                match t.revoked_at {
                    Some(at) => format!(
                        "{} by {}",
                        table::time(at),
                        t.revoked_by.clone().unwrap_or_default()
                    ),
                    None => String::new(),
                },
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "ID",
            "SCOPE",
            "TENANT",
            "LABEL",
            "CREATED",
            "BY",
            "LAST USED",
            "REVOKED",
        ],
        &rows,
    );
}

/// Trace events, oldest first.
pub fn trace(events: &[TraceEventView]) {
    let rows = events
        .iter()
        .map(|e| {
            vec![
                table::time_ms(e.at_ms),
                e.kind.to_string(),
                e.queue_id.clone().unwrap_or_default(),
                e.sender.clone().unwrap_or_default(),
                e.recipient.clone().unwrap_or_default(),
                match (&e.reply, &e.detail) {
                    (Some(r), Some(d)) if e.kind == relayward_core::TraceKind::Refused => {
                        format!("{r} ({d})")
                    }
                    (Some(r), _) => r.clone(),
                    (None, d) => d.clone().unwrap_or_default(),
                },
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "TIME",
            "EVENT",
            "QUEUE ID",
            "SENDER",
            "RECIPIENT",
            "REPLY/DETAIL",
        ],
        &rows,
    );
}

pub fn nodes(nodes: &[NodeView]) {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.version.clone(),
                table::time(n.started_at),
                table::time(n.last_seen),
                n.queue_depth.to_string(),
                n.smtp_addr.clone().unwrap_or_default(),
                n.api_addr.clone().unwrap_or_default(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "NAME",
            "VERSION",
            "STARTED",
            "LAST SEEN",
            "QUEUED",
            "SMTP",
            "API",
        ],
        &rows,
    );
}

pub fn audit(entries: &[AuditView]) {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                table::time(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                e.detail.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"], &rows);
}

/// `held`, or the recipients' statuses counted.
fn message_status(m: &QueuedMessage) -> String {
    if m.held {
        return "held".into();
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &m.recipients {
        *counts.entry(r.status.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    parts.sort();
    parts.join(",")
}

pub fn queue(messages: &[QueuedMessage]) {
    let rows = messages
        .iter()
        .map(|m| {
            vec![
                m.queue_id.clone(),
                table::time(m.received_at),
                m.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                if m.sender.is_empty() {
                    "<>".into()
                } else {
                    m.sender.clone()
                },
                m.recipients.len().to_string(),
                m.size.to_string(),
                message_status(m),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "QUEUE ID", "RECEIVED", "TENANT", "SENDER", "RCPTS", "SIZE", "STATUS",
        ],
        &rows,
    );
}

pub fn message(m: &QueuedMessage) {
    println!("queue id: {}", m.queue_id);
    println!(
        "received: {} from [{}]",
        table::time(m.received_at),
        m.client_ip
    );
    println!(
        "tenant: {}  connector: {}",
        m.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
        m.connector_id.map(|c| c.to_string()).unwrap_or_default()
    );
    println!("sender: <{}> ({})", m.sender, m.sender_class);
    println!("message-id: {}", m.message_id.clone().unwrap_or_default());
    println!("size: {}", m.size);
    if m.held {
        println!("held: yes");
    }
    let rows = m
        .recipients
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.status.clone(),
                r.attempts.to_string(),
                r.last_reply.clone().unwrap_or_default(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["RECIPIENT", "STATUS", "ATTEMPTS", "LAST REPLY"], &rows);
}

pub fn diagnosis(v: &DiagnosisView) {
    let rows = v
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.clone(),
                if s.passed { "ok" } else { "REFUSED" }.to_string(),
                s.detail.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["STEP", "RESULT", "DETAIL"], &rows);
    println!("\nreply at {}: {}", v.at, v.reply);
    if let Some(e) = &v.explanation {
        println!("why: {e}");
    }
}

/// Everything `tenant show` gathers about one tenant.
#[derive(Debug, serde::Serialize)]
pub struct TenantShow {
    pub tenant: TenantView,
    pub status: TenantStatusReport,
    pub domains: Vec<DomainView>,
    pub connectors: Vec<ConnectorView>,
    pub sender_limits: SenderLimitsView,
    pub sender_restrictions: Vec<SenderRestrictionView>,
}

pub fn tenant_show(s: &TenantShow) {
    let (t, status) = (&s.tenant, &s.status);
    println!("tenant {} (id {})", t.name, t.id);
    println!("state: {}", status.state);
    if let Some(since) = status.since_ms {
        println!("since: {}", table::time_ms(since));
    }
    if let Some(summary) = &status.summary {
        println!("last change: {summary}");
    }
    if let Some(until) = status.probation_until_ms {
        println!("probation until: {}", table::time_ms(until));
    }
    if let Some(rep) = &status.reputation {
        println!("{}", report::reputation_line(rep));
        for reason in &rep.reasons {
            println!("  - {reason}");
        }
    }
    println!("admins: {}", t.admin_emails.join(", "));
    println!("\ndomains:");
    domains(&s.domains);
    if !status.forwarded_domains.is_empty() {
        println!(
            "forwarded (declared): {}",
            status.forwarded_domains.join(", ")
        );
    }
    println!("\nconnectors:");
    connectors(&s.connectors);
    println!(
        "\nsender limits ({}): {}",
        if s.sender_limits.own {
            "own"
        } else {
            "defaults"
        },
        sender_limits(&s.sender_limits)
    );
    if !s.sender_restrictions.is_empty() {
        println!("\nrestricted senders:");
        let rows: Vec<(String, SenderRestrictionView)> = s
            .sender_restrictions
            .iter()
            .map(|r| (t.name.clone(), r.clone()))
            .collect();
        restrictions(&rows);
    }
    // Evidence with signals is the detector's; a person's transition carries none.
    if let Some(e) = status
        .evidence
        .clone()
        .and_then(|e| serde_json::from_value::<Evidence>(e).ok())
        .filter(|e| !e.signals.is_empty())
    {
        let names: HashMap<relayward_core::ConnectorId, String> = s
            .connectors
            .iter()
            .map(|c| (relayward_core::ConnectorId(c.id), c.name.clone()))
            .collect();
        println!("\nlatest evidence:");
        for line in report::evidence_lines(&e, &names) {
            println!("  - {line}");
        }
    }
    if !status.checklist.is_empty() {
        println!("\nto get unblocked:");
        for item in &status.checklist {
            println!("  {item}");
        }
    }
    if !status.transitions.is_empty() {
        println!("\ntransitions:");
        let rows = status
            .transitions
            .iter()
            .map(|r| {
                vec![
                    table::time_ms(r.at_ms),
                    r.from.to_string(),
                    r.to.to_string(),
                    r.actor.clone(),
                    r.summary.clone(),
                ]
            })
            .collect::<Vec<_>>();
        table::print(&["TIME", "FROM", "TO", "BY", "SUMMARY"], &rows);
    }
}
