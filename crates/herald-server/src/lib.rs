//! The HTTP side of Herald: routers for the API and the web UI, the error
//! shape, health and metrics endpoints, and the layers every request passes.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_alerts::Composer;
use herald_bus::Bus;
use herald_router::sharding::ReleaseSignal;
use herald_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod telemetry;
pub mod unsubscribe;
pub mod webhooks;

pub use error::ApiError;
pub use extract::ApiJson;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub metrics: PrometheusHandle,
    /// Renders alerts for previews and test sends, and verifies unsubscribe
    /// tokens; the mailer uses the same one.
    pub composer: Arc<Composer>,
    /// Wakes this process's hold releaser when a recorded sharding event
    /// ends a migration.
    pub release_signal: ReleaseSignal,
    /// The webhook receivers, when this process runs the ingest role.
    pub webhooks: Option<Arc<webhooks::WebhookReceivers>>,
}

impl AppState {
    pub fn new(store: Store, bus: Arc<dyn Bus>, composer: Arc<Composer>) -> Self {
        Self {
            store,
            bus,
            metrics: telemetry::prometheus(),
            composer,
            release_signal: ReleaseSignal::new(),
            webhooks: None,
        }
    }

    /// Serves `/webhooks/*` with these receivers (the ingest role).
    pub fn with_webhooks(mut self, receivers: Arc<webhooks::WebhookReceivers>) -> Self {
        self.webhooks = Some(receivers);
        self
    }

    /// Shares the release signal of this process's router role, so a
    /// migration's end recorded through the API releases held events at once.
    pub fn with_release_signal(mut self, signal: ReleaseSignal) -> Self {
        self.release_signal = signal;
        self
    }
}

/// Limits every request is held to.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The whole HTTP surface.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let routes = Router::new()
        .merge(api::routes())
        .merge(unsubscribe::routes())
        .merge(webhooks::routes())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(telemetry::metrics))
        .with_state(state);
    with_layers(routes, limits)
}

/// The layers every request passes: request ids, tracing, metrics, a JSON
/// error body for every error, panics caught, the time and body limits.
pub fn with_layers(routes: Router, limits: HttpLimits) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(limits.request_timeout, request_timeout))
        .layer(CatchPanicLayer::new())
        // Outside the layers above, so their bare answers get our body too.
        .layer(middleware::from_fn(json_error_bodies))
        .layer(middleware::from_fn(telemetry::track_requests))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Bulk imports stream bodies of gigabytes and may run for many minutes;
/// every other request is held to the configured timeout.
const UNTIMED_PREFIX: &str = "/api/imports/";

async fn request_timeout(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with(UNTIMED_PREFIX) {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::from_status(StatusCode::REQUEST_TIMEOUT).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Layers such as the timeout, the body limit or the panic catcher answer with
/// a bare status; give those the same JSON error body as everything else.
async fn json_error_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == HeaderValue::from_static("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        return ApiError::from_status(status).into_response();
    }
    response
}

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
