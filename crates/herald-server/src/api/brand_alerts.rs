//! Brand alerts: create, read, list, edit while a draft, move through the
//! lifecycle (schedule, unschedule, cancel), delete drafts, and read the
//! statistics.
//!
//! Choices a client can rely on:
//! - Times are RFC 3339 strings (`2024-05-01T12:00:00Z`, any offset in,
//!   UTC out).
//! - Every alert answer carries `ETag: "<version>"`. `PATCH` honours
//!   `If-Match` with that value: a stale one is **412**. Without `If-Match`
//!   the edit applies to whatever the draft holds then. An edit that races
//!   another between the check and the write is a 409.
//! - An action the alert's state does not allow is **409** with the
//!   lifecycle's own message ("cannot schedule a brand alert that is
//!   sending").
//! - Scheduling a draft whose `send_at` is more than [`SCHEDULE_GRACE`] in
//!   the past is **422** naming `send_at`: it would send at once, which is
//!   rarely what was meant; move `send_at` first. Within the grace it is
//!   accepted, so "send now" works despite clock skew.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat};
use herald_core::alert::{send_time_passed, AlertAction, AlertState, SCHEDULE_GRACE};
use herald_core::{Clock, SystemClock, Timestamp};
use herald_store::brand_alerts::{
    AlertStats, BrandAlert, BrandAlertFilter, BrandAlertPatch, BuildProgress, NewBrandAlert,
};
use herald_store::page::PageRequest;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ErrorResponse;
use crate::auth::{MarketingAccess, ReadAccess};
use crate::{ApiError, ApiJson, AppState};

const TAG: &str = "brand alerts";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_alert, list_alerts))
        .routes(routes!(get_alert, update_alert, delete_alert))
        .routes(routes!(schedule_alert))
        .routes(routes!(unschedule_alert))
        .routes(routes!(cancel_alert))
        .routes(routes!(alert_stats))
}

/// A new brand alert; it starts as a draft.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBrandAlert {
    pub name: String,
    /// The sales to announce, in the order the email lists them (1 to 100).
    pub sale_ids: Vec<String>,
    pub subject: String,
    pub template_id: String,
    /// When to send (RFC 3339).
    #[schema(format = DateTime, example = "2024-05-01T12:00:00Z")]
    pub send_at: String,
    /// Members whose affinity for one of the sales' brands is at least this
    /// (0 to 1) are the audience.
    pub affinity_threshold: f64,
    /// A configured transport's name; left out for the default transport.
    #[serde(default)]
    pub transport: Option<String>,
}

/// Changes to a draft; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBrandAlert {
    pub name: Option<String>,
    pub sale_ids: Option<Vec<String>>,
    pub subject: Option<String>,
    pub template_id: Option<String>,
    #[schema(format = DateTime, example = "2024-05-01T12:00:00Z")]
    pub send_at: Option<String>,
    pub affinity_threshold: Option<f64>,
    /// `null` goes back to the default transport.
    #[serde(default, deserialize_with = "present")]
    pub transport: Option<Option<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A brand alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrandAlertView {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub template_id: String,
    pub sale_ids: Vec<String>,
    #[schema(format = DateTime)]
    pub send_at: String,
    pub affinity_threshold: f64,
    pub transport: Option<String>,
    #[schema(schema_with = alert_state_schema)]
    pub state: AlertState,
    /// Grows with every change; send it back as `If-Match` when editing.
    pub version: i64,
    pub build: BuildView,
    /// Why the alert failed, when it did.
    pub failure_reason: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When the alert was sent, cancelled or failed.
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
}

/// How far the audience build has come.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildView {
    /// Members enqueued so far.
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Known once the build has finished.
    pub audience_size: Option<u64>,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BrandAlertPage {
    pub items: Vec<BrandAlertView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What happened to an alert's messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrandAlertStats {
    /// Known once the audience build has finished.
    pub audience_size: Option<u64>,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Enqueued but not yet sent, failed or skipped.
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    /// Found ineligible at send time (unsubscribed, suppressed, cadence, ...).
    pub skipped: u64,
    /// Resent after the process sending them died mid-send: the member may
    /// have received two copies.
    pub possible_duplicates: u64,
    /// Provider events by type (`delivered`, `open`, `click`, `bounce`, ...).
    pub events: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only alerts in this state.
    #[param(schema_with = alert_state_schema, required = false)]
    pub state: Option<AlertState>,
    /// Only alerts sending at or after this time (RFC 3339).
    pub send_from: Option<String>,
    /// Only alerts sending before this time (RFC 3339).
    pub send_until: Option<String>,
    /// Items per page: 1 to 1000, default 100 (larger values are clamped).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn alert_state_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(AlertState::ALL.map(AlertState::as_str)))
        .description(Some(
            "draft → scheduled → building → sending → sent; cancelled or failed before sent",
        ))
        .build()
}

