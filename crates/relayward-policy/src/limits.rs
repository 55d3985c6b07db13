//! Per-sender outbound limits (DESIGN.md "Restriction states": a single sender address can be
//! restricted by the per-sender limits, 5.1.8), in the manner of Exchange Online's outbound
//! spam policy: recipients per hour to external domains, recipients per day, messages per
//! minute, and what to do with a sender over them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use relayward_core::{reply, Address, Reply, TenantId};
use serde::{Deserialize, Serialize};

use crate::counters::{sender_key, Counters, DAY_MS, HOUR_MS, MINUTE_MS};

/// What happens to a sender over one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitAction {
    /// Refused until 00:00 UTC of the next day.
    BlockForToday,
    /// Refused until an administrator lifts the restriction.
    Block,
    /// Raise an alert; the mail flows.
    Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    ExternalRecipientsPerHour,
    RecipientsPerDay,
    MessagesPerMinute,
}

impl Limit {
    pub fn as_str(&self) -> &'static str {
        match self {
            Limit::ExternalRecipientsPerHour => "external recipients per hour",
            Limit::RecipientsPerDay => "recipients per day",
            Limit::MessagesPerMinute => "messages per minute",
        }
    }

    pub fn window_ms(&self) -> i64 {
        match self {
            Limit::ExternalRecipientsPerHour => HOUR_MS,
            Limit::RecipientsPerDay => DAY_MS,
            Limit::MessagesPerMinute => MINUTE_MS,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's per-sender limits (`[detector.sender_limits]` holds the defaults). A limit of 0
/// is no limit. Windows are sliding (the last minute, hour, 24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderLimits {
    /// Default 500.
    pub external_recipients_per_hour: u64,
    /// Default 10,000.
    pub recipients_per_day: u64,
    /// Default 30.
    pub messages_per_minute: u64,
    /// Default `block_for_today`.
    pub action: LimitAction,
}

impl Default for SenderLimits {
    fn default() -> Self {
        SenderLimits {
            external_recipients_per_hour: 500,
            recipients_per_day: 10_000,
            messages_per_minute: 30,
            action: LimitAction::BlockForToday,
        }
    }
}

/// A sender refused with 5.1.8 until `until_ms` (`None`: until an administrator lifts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderRestriction {
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub limit: Limit,
    pub action: LimitAction,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderDecision {
    Allow,
    /// Refuse with [`reply::SENDER_RESTRICTED`].
    Restrict {
        until_ms: Option<i64>,
        reason: String,
    },
    /// Let the message through and tell the operator and tenant admins (once per limit window).
    Alert {
        limit: Limit,
        threshold: u64,
        observed: u64,
        reason: String,
    },
}

impl SenderDecision {
    /// The SMTP reply that refuses the sender, when it is refused.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            SenderDecision::Restrict { .. } => Some(reply::SENDER_RESTRICTED),
            _ => None,
        }
    }
}

/// 00:00 UTC of the day after `now_ms`.
pub fn next_utc_midnight_ms(now_ms: i64) -> i64 {
    (now_ms.div_euclid(DAY_MS) + 1) * DAY_MS
}

/// Applies each tenant's [`SenderLimits`] over the shared [`Counters`].
pub struct SenderLimiter {
    counters: Arc<dyn Counters>,
    defaults: SenderLimits,
    tenants: RwLock<HashMap<TenantId, SenderLimits>>,
}

