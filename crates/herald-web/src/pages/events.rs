//! The live tail of incoming email events for operators: the latest events
//! across all alerts, filtered by type. The page works without script;
//! `herald.js` polls the fragment endpoint to refresh the table in place.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use herald_store::email_events::StoredEmailEvent;
use serde::{Deserialize, Serialize};

use super::{event_lines, EventLine};
use crate::auth::{encode, Signed};
use crate::render::templates;
use crate::time::Zone;
use crate::{WebError, WebState};

/// Events the tail shows.
pub const TAIL_LENGTH: u32 = 50;
/// How often the page's script refreshes the tail, in seconds.
pub const POLL_SECONDS: u32 = 5;
const PAGE_PATH: &str = "/ui/events";
const FRAGMENT_PATH: &str = "/ui/events/tail";

/// The types the filter offers: the provider vocabulary's common ones, by
/// the names the store keeps (`EventType::as_str`).
const TYPES: [&str; 9] = [
    "processed",
    "delivered",
    "deferred",
    "bounce",
    "dropped",
    "open",
    "click",
    "spam_report",
    "unsubscribe",
];

pub fn routes() -> Router<WebState> {
    Router::new()
        .route(PAGE_PATH, get(page))
        .route(FRAGMENT_PATH, get(fragment))
}

#[derive(Debug, Default, Deserialize)]
struct TailQuery {
    #[serde(default, rename = "type")]
    event_type: String,
}

/// What the tail page (and its fragment) is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct TailPage {
    /// The chosen type; empty for all.
    pub event_type: String,
    pub types: Vec<TypeOption>,
    pub events: Vec<EventLine>,
    /// Where the script fetches the refreshed table from.
    pub fragment_url: String,
    pub poll_seconds: u32,
    pub limit: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TypeOption {
    pub value: &'static str,
    pub selected: bool,
}

/// The filter's type, checked against the offered ones; empty means all.
pub fn parse_type(text: &str) -> Result<Option<&'static str>, WebError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    TYPES
        .iter()
        .find(|t| **t == text)
        .map(|t| Some(*t))
        .ok_or_else(|| {
            WebError::BadRequest(format!(
                "type: unknown event type {text:?}; expected one of {}",
                TYPES.join(", ")
            ))
        })
}

pub fn tail_page(event_type: Option<&str>, events: &[StoredEmailEvent], zone: Zone) -> TailPage {
    let chosen = event_type.unwrap_or_default();
    TailPage {
        event_type: chosen.to_owned(),
        types: TYPES
            .iter()
            .map(|&t| TypeOption {
                value: t,
                selected: t == chosen,
            })
            .collect(),
        events: event_lines(events, zone),
        fragment_url: if chosen.is_empty() {
            FRAGMENT_PATH.to_owned()
        } else {
            format!("{FRAGMENT_PATH}?type={}", encode(chosen))
        },
        poll_seconds: POLL_SECONDS,
        limit: TAIL_LENGTH,
    }
}

async fn load(
    state: &WebState,
    signed: &Signed,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<TailPage, WebError> {
    let query = query
        .map(|Query(q)| q)
        .map_err(|e| WebError::BadRequest(e.body_text()))?;
    let event_type = parse_type(&query.event_type)?;
    let events = state
        .app
        .store
        .email_events()
        .latest(event_type, TAIL_LENGTH)
        .await?;
    Ok(tail_page(event_type, &events, signed.zone()))
}

async fn page(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let page = load(&state, &signed, query).await?;
    let html = state.page(
        "events_tail.html",
        &signed.layout("events", "Live events"),
        &page,
    )?;
    Ok(html.into_response())
}

/// Just the table, for the page's script to swap in.
async fn fragment(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let page = load(&state, &signed, query).await?;
    let context = minijinja::context! {
        page => minijinja::Value::from(minijinja::value::Serde(&page)),
    };
    Ok(Html(templates().render("events.html", context)?).into_response())
}

#[cfg(test)]
mod tests {
    use herald_core::email_event::{EmailEvent, EventType, Provider};
    use herald_core::Timestamp;

    use super::*;

    #[test]
    fn offered_types_are_the_common_provider_types() {
        for name in TYPES {
            let parsed = EventType::from_name(name);
            assert!(parsed.is_common(), "{name}");
            assert_eq!(parsed.as_str(), name);
        }
    }

    #[test]
    fn the_filter_accepts_offered_types_and_refuses_others() {
        assert_eq!(parse_type("").unwrap(), None);
        assert_eq!(parse_type(" open ").unwrap(), Some("open"));
        for forged in ["Open", "opened", "open' OR 1=1 --", &"x".repeat(10_000)] {
            let e = parse_type(forged).unwrap_err();
            assert!(
                matches!(&e, WebError::BadRequest(m) if m.starts_with("type:")),
                "{e}"
            );
        }
    }

    fn stored(seq: i64, event_type: EventType) -> StoredEmailEvent {
        StoredEmailEvent {
            seq,
            event: EmailEvent {
                provider: Provider::SendGrid,
                provider_event_id: format!("e{seq}"),
                event_type,
                address: "a@x.com".into(),
                occurred_at: Timestamp(1_714_557_600_000),
                message_id: None,
                bounce: None,
                tags: Vec::new(),
                custom_args: Default::default(),
                raw: serde_json::Value::Null,
            },
            alert_id: Some("alert-1".into()),
            received_at: Timestamp(1_714_557_600_000),
        }
    }

    #[test]
    fn the_tail_page_marks_the_chosen_type_and_polls_the_same_filter() {
        let events = [stored(2, EventType::Click)];
        let page = tail_page(Some("click"), &events, Zone::utc());
        assert_eq!(page.event_type, "click");
        assert_eq!(
            page.types
                .iter()
                .filter(|t| t.selected)
                .map(|t| t.value)
                .collect::<Vec<_>>(),
            ["click"]
        );
        assert_eq!(page.fragment_url, "/ui/events/tail?type=click");
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].occurred_at, "2024-05-01 10:00");
        assert_eq!(page.events[0].alert_id.as_deref(), Some("alert-1"));

        let all = tail_page(None, &[], Zone::utc());
        assert_eq!(all.fragment_url, "/ui/events/tail");
        assert!(all.types.iter().all(|t| !t.selected));
        assert_eq!((all.poll_seconds, all.limit), (POLL_SECONDS, TAIL_LENGTH));
    }
}
