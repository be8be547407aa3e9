//! Sharding events and customer placements.
//!
//! - `POST /api/sharding-events` takes one event object or an array of up
//!   to 1,000. An array is **all or nothing**: its events are judged in
//!   order (each against the placement the previous ones left) in one
//!   transaction, and if one is refused nothing of the array is stored;
//!   the error's `field` names the refused event's index (`[3]`). An
//!   answer is the recorded event (or an array of them, in order).
//! - An event the customer's state does not allow is **409**
//!   `illegal_transition` whose message names the current state and the
//!   events it allows. The same id sent again is accepted once: the answer
//!   is the original record with `duplicate: true`; the same id with other
//!   content is **409** `id_reused`.
//! - An event older than the customer's latest applied event (`occurred_at`
//!   before it) is recorded with `outcome: "superseded"` and changes
//!   nothing: the latest event decides.
//! - `migration_succeeded` and `migration_failed` release the customer's
//!   held events at once (to the new, resp. the old shard).
//! - Writing needs the admin scope (operating Herald); reading placements
//!   and histories needs any key. An unknown customer's placement is
//!   `{"state": "unknown"}`, not a 404.
//!
//! Shards that would rather not call the API publish the same JSON, one
//! event per message, to the `sharding-events` queue.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herald_core::sharding::{CustomerId, Placement, ShardingEventKind};
use herald_core::Timestamp;
use herald_router::sharding::{self as router_sharding, ShardingEventInput};
use herald_store::sharding::{CustomerPlacement, Recorded, RecordedEvent, ShardingError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::catalog::{query, PageQuery};
use crate::api::ErrorResponse;
use crate::auth::{AdminAccess, ReadAccess};
use crate::{ApiError, ApiJson, AppState};

const TAG: &str = "sharding";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_sharding_events))
        .routes(routes!(get_placement))
        .routes(routes!(get_history))
}

/// Where a customer's events go.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlacementView {
    /// `unknown`, `stable` or `migrating`.
    pub state: &'static str,
    /// The shard of a stable customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The shards of a migrating customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A recorded sharding event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardingEventView {
    pub id: String,
    pub customer: String,
    /// `assigned`, `migration_started`, `migration_succeeded` or `migration_failed`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    #[schema(format = DateTime)]
    pub recorded_at: String,
    /// `applied`, or `superseded` when it happened before the customer's
    /// latest applied event and so changed nothing.
    pub outcome: &'static str,
    /// The customer's placement right after this event.
    pub placement: PlacementView,
    /// When the event ended a migration: where the held events go.
    pub release_to: Option<String>,
    /// In an answer to a POST: the id was recorded before; this is the
    /// original record and nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// A customer's current placement.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerPlacementView {
    pub customer: String,
    pub placement: PlacementView,
    /// The event that set it; absent for an unknown customer.
    pub last_event_id: Option<String>,
    #[schema(format = DateTime)]
    pub last_occurred_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShardingHistoryPage {
    /// Oldest first, in the order the events were recorded.
    pub items: Vec<ShardingEventView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Records one sharding event or a batch (all or nothing).
#[utoipa::path(
    post,
    path = "/api/sharding-events",
    tag = TAG,
    request_body(
        description = "One event, or an array of up to 1,000 applied in order, all or nothing",
        content = ShardingEventInput,
    ),
    responses(
        (status = 200, description = "Recorded (or already recorded: `duplicate: true`); an array in, an array out", body = ShardingEventView),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "The key lacks the admin scope", body = ErrorResponse),
        (status = 409, description = "`illegal_transition` naming the customer's state, or `id_reused`; `field` is the index in a batch", body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 422, description = "A field is missing or wrong (`[2].shard` in a batch)", body = ErrorResponse),
    )
)]
async fn post_sharding_events(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let (inputs, batch) = match body {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid_field(
                    "body",
                    "the array holds no sharding events",
                ));
            }
            if items.len() > herald_store::sharding::MAX_BATCH {
                return Err(ApiError::invalid_field(
                    "body",
                    format!(
                        "a batch holds at most {} sharding events; this one has {}",
                        herald_store::sharding::MAX_BATCH,
                        items.len()
                    ),
                ));
            }
            (items, true)
        }
        single @ Value::Object(_) => (vec![single], false),
        _ => {
            return Err(ApiError::invalid_field(
                "body",
                "send one sharding event object or an array of them",
            ))
        }
    };
    let prefix = |index: usize| {
        if batch {
            format!("[{index}]")
        } else {
            String::new()
        }
    };
    let mut events = Vec::with_capacity(inputs.len());
    for (index, item) in inputs.into_iter().enumerate() {
        events.push(parse_event(item, &prefix(index))?);
    }
    let recorded = router_sharding::record(&state.store, &state.release_signal, &events)
        .await
        .map_err(|e| sharding_error(e, batch))?;
    let views: Vec<ShardingEventView> = recorded.into_iter().map(recorded_view).collect();
    let value = if batch {
        serde_json::to_value(views)
    } else {
        serde_json::to_value(views.into_iter().next())
    }
    .map_err(ApiError::internal)?;
    Ok(Json(value))
}

