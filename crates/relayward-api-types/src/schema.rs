//! OpenAPI schemas of the domain model's string enums (`relayward-core` has no utoipa), listing
//! the very values the API reads and writes.

use relayward_core::{ConnectorKind, DomainKind, SuppressionSource, TenantState, TraceKind};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

fn string_enum(values: &[&'static str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

pub fn tenant_state() -> Object {
    let values: Vec<&'static str> = TenantState::ALL.iter().map(|s| s.as_str()).collect();
    string_enum(&values, "Restriction state of the tenant")
}

pub fn domain_kind() -> Object {
    let values: Vec<&'static str> = DomainKind::ALL.iter().map(|s| s.as_str()).collect();
    string_enum(&values, "Kind of accepted domain")
}

pub fn connector_kind() -> Object {
    let values: Vec<&'static str> = ConnectorKind::ALL.iter().map(|s| s.as_str()).collect();
    string_enum(&values, "Kind of inbound connector")
}

pub fn trace_kind() -> Object {
    let values: Vec<&'static str> = TraceKind::ALL.iter().map(|s| s.as_str()).collect();
    string_enum(&values, "Kind of trace event")
}

pub fn suppression_source() -> Object {
    let values: Vec<&'static str> = SuppressionSource::ALL.iter().map(|s| s.as_str()).collect();
    string_enum(&values, "Why the recipient is suppressed")
}

pub fn token_scope() -> Object {
    string_enum(
        &["operator", "tenant"],
        "operator: every tenant; tenant: the one tenant of tenant_id",
    )
}

pub fn limit_action() -> Object {
    string_enum(
        &["block_for_today", "block", "alert"],
        "What happens to a sender over a limit: refused until the next day (UTC), refused until lifted, or an alert only",
    )
}
