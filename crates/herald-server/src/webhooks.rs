//! Provider webhook receivers (role `ingest`), mounted at `/webhooks`:
//!
//! - `POST /webhooks/sendgrid`: SendGrid's Signed Event Webhook (ECDSA).
//! - `POST /webhooks/sparkpost`: SparkPost batches, basic auth or bearer.
//! - `POST /webhooks/generic/{source}`: Standard Webhooks HMAC, one event
//!   or an array, for in-house senders.
//!
//! Each request is read up to the configured limit, verified, parsed whole,
//! then stored and published through the [`EventSink`] before the 2xx, so a
//! 2xx always means "durable and on the topic". Any rejection stores
//! nothing and answers the error shape of [`ApiError`]:
//!
//! | what | status |
//! |---|---|
//! | body over the limit | 413 `payload_too_large` |
//! | missing signature, timestamp or credentials | 401 |
//! | wrong signature or credentials, stale or future timestamp | 403 |
//! | not JSON, not the batch shape | 400 |
//! | an event missing a field or with a wrong one | 422, `field` = `[<index>].<field>` |
//! | SendGrid or SparkPost not configured, ingest not running here | 503 `not_configured` |
//! | unknown generic source | 404 |
//! | store or bus failing | 503 (the provider retries) |
//!
//! An unconfigured provider answers 503 rather than 404 on purpose: the
//! providers retry 5xx answers for hours, so events posted while an operator
//! finishes the configuration are delivered later instead of dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use herald_core::email_event::{EmailEvent, Provider, SourceName};
use herald_core::providers::sparkpost::SparkPostBatch;
use herald_core::providers::{self, ParseError};
use herald_core::Clock;
use herald_router::ingest::{EventSink, IngestOutcome};
use herald_router::verify::{
    SendGridVerifier, SharedSecretAuth, StandardWebhooks, Verifier, VerifyError, Webhook,
};
use serde::Serialize;

use crate::error::ApiError;
use crate::AppState;

/// The default largest webhook body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// What the receivers of this process verify with and store into.
pub struct WebhookReceivers {
    pub sink: Arc<dyn EventSink>,
    /// `None`: SendGrid webhooks are not configured.
    pub sendgrid: Option<SendGridVerifier>,
    /// `None`: SparkPost webhooks are not configured.
    pub sparkpost: Option<SharedSecretAuth>,
    /// Generic sources by name, each with its signing secret.
    pub generic: BTreeMap<SourceName, StandardWebhooks>,
    pub max_body_bytes: usize,
    pub clock: Arc<dyn Clock>,
}

/// The 2xx body.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// Events in the request.
    pub received: usize,
    /// Events stored and published by this request.
    pub stored: u64,
    /// Events stored before (a provider's retry) or repeated in the batch.
    pub duplicates: u64,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/sendgrid", post(sendgrid))
        .route("/webhooks/sparkpost", post(sparkpost))
        .route("/webhooks/generic/{source}", post(generic))
}

fn receivers(state: &AppState, provider: &str) -> Result<Arc<WebhookReceivers>, ApiError> {
    state.webhooks.clone().ok_or_else(|| {
        rejected(provider, "not_configured");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "webhook ingest does not run in this process: start it with the ingest role",
        )
    })
}

fn not_configured(provider: &str, key: &str) -> ApiError {
    rejected(provider, "not_configured");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
        format!("{provider} webhooks are not configured on this server: set {key}"),
    )
}

#[tracing::instrument(skip_all, fields(provider = "sendgrid"))]
async fn sendgrid(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    const PROVIDER: &str = "sendgrid";
    let receivers = receivers(&state, PROVIDER)?;
    let verifier = receivers
        .sendgrid
        .as_ref()
        .ok_or_else(|| not_configured(PROVIDER, "ingest.sendgrid.public_key"))?;
    let body = verified(&receivers, PROVIDER, verifier, headers, body).await?;
    let events = providers::sendgrid::parse(&body).map_err(|e| parse_error(PROVIDER, e))?;
    store(&receivers, &Provider::SendGrid, events).await
}

#[tracing::instrument(skip_all, fields(provider = "sparkpost"))]
async fn sparkpost(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    const PROVIDER: &str = "sparkpost";
    let receivers = receivers(&state, PROVIDER)?;
    let auth = receivers.sparkpost.as_ref().ok_or_else(|| {
        not_configured(
            PROVIDER,
            "ingest.sparkpost.username and password, or bearer_token",
        )
    })?;
    let body = verified(&receivers, PROVIDER, auth, headers, body).await?;
    match providers::sparkpost::parse(&body).map_err(|e| parse_error(PROVIDER, e))? {
        SparkPostBatch::Ping => Ok(Json(Accepted {
            received: 0,
            stored: 0,
            duplicates: 0,
        })),
        SparkPostBatch::Events(events) => store(&receivers, &Provider::SparkPost, events).await,
    }
}

