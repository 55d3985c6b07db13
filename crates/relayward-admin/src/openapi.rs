//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "relayward admin API",
        description = "Administration of a relayward multi-tenant SMTP relay: tenants, accepted \
            domains, inbound connectors, restriction states, the queue, the message trace, the \
            audit log and API tokens.\n\nAuthenticate with `Authorization: Bearer \
            rw_<id>_<secret>`. An operator token sees everything; a tenant-admin token sees its \
            own tenant only, and another tenant's objects answer 404 as if they did not exist. \
            Errors are RFC 9457 problem details; validation problems name the `field`.",
        version = "1",
    ),
    paths(
        document,
        api::me::show,
        api::diagnose::post_diagnose,
        api::tenants::list,
        api::tenants::create,
        api::tenants::show,
        api::domains::list,
        api::domains::add,
        api::domains::show,
        api::domains::remove,
        api::domains::verify,
        api::header_from::list,
        api::header_from::declare,
        api::header_from::withdraw,
        api::connectors::list,
        api::connectors::create,
        api::connectors::show,
        api::connectors::change,
        api::connectors::remove,
        api::connectors::disable,
        api::connectors::enable,
        api::status::show,
        api::status::request_unblock,
        api::status::unblock,
        api::status::block,
        api::status::sender_restrictions,
        api::sender_limits::show,
        api::sender_limits::set,
        api::status::remove_sender_restriction,
        api::suppressions::list_tenant,
        api::suppressions::add_tenant,
        api::suppressions::remove_tenant,
        api::suppressions::list_global,
        api::suppressions::add_global,
        api::suppressions::remove_global,
        api::audit::list,
        api::nodes::list,
        api::trace::search,
        api::traffic::tenant,
        api::traffic::overview,
        api::tokens::list,
        api::tokens::create,
        api::tokens::show,
        api::tokens::revoke,
        api::queue::list,
        api::queue::show,
        api::queue::remove,
        api::queue::hold,
        api::queue::release,
        api::queue::retry,
    ),
    components(schemas(crate::problem::Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "meta", description = "The API document"),
        (name = "tenants", description = "Tenants (creating and listing them is the operator's)"),
        (name = "domains", description = "Accepted domains and their DNS verification"),
        (name = "connectors", description = "Inbound connectors and their audit flags"),
        (name = "status", description = "Restriction states, unblock, sender restrictions"),
        (name = "suppressions", description = "Recipients refused after hard bounces and complaints, per tenant and global"),
        (name = "queue", description = "Messages in the relay's queue"),
        (name = "trace", description = "Message trace search"),
        (name = "traffic", description = "Messages and refusals per hour, from the message trace"),
        (name = "diagnose", description = "The relay's decision for a described transaction"),
        (name = "audit", description = "The audit log"),
        (name = "nodes", description = "The relay nodes sharing this store"),
        (name = "tokens", description = "API tokens"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rw_<id>_<secret>")
                    .description(Some(
                        "An operator token, or a tenant-admin token scoped to one tenant",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

#[utoipa::path(
    get, path = "/openapi.json", operation_id = "getOpenApiDocument", tag = "meta",
    summary = "This document (no token needed)",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
