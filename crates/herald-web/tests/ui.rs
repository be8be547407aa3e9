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
