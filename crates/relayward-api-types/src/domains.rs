//! Accepted domains and their DNS verification.

use relayward_core::AcceptedDomain;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The DNS record that proves ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxtRecord {
    /// Owner name (the domain itself).
    pub name: String,
    /// Always `TXT`.
    #[serde(rename = "type")]
    pub record_type: String,
    /// `relayward-verification=<token>`
    pub value: String,
}

impl TxtRecord {
    pub fn of(d: &AcceptedDomain) -> Self {
        TxtRecord {
            name: d.domain.clone(),
            record_type: "TXT".into(),
            value: relayward_policy::ownership::verification_value(&d.verification_token),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainView {
    pub id: i64,
    pub tenant_id: i64,
    /// A-labels, lowercase, no trailing dot.
    pub domain: String,
    #[schema(schema_with = crate::schema::domain_kind)]
    pub kind: String,
    pub match_subdomains: bool,
    /// Only verified domains make a sender registered.
    pub verified: bool,
    /// `verified` or `pending`.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    pub verified_at: Option<i64>,
    /// Publish this record, then call verify.
    pub verification_record: TxtRecord,
}

impl From<&AcceptedDomain> for DomainView {
    fn from(d: &AcceptedDomain) -> Self {
        DomainView {
            id: d.id.0,
            tenant_id: d.tenant_id.0,
            domain: d.domain.clone(),
            kind: d.kind.as_str().to_string(),
            match_subdomains: d.match_subdomains,
            verified: d.verified,
            status: if d.verified { "verified" } else { "pending" }.into(),
            created_at: d.created_at.0,
            verified_at: d.verified_at.map(i64::from),
            verification_record: TxtRecord::of(d),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomain {
    /// Internationalized names are stored as A-labels.
    pub domain: String,
    /// `authoritative` (default) or `internal-relay`.
    #[serde(default)]
    #[schema(schema_with = crate::schema::domain_kind)]
    pub kind: Option<String>,
    #[serde(default)]
    pub match_subdomains: bool,
    /// Operator only: attest ownership without DNS (audited).
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    /// The record is published: the domain is verified.
    Verified,
    /// The domain has no TXT record at all.
    NotFound,
    /// TXT records exist, none of them the expected one.
    WrongToken,
    /// DNS failed or did not answer in time: nothing is known (and nothing changed).
    Unchecked,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyResult {
    pub domain: String,
    pub status: VerifyStatus,
    /// The domain's state after the check. A failed check never withdraws a verification.
    pub verified: bool,
    pub expected_record: TxtRecord,
    /// How many TXT records the domain has (0 when unchecked).
    pub records_found: usize,
    pub detail: String,
}