/// Where a customer's events go now.
#[utoipa::path(
    get,
    path = "/api/customers/{id}/placement",
    tag = TAG,
    params(("id" = String, Path, description = "The customer id, as events carry it")),
    responses(
        (status = 200, body = CustomerPlacementView),
        (status = 401, body = ErrorResponse),
        (status = 422, description = "Not a valid customer id", body = ErrorResponse),
    )
)]
async fn get_placement(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CustomerPlacementView>, ApiError> {
    let customer = customer_id(id)?;
    let placement = state
        .store
        .sharding()
        .placement(&customer)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(placement_view(placement)))
}

/// A customer's sharding events, oldest first.
#[utoipa::path(
    get,
    path = "/api/customers/{id}/sharding-history",
    tag = TAG,
    params(("id" = String, Path, description = "The customer id"), PageQuery),
    responses(
        (status = 200, body = ShardingHistoryPage),
        (status = 400, description = "An unknown query parameter", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 422, description = "Not a valid customer id or cursor", body = ErrorResponse),
    )
)]
async fn get_history(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ShardingHistoryPage>, ApiError> {
    let customer = customer_id(id)?;
    let params = query(params)?;
    let page = state
        .store
        .sharding()
        .history(&customer, &params.request())
        .await
        .map_err(ApiError::from)?;
    Ok(Json(ShardingHistoryPage {
        items: page.items.into_iter().map(event_view).collect(),
        next_cursor: page.next_cursor,
    }))
}

fn customer_id(id: String) -> Result<CustomerId, ApiError> {
    CustomerId::parse(id).map_err(|e| ApiError::invalid_field("id", e.to_string()))
}

/// One event of the body, with errors naming `<prefix>.<field>`.
fn parse_event(
    item: Value,
    prefix: &str,
) -> Result<herald_core::sharding::ShardingEvent, ApiError> {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else if name.is_empty() || name == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let input: ShardingEventInput = serde_path_to_error::deserialize(item).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let name = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => String::new(),
            (path, _) => path.to_owned(),
        };
        let named = field(&name);
        ApiError::invalid_field(
            if named.is_empty() {
                "body".into()
            } else {
                named
            },
            message,
        )
    })?;
    input
        .into_event()
        .map_err(|e| ApiError::invalid_field(field(e.field), e.message))
}

fn sharding_error(error: ShardingError, batch: bool) -> ApiError {
    let conflict = |code: &'static str, message: String, field: Option<String>| {
        let mut api = ApiError::new(StatusCode::CONFLICT, code, message);
        api.field = field;
        api
    };
    match error {
        ShardingError::Rejected {
            index,
            ref id,
            ref refusal,
            ..
        } => conflict(
            "illegal_transition",
            format!("sharding event {id}: {refusal}"),
            batch.then(|| format!("[{index}]")),
        ),
        ShardingError::IdReused { index, .. } => conflict(
            "id_reused",
            error.to_string(),
            Some(if batch {
                format!("[{index}].id")
            } else {
                "id".to_owned()
            }),
        ),
        ShardingError::TooMany(_) | ShardingError::Empty => {
            ApiError::invalid_field("body", error.to_string())
        }
        ShardingError::Store(e) => ApiError::from(e),
    }
}

fn time(t: Timestamp) -> String {
    let millis = u64::try_from(t.millis()).unwrap_or_default();
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

fn placement_of(placement: &Placement) -> PlacementView {
    match placement {
        Placement::Unknown => PlacementView {
            state: "unknown",
            shard: None,
            from: None,
            to: None,
        },
        Placement::Stable { shard } => PlacementView {
            state: "stable",
            shard: Some(shard.to_string()),
            from: None,
            to: None,
        },
        Placement::Migrating { from, to } => PlacementView {
            state: "migrating",
            shard: None,
            from: Some(from.to_string()),
            to: Some(to.to_string()),
        },
    }
}

fn placement_view(p: CustomerPlacement) -> CustomerPlacementView {
    CustomerPlacementView {
        customer: p.customer.to_string(),
        placement: placement_of(&p.placement),
        last_event_id: p.last_event_id.map(|id| id.to_string()),
        last_occurred_at: p.last_occurred_at.map(time),
        updated_at: p.updated_at.map(time),
    }
}

fn event_view(r: RecordedEvent) -> ShardingEventView {
    let (shard, from, to) = match &r.event.kind {
        ShardingEventKind::Assigned { shard } | ShardingEventKind::MigrationSucceeded { shard } => {
            (Some(shard.to_string()), None, None)
        }
        ShardingEventKind::MigrationStarted { from, to } => {
            (None, Some(from.to_string()), Some(to.to_string()))
        }
        ShardingEventKind::MigrationFailed => (None, None, None),
    };
    ShardingEventView {
        id: r.event.id.to_string(),
        customer: r.event.customer.to_string(),
        kind: r.event.kind.name(),
        shard,
        from,
        to,
        occurred_at: time(r.event.occurred_at),
        recorded_at: time(r.recorded_at),
        outcome: r.outcome.as_str(),
        placement: placement_of(&r.placement),
        release_to: r.release_to.map(|s| s.to_string()),
        duplicate: None,
    }
}

fn recorded_view(r: Recorded) -> ShardingEventView {
    ShardingEventView {
        duplicate: Some(r.duplicate),
        ..event_view(r.record)
    }
}
