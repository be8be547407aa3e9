//! The UI's router against a real SQLite store and embedded bus, without a
//! network: signing in, the session cookie, CSRF, roles, lock-out, and
//! creating an alert through the form.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use herald_alerts::{Composer, MailerSettings, Transports};
use herald_bus::{Bus, EmbeddedBus};
use herald_core::catalog::{BrandId, EmailAddress, HttpUrl};
use herald_core::{Clock, SystemClock};
use herald_server::AppState;
use herald_store::brand_alerts::BrandAlertFilter;
use herald_store::catalog::{NewSale, NewTemplate};
use herald_store::email_events::EventKey;
use herald_store::users::{LockoutPolicy, NewUser, UserRole};
use herald_store::Store;
use herald_web::{SecureCookies, WebSettings, WebState};
use http_body_util::BodyExt;
use tower::ServiceExt;

const PASSWORD: &str = "a long enough password";

struct Ui {
    router: Router,
    store: Store,
    bus: Arc<dyn Bus>,
    _data: tempfile::TempDir,
}

async fn ui() -> Ui {
    let data = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", data.path().join("h.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(store.sqlite().unwrap().clone()));
    let settings = MailerSettings::default();
    let transports = Transports::build(
        &Default::default(),
        &settings.default_transport,
        data.path(),
    )
    .unwrap();
    let composer = Composer::new(
        store.clone(),
        Arc::new(transports),
        &settings,
        &[7u8; 32],
        Arc::new(SystemClock),
    )
    .unwrap();
    let app = AppState::new(store.clone(), bus.clone(), Arc::new(composer));
    let web = WebSettings {
        secure_cookies: SecureCookies::Auto,
        session_ttl: Duration::from_secs(3600),
        lockout: LockoutPolicy::default(),
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(30),
    };
    for (email, role) in [
        ("admin@example.com", UserRole::Admin),
        ("marketer@example.com", UserRole::Marketer),
        ("viewer@example.com", UserRole::Viewer),
    ] {
        store
            .users()
            .create(&NewUser {
                email: EmailAddress::parse(email).unwrap(),
                role,
                password: PASSWORD.into(),
                time_zone: None,
            })
            .await
            .unwrap();
    }
    Ui {
        router: herald_web::router(WebState::new(app, web)),
        store,
        bus,
        _data: data,
    }
}

async fn body(response: Response<Body>) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn set_cookies(response: &Response<Body>) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The value of `name="..." value="..."` in a page's HTML.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

