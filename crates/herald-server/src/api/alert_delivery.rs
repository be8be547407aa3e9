//! What marketing checks before an alert goes out: the email one member
//! would get, and a real send of it to a few test addresses.

use axum::extract::{Path, Query, State};
use axum::Json;
use herald_alerts::PreviewError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ErrorResponse;
use crate::auth::{MarketingAccess, ReadAccess};
use crate::{ApiError, ApiJson, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(preview_alert))
        .routes(routes!(test_send_alert))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PreviewQuery {
    /// The member to render the alert for.
    pub member: String,
}

/// One member's email, as the mailer would render it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    pub subject: String,
    /// With the CSS inlined, as sent.
    pub html: String,
    pub text: String,
}

/// Renders the alert for one member: subject, HTML (CSS inlined) and text.
#[utoipa::path(
    get,
    path = "/api/brand-alerts/{id}/preview",
    tag = "brand alerts",
    params(("id" = String, Path, description = "Brand alert id"), PreviewQuery),
    responses(
        (status = 200, body = PreviewResponse),
        (status = 404, description = "Unknown alert or member", body = ErrorResponse),
        (status = 422, description = "The template cannot be rendered for this member", body = ErrorResponse),
    )
)]
async fn preview_alert(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<PreviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PreviewResponse>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::invalid_field("member", "give the member to preview for: ?member=<id>")
    })?;
    let rendered = state
        .composer
        .preview(&id, &query.member)
        .await
        .map_err(preview_error)?;
    Ok(Json(PreviewResponse {
        subject: rendered.subject,
        html: rendered.html,
        text: rendered.text,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSendRequest {
    /// Where to send the test copies (1 to 10 addresses).
    pub addresses: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestSendResult {
    pub address: String,
    pub sent: bool,
    /// The provider's id for the message, when it gave one.
    pub provider_message_id: Option<String>,
    /// Why this address failed.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestSendResponse {
    pub results: Vec<TestSendResult>,
}

/// Sends the alert, rendered with example member data and a `[TEST]`
/// subject, through its transport. Nothing is written to the send log.
#[utoipa::path(
    post,
    path = "/api/brand-alerts/{id}/test-send",
    tag = "brand alerts",
    params(("id" = String, Path, description = "Brand alert id")),
    request_body = TestSendRequest,
    responses(
        (status = 200, description = "Per-address results", body = TestSendResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn test_send_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<TestSendRequest>,
) -> Result<Json<TestSendResponse>, ApiError> {
    let outcomes = state
        .composer
        .test_send(&id, &request.addresses)
        .await
        .map_err(preview_error)?;
    let results = outcomes
        .into_iter()
        .map(|outcome| match outcome.result {
            Ok(provider_message_id) => TestSendResult {
                address: outcome.address,
                sent: true,
                provider_message_id,
                error: None,
            },
            Err(error) => TestSendResult {
                address: outcome.address,
                sent: false,
                provider_message_id: None,
                error: Some(error),
            },
        })
        .collect();
    Ok(Json(TestSendResponse { results }))
}

fn preview_error(e: PreviewError) -> ApiError {
    match e {
        PreviewError::AlertNotFound(_) | PreviewError::MemberNotFound(_) => {
            ApiError::not_found(e.to_string())
        }
        PreviewError::AddressCount(_) => ApiError::invalid_field("addresses", e.to_string()),
        PreviewError::UnknownTransport(_) => ApiError::invalid_field("transport", e.to_string()),
        PreviewError::Content(_) | PreviewError::Compose(_) => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "unrenderable",
            e.to_string(),
        ),
        PreviewError::Store(e) => e.into(),
    }
}
