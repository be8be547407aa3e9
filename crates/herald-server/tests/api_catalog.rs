//! `/api/brands`, `/api/sales` and `/api/templates` over HTTP: the happy
//! paths, and every kind of bad request getting its documented 4xx.

mod common;

use common::{json_of, spawn_app, TestApp};
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

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.marketing_key)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    json_of(response).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn brand(app: &TestApp, id: &str) {
    let (status, body) = send(
        app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": id, "name": id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn sale(brand_id: &str) -> Value {
    json!({
        "brand_id": brand_id,
        "headline": "Up to 50% off",
        "url": "https://shop.example/sale",
        "starts_at": "2026-12-01T09:00:00Z",
        "ends_at": "2026-12-02T09:00:00Z",
    })
}

fn template(name: &str) -> Value {
    json!({
        "name": name,
        "subject": "{{ member.first_name }}, {{ brands[0].name }} is on sale",
        "html": "<p>{% for sale in sales %}<a href=\"{{ sale.url }}\">{{ sale.headline }}</a>{% endfor %}</p>\n<a href=\"{{ unsubscribe_url }}\">unsubscribe</a>",
        "text": "{% for sale in sales %}{{ sale.headline }}: {{ sale.url }}\n{% endfor %}{{ unsubscribe_url }}",
    })
}

#[tokio::test]
async fn brands_crud_and_duplicates() {
    let app = spawn_app().await;
    let (status, created) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": "nike", "name": "Nike"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["id"], "nike");
    assert!(
        created["created_at"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": "nike", "name": "Again"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "conflict");

    let (status, body) = send(&app, Method::GET, "/api/brands/nike", None).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("Nike"))
    );

    let (status, body) = send(
        &app,
        Method::PATCH,
        "/api/brands/nike",
        Some(json!({"name": "Nike Inc."})),
    )
    .await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("Nike Inc."))
    );

    let (status, _) = send(
        &app,
        Method::PUT,
        "/api/brands/adidas",
        Some(json!({"name": "Adidas"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/brands/adidas",
        Some(json!({"name": "adidas"})),
    )
    .await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("adidas"))
    );

    let (status, page) = send(&app, Method::GET, "/api/brands?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"][0]["id"], "adidas");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page) = send(
        &app,
        Method::GET,
        &format!("/api/brands?limit=1&after={cursor}"),
        None,
    )
    .await;
    assert_eq!(page["items"][0]["id"], "nike");
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, body) = send(&app, Method::DELETE, "/api/brands/nike", None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = send(&app, Method::GET, "/api/brands/nike", None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _) = send(&app, Method::DELETE, "/api/brands/nike", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &app,
        Method::PATCH,
        "/api/brands/nike",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_brand_bodies_are_4xx_and_store_nothing() {
    let app = spawn_app().await;
    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/brands",
        "application/json",
        "{\"id\": ",
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": 5, "name": "x"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("id"))
    );

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": "a b", "name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("brand id"),
        "{body}"
    );

    let (status, body) = send(&app, Method::POST, "/api/brands", Some(json!({"id": "b"}))).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": "b", "name": " "})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/brands",
        Some(json!({"id": "b", "name": "x", "extra": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = raw(&app, Method::POST, "/api/brands", "text/plain", "{}").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let big = json!({"id": "big", "name": "x".repeat(100 * 1024)});
    let (status, body) = send(&app, Method::POST, "/api/brands", Some(big)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let (status, body) = send(
        &app,
        Method::PUT,
        "/api/brands/bad%20id",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("id"))
    );

    let (status, body) = send(&app, Method::GET, "/api/brands?limit=lots", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    let (_, page) = send(&app, Method::GET, "/api/brands", None).await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn keys_and_scopes_are_enforced() {
    let app = spawn_app().await;
    let (status, body) =
        json_of(app.client.get(app.url("/api/brands")).send().await.unwrap()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = send_as(
        &app,
        "hk_0000000000000000_nope",
        Method::GET,
        "/api/brands",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = send_as(&app, &app.read_key, Method::GET, "/api/brands", None).await;
    assert_eq!(status, StatusCode::OK, "reading needs any key");
    let create = json!({"id": "b", "name": "B"});
    let (status, body) = send_as(
        &app,
        &app.read_key,
        Method::POST,
        "/api/brands",
        Some(create.clone()),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    for path in ["/api/sales", "/api/templates"] {
        let (status, _) = send_as(&app, &app.read_key, Method::POST, path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = send_as(
        &app,
        &app.admin_key,
        Method::POST,
        "/api/brands",
        Some(create),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "admin may write");
    let (status, _) = send_as(&app, &app.read_key, Method::DELETE, "/api/brands/b", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn sales_crud_filters_and_references() {
    let app = spawn_app().await;
    brand(&app, "b1").await;
    brand(&app, "b2").await;
    let (status, first) = send(&app, Method::POST, "/api/sales", Some(sale("b1"))).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["starts_at"], "2026-12-01T09:00:00.000Z");
    let id = first["id"].as_str().unwrap().to_owned();
    let (_, second) = send(&app, Method::POST, "/api/sales", Some(sale("b2"))).await;

    let (status, list) = send(&app, Method::GET, "/api/sales?brand_id=b2", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], second["id"]);

    let patch =
        json!({"headline": "Last day", "ends_at": null, "image": "https://cdn.example/a.png"});
    let (status, updated) = send(
        &app,
        Method::PATCH,
        &format!("/api/sales/{id}"),
        Some(patch),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["headline"], "Last day");
    assert_eq!(updated["ends_at"], Value::Null);
    assert_eq!(updated["url"], first["url"]);

    let (status, body) = send(&app, Method::DELETE, "/api/brands/b1", None).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "in_use"));

    let (status, body) = send(&app, Method::POST, "/api/sales", Some(sale("ghost"))).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("brand_id"))
    );

    let mut bad_url = sale("b1");
    bad_url["url"] = json!("javascript:alert(1)");
    let (status, body) = send(&app, Method::POST, "/api/sales", Some(bad_url)).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("url"))
    );

    let mut bad_time = sale("b1");
    bad_time["starts_at"] = json!("tomorrow");
    let (status, body) = send(&app, Method::POST, "/api/sales", Some(bad_time)).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("starts_at"))
    );

    let mut backwards = sale("b1");
    backwards["ends_at"] = json!("2026-11-30T00:00:00Z");
    let (status, body) = send(&app, Method::POST, "/api/sales", Some(backwards)).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("ends_at"))
    );

    let (status, _) = send(&app, Method::GET, "/api/sales/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&app, Method::DELETE, &format!("/api/sales/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = send(&app, Method::GET, "/api/sales", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn templates_are_validated_on_save() {
    let app = spawn_app().await;
    let (status, created) = send(
        &app,
        Method::POST,
        "/api/templates",
        Some(template("weekly")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, body) = send(
        &app,
        Method::POST,
        "/api/templates",
        Some(template("weekly")),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));

    let mut syntax = template("broken");
    syntax["html"] = json!("<p>fine</p>\n<p>{% for sale in sales %}</p>");
    let (status, body) = send(&app, Method::POST, "/api/templates", Some(syntax)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_template"),
        "{body}"
    );
    assert_eq!(body["error"]["field"], "html");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );

    let mut unknown = template("unknown");
    unknown["subject"] = json!("Hi {{ member.nickname }}");
    let (status, body) = send(&app, Method::POST, "/api/templates", Some(unknown)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "subject");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nickname"),
        "{body}"
    );

    let (status, body) = send(
        &app,
        Method::PATCH,
        &format!("/api/templates/{id}"),
        Some(json!({"text": "{{ oops"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("text"))
    );
    let (_, unchanged) = send(&app, Method::GET, &format!("/api/templates/{id}"), None).await;
    assert_eq!(unchanged["text"], created["text"]);

    let (status, updated) = send(
        &app,
        Method::PATCH,
        &format!("/api/templates/{id}"),
        Some(json!({"text": null, "name": "weekly v2"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["text"].clone(), updated["name"].clone()),
        (Value::Null, json!("weekly v2"))
    );

    let (status, list) = send(&app, Method::GET, "/api/templates", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (status, _) = send(
        &app,
        Method::PATCH,
        "/api/templates/nope",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&app, Method::DELETE, &format!("/api/templates/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, Method::GET, &format!("/api/templates/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn openapi_documents_every_catalog_route() {
    let app = spawn_app().await;
    let (status, doc) = json_of(
        app.client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (path, methods) in [
        ("/api/brands", &["get", "post"][..]),
        ("/api/brands/{id}", &["get", "put", "patch", "delete"]),
        ("/api/sales", &["get", "post"]),
        ("/api/sales/{id}", &["get", "patch", "delete"]),
        ("/api/templates", &["get", "post"]),
        ("/api/templates/{id}", &["get", "patch", "delete"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
    assert!(doc["components"]["schemas"]["CreateSale"].is_object());
}
