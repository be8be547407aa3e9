//! The unsubscribe link every brand alert carries, `/unsubscribe/{token}`.
//!
//! `GET` shows a page with a button rather than unsubscribing at once:
//! link scanners and prefetchers open every link in a mail. `POST` records
//! the unsubscription; it is also the RFC 8058 one-click target mailbox
//! providers call with `List-Unsubscribe=One-Click`. The token is signed, so
//! it needs no API key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use herald_core::catalog::EmailType;
use herald_mail::UnsubscribeClaim;

use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/unsubscribe/{token}", get(confirm_page).post(unsubscribe))
}

fn verify(state: &AppState, token: &str) -> Result<UnsubscribeClaim, ApiError> {
    state.composer.signer().verify(token).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "this unsubscribe link is not valid; it may have been cut short",
        )
    })
}

async fn confirm_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Html<String>, ApiError> {
    verify(&state, &token)?;
    Ok(Html(page(
        "Unsubscribe from brand alerts?",
        &format!(
            "<form method=\"post\" action=\"/unsubscribe/{token}\">\
             <button type=\"submit\">Unsubscribe</button></form>"
        ),
    )))
}

async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Html<String>, ApiError> {
    let claim = verify(&state, &token)?;
    let email_type = EmailType::brand_alerts();
    match state
        .store
        .members()
        .set_subscription(&claim.member_id, &email_type, false, "unsubscribe_link")
        .await
    {
        Ok(_) => {
            metrics::counter!("herald_unsubscribes_total", "source" => "link").increment(1);
            tracing::info!(member = %claim.member_id, alert = %claim.alert_id, "member unsubscribed from brand alerts");
        }
        // The member was deleted since: there is nobody left to mail.
        Err(herald_store::StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Html(page(
        "You are unsubscribed",
        "<p>You will not receive brand alerts any more.</p>",
    )))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto\">\
         <h1>{title}</h1>{body}</body></html>"
    )
}
