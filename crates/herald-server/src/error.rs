//! The one place where errors become HTTP responses. Every error body has the
//! shape `{"error": {"code": ..., "message": ..., "field": ...}}`; a 5xx body
//! stays opaque and its cause is logged once here.

use std::borrow::Cow;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_bus::BusError;
use herald_store::StoreError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// A server-side failure: the cause is logged, the client sees a generic
    /// message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// The generic error for a bare status, used when a layer (timeout, body
    /// limit, panic) answered without a body of ours.
    pub fn from_status(status: StatusCode) -> Self {
        let code = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace([' ', '-'], "_");
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "request body is larger than this endpoint accepts".to_owned()
            }
            StatusCode::REQUEST_TIMEOUT => "the request took too long and was stopped".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this path".to_owned(),
            s if s.is_server_error() => "internal error; see the server log".to_owned(),
            s => s.canonical_reason().unwrap_or("error").to_owned(),
        };
        Self::new(status, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: &self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{}}".to_vec());
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response()
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::InvalidName(e) => Self::invalid_field("name", e.to_string()),
            BusError::BodyTooLarge { .. } => Self::payload_too_large(e.to_string()),
            BusError::QueueNotFound(_) | BusError::TopicNotFound(_) => {
                Self::not_found(e.to_string())
            }
            BusError::StaleReceipt(_) => {
                Self::new(StatusCode::CONFLICT, "stale_receipt", e.to_string())
            }
            BusError::InvalidArgument { field, .. } => Self::invalid_field(field, e.to_string()),
            BusError::Unsupported { .. } => {
                Self::new(StatusCode::NOT_IMPLEMENTED, "unsupported", e.to_string())
            }
            BusError::Backend { .. } => Self::unavailable(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::Conflict { .. } => Self::conflict(e.to_string()),
            StoreError::InUse { .. } => Self::new(StatusCode::CONFLICT, "in_use", e.to_string()),
            StoreError::InvalidInput { field, message } => Self::invalid_field(field, message),
            other => Self::unavailable(other),
        }
    }
}

impl ApiError {
    fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "backend failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            "a backend is unavailable; see the server log",
        )
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_json(e: ApiError) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn body_has_the_documented_shape() {
        let (status, json) =
            body_json(ApiError::invalid_field("send_at", "must be in the future")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "invalid_field", "message": "must be in the future", "field": "send_at"}})
        );
    }

    #[tokio::test]
    async fn server_errors_stay_opaque() {
        let (status, json) = body_json(ApiError::internal(
            "password=hunter2 leaked in a driver error",
        ))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn bus_errors_map_to_statuses() {
        let q = herald_core::QueueName::parse("q").unwrap();
        let cases = [
            (BusError::QueueNotFound(q.clone()), StatusCode::NOT_FOUND),
            (
                BusError::StaleReceipt(herald_bus::Receipt("r".into())),
                StatusCode::CONFLICT,
            ),
            (
                BusError::BodyTooLarge {
                    queue: q,
                    size: 2,
                    limit: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                BusError::Backend {
                    backend: "sqlite",
                    message: "database is locked".into(),
                    source: None,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(ApiError::from(error).status, expected);
        }
    }

    #[test]
    fn bare_statuses_get_codes() {
        assert_eq!(
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE).code,
            "payload_too_large"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::REQUEST_TIMEOUT).code,
            "request_timeout"
        );
    }
}