impl SenderLimiter {
    pub fn new(counters: Arc<dyn Counters>, defaults: SenderLimits) -> Self {
        SenderLimiter {
            counters,
            defaults,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// Override (`Some`) or return to the defaults (`None`) for one tenant.
    pub fn set_tenant_limits(&self, tenant: TenantId, limits: Option<SenderLimits>) {
        let mut t = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        match limits {
            Some(l) => t.insert(tenant, l),
            None => t.remove(&tenant),
        };
    }

    pub fn limits_for(&self, tenant: TenantId) -> SenderLimits {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tenant)
            .copied()
            .unwrap_or(self.defaults)
    }

    /// May `sender` send a message to `recipients` more recipients now? Called before the
    /// message is accepted (it is counted afterwards, by [`Counters::record`]). The
    /// recipients of this message count against the external-recipients limit as if all were
    /// external: the per-hour count itself only holds recipients that were.
    pub fn check_sender(
        &self,
        now_ms: i64,
        tenant: TenantId,
        sender: &Address,
        recipients: usize,
    ) -> SenderDecision {
        let key = sender_key(sender);
        let usage = self.counters.sender_usage(now_ms, tenant, &key);
        if let Some(r) = usage.restriction {
            return SenderDecision::Restrict {
                until_ms: r.until_ms,
                reason: r.reason,
            };
        }
        let limits = self.limits_for(tenant);
        let n = recipients as u64;
        let checks = [
            (
                Limit::MessagesPerMinute,
                usage.messages_last_minute + 1,
                limits.messages_per_minute,
            ),
            (
                Limit::ExternalRecipientsPerHour,
                usage.external_recipients_last_hour + n,
                limits.external_recipients_per_hour,
            ),
            (
                Limit::RecipientsPerDay,
                usage.recipients_last_day + n,
                limits.recipients_per_day,
            ),
        ];
        let Some((limit, observed, threshold)) = checks
            .into_iter()
            .find(|&(_, observed, threshold)| threshold > 0 && observed > threshold)
        else {
            return SenderDecision::Allow;
        };
        let reason = format!("{key}: {limit} {observed} over the limit of {threshold}");
        let until_ms = match limits.action {
            LimitAction::Alert => {
                if usage.alerted_until_ms.is_some() {
                    return SenderDecision::Allow;
                }
                self.counters
                    .set_sender_alerted(now_ms, tenant, &key, now_ms + limit.window_ms());
                return SenderDecision::Alert {
                    limit,
                    threshold,
                    observed,
                    reason,
                };
            }
            LimitAction::BlockForToday => Some(next_utc_midnight_ms(now_ms)),
            LimitAction::Block => None,
        };
        self.counters.set_sender_restriction(
            tenant,
            &key,
            Some(SenderRestriction {
                since_ms: now_ms,
                until_ms,
                limit,
                action: limits.action,
                reason: reason.clone(),
            }),
        );
        SenderDecision::Restrict { until_ms, reason }
    }

    /// An administrator lifts a sender's restriction; returns it if there was one.
    pub fn lift(&self, tenant: TenantId, sender: &Address) -> Option<SenderRestriction> {
        self.counters
            .set_sender_restriction(tenant, &sender_key(sender), None)
    }

    /// Standing restrictions of a tenant's senders (for the admin pages and the store).
    pub fn restrictions(&self, now_ms: i64, tenant: TenantId) -> Vec<(String, SenderRestriction)> {
        self.counters.sender_restrictions(now_ms, tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{CountersConfig, InProcessCounters, MessageEvent};
    use relayward_core::{ConnectorId, SenderClass};

    /// 2026-01-01T12:30:20Z: mid-minute, mid-hour, mid-day.
    const NOON: i64 = 1_767_225_600_000 + 12 * HOUR_MS + 30 * MINUTE_MS + 20_000;

    fn setup(action: LimitAction) -> (Arc<InProcessCounters>, SenderLimiter) {
        let counters = Arc::new(InProcessCounters::new(CountersConfig::default()));
        let limiter = SenderLimiter::new(counters.clone(), SenderLimits::default());
        limiter.set_tenant_limits(
            TenantId(1),
            Some(SenderLimits {
                action,
                ..SenderLimits::default()
            }),
        );
        (counters, limiter)
    }

    /// Send like the relay does: check, and count what was accepted. Returns the decisions.
    fn send(
        counters: &InProcessCounters,
        limiter: &SenderLimiter,
        now: i64,
        sender: &Address,
        rcpts: &[Address],
    ) -> SenderDecision {
        let d = limiter.check_sender(now, TenantId(1), sender, rcpts.len());
        if !matches!(d, SenderDecision::Restrict { .. }) {
            counters.record(
                now,
                &MessageEvent {
                    tenant: TenantId(1),
                    connector: ConnectorId(1),
                    class: SenderClass::Registered,
                    sender: Some(sender),
                    mismatch: false,
                    header_from_domain: None,
                    recipients: rcpts,
                    external_recipients: rcpts.len() as u32,
                    client_ip: None,
                    queue_id: None,
                    message_id: None,
                },
            );
        }
        d
    }

    fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    #[test]
    fn messages_per_minute_block_for_today_ends_at_midnight_utc() {
        let (c, l) = setup(LimitAction::BlockForToday);
        let s = addr("Printer@tenant.example");
        let r = [addr("x@ext.example")];
        for i in 0..30 {
            assert_eq!(
                send(&c, &l, NOON + i * 100, &s, &r),
                SenderDecision::Allow,
                "{i}"
            );
        }
        let d = send(&c, &l, NOON + 3_100, &s, &r);
        let midnight = 1_767_225_600_000 + DAY_MS;
        match &d {
            SenderDecision::Restrict { until_ms, reason } => {
                assert_eq!(*until_ms, Some(midnight));
                assert!(
                    reason.contains("messages per minute 31 over the limit of 30"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.reply().unwrap().to_string(),
            "550 5.1.8 Access denied, bad outbound sender"
        );
        // Still refused later today, whatever the case of the address.
        let later = send(
            &c,
            &l,
            NOON + 5 * HOUR_MS,
            &addr("printer@tenant.example"),
            &r,
        );
        assert!(matches!(later, SenderDecision::Restrict { .. }));
        assert!(matches!(
            send(&c, &l, midnight - 1, &s, &r),
            SenderDecision::Restrict { .. }
        ));
        // Free again at 00:00 UTC, with fresh windows.
        assert_eq!(send(&c, &l, midnight, &s, &r), SenderDecision::Allow);
        // Another sender of the tenant was never affected.
        assert_eq!(
            send(&c, &l, NOON + 3_200, &addr("hr@tenant.example"), &r),
            SenderDecision::Allow
        );
    }

    #[test]
    fn external_recipients_per_hour_block_until_lifted() {
        let (c, l) = setup(LimitAction::Block);
        let s = addr("app@tenant.example");
        let rcpts: Vec<Address> = (0..50)
            .map(|i| addr(&format!("u{i}@ext{i}.example")))
            .collect();
        // 10 messages × 50 recipients = 500: at the limit, allowed; spaced to stay under 30/min.
        for i in 0..10 {
            assert_eq!(
                send(&c, &l, NOON + i * 5_000, &s, &rcpts),
                SenderDecision::Allow
            );
        }
        let d = send(&c, &l, NOON + 60_000, &s, &rcpts);
        match &d {
            SenderDecision::Restrict { until_ms, reason } => {
                assert_eq!(*until_ms, None);
                assert!(
                    reason.contains("external recipients per hour 550"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Days later, still refused: only an administrator lifts it.
        assert!(matches!(
            send(&c, &l, NOON + 3 * DAY_MS, &s, &rcpts[..1]),
            SenderDecision::Restrict { until_ms: None, .. }
        ));
        assert_eq!(l.restrictions(NOON + 3 * DAY_MS, TenantId(1)).len(), 1);
        let lifted = l.lift(TenantId(1), &s).expect("was restricted");
        assert_eq!(lifted.limit, Limit::ExternalRecipientsPerHour);
        assert_eq!(
            send(&c, &l, NOON + 3 * DAY_MS + 1, &s, &rcpts[..1]),
            SenderDecision::Allow
        );
    }

    #[test]
    fn recipients_per_day_alert_only_once_and_mail_flows() {
        let (c, l) = setup(LimitAction::Alert);
        let s = addr("newsletter@tenant.example");
        // Internal recipients: not external, but they count per day.
        let rcpts: Vec<Address> = (0..100)
            .map(|i| addr(&format!("u{i}@tenant.example")))
            .collect();
        let mut alerts = Vec::new();
        let mut t = NOON - 6 * HOUR_MS;
        for _ in 0..120 {
            let d = l.check_sender(t, TenantId(1), &s, rcpts.len());
            if let SenderDecision::Alert { .. } = &d {
                alerts.push(d.clone());
            }
            assert!(d.reply().is_none());
            c.record(
                t,
                &MessageEvent {
                    tenant: TenantId(1),
                    connector: ConnectorId(1),
                    class: SenderClass::Registered,
                    sender: Some(&s),
                    mismatch: false,
                    header_from_domain: None,
                    recipients: &rcpts,
                    external_recipients: 0,
                    client_ip: None,
                    queue_id: None,
                    message_id: None,
                },
            );
            t += 2 * MINUTE_MS;
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        match &alerts[0] {
            SenderDecision::Alert {
                limit,
                threshold,
                observed,
                ..
            } => {
                assert_eq!(*limit, Limit::RecipientsPerDay);
                assert_eq!(*threshold, 10_000);
                assert!(*observed > 10_000);
            }
            _ => unreachable!(),
        }
        assert!(l.restrictions(t, TenantId(1)).is_empty());
    }

    #[test]
    fn limits_deserialize_with_defaults() {
        let l: SenderLimits = serde_json::from_str(r#"{"action":"alert"}"#).unwrap();
        assert_eq!(l.action, LimitAction::Alert);
        assert_eq!(l.messages_per_minute, 30);
        assert!(serde_json::from_str::<SenderLimits>(r#"{"bogus":1}"#).is_err());
    }
}
