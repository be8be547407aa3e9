//! `/metrics`: Prometheus text built from the process's metrics recorder,
//! plus queue gauges read from the bus at scrape time so they are never
//! stale.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::AppState;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder. A process has one recorder; tests
/// that start several apps share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding
            // program's); then this handle only renders our gauges.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counts and times every request by method, route template and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Err(e) = record_queue_gauges(&state).await {
        return ApiError::from(e).into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn record_queue_gauges(state: &AppState) -> Result<(), herald_bus::BusError> {
    for queue in state.bus.list_queues().await? {
        let stats = state.bus.stats(&queue.name).await?;
        let name = queue.name.to_string();
        metrics::gauge!("herald_queue_visible", "queue" => name.clone()).set(stats.visible as f64);
        metrics::gauge!("herald_queue_in_flight", "queue" => name.clone())
            .set(stats.in_flight as f64);
        metrics::gauge!("herald_queue_delayed", "queue" => name.clone()).set(stats.delayed as f64);
        metrics::gauge!("herald_queue_dead_lettered", "queue" => name.clone())
            .set(stats.dead_lettered as f64);
        metrics::gauge!("herald_queue_oldest_age_seconds", "queue" => name)
            .set(stats.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
    }
    Ok(())
}
