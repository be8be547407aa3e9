//! The queue API: how shards read their input queues over HTTP, and how
//! operators look into and repair queues.
//!
//! A shard holds a key with the scope `queues:<prefix>` (for example
//! `queues:shard-1.`) and may receive, ack, nack and extend on the queues
//! whose names start with that prefix, and nothing else. Admin keys may do
//! everything, including peek, redrive and purge.
//!
//! Message bodies are returned as JSON when they are JSON (byte for byte as
//! sent), as a string when they are other UTF-8 text, and as base64 when
//! they are neither; `body_encoding` says which.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use herald_bus::{BusError, Delivery, PeekedMessage, QueueInfo, Receipt, ReceiveOptions};
use herald_core::api_key::{Access, ApiKey};
use herald_core::QueueName;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::catalog::{query, ApiTime};
use crate::api::ErrorResponse;
use crate::auth::{require, AdminAccess, AnyKey};
use crate::{ApiError, ApiJson, AppState};

/// Most messages one receive or peek returns, and most receipts one ack
/// takes (the bus's own limit).
pub const MAX_MESSAGES: u32 = 1000;
/// Longest long poll, as SQS: longer ones meet proxies' idle timeouts.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest visibility a receive or extend may ask for, as SQS.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Longest nack delay: the bus takes any, a year stops typos in seconds.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

const DEFAULT_MAX: u32 = 10;
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_PEEK: u32 = 10;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_queues))
        .routes(routes!(get_queue))
        .routes(routes!(receive))
        .routes(routes!(ack))
        .routes(routes!(nack))
        .routes(routes!(extend))
        .routes(routes!(peek))
        .routes(routes!(redrive))
        .routes(routes!(purge))
}

/// A queue, its settings and its counts at one moment.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Deliveries of one message before the next receive moves it to
    /// `dead_letter_queue`; 0 means never.
    pub max_receives: u32,
    pub dead_letter_queue: Option<String>,
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet acked, nacked or expired.
    pub in_flight: u64,
    /// Waiting for a delay or a nack delay to pass.
    pub delayed: u64,
    /// Messages in this queue's dead-letter queue.
    pub dead_lettered: u64,
    /// Age of the oldest message in the queue, in seconds.
    pub oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// How a message's `body` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// The body is JSON and is included as is.
    Json,
    /// The body is UTF-8 text that is not JSON: a JSON string.
    Text,
    /// The body is neither: a base64 string of its bytes.
    Base64,
}

/// One delivery of a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedMessage {
    /// Stable across redeliveries: use it to deduplicate.
    pub id: String,
    /// Proof of this delivery for ack, nack and extend. A later delivery of
    /// the same message makes it stale.
    pub receipt: String,
    /// The message body: the JSON itself when `body_encoding` is `json`, a
    /// string of the text for `text`, of the bytes' base64 for `base64`.
    #[schema(value_type = Value)]
    pub body: Box<RawValue>,
    pub body_encoding: BodyEncoding,
    pub attributes: BTreeMap<String, String>,
    pub group: Option<String>,
    /// 1 on the first delivery.
    pub receive_count: u32,
    pub first_received_at: ApiTime,
    pub sent_at: ApiTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiveResponse {
    /// Empty when nothing arrived within `wait_seconds`.
    pub messages: Vec<ReceivedMessage>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    /// Most messages to return: 1 to 1000 (default 10).
    pub max: Option<u32>,
    /// Long poll: wait up to this many seconds for a message when none is
    /// visible, 0 to 20 (default 0, answer at once).
    pub wait_seconds: Option<f64>,
    /// How long the messages stay invisible to other receivers, in seconds:
    /// more than 0, at most 43200 (default 30).
    pub visibility_seconds: Option<f64>,
}

/// Acks one receipt (`receipt`) or many (`receipts`), not both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub receipt: Option<String>,
    /// 1 to 1000 receipts.
    pub receipts: Option<Vec<String>>,
}

