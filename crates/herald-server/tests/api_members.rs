//! `/api/members` and its affinities and subscriptions, `/api/suppressions`,
//! `/api/cadence-policy` and the streamed `/api/imports/*` over HTTP.

mod common;

use axum::Extension;
use common::{json_of, spawn_app, spawn_app_with, TestApp, LIMITS};
use herald_server::api::members::ImportLimits;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    send_as(app, &app.marketing_key, method, path, body).await
}

async fn send_as(
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

async fn import(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.marketing_key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_default()
}

async fn brand(app: &TestApp, id: &str) {
    let (status, _) = send(
        app,
        Method::PUT,
        &format!("/api/brands/{id}"),
        Some(json!({"name": id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn member(app: &TestApp, id: &str) {
    let body = json!({"email": format!("{id}@example.com")});
    let (status, body) = send(app, Method::PUT, &format!("/api/members/{id}"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn members_are_put_patched_listed_and_deleted() {
    let app = spawn_app().await;
    let body = json!({
        "email": "Ann@Example.com", "name": "Ann Lee", "first_name": "Ann",
        "locale": "en-GB", "time_zone": "Europe/London", "customer_id": "c-1",
    });
    let (status, created) = send(&app, Method::PUT, "/api/members/m1", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["email"], "Ann@Example.com");
    let (status, _) = send(&app, Method::PUT, "/api/members/m1", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "a second PUT replaces");

    let (status, patched) = send(
        &app,
        Method::PATCH,
        "/api/members/m1",
        Some(json!({"status": "inactive", "locale": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (patched["status"].as_str(), patched["locale"].clone()),
        (Some("inactive"), Value::Null)
    );
    assert_eq!(patched["first_name"], "Ann");

    member(&app, "m2").await;
    let (_, page) = send(
        &app,
        Method::GET,
        "/api/members?email=ANN@example.com",
        None,
    )
    .await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1"]);
    let (_, page) = send(&app, Method::GET, "/api/members?limit=1", None).await;
    assert_eq!(page["items"][0]["id"], "m1");
    assert!(page["next_cursor"].is_string());

    let (status, _) = send(&app, Method::DELETE, "/api/members/m1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, path) in [
        (Method::GET, "/api/members/m1"),
        (Method::DELETE, "/api/members/m1"),
        (Method::GET, "/api/members/m1/affinities"),
        (Method::GET, "/api/members/m1/subscriptions"),
    ] {
        let (status, body) = send(&app, method.clone(), path, None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {path}"
        );
    }
    let (status, _) = send(
        &app,
        Method::PATCH,
        "/api/members/m1",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_member_bodies_name_the_field() {
    let app = spawn_app().await;
    for (body, expected) in [
        (json!({"email": "not an address"}), "email"),
        (json!({}), "email"),
        (json!({"email": 7}), "email"),
        (
            json!({"email": "a@example.com", "time_zone": "Mars/Base"}),
            "time_zone",
        ),
        (
            json!({"email": "a@example.com", "locale": "en_GB"}),
            "locale",
        ),
        (
            json!({"email": "a@example.com", "status": "gone"}),
            "status",
        ),
        (json!({"email": "a@example.com", "name": ""}), "name"),
    ] {
        let (status, response) =
            send(&app, Method::PUT, "/api/members/m1", Some(body.clone())).await;
        assert_eq!(
            (status, field(&response)),
            (StatusCode::UNPROCESSABLE_ENTITY, expected),
            "{body}: {response}"
        );
    }
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/a%20b",
        Some(json!({"email": "a@example.com"})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "id")
    );
    let (_, page) = send(&app, Method::GET, "/api/members", None).await;
    assert_eq!(page["items"], json!([]), "nothing partial stored");
}

#[tokio::test]
async fn affinities_and_subscriptions() {
    let app = spawn_app().await;
    brand(&app, "b1").await;
    member(&app, "m1").await;
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/m1/affinities/b1",
        Some(json!({"score": 0.8})),
    )
    .await;
    assert_eq!(
        (status, body["score"].as_f64()),
        (StatusCode::OK, Some(0.8)),
        "{body}"
    );
    let (_, list) = send(&app, Method::GET, "/api/members/m1/affinities", None).await;
    assert_eq!(list["items"][0]["brand_id"], "b1");

    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/m1/affinities/b1",
        Some(json!({"score": 1.2})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "score")
    );
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/m1/affinities/nope",
        Some(json!({"score": 0.5})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "brand_id")
    );
    let (status, _) = send(
        &app,
        Method::PUT,
        "/api/members/ghost/affinities/b1",
        Some(json!({"score": 0.5})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&app, Method::DELETE, "/api/members/m1/affinities/b1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, Method::DELETE, "/api/members/m1/affinities/b1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, subs) = send(&app, Method::GET, "/api/members/m1/subscriptions", None).await;
    assert_eq!(subs["items"], json!([]), "no row: subscribed");
    let (status, sub) = send(
        &app,
        Method::PUT,
        "/api/members/m1/subscriptions/brand_alerts",
        Some(json!({"subscribed": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sub}");
    assert_eq!(
        (sub["subscribed"].clone(), sub["source"].clone()),
        (json!(false), json!("api"))
    );
    let (_, subs) = send(&app, Method::GET, "/api/members/m1/subscriptions", None).await;
    assert_eq!(subs["items"][0]["email_type"], "brand_alerts");
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/m1/subscriptions/Brand-Alerts",
        Some(json!({"subscribed": true})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "email_type")
    );
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/members/m1/subscriptions/brand_alerts",
        Some(json!({"subscribed": "no"})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "subscribed")
    );
    let (status, _) = send(
        &app,
        Method::PUT,
        "/api/members/ghost/subscriptions/brand_alerts",
        Some(json!({"subscribed": false})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn suppressions_and_cadence_policy() {
    let app = spawn_app().await;
    let add = json!({"address": "Ann@Example.com", "reason": "hard_bounce", "detail": "550"});
    let (status, first) = send(&app, Method::POST, "/api/suppressions", Some(add.clone())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (first["address"].as_str(), first["source"].as_str()),
        (Some("ann@example.com"), Some("api"))
    );
    let (status, again) = send(&app, Method::POST, "/api/suppressions", Some(add)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["since"], first["since"],
        "a repeat keeps the first since"
    );

    let (status, got) = send(&app, Method::GET, "/api/suppressions/ANN@example.com", None).await;
    assert_eq!(
        (status, got["reason"].as_str()),
        (StatusCode::OK, Some("hard_bounce"))
    );
    let (_, list) = send(&app, Method::GET, "/api/suppressions", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/suppressions",
        Some(json!({"address": "x", "reason": "manual"})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "address")
    );
    let (status, body) = send(
        &app,
        Method::POST,
        "/api/suppressions",
        Some(json!({"address": "b@example.com", "reason": "bored"})),
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "reason")
    );

    let (status, _) = send(
        &app,
        Method::DELETE,
        "/api/suppressions/ann@example.com",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, Method::GET, "/api/suppressions/ann@example.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &app,
        Method::DELETE,
        "/api/suppressions/ann@example.com",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, policy) = send_as(
        &app,
        &app.read_key,
        Method::GET,
        "/api/cadence-policy",
        None,
    )
    .await;
    assert_eq!(
        (status, policy),
        (
            StatusCode::OK,
            json!({"max_alerts": 3, "window_secs": 604800})
        )
    );
    let (status, _) = send_as(
        &app,
        &app.read_key,
        Method::PUT,
        "/api/cadence-policy",
        Some(json!({"max_alerts": 5, "window_secs": 86400})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, policy) = send(
        &app,
        Method::PUT,
        "/api/cadence-policy",
        Some(json!({"max_alerts": 5, "window_secs": 86400})),
    )
    .await;
    assert_eq!(
        (status, policy),
        (
            StatusCode::OK,
            json!({"max_alerts": 5, "window_secs": 86400})
        )
    );
    for (bad, expected) in [
        (json!({"max_alerts": 0, "window_secs": 60}), "max_alerts"),
        (json!({"max_alerts": 1, "window_secs": 0}), "window_secs"),
        (json!({"max_alerts": -1, "window_secs": 60}), "max_alerts"),
        (json!({"max_alerts": 1}), "window_secs"),
    ] {
        let (status, body) =
            send(&app, Method::PUT, "/api/cadence-policy", Some(bad.clone())).await;
        assert_eq!(
            (status, field(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, expected),
            "{bad}"
        );
    }
    let (_, policy) = send(&app, Method::GET, "/api/cadence-policy", None).await;
    assert_eq!(policy["max_alerts"], 5);
}

#[tokio::test]
async fn imports_stream_ndjson_and_csv() {
    let app = spawn_app().await;
    brand(&app, "b1").await;
    // Larger than the JSON body limit: imports have their own.
    let mut members = String::from("id,email,name\n");
    let mut count = 0;
    while members.len() <= LIMITS.max_body_bytes * 2 {
        members.push_str(&format!(
            "m{count:05},m{count}@example.com,Member {count}\n"
        ));
        count += 1;
    }
    let (status, report) = import(&app, "/api/imports/members", "text/csv", members).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["rows"].as_u64(), report["applied"].as_u64()),
        (Some(count), Some(count))
    );
    assert_eq!(report["invalid"], json!([]));

    let affinities = "{\"member_id\":\"m00000\",\"brand_id\":\"b1\",\"score\":0.9}\n\
                      {\"member_id\":\"m00001\",\"brand_id\":\"b1\",\"score\":0.4}\n";
    let (status, report) = import(
        &app,
        "/api/imports/affinities",
        "application/x-ndjson; charset=utf-8",
        affinities,
    )
    .await;
    assert_eq!(
        (status, report["applied"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{report}"
    );
    let (_, list) = send(&app, Method::GET, "/api/members/m00000/affinities", None).await;
    assert_eq!(list["items"][0]["score"], 0.9);

    let subs = "member_id,subscribed\nm00000,false\n";
    let (status, _) = import(&app, "/api/imports/subscriptions", "text/csv", subs).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = send(&app, Method::GET, "/api/members/m00000/subscriptions", None).await;
    assert_eq!(list["items"][0]["source"], "import");
}

#[tokio::test]
async fn bad_import_lines_store_nothing_unless_skipped() {
    let app = spawn_app().await;
    let body = "id,email\nm1,a@example.com\nm2,broken\nm3,c@example.com\n";
    let (status, rejected) = import(&app, "/api/imports/members", "text/csv", body).await;
    assert_eq!(
        (status, code(&rejected)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_lines"),
        "{rejected}"
    );
    assert_eq!(rejected["error"]["field"], "line 3");
    assert_eq!(
        rejected["report"]["invalid"][0],
        json!({"line": 3, "field": "email", "message": rejected["report"]["invalid"][0]["message"]})
    );
    assert_eq!(rejected["report"]["applied"], 0);
    let (_, page) = send(&app, Method::GET, "/api/members", None).await;
    assert_eq!(page["items"], json!([]));

    let (status, report) = import(
        &app,
        "/api/imports/members?skip_invalid=true",
        "text/csv",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            report["applied"].as_u64(),
            report["invalid"][0]["line"].as_u64()
        ),
        (Some(2), Some(3))
    );

    let (status, body) = import(
        &app,
        "/api/imports/members",
        "text/csv",
        "id,emial\nm1,a@example.com\n",
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_header")
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("emial"));

    let (status, body) = import(&app, "/api/imports/members", "application/json", "{}").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (status, _) = import(&app, "/api/imports/brands", "text/csv", "id\n").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = import(
        &app,
        "/api/imports/members?skip_invalid=maybe",
        "text/csv",
        "id,email\n",
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    let response = app
        .client
        .post(app.url("/api/imports/members"))
        .bearer_auth(&app.read_key)
        .header("content-type", "text/csv")
        .body("id,email\nm9,z@example.com\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.store.members().get("m9").await.unwrap(), None);
}

#[tokio::test]
async fn import_bodies_over_the_limit_are_refused_whole() {
    let limits = ImportLimits {
        max_bytes: 10_000,
        spool_dir: None,
    };
    let app = spawn_app_with(|router| router.layer(Extension(limits))).await;
    let mut body = String::from("id,email\n");
    for i in 0..1000 {
        body.push_str(&format!("m{i},m{i}@example.com\n"));
    }
    assert!(body.len() > 10_000);
    let (status, response) = import(
        &app,
        "/api/imports/members?skip_invalid=true",
        "text/csv",
        body,
    )
    .await;
    assert_eq!(
        (status, code(&response)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{response}"
    );
    let (_, page) = send(&app, Method::GET, "/api/members", None).await;
    assert_eq!(page["items"], json!([]), "nothing stored");

    let (status, _) = import(
        &app,
        "/api/imports/members",
        "text/csv",
        "id,email\nm1,a@example.com\n",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a body under the limit passes");
}

#[tokio::test]
async fn openapi_documents_every_audience_route() {
    let app = spawn_app().await;
    let (_, doc) = json_of(
        app.client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for (path, methods) in [
        ("/api/members", &["get"][..]),
        ("/api/members/{id}", &["get", "put", "patch", "delete"]),
        ("/api/members/{id}/affinities", &["get"]),
        (
            "/api/members/{id}/affinities/{brand_id}",
            &["put", "delete"],
        ),
        ("/api/members/{id}/subscriptions", &["get"]),
        ("/api/members/{id}/subscriptions/{email_type}", &["put"]),
        ("/api/suppressions", &["get", "post"]),
        ("/api/suppressions/{address}", &["get", "delete"]),
        ("/api/cadence-policy", &["get", "put"]),
        ("/api/imports/{kind}", &["post"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
    let content = &doc["paths"]["/api/imports/{kind}"]["post"]["requestBody"]["content"];
    assert!(
        content["text/csv"].is_object() && content["application/x-ndjson"].is_object(),
        "{content}"
    );
}
