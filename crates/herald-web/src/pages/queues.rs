//! Queues for operators: every queue's counts, a queue's oldest messages
//! (a dead-letter queue's with why they moved), and redriving a
//! dead-letter queue back to its source after a confirmation. Everything
//! goes through the [`herald_bus::Bus`] trait, so it works on any backend.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use herald_bus::{PeekedMessage, QueueStats};
use herald_core::QueueName;
use serde::Serialize;

use crate::auth::{encode, Signed};
use crate::time::{short_duration, Zone};
use crate::{WebError, WebState};

/// Messages a queue's page shows.
const PEEK: usize = 20;
/// Bodies longer than this are cut on the page.
const MAX_BODY_CHARS: usize = 2000;
const DLQ_SUFFIX: &str = ".dlq";

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/ui/queues", get(list))
        .route("/ui/queues/{name}", get(show))
        .route(
            "/ui/queues/{name}/redrive",
            get(confirm_redrive).post(redrive),
        )
}

/// What the queues page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct QueuesPage {
    pub rows: Vec<QueueRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct QueueRow {
    pub name: String,
    /// The queue's page.
    pub url: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_lettered: u64,
    pub oldest_age: String,
    pub is_dead_letter: bool,
    /// The queue's dead-letter queue's page, when it has messages.
    pub dead_letter_url: Option<String>,
}

/// The queue a dead-letter queue redrives to: its name without `.dlq`.
pub fn source_of(dead_letter: &str) -> Option<&str> {
    dead_letter
        .strip_suffix(DLQ_SUFFIX)
        .filter(|s| !s.is_empty())
}

pub fn queue_rows(queues: Vec<(String, QueueStats)>) -> Vec<QueueRow> {
    queues
        .into_iter()
        .map(|(name, s)| QueueRow {
            is_dead_letter: source_of(&name).is_some(),
            dead_letter_url: (s.dead_lettered > 0)
                .then(|| format!("/ui/queues/{}", encode(&format!("{name}{DLQ_SUFFIX}")))),
            visible: s.visible,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dead_lettered: s.dead_lettered,
            oldest_age: s.oldest_age.map_or_else(|| "–".into(), short_duration),
            url: format!("/ui/queues/{}", encode(&name)),
            name,
        })
        .collect()
}

async fn list(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
) -> Result<Response, WebError> {
    let bus = &state.app.bus;
    let mut queues = Vec::new();
    for info in bus.list_queues().await? {
        let stats = bus.stats(&info.name).await?;
        queues.push((info.name.as_str().to_owned(), stats));
    }
    let page = QueuesPage {
        rows: queue_rows(queues),
    };
    Ok(state
        .page(
            "queues/list.html",
            &signed.layout("queues", "Queues"),
            &page,
        )?
        .into_response())
}

/// What a queue's page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct QueuePage {
    pub row: QueueRow,
    pub redrive_to: Option<String>,
    pub messages: Vec<MessageView>,
    pub shown: usize,
    pub notice: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MessageView {
    pub id: String,
    pub sent_at: String,
    pub receive_count: u32,
    pub attributes: String,
    pub body: String,
    pub dead_letter: Option<String>,
}

pub fn message_views(messages: &[PeekedMessage], zone: Zone) -> Vec<MessageView> {
    messages
        .iter()
        .map(|m| {
            let body = String::from_utf8_lossy(&m.body);
            let mut shown: String = body.chars().take(MAX_BODY_CHARS).collect();
            if body.chars().count() > MAX_BODY_CHARS {
                shown.push_str(" …");
            }
            MessageView {
                id: m.id.to_string(),
                sent_at: zone.format(m.sent_at),
                receive_count: m.receive_count,
                attributes: m
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                body: shown,
                dead_letter: m.dead_letter.as_ref().map(|d| {
                    format!(
                        "from {} at {}: {}",
                        d.source_queue,
                        zone.format(d.moved_at),
                        d.reason
                    )
                }),
            }
        })
        .collect()
}

fn queue_name(raw: &str) -> Result<QueueName, WebError> {
    QueueName::parse(raw)
        .map_err(|e| WebError::NotFound(format!("No queue is called {raw:?}: {e}")))
}