/// Creates a draft.
#[utoipa::path(
    post,
    path = "/api/brand-alerts",
    tag = TAG,
    request_body = CreateBrandAlert,
    responses(
        (status = 201, description = "Created as a draft", body = BrandAlertView,
            headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or unknown API key", body = ErrorResponse),
        (status = 403, description = "The key lacks the marketing scope", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 422, description = "A field is wrong, or names an unknown sale or template", body = ErrorResponse),
    )
)]
async fn create_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBrandAlert>,
) -> Result<Response, ApiError> {
    let new = NewBrandAlert {
        send_at: parse_time("send_at", &body.send_at)?,
        name: body.name,
        subject: body.subject,
        template_id: body.template_id,
        affinity_threshold: body.affinity_threshold,
        transport: body.transport,
        sale_ids: body.sale_ids,
    };
    let alert = state
        .store
        .brand_alerts()
        .create(&new)
        .await
        .map_err(ApiError::from)?;
    let location = format!("/api/brand-alerts/{}", alert.id);
    let mut response = alert_response(StatusCode::CREATED, alert);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Lists alerts, newest send time first.
#[utoipa::path(
    get,
    path = "/api/brand-alerts",
    tag = TAG,
    params(ListParams),
    responses(
        (status = 200, body = BrandAlertPage),
        (status = 400, description = "A query parameter has the wrong type or is unknown", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 422, description = "A time or the cursor is not valid", body = ErrorResponse),
    )
)]
async fn list_alerts(
    _: ReadAccess,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<BrandAlertPage>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let filter = BrandAlertFilter {
        state: params.state,
        send_from: params
            .send_from
            .as_deref()
            .map(|t| parse_time("send_from", t))
            .transpose()?,
        send_until: params
            .send_until
            .as_deref()
            .map(|t| parse_time("send_until", t))
            .transpose()?,
        page: PageRequest {
            after: params.cursor,
            limit: params.limit.unwrap_or(0),
        },
    };
    let page = state
        .store
        .brand_alerts()
        .list(&filter)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(BrandAlertPage {
        items: page.items.into_iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One alert.
#[utoipa::path(
    get,
    path = "/api/brand-alerts/{id}",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, body = BrandAlertView, headers(("ETag" = String))),
        (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn get_alert(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let alert = find(&state, &id).await?;
    Ok(alert_response(StatusCode::OK, alert))
}

/// Edits a draft.
#[utoipa::path(
    patch,
    path = "/api/brand-alerts/{id}",
    tag = TAG,
    params(
        ("id" = String, Path, description = "The alert's id"),
        ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one is refused with 412"),
    ),
    request_body = UpdateBrandAlert,
    responses(
        (status = 200, body = BrandAlertView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or If-Match", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Not a draft, or changed concurrently", body = ErrorResponse),
        (status = 412, description = "If-Match names an older version", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn update_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateBrandAlert>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let patch = BrandAlertPatch {
        send_at: body
            .send_at
            .as_deref()
            .map(|t| parse_time("send_at", t))
            .transpose()?,
        name: body.name,
        subject: body.subject,
        template_id: body.template_id,
        affinity_threshold: body.affinity_threshold,
        transport: body.transport,
        sale_ids: body.sale_ids,
    };
    let expected_version = match expected {
        Some(versions) => {
            let current = find(&state, &id).await?;
            if !versions.contains(&current.version) {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    format!(
                        "brand alert {id} is at version {} now; read it again and retry",
                        current.version
                    ),
                ));
            }
            Some(current.version)
        }
        None => None,
    };
    let alert = state
        .store
        .brand_alerts()
        .update_draft(&id, &patch, expected_version)
        .await
        .map_err(ApiError::from)?;
    Ok(alert_response(StatusCode::OK, alert))
}

/// Deletes a draft; anything else can be cancelled instead.
#[utoipa::path(
    delete,
    path = "/api/brand-alerts/{id}",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Not a draft", body = ErrorResponse),
    )
)]
async fn delete_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .brand_alerts()
        .delete_draft(&id)
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Schedules a draft for its send time.
#[utoipa::path(
    post,
    path = "/api/brand-alerts/{id}/schedule",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, body = BrandAlertView, headers(("ETag" = String))),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Not a draft", body = ErrorResponse),
        (status = 422, description = "send_at is more than a minute in the past", body = ErrorResponse),
    )
)]
async fn schedule_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let alert = find(&state, &id).await?;
    if send_time_passed(alert.state, alert.send_at, SystemClock.now()) {
        return Err(ApiError::invalid_field(
            "send_at",
            format!(
                "send_at {} is more than {} s in the past; move it forward before scheduling",
                format_time(alert.send_at),
                SCHEDULE_GRACE.as_secs()
            ),
        ));
    }
    lifecycle(&state, &id, AlertAction::Schedule).await
}

