//! Inbound connectors.

use serde::Deserializer;

pub use relayward_policy::connector_audit::ConnectorAudit;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectorView {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    #[schema(schema_with = crate::schema::connector_kind)]
    pub kind: String,
    /// CIDR ranges.
    pub ip_ranges: Vec<String>,
    pub cert_name: Option<String>,
    pub auth_user: Option<String>,
    /// A password is set (it is never shown).
    pub has_password: bool,
    pub require_tls: bool,
    pub enabled: bool,
    pub allow_unregistered: bool,
    pub restrict_domains_to_ips: bool,
    pub restrict_domains_to_cert: bool,
    /// Blocked on its own by the operator or the detector (5.7.711).
    pub blocked: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
    pub last_used_at: Option<i64>,
    pub audit: ConnectorAudit,
    /// Said once, in the answer to the change that caused it (e.g. a certificate name under no
    /// verified accepted domain yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnector {
    /// 1 to 64 characters, unique within the tenant.
    pub name: String,
    #[schema(schema_with = crate::schema::connector_kind)]
    pub kind: String,
    /// Source ranges (CIDR without host bits, or single addresses), IPv4 and IPv6.
    #[serde(default)]
    pub ip_ranges: Vec<String>,
    /// TLS client certificate name (DNS SAN, or CN); must be an accepted domain of the tenant.
    #[serde(default)]
    pub cert_name: Option<String>,
    /// SMTP AUTH user; needs `auth_password`.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// At least 12 characters; stored as an argon2id hash.
    #[serde(default)]
    pub auth_password: Option<String>,
    #[serde(default)]
    pub require_tls: bool,
    #[serde(default)]
    pub allow_unregistered: bool,
    #[serde(default)]
    pub restrict_domains_to_ips: bool,
    #[serde(default)]
    pub restrict_domains_to_cert: bool,
}

/// Absent fields stay as they are; `null` clears `cert_name` or `auth_user` (which also removes
/// the password).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeConnector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schema(schema_with = crate::schema::connector_kind)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unregistered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restrict_domains_to_ips: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restrict_domains_to_cert: Option<bool>,
    /// Operator only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
pub fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}