/// What became of one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcomeView {
    /// The message is deleted.
    Acked,
    /// The message was redelivered, acked or nacked since this receipt was
    /// issued: nothing was done.
    Stale,
    /// Not a receipt this bus issued: nothing was done.
    Invalid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResult {
    pub receipt: String,
    pub outcome: AckOutcomeView,
    /// Why, when the outcome is not `acked`.
    pub message: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResponse {
    /// How many receipts were acked.
    pub acked: u64,
    /// One per receipt, in request order.
    pub results: Vec<AckResult>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub receipt: String,
    /// Seconds before the message is visible again: 0 (default) to a year.
    pub delay_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub receipt: String,
    /// Keep the message invisible this many seconds from now: more than 0,
    /// at most 43200.
    pub visibility_seconds: f64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeekQuery {
    /// Most messages to show: 1 to 1000 (default 10).
    pub max: Option<u32>,
}

/// Why a dead-lettered message was moved.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub source_queue: String,
    pub reason: String,
    pub moved_at: ApiTime,
}

/// A message as it waits in the queue, not received.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeekedMessageView {
    pub id: String,
    /// The message body: the JSON itself when `body_encoding` is `json`, a
    /// string of the text for `text`, of the bytes' base64 for `base64`.
    #[schema(value_type = Value)]
    pub body: Box<RawValue>,
    pub body_encoding: BodyEncoding,
    pub attributes: BTreeMap<String, String>,
    pub group: Option<String>,
    pub receive_count: u32,
    pub sent_at: ApiTime,
    pub visible_at: ApiTime,
    pub dead_letter: Option<DeadLetterView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeekResponse {
    /// Oldest first.
    pub messages: Vec<PeekedMessageView>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Where the messages go; default: the queue this one is the `.dlq` of.
    pub to: Option<String>,
    /// Most messages to move (at least 1); default all.
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResponse {
    pub from: String,
    pub to: String,
    pub moved: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeResponse {
    pub purged: u64,
}

/// Lists the queues the key may see, with their counts: every queue for
/// admin, marketing and read-only keys; a shard key's own queues for a
/// `queues:<prefix>` key.
#[utoipa::path(
    get,
    path = "/api/queues",
    tag = "queues",
    responses((status = 200, body = QueueList), (status = 401, body = ErrorResponse))
)]
async fn list_queues(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
) -> Result<Json<QueueList>, ApiError> {
    let mut queues = Vec::new();
    for info in state.bus.list_queues().await? {
        if may_see(&key, &info.name) {
            match view(&state, info).await {
                Ok(view) => queues.push(view),
                // Deleted between the listing and its stats.
                Err(BusError::QueueNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Json(QueueList { queues }))
}

/// One queue's settings and counts.
#[utoipa::path(
    get,
    path = "/api/queues/{name}",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = QueueView),
        (status = 403, description = "The key does not cover this queue", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn get_queue(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    let queue = queue_name(name)?;
    if !may_see(&key, &queue) {
        require(
            &key,
            Access::Queue(&queue),
            &format!("reading queue {queue}"),
        )?;
    }
    let info = state
        .bus
        .list_queues()
        .await?
        .into_iter()
        .find(|info| info.name == queue)
        .ok_or_else(|| ApiError::from(BusError::QueueNotFound(queue)))?;
    Ok(Json(view(&state, info).await?))
}

/// Receives up to `max` messages, waiting up to `wait_seconds` for the
/// first. Each comes with a receipt to ack (done), nack (retry later) or
/// extend (still working) it; a message neither acked nor nacked is
/// delivered again once its visibility runs out.
#[utoipa::path(
    post,
    path = "/api/queues/{name}/receive",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = ReceiveRequest,
    responses(
        (status = 200, body = ReceiveResponse),
        (status = 403, description = "The key does not cover this queue", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, description = "A field is out of range; `field` names it", body = ErrorResponse),
    )
)]
async fn receive(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<ReceiveRequest>,
) -> Result<Json<ReceiveResponse>, ApiError> {
    let queue = queue_name(name)?;
    require(
        &key,
        Access::Queue(&queue),
        &format!("receiving from queue {queue}"),
    )?;
    let max = request.max.unwrap_or(DEFAULT_MAX);
    if !(1..=MAX_MESSAGES).contains(&max) {
        return Err(ApiError::invalid_field(
            "max",
            format!("must be 1 to {MAX_MESSAGES}, not {max}"),
        ));
    }
    let options = ReceiveOptions {
        max: max as usize,
        wait: seconds(
            "wait_seconds",
            request.wait_seconds,
            Duration::ZERO,
            MAX_WAIT,
        )?,
        visibility: visibility(
            "visibility_seconds",
            request
                .visibility_seconds
                .unwrap_or(DEFAULT_VISIBILITY.as_secs_f64()),
        )?,
    };
    let deliveries = state.bus.receive(&queue, options).await?;
    Ok(Json(ReceiveResponse {
        messages: deliveries.into_iter().map(received).collect(),
    }))
}

/// Acks (deletes) messages by receipt. Every receipt gets its own outcome;
/// a stale or foreign receipt is reported, never an error for the others.
#[utoipa::path(
    post,
    path = "/api/queues/{name}/ack",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = AckRequest,
    responses(
        (status = 200, description = "One outcome per receipt", body = AckResponse),
        (status = 403, description = "The key does not cover this queue", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn ack(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let queue = queue_name(name)?;
    require(
        &key,
        Access::Queue(&queue),
        &format!("acking on queue {queue}"),
    )?;
    let receipts: Vec<Receipt> = match (request.receipt, request.receipts) {
        (Some(one), None) => vec![Receipt(one)],
        (None, Some(many)) if !many.is_empty() && many.len() <= MAX_MESSAGES as usize => {
            many.into_iter().map(Receipt).collect()
        }
        (None, Some(many)) => {
            return Err(ApiError::invalid_field(
                "receipts",
                format!("give 1 to {MAX_MESSAGES} receipts, not {}", many.len()),
            ))
        }
        _ => {
            return Err(ApiError::invalid_field(
                "receipts",
                "give either `receipt` or `receipts`",
            ))
        }
    };
    let outcomes = state.bus.ack_batch(&queue, &receipts).await?;
    let mut acked = 0;
    let mut results = Vec::with_capacity(receipts.len());
    for (receipt, outcome) in receipts.into_iter().zip(outcomes) {
        let (outcome, message) = match outcome {
            Ok(()) => {
                acked += 1;
                (AckOutcomeView::Acked, None)
            }
            Err(e @ BusError::StaleReceipt(_)) => (AckOutcomeView::Stale, Some(e.to_string())),
            Err(e @ BusError::InvalidArgument { .. }) => {
                (AckOutcomeView::Invalid, Some(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        results.push(AckResult {
            receipt: receipt.0,
            outcome,
            message,
        });
    }
    Ok(Json(AckResponse { acked, results }))
}

/// Gives a message back: visible again after `delay_seconds`.
#[utoipa::path(
    post,
    path = "/api/queues/{name}/nack",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = NackRequest,
    responses(
        (status = 204, description = "The message will be delivered again"),
        (status = 400, description = "Not a receipt this bus issued", body = ErrorResponse),
        (status = 403, description = "The key does not cover this queue", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Stale receipt: the message was redelivered, acked or nacked since", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn nack(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<NackRequest>,
) -> Result<StatusCode, ApiError> {
    let queue = queue_name(name)?;
    require(
        &key,
        Access::Queue(&queue),
        &format!("nacking on queue {queue}"),
    )?;
    let delay = seconds(
        "delay_seconds",
        request.delay_seconds,
        Duration::ZERO,
        MAX_DELAY,
    )?;
    state
        .bus
        .nack(&queue, &Receipt(request.receipt), delay)
        .await
        .map_err(receipt_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Keeps a message invisible for `visibility_seconds` from now, while its
/// receiver is still working on it.
#[utoipa::path(
    post,
    path = "/api/queues/{name}/extend",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = ExtendRequest,
    responses(
        (status = 204, description = "The visibility is extended"),
        (status = 400, description = "Not a receipt this bus issued", body = ErrorResponse),
        (status = 403, description = "The key does not cover this queue", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Stale receipt", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn extend(
    AnyKey(key): AnyKey,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<ExtendRequest>,
) -> Result<StatusCode, ApiError> {
    let queue = queue_name(name)?;
    require(
        &key,
        Access::Queue(&queue),
        &format!("extending on queue {queue}"),
    )?;
    let visibility = visibility("visibility_seconds", request.visibility_seconds)?;
    state
        .bus
        .extend(&queue, &Receipt(request.receipt), visibility)
        .await
        .map_err(receipt_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Shows up to `max` messages, oldest first, without receiving them
/// (operators; admin keys).
#[utoipa::path(
    get,
    path = "/api/queues/{name}/peek",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name"), PeekQuery),
    responses(
        (status = 200, body = PeekResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn peek(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<PeekQuery>, QueryRejection>,
) -> Result<Json<PeekResponse>, ApiError> {
    let queue = queue_name(name)?;
    let max = query(params)?.max.unwrap_or(DEFAULT_PEEK);
    if !(1..=MAX_MESSAGES).contains(&max) {
        return Err(ApiError::invalid_field(
            "max",
            format!("must be 1 to {MAX_MESSAGES}, not {max}"),
        ));
    }
    let messages = state.bus.peek(&queue, max as usize).await?;
    Ok(Json(PeekResponse {
        messages: messages.into_iter().map(peeked).collect(),
    }))
}

/// Moves messages from this (dead-letter) queue to `to`, oldest first,
/// keeping their ids (operators; admin keys).
#[utoipa::path(
    post,
    path = "/api/queues/{name}/redrive",
    tag = "queues",
    params(("name" = String, Path, description = "The queue to move messages from, usually a `.dlq`")),
    request_body = RedriveRequest,
    responses(
        (status = 200, body = RedriveResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
async fn redrive(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RedriveRequest>,
) -> Result<Json<RedriveResponse>, ApiError> {
    let from = queue_name(name)?;
    let to = match request.to {
        Some(to) => {
            QueueName::parse(to).map_err(|e| ApiError::invalid_field("to", e.to_string()))?
        }
        None => from
            .as_str()
            .strip_suffix(".dlq")
            .and_then(|source| QueueName::parse(source).ok())
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "to",
                    format!("{from} is not a `.dlq` queue: name the queue to move its messages to"),
                )
            })?,
    };
    if to == from {
        return Err(ApiError::invalid_field(
            "to",
            "must differ from the queue the messages come from",
        ));
    }
    if request.limit == Some(0) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be at least 1; leave it out to move every message",
        ));
    }
    let moved = state.bus.redrive(&from, &to, request.limit).await?;
    Ok(Json(RedriveResponse {
        from: from.to_string(),
        to: to.to_string(),
        moved,
    }))
}

/// Deletes every message in the queue (operators; admin keys).
#[utoipa::path(
    post,
    path = "/api/queues/{name}/purge",
    tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = PurgeResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn purge(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PurgeResponse>, ApiError> {
    let queue = queue_name(name)?;
    let purged = state.bus.purge(&queue).await?;
    tracing::info!(queue = %queue, purged, "queue purged");
    Ok(Json(PurgeResponse { purged }))
}

fn queue_name(name: String) -> Result<QueueName, ApiError> {
    QueueName::parse(name).map_err(|e| ApiError::invalid_field("name", e.to_string()))
}

/// Whether the key may see this queue's settings and counts: keys that read
/// everything, and queue keys for their own queues.
fn may_see(key: &ApiKey, queue: &QueueName) -> bool {
    key.scopes.allows(Access::Read) || key.scopes.allows(Access::Queue(queue))
}

async fn view(state: &AppState, info: QueueInfo) -> Result<QueueView, BusError> {
    let stats = state.bus.stats(&info.name).await?;
    let dead_letter_queue = match info.config.dead_letter_queue {
        Some(dlq) => Some(dlq.to_string()),
        None if info.config.max_receives > 0 => {
            info.name.default_dead_letter().ok().map(|q| q.to_string())
        }
        None => None,
    };
    Ok(QueueView {
        name: info.name.to_string(),
        max_receives: info.config.max_receives,
        dead_letter_queue,
        visible: stats.visible,
        in_flight: stats.in_flight,
        delayed: stats.delayed,
        dead_lettered: stats.dead_lettered,
        oldest_age_seconds: stats.oldest_age.map(|age| age.as_secs_f64()),
    })
}

/// A duration field in seconds, within `min..=max`; `None` is `min`.
fn seconds(
    field: &'static str,
    value: Option<f64>,
    min: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    let Some(secs) = value else { return Ok(min) };
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d >= min && *d <= max)
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                format!(
                    "must be {} to {} seconds, not {secs}",
                    min.as_secs_f64(),
                    max.as_secs_f64()
                ),
            )
        })
}

/// A visibility in seconds: more than zero, at most [`MAX_VISIBILITY`].
fn visibility(field: &'static str, secs: f64) -> Result<Duration, ApiError> {
    let visibility = seconds(field, Some(secs), Duration::ZERO, MAX_VISIBILITY)?;
    if visibility.is_zero() {
        return Err(ApiError::invalid_field(
            field,
            "must be more than 0 seconds",
        ));
    }
    Ok(visibility)
}

/// Errors of nack and extend: a receipt this bus never issued is a 400, a
/// stale one a 409.
fn receipt_error(e: BusError) -> ApiError {
    match e {
        BusError::InvalidArgument {
            field: "receipt", ..
        } => ApiError::bad_request("invalid_receipt", e.to_string()).with_field("receipt"),
        other => other.into(),
    }
}

/// The body as JSON text: itself when it is JSON, else a string of its text
/// or of its base64.
fn body(bytes: &[u8]) -> (Box<RawValue>, BodyEncoding) {
    if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(bytes) {
        return (raw, BodyEncoding::Json);
    }
    let (text, encoding) = match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), BodyEncoding::Text),
        Err(_) => (BASE64.encode(bytes), BodyEncoding::Base64),
    };
    let raw = serde_json::value::to_raw_value(&text).expect("a string is always valid JSON");
    (raw, encoding)
}

fn received(delivery: Delivery) -> ReceivedMessage {
    let (body, body_encoding) = body(&delivery.body);
    ReceivedMessage {
        id: delivery.id.0,
        receipt: delivery.receipt.0,
        body,
        body_encoding,
        attributes: delivery.attributes,
        group: delivery.group,
        receive_count: delivery.receive_count,
        first_received_at: ApiTime(delivery.first_received_at),
        sent_at: ApiTime(delivery.sent_at),
    }
}

fn peeked(message: PeekedMessage) -> PeekedMessageView {
    let (body, body_encoding) = body(&message.body);
    PeekedMessageView {
        id: message.id.0,
        body,
        body_encoding,
        attributes: message.attributes,
        group: message.group,
        receive_count: message.receive_count,
        sent_at: ApiTime(message.sent_at),
        visible_at: ApiTime(message.visible_at),
        dead_letter: message.dead_letter.map(|info| DeadLetterView {
            source_queue: info.source_queue,
            reason: info.reason,
            moved_at: ApiTime(info.moved_at),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_json_verbatim_and_wrap_the_rest() {
        let exact = br#"{"n": 12345678901234567890123, "s":"a"}"#;
        let (raw, encoding) = body(exact);
        assert_eq!(encoding, BodyEncoding::Json);
        assert_eq!(raw.get().as_bytes(), exact);
        let (raw, encoding) = body(b"plain \"text\"");
        assert_eq!(encoding, BodyEncoding::Text);
        assert_eq!(raw.get(), r#""plain \"text\"""#);
        let (raw, encoding) = body(&[0xff, 0x00, 0x01]);
        assert_eq!(encoding, BodyEncoding::Base64);
        assert_eq!(raw.get(), r#""/wAB""#);
    }

    #[test]
    fn durations_are_bounded_and_name_their_field() {
        let wait = |v| seconds("wait_seconds", v, Duration::ZERO, MAX_WAIT);
        assert_eq!(wait(None).unwrap(), Duration::ZERO);
        assert_eq!(wait(Some(0.25)).unwrap(), Duration::from_millis(250));
        assert_eq!(wait(Some(20.0)).unwrap(), MAX_WAIT);
        for bad in [20.5, -1.0, f64::NAN, f64::INFINITY] {
            let err = wait(Some(bad)).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("wait_seconds"), "{bad}");
        }
        assert!(visibility("visibility_seconds", 0.0).is_err());
        assert!(visibility("visibility_seconds", 43_200.5).is_err());
        assert_eq!(
            visibility("visibility_seconds", 0.1).unwrap(),
            Duration::from_millis(100)
        );
    }
}
