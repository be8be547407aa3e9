use herald_bus::{OutgoingMessage, QueueConfig};
use herald_core::QueueName;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_answers() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn readyz_checks_store_and_bus() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"]["backend"], "sqlite");
    assert_eq!(body["checks"]["store"]["ok"], true);
    assert_eq!(body["checks"]["bus"]["ok"], true);
    app.stop().await;
}

#[tokio::test]
async fn readyz_names_the_backend_that_is_gone() {
    let app = spawn_app().await;
    app.backends.store.close().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["store"]["ok"], false);
    let error = body["checks"]["store"]["error"].as_str().unwrap();
    assert!(error.contains("sqlite"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_requests_and_queue_depths() {
    let app = spawn_app().await;
    let queue = QueueName::parse("metrics-probe").unwrap();
    let bus = &app.backends.bus;
    bus.ensure_queue(&queue, QueueConfig::default())
        .await
        .unwrap();
    bus.send(&queue, OutgoingMessage::new("a")).await.unwrap();
    bus.send(&queue, OutgoingMessage::new("b")).await.unwrap();
    assert_eq!(app.get("/healthz").await.status(), 200);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_queue_visible{queue=\"metrics-probe\"} 2")),
        "{text}"
    );
    assert!(
        text.contains("herald_queue_dead_lettered{queue=\"metrics-probe\"} 0"),
        "{text}"
    );
    assert!(text.contains("herald_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
    assert!(
        text.contains("herald_http_request_duration_seconds_bucket"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_the_json_error_shape() {
    let app = spawn_app().await;
    let response = app.get("/no/such/thing").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].is_string());
    app.stop().await;
}
