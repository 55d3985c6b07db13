//! AUTH lockouts (password guessing stopped by the SMTP server): each one is audited and
//! alerted, so the operator and the tenant whose connector was targeted both learn of it.

use relayward_smtp::AuthLockoutEvent;
use serde_json::json;

use super::alerts::{self, Alert};
use super::Abuse;

use relayward_policy::auth::LOCKOUT_AUDIT_ACTION as AUDIT_ACTION;

impl Abuse {
    /// Audit and alert one lockout. Never carries a password: the SMTP layer has none to give.
    pub fn auth_locked(&self, ev: AuthLockoutEvent) {
        tracing::warn!(client_ip = %ev.client_ip, user = %ev.user, scope = ev.scope,
            failures = ev.failures, window_secs = ev.window_secs,
            "AUTH locked after repeated failures");
        let dir = self.directory.current();
        let connector = dir
            .auth_connector(&ev.user)
            .map(|c| (c.id, c.tenant_id, c.name.clone()));
        let tenant = connector.as_ref().and_then(|c| dir.tenant(c.1).cloned());
        drop(dir);
        let me = self.me.clone();
        self.spawn(async move {
            let Some(me) = me.upgrade() else { return };
            let object = relayward_policy::auth::lockout_audit_object(connector.as_ref().map(|c| c.0));
            let what = format!(
                "{} failed SMTP AUTH attempts within {} s from client address {} (user {:?}) locked AUTH for the {} until the window passes: further attempts are refused with \"{}\" without any password being checked.",
                ev.failures,
                ev.window_secs,
                ev.client_ip,
                ev.user,
                ev.scope,
                relayward_core::reply::AUTH_LOCKED
            );
            if let Err(e) = me
                .store
                .audit(
                    "relay",
                    AUDIT_ACTION,
                    tenant.as_ref().map(|t| t.id),
                    &object,
                    &what,
                )
                .await
            {
                tracing::error!(error = %e, "AUTH lockout not audited");
            }
            let id = format!(
                "auth-lockout-{}-{}-{}",
                ev.client_ip,
                ev.user.len(),
                me.now_ms() / 1000
            );
            let steps = [
                "If the address is one of your servers, its stored password is wrong: update it there.".to_string(),
                "Otherwise someone is guessing the password: keep it long and random, and restrict the connector to your servers' addresses (--ip with --restrict-domains-to-ips).".to_string(),
            ];
            let extra = json!({
                "client_ip": ev.client_ip.to_string(),
                "user": ev.user,
                "scope": ev.scope,
                "failures": ev.failures,
                "window_secs": ev.window_secs,
                "connector": connector.as_ref().map(|c| json!({"id": c.0, "name": c.2})),
            });
            let alert = match &tenant {
                Some(t) => me.alert(
                    alerts::SUSPICIOUS_AUTH_FAILURES,
                    id,
                    t,
                    &what,
                    "Other connectors and addresses are not affected.",
                    &[],
                    &steps,
                    extra,
                ),
                // A user name no connector has: the operator's concern only (no tenant email).
                None => Alert {
                    name: alerts::SUSPICIOUS_AUTH_FAILURES,
                    id: id.clone(),
                    tenant_name: String::new(),
                    admin_emails: Vec::new(),
                    subject: format!(
                        "[relayward] {}: {}",
                        alerts::SUSPICIOUS_AUTH_FAILURES,
                        ev.client_ip
                    ),
                    text: format!("{}\n\n{what}\n", alerts::SUSPICIOUS_AUTH_FAILURES),
                    payload: {
                        let mut p = json!({
                            "id": id,
                            "alert": alerts::SUSPICIOUS_AUTH_FAILURES,
                            "at_ms": me.now_ms(),
                            "tenant": null,
                            "what_happened": what,
                        });
                        if let (Some(p), serde_json::Value::Object(extra)) =
                            (p.as_object_mut(), extra)
                        {
                            p.extend(extra);
                        }
                        p
                    },
                },
            };
            me.alerts.send(&alert).await;
        });
    }
}
