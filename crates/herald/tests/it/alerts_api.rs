//! A brand alert created through the API is built and sent on schedule:
//! on the embedded default, and on PostgreSQL (store and bus) when
//! HERALD_TEST_DATABASE_URL names a server.

use std::time::{Duration, Instant};

use herald::config::{BusBackend, Config};
use herald_core::api_key::{ApiKeyName, Scope, Scopes};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp};

const MEMBERS: usize = 120;

fn fast(config: &mut Config) {
    config.audience.poll_interval = Duration::from_millis(100);
    config.audience.batch_size = 25;
    config.mailer.poll_wait = Duration::from_millis(100);
}

/// A fresh PostgreSQL schema for one test, as a store URL; `None` (the
/// test is skipped) when no server is configured, unless CI requires one.
async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("HERALD_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
        return None;
    };
    let schema = format!("herald_it_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

struct Api<'a> {
    app: &'a TestApp,
    key: String,
}

impl Api<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .app
            .client
            .request(method.clone(), format!("{}{path}", self.app.address))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn import(&self, kind: &str, lines: Vec<Value>) -> Value {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let response = self
            .app
            .client
            .post(format!("{}/api/imports/{kind}", self.app.address))
            .bearer_auth(&self.key)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let report: Value = response.json().await.unwrap();
        assert!(status.is_success(), "import {kind}: {status} {report}");
        report
    }
}

/// Loads a catalog and members through the API, creates and schedules an
/// alert, and waits for it to be sent; returns the eligible member count
/// and the final stats.
async fn send_an_alert_through_the_api(app: &TestApp) -> (usize, Value) {
    let (_, token) = app
        .backends
        .store
        .api_keys()
        .create(
            &ApiKeyName::parse("e2e").unwrap(),
            &Scopes::new([Scope::Marketing]).unwrap(),
        )
        .await
        .unwrap();
    let api = Api {
        app,
        key: token.expose().to_owned(),
    };
    for (id, name) in [
        ("acme", "Acme"),
        ("globex", "Globex"),
        ("initech", "Initech"),
    ] {
        api.post("/api/brands", json!({"id": id, "name": name}))
            .await;
    }
    let now = rfc3339_now();
    let mut sale_ids = Vec::new();
    for brand in ["acme", "globex"] {
        let sale = api
            .post(
                "/api/sales",
                json!({"brand_id": brand, "headline": format!("{brand} sale"),
                       "url": format!("https://shop.example.com/{brand}"), "starts_at": now}),
            )
            .await;
        sale_ids.push(sale["id"].as_str().unwrap().to_owned());
    }
    let template = api
        .post(
            "/api/templates",
            json!({"name": "e2e", "subject": "{{ alert.subject }}",
                   "html": "<p>Hi {{ member.first_name | default('there') }}</p>{% for s in sales %}<a href=\"{{ s.url }}\">{{ s.headline }}</a>{% endfor %}<a href=\"{{ unsubscribe_url }}\">unsubscribe</a>"}),
        )
        .await;

    // Member n likes acme (n % 3 == 0), globex (n % 3 == 1) or initech;
    // every 10th has a low score, every 7th unsubscribed, every 11th is
    // suppressed.
    let mut members = Vec::new();
    let mut affinities = Vec::new();
    let mut subscriptions = Vec::new();
    let mut eligible = 0;
    for n in 0..MEMBERS {
        let id = format!("m{n:04}");
        members.push(json!({"id": id, "email": format!("member{n}@example.com"), "first_name": format!("M{n}")}));
        let brand = ["acme", "globex", "initech"][n % 3];
        let score = if n % 10 == 0 { 0.2 } else { 0.9 };
        affinities.push(json!({"member_id": id, "brand_id": brand, "score": score}));
        let unsubscribed = n % 7 == 0;
        if unsubscribed {
            subscriptions
                .push(json!({"member_id": id, "email_type": "brand_alerts", "subscribed": false}));
        }
        let suppressed = n % 11 == 0;
        if suppressed {
            api.post(
                "/api/suppressions",
                json!({"address": format!("member{n}@example.com"), "reason": "hard_bounce"}),
            )
            .await;
        }
        if brand != "initech" && score >= 0.5 && !unsubscribed && !suppressed {
            eligible += 1;
        }
    }
    api.import("members", members).await;
    api.import("affinities", affinities).await;
    api.import("subscriptions", subscriptions).await;

    let alert = api
        .post(
            "/api/brand-alerts",
            json!({"name": "e2e", "sale_ids": sale_ids, "subject": "On sale now",
                   "template_id": template["id"], "send_at": now, "affinity_threshold": 0.5}),
        )
        .await;
    let id = alert["id"].as_str().unwrap().to_owned();
    api.post(&format!("/api/brand-alerts/{id}/schedule"), json!({}))
        .await;

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let alert = api
            .call(
                reqwest::Method::GET,
                &format!("/api/brand-alerts/{id}"),
                None,
            )
            .await;
        if alert["state"] == "sent" {
            break;
        }
        assert!(Instant::now() < deadline, "not sent in time: {alert}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = api
        .call(
            reqwest::Method::GET,
            &format!("/api/brand-alerts/{id}/stats"),
            None,
        )
        .await;
    (eligible, stats)
}

/// Now as RFC 3339, a second back so a strict schedule check accepts it.
fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(1))
        .to_string()
}

fn outbox_count(app: &TestApp) -> usize {
    std::fs::read_dir(app.data_dir.join("outbox"))
        .map(|dir| dir.filter(|e| e.is_ok()).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_created_through_the_api_is_sent_on_the_embedded_default() {
    let app = spawn_app_with(fast).await;
    let (eligible, stats) = send_an_alert_through_the_api(&app).await;
    assert_eq!(stats["audience_size"], eligible, "{stats}");
    assert_eq!(stats["sent"], eligible, "{stats}");
    assert_eq!(outbox_count(&app), eligible);
    one_click_unsubscribe_works_from_a_sent_email(&app).await;
    app.stop().await;
}

/// The app listens on a port picked at start and no public URL is set: the
/// links in the emails must still lead to it, and one-click work there.
async fn one_click_unsubscribe_works_from_a_sent_email(app: &TestApp) {
    let email = std::fs::read_dir(app.data_dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "eml"))
        .expect("an email in the outbox");
    let raw = std::fs::read_to_string(&email).unwrap();
    let header = raw
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .unwrap_or_else(|| panic!("no List-Unsubscribe header in {raw}"));
    let link = header.trim_end().trim_end_matches('>');
    assert!(
        link.starts_with(&format!("{}/unsubscribe/", app.address)),
        "{link} does not lead to {}",
        app.address
    );
    let answer = app
        .client
        .post(link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer
        .text()
        .await
        .unwrap()
        .contains("You are unsubscribed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_created_through_the_api_is_sent_on_postgresql() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let app = spawn_app_with(|config| {
        fast(config);
        config.store.url = url;
        config.bus.backend = BusBackend::Postgres;
    })
    .await;
    assert_eq!(app.backends.store.backend(), "postgres");
    assert_eq!(app.backends.bus.backend(), "postgres");
    let (eligible, stats) = send_an_alert_through_the_api(&app).await;
    assert_eq!(stats["audience_size"], eligible, "{stats}");
    assert_eq!(stats["sent"], eligible, "{stats}");
    assert_eq!(outbox_count(&app), eligible);
    app.stop().await;
}