#[tracing::instrument(skip_all, fields(provider = "generic", source = %source))]
async fn generic(
    State(state): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    const PROVIDER: &str = "generic";
    let receivers = receivers(&state, PROVIDER)?;
    let unknown = || {
        rejected(PROVIDER, "unknown_source");
        ApiError::not_found(format!(
            "no generic webhook source {source:?} is configured (ingest.generic.<source>.secret)"
        ))
    };
    let source = SourceName::parse(source.as_str()).map_err(|_| unknown())?;
    let check = receivers.generic.get(&source).ok_or_else(unknown)?;
    let provider = Provider::Generic(source.clone());
    let label = provider.to_string();
    let body = verified(&receivers, &label, check, headers, body).await?;
    let events = providers::generic::parse(&source, &body).map_err(|e| parse_error(&label, e))?;
    store(&receivers, &provider, events).await
}

/// Reads the body up to the limit and checks it; returns the verified bytes.
async fn verified(
    receivers: &WebhookReceivers,
    provider: &str,
    check: &dyn Verifier,
    headers: HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let body = read_limited(body, &headers, receivers.max_body_bytes)
        .await
        .inspect_err(|e| rejected(provider, e.code.as_ref()))?;
    let webhook = Webhook::new(headers, body)
        .verify(check, receivers.clock.now())
        .map_err(|e| {
            rejected(provider, e.code());
            verify_error(e)
        })?;
    let (_, body) = webhook.into_parts();
    Ok(body)
}

/// The body, refused with 413 as soon as it is known to exceed `limit`
/// (from `Content-Length`, or while streaming).
async fn read_limited(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::payload_too_large(format!("webhook bodies are limited to {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("body_unreadable", format!("cannot read the body: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn verify_error(e: VerifyError) -> ApiError {
    let status = match e {
        VerifyError::MissingSignature { .. }
        | VerifyError::MissingTimestamp { .. }
        | VerifyError::MissingId { .. }
        | VerifyError::MissingAuth
        | VerifyError::MalformedAuth { .. }
        | VerifyError::BadTimestamp { .. }
        | VerifyError::MalformedSignature { .. } => StatusCode::UNAUTHORIZED,
        VerifyError::BadSignature
        | VerifyError::StaleTimestamp { .. }
        | VerifyError::FutureTimestamp { .. }
        | VerifyError::BadAuth => StatusCode::FORBIDDEN,
    };
    let field = match &e {
        VerifyError::MissingSignature { header }
        | VerifyError::MissingTimestamp { header }
        | VerifyError::MissingId { header }
        | VerifyError::BadTimestamp { header, .. }
        | VerifyError::MalformedSignature { header, .. } => Some(header.to_string()),
        VerifyError::MissingAuth | VerifyError::MalformedAuth { .. } => {
            Some("authorization".to_owned())
        }
        _ => None,
    };
    let error = ApiError::new(status, e.code(), e.to_string());
    match field {
        Some(field) => error.with_field(field),
        None => error,
    }
}

fn parse_error(provider: &str, e: ParseError) -> ApiError {
    rejected(provider, e.code());
    let status = match e {
        ParseError::InvalidJson { .. } | ParseError::BodyShape { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let field = match (e.index(), e.field()) {
        (Some(i), Some(field)) => Some(format!("[{i}].{field}")),
        (Some(i), None) => Some(format!("[{i}]")),
        _ => None,
    };
    let error = ApiError::new(status, e.code(), e.to_string());
    match field {
        Some(field) => error.with_field(field),
        None => error,
    }
}

async fn store(
    receivers: &WebhookReceivers,
    provider: &Provider,
    events: Vec<EmailEvent>,
) -> Result<Json<Accepted>, ApiError> {
    let received = events.len();
    let outcome = receivers.sink.ingest(events).await.map_err(|e| {
        rejected(&provider.to_string(), "backend_unavailable");
        tracing::error!(error = %e, "webhook batch not stored");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            "the batch could not be stored; nothing of it was kept, retry later",
        )
    })?;
    ingested(provider, &outcome);
    Ok(Json(Accepted {
        received,
        stored: outcome.stored_total(),
        duplicates: outcome.duplicates,
    }))
}

/// `herald_webhook_events_total{provider,type}`: events stored.
fn ingested(provider: &Provider, outcome: &IngestOutcome) {
    let provider = provider.to_string();
    for (event_type, count) in &outcome.stored {
        metrics::counter!("herald_webhook_events_total", "provider" => provider.clone(), "type" => event_type.clone())
            .increment(*count);
    }
    tracing::info!(
        provider,
        stored = outcome.stored_total(),
        duplicates = outcome.duplicates,
        "webhook batch stored"
    );
}

/// `herald_webhook_rejected_total{provider,reason}`: requests refused.
fn rejected(provider: &str, reason: &str) {
    metrics::counter!("herald_webhook_rejected_total", "provider" => provider.to_owned(), "reason" => reason.to_owned())
        .increment(1);
    tracing::info!(provider, reason, "webhook request refused");
}
