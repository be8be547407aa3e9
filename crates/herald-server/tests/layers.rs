//! The layers every route gets, exercised through `oneshot` without a network.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use herald_server::{with_layers, ApiJson, HttpLimits};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn app() -> Router {
    #[derive(serde::Deserialize)]
    struct Echo {
        text: String,
    }
    let routes = Router::new()
        .route(
            "/echo",
            post(|ApiJson(echo): ApiJson<Echo>| async move { echo.text }),
        )
        .route(
            "/slow",
            get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }),
        )
        .route("/panic", get(|| async { panic!("boom") as &str }));
    with_layers(
        routes,
        HttpLimits {
            max_body_bytes: 64,
            request_timeout: Duration::from_millis(200),
        },
    )
}

async fn call(request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app().oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "error bodies are JSON"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/echo")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(100));
    let (status, json) = call(post_json(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn malformed_and_mistyped_json_are_told_apart() {
    let (status, json) = call(post_json("{\"text\": ")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["code"], "malformed_json");

    let (status, json) = call(post_json("{\"text\": 5}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json["error"]["field"], "text");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let request = Request::post("/echo")
        .body(Body::from("{\"text\":\"a\"}"))
        .unwrap();
    let (status, json) = call(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(json["error"]["code"], "unsupported_media_type");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_error_shape() {
    let (status, json) = call(Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "not_found");

    let (status, json) = call(Request::delete("/echo").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn slow_requests_time_out_with_408() {
    let (status, json) = call(Request::get("/slow").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(json["error"]["code"], "request_timeout");
}

#[tokio::test]
async fn panics_become_opaque_500s() {
    let (status, json) = call(Request::get("/panic").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!json.to_string().contains("boom"));
}

#[tokio::test]
async fn successful_requests_carry_a_request_id() {
    let response = app().oneshot(post_json("{\"text\":\"hi\"}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"hi");
}
