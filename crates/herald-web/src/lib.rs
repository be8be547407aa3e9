//! Herald's web UI (the `web` role): server-rendered HTML for marketing
//! (brand alerts, their preview and statistics, the catalog, member
//! look-up) and for operators (queues and dead-letter queues, jobs,
//! shards and held events).
//!
//! Everything it shows and changes goes through the same store traits, bus
//! and composer as the REST API, so the rules live in one place. The
//! templates, the stylesheet and the little JavaScript are compiled into the
//! binary: nothing is fetched from elsewhere and no front-end build exists.
//!
//! Every page below `/ui` except sign-in needs a session. Every POST needs
//! the session's CSRF token (the `_csrf` form field) and a role that may
//! change what the path names; both are checked once, in [`auth::guard`],
//! before any handler runs.
//!
//! Adding a page: a module under `pages` with `routes()`, merged in
//! [`router`], and an entry in [`NAV`] when it belongs in the menu.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use herald_server::AppState;
use herald_store::users::LockoutPolicy;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub mod auth;
pub mod chart;
pub mod form;
pub mod pages;
pub mod render;
pub mod time;

pub use render::WebError;

/// Where the UI lives.
pub const PREFIX: &str = "/ui";

/// When session cookies carry the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureCookies {
    /// When the request came over TLS, as a TLS-terminating proxy reports
    /// with `X-Forwarded-Proto: https`.
    Auto,
    Always,
    Never,
}

/// The web role's settings.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub secure_cookies: SecureCookies,
    /// How long a session lasts after signing in.
    pub session_ttl: Duration,
    pub lockout: LockoutPolicy,
    /// Largest form body accepted.
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// What web handlers share: the API's state (store, bus, composer) and the
/// settings.
#[derive(Clone)]
pub struct WebState {
    pub app: AppState,
    pub settings: Arc<WebSettings>,
}

impl WebState {
    pub fn new(app: AppState, settings: WebSettings) -> Self {
        Self {
            app,
            settings: Arc::new(settings),
        }
    }
}

/// One entry of the menu; `section` marks it current on the pages below it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct NavItem {
    pub label: &'static str,
    pub href: &'static str,
    pub section: &'static str,
}

/// The menu, in order.
pub const NAV: &[NavItem] = &[
    NavItem {
        label: "Brand alerts",
        href: "/ui/alerts",
        section: "alerts",
    },
    NavItem {
        label: "Brands",
        href: "/ui/brands",
        section: "brands",
    },
    NavItem {
        label: "Sales",
        href: "/ui/sales",
        section: "sales",
    },
    NavItem {
        label: "Templates",
        href: "/ui/templates",
        section: "templates",
    },
    NavItem {
        label: "Members",
        href: "/ui/members",
        section: "members",
    },
    NavItem {
        label: "Queues",
        href: "/ui/queues",
        section: "queues",
    },
    NavItem {
        label: "Jobs",
        href: "/ui/jobs",
        section: "jobs",
    },
    NavItem {
        label: "Shards",
        href: "/ui/shards",
        section: "shards",
    },
    NavItem {
        label: "Live events",
        href: "/ui/events",
        section: "events",
    },
];

/// The whole UI, ready to merge beside the API router.
pub fn router(state: WebState) -> Router {
    let settings = state.settings.clone();
    let signed_in = Router::new()
        .merge(pages::alerts::routes())
        .merge(pages::catalog::routes())
        .merge(pages::members::routes())
        .merge(pages::queues::routes())
        .merge(pages::jobs::routes())
        .merge(pages::shards::routes())
        .merge(pages::events::routes())
        .merge(auth::signed_in_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard));
    Router::new()
        .merge(signed_in)
        .merge(auth::public_routes())
        .merge(render::asset_routes())
        .route("/", get(|| async { Redirect::to("/ui/alerts") }))
        .route("/ui", get(|| async { Redirect::to("/ui/alerts") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/alerts") }))
        .route("/ui/{*rest}", get(render::not_found))
        .with_state(state)
        .layer(middleware::from_fn(render::security_headers))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
}
