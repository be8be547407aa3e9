//! Extractors whose rejections use the API's error shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Malformed JSON is a 400; a value of the wrong shape is a 422
/// naming the offending field (`sales[2].url`); an oversized body is a 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large("request body is larger than this endpoint accepts")
    } else {
        ApiError::bad_request("unreadable_body", rejection.body_text())
    }
}

/// Parses JSON the way [`ApiJson`] does, for handlers that read the bytes
/// themselves (to verify a signature first, say).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let field = field_name(&path, &inner.to_string());
            ApiError::invalid_field(field, strip_position(&inner.to_string()))
        } else {
            ApiError::bad_request("malformed_json", format!("body is not valid JSON: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request("malformed_json", format!("body is not valid JSON: {e}"))
    })?;
    Ok(value)
}

/// serde reports a missing field at its parent's path; name the field itself.
fn field_name(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (".", None) => "body".to_owned(),
        (path, None) => path.to_owned(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Alert {
        subject: String,
        sales: Vec<Sale>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sale {
        url: String,
        brand_id: i64,
    }

    #[test]
    fn malformed_json_is_a_400() {
        let err = parse_json::<Alert>(b"{\"subject\": ").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "malformed_json");
        let err = parse_json::<Alert>(b"{\"subject\":\"a\",\"sales\":[]} trailing").unwrap_err();
        assert_eq!(err.code, "malformed_json");
    }

    #[test]
    fn wrong_types_name_the_nested_field() {
        let err = parse_json::<Alert>(
            br#"{"subject":"a","sales":[{"url":"u","brand_id":1},{"url":"u","brand_id":"x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.field.as_deref(), Some("sales[1].brand_id"));
    }

    #[test]
    fn missing_fields_are_named() {
        let err = parse_json::<Alert>(br#"{"sales":[]}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("subject"));
        let err = parse_json::<Alert>(br#"{"subject":"s","sales":[{"url":"u"}]}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sales[0].brand_id"));
    }
}
