//! The REST API under `/api`: every route is registered through a utoipa
//! [`OpenApiRouter`], so the OpenAPI 3.1 document served at
//! `/api/openapi.json` is generated from the handlers themselves and cannot
//! drift from them.
//!
//! Each module owns one area and exposes `routes()`; this module merges them.
//! Handlers take an access extractor from [`crate::auth`] and answer errors
//! through [`crate::ApiError`].

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub mod alert_delivery;
pub mod brand_alerts;
pub mod catalog;
pub mod members;
pub mod processes;
pub mod queues;
pub mod sharding;

/// The error body every 4xx and 5xx answer carries.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_field`, `not_found`, `conflict`, ...
    pub code: String,
    pub message: String,
    /// The offending field or line, when one is to blame (`sales[1].url`).
    pub field: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald API",
        description = "Brand alerts (outbound) and event routing (inbound). \
                       Every request needs an API key: `Authorization: Bearer <key>` \
                       (create one with `herald keys create`).",
    ),
    modifiers(&BearerKey),
    security(("api_key" = [])),
    components(schemas(ErrorResponse, ErrorDetail))
)]
struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The generated document, for tests and `herald openapi`.
pub fn openapi() -> OpenApiDoc {
    split().1
}

fn split() -> (Router<AppState>, OpenApiDoc) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(catalog::routes())
        .merge(members::routes())
        .merge(processes::routes())
        .merge(brand_alerts::routes())
        .merge(alert_delivery::routes())
        .merge(queues::routes())
        .merge(sharding::routes())
        .split_for_parts()
}

/// Every `/api` route plus `/api/openapi.json`.
pub fn routes() -> Router<AppState> {
    let (router, doc) = split();
    let doc = Arc::new(doc);
    router.route(
        "/api/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
}
