//! Turning page data into HTML: the compiled-in templates, the layout every
//! page shares, the error page, the static assets and the headers every
//! answer carries.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_store::users::{Session, UserRole};
use herald_store::StoreError;
use minijinja::Environment;
use serde::Serialize;

use crate::{NavItem, WebState, NAV};

/// Every template, by the name pages render it with.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    ("macros.html", include_str!("../templates/macros.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("sign_in.html", include_str!("../templates/sign_in.html")),
    ("confirm.html", include_str!("../templates/confirm.html")),
    ("events.html", include_str!("../templates/events.html")),
    (
        "events_tail.html",
        include_str!("../templates/events_tail.html"),
    ),
    (
        "alerts/list.html",
        include_str!("../templates/alerts/list.html"),
    ),
    (
        "alerts/form.html",
        include_str!("../templates/alerts/form.html"),
    ),
    (
        "alerts/show.html",
        include_str!("../templates/alerts/show.html"),
    ),
    (
        "alerts/preview.html",
        include_str!("../templates/alerts/preview.html"),
    ),
    (
        "catalog/brands.html",
        include_str!("../templates/catalog/brands.html"),
    ),
    (
        "catalog/sales.html",
        include_str!("../templates/catalog/sales.html"),
    ),
    (
        "catalog/templates.html",
        include_str!("../templates/catalog/templates.html"),
    ),
    (
        "catalog/template_form.html",
        include_str!("../templates/catalog/template_form.html"),
    ),
    ("members.html", include_str!("../templates/members.html")),
    (
        "queues/list.html",
        include_str!("../templates/queues/list.html"),
    ),
    (
        "queues/show.html",
        include_str!("../templates/queues/show.html"),
    ),
    (
        "jobs/list.html",
        include_str!("../templates/jobs/list.html"),
    ),
    (
        "jobs/show.html",
        include_str!("../templates/jobs/show.html"),
    ),
    ("jobs/run.html", include_str!("../templates/jobs/run.html")),
    ("shards.html", include_str!("../templates/shards.html")),
];

const STYLESHEET: &str = include_str!("../assets/herald.css");
const SCRIPT: &str = include_str!("../assets/herald.js");

/// The compiled templates, built on first use.
pub fn templates() -> &'static Templates {
    static TEMPLATES_ONCE: std::sync::LazyLock<Templates> =
        std::sync::LazyLock::new(Templates::new);
    &TEMPLATES_ONCE
}

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Compiles every template; a syntax error in one is a bug caught by the
    /// crate's tests, so it panics here rather than at the first request.
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name} does not compile: {e:#}"));
        }
        Self { env }
    }

    pub fn render(&self, name: &str, context: minijinja::Value) -> Result<String, WebError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(context))
            .map_err(|e| WebError::Internal(format!("rendering {name}: {e:#}")))
    }
}

/// What the layout needs about who is signed in.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub title: String,
    pub section: &'static str,
    pub nav: &'static [NavItem],
    pub user_email: Option<String>,
    pub role: Option<&'static str>,
    pub csrf: Option<String>,
    pub can_change: bool,
    pub can_operate: bool,
    /// Reload the page this often (seconds), for pages following progress.
    pub refresh: Option<u32>,
}

impl Layout {
    pub fn for_session(session: &Session, section: &'static str, title: impl Into<String>) -> Self {
        let role: UserRole = session.user.role;
        Self {
            title: title.into(),
            section,
            nav: NAV,
            user_email: Some(session.user.email.clone()),
            role: Some(role.as_str()),
            csrf: Some(session.csrf_token.clone()),
            can_change: role.can_change_marketing(),
            can_operate: role.can_operate(),
            refresh: None,
        }
    }

    pub fn public(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            section: "",
            nav: &[],
            user_email: None,
            role: None,
            csrf: None,
            can_change: false,
            can_operate: false,
            refresh: None,
        }
    }
}

impl WebState {
    /// Renders `template` with the layout and the page's data.
    pub fn page<T: Serialize>(
        &self,
        template: &str,
        layout: &Layout,
        page: &T,
    ) -> Result<Html<String>, WebError> {
        let context = minijinja::context! {
            layout => minijinja::Value::from(minijinja::value::Serde(layout)),
            page => minijinja::Value::from(minijinja::value::Serde(page)),
        };
        templates().render(template, context).map(Html)
    }
}

/// Why a page could not be shown; answered as an HTML error page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Internal(String),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => WebError::NotFound(e.to_string()),
            StoreError::Conflict { .. } | StoreError::InUse { .. } => {
                WebError::Conflict(e.to_string())
            }
            StoreError::InvalidInput { .. } => WebError::BadRequest(e.to_string()),
            _ => WebError::Internal(e.to_string()),
        }
    }
}

impl From<herald_bus::BusError> for WebError {
    fn from(e: herald_bus::BusError) -> Self {
        match e {
            herald_bus::BusError::QueueNotFound(_) => WebError::NotFound(e.to_string()),
            herald_bus::BusError::InvalidName(_) | herald_bus::BusError::InvalidArgument { .. } => {
                WebError::BadRequest(e.to_string())
            }
            _ => WebError::Internal(e.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrorPage {
    status: u16,
    heading: &'static str,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A server error's cause is logged, not shown.
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "web page failed");
            "Something went wrong on Herald's side; the cause is in its log.".to_owned()
        } else {
            self.to_string()
        };
        let page = ErrorPage {
            status: status.as_u16(),
            heading: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        let layout = Layout::public(page.heading);
        let body = templates()
            .render(
                "error.html",
                minijinja::context! {
                    layout => minijinja::Value::from(minijinja::value::Serde(&layout)),
                    page => minijinja::Value::from(minijinja::value::Serde(&page)),
                },
            )
            .unwrap_or_else(|_| page.message.clone());
        (status, Html(body)).into_response()
    }
}

pub async fn not_found() -> WebError {
    WebError::NotFound("There is no such page.".into())
}

pub fn asset_routes() -> Router<WebState> {
    Router::new()
        .route(
            "/ui/assets/herald.css",
            get(|| async { asset("text/css; charset=utf-8", STYLESHEET) }),
        )
        .route(
            "/ui/assets/herald.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Only Herald's own scripts and styles run; images in previewed emails
/// are not fetched (no request leaves the browser for another host); the
/// UI cannot be framed by another site.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let templates = Templates::new();
        for (name, _) in TEMPLATES {
            assert!(templates.env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn errors_render_as_pages_with_their_status() {
        let response = WebError::Forbidden("viewers cannot change alerts".into()).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let response = WebError::Internal("secret detail".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
