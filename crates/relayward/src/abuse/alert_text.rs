//! The texts of the alerts a transition sends: to the tenant's admins and to the operator.

use super::*;

impl Abuse {
    pub(super) fn transition_alerts(
        &self,
        t: &Transition,
        transition_id: i64,
        evidence: &Evidence,
        held: usize,
        names: &HashMap<ConnectorId, String>,
    ) -> Vec<Alert> {
        let dir = self.directory.current();
        let Some(tenant) = dir.tenant(t.tenant) else {
            return Vec::new();
        };
        let lines = report::evidence_lines(evidence, names);
        let steps = report::steps(&tenant.name, t.to);
        let (name, slug, effect) = match t.to {
            TenantState::BlockedUnregistered => (
                alerts::TENANT_RESTRICTED_UNREGISTERED,
                "restricted-unregistered",
                format!(
                    "Mail from unregistered domains and from the null sender is now refused with \"{}\". Mail from the tenant's registered domains keeps flowing. {held} queued messages from unregistered senders were held.",
                    reply::BLOCKED_UNREGISTERED
                ),
            ),
            TenantState::BlockedAll => (
                alerts::TENANT_RESTRICTED,
                "restricted",
                format!(
                    "Every message of the tenant is now refused with \"{}\". {held} queued messages from unregistered senders were held.",
                    reply::TENANT_BLOCKED
                ),
            ),
            TenantState::Warned => (
                alerts::TENANT_WARNED,
                "warned",
                "Nothing is refused yet; the tenant is watched more closely.".to_string(),
            ),
            _ => return Vec::new(),
        };
        let what = format!(
            "At {}, relayward moved tenant {} from {} to {}: {}.",
            time_ms(t.at_ms),
            tenant.name,
            t.from,
            t.to,
            t.summary
        );
        let mut out = vec![self.alert(
            name,
            format!("transition-{transition_id}-{slug}"),
            tenant,
            &what,
            &effect,
            &lines,
            &steps,
            json!({
                "transition": {
                    "id": transition_id,
                    "from": t.from,
                    "to": t.to,
                    "at_ms": t.at_ms,
                    "cause": t.cause,
                    "summary": t.summary,
                },
                "held_messages": held,
                "evidence": evidence,
            }),
        )];
        // A connector changed in the last 7 days that carries an unregistered-mail spike.
        let unregistered_rule = t
            .signals
            .iter()
            .any(|s| report::is_unregistered_rule(s.rule));
        if let Some((connector, n)) = report::spike_connector(evidence) {
            let changes: Vec<_> = evidence
                .connector_changes
                .iter()
                .filter(|c| c.connector == connector)
                .collect();
            if unregistered_rule && !changes.is_empty() {
                let cname = names
                    .get(&connector)
                    .cloned()
                    .unwrap_or_else(|| connector.to_string());
                let what = format!(
                    "Connector {cname} of tenant {}, created or changed in the last 7 days, carried {n} messages from unregistered or null senders in the last hour; relayward moved the tenant to {} at {}.",
                    tenant.name,
                    t.to,
                    time_ms(t.at_ms)
                );
                let effect = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} by {}: {}",
                            time_ms(c.at_ms),
                            c.action,
                            c.actor,
                            c.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut steps = vec![format!(
                    "Check that you made these changes to connector {cname}; if not, disable it (`relayward connector disable {} {cname}`) and rotate its credentials.",
                    tenant.name
                )];
                steps.extend(report::steps(&tenant.name, t.to));
                out.push(self.alert(
                    alerts::SUSPICIOUS_CONNECTOR,
                    format!("transition-{transition_id}-suspicious-connector"),
                    tenant,
                    &what,
                    &format!("Recent changes:\n{effect}"),
                    &lines,
                    &steps,
                    json!({
                        "transition": {
                            "id": transition_id,
                            "from": t.from,
                            "to": t.to,
                            "at_ms": t.at_ms,
                            "summary": t.summary,
                        },
                        "connector": {"id": connector, "name": cname, "unregistered_last_hour": n},
                        "connector_changes": changes,
                        "evidence": evidence,
                    }),
                ));
            }
        }
        out
    }

    /// One alert: email text and webhook payload from the same parts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alert(
        &self,
        name: &'static str,
        id: String,
        tenant: &relayward_core::Tenant,
        what: &str,
        effect: &str,
        evidence: &[String],
        steps: &[String],
        extra: serde_json::Value,
    ) -> Alert {
        let mut text = format!("{name}\n\nWhat happened\n\n{what}\n\n{effect}\n\n");
        if !evidence.is_empty() {
            text.push_str("Evidence\n\n");
            for l in evidence {
                text.push_str(&format!("- {l}\n"));
            }
            text.push('\n');
        }
        if !steps.is_empty() {
            text.push_str("What to do\n\n");
            for (i, s) in steps.iter().enumerate() {
                text.push_str(&format!("{}. {s}\n", i + 1));
            }
        }
        let mut payload = json!({
            "id": id,
            "alert": name,
            "at_ms": self.now_ms(),
            "tenant": {"id": tenant.id, "name": tenant.name},
            "what_happened": what,
            "effect": effect,
            "evidence_summary": evidence,
            "steps": steps,
        });
        if let (Some(p), serde_json::Value::Object(extra)) = (payload.as_object_mut(), extra) {
            p.extend(extra);
        }
        Alert {
            name,
            id,
            tenant_name: tenant.name.clone(),
            admin_emails: tenant.admin_emails.clone(),
            subject: format!("[relayward] {name}: tenant {}", tenant.name),
            text,
            payload,
        }
    }
}