async fn show(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<std::collections::HashMap<String, String>>, QueryRejection>,
) -> Result<Response, WebError> {
    let queue = queue_name(&name)?;
    let bus = &state.app.bus;
    let stats = bus.stats(&queue).await?;
    let messages = bus.peek(&queue, PEEK).await?;
    let notice = query
        .ok()
        .and_then(|q| q.get("moved").cloned())
        .map(|moved| format!("Moved {moved} messages back to their queue."));
    let row = queue_rows(vec![(name.clone(), stats)]).remove(0);
    let page = QueuePage {
        redrive_to: source_of(&name)
            .filter(|_| !messages.is_empty())
            .map(str::to_owned),
        shown: messages.len(),
        messages: message_views(&messages, signed.zone()),
        row,
        notice,
    };
    Ok(state
        .page("queues/show.html", &signed.layout("queues", name), &page)?
        .into_response())
}

#[derive(Debug, Serialize)]
struct RedriveConfirm {
    heading: String,
    question: String,
    action: String,
    button: &'static str,
    back_url: String,
    danger: bool,
}

async fn confirm_redrive(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let queue = queue_name(&name)?;
    let source = source_of(&name)
        .ok_or_else(|| WebError::BadRequest(format!("{name} is not a dead-letter queue.")))?;
    let stats = state.app.bus.stats(&queue).await?;
    let waiting = stats.visible + stats.delayed;
    let page = RedriveConfirm {
        heading: format!("Redrive {name}"),
        question: format!(
            "Move the {waiting} messages of {name} back to {source}, oldest first? \
             They will be delivered again."
        ),
        action: format!("/ui/queues/{}/redrive", encode(&name)),
        button: "Yes, redrive them",
        back_url: format!("/ui/queues/{}", encode(&name)),
        danger: false,
    };
    Ok(state
        .page(
            "confirm.html",
            &signed.layout("queues", page.heading.clone()),
            &page,
        )?
        .into_response())
}

async fn redrive(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let queue = queue_name(&name)?;
    let source = source_of(&name)
        .ok_or_else(|| WebError::BadRequest(format!("{name} is not a dead-letter queue.")))?;
    let moved = state
        .app
        .bus
        .redrive(&queue, &queue_name(source)?, None)
        .await?;
    tracing::info!(dead_letter = %name, to = source, moved, by = %signed.session.user.email, "redriven from the web UI");
    Ok(Redirect::to(&format!("/ui/queues/{}?moved={moved}", encode(&name))).into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use herald_bus::{DeadLetterInfo, MessageId};

    use herald_core::Timestamp;

    use super::*;

    #[test]
    fn dead_letter_queues_name_their_source() {
        assert_eq!(
            source_of("brand-alert-emails.dlq"),
            Some("brand-alert-emails")
        );
        assert_eq!(source_of("brand-alert-emails"), None);
        assert_eq!(source_of(".dlq"), None);
    }

    #[test]
    fn rows_show_counts_age_and_a_link_to_a_non_empty_dlq() {
        let rows = queue_rows(vec![
            (
                "emails".into(),
                QueueStats {
                    visible: 3,
                    in_flight: 1,
                    delayed: 2,
                    dead_lettered: 4,
                    oldest_age: Some(Duration::from_secs(125)),
                },
            ),
            ("emails.dlq".into(), QueueStats::default()),
        ]);
        assert_eq!(rows[0].oldest_age, "2m 5s");
        assert_eq!(rows[0].url, "/ui/queues/emails");
        assert_eq!(
            rows[0].dead_letter_url.as_deref(),
            Some("/ui/queues/emails.dlq")
        );
        assert!(!rows[0].is_dead_letter);
        assert!(rows[1].is_dead_letter);
        assert_eq!(rows[1].oldest_age, "–");
        assert_eq!(rows[1].dead_letter_url, None);
    }

    #[test]
    fn peeked_messages_show_why_they_were_dead_lettered_and_cut_long_bodies() {
        let message = PeekedMessage {
            id: MessageId("m1".into()),
            body: Bytes::from("x".repeat(MAX_BODY_CHARS + 5)),
            attributes: [("alert_id".to_owned(), "a1".to_owned())].into(),
            group: None,
            receive_count: 5,
            sent_at: Timestamp(0),
            visible_at: Timestamp(0),
            dead_letter: Some(DeadLetterInfo {
                source_queue: "emails".into(),
                reason: "max receives".into(),
                moved_at: Timestamp(60_000),
            }),
        };
        let views = message_views(&[message], Zone::utc());
        assert_eq!(views[0].attributes, "alert_id=a1");
        assert!(views[0].body.ends_with(" …"));
        assert_eq!(views[0].body.chars().count(), MAX_BODY_CHARS + 2);
        assert_eq!(
            views[0].dead_letter.as_deref(),
            Some("from emails at 1970-01-01 00:01: max receives")
        );
    }
}
