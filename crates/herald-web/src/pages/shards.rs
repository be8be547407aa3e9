//! Shards for operators: a customer's placement and sharding history, the
//! events held per route while customers migrate, and where unroutable
//! events wait. Read through the store's `ShardingStore` and `HoldStore`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use herald_core::sharding::CustomerId;
use herald_store::holds::RouteHolds;
use herald_store::page::PageRequest;
use herald_store::sharding::{CustomerPlacement, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::auth::Signed;
use crate::time::Zone;
use crate::{WebError, WebState};

/// Sharding events a customer's history shows.
const HISTORY: u32 = 100;
/// The queue events of unknown customers go to by default.
const UNROUTABLE_QUEUE: &str = "unroutable";

pub fn routes() -> Router<WebState> {
    Router::new().route("/ui/shards", get(shards))
}

#[derive(Debug, Default, Deserialize)]
struct ShardsQuery {
    #[serde(default)]
    customer: String,
}

/// What the shards page is given.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct ShardsPage {
    pub shards: Vec<String>,
    pub holds: Vec<HoldRow>,
    pub unroutable_url: String,
    pub customer: String,
    pub error: Option<String>,
    pub placement: Option<PlacementView>,
    pub history: Vec<HistoryRow>,
    pub zone: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct HoldRow {
    pub route: String,
    pub events: u64,
    pub customers: u64,
    pub oldest_held_at: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PlacementView {
    pub placement: String,
    pub last_event_id: String,
    pub last_occurred_at: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct HistoryRow {
    pub seq: i64,
    pub id: String,
    pub event: String,
    pub occurred_at: String,
    pub outcome: String,
    pub placement: String,
}

pub fn hold_rows(holds: &[RouteHolds], zone: Zone) -> Vec<HoldRow> {
    holds
        .iter()
        .map(|h| HoldRow {
            route: h.route.clone(),
            events: h.events,
            customers: h.customers,
            oldest_held_at: zone.format(h.oldest_held_at),
        })
        .collect()
}

pub fn placement_view(p: &CustomerPlacement, zone: Zone) -> PlacementView {
    PlacementView {
        placement: p.placement.to_string(),
        last_event_id: p
            .last_event_id
            .as_ref()
            .map_or_else(|| "–".into(), ToString::to_string),
        last_occurred_at: p
            .last_occurred_at
            .map_or_else(|| "–".into(), |t| zone.format(t)),
    }
}

pub fn history_rows(events: &[RecordedEvent], zone: Zone) -> Vec<HistoryRow> {
    events
        .iter()
        .map(|e| HistoryRow {
            seq: e.seq,
            id: e.event.id.to_string(),
            event: e.event.kind.to_string(),
            occurred_at: zone.format(e.event.occurred_at),
            outcome: format!("{:?}", e.outcome).to_lowercase(),
            placement: e.placement.to_string(),
        })
        .collect()
}

async fn shards(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<ShardsQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let store = &state.app.store;
    let zone = signed.zone();
    let mut page = ShardsPage {
        shards: store
            .sharding()
            .shards()
            .await?
            .iter()
            .map(ToString::to_string)
            .collect(),
        holds: hold_rows(&store.holds().summary().await?, zone),
        unroutable_url: format!("/ui/queues/{UNROUTABLE_QUEUE}"),
        customer: query.customer.trim().to_owned(),
        zone: zone.name(),
        ..ShardsPage::default()
    };
    let mut status = StatusCode::OK;
    if !page.customer.is_empty() {
        match CustomerId::parse(page.customer.as_str()) {
            Err(e) => {
                status = StatusCode::UNPROCESSABLE_ENTITY;
                page.error = Some(e.to_string());
            }
            Ok(customer) => {
                let placement = store.sharding().placement(&customer).await?;
                let history = store
                    .sharding()
                    .history(&customer, &PageRequest::first(HISTORY))
                    .await?;
                page.placement = Some(placement_view(&placement, zone));
                page.history = history_rows(&history.items, zone);
            }
        }
    }
    let html = state.page("shards.html", &signed.layout("shards", "Shards"), &page)?;
    Ok((status, html).into_response())
}

#[cfg(test)]
mod tests {
    use herald_core::Timestamp;

    use super::*;

    #[test]
    fn holds_show_per_route_counts_and_age_in_the_users_zone() {
        let rows = hold_rows(
            &[RouteHolds {
                route: "shards".into(),
                events: 12,
                customers: 3,
                oldest_held_at: Timestamp(0),
            }],
            Zone::named(Some("Europe/Paris")),
        );
        assert_eq!(rows[0].oldest_held_at, "1970-01-01 01:00");
        assert_eq!((rows[0].events, rows[0].customers), (12, 3));
    }
}