impl Ui {
    async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Response<Body> {
        let mut request = Request::get(path);
        if let Some(s) = session {
            request = request.header(header::COOKIE, format!("herald_session={s}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, session: &str, form: &str) -> Response<Body> {
        self.send(
            Request::post(path)
                .header(header::COOKIE, format!("herald_session={session}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form.to_owned()))
                .unwrap(),
        )
        .await
    }

    /// Signs in through the form; returns the session token and the CSRF token.
    async fn sign_in(&self, email: &str) -> (String, String) {
        let response = self.try_sign_in(email, PASSWORD, &[]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let session = cookie_value(
            set_cookies(&response)
                .iter()
                .find(|c| c.starts_with("herald_session="))
                .unwrap(),
        );
        let page = body(self.get("/ui/alerts", Some(&session)).await).await;
        (session, hidden(&page, "_csrf"))
    }

    async fn try_sign_in(
        &self,
        email: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> Response<Body> {
        let form = self.get("/ui/sign-in", None).await;
        let cookie = set_cookies(&form).remove(0);
        let csrf = hidden(&body(form).await, "_csrf");
        let mut request = Request::post("/ui/sign-in")
            .header(header::COOKIE, cookie.split(';').next().unwrap())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let form = format!(
            "_csrf={csrf}&email={}&password={}&next=%2Fui%2Fbrands",
            email.replace('@', "%40"),
            password.replace(' ', "+")
        );
        self.send(request.body(Body::from(form)).unwrap()).await
    }

    async fn seed_catalog(&self) -> (String, String) {
        let catalog = self.store.catalog();
        catalog
            .create_brand(&BrandId::parse("fjord").unwrap(), "Fjord Footwear")
            .await
            .unwrap();
        let sale = catalog
            .create_sale(&NewSale {
                brand_id: BrandId::parse("fjord").unwrap(),
                headline: "Boots".into(),
                url: HttpUrl::parse("https://shop.example.com/fjord").unwrap(),
                image: None,
                starts_at: SystemClock.now(),
                ends_at: None,
            })
            .await
            .unwrap();
        let template = catalog
            .create_template(&NewTemplate {
                name: "plain".into(),
                subject: "{{ alert.subject }}".into(),
                html: "<p>{% for s in sales %}{{ s.headline }}{% endfor %} <a href=\"{{ unsubscribe_url }}\">unsubscribe</a></p>".into(),
                text: None,
            })
            .await
            .unwrap();
        (sale.id, template.id)
    }
}

async fn alert_count(store: &Store) -> usize {
    store
        .brand_alerts()
        .list(&BrandAlertFilter::default())
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_goes_back_where_asked() {
    let ui = ui().await;
    let response = ui.get("/ui/alerts?state=draft", None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/ui/sign-in?next=%2Fui%2Falerts%3Fstate%3Ddraft"
    );
    let response = ui.get("/ui/alerts", Some(&"a".repeat(64))).await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "a forged session is no session"
    );

    let response = ui.try_sign_in("marketer@example.com", PASSWORD, &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/brands");
    let cookie = set_cookies(&response)
        .into_iter()
        .find(|c| c.starts_with("herald_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let page = ui.get("/ui/brands", Some(&cookie_value(&cookie))).await;
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(body(page).await.contains("marketer@example.com"));

    let behind_tls = ui
        .try_sign_in(
            "marketer@example.com",
            PASSWORD,
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(set_cookies(&behind_tls)
        .iter()
        .any(|c| c.starts_with("herald_session=") && c.ends_with("Secure")));
}

#[tokio::test]
async fn sign_in_without_its_form_token_is_refused() {
    let ui = ui().await;
    let response = ui
        .send(
            Request::post("/ui/sign-in")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(
                    "email=admin%40example.com&password=a+long+enough+password",
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(set_cookies(&response)
        .iter()
        .all(|c| !c.starts_with("herald_session=")));
}

#[tokio::test]
async fn wrong_passwords_lock_the_address_after_five_tries() {
    let ui = ui().await;
    for _ in 0..4 {
        let response = ui
            .try_sign_in("viewer@example.com", "not the password", &[])
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(body(response).await.contains("do not match"));
    }
    let locked = ui
        .try_sign_in("viewer@example.com", "not the password", &[])
        .await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let right = ui.try_sign_in("viewer@example.com", PASSWORD, &[]).await;
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    assert!(body(right).await.contains("Too many failed attempts"));
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused() {
    let ui = ui().await;
    let (sale, template) = ui.seed_catalog().await;
    let (session, csrf) = ui.sign_in("marketer@example.com").await;
    let fields = format!(
        "name=Boots&subject=Boots+on+sale&template_id={template}&sale_ids={sale}&send_at=2030-01-01T10%3A00&affinity_threshold=0.5"
    );
    let (other_session, other_csrf) = ui.sign_in("admin@example.com").await;
    assert_ne!(csrf, other_csrf);
    for form in [
        fields.clone(),
        format!("{fields}&_csrf="),
        format!("{fields}&_csrf={other_csrf}"),
    ] {
        let response = ui.post("/ui/alerts/new", &session, &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form}");
        assert!(body(response).await.contains("CSRF"));
    }
    assert_eq!(alert_count(&ui.store).await, 0, "nothing was created");
    let _ = other_session;

    let response = ui
        .post(
            "/ui/alerts/new",
            &session,
            &format!("{fields}&_csrf={csrf}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .ends_with("?done=created"));
    assert_eq!(alert_count(&ui.store).await, 1);
}

#[tokio::test]
async fn viewers_see_but_cannot_change_and_marketers_cannot_operate() {
    let ui = ui().await;
    let (sale, template) = ui.seed_catalog().await;
    let (viewer, viewer_csrf) = ui.sign_in("viewer@example.com").await;
    let list = ui.get("/ui/alerts", Some(&viewer)).await;
    assert_eq!(list.status(), StatusCode::OK);
    assert!(
        !body(list).await.contains("New brand alert"),
        "no create button for viewers"
    );
    let form = format!(
        "_csrf={viewer_csrf}&name=Boots&subject=S&template_id={template}&sale_ids={sale}&send_at=2030-01-01T10%3A00&affinity_threshold=0.5"
    );
    let response = ui.post("/ui/alerts/new", &viewer, &form).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(body(response).await.contains("viewer"));
    assert_eq!(
        ui.post(
            "/ui/brands",
            &viewer,
            &format!("_csrf={viewer_csrf}&id=x&name=X")
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(alert_count(&ui.store).await, 0);

    let (marketer, marketer_csrf) = ui.sign_in("marketer@example.com").await;
    let redrive = ui
        .post(
            "/ui/queues/emails.dlq/redrive",
            &marketer,
            &format!("_csrf={marketer_csrf}"),
        )
        .await;
    assert_eq!(redrive.status(), StatusCode::FORBIDDEN);

    let signed_out = ui
        .post("/ui/sign-out", &viewer, &format!("_csrf={viewer_csrf}"))
        .await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert!(set_cookies(&signed_out)
        .iter()
        .any(|c| c.contains("Max-Age=0")));
    assert_eq!(
        ui.get("/ui/alerts", Some(&viewer)).await.status(),
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn the_alert_form_shows_errors_beside_fields_and_stores_nothing() {
    let ui = ui().await;
    let (sale, template) = ui.seed_catalog().await;
    let (session, csrf) = ui.sign_in("marketer@example.com").await;
    let bad_time = format!(
        "_csrf={csrf}&name=Boots&subject=S&template_id={template}&sale_ids={sale}&send_at=someday&affinity_threshold=0.5"
    );
    let response = ui.post("/ui/alerts/new", &session, &bad_time).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = body(response).await;
    assert!(html.contains("id=\"send_at-error\""), "{html}");
    assert!(html.contains("value=\"Boots\""), "typed values are kept");

    let no_sales = format!(
        "_csrf={csrf}&name=Boots&subject=S&template_id={template}&send_at=2030-01-01T10%3A00&affinity_threshold=0.5"
    );
    let html = body(ui.post("/ui/alerts/new", &session, &no_sales).await).await;
    assert!(
        html.contains("id=\"sale_ids-error\"") && html.contains("at least one sale"),
        "{html}"
    );
    let out_of_range = format!(
        "_csrf={csrf}&name=Boots&subject=S&template_id={template}&sale_ids={sale}&send_at=2030-01-01T10%3A00&affinity_threshold=7"
    );
    let html = body(ui.post("/ui/alerts/new", &session, &out_of_range).await).await;
    assert!(html.contains("id=\"affinity_threshold-error\""), "{html}");
    assert_eq!(alert_count(&ui.store).await, 0);

    let oversized = format!("_csrf={csrf}&name={}", "x".repeat(100 * 1024));
    assert_eq!(
        ui.post("/ui/alerts/new", &session, &oversized)
            .await
            .status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn every_page_renders_for_a_signed_in_admin() {
    let ui = ui().await;
    let (sale, template) = ui.seed_catalog().await;
    let alert = ui
        .store
        .brand_alerts()
        .create(&herald_store::brand_alerts::NewBrandAlert {
            name: "Boots".into(),
            subject: "Boots on sale".into(),
            template_id: template.clone(),
            send_at: SystemClock.now(),
            affinity_threshold: 0.5,
            transport: None,
            sale_ids: vec![sale],
        })
        .await
        .unwrap();
    let queue = herald_core::QueueName::parse("jobs").unwrap();
    ui.bus
        .ensure_queue(&queue, herald_bus::QueueConfig::default())
        .await
        .unwrap();
    ui.bus
        .send(&queue, herald_bus::OutgoingMessage::new("hello"))
        .await
        .unwrap();
    let (session, _) = ui.sign_in("admin@example.com").await;
    let id = &alert.id;
    for path in [
        "/ui/alerts".to_owned(),
        "/ui/alerts?state=draft&q=fjord&from=2020-01-01&until=2040-01-01".to_owned(),
        "/ui/alerts/new".to_owned(),
        format!("/ui/alerts/{id}"),
        format!("/ui/alerts/{id}/edit"),
        format!("/ui/alerts/{id}/do/schedule"),
        format!("/ui/alerts/{id}/do/cancel"),
        "/ui/brands".to_owned(),
        "/ui/sales?brand=fjord".to_owned(),
        "/ui/templates".to_owned(),
        "/ui/templates/new".to_owned(),
        format!("/ui/templates/{template}"),
        "/ui/members".to_owned(),
        "/ui/queues".to_owned(),
        "/ui/queues/jobs".to_owned(),
        "/ui/queues/jobs.dlq".to_owned(),
        "/ui/jobs".to_owned(),
        "/ui/shards".to_owned(),
        "/ui/shards?customer=c-42".to_owned(),
        "/ui/events".to_owned(),
        "/ui/events?type=bounce".to_owned(),
    ] {
        let response = ui.get(&path, Some(&session)).await;
        let status = response.status();
        let html = body(response).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        assert!(html.contains("</html>"), "{path}");
    }
    for (path, status) in [
        (
            format!("/ui/alerts/{id}/preview?member=nobody"),
            StatusCode::NOT_FOUND,
        ),
        ("/ui/alerts/missing".to_owned(), StatusCode::NOT_FOUND),
        (format!("/ui/alerts/{id}/do/explode"), StatusCode::NOT_FOUND),
        (
            "/ui/members?email=nobody%40example.com".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/ui/queues/no%20such%20queue".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        ("/ui/nowhere".to_owned(), StatusCode::NOT_FOUND),
        ("/ui/jobs/nightly".to_owned(), StatusCode::NOT_FOUND),
        (
            format!("/ui/shards?customer={}", "x".repeat(1000)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(
            ui.get(&path, Some(&session)).await.status(),
            status,
            "{path}"
        );
    }
}

fn email_event(
    id: &str,
    event_type: herald_core::email_event::EventType,
    alert: &str,
    at: i64,
) -> herald_core::email_event::EmailEvent {
    herald_core::email_event::EmailEvent {
        provider: herald_core::email_event::Provider::SendGrid,
        provider_event_id: id.into(),
        event_type,
        address: format!("{id}@example.com"),
        occurred_at: herald_core::Timestamp(at),
        message_id: None,
        bounce: None,
        tags: Vec::new(),
        custom_args: serde_json::json!({ "alert_id": alert })
            .as_object()
            .unwrap()
            .clone(),
        raw: serde_json::Value::Null,
    }
}

#[tokio::test]
async fn the_alert_page_charts_its_events_over_time_and_the_tail_follows_all_alerts() {
    use herald_core::email_event::EventType;
    let ui = ui().await;
    let (sale, template) = ui.seed_catalog().await;
    let alert = ui
        .store
        .brand_alerts()
        .create(&herald_store::brand_alerts::NewBrandAlert {
            name: "Boots".into(),
            subject: "Boots on sale".into(),
            template_id: template,
            send_at: SystemClock.now(),
            affinity_threshold: 0.5,
            transport: None,
            sale_ids: vec![sale],
        })
        .await
        .unwrap();
    let (session, _) = ui.sign_in("viewer@example.com").await;
    let page = body(
        ui.get(&format!("/ui/alerts/{}", alert.id), Some(&session))
            .await,
    )
    .await;
    assert!(!page.contains("chart-over-time"), "no events, no chart");
    assert!(page.contains("No deliveries, opens, clicks or bounces received yet."));

    let hour = 3_600_000;
    let at = 1_714_557_600_000;
    let events = [
        email_event("d1", EventType::Delivered, &alert.id, at),
        email_event("o1", EventType::Open, &alert.id, at + 3 * hour),
        email_event("x1", EventType::Delivered, "another-alert", at),
    ];
    ui.store.email_events().insert(&events).await.unwrap();
    // Stored, the chart waits for the stats subscriber to count them.
    let page = body(
        ui.get(&format!("/ui/alerts/{}", alert.id), Some(&session))
            .await,
    )
    .await;
    assert!(!page.contains("chart-over-time"), "not counted yet");
    let keys: Vec<_> = events.iter().map(EventKey::of).collect();
    ui.store.brand_alerts().count_events(&keys).await.unwrap();
    let page = body(
        ui.get(&format!("/ui/alerts/{}", alert.id), Some(&session))
            .await,
    )
    .await;
    assert!(page.contains("class=\"chart chart-over-time\""), "{page}");
    assert_eq!(page.matches("<polyline").count(), 4);
    assert!(page.contains("Counts per hour as a table"));
    assert_eq!(
        page.matches("<th scope=\"row\">").count(),
        2,
        "two hours with events"
    );

    let tail = ui.get("/ui/events", Some(&session)).await;
    assert_eq!(tail.status(), StatusCode::OK);
    let tail = body(tail).await;
    assert!(
        tail.contains("data-poll=\"&#x2f;ui&#x2f;events&#x2f;tail\""),
        "the page polls its fragment (HTML-escaped): {tail}"
    );
    for id in ["d1", "o1", "x1"] {
        assert!(tail.contains(&format!("{id}@example.com")), "{id}: {tail}");
    }

    let fragment = ui.get("/ui/events/tail?type=open", Some(&session)).await;
    assert_eq!(fragment.status(), StatusCode::OK);
    let fragment = body(fragment).await;
    assert!(!fragment.contains("<html"), "just the table");
    assert!(fragment.contains("o1@example.com"));
    assert!(!fragment.contains("d1@example.com") && !fragment.contains("x1@example.com"));

    for forged in [
        "/ui/events/tail?type=nope",
        "/ui/events?type=%27%20OR%201%3D1",
    ] {
        let response = ui.get(forged, Some(&session)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{forged}");
    }
    let signed_out = ui.get("/ui/events/tail", None).await;
    assert!(
        signed_out.status().is_redirection() || signed_out.status() == StatusCode::UNAUTHORIZED,
        "{}",
        signed_out.status()
    );
}

#[tokio::test]
async fn the_sale_form_shows_errors_beside_fields_and_stores_only_valid_sales() {
    let ui = ui().await;
    ui.seed_catalog().await;
    let (session, csrf) = ui.sign_in("marketer@example.com").await;
    let sales = |ui: &Ui| {
        let store = ui.store.clone();
        async move {
            store
                .catalog()
                .list_sales(&herald_store::catalog::SaleFilter {
                    brand_id: None,
                    page: herald_store::page::PageRequest::first(100),
                })
                .await
                .unwrap()
                .items
        }
    };
    let before = sales(&ui).await.len();

    let malformed = format!(
        "_csrf={csrf}&brand_id=&headline=Sale&url=ftp%3A%2F%2Fx&image=nope&starts_at=tomorrow&ends_at="
    );
    let response = ui.post("/ui/sales", &session, &malformed).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = body(response).await;
    for field in ["brand_id", "url", "image", "starts_at"] {
        assert!(
            page.contains(&format!("id=\"{field}-error\"")),
            "{field}: {page}"
        );
    }
    assert!(page.contains("value=\"tomorrow\""), "typed values are kept");

    // Parsed fine, refused by the store as the API would be.
    for (form, field) in [
        (
            "brand_id=fjord&headline=Later&url=https%3A%2F%2Fx.example&starts_at=2030-05-02T10%3A00&ends_at=2030-05-01T10%3A00",
            "ends_at",
        ),
        (
            "brand_id=nobody&headline=Ghost&url=https%3A%2F%2Fx.example&starts_at=2030-05-02T10%3A00",
            "brand_id",
        ),
        (
            "brand_id=fjord&headline=+&url=https%3A%2F%2Fx.example&starts_at=2030-05-02T10%3A00",
            "headline",
        ),
    ] {
        let response = ui
            .post("/ui/sales", &session, &format!("_csrf={csrf}&{form}"))
            .await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{form}");
        let page = body(response).await;
        assert!(page.contains(&format!("id=\"{field}-error\"")), "{field}: {page}");
    }
    assert_eq!(sales(&ui).await.len(), before, "nothing partial was stored");

    let good = format!(
        "_csrf={csrf}&brand_id=fjord&headline=Winter+boots&url=https%3A%2F%2Fshop.example.com%2Fboots&image=&starts_at=2030-05-01T10%3A00&ends_at=2030-05-08T10%3A00"
    );
    let response = ui.post("/ui/sales", &session, &good).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let all = sales(&ui).await;
    assert_eq!(all.len(), before + 1);
    let created = all.iter().find(|s| s.headline == "Winter boots").unwrap();
    assert_eq!(created.brand_id, "fjord");
    assert_eq!(created.image, None);
    assert!(created.ends_at.is_some());

    let (viewer, viewer_csrf) = ui.sign_in("viewer@example.com").await;
    let refused = ui
        .post(
            "/ui/sales",
            &viewer,
            &good
                .replace(&csrf, &viewer_csrf)
                .replace("Winter", "Viewer"),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(sales(&ui).await.len(), before + 1);
}
