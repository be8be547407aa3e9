//! Member look-up by address: the member, their brand affinities, their
//! subscriptions, whether the address is suppressed, and the alerts they
//! received (from the send log).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use herald_core::catalog::normalize_email;
use herald_store::members::{Affinity, Member, MemberFilter, Subscription, Suppression};
use herald_store::page::PageRequest;
use serde::{Deserialize, Serialize};

use super::{event_lines, read_all, EventLine, EVENT_TAIL};
use crate::auth::Signed;
use crate::time::Zone;
use crate::{WebError, WebState};
use herald_store::brand_alerts::ReceivedAlert;
use herald_store::email_events::StoredEmailEvent;

const MAX_BRANDS: usize = 2000;
/// Received alerts the page lists.
const RECEIVED_SHOWN: u32 = 50;

pub fn routes() -> Router<WebState> {
    Router::new().route("/ui/members", get(lookup))
}

#[derive(Debug, Default, Deserialize)]
struct LookupQuery {
    #[serde(default)]
    email: String,
}

/// What the member page is given.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct MemberPage {
    pub email: String,
    pub searched: bool,
    pub member: Option<MemberView>,
    pub affinities: Vec<AffinityRow>,
    pub subscriptions: Vec<SubscriptionRow>,
    pub suppression: Option<String>,
    /// The alerts the member was sent, the latest first.
    pub received: Vec<ReceivedRow>,
    /// The latest provider events for the address.
    pub events: Vec<EventLine>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ReceivedRow {
    pub alert_id: String,
    pub name: String,
    pub subject: String,
    pub sent_at: String,
    pub possible_duplicate: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MemberView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub status: &'static str,
    pub locale: String,
    pub time_zone: String,
    pub customer_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AffinityRow {
    pub brand: String,
    pub score: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SubscriptionRow {
    pub email_type: String,
    pub subscribed: bool,
    pub source: String,
    pub updated_at: String,
}

pub struct MemberFacts<'a> {
    pub member: &'a Member,
    pub affinities: &'a [Affinity],
    pub subscriptions: &'a [Subscription],
    pub suppression: Option<&'a Suppression>,
    pub brand_names: &'a HashMap<String, String>,
    pub events: &'a [StoredEmailEvent],
    pub received: &'a [ReceivedAlert],
}

/// Affinities strongest first.
pub fn member_page(email: &str, facts: &MemberFacts<'_>, zone: Zone) -> MemberPage {
    let m = facts.member;
    let mut affinities: Vec<&Affinity> = facts.affinities.iter().collect();
    affinities.sort_by(|a, b| b.score.total_cmp(&a.score));
    MemberPage {
        email: email.to_owned(),
        searched: true,
        member: Some(MemberView {
            id: m.id.clone(),
            email: m.email.clone(),
            name: m.name.clone().unwrap_or_default(),
            status: m.status.as_str(),
            locale: m.locale.clone().unwrap_or_default(),
            time_zone: m.time_zone.clone().unwrap_or_default(),
            customer_id: m.customer_id.clone().unwrap_or_default(),
        }),
        affinities: affinities
            .into_iter()
            .map(|a| AffinityRow {
                brand: facts
                    .brand_names
                    .get(&a.brand_id)
                    .cloned()
                    .unwrap_or_else(|| a.brand_id.clone()),
                score: format!("{:.2}", a.score),
            })
            .collect(),
        subscriptions: facts
            .subscriptions
            .iter()
            .map(|s| SubscriptionRow {
                email_type: s.email_type.clone(),
                subscribed: s.subscribed,
                source: s.source.clone(),
                updated_at: zone.format(s.updated_at),
            })
            .collect(),
        suppression: facts.suppression.map(|s| {
            format!(
                "{} since {} ({}{})",
                s.reason.as_str(),
                zone.format(s.since),
                s.source,
                s.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )
        }),
        received: facts
            .received
            .iter()
            .map(|r| ReceivedRow {
                alert_id: r.alert_id.clone(),
                name: r.name.clone(),
                subject: r.subject.clone(),
                sent_at: zone.format(r.sent_at),
                possible_duplicate: r.possible_duplicate,
            })
            .collect(),
        events: event_lines(facts.events, zone),
    }
}

async fn lookup(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let email = query.map(|Query(q)| q.email).unwrap_or_default();
    let email = email.trim().to_owned();
    let mut status = StatusCode::OK;
    let page = if email.is_empty() {
        MemberPage::default()
    } else {
        let members = state.app.store.members();
        let found = members
            .list(&MemberFilter {
                email: Some(normalize_email(&email)),
                page: PageRequest::first(1),
            })
            .await?
            .items
            .into_iter()
            .next();
        let suppression = members.suppression(&email).await?;
        match found {
            None => {
                status = StatusCode::NOT_FOUND;
                MemberPage {
                    email: email.clone(),
                    searched: true,
                    suppression: suppression.map(|s| s.reason.as_str().to_owned()),
                    ..MemberPage::default()
                }
            }
            Some(member) => {
                let affinities = members.affinities(&member.id).await?;
                let subscriptions = members.subscriptions(&member.id).await?;
                let catalog = state.app.store.catalog();
                let brand_names: HashMap<String, String> =
                    read_all(MAX_BRANDS, |p| async move { catalog.list_brands(&p).await })
                        .await?
                        .into_iter()
                        .map(|b| (b.id, b.name))
                        .collect();
                let events = state
                    .app
                    .store
                    .email_events()
                    .recent_for_address(&member.email, EVENT_TAIL)
                    .await?;
                let received = state
                    .app
                    .store
                    .brand_alerts()
                    .received_by_member(&member.id, RECEIVED_SHOWN)
                    .await?;
                let facts = MemberFacts {
                    events: &events,
                    received: &received,
                    member: &member,
                    affinities: &affinities,
                    subscriptions: &subscriptions,
                    suppression: suppression.as_ref(),
                    brand_names: &brand_names,
                };
                member_page(&email, &facts, signed.zone())
            }
        }
    };
    let html = state.page("members.html", &signed.layout("members", "Members"), &page)?;
    Ok((status, html).into_response())
}

#[cfg(test)]
mod tests {
    use herald_core::catalog::{MemberStatus, SuppressionReason};
    use herald_core::Timestamp;

    use super::*;

    #[test]
    fn the_member_page_shows_strongest_affinities_first_with_brand_names() {
        let member = Member {
            id: "m1".into(),
            email: "Ann@example.com".into(),
            email_normalized: "ann@example.com".into(),
            name: Some("Ann".into()),
            first_name: None,
            locale: None,
            time_zone: Some("Europe/Paris".into()),
            status: MemberStatus::Active,
            customer_id: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        let affinity = |brand: &str, score| Affinity {
            member_id: "m1".into(),
            brand_id: brand.into(),
            score,
            updated_at: Timestamp(0),
        };
        let affinities = [affinity("atlas", 0.4), affinity("fjord", 0.9)];
        let suppression = Suppression {
            address: "ann@example.com".into(),
            reason: SuppressionReason::HardBounce,
            source: "sendgrid".into(),
            detail: Some("550".into()),
            since: Timestamp(0),
        };
        let names = HashMap::from([("fjord".to_owned(), "Fjord Footwear".to_owned())]);
        let facts = MemberFacts {
            member: &member,
            affinities: &affinities,
            subscriptions: &[],
            suppression: Some(&suppression),
            brand_names: &names,
            events: &[],
            received: &[ReceivedAlert {
                alert_id: "alert-1".into(),
                name: "Boots".into(),
                subject: "Boots on sale".into(),
                sent_at: Timestamp(1_714_557_600_000),
                possible_duplicate: true,
            }],
        };
        let page = member_page("ann@example.com", &facts, Zone::utc());
        let shown: Vec<_> = page
            .affinities
            .iter()
            .map(|a| (a.brand.as_str(), a.score.as_str()))
            .collect();
        assert_eq!(shown, [("Fjord Footwear", "0.90"), ("atlas", "0.40")]);
        assert_eq!(page.member.unwrap().status, "active");
        let suppressed = page.suppression.unwrap();
        assert!(
            suppressed.starts_with(SuppressionReason::HardBounce.as_str()),
            "{suppressed}"
        );
        assert!(suppressed.ends_with("(sendgrid: 550)"), "{suppressed}");
        assert_eq!(
            page.received,
            [ReceivedRow {
                alert_id: "alert-1".into(),
                name: "Boots".into(),
                subject: "Boots on sale".into(),
                sent_at: "2024-05-01 10:00".into(),
                possible_duplicate: true,
            }]
        );
    }
}
