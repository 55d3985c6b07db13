//! The abuse detector's alerts: a JSON webhook POST (signed, retried with exponential backoff,
//! bounded) and an email to the tenant's admin contacts, queued through the relay's own spool.
//! Each [`Alert`] is sent once; the caller makes one per transition or sender restriction.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;
use relayward_queue::{Envelope, QueueId, Recipient, Scheduler, Spool};
use sha2::Sha256;

use crate::config::AlertsConfig;

/// The alert names (Exchange Online's alert policies have the same ones).
pub const TENANT_RESTRICTED_UNREGISTERED: &str =
    "Tenant restricted from sending unregistered-domain email";
pub const TENANT_RESTRICTED: &str = "Tenant restricted from sending email";
pub const USER_RESTRICTED: &str = "User restricted from sending email";
pub const SUSPICIOUS_CONNECTOR: &str = "Suspicious connector activity";
/// A tenant moved to `warned`: nothing is refused yet.
pub const TENANT_WARNED: &str = "Tenant warned about unregistered-domain email";
/// AUTH locked for an address or a user after repeated failures (password guessing).
pub const SUSPICIOUS_AUTH_FAILURES: &str = "Suspicious authentication failures";
/// A sender over its limits whose tenant's action is `alert`: the mail flows.
pub const SENDING_LIMIT_EXCEEDED: &str = "Email sending limit exceeded";
/// The tenant's bounce or complaint rate crossed a `[reputation]` level.
pub const TENANT_REPUTATION: &str = "Tenant bounce or complaint rate too high";

/// One alert, ready to go.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: &'static str,
    /// Stable for this alert: webhook retries carry the same id, so receivers can de-duplicate.
    pub id: String,
    pub tenant_name: String,
    /// Where the email goes; empty: no email.
    pub admin_emails: Vec<String>,
    pub subject: String,
    pub text: String,
    pub payload: serde_json::Value,
}

pub struct Alerts {
    cfg: AlertsConfig,
    from: String,
    hostname: String,
    http: reqwest::Client,
    spool: Arc<Spool>,
    scheduler: OnceLock<Arc<Scheduler>>,
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let sum = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in sum {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

impl Alerts {
    pub fn new(cfg: AlertsConfig, from: String, hostname: String, spool: Arc<Spool>) -> Alerts {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.webhook_timeout_secs.max(1)))
            .user_agent(concat!("relayward/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Alerts {
            cfg,
            from,
            hostname,
            http,
            spool,
            scheduler: OnceLock::new(),
        }
    }

    pub fn set_scheduler(&self, scheduler: Arc<Scheduler>) {
        let _ = self.scheduler.set(scheduler);
    }

    /// Email and webhook. Returns once both are done (the webhook after its retries).
    pub async fn send(&self, alert: &Alert) {
        tracing::warn!(
            alert = alert.name,
            id = %alert.id,
            tenant = %alert.tenant_name,
            "{}",
            alert.subject
        );
        if self.cfg.email_tenant_admins && !alert.admin_emails.is_empty() {
            match self.email(alert).await {
                Ok(id) => tracing::info!(alert = alert.name, queue_id = %id, "alert email queued"),
                Err(e) => tracing::error!(alert = alert.name, error = %e, "alert email not queued"),
            }
        }
        if let Some(url) = &self.cfg.webhook_url {
            if let Err(e) = self.post(url, alert).await {
                tracing::error!(alert = alert.name, id = %alert.id, error = %e, "alert webhook given up");
            }
        }
    }

    async fn post(&self, url: &str, alert: &Alert) -> Result<(), String> {
        let body = serde_json::to_vec(&alert.payload).map_err(|e| e.to_string())?;
        let attempts = self.cfg.webhook_max_attempts.max(1);
        let mut backoff = Duration::from_millis(self.cfg.webhook_backoff_ms);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let mut req = self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Relayward-Alert", alert.name)
                .header("X-Relayward-Delivery", &alert.id)
                .body(body.clone());
            if let Some(secret) = &self.cfg.webhook_secret {
                req = req.header("X-Relayward-Signature", signature(secret, &body));
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(alert = alert.name, id = %alert.id, attempt, "alert webhook delivered");
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    last = format!("HTTP {status}");
                    // The receiver says the request itself is wrong: sending it again won't help.
                    if status.is_client_error()
                        && status != reqwest::StatusCode::REQUEST_TIMEOUT
                        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        return Err(last);
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < attempts {
                tracing::warn!(alert = alert.name, attempt, error = %last, retry_in = ?backoff, "alert webhook failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
        Err(format!("{attempts} attempts, last: {last}"))
    }

    /// Queues the alert email through the relay's own spool and scheduler.
    async fn email(&self, alert: &Alert) -> Result<QueueId, String> {
        let scheduler = self
            .scheduler
            .get()
            .ok_or_else(|| "scheduler not started".to_string())?;
        let id = self.spool.new_queue_id();
        let to: Vec<&str> = alert.admin_emails.iter().map(String::as_str).collect();
        let body = MessageBuilder::new()
            .from(("relayward", self.from.as_str()))
            .to(to)
            .subject(alert.subject.as_str())
            .date(relayward_core::now().0)
            .message_id(format!("{id}@{}", self.hostname))
            .header("Auto-Submitted", Raw::new("auto-generated"))
            .header("X-Relayward-Alert", Raw::new(alert.name))
            .text_body(alert.text.as_str())
            .write_to_vec()
            .map_err(|e| e.to_string())?;
        let now = relayward_core::now();
        let envelope = Envelope {
            queue_id: id,
            received_at: now.0,
            tenant_id: None,
            connector_id: None,
            client_ip: "127.0.0.1".into(),
            helo: self.hostname.clone(),
            auth_user: None,
            tls: false,
            sender: self.from.clone(),
            original_sender: None,
            sender_class: relayward_core::SenderClass::Registered,
            header_from_mismatch: false,
            spam_verdict: false,
            message_id: Some(format!("<{id}@{}>", self.hostname)),
            size: body.len() as u64,
            body_8bit: body.iter().any(|&b| b >= 0x80),
            smtputf8: alert.admin_emails.iter().any(|a| !a.is_ascii()),
            dsn_ret: None,
            dsn_envid: None,
            recipients: alert
                .admin_emails
                .iter()
                .map(|a| {
                    let mut r = Recipient::new(a.clone());
                    r.next_attempt_at = now.0;
                    r
                })
                .collect(),
            held: false,
        };
        self.spool
            .store_async(id, envelope, body)
            .await
            .map_err(|e| e.to_string())?;
        scheduler.submit(id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
