//! `/api/processes` and `/api/runs` over HTTP, on the embedded default and
//! on PostgreSQL: definitions, 422s naming the field, runs, pause, resume,
//! cancel, and a task's own success with its run token.

mod common;

use common::{json_of, spawn_app_on, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.unwrap()).await
}

fn definition() -> Value {
    json!({
        "schedule": {"kind": "cron", "expression": "30 2 * * *", "time_zone": "Europe/Paris"},
        "overlap": "wait",
        "tasks": [
            {"name": "extract", "run": {"kind": "shell", "command": ["true"]}},
            {"name": "load", "depends_on": ["extract"], "require_explicit_success": true,
             "max_attempts": 3, "backoff": {"base": "10s"}, "max_runtime": "10m",
             "run": {"kind": "http", "method": "POST", "url": "http://127.0.0.1:9/load"}},
        ],
    })
}

async fn processes_and_runs(backend: Backend) {
    let Some(app) = spawn_app_on(backend).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let (status, body) = call(
        &app,
        &admin,
        Method::PUT,
        "/api/processes/nightly",
        Some(definition()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "nightly");
    assert_eq!(body["source"], "api");
    assert!(body["next_fire_at"].as_str().unwrap().ends_with('Z'));
    let (status, _) = call(
        &app,
        &admin,
        Method::PUT,
        "/api/processes/nightly",
        Some(definition()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "replaced");

    let (status, body) = call(&app, &app.read_key, Method::GET, "/api/processes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (status, _) = call(
        &app,
        &app.read_key,
        Method::POST,
        "/api/processes/nightly/trigger",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read keys do not trigger");

    let (status, paused) = call(
        &app,
        &admin,
        Method::POST,
        "/api/processes/nightly/pause",
        None,
    )
    .await;
    assert_eq!(
        (status, paused["paused"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, resumed) = call(
        &app,
        &admin,
        Method::POST,
        "/api/processes/nightly/resume",
        None,
    )
    .await;
    assert_eq!(
        (status, resumed["paused"].as_bool()),
        (StatusCode::OK, Some(false))
    );

    let (status, run) = call(
        &app,
        &admin,
        Method::POST,
        "/api/processes/nightly/trigger",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["trigger"], "manual");
    assert!(run.get("token").is_none(), "the run token is never shown");
    let id = run["id"].as_str().unwrap().to_owned();

    let (status, runs) = call(
        &app,
        &app.read_key,
        Method::GET,
        "/api/processes/nightly/runs?limit=10",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(runs["items"][0]["id"], id.as_str());
    let (status, detail) = call(
        &app,
        &app.read_key,
        Method::GET,
        &format!("/api/runs/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(detail["tasks"][0]["state"], "pending");

    // A forged or missing token is refused.
    let success = format!("/api/runs/{id}/tasks/load/success");
    let response = app.client.post(app.url(&success)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .post(app.url(&success))
        .header("herald-run-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (status, cancelled) = call(
        &app,
        &admin,
        Method::POST,
        &format!("/api/runs/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (StatusCode::ACCEPTED, Some("cancelled"))
    );
    let (status, body) = call(
        &app,
        &admin,
        Method::POST,
        &format!("/api/runs/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    for (path, expected) in [
        ("/api/processes/nope", StatusCode::NOT_FOUND),
        ("/api/processes/nope/runs", StatusCode::NOT_FOUND),
        ("/api/runs/nope", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(
            call(&app, &admin, Method::GET, path, None).await.0,
            expected,
            "{path}"
        );
    }
    assert_eq!(
        call(
            &app,
            &admin,
            Method::POST,
            "/api/processes/nope/trigger",
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

async fn bad_definitions_name_the_field(backend: Backend) {
    let Some(app) = spawn_app_on(backend).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let with = |pointer: &str, value: Value| {
        let mut d = definition();
        let mut at = &mut d;
        for part in pointer.trim_start_matches('/').split('/') {
            at = match part.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[part],
            };
        }
        *at = value;
        d
    };
    let cases = [
        (
            with("/schedule/expression", json!("61 * * * *")),
            "schedule.expression",
        ),
        (
            with("/schedule/time_zone", json!("Mars/Olympus")),
            "schedule.time_zone",
        ),
        (
            with("/tasks/0/depends_on", json!(["load"])),
            "tasks[0].depends_on",
        ),
        (
            with("/tasks/1/depends_on", json!(["ghost"])),
            "tasks[1].depends_on[0].task",
        ),
        (with("/tasks/1/name", json!("extract")), "tasks[1].name"),
        (
            with("/tasks/0/run", json!({"kind": "builtin", "job": "rm-rf"})),
            "tasks[0].run.job",
        ),
        (with("/overlap", json!("sometimes")), "overlap"),
        (
            with("/tasks/1/max_runtime", json!("soon")),
            "tasks[1].max_runtime",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = call(&app, &admin, Method::PUT, "/api/processes/p", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = call(
        &app,
        &admin,
        Method::PUT,
        "/api/processes/Bad%20Name",
        Some(definition()),
    )
    .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );
    let response = app
        .client
        .put(app.url("/api/processes/p"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .client
        .put(app.url("/api/processes/p"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("x".repeat(10 * 1024 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = call(
        &app,
        &app.marketing_key,
        Method::PUT,
        "/api/processes/p",
        Some(definition()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = call(&app, &admin, Method::GET, "/api/processes", None).await;
    assert_eq!(list["items"], json!([]), "nothing stored");
}

#[tokio::test]
async fn processes_and_runs_embedded() {
    processes_and_runs(Backend::Embedded).await;
}

#[tokio::test]
async fn processes_and_runs_postgres() {
    processes_and_runs(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_definitions_name_the_field_embedded() {
    bad_definitions_name_the_field(Backend::Embedded).await;
}

#[tokio::test]
async fn bad_definitions_name_the_field_postgres() {
    bad_definitions_name_the_field(Backend::Postgres).await;
}
