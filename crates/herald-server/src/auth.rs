//! API-key authentication: `Authorization: Bearer <key>`, checked against the
//! store (keys are kept hashed), then against the access a route needs.
//!
//! Handlers state what they need by taking one of the extractors below:
//! [`ReadAccess`], [`MarketingAccess`] or [`AdminAccess`]. A missing or wrong
//! key is a 401; a valid key without the scope is a 403 naming what is
//! missing.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::api_key::{Access, ApiKey};

use crate::error::ApiError;
use crate::AppState;

/// Why a request was not let in; a 401 carries the `WWW-Authenticate`
/// challenge RFC 6750 asks for.
#[derive(Debug)]
pub struct AuthRejection(ApiError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let unauthorized = self.0.status == StatusCode::UNAUTHORIZED;
        let mut response = self.0.into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ApiError> for AuthRejection {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// The key a request presented, once the store has accepted it.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<ApiKey, AuthRejection> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("send an API key as `Authorization: Bearer <key>`").into());
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
    state
        .store
        .api_keys()
        .authenticate(token)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| unauthorized("the API key is unknown or revoked").into())
}

/// Refuses a key whose scopes do not give `access`.
pub fn require(key: &ApiKey, access: Access<'_>, needs: &str) -> Result<(), ApiError> {
    if key.scopes.allows(access) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "API key {:?} has the scopes `{}`, which do not allow {needs}",
                key.name.as_str(),
                key.scopes
            ),
        ))
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $access:expr, $needs:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub ApiKey);

        impl FromRequestParts<AppState> for $name {
            type Rejection = AuthRejection;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let key = authenticate(parts, state).await?;
                require(&key, $access, $needs)?;
                Ok(Self(key))
            }
        }
    };
}

access_extractor!(
    /// Any valid key: reading data (admin, marketing and read-only keys).
    ReadAccess,
    Access::Read,
    "reading data"
);
access_extractor!(
    /// Creating and changing marketing content (admin and marketing keys).
    MarketingAccess,
    Access::Marketing,
    "changing marketing data (needs the marketing or admin scope)"
);
access_extractor!(
    /// Operating Herald: keys, queues, routes, shards (admin keys).
    AdminAccess,
    Access::Admin,
    "operating Herald (needs the admin scope)"
);

/// Any valid key, whatever its scopes, for handlers whose access depends on
/// the request itself: a `queues:<prefix>` key may use only the queues its
/// prefix covers, so the handler checks [`Access::Queue`] once it knows the
/// queue.
#[derive(Debug, Clone)]
pub struct AnyKey(pub ApiKey);

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(Self)
    }
}
