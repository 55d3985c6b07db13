//! The directory: tenants, their accepted domains and inbound connectors.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Error;

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                $name(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }
    };
}

id_newtype!(
    /// A tenant's id: a number in every external form (JSON, TOML, SQLite, API paths).
    TenantId
);
id_newtype!(
    /// An accepted domain's id: a number in every external form.
    DomainId
);
id_newtype!(
    /// A connector's id: a number in every external form.
    ConnectorId
);

id_newtype!(
    /// Seconds since the Unix epoch, UTC: a number in every external form.
    Timestamp
);

/// A later (or, negative, earlier) time: `Timestamp + seconds`.
impl std::ops::Add<i64> for Timestamp {
    type Output = Timestamp;
    fn add(self, seconds: i64) -> Timestamp {
        Timestamp(self.0 + seconds)
    }
}

/// An earlier time: `Timestamp - seconds`.
impl std::ops::Sub<i64> for Timestamp {
    type Output = Timestamp;
    fn sub(self, seconds: i64) -> Timestamp {
        Timestamp(self.0 - seconds)
    }
}

/// The seconds between two times.
impl std::ops::Sub for Timestamp {
    type Output = i64;
    fn sub(self, earlier: Timestamp) -> i64 {
        self.0 - earlier.0
    }
}

