//! The audience: members (`/api/members`, keyed by the CRM's ids), their
//! affinities and subscriptions, the suppression list, the cadence policy,
//! and bulk imports (`/api/imports/{members|affinities|subscriptions}`).
//!
//! Reads need any valid key; writes need the marketing or admin scope.
//!
//! Imports stream the request body (NDJSON with `Content-Type:
//! application/x-ndjson`, CSV with `text/csv`) straight into the importer,
//! which spools validated rows to a temporary file, so a body of any size
//! up to [`ImportLimits::max_bytes`] is never held in memory. The ordinary
//! JSON body limit does not apply to them. See
//! `herald_store::members::import` for the formats and semantics.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::{
    AffinityScore, CustomerId, EmailAddress, EmailType, Locale, MemberId, MemberStatus,
    SuppressionReason, TimeZone,
};
use herald_store::members::import::{
    import, ImportError, ImportFormat, ImportKind, ImportOptions, ImportReport,
};
use herald_store::members::{
    Affinity, Member, MemberFilter, MemberInput, MemberPatch, Subscription, Suppression,
};
use serde::{Deserialize, Serialize};
use tokio_util::io::StreamReader;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::catalog::{double_option, query, ApiTime, PageQuery};
use crate::api::{ErrorDetail, ErrorResponse};
use crate::auth::{MarketingAccess, ReadAccess};
use crate::{ApiError, ApiJson, AppState};

/// The default largest import body: 4 GiB, several million member lines.
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// The source recorded for subscriptions and suppressions set through the
/// API without one.
pub const API_SOURCE: &str = "api";

/// Limits of the import endpoints. Add it as an [`Extension`] layer to
/// change them; without one, [`ImportLimits::default`] applies.
#[derive(Debug, Clone)]
pub struct ImportLimits {
    /// Largest accepted body; a larger one is a 413 and nothing is stored.
    pub max_bytes: u64,
    /// Where validated rows are spooled (default: the system's temporary
    /// folder). Give a disk folder where that one is in memory (tmpfs).
    pub spool_dir: Option<PathBuf>,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_IMPORT_BYTES,
            spool_dir: None,
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members))
        .routes(routes!(
            get_member,
            put_member,
            update_member,
            delete_member
        ))
        .routes(routes!(list_affinities))
        .routes(routes!(put_affinity, delete_affinity))
        .routes(routes!(list_subscriptions))
        .routes(routes!(put_subscription))
        .routes(routes!(list_suppressions, add_suppression))
        .routes(routes!(get_suppression, delete_suppression))
        .routes(routes!(get_cadence_policy, put_cadence_policy))
        .routes(routes!(import_rows))
}

