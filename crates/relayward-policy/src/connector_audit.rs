//! Connector audit flags: what an operator reviewing a tenant (or a tenant admin after a block)
//! should look at first among its inbound connectors. Computed on every read, from the connector
//! and a few facts about its recent use.

use std::collections::HashMap;

use ipnet::IpNet;
use relayward_core::{Connector, ConnectorId, Timestamp};
use serde::{Deserialize, Serialize};

pub const DAY_SECS: i64 = 86_400;
/// Created or changed this recently: flagged (and the detector's evidence lists the tenant's
/// connector changes of as long before a block).
pub const RECENT_SECS: i64 = 7 * DAY_SECS;
/// Not used for this long: flagged.
const UNUSED_SECS: i64 = 30 * DAY_SECS;
/// Ranges wider than these prefixes cover other people's hosts: flagged.
const WIDE_V4_PREFIX: u8 = 24;
const WIDE_V6_PREFIX: u8 = 48;
/// What deserves a second look. Computed on every read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ConnectorAudit {
    /// Created or changed in the last 7 days.
    pub recently_changed: bool,
    /// An IPv4 range wider than /24 or an IPv6 range wider than /48.
    pub wide_ip_range: bool,
    /// No TLS client certificate name: recognised by IP or password only.
    pub no_certificate: bool,
    /// Not used for 30 days (counted from creation when never used).
    pub unused_30_days: bool,
    /// Carried mail from unregistered senders in the last 24 hours.
    pub unregistered_mail_24h: bool,
    /// Its certificate name is under no verified accepted domain of the tenant: it does not
    /// recognise servers by certificate until one is verified (clears by itself then).
    pub cert_name_unverified: bool,
    /// Its AUTH was locked for repeated password failures in the last 24 hours.
    pub auth_lockout_24h: bool,
    /// How many such messages.
    pub unregistered_messages_24h: u64,
    /// The names of the flags that are set, for display.
    pub flags: Vec<String>,
}

/// What a connector's audit flags are computed from, besides the connector itself.
#[derive(Debug, Default, Clone)]
pub struct AuditFacts {
    /// Unregistered messages of the last 24 h, per connector.
    pub unregistered: HashMap<ConnectorId, u64>,
    /// The tenant's verified accepted domains.
    pub verified: Vec<String>,
    /// Connectors whose AUTH was locked in the last 24 h.
    pub auth_locked: std::collections::HashSet<ConnectorId>,
}

/// The audit flags of connector `c` at `now`.
pub fn audit(c: &Connector, now: Timestamp, facts: &AuditFacts) -> ConnectorAudit {
    let unregistered = facts.unregistered.get(&c.id).copied().unwrap_or(0);
    let cert_name_unverified = c
        .cert_name
        .as_deref()
        .is_some_and(|n| !crate::cert_name::covered(n, facts.verified.iter().map(String::as_str)));
    let auth_lockout_24h = facts.auth_locked.contains(&c.id);
    let recently_changed = now - c.created_at < RECENT_SECS || now - c.updated_at < RECENT_SECS;
    let wide_ip_range = c.ip_ranges.iter().any(|r| match r {
        IpNet::V4(n) => n.prefix_len() < WIDE_V4_PREFIX,
        IpNet::V6(n) => n.prefix_len() < WIDE_V6_PREFIX,
    });
    let no_certificate = c.cert_name.is_none();
    let unused_30_days = now - c.last_used_at.unwrap_or(c.created_at) >= UNUSED_SECS;
    let unregistered_mail_24h = unregistered > 0;
    let flags = [
        (recently_changed, "recently_changed"),
        (wide_ip_range, "wide_ip_range"),
        (no_certificate, "no_certificate"),
        (unused_30_days, "unused_30_days"),
        (unregistered_mail_24h, "unregistered_mail_24h"),
        (cert_name_unverified, "cert_name_unverified"),
        (auth_lockout_24h, "auth_lockout_24h"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| name.to_string())
    .collect();
    ConnectorAudit {
        recently_changed,
        wide_ip_range,
        no_certificate,
        unused_30_days,
        unregistered_mail_24h,
        unregistered_messages_24h: unregistered,
        cert_name_unverified,
        auth_lockout_24h,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::{ConnectorKind, TenantId};

    fn connector(ranges: &[&str]) -> Connector {
        Connector {
            id: ConnectorId(1),
            tenant_id: TenantId(1),
            name: "c".into(),
            kind: ConnectorKind::OnPremises,
            ip_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            cert_name: None,
            auth_user: None,
            auth_password_hash: None,
            require_tls: false,
            enabled: true,
            allow_unregistered: false,
            restrict_domains_to_ips: false,
            restrict_domains_to_cert: false,
            blocked: false,
            created_at: Timestamp(0),
            created_by: "t".into(),
            updated_at: Timestamp(0),
            updated_by: "t".into(),
            last_used_at: None,
        }
    }

    #[test]
    fn flags() {
        let now = 100 * DAY_SECS;
        let mut c = connector(&["192.0.2.0/24", "2001:db8::/48"]);
        c.last_used_at = Some(Timestamp(now - DAY_SECS));
        c.cert_name = Some("mail.example".into());
        let mut facts = AuditFacts {
            verified: vec!["example".into()],
            ..AuditFacts::default()
        };
        let a = audit(&c, Timestamp(now), &facts);
        assert_eq!(a, ConnectorAudit::default());
        facts.verified.clear();
        assert_eq!(
            audit(&c, Timestamp(now), &facts).flags,
            ["cert_name_unverified"]
        );

        c.ip_ranges = vec!["192.0.0.0/23".parse().unwrap()];
        assert!(audit(&c, Timestamp(now), &facts).wide_ip_range);
        c.ip_ranges = vec!["2001:db8::/47".parse().unwrap()];
        assert!(audit(&c, Timestamp(now), &facts).wide_ip_range);

        c.updated_at = Timestamp(now - 6 * DAY_SECS);
        c.cert_name = None;
        c.last_used_at = Some(Timestamp(now - 30 * DAY_SECS));
        facts.unregistered.insert(c.id, 3);
        facts.auth_locked.insert(c.id);
        let a = audit(&c, Timestamp(now), &facts);
        assert_eq!(
            a.flags,
            [
                "recently_changed",
                "wide_ip_range",
                "no_certificate",
                "unused_30_days",
                "unregistered_mail_24h",
                "auth_lockout_24h"
            ]
        );
        assert_eq!(a.unregistered_messages_24h, 3);

        // Never used: counted from creation.
        c.last_used_at = None;
        c.created_at = Timestamp(now - 29 * DAY_SECS);
        assert!(!audit(&c, Timestamp(now), &facts).unused_30_days);
    }
}