/// Moves a scheduled alert back to draft.
#[utoipa::path(
    post,
    path = "/api/brand-alerts/{id}/unschedule",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, body = BrandAlertView, headers(("ETag" = String))),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Not scheduled", body = ErrorResponse),
    )
)]
async fn unschedule_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    lifecycle(&state, &id, AlertAction::Unschedule).await
}

/// Cancels an alert that is not sent yet; messages already sent stay sent.
#[utoipa::path(
    post,
    path = "/api/brand-alerts/{id}/cancel",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, body = BrandAlertView, headers(("ETag" = String))),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Already sent, cancelled or failed", body = ErrorResponse),
    )
)]
async fn cancel_alert(
    _: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    lifecycle(&state, &id, AlertAction::Cancel).await
}

/// Audience, sends and provider events of one alert.
#[utoipa::path(
    get,
    path = "/api/brand-alerts/{id}/stats",
    tag = TAG,
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, body = BrandAlertStats),
        (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn alert_stats(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BrandAlertStats>, ApiError> {
    let stats: AlertStats = state
        .store
        .brand_alerts()
        .stats(&id)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(BrandAlertStats {
        audience_size: stats.audience_size,
        enqueued: stats.enqueued,
        excluded_unsubscribed: stats.excluded_unsubscribed,
        excluded_suppressed: stats.excluded_suppressed,
        excluded_cadence: stats.excluded_cadence,
        queued: stats.queued,
        sent: stats.sent,
        failed: stats.failed,
        skipped: stats.skipped,
        possible_duplicates: stats.possible_duplicates,
        events: stats.events,
    }))
}

async fn lifecycle(state: &AppState, id: &str, action: AlertAction) -> Result<Response, ApiError> {
    let alert = state
        .store
        .brand_alerts()
        .apply(id, action, None)
        .await
        .map_err(ApiError::from)?;
    Ok(alert_response(StatusCode::OK, alert))
}

async fn find(state: &AppState, id: &str) -> Result<BrandAlert, ApiError> {
    state
        .store
        .brand_alerts()
        .get(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("brand alert {id} not found")))
}

/// The store's brand-alert conflicts are whole sentences (the lifecycle's
/// own messages), which `StoreError`'s display would suffix with "already
/// exists"; everything else maps as usual.
fn alert_response(status: StatusCode, alert: BrandAlert) -> Response {
    let etag = format!("\"{}\"", alert.version);
    let mut response = (status, Json(view(alert))).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The versions an `If-Match` header accepts; `None` when there is no
/// header or it is `*`.
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<i64>>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_if_match",
            "If-Match must be the ETag of the alert (\"<version>\") or *",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(None);
    }
    text.split(',')
        .map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let tag = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag);
            tag.parse::<i64>().map_err(|_| invalid())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_time(field: &'static str, text: &str) -> Result<Timestamp, ApiError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|e| {
            ApiError::invalid_field(
                field,
                format!("{text:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z: {e}"),
            )
        })
}

fn format_time(t: Timestamp) -> String {
    DateTime::from_timestamp_millis(t.millis())
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| t.millis().to_string())
}

fn view(alert: BrandAlert) -> BrandAlertView {
    let BuildProgress {
        enqueued,
        excluded_unsubscribed,
        excluded_suppressed,
        excluded_cadence,
        audience_size,
        started_at,
        finished_at,
        cursor: _,
    } = alert.build;
    BrandAlertView {
        id: alert.id,
        name: alert.name,
        subject: alert.subject,
        template_id: alert.template_id,
        sale_ids: alert.sale_ids,
        send_at: format_time(alert.send_at),
        affinity_threshold: alert.affinity_threshold,
        transport: alert.transport,
        state: alert.state,
        version: alert.version,
        build: BuildView {
            enqueued,
            excluded_unsubscribed,
            excluded_suppressed,
            excluded_cadence,
            audience_size,
            started_at: started_at.map(format_time),
            finished_at: finished_at.map(format_time),
        },
        failure_reason: alert.failure_reason,
        created_at: format_time(alert.created_at),
        updated_at: format_time(alert.updated_at),
        completed_at: alert.completed_at.map(format_time),
    }
}