fn member_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("member {id} not found"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberResponse {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    /// `active` or `inactive`; only active members get brand alerts.
    #[schema(value_type = String, example = "active")]
    pub status: MemberStatus,
    /// The key provider events are routed by; absent means the member id.
    pub customer_id: Option<String>,
    pub created_at: ApiTime,
    pub updated_at: ApiTime,
}

impl From<Member> for MemberResponse {
    fn from(m: Member) -> Self {
        Self {
            id: m.id,
            email: m.email,
            name: m.name,
            first_name: m.first_name,
            locale: m.locale,
            time_zone: m.time_zone,
            status: m.status,
            customer_id: m.customer_id,
            created_at: ApiTime(m.created_at),
            updated_at: ApiTime(m.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub items: Vec<MemberResponse>,
    pub next_cursor: Option<String>,
}

/// A member's whole record; optional fields left out are cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMember {
    #[schema(value_type = String, example = "ann@example.com")]
    pub email: EmailAddress,
    pub name: Option<String>,
    pub first_name: Option<String>,
    /// A BCP 47 tag such as `en-GB`.
    #[schema(value_type = Option<String>, example = "en-GB")]
    pub locale: Option<Locale>,
    /// An IANA time zone such as `Europe/London`.
    #[schema(value_type = Option<String>, example = "Europe/London")]
    pub time_zone: Option<TimeZone>,
    /// `active` (default) or `inactive`.
    #[schema(value_type = Option<String>)]
    pub status: Option<MemberStatus>,
    #[schema(value_type = Option<String>)]
    pub customer_id: Option<CustomerId>,
}

/// Fields to change; `null` clears an optional one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    #[schema(value_type = Option<String>)]
    pub email: Option<EmailAddress>,
    #[serde(default, deserialize_with = "double_option")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub locale: Option<Option<Locale>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<Option<TimeZone>>,
    #[schema(value_type = Option<String>)]
    pub status: Option<MemberStatus>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub customer_id: Option<Option<CustomerId>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberQuery {
    /// Only members with this address (compared trimmed and lower-cased).
    pub email: Option<String>,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/members", tag = "audience",
    params(MemberQuery),
    responses(
        (status = 200, description = "Members in id order", body = MemberPage),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_members(
    _key: ReadAccess,
    State(state): State<AppState>,
    params: Result<Query<MemberQuery>, QueryRejection>,
) -> Result<Json<MemberPage>, ApiError> {
    let params = query(params)?;
    let filter = MemberFilter {
        email: params.email,
        page: PageQuery {
            after: params.after,
            limit: params.limit,
        }
        .request(),
    };
    let page = state.store.members().list(&filter).await?;
    Ok(Json(MemberPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/api/members/{id}", tag = "audience",
    params(("id" = String, Path, description = "Member id")),
    responses(
        (status = 200, body = MemberResponse),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn get_member(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MemberResponse>, ApiError> {
    let member = state.store.members().get(&id).await?;
    member
        .map(|m| Json(m.into()))
        .ok_or_else(|| member_not_found(&id))
}

#[utoipa::path(
    put, path = "/api/members/{id}", tag = "audience",
    params(("id" = String, Path, description = "Member id: `[A-Za-z0-9._:@-]{1,128}`")),
    request_body = PutMember,
    responses(
        (status = 201, description = "Created", body = MemberResponse),
        (status = 200, description = "Replaced", body = MemberResponse),
        (status = 422, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
    )
)]
async fn put_member(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PutMember>,
) -> Result<(StatusCode, Json<MemberResponse>), ApiError> {
    let input = MemberInput {
        id: MemberId::parse(&id).map_err(|e| ApiError::invalid_field("id", e.message()))?,
        email: body.email,
        name: body.name,
        first_name: body.first_name,
        locale: body.locale,
        time_zone: body.time_zone,
        status: body.status.unwrap_or_default(),
        customer_id: body.customer_id,
    };
    let (member, created) = state.store.members().upsert(&input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(member.into())))
}

#[utoipa::path(
    patch, path = "/api/members/{id}", tag = "audience",
    params(("id" = String, Path, description = "Member id")),
    request_body = UpdateMember,
    responses(
        (status = 200, body = MemberResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn update_member(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateMember>,
) -> Result<Json<MemberResponse>, ApiError> {
    let patch = MemberPatch {
        email: body.email,
        name: body.name,
        first_name: body.first_name,
        locale: body.locale,
        time_zone: body.time_zone,
        status: body.status,
        customer_id: body.customer_id,
    };
    let member = state.store.members().update(&id, &patch).await?;
    Ok(Json(member.into()))
}

#[utoipa::path(
    delete, path = "/api/members/{id}", tag = "audience",
    params(("id" = String, Path, description = "Member id")),
    responses(
        (status = 204, description = "Deleted with their affinities and subscriptions"),
        (status = 404, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_member(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.members().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn require_member(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state.store.members().get(id).await? {
        Some(_) => Ok(()),
        None => Err(member_not_found(id)),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AffinityResponse {
    pub brand_id: String,
    /// 0.0 to 1.0.
    pub score: f64,
    pub updated_at: ApiTime,
}

impl From<Affinity> for AffinityResponse {
    fn from(a: Affinity) -> Self {
        Self {
            brand_id: a.brand_id,
            score: a.score,
            updated_at: ApiTime(a.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AffinityList {
    /// In brand id order.
    pub items: Vec<AffinityResponse>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAffinity {
    /// 0.0 to 1.0.
    #[schema(value_type = f64, example = 0.8)]
    pub score: AffinityScore,
}

#[utoipa::path(
    get, path = "/api/members/{id}/affinities", tag = "audience",
    params(("id" = String, Path, description = "Member id")),
    responses(
        (status = 200, body = AffinityList),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_affinities(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AffinityList>, ApiError> {
    require_member(&state, &id).await?;
    let items = state.store.members().affinities(&id).await?;
    Ok(Json(AffinityList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    put, path = "/api/members/{id}/affinities/{brand_id}", tag = "audience",
    params(
        ("id" = String, Path, description = "Member id"),
        ("brand_id" = String, Path, description = "Brand id"),
    ),
    request_body = PutAffinity,
    responses(
        (status = 200, body = AffinityResponse),
        (status = 404, description = "Unknown member", body = ErrorResponse),
        (status = 422, description = "Unknown brand or bad score", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn put_affinity(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path((id, brand_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<PutAffinity>,
) -> Result<Json<AffinityResponse>, ApiError> {
    let affinity = state
        .store
        .members()
        .set_affinity(&id, &brand_id, body.score)
        .await?;
    Ok(Json(affinity.into()))
}

#[utoipa::path(
    delete, path = "/api/members/{id}/affinities/{brand_id}", tag = "audience",
    params(
        ("id" = String, Path, description = "Member id"),
        ("brand_id" = String, Path, description = "Brand id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_affinity(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path((id, brand_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .members()
        .delete_affinity(&id, &brand_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionResponse {
    pub email_type: String,
    pub subscribed: bool,
    pub source: String,
    pub updated_at: ApiTime,
}

impl From<Subscription> for SubscriptionResponse {
    fn from(s: Subscription) -> Self {
        Self {
            email_type: s.email_type,
            subscribed: s.subscribed,
            source: s.source,
            updated_at: ApiTime(s.updated_at),
        }
    }
}

/// The recorded subscriptions; an email type not listed is subscribed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub items: Vec<SubscriptionResponse>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSubscription {
    pub subscribed: bool,
    /// Who made the change (default `api`).
    pub source: Option<String>,
}

#[utoipa::path(
    get, path = "/api/members/{id}/subscriptions", tag = "audience",
    params(("id" = String, Path, description = "Member id")),
    responses(
        (status = 200, body = SubscriptionList),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_subscriptions(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionList>, ApiError> {
    require_member(&state, &id).await?;
    let items = state.store.members().subscriptions(&id).await?;
    Ok(Json(SubscriptionList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    put, path = "/api/members/{id}/subscriptions/{email_type}", tag = "audience",
    params(
        ("id" = String, Path, description = "Member id"),
        ("email_type" = String, Path, description = "`brand_alerts`, or another `[a-z0-9_]{1,64}` type"),
    ),
    request_body = PutSubscription,
    responses(
        (status = 200, body = SubscriptionResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn put_subscription(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path((id, email_type)): Path<(String, String)>,
    ApiJson(body): ApiJson<PutSubscription>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let email_type = EmailType::parse(&email_type)
        .map_err(|e| ApiError::invalid_field("email_type", e.message()))?;
    let source = body.source.as_deref().unwrap_or(API_SOURCE);
    let subscription = state
        .store
        .members()
        .set_subscription(&id, &email_type, body.subscribed, source)
        .await?;
    Ok(Json(subscription.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionResponse {
    /// Trimmed and lower-cased.
    pub address: String,
    #[schema(value_type = String, example = "hard_bounce")]
    pub reason: SuppressionReason,
    pub source: String,
    pub detail: Option<String>,
    /// When the address was first suppressed.
    pub since: ApiTime,
}

impl From<Suppression> for SuppressionResponse {
    fn from(s: Suppression) -> Self {
        Self {
            address: s.address,
            reason: s.reason,
            source: s.source,
            detail: s.detail,
            since: ApiTime(s.since),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionPage {
    pub items: Vec<SuppressionResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    #[schema(example = "ann@example.com")]
    pub address: String,
    /// hard_bounce, spam_report, unsubscribe, invalid_address,
    /// permanent_failure or manual.
    #[schema(value_type = String, example = "manual")]
    pub reason: SuppressionReason,
    /// Who suppressed it (default `api`).
    pub source: Option<String>,
    pub detail: Option<String>,
}

#[utoipa::path(
    get, path = "/api/suppressions", tag = "audience",
    params(PageQuery),
    responses(
        (status = 200, description = "Suppressions in address order", body = SuppressionPage),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_suppressions(
    _key: ReadAccess,
    State(state): State<AppState>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<SuppressionPage>, ApiError> {
    let page = state
        .store
        .members()
        .list_suppressions(&query(page)?.request())
        .await?;
    Ok(Json(SuppressionPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    post, path = "/api/suppressions", tag = "audience",
    request_body = AddSuppression,
    responses(
        (status = 200, description = "Suppressed (again: the first `since` is kept)", body = SuppressionResponse),
        (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn add_suppression(
    _key: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddSuppression>,
) -> Result<Json<SuppressionResponse>, ApiError> {
    let suppression = state
        .store
        .members()
        .suppress(
            &body.address,
            body.reason,
            body.source.as_deref().unwrap_or(API_SOURCE),
            body.detail.as_deref(),
        )
        .await?;
    Ok(Json(suppression.into()))
}

#[utoipa::path(
    get, path = "/api/suppressions/{address}", tag = "audience",
    params(("address" = String, Path, description = "Email address, any case")),
    responses(
        (status = 200, body = SuppressionResponse),
        (status = 404, description = "Not suppressed", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
    )
)]
async fn get_suppression(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<Json<SuppressionResponse>, ApiError> {
    let suppression = state.store.members().suppression(&address).await?;
    suppression
        .map(|s| Json(s.into()))
        .ok_or_else(|| ApiError::not_found(format!("{address} is not suppressed")))
}

#[utoipa::path(
    delete, path = "/api/suppressions/{address}", tag = "audience",
    params(("address" = String, Path, description = "Email address, any case")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_suppression(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.members().unsuppress(&address).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// At most `max_alerts` brand alerts per member in any rolling window of
/// `window_secs` seconds (at most 366 days).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CadencePolicyBody {
    #[schema(example = 3)]
    pub max_alerts: u32,
    #[schema(example = 604800)]
    pub window_secs: u64,
}

impl From<CadencePolicy> for CadencePolicyBody {
    fn from(p: CadencePolicy) -> Self {
        Self {
            max_alerts: p.max_alerts(),
            window_secs: p.window().as_secs(),
        }
    }
}

#[utoipa::path(
    get, path = "/api/cadence-policy", tag = "audience",
    responses(
        (status = 200, body = CadencePolicyBody),
        (status = 401, body = ErrorResponse),
    )
)]
async fn get_cadence_policy(
    _key: ReadAccess,
    State(state): State<AppState>,
) -> Result<Json<CadencePolicyBody>, ApiError> {
    Ok(Json(state.store.members().cadence_policy().await?.into()))
}

#[utoipa::path(
    put, path = "/api/cadence-policy", tag = "audience",
    request_body = CadencePolicyBody,
    responses(
        (status = 200, body = CadencePolicyBody),
        (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn put_cadence_policy(
    _key: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CadencePolicyBody>,
) -> Result<Json<CadencePolicyBody>, ApiError> {
    let policy = CadencePolicy::new(body.max_alerts, Duration::from_secs(body.window_secs))
        .map_err(|e| {
            let field = if body.max_alerts == 0 {
                "max_alerts"
            } else {
                "window_secs"
            };
            ApiError::invalid_field(field, e.to_string())
        })?;
    let policy = state.store.members().set_cadence_policy(&policy).await?;
    Ok(Json(policy.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Store the good lines even when some are bad (default false: a bad
    /// line stores nothing).
    pub skip_invalid: Option<bool>,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReportBody {
    /// Data lines read.
    pub rows: u64,
    /// Rows stored.
    pub applied: u64,
    /// Bad lines (the first 100).
    pub invalid: Vec<LineErrorBody>,
    /// Bad lines beyond those listed.
    pub truncated_errors: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineErrorBody {
    /// 1-based; for CSV the header is line 1.
    pub line: u64,
    pub field: Option<String>,
    pub message: String,
}

impl From<ImportReport> for ImportReportBody {
    fn from(r: ImportReport) -> Self {
        Self {
            rows: r.rows,
            applied: r.applied,
            invalid: r
                .invalid
                .into_iter()
                .map(|e| LineErrorBody {
                    line: e.line,
                    field: e.field,
                    message: e.message,
                })
                .collect(),
            truncated_errors: r.truncated_errors,
        }
    }
}

/// The 422 of an import with bad lines: the usual error, and the report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRejected {
    pub error: ErrorDetail,
    pub report: ImportReportBody,
}

#[utoipa::path(
    post, path = "/api/imports/{kind}", tag = "audience",
    params(
        ("kind" = String, Path, description = "members, affinities or subscriptions"),
        ImportQuery,
    ),
    request_body(
        description = "NDJSON (one object a line) or CSV (a header row, then one row a line). \
            Members: id, email; optional name, first_name, locale, time_zone, status, customer_id. \
            Affinities: member_id, brand_id, score. Subscriptions: member_id, subscribed; \
            optional email_type (default brand_alerts), source (default import).",
        content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        ),
    ),
    responses(
        (status = 200, description = "Imported (with `skip_invalid`, bad lines are listed and skipped)", body = ImportReportBody),
        (status = 404, description = "Unknown kind", body = ErrorResponse),
        (status = 413, description = "Body over the import limit; nothing stored", body = ErrorResponse),
        (status = 415, body = ErrorResponse),
        (status = 422, description = "Bad lines and no `skip_invalid`: nothing stored", body = ImportRejected),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn import_rows(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(kind): Path<String>,
    params: Result<Query<ImportQuery>, QueryRejection>,
    limits: Option<Extension<ImportLimits>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind: ImportKind = kind.parse().map_err(ApiError::not_found)?;
    let params = query(params)?;
    let format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ImportFormat::from_media_type)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the rows as Content-Type: application/x-ndjson or text/csv",
            )
        })?;
    let limits = limits.map(|Extension(l)| l).unwrap_or_default();
    let mut options = ImportOptions::new(kind, format);
    options.skip_invalid = params.skip_invalid.unwrap_or(false);
    options.spool_dir = limits.spool_dir.clone();

    let over_limit = Arc::new(AtomicBool::new(false));
    let input = StreamReader::new(limited(body, limits.max_bytes, over_limit.clone()));
    let report = match import(&state.store, input, &options, |_| {}).await {
        Ok(report) => report,
        Err(ImportError::Read(_)) if over_limit.load(Ordering::SeqCst) => {
            return Err(ApiError::payload_too_large(format!(
                "the import body is larger than {} bytes; nothing was stored",
                limits.max_bytes
            )))
        }
        Err(ImportError::Read(e)) => {
            return Err(ApiError::bad_request("unreadable_body", e.to_string()))
        }
        Err(ImportError::Header(message)) => {
            return Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_header", message)
                    .with_field("header"),
            )
        }
        Err(ImportError::Spool(e)) => return Err(ApiError::internal(e)),
        Err(ImportError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(
        kind = kind.as_str(),
        rows = report.rows,
        applied = report.applied,
        invalid = report.invalid_rows(),
        "import finished"
    );
    if report.invalid_rows() > 0 && !options.skip_invalid {
        let first = &report.invalid[0];
        let error = ErrorDetail {
            code: "invalid_lines".into(),
            message: format!(
                "{} of {} lines are invalid (first: {first}); nothing was stored",
                report.invalid_rows(),
                report.rows
            ),
            field: Some(format!("line {}", first.line)),
        };
        let body = ImportRejected {
            error,
            report: report.into(),
        };
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
    }
    Ok(Json(ImportReportBody::from(report)).into_response())
}

/// The body as a stream of chunks that fails once more than `max_bytes`
/// have come, setting `over_limit` so the failure can be told apart from a
/// broken connection.
fn limited(
    body: Body,
    max_bytes: u64,
    over_limit: Arc<AtomicBool>,
) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send {
    let mut received = 0u64;
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(io::Error::other)?;
        received += chunk.len() as u64;
        if received > max_bytes {
            over_limit.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the body is over the import limit"));
        }
        Ok(chunk)
    })
}