pub fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::InvalidValue {
                        field: stringify!($name),
                        value: s.to_string(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

string_enum!(
    /// Restriction state of a tenant (DESIGN.md "Restriction states").
    TenantState {
        Active => "active",
        Warned => "warned",
        BlockedUnregistered => "blocked_unregistered",
        UnderReview => "under_review",
        Probation => "probation",
        BlockedAll => "blocked_all",
    }
);

impl TenantState {
    /// Unregistered and null senders are refused with 5.7.750 in these states.
    pub fn blocks_unregistered(&self) -> bool {
        matches!(
            self,
            TenantState::BlockedUnregistered | TenantState::UnderReview
        )
    }

    /// Every message is refused with 5.7.705.
    pub fn blocks_all(&self) -> bool {
        matches!(self, TenantState::BlockedAll)
    }
}

string_enum!(
    DomainKind {
        Authoritative => "authoritative",
        InternalRelay => "internal-relay",
    }
);

string_enum!(
    ConnectorKind {
        OnPremises => "on-premises",
        Partner => "partner",
    }
);

string_enum!(
    /// Class of a message by its P1 (envelope) sender.
    SenderClass {
        Registered => "registered",
        Unregistered => "unregistered",
        Null => "null",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub state: TenantState,
    pub admin_emails: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedDomain {
    pub id: DomainId,
    pub tenant_id: TenantId,
    /// Lowercase, ASCII (A-labels), no trailing dot.
    pub domain: String,
    pub kind: DomainKind,
    pub match_subdomains: bool,
    pub verified: bool,
    /// The value to publish: `relayward-verification=<token>`.
    pub verification_token: String,
    pub created_at: Timestamp,
    pub verified_at: Option<Timestamp>,
}

impl AcceptedDomain {
    /// Does this accepted domain cover `domain` (already lowercase)?
    pub fn covers(&self, domain: &str) -> bool {
        if domain == self.domain {
            return true;
        }
        self.match_subdomains
            && domain.len() > self.domain.len()
            && domain.ends_with(&self.domain)
            && domain.as_bytes()[domain.len() - self.domain.len() - 1] == b'.'
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connector {
    pub id: ConnectorId,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: ConnectorKind,
    pub ip_ranges: Vec<IpNet>,
    /// Matched against the verified client certificate's DNS SANs (or CN when it has none).
    pub cert_name: Option<String>,
    pub auth_user: Option<String>,
    /// argon2 PHC string; never the password.
    #[serde(skip_serializing)]
    pub auth_password_hash: Option<String>,
    pub require_tls: bool,
    pub enabled: bool,
    pub allow_unregistered: bool,
    pub restrict_domains_to_ips: bool,
    pub restrict_domains_to_cert: bool,
    /// Blocked on its own (5.7.711).
    pub blocked: bool,
    pub created_at: Timestamp,
    pub created_by: String,
    pub updated_at: Timestamp,
    pub updated_by: String,
    pub last_used_at: Option<Timestamp>,
}

/// One entry of the audit log: who changed what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<TenantId>,
    pub object: String,
    pub detail: String,
}

// Fixed, machine-readable kinds of trace events.
string_enum!(
    TraceKind {
        Received => "received",
        Refused => "refused",
        Queued => "queued",
        Attempt => "attempt",
        Delivered => "delivered",
        Deferred => "deferred",
        Bounced => "bounced",
        DsnSent => "dsn_sent",
        Held => "held",
        Released => "released",
        Deleted => "deleted",
    }
);

/// One step of a message's story (or a refusal, which has no queue id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    pub id: i64,
    pub at_ms: i64,
    pub kind: TraceKind,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub tenant_id: Option<TenantId>,
    pub connector_id: Option<ConnectorId>,
    pub client_ip: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub sender_class: Option<SenderClass>,
    /// SMTP reply given or received, when there is one.
    pub reply: Option<String>,
    pub detail: Option<String>,
    /// The relay node that recorded the event (cluster mode).
    pub node: Option<String>,
}

impl TraceEvent {
    pub fn new(kind: TraceKind) -> Self {
        TraceEvent {
            id: 0,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            kind,
            queue_id: None,
            message_id: None,
            tenant_id: None,
            connector_id: None,
            client_ip: None,
            sender: None,
            recipient: None,
            sender_class: None,
            reply: None,
            detail: None,
            node: None,
        }
    }
}

/// Search criteria for the message trace.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub tenant_id: Option<TenantId>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub queue_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: u32,
}

/// Everything the relay needs to attribute sessions and apply the relay rule, as read from the
/// store in one consistent snapshot. `version` changes whenever any of it changes.
#[derive(Debug, Clone, Default)]
pub struct DirectoryData {
    pub version: i64,
    pub tenants: Vec<Tenant>,
    pub domains: Vec<AcceptedDomain>,
    pub connectors: Vec<Connector>,
    pub header_from_allowed: Vec<HeaderFromAllowed>,
}

/// What changed in the directory after the version a relay holds: each changed tenant's whole
/// part of it, as it is at `version` (read in one snapshot, like [`DirectoryData`]).
#[derive(Debug, Clone, Default)]
pub struct DirectoryDelta {
    pub version: i64,
    pub tenants: Vec<TenantPart>,
}

/// One tenant's part of the directory.
#[derive(Debug, Clone)]
pub struct TenantPart {
    pub id: TenantId,
    /// `None`: the tenant no longer exists.
    pub tenant: Option<Tenant>,
    pub domains: Vec<AcceptedDomain>,
    pub connectors: Vec<Connector>,
    pub header_from_allowed: Vec<HeaderFromAllowed>,
}

/// A header From domain a tenant declared legitimate with its registered envelope senders
/// (a service sending for a partner): such mail is not a header From mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderFromAllowed {
    pub tenant_id: TenantId,
    /// Lowercase; the header From domain exactly.
    pub domain: String,
    /// Only through this connector; `None`: through any of the tenant's.
    pub connector_id: Option<ConnectorId>,
    pub declared_at: Timestamp,
    pub declared_by: String,
}

string_enum!(
    /// Why a recipient is on a suppression list.
    SuppressionSource {
        HardBounce => "hard_bounce",
        Complaint => "complaint",
        Manual => "manual",
    }
);

/// A recipient address the relay refuses at RCPT (`550 5.1.10`) for one tenant's mail, or for
/// everyone's on the operator's global list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// `None`: the operator's global list, which applies to every tenant.
    pub tenant_id: Option<TenantId>,
    /// Lowercase `local@domain`.
    pub address: String,
    pub source: SuppressionSource,
    /// The remote's reply for a hard bounce, "complaint", or what the administrator wrote.
    pub reason: String,
    pub created_at: Timestamp,
    pub created_by: String,
    /// `None`: until removed.
    pub expires_at: Option<Timestamp>,
}

impl Suppression {
    pub fn active(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// What changed on the suppression lists since a version the relay holds: entries added or
/// changed (active ones only), and the `(tenant, address)` of entries removed or expired since.
/// From version 0, `changed` is every active entry and `removed` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuppressionUpdates {
    pub version: i64,
    pub changed: Vec<Suppression>,
    pub removed: Vec<(Option<TenantId>, String)>,
}

/// One tenant's delivery outcomes in one hour: what its bounce and complaint rates are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationHour {
    pub tenant_id: TenantId,
    /// Hours since the Unix epoch.
    pub hour: i64,
    /// Recipients delivered.
    pub delivered: u32,
    /// Recipients hard-bounced.
    pub bounces: u32,
    /// Spam complaints.
    pub complaints: u32,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn ids_are_plain_numbers_in_every_external_form() {
        assert_eq!(TenantId(42).to_string(), "42");
        assert_eq!("42".parse::<ConnectorId>().unwrap(), ConnectorId(42));
        assert!("x".parse::<DomainId>().is_err());
        assert_eq!(i64::from(DomainId(-3)), -3);
        assert_eq!(Timestamp(100) + 20, Timestamp(120));
        assert_eq!(Timestamp(100) - 20, Timestamp(80));
        assert_eq!(Timestamp(100) - Timestamp(30), 70);
        assert_eq!(
            serde_json::to_string(&Timestamp(1_700_000_000)).unwrap(),
            "1700000000"
        );

        assert_eq!(serde_json::to_string(&TenantId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<TenantId>("7").unwrap(), TenantId(7));
        let some: Option<ConnectorId> = Some(ConnectorId(9));
        assert_eq!(serde_json::to_string(&some).unwrap(), "9");
        // As map keys, as in the detector's per-connector counts.
        let counts = BTreeMap::from([(ConnectorId(4), 2u64)]);
        let text = serde_json::to_string(&counts).unwrap();
        assert_eq!(text, r#"{"4":2}"#);
        assert_eq!(
            serde_json::from_str::<BTreeMap<ConnectorId, u64>>(&text).unwrap(),
            counts
        );

        let h = HeaderFromAllowed {
            tenant_id: TenantId(1),
            domain: "partner.example".into(),
            connector_id: Some(ConnectorId(2)),
            declared_at: Timestamp(3),
            declared_by: "op".into(),
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"tenant_id": 1, "domain": "partner.example", "connector_id": 2,
                "declared_at": 3, "declared_by": "op"})
        );

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Pins {
            tenant: TenantId,
            pools: BTreeMap<TenantId, String>,
        }
        let pins = Pins {
            tenant: TenantId(5),
            pools: BTreeMap::from([(TenantId(6), "p".to_string())]),
        };
        let text = toml::to_string(&pins).unwrap();
        assert_eq!(text, "tenant = 5\n\n[pools]\n6 = \"p\"\n");
        assert_eq!(toml::from_str::<Pins>(&text).unwrap(), pins);
    }
}
