//! Signing in and out, the session cookie, and the one guard every signed-in
//! route passes: it finds the session, and for a POST checks the CSRF token
//! and that the user's role may change what the path names.
//!
//! The session cookie is `HttpOnly` (scripts cannot read it), `SameSite=Lax`
//! (other sites' forms do not carry it) and `Secure` behind TLS. The CSRF
//! token is a synchronizer token kept with the session in the store; the
//! sign-in form, which has no session yet, uses a double-submit cookie
//! instead.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use herald_store::users::{Session, SignIn, UserRole};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::form::{FormData, CSRF_FIELD};
use crate::render::Layout;
use crate::time::Zone;
use crate::{SecureCookies, WebError, WebState};

pub const SESSION_COOKIE: &str = "herald_session";
/// The sign-in form's double-submit CSRF cookie.
pub const SIGN_IN_COOKIE: &str = "herald_sign_in";
const SIGN_IN_PATH: &str = "/ui/sign-in";
const SIGN_OUT_PATH: &str = "/ui/sign-out";

/// The signed-in user's session, put on the request by [`guard`].
#[derive(Debug, Clone)]
pub struct Signed {
    pub session: Session,
    token: String,
}

impl Signed {
    pub fn role(&self) -> UserRole {
        self.session.user.role
    }

    /// The zone this user reads and writes times in.
    pub fn zone(&self) -> Zone {
        Zone::named(self.session.user.time_zone.as_deref())
    }

    pub fn layout(&self, section: &'static str, title: impl Into<String>) -> Layout {
        Layout::for_session(&self.session, section, title)
    }
}

/// What a POST to a path needs beyond a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Signing out: anyone signed in.
    Any,
    /// Alerts, catalog, templates: marketers and admins.
    ChangeMarketing,
    /// Queues: admins.
    Operate,
}

impl Permission {
    pub fn for_post(path: &str) -> Permission {
        if path == SIGN_OUT_PATH {
            Permission::Any
        } else if ["/ui/queues", "/ui/jobs", "/ui/shards"]
            .iter()
            .any(|p| path.starts_with(p))
        {
            Permission::Operate
        } else {
            Permission::ChangeMarketing
        }
    }

    pub fn allows(self, role: UserRole) -> bool {
        match self {
            Permission::Any => true,
            Permission::ChangeMarketing => role.can_change_marketing(),
            Permission::Operate => role.can_operate(),
        }
    }
}

/// Runs before every signed-in route.
pub async fn guard(State(state): State<WebState>, request: Request, next: Next) -> Response {
    match check(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(response) => response,
    }
}

async fn check(state: &WebState, request: Request) -> Result<Request, Response> {
    let token = cookie(request.headers(), SESSION_COOKIE).unwrap_or_default();
    let session = state
        .app
        .store
        .users()
        .session(&token)
        .await
        .map_err(|e| WebError::from(e).into_response())?;
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let Some(session) = session else {
        if is_read {
            let next = request
                .uri()
                .path_and_query()
                .map_or(String::new(), |p| p.as_str().to_owned());
            let target = format!("{SIGN_IN_PATH}?next={}", encode(&next));
            return Err(Redirect::to(&target).into_response());
        }
        return Err(WebError::Unauthorized(
            "Your session has ended; sign in again and repeat the change.".into(),
        )
        .into_response());
    };
    let mut request = if is_read {
        request
    } else {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, state.settings.max_body_bytes)
            .await
            .map_err(|_| {
                (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.").into_response()
            })?;
        let form = FormData::parse(&bytes);
        if !tokens_match(form.get(CSRF_FIELD), &session.csrf_token) {
            return Err(WebError::Forbidden(
                "The form did not carry this session's CSRF token, so it was refused. \
                 Reload the page and try again."
                    .into(),
            )
            .into_response());
        }
        let permission = Permission::for_post(parts.uri.path());
        if !permission.allows(session.user.role) {
            return Err(WebError::Forbidden(format!(
                "Your role ({}) can see this but not change it.",
                session.user.role
            ))
            .into_response());
        }
        Request::from_parts(parts, Body::from(bytes))
    };
    request.extensions_mut().insert(Signed { session, token });
    Ok(request)
}

/// Compares in constant time; an empty token never matches.
fn tokens_match(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

pub fn public_routes() -> Router<WebState> {
    Router::new().route(SIGN_IN_PATH, get(sign_in_form).post(sign_in))
}

pub fn signed_in_routes() -> Router<WebState> {
    Router::new().route(SIGN_OUT_PATH, post(sign_out))
}

#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    next: String,
}

/// What the sign-in page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct SignInPage {
    pub email: String,
    pub next: String,
    pub csrf: String,
    pub error: Option<String>,
}

async fn sign_in_form(
    State(state): State<WebState>,
    headers: HeaderMap,
    query: Result<Query<SignInQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let next = query.map(|Query(q)| q.next).unwrap_or_default();
    let csrf = new_sign_in_token();
    let page = SignInPage {
        email: String::new(),
        next: safe_next(&next).to_owned(),
        csrf: csrf.clone(),
        error: None,
    };
    sign_in_response(&state, &headers, StatusCode::OK, page, &csrf)
}

