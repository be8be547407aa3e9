//! The brand-alert API over a real socket: the lifecycle, drafts and their
//! versions, listing, statistics, and every kind of bad request.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};
use common::{json_of, spawn_app, TestApp};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

const HOUR: Duration = Duration::from_secs(60 * 60);

/// A template `t1` and sales `s1`..`s3` of brands `b1`..`b3`, written
/// behind the API (the catalog endpoints have their own tests).
async fn seed_catalog(app: &TestApp) {
    let mut sql = String::from(
        "INSERT INTO templates (id, name, subject, html, text, created_at, updated_at) \
         VALUES ('t1', 'basic', 'Hi', '<p>hi</p>', NULL, 0, 0);",
    );
    for i in 1..=3 {
        sql.push_str(&format!(
            "INSERT INTO brands (id, name, created_at, updated_at) VALUES ('b{i}', 'Brand {i}', 0, 0); \
             INSERT INTO sales (id, brand_id, headline, url, image, starts_at, ends_at, created_at, updated_at) \
             VALUES ('s{i}', 'b{i}', 'Sale {i}', 'https://shop.example/{i}', NULL, 0, NULL, 0, 0);"
        ));
    }
    sqlx_exec(app, &sql).await;
}

async fn sqlx_exec(app: &TestApp, sql: &str) {
    let db = app.store.sqlite().expect("the test app runs on SQLite");
    sqlx::raw_sql(sql)
        .execute(&db.writer)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

/// RFC 3339 for now plus `ahead` (minus when `ahead` is negative).
fn time_from_now(ahead_secs: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let millis = i64::try_from(now.as_millis()).unwrap() + ahead_secs * 1000;
    DateTime::from_timestamp_millis(millis)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn new_alert() -> Value {
    json!({
        "name": "Spring brands",
        "sale_ids": ["s2", "s1"],
        "subject": "Your brands are on sale",
        "template_id": "t1",
        "send_at": time_from_now(HOUR.as_secs() as i64 * 24),
        "affinity_threshold": 0.6,
    })
}

async fn create(app: &TestApp, body: &Value) -> Value {
    let (status, alert) = app.post_json("/api/brand-alerts", body).await;
    assert_eq!(status, StatusCode::CREATED, "{alert}");
    alert
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    json_of(request.send().await.unwrap()).await
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn an_alert_goes_through_its_lifecycle() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let body = json!({
        "name": "Spring brands",
        "sale_ids": ["s2", "s1"],
        "subject": "Your brands are on sale",
        "template_id": "t1",
        "send_at": "2099-05-01T14:00:00+02:00",
        "affinity_threshold": 0.6,
        "transport": "outbox",
    });
    let response = app
        .request(Method::POST, "/api/brand-alerts")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::ETAG], "\"1\"");
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, alert) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{alert}");
    let id = alert["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/brand-alerts/{id}"));
    assert_eq!(alert["state"], "draft");
    assert_eq!(alert["version"], 1);
    assert_eq!(alert["sale_ids"], json!(["s2", "s1"]));
    assert_eq!(
        alert["send_at"], "2099-05-01T12:00:00Z",
        "offsets come back as UTC"
    );
    assert_eq!(alert["affinity_threshold"], 0.6);
    assert_eq!(alert["transport"], "outbox");
    assert_eq!(alert["build"]["enqueued"], 0);
    assert_eq!(alert["completed_at"], Value::Null);

    let (status, read) = app.get_json(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, alert);
    let (status, page) = app.get_json("/api/brand-alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([alert]));
    assert_eq!(page["next_cursor"], Value::Null);

    let response = app
        .request(Method::PATCH, &location)
        .header(header::IF_MATCH, "\"1\"")
        .json(&json!({"name": "Spring brands, take two", "sale_ids": ["s3"], "transport": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::ETAG], "\"2\"");
    let (status, edited) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["name"], "Spring brands, take two");
    assert_eq!(edited["sale_ids"], json!(["s3"]));
    assert_eq!(edited["transport"], Value::Null);
    assert_eq!(edited["subject"], alert["subject"], "fields left out stay");

    for (action, state) in [
        ("schedule", "scheduled"),
        ("unschedule", "draft"),
        ("schedule", "scheduled"),
        ("cancel", "cancelled"),
    ] {
        let (status, moved) = app
            .post_json(&format!("{location}/{action}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {moved}");
        assert_eq!(moved["state"], state, "{action}");
    }
    let (_, cancelled) = app.get_json(&location).await;
    assert_eq!(cancelled["version"], 6);
    assert!(cancelled["completed_at"].is_string());

    let (status, stats) = app.get_json(&format!("{location}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats,
        json!({
            "audience_size": null, "enqueued": 0, "excluded_unsubscribed": 0,
            "excluded_suppressed": 0, "excluded_cadence": 0, "queued": 0, "sent": 0,
            "failed": 0, "skipped": 0, "possible_duplicates": 0, "events": {}
        })
    );
}

#[tokio::test]
async fn drafts_are_deleted_and_other_alerts_are_not() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let alert = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());
    let (status, body) = send(&app, Method::DELETE, &path, Some(&app.marketing_key), None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = app.get_json(&path).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = send(&app, Method::DELETE, &path, Some(&app.marketing_key), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let scheduled = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", scheduled["id"].as_str().unwrap());
    app.post_json(&format!("{path}/schedule"), &json!({})).await;
    let (status, body) = send(&app, Method::DELETE, &path, Some(&app.marketing_key), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("scheduled") && message.contains("cancel"),
        "{message}"
    );
    assert_eq!(app.get_json(&path).await.0, StatusCode::OK);
}

#[tokio::test]
async fn illegal_moves_are_409_naming_the_state() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let alert = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());

    let (status, body) = app
        .post_json(&format!("{path}/unschedule"), &json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        body["error"]["message"],
        "cannot unschedule a brand alert that is a draft"
    );

    app.post_json(&format!("{path}/schedule"), &json!({})).await;
    let (status, body) = app.post_json(&format!("{path}/schedule"), &json!({})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        body["error"]["message"],
        "cannot schedule a brand alert that is scheduled"
    );
    let (status, body) = send(
        &app,
        Method::PATCH,
        &path,
        Some(&app.marketing_key),
        Some(&json!({"name": "late edit"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        body["error"]["message"],
        "cannot edit a brand alert that is scheduled"
    );

    app.post_json(&format!("{path}/cancel"), &json!({})).await;
    for action in ["cancel", "schedule", "unschedule"] {
        let (status, body) = app.post_json(&format!("{path}/{action}"), &json!({})).await;
        assert_error(status, &body, StatusCode::CONFLICT, "conflict");
        assert_eq!(
            body["error"]["message"],
            format!("cannot {action} a brand alert that was cancelled")
        );
    }
    let (_, unchanged) = app.get_json(&path).await;
    assert_eq!(unchanged["state"], "cancelled");
}

#[tokio::test]
async fn stale_versions_are_refused_with_412() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let alert = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());
    let patch = |if_match: &str, name: &str| {
        app.request(Method::PATCH, &path)
            .header(header::IF_MATCH, if_match)
            .json(&json!({ "name": name }))
            .send()
    };
    let (status, _) = json_of(patch("\"1\"", "first").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = json_of(patch("\"1\"", "second").await.unwrap()).await;
    assert_error(
        status,
        &body,
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    );
    let (status, body) = json_of(patch("not-a-version", "third").await.unwrap()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_if_match");
    // Any of several tags, a weak one, or `*` will do.
    let (status, body) = json_of(patch("\"7\", W/\"2\"", "fourth").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = json_of(patch("*", "fifth").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, read) = app.get_json(&path).await;
    assert_eq!(
        (read["name"].as_str(), read["version"].as_i64()),
        (Some("fifth"), Some(4))
    );
}

#[tokio::test]
async fn scheduling_refuses_a_send_time_long_past() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let mut body = new_alert();
    body["send_at"] = json!(time_from_now(-2 * 60 * 60));
    let alert = create(&app, &body).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());
    let (status, body) = app.post_json(&format!("{path}/schedule"), &json!({})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(body["error"]["field"], "send_at");
    assert_eq!(app.get_json(&path).await.1["state"], "draft");

    // Just now is fine: "send at once" despite a little clock skew.
    let (status, _) = send(
        &app,
        Method::PATCH,
        &path,
        Some(&app.marketing_key),
        Some(&json!({"send_at": time_from_now(-5)})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.post_json(&format!("{path}/schedule"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "scheduled");
}

#[tokio::test]
async fn bad_bodies_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let raw = |body: String| {
        app.request(Method::POST, "/api/brand-alerts")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    let (status, body) = json_of(raw("{\"name\": ".into()).await.unwrap()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "malformed_json");
    let (status, body) = json_of(raw("x".repeat(80 * 1024)).await.unwrap()).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let response = app
        .request(Method::POST, "/api/brand-alerts")
        .body(new_alert().to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let with = |field: &str, value: Value| {
        let mut body = new_alert();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = new_alert();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases = [
        (
            with("affinity_threshold", json!("high")),
            "affinity_threshold",
        ),
        (with("sale_ids", json!("s1")), "sale_ids"),
        (with("sale_ids", json!(["s1", 2])), "sale_ids[1]"),
        (without("template_id"), "template_id"),
        (without("send_at"), "send_at"),
        (with("send_at", json!("tomorrow at noon")), "send_at"),
        (with("template_id", json!("t-missing")), "template_id"),
        (with("sale_ids", json!(["s1", "s-missing"])), "sale_ids"),
        (with("sale_ids", json!([])), "sale_ids"),
        (with("affinity_threshold", json!(1.5)), "affinity_threshold"),
        (with("name", json!("")), "name"),
        (with("colour", json!("red")), "colour"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post_json("/api/brand-alerts", &body).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        );
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (_, answer) = app
        .post_json(
            "/api/brand-alerts",
            &with("sale_ids", json!(["s1", "s-missing"])),
        )
        .await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sale_ids[1]") && message.contains("s-missing"),
        "{message}"
    );

    let (status, page) = app.get_json("/api/brand-alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([]), "nothing stored");

    let alert = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());
    for (patch, field) in [
        (json!({"affinity_threshold": "x"}), "affinity_threshold"),
        (json!({"sale_ids": ["nope"]}), "sale_ids"),
        (json!({"send_at": "2024-13-01T00:00:00Z"}), "send_at"),
        (json!({"state": "sent"}), "state"),
    ] {
        let (status, answer) = send(
            &app,
            Method::PATCH,
            &path,
            Some(&app.marketing_key),
            Some(&patch),
        )
        .await;
        assert_error(
            status,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        );
        assert_eq!(answer["error"]["field"], field, "{patch}: {answer}");
    }
    assert_eq!(
        app.get_json(&path).await.1,
        alert,
        "a refused edit changes nothing"
    );
}

#[tokio::test]
async fn keys_and_scopes_are_checked() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let alert = create(&app, &new_alert()).await;
    let path = format!("/api/brand-alerts/{}", alert["id"].as_str().unwrap());

    for key in [None, Some("hk_wrong_key"), Some("")] {
        for (method, target) in [
            (Method::GET, "/api/brand-alerts"),
            (Method::GET, path.as_str()),
        ] {
            let response = {
                let mut request = app.client.request(method.clone(), app.url(target));
                if let Some(key) = key {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
                }
                request.send().await.unwrap()
            };
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let (status, body) = json_of(response).await;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brand-alerts",
        None,
        Some(&new_alert()),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // A read-only key reads everything and changes nothing.
    let reader = Some(app.read_key.as_str());
    assert_eq!(
        send(&app, Method::GET, "/api/brand-alerts", reader, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, Method::GET, &path, reader, None).await.0,
        StatusCode::OK
    );
    let stats = format!("{path}/stats");
    assert_eq!(
        send(&app, Method::GET, &stats, reader, None).await.0,
        StatusCode::OK
    );
    let writes = [
        (
            Method::POST,
            "/api/brand-alerts".to_owned(),
            Some(new_alert()),
        ),
        (Method::PATCH, path.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, path.clone(), None),
        (Method::POST, format!("{path}/schedule"), None),
        (Method::POST, format!("{path}/unschedule"), None),
        (Method::POST, format!("{path}/cancel"), None),
    ];
    for (method, target, body) in writes {
        let (status, answer) = send(&app, method.clone(), &target, reader, body.as_ref()).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("marketing"),
            "{method} {target}: {answer}"
        );
    }
    let (_, unchanged) = app.get_json(&path).await;
    assert_eq!(unchanged, alert);
    let (status, page) = app.get_json("/api/brand-alerts").await;
    assert_eq!(
        (status, page["items"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );

    // An admin key may do what a marketing key may.
    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brand-alerts",
        Some(&app.admin_key),
        Some(&new_alert()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let path = "/api/brand-alerts/0190f0c0-0000-7000-8000-000000000000";
    let key = Some(app.marketing_key.as_str());
    let calls = [
        (Method::GET, path.to_owned(), None),
        (Method::GET, format!("{path}/stats"), None),
        (Method::PATCH, path.to_owned(), Some(json!({"name": "x"}))),
        (Method::DELETE, path.to_owned(), None),
        (Method::POST, format!("{path}/schedule"), None),
        (Method::POST, format!("{path}/unschedule"), None),
        (Method::POST, format!("{path}/cancel"), None),
    ];
    for (method, target, body) in calls {
        let (status, answer) = send(&app, method.clone(), &target, key, body.as_ref()).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("brand alert"),
            "{method} {target}: {answer}"
        );
    }
}

#[tokio::test]
async fn lists_filter_and_page() {
    let app = spawn_app().await;
    seed_catalog(&app).await;
    let mut ids = Vec::new();
    for day in 1..=5 {
        let mut body = new_alert();
        body["send_at"] = json!(format!("2099-01-0{day}T00:00:00Z"));
        ids.push(create(&app, &body).await["id"].as_str().unwrap().to_owned());
    }
    app.post_json(
        &format!("/api/brand-alerts/{}/schedule", ids[1]),
        &json!({}),
    )
    .await;

    let mut seen = Vec::new();
    let mut path = "/api/brand-alerts?limit=2".to_owned();
    loop {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/brand-alerts?limit=2&cursor={}", urlencode(cursor));
            }
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let (_, page) = app.get_json("/api/brand-alerts?state=scheduled").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], ids[1]);
    let (_, page) = app
        .get_json(
            "/api/brand-alerts?send_from=2099-01-02T00:00:00Z&send_until=2099-01-04T00:00:00Z",
        )
        .await;
    let window: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(window, vec![ids[2].as_str(), ids[1].as_str()]);

    for (query, status, code, field) in [
        ("state=gone", StatusCode::BAD_REQUEST, "invalid_query", None),
        ("limit=-1", StatusCode::BAD_REQUEST, "invalid_query", None),
        ("colour=red", StatusCode::BAD_REQUEST, "invalid_query", None),
        (
            "send_from=yesterday",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("send_from"),
        ),
        (
            "cursor=garbage",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("cursor"),
        ),
    ] {
        let (got, body) = app.get_json(&format!("/api/brand-alerts?{query}")).await;
        assert_error(got, &body, status, code);
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "{query}");
        }
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    let (status, doc) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/api/brand-alerts", &["get", "post"][..]),
        ("/api/brand-alerts/{id}", &["get", "patch", "delete"][..]),
        ("/api/brand-alerts/{id}/schedule", &["post"][..]),
        ("/api/brand-alerts/{id}/unschedule", &["post"][..]),
        ("/api/brand-alerts/{id}/cancel", &["post"][..]),
        ("/api/brand-alerts/{id}/stats", &["get"][..]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "CreateBrandAlert",
        "UpdateBrandAlert",
        "BrandAlertView",
        "BrandAlertPage",
        "BrandAlertStats",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let states = &schemas["BrandAlertView"]["properties"]["state"]["enum"];
    assert_eq!(
        states,
        &json!([
            "draft",
            "scheduled",
            "building",
            "sending",
            "sent",
            "cancelled",
            "failed"
        ])
    );
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
