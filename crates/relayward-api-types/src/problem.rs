//! RFC 9457 problem details: every error answer.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An RFC 9457 problem detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URN naming the kind of problem, e.g. `urn:relayward:problem:validation`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong with this request, for a person.
    pub detail: String,
    /// The request field at fault (validation problems): a JSON body path such as
    /// `ip_ranges[1]`, a path parameter or a query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
