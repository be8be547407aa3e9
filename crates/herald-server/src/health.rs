//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::AppState;

/// The process is up and answering.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub checks: Checks,
}

#[derive(Debug, Serialize)]
pub struct Checks {
    pub store: Check,
    pub bus: Check,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub backend: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    fn from_result<E: std::fmt::Display>(backend: &'static str, result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Check {
                backend,
                ok: true,
                error: None,
            },
            Err(e) => Check {
                backend,
                ok: false,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Ready when the store and the bus both answer; 503 naming the failing
/// backend otherwise.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (store, bus) = tokio::join!(state.store.ping(), state.bus.ping());
    let checks = Checks {
        store: Check::from_result(state.store.backend(), store),
        bus: Check::from_result(state.bus.backend(), bus),
    };
    let ready = checks.store.ok && checks.bus.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        checks,
    };
    (status, Json(readiness))
}