async fn sign_in(
    State(state): State<WebState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = FormData::parse(&body);
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !tokens_match(form.get(CSRF_FIELD), &expected) {
        return Err(WebError::Forbidden(
            "The sign-in form was not the one Herald gave this browser (CSRF check). \
             Reload the sign-in page and try again."
                .into(),
        ));
    }
    let email = form.get("email").trim().to_owned();
    let next = safe_next(form.get("next")).to_owned();
    let settings = &state.settings;
    let outcome = state
        .app
        .store
        .users()
        .sign_in(
            &email,
            form.get("password"),
            settings.lockout,
            settings.session_ttl,
        )
        .await?;
    let (status, error) = match outcome {
        SignIn::Accepted { session, token } => {
            tracing::info!(user = %session.user.email, role = %session.user.role, "signed in");
            let max_age = settings.session_ttl.as_secs();
            let cookie = session_cookie(
                token.expose(),
                &format!("Max-Age={max_age}"),
                secure(settings.secure_cookies, &headers),
            );
            let target = if next.is_empty() { "/ui/alerts" } else { &next };
            let mut response = Redirect::to(target).into_response();
            append_cookie(&mut response, &cookie);
            append_cookie(
                &mut response,
                &format!("{SIGN_IN_COOKIE}=; Path={SIGN_IN_PATH}; Max-Age=0"),
            );
            return Ok(response);
        }
        SignIn::Refused => (
            StatusCode::UNAUTHORIZED,
            "That address and password do not match an account.".to_owned(),
        ),
        SignIn::LockedOut { until } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed attempts for this address. Try again after {} (UTC).",
                Zone::utc().format(until)
            ),
        ),
    };
    tracing::warn!(%email, status = status.as_u16(), "sign-in refused");
    let page = SignInPage {
        email,
        next,
        csrf: expected.clone(),
        error: Some(error),
    };
    sign_in_response(&state, &headers, status, page, &expected)
}

fn sign_in_response(
    state: &WebState,
    headers: &HeaderMap,
    status: StatusCode,
    page: SignInPage,
    csrf: &str,
) -> Result<Response, WebError> {
    let html = state.page("sign_in.html", &Layout::public("Sign in"), &page)?;
    let mut response = (status, html).into_response();
    let secure = if secure(state.settings.secure_cookies, headers) {
        "; Secure"
    } else {
        ""
    };
    append_cookie(
        &mut response,
        &format!(
            "{SIGN_IN_COOKIE}={csrf}; Path={SIGN_IN_PATH}; Max-Age=3600; HttpOnly; SameSite=Strict{secure}"
        ),
    );
    Ok(response)
}

async fn sign_out(
    State(state): State<WebState>,
    headers: HeaderMap,
    Extension(signed): Extension<Signed>,
) -> Result<Response, WebError> {
    state.app.store.users().sign_out(&signed.token).await?;
    let mut response = Redirect::to(SIGN_IN_PATH).into_response();
    append_cookie(
        &mut response,
        &session_cookie(
            "",
            "Max-Age=0",
            secure(state.settings.secure_cookies, &headers),
        ),
    );
    Ok(response)
}

fn session_cookie(value: &str, lifetime: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; Path=/; {lifetime}; HttpOnly; SameSite=Lax{secure}")
}

fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Whether cookies set on this request get `Secure`.
pub fn secure(setting: SecureCookies, headers: &HeaderMap) -> bool {
    match setting {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https")),
    }
}

/// The value of one cookie from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Only a path inside the UI is followed after signing in, so the sign-in
/// page cannot be used to send someone to another site.
pub fn safe_next(next: &str) -> &str {
    let inside = next.starts_with("/ui/") && !next.contains("//") && !next.contains('\\');
    if inside {
        next
    } else {
        ""
    }
}

fn new_sign_in_token() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_need_the_role_their_path_names() {
        use Permission as P;
        assert_eq!(P::for_post("/ui/sign-out"), P::Any);
        assert_eq!(P::for_post("/ui/queues/emails.dlq/redrive"), P::Operate);
        assert_eq!(P::for_post("/ui/jobs/nightly/trigger"), P::Operate);
        assert_eq!(P::for_post("/ui/alerts/new"), P::ChangeMarketing);
        assert!(!P::ChangeMarketing.allows(UserRole::Viewer));
        assert!(P::ChangeMarketing.allows(UserRole::Marketer));
        assert!(!P::Operate.allows(UserRole::Marketer));
        assert!(P::Operate.allows(UserRole::Admin));
        assert!(P::Any.allows(UserRole::Viewer));
    }

    #[test]
    fn csrf_tokens_compare_whole_and_never_empty() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn only_paths_inside_the_ui_are_followed() {
        assert_eq!(
            safe_next("/ui/alerts?state=draft"),
            "/ui/alerts?state=draft"
        );
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/ui//evil",
            "/api/x",
            "/ui\\x",
            "",
        ] {
            assert_eq!(safe_next(bad), "", "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_among_many() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_session=tok"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn secure_follows_the_setting_and_the_proxy() {
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(secure(SecureCookies::Auto, &https));
        assert!(!secure(SecureCookies::Auto, &HeaderMap::new()));
        assert!(secure(SecureCookies::Always, &HeaderMap::new()));
        assert!(!secure(SecureCookies::Never, &https));
        let cookie = session_cookie("t", "Max-Age=60", true);
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax")
                && cookie.ends_with("Secure")
        );
    }
}
