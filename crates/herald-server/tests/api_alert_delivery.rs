//! Preview, test send and the unsubscribe link.

mod common;

use common::{json_of, spawn_app, TestApp};
use herald_mail::UnsubscribeSigner;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A brand, a sale, a template, one member with an affinity, and a draft
/// alert; returns the alert id.
async fn seed(app: &TestApp) -> String {
    let (status, _) = app
        .post_json("/api/brands", &json!({"id": "acme", "name": "Acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, sale) = app
        .post_json(
            "/api/sales",
            &json!({"brand_id": "acme", "headline": "Acme: half price",
                    "url": "https://shop.example.com/acme", "starts_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    let (_, template) = app
        .post_json(
            "/api/templates",
            &json!({"name": "t", "subject": "{{ alert.subject }}",
                    "html": "<style>p{color:red}</style><p>Hi {{ member.first_name | default('you') }}</p>{% for s in sales %}{{ s.headline }}{% endfor %}"}),
        )
        .await;
    let response = app
        .request(Method::PUT, "/api/members/m1")
        .json(&json!({"email": "ada@example.com", "first_name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        json_of(response).await
    );
    let response = app
        .request(Method::PUT, "/api/members/m1/affinities/acme")
        .json(&json!({"score": 0.9}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        json_of(response).await
    );
    let (status, alert) = app
        .post_json(
            "/api/brand-alerts",
            &json!({"name": "a", "sale_ids": [sale["id"]], "subject": "Sale!",
                    "template_id": template["id"], "send_at": "2030-01-01T00:00:00Z",
                    "affinity_threshold": 0.5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alert}");
    alert["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn preview_renders_one_members_email_with_inlined_css() {
    let app = spawn_app().await;
    let id = seed(&app).await;
    let response = app
        .client
        .get(app.url(&format!("/api/brand-alerts/{id}/preview?member=m1")))
        .bearer_auth(&app.read_key)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subject"], "Sale!");
    let html = body["html"].as_str().unwrap();
    assert!(
        html.contains("Hi Ada") && html.contains("Acme: half price"),
        "{html}"
    );
    assert!(
        html.contains("style=\"color: red;\""),
        "CSS inlined: {html}"
    );
    assert!(body["text"].as_str().unwrap().contains("Hi Ada"));

    let (status, body) = app
        .get_json(&format!("/api/brand-alerts/{id}/preview"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "member");
    let (status, _) = app
        .get_json(&format!("/api/brand-alerts/{id}/preview?member=nobody"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get_json("/api/brand-alerts/nope/preview?member=m1")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = app
        .client
        .get(app.url(&format!("/api/brand-alerts/{id}/preview?member=m1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn test_send_goes_through_the_transport_and_leaves_no_send_log() {
    let app = spawn_app().await;
    let id = seed(&app).await;
    let (status, body) = app
        .post_json(
            &format!("/api/brand-alerts/{id}/test-send"),
            &json!({"addresses": ["qa@example.com"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["sent"], true, "{body}");
    let written = std::fs::read_dir(app.data.path().join("outbox"))
        .unwrap()
        .count();
    assert_eq!(written, 1, "one email in the outbox");
    let stats = app.store.brand_alerts().stats(&id).await.unwrap();
    assert_eq!(
        (stats.sent, stats.enqueued),
        (0, 0),
        "test sends are not counted"
    );

    let (status, body) = app
        .post_json(
            &format!("/api/brand-alerts/{id}/test-send"),
            &json!({"addresses": []}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "addresses");
    let (status, _) = app
        .post_json(
            &format!("/api/brand-alerts/{id}/test-send"),
            &json!({"adresses": ["a@b.c"]}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field refused"
    );
    let response = app
        .client
        .post(app.url(&format!("/api/brand-alerts/{id}/test-send")))
        .bearer_auth(&app.read_key)
        .json(&json!({"addresses": ["qa@example.com"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a read-only key cannot send"
    );
}

#[tokio::test]
async fn the_unsubscribe_link_asks_first_then_records_the_opt_out() {
    let app = spawn_app().await;
    let id = seed(&app).await;
    let token = UnsubscribeSigner::new(&[7u8; 32])
        .unwrap()
        .token(&id, "m1")
        .unwrap();

    let page = app
        .client
        .get(app.url(&format!("/unsubscribe/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    let subscriptions = app.store.members().subscriptions("m1").await.unwrap();
    assert!(subscriptions.is_empty(), "a GET changes nothing");

    // RFC 8058 one-click: a POST with this exact body.
    let response = app
        .client
        .post(app.url(&format!("/unsubscribe/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let subscriptions = app.store.members().subscriptions("m1").await.unwrap();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0].email_type, "brand_alerts");
    assert!(!subscriptions[0].subscribed);

    let forged = UnsubscribeSigner::new(&[8u8; 32])
        .unwrap()
        .token(&id, "m1")
        .unwrap();
    for bad in [forged.as_str(), "garbage", &token[..token.len() - 3]] {
        let response = app
            .client
            .post(app.url(&format!("/unsubscribe/{bad}")))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_token");
    }
}
