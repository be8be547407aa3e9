//! Brand alerts: the list, the create and edit form, the alert's page with
//! its statistics and chart, the live preview, test sends, and the
//! lifecycle actions behind a confirmation.
//!
//! Every change goes through the same store calls as the API
//! (`create`, `update_draft`, `apply`, `delete_draft`) and previews through
//! the same composer calls, so the rules (validation, lifecycle, audience)
//! are the store's and the composer's, not this page's.

use std::collections::{HashMap, HashSet};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use herald_alerts::PreviewError;
use herald_core::alert::send_time_passed;
use herald_core::alert::{AlertAction, AlertState};
use herald_core::email_event::EventType;
use herald_core::{Clock, SystemClock, Timestamp};
use herald_store::brand_alerts::{
    AlertStats, BrandAlert, BrandAlertFilter, BrandAlertPatch, NewBrandAlert,
};
use herald_store::catalog::{Brand, Sale, SaleFilter, Template};
use herald_store::members::MemberFilter;
use herald_store::page::PageRequest;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::{event_lines, field_error, read_all, EventLine, FieldErrors, EVENT_TAIL};
use crate::auth::{encode, Signed};
use crate::chart::{bar_chart, line_chart, Axes, Bar, Series};
use crate::form::FormData;
use crate::time::Zone;
use crate::{WebError, WebState};
use herald_store::email_events::{EventTimeline, StoredEmailEvent};

/// Alerts per list page.
pub const PAGE_SIZE: usize = 25;
/// The most store pages one filtered list page reads through to fill
/// itself when searching by brand.
const MAX_SCANNED_PAGES: usize = 20;
/// Choices offered by the form.
const MAX_CHOICES: usize = 2000;
/// Members the random preview picks among.
const RANDOM_POOL: u32 = 200;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/ui/alerts", get(list))
        .route("/ui/alerts/new", get(new_form).post(create))
        .route("/ui/alerts/{id}", get(show))
        .route("/ui/alerts/{id}/edit", get(edit_form).post(update))
        .route("/ui/alerts/{id}/preview", get(preview))
        .route("/ui/alerts/{id}/test-send", post(test_send))
        .route("/ui/alerts/{id}/do/{action}", get(confirm).post(act))
}

// ---------------------------------------------------------------- list

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct ListQuery {
    #[serde(default)]
    pub state: String,
    /// Brand id or name, or part of one.
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub cursor: String,
}

/// What the list page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct ListPage {
    pub query: ListQuery,
    pub states: Vec<&'static str>,
    pub rows: Vec<AlertRow>,
    pub next_url: Option<String>,
    pub errors: FieldErrors,
    pub zone: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AlertRow {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub state: &'static str,
    pub send_at: String,
    pub brands: String,
    pub audience: Option<u64>,
}

/// A row per alert; brands are named through the sales they list.
pub fn alert_rows(
    alerts: &[BrandAlert],
    brand_of_sale: &HashMap<String, String>,
    zone: Zone,
) -> Vec<AlertRow> {
    alerts
        .iter()
        .map(|a| {
            let mut brands: Vec<&str> = Vec::new();
            for sale in &a.sale_ids {
                if let Some(brand) = brand_of_sale.get(sale) {
                    if !brands.contains(&brand.as_str()) {
                        brands.push(brand);
                    }
                }
            }
            AlertRow {
                id: a.id.clone(),
                name: a.name.clone(),
                subject: a.subject.clone(),
                state: a.state.as_str(),
                send_at: zone.format(a.send_at),
                brands: brands.join(", "),
                audience: a.build.audience_size,
            }
        })
        .collect()
}

/// The brands a search matches: by id or name, ignoring case.
pub fn matching_brands<'a>(brands: &'a [Brand], search: &str) -> HashSet<&'a str> {
    let needle = search.trim().to_lowercase();
    brands
        .iter()
        .filter(|b| {
            b.id.to_lowercase().contains(&needle) || b.name.to_lowercase().contains(&needle)
        })
        .map(|b| b.id.as_str())
        .collect()
}

/// The list's link to the page after `cursor`, keeping the filters.
pub fn next_url(query: &ListQuery, cursor: &str) -> String {
    format!(
        "/ui/alerts?state={}&q={}&from={}&until={}&cursor={}",
        encode(&query.state),
        encode(&query.q),
        encode(&query.from),
        encode(&query.until),
        encode(cursor)
    )
}

async fn list(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Query(query): Query<ListQuery>,
) -> Result<Response, WebError> {
    let zone = signed.zone();
    let mut errors = FieldErrors::new();
    let mut filter = BrandAlertFilter {
        page: PageRequest {
            after: Some(query.cursor.clone()).filter(|c| !c.is_empty()),
            limit: PAGE_SIZE as u32,
        },
        ..BrandAlertFilter::default()
    };
    if !query.state.is_empty() {
        match query.state.parse::<AlertState>() {
            Ok(s) => filter.state = Some(s),
            Err(e) => {
                errors.insert("state".into(), e.to_string());
            }
        }
    }
    for (field, text, slot) in [
        ("from", &query.from, &mut filter.send_from),
        ("until", &query.until, &mut filter.send_until),
    ] {
        if !text.is_empty() {
            match zone.parse_day(text) {
                Ok(t) => *slot = Some(t),
                Err(e) => {
                    errors.insert(field.into(), e);
                }
            }
        }
    }
    if let Some(until) = filter.send_until {
        // The "until" day is included.
        filter.send_until = Some(until.plus(std::time::Duration::from_secs(24 * 3600)));
    }
    let catalog = state.app.store.catalog();
    let sales = read_all(MAX_CHOICES, |p| async move {
        catalog
            .list_sales(&SaleFilter {
                brand_id: None,
                page: p,
            })
            .await
    })
    .await?;
    let brands = read_all(
        MAX_CHOICES,
        |p| async move { catalog.list_brands(&p).await },
    )
    .await?;
    let brand_names: HashMap<&str, &str> = brands
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect();
    let brand_of_sale: HashMap<String, String> = sales
        .iter()
        .map(|s| {
            let name = brand_names
                .get(s.brand_id.as_str())
                .copied()
                .unwrap_or(&s.brand_id);
            (s.id.clone(), name.to_owned())
        })
        .collect();

    let mut alerts = Vec::new();
    let mut next_cursor = None;
    if errors.is_empty() {
        let wanted: Option<HashSet<&str>> = (!query.q.trim().is_empty()).then(|| {
            let brand_ids = matching_brands(&brands, &query.q);
            sales
                .iter()
                .filter(|s| brand_ids.contains(s.brand_id.as_str()))
                .map(|s| s.id.as_str())
                .collect()
        });
        for _ in 0..MAX_SCANNED_PAGES {
            // Whole store pages are kept, so the cursor stays exact; a
            // filtered page may show a few more rows than PAGE_SIZE.
            let page = state.app.store.brand_alerts().list(&filter).await?;
            alerts.extend(page.items.into_iter().filter(|alert| {
                wanted
                    .as_ref()
                    .is_none_or(|w| alert.sale_ids.iter().any(|s| w.contains(s.as_str())))
            }));
            next_cursor = page.next_cursor;
            if alerts.len() >= PAGE_SIZE || next_cursor.is_none() {
                break;
            }
            filter.page.after = next_cursor.clone();
        }
    }
    let page = ListPage {
        rows: alert_rows(&alerts, &brand_of_sale, zone),
        next_url: next_cursor.map(|c| next_url(&query, &c)),
        states: AlertState::ALL.iter().map(|s| s.as_str()).collect(),
        errors,
        zone: zone.name(),
        query,
    };
    let status = if page.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let html = state.page(
        "alerts/list.html",
        &signed.layout("alerts", "Brand alerts"),
        &page,
    )?;
    Ok((status, html).into_response())
}

// ---------------------------------------------------------------- form

/// What was typed into the form, kept to show it again beside errors.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FormValues {
    pub name: String,
    pub subject: String,
    pub template_id: String,
    pub sale_ids: Vec<String>,
    pub send_at: String,
    pub affinity_threshold: String,
    pub version: String,
}

impl FormValues {
    pub fn of_alert(alert: &BrandAlert, zone: Zone) -> Self {
        Self {
            name: alert.name.clone(),
            subject: alert.subject.clone(),
            template_id: alert.template_id.clone(),
            sale_ids: alert.sale_ids.clone(),
            send_at: zone.input_value(alert.send_at),
            affinity_threshold: alert.affinity_threshold.to_string(),
            version: alert.version.to_string(),
        }
    }

    pub fn from_form(form: &FormData) -> Self {
        Self {
            name: form.get("name").to_owned(),
            subject: form.get("subject").to_owned(),
            template_id: form.get("template_id").trim().to_owned(),
            sale_ids: form.all("sale_ids"),
            send_at: form.get("send_at").trim().to_owned(),
            affinity_threshold: form.get("affinity_threshold").trim().to_owned(),
            version: form.get("version").trim().to_owned(),
        }
    }

    /// The alert the form describes, or the fields this page can tell are
    /// wrong before the store sees it (times and numbers it must parse).
    pub fn parse(&self, zone: Zone) -> Result<NewBrandAlert, FieldErrors> {
        let mut errors = FieldErrors::new();
        let send_at = zone
            .parse_input(&self.send_at)
            .map_err(|e| errors.insert("send_at".into(), e))
            .ok();
        let threshold = self
            .affinity_threshold
            .parse::<f64>()
            .map_err(|_| {
                errors.insert(
                    "affinity_threshold".into(),
                    format!("{:?} is not a number such as 0.6", self.affinity_threshold),
                )
            })
            .ok();
        match (send_at, threshold) {
            (Some(send_at), Some(affinity_threshold)) => Ok(NewBrandAlert {
                name: self.name.clone(),
                subject: self.subject.clone(),
                template_id: self.template_id.clone(),
                send_at,
                affinity_threshold,
                transport: None,
                sale_ids: self.sale_ids.clone(),
            }),
            _ => Err(errors),
        }
    }
}

/// What the create and edit form is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct FormPage {
    pub heading: String,
    pub action: String,
    pub cancel_url: String,
    pub values: FormValues,
    pub errors: FieldErrors,
    /// A failure not tied to one field (the alert changed meanwhile, ...).
    pub error: Option<String>,
    pub templates: Vec<Choice>,
    pub brands: Vec<BrandChoice>,
    pub zone: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Choice {
    pub id: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BrandChoice {
    pub id: String,
    pub name: String,
    pub sales: Vec<Choice>,
}

/// Sales grouped under their brands (brands without sales left out), the
/// form's current choices ticked.
pub fn brand_choices(brands: &[Brand], sales: &[Sale], chosen: &[String]) -> Vec<BrandChoice> {
    brands
        .iter()
        .filter_map(|b| {
            let sales: Vec<Choice> = sales
                .iter()
                .filter(|s| s.brand_id == b.id)
                .map(|s| Choice {
                    id: s.id.clone(),
                    label: s.headline.clone(),
                    selected: chosen.contains(&s.id),
                })
                .collect();
            (!sales.is_empty()).then(|| BrandChoice {
                id: b.id.clone(),
                name: b.name.clone(),
                sales,
            })
        })
        .collect()
}

pub fn template_choices(templates: &[Template], chosen: &str) -> Vec<Choice> {
    templates
        .iter()
        .map(|t| Choice {
            id: t.id.clone(),
            label: t.name.clone(),
            selected: t.id == chosen,
        })
        .collect()
}

struct FormTarget {
    heading: String,
    action: String,
    cancel_url: String,
}

async fn form_page(
    state: &WebState,
    signed: &Signed,
    target: FormTarget,
    values: FormValues,
    errors: FieldErrors,
    error: Option<String>,
) -> Result<Response, WebError> {
    let catalog = state.app.store.catalog();
    let brands = read_all(
        MAX_CHOICES,
        |p| async move { catalog.list_brands(&p).await },
    )
    .await?;
    let sales = read_all(MAX_CHOICES, |p| async move {
        catalog
            .list_sales(&SaleFilter {
                brand_id: None,
                page: p,
            })
            .await
    })
    .await?;
    let templates = read_all(
        MAX_CHOICES,
        |p| async move { catalog.list_templates(&p).await },
    )
    .await?;
    let status = if errors.is_empty() && error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = FormPage {
        heading: target.heading,
        action: target.action,
        cancel_url: target.cancel_url,
        brands: brand_choices(&brands, &sales, &values.sale_ids),
        templates: template_choices(&templates, &values.template_id),
        values,
        errors,
        error,
        zone: signed.zone().name(),
    };
    let html = state.page(
        "alerts/form.html",
        &signed.layout("alerts", page.heading.clone()),
        &page,
    )?;
    Ok((status, html).into_response())
}

fn new_target() -> FormTarget {
    FormTarget {
        heading: "New brand alert".into(),
        action: "/ui/alerts/new".into(),
        cancel_url: "/ui/alerts".into(),
    }
}

fn edit_target(id: &str) -> FormTarget {
    FormTarget {
        heading: "Edit brand alert".into(),
        action: format!("/ui/alerts/{id}/edit"),
        cancel_url: format!("/ui/alerts/{id}"),
    }
}

async fn new_form(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
) -> Result<Response, WebError> {
    let zone = signed.zone();
    let tomorrow = SystemClock
        .now()
        .plus(std::time::Duration::from_secs(24 * 3600));
    let values = FormValues {
        send_at: zone.input_value(tomorrow),
        affinity_threshold: "0.5".into(),
        ..FormValues::default()
    };
    form_page(
        &state,
        &signed,
        new_target(),
        values,
        FieldErrors::new(),
        None,
    )
    .await
}

async fn create(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let values = FormValues::from_form(&FormData::parse(&body));
    let new = match values.parse(signed.zone()) {
        Ok(new) => new,
        Err(errors) => return form_page(&state, &signed, new_target(), values, errors, None).await,
    };
    match state.app.store.brand_alerts().create(&new).await {
        Ok(alert) => {
            Ok(Redirect::to(&format!("/ui/alerts/{}?done=created", alert.id)).into_response())
        }
        Err(e) => {
            let mut errors = FieldErrors::new();
            field_error(e, &mut errors)?;
            form_page(&state, &signed, new_target(), values, errors, None).await
        }
    }
}

async fn find(state: &WebState, id: &str) -> Result<BrandAlert, WebError> {
    state
        .app
        .store
        .brand_alerts()
        .get(id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no brand alert {id}.")))
}

async fn edit_form(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let alert = find(&state, &id).await?;
    let error = (!alert.state.is_editable()).then(|| {
        format!(
            "This alert is {}; only drafts can be edited. Unschedule it first.",
            alert.state
        )
    });
    let values = FormValues::of_alert(&alert, signed.zone());
    form_page(
        &state,
        &signed,
        edit_target(&id),
        values,
        FieldErrors::new(),
        error,
    )
    .await
}

async fn update(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let values = FormValues::from_form(&FormData::parse(&body));
    let new = match values.parse(signed.zone()) {
        Ok(new) => new,
        Err(errors) => {
            return form_page(&state, &signed, edit_target(&id), values, errors, None).await
        }
    };
    let patch = BrandAlertPatch {
        name: Some(new.name),
        subject: Some(new.subject),
        template_id: Some(new.template_id),
        send_at: Some(new.send_at),
        affinity_threshold: Some(new.affinity_threshold),
        transport: None,
        sale_ids: Some(new.sale_ids),
    };
    let expected = values.version.parse::<i64>().ok();
    match state
        .app
        .store
        .brand_alerts()
        .update_draft(&id, &patch, expected)
        .await
    {
        Ok(alert) => {
            // The preview reads content through the composer's cache.
            state.app.composer.forget(&alert.id);
            Ok(Redirect::to(&format!("/ui/alerts/{id}?done=saved")).into_response())
        }
        Err(herald_store::StoreError::Conflict { what }) => {
            form_page(
                &state,
                &signed,
                edit_target(&id),
                values,
                FieldErrors::new(),
                Some(what),
            )
            .await
        }
        Err(e) => {
            let mut errors = FieldErrors::new();
            field_error(e, &mut errors)?;
            form_page(&state, &signed, edit_target(&id), values, errors, None).await
        }
    }
}

// ---------------------------------------------------------------- alert page

/// What the alert's page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct AlertPage {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub state: &'static str,
    pub send_at: String,
    pub zone: &'static str,
    pub affinity_threshold: f64,
    pub template: String,
    pub sales: Vec<SaleLine>,
    pub failure_reason: Option<String>,
    pub editable: bool,
    pub actions: Vec<ActionButton>,
    pub stats: StatsView,
    pub chart: String,
    /// Delivered, opened, clicked and bounced over time.
    pub timeline: TimelineView,
    pub notice: Option<String>,
    /// Following progress: the page reloads itself.
    pub live: bool,
    pub test_send: TestSendView,
    /// The latest provider events of the alert, newest first.
    pub events: Vec<EventLine>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SaleLine {
    pub brand: String,
    pub headline: String,
}

#[derive(Debug, Serialize, PartialEq, Clone, Copy)]
pub struct ActionButton {
    pub action: &'static str,
    pub label: &'static str,
    pub danger: bool,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct StatsView {
    pub audience_size: Option<u64>,
    pub enqueued: u64,
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub skipped: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    pub possible_duplicates: u64,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub bounced: u64,
    /// Handled messages out of the audience, once the audience is known.
    pub progress_percent: Option<u8>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct TestSendView {
    pub addresses: String,
    pub error: Option<String>,
    pub results: Vec<TestSendLine>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TestSendLine {
    pub address: String,
    pub sent: bool,
    pub detail: String,
}

/// The lifecycle actions a person may take from a state: those the core's
/// lifecycle allows (delete is for drafts, as the store's `delete_draft`).
pub fn actions_for(state: AlertState) -> Vec<ActionButton> {
    let mut actions = Vec::new();
    for (action, name, label, danger) in [
        (AlertAction::Schedule, "schedule", "Schedule", false),
        (AlertAction::Unschedule, "unschedule", "Unschedule", false),
        (AlertAction::Cancel, "cancel", "Cancel alert", true),
    ] {
        if state.apply(action).is_ok() {
            actions.push(ActionButton {
                action: name,
                label,
                danger,
            });
        }
    }
    if state.is_editable() {
        actions.push(ActionButton {
            action: "delete",
            label: "Delete draft",
            danger: true,
        });
    }
    actions
}

pub fn stats_view(stats: &AlertStats) -> StatsView {
    let event = |t: EventType| stats.events.get(t.as_str()).copied().unwrap_or(0);
    let handled = stats.sent + stats.failed + stats.skipped;
    StatsView {
        audience_size: stats.audience_size,
        enqueued: stats.enqueued,
        queued: stats.queued,
        sent: stats.sent,
        failed: stats.failed,
        skipped: stats.skipped,
        excluded_unsubscribed: stats.excluded_unsubscribed,
        excluded_suppressed: stats.excluded_suppressed,
        excluded_cadence: stats.excluded_cadence,
        possible_duplicates: stats.possible_duplicates,
        delivered: event(EventType::Delivered),
        opened: event(EventType::Open),
        clicked: event(EventType::Click),
        bounced: event(EventType::Bounce),
        // An empty audience is all handled.
        progress_percent: stats
            .audience_size
            .map(|size| (handled.min(size) * 100).checked_div(size).unwrap_or(100) as u8),
    }
}

pub fn delivery_chart(stats: &StatsView) -> String {
    let bars = [
        ("Sent", stats.sent),
        ("Delivered", stats.delivered),
        ("Opened", stats.opened),
        ("Clicked", stats.clicked),
        ("Bounced", stats.bounced),
    ]
    .map(|(label, value)| Bar {
        label: label.into(),
        value,
    });
    bar_chart(
        "Sent, delivered, opened, clicked and bounced messages",
        &bars,
    )
}

/// The event types the chart over time follows, with their labels.
const TIMELINE_TYPES: [(EventType, &str); 4] = [
    (EventType::Delivered, "Delivered"),
    (EventType::Open, "Opened"),
    (EventType::Click, "Clicked"),
    (EventType::Bounce, "Bounced"),
];

/// The chart of an alert's events over time and its text alternative.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct TimelineView {
    /// "minute", "hour" or "day".
    pub bucket: &'static str,
    /// Empty when no followed event has arrived yet.
    pub chart: String,
    /// The buckets with any followed event, oldest first.
    pub rows: Vec<TimelineRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TimelineRow {
    pub at: String,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub bounced: u64,
}

/// Every bucket from the first to the last followed event (empty ones as
/// zeros, so the lines keep time), charted, and the non-empty ones listed.
pub fn timeline_view(timeline: &EventTimeline, zone: Zone) -> TimelineView {
    let width = timeline.bucket.millis();
    let followed: Vec<_> = timeline
        .counts
        .iter()
        .filter_map(|c| {
            TIMELINE_TYPES
                .iter()
                .position(|(t, _)| t.as_str() == c.event_type)
                .map(|series| (c.bucket_start.millis(), series, c.count))
        })
        .collect();
    let (Some(first), Some(last)) = (
        followed.iter().map(|f| f.0).min(),
        followed.iter().map(|f| f.0).max(),
    ) else {
        return TimelineView {
            bucket: timeline.bucket.as_str(),
            ..TimelineView::default()
        };
    };
    let points = ((last - first) / width + 1) as usize;
    let mut values = vec![vec![0u64; points]; TIMELINE_TYPES.len()];
    for (start, series, count) in followed {
        values[series][((start - first) / width) as usize] += count;
    }
    let labels: Vec<String> = (0..points)
        .map(|i| zone.format(Timestamp(first + i as i64 * width)))
        .collect();
    let rows = (0..points)
        .filter(|&i| values.iter().any(|v| v[i] > 0))
        .map(|i| TimelineRow {
            at: labels[i].clone(),
            delivered: values[0][i],
            opened: values[1][i],
            clicked: values[2][i],
            bounced: values[3][i],
        })
        .collect();
    let series: Vec<Series> = TIMELINE_TYPES
        .iter()
        .zip(values)
        .map(|((_, label), values)| Series {
            label: (*label).to_owned(),
            values,
        })
        .collect();
    let x_title = format!("Time ({})", zone.name());
    let y_title = format!("Events per {}", timeline.bucket.as_str());
    let chart = line_chart(
        "Delivered, opened, clicked and bounced messages over time",
        &Axes {
            x_title: &x_title,
            y_title: &y_title,
            x_labels: &labels,
        },
        &series,
    );
    TimelineView {
        bucket: timeline.bucket.as_str(),
        chart,
        rows,
    }
}

fn notice(done: &str) -> Option<String> {
    let text = match done {
        "created" => "Draft created.",
        "saved" => "Changes saved.",
        "schedule" => "Scheduled: it is sent at its send time.",
        "unschedule" => "Moved back to draft.",
        "cancel" => "Cancelled.",
        _ => return None,
    };
    Some(text.to_owned())
}

pub struct AlertFacts<'a> {
    pub alert: &'a BrandAlert,
    pub stats: &'a AlertStats,
    pub template: Option<&'a Template>,
    pub sales: &'a [(Sale, Option<Brand>)],
    pub events: &'a [StoredEmailEvent],
    pub timeline: &'a EventTimeline,
}

pub fn alert_page(facts: &AlertFacts<'_>, zone: Zone, done: &str) -> AlertPage {
    let alert = facts.alert;
    let stats = stats_view(facts.stats);
    AlertPage {
        id: alert.id.clone(),
        name: alert.name.clone(),
        subject: alert.subject.clone(),
        state: alert.state.as_str(),
        send_at: zone.format(alert.send_at),
        zone: zone.name(),
        affinity_threshold: alert.affinity_threshold,
        template: facts
            .template
            .map_or_else(|| alert.template_id.clone(), |t| t.name.clone()),
        sales: facts
            .sales
            .iter()
            .map(|(s, b)| SaleLine {
                brand: b
                    .as_ref()
                    .map_or_else(|| s.brand_id.clone(), |b| b.name.clone()),
                headline: s.headline.clone(),
            })
            .collect(),
        failure_reason: alert.failure_reason.clone(),
        editable: alert.state.is_editable(),
        actions: actions_for(alert.state),
        chart: delivery_chart(&stats),
        timeline: timeline_view(facts.timeline, zone),
        stats,
        notice: notice(done),
        live: matches!(
            alert.state,
            AlertState::Scheduled | AlertState::Building | AlertState::Sending
        ),
        test_send: TestSendView::default(),
        events: event_lines(facts.events, zone),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ShowQuery {
    #[serde(default)]
    done: String,
}

async fn load_page(
    state: &WebState,
    signed: &Signed,
    id: &str,
    done: &str,
) -> Result<AlertPage, WebError> {
    let alert = find(state, id).await?;
    let store = &state.app.store;
    let stats = store.brand_alerts().stats(id).await?;
    let template = store.catalog().get_template(&alert.template_id).await?;
    let mut sales = Vec::with_capacity(alert.sale_ids.len());
    for sale_id in &alert.sale_ids {
        if let Some(sale) = store.catalog().get_sale(sale_id).await? {
            let brand = store.catalog().get_brand(&sale.brand_id).await?;
            sales.push((sale, brand));
        }
    }
    let events = store
        .email_events()
        .recent_for_alert(id, EVENT_TAIL)
        .await?;
    let timeline = store.brand_alerts().timeline(id).await?;
    let facts = AlertFacts {
        alert: &alert,
        stats: &stats,
        template: template.as_ref(),
        sales: &sales,
        events: &events,
        timeline: &timeline,
    };
    Ok(alert_page(&facts, signed.zone(), done))
}

fn show_response(
    state: &WebState,
    signed: &Signed,
    page: &AlertPage,
    status: StatusCode,
) -> Result<Response, WebError> {
    let mut layout = signed.layout("alerts", page.name.clone());
    if page.live {
        layout.refresh = Some(3);
    }
    let html = state.page("alerts/show.html", &layout, page)?;
    Ok((status, html).into_response())
}

async fn show(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let done = query.map(|Query(q)| q.done).unwrap_or_default();
    let page = load_page(&state, &signed, &id, &done).await?;
    show_response(&state, &signed, &page, StatusCode::OK)
}

// ---------------------------------------------------------------- test send

/// Addresses separated by commas, semicolons, spaces or lines.
pub fn split_addresses(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn test_send(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = FormData::parse(&body);
    let text = form.get("addresses").to_owned();
    let mut page = load_page(&state, &signed, &id, "").await?;
    page.live = false;
    page.test_send.addresses = text.clone();
    let status = match state
        .app
        .composer
        .test_send(&id, &split_addresses(&text))
        .await
    {
        Ok(outcomes) => {
            page.test_send.results = outcomes
                .into_iter()
                .map(|o| match o.result {
                    Ok(provider_id) => TestSendLine {
                        address: o.address,
                        sent: true,
                        detail: provider_id
                            .map_or_else(|| "sent".into(), |p| format!("sent ({p})")),
                    },
                    Err(e) => TestSendLine {
                        address: o.address,
                        sent: false,
                        detail: e,
                    },
                })
                .collect();
            StatusCode::OK
        }
        Err(PreviewError::AlertNotFound(_)) => {
            return Err(WebError::NotFound(format!("There is no brand alert {id}.")))
        }
        Err(PreviewError::Store(e)) => return Err(e.into()),
        Err(e) => {
            page.test_send.error = Some(e.to_string());
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    show_response(&state, &signed, &page, status)
}

// ---------------------------------------------------------------- preview

#[derive(Debug, Default, Deserialize)]
struct PreviewQuery {
    /// A member id or address; empty or `random` picks one.
    #[serde(default)]
    member: String,
}

/// What the preview page is given.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct PreviewPage {
    pub alert_id: String,
    pub alert_name: String,
    pub member_query: String,
    pub member_id: Option<String>,
    pub member_email: Option<String>,
    pub subject: Option<String>,
    /// The email's HTML, shown in sandboxed frames at two widths.
    pub html: Option<String>,
    pub text: Option<String>,
    pub error: Option<String>,
}

async fn pick_member(
    state: &WebState,
    alert: &BrandAlert,
    wanted: &str,
) -> Result<Option<String>, WebError> {
    let members = state.app.store.members();
    let wanted = wanted.trim();
    if wanted.contains('@') {
        let found = members
            .list(&MemberFilter {
                email: Some(wanted.to_owned()),
                page: PageRequest::first(1),
            })
            .await?;
        return Ok(found.items.into_iter().next().map(|m| m.id));
    }
    if !wanted.is_empty() && wanted != "random" {
        return Ok(members.get(wanted).await?.map(|m| m.id));
    }
    // Random: someone from the alert's audience when it has one, so the
    // preview shows a real match; anyone otherwise.
    let brand_ids: Vec<String> = {
        let mut ids = Vec::new();
        for sale_id in &alert.sale_ids {
            if let Some(sale) = state.app.store.catalog().get_sale(sale_id).await? {
                if !ids.contains(&sale.brand_id) {
                    ids.push(sale.brand_id);
                }
            }
        }
        ids
    };
    let cadence = members.cadence_policy().await?;
    let pool: Vec<String> = state
        .app
        .store
        .brand_alerts()
        .audience_page(
            alert,
            &brand_ids,
            &cadence,
            None,
            RANDOM_POOL,
            SystemClock.now(),
        )
        .await?
        .into_iter()
        .filter(|c| c.exclusion.is_none())
        .map(|c| c.member_id)
        .collect();
    let pool = if pool.is_empty() {
        members
            .list(&MemberFilter {
                email: None,
                page: PageRequest::first(RANDOM_POOL),
            })
            .await?
            .items
            .into_iter()
            .map(|m| m.id)
            .collect()
    } else {
        pool
    };
    Ok(pool.choose(&mut rand::rng()).cloned())
}

async fn preview(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let wanted = query.map(|Query(q)| q.member).unwrap_or_default();
    let alert = find(&state, &id).await?;
    let mut page = PreviewPage {
        alert_id: alert.id.clone(),
        alert_name: alert.name.clone(),
        member_query: wanted.clone(),
        ..PreviewPage::default()
    };
    let mut status = StatusCode::OK;
    match pick_member(&state, &alert, &wanted).await? {
        None => {
            status = StatusCode::NOT_FOUND;
            page.error = Some(if wanted.trim().is_empty() || wanted == "random" {
                "There are no members to preview for yet.".into()
            } else {
                format!("No member has the id or address {wanted:?}.")
            });
        }
        Some(member_id) => {
            let member = state.app.store.members().get(&member_id).await?;
            page.member_email = member.map(|m| m.email);
            page.member_id = Some(member_id.clone());
            match state.app.composer.preview(&id, &member_id).await {
                Ok(rendered) => {
                    page.subject = Some(rendered.subject);
                    page.html = Some(rendered.html);
                    page.text = Some(rendered.text);
                }
                Err(PreviewError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    status = StatusCode::UNPROCESSABLE_ENTITY;
                    page.error = Some(e.to_string());
                }
            }
        }
    }
    let html = state.page(
        "alerts/preview.html",
        &signed.layout("alerts", format!("Preview: {}", page.alert_name)),
        &page,
    )?;
    Ok((status, html).into_response())
}

// ---------------------------------------------------------------- actions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Schedule,
    Unschedule,
    Cancel,
    Delete,
}

impl Act {
    pub fn parse(name: &str) -> Option<Act> {
        Some(match name {
            "schedule" => Act::Schedule,
            "unschedule" => Act::Unschedule,
            "cancel" => Act::Cancel,
            "delete" => Act::Delete,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Act::Schedule => "schedule",
            Act::Unschedule => "unschedule",
            Act::Cancel => "cancel",
            Act::Delete => "delete",
        }
    }
}

/// What the confirmation page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct ConfirmPage {
    pub heading: String,
    pub question: String,
    pub action: String,
    pub button: String,
    pub back_url: String,
    pub danger: bool,
}

pub fn confirm_page(alert: &BrandAlert, act: Act, zone: Zone) -> ConfirmPage {
    let name = &alert.name;
    let (question, button, danger) = match act {
        Act::Schedule => (
            format!(
                "Schedule \u{201c}{name}\u{201d}? It is sent to its audience at {} ({}).",
                zone.format(alert.send_at),
                zone.name()
            ),
            "Yes, schedule it",
            false,
        ),
        Act::Unschedule => (
            format!("Move \u{201c}{name}\u{201d} back to draft? It will not be sent until it is scheduled again."),
            "Yes, unschedule it",
            false,
        ),
        Act::Cancel => (
            format!("Cancel \u{201c}{name}\u{201d}? Messages not yet sent will not be sent. This cannot be undone."),
            "Yes, cancel it",
            true,
        ),
        Act::Delete => (
            format!("Delete the draft \u{201c}{name}\u{201d}? This cannot be undone."),
            "Yes, delete it",
            true,
        ),
    };
    ConfirmPage {
        heading: format!("{} brand alert", capitalised(act.name())),
        question,
        action: format!("/ui/alerts/{}/do/{}", alert.id, act.name()),
        button: button.into(),
        back_url: format!("/ui/alerts/{}", alert.id),
        danger,
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn parse_act(name: &str) -> Result<Act, WebError> {
    Act::parse(name).ok_or_else(|| WebError::NotFound("There is no such action.".into()))
}

async fn confirm(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let act = parse_act(&action)?;
    let alert = find(&state, &id).await?;
    let page = confirm_page(&alert, act, signed.zone());
    let html = state.page(
        "confirm.html",
        &signed.layout("alerts", page.heading.clone()),
        &page,
    )?;
    Ok(html.into_response())
}

/// The API's rule for scheduling ([`send_time_passed`]), worded for the
/// page.
pub fn schedule_refusal(alert: &BrandAlert, now: Timestamp, zone: Zone) -> Option<String> {
    send_time_passed(alert.state, alert.send_at, now).then(|| {
        format!(
            "Its send time ({}) has passed; edit the alert and move it forward before scheduling.",
            zone.format(alert.send_at)
        )
    })
}

async fn act(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let act = parse_act(&action)?;
    let store = state.app.store.brand_alerts();
    let lifecycle = match act {
        Act::Delete => {
            store.delete_draft(&id).await?;
            return Ok(Redirect::to("/ui/alerts").into_response());
        }
        Act::Schedule => {
            let alert = find(&state, &id).await?;
            if let Some(refusal) = schedule_refusal(&alert, SystemClock.now(), signed.zone()) {
                return Err(WebError::Conflict(refusal));
            }
            AlertAction::Schedule
        }
        Act::Unschedule => AlertAction::Unschedule,
        Act::Cancel => AlertAction::Cancel,
    };
    store.apply(&id, lifecycle, None).await?;
    Ok(Redirect::to(&format!("/ui/alerts/{id}?done={}", act.name())).into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_store::brand_alerts::BuildProgress;
    use herald_store::email_events::{TimeBucket, TimelineCount};

    use super::*;

    const NOON: Timestamp = Timestamp(1_714_564_800_000);

    fn alert(state: AlertState) -> BrandAlert {
        BrandAlert {
            id: "a1".into(),
            name: "Weekend sale".into(),
            subject: "On sale".into(),
            template_id: "t1".into(),
            send_at: NOON,
            affinity_threshold: 0.6,
            transport: None,
            state,
            version: 3,
            sale_ids: vec!["s1".into(), "s2".into(), "s3".into()],
            build: BuildProgress {
                audience_size: Some(10),
                ..BuildProgress::default()
            },
            failure_reason: None,
            created_at: NOON,
            updated_at: NOON,
            completed_at: None,
        }
    }

    fn brand(id: &str, name: &str) -> Brand {
        Brand {
            id: id.into(),
            name: name.into(),
            created_at: NOON,
            updated_at: NOON,
        }
    }

    fn sale(id: &str, brand: &str) -> Sale {
        Sale {
            id: id.into(),
            brand_id: brand.into(),
            headline: format!("{brand} sale {id}"),
            url: "https://shop.example.com".into(),
            image: None,
            starts_at: NOON,
            ends_at: None,
            created_at: NOON,
            updated_at: NOON,
        }
    }

    #[test]
    fn list_rows_name_each_brand_once_in_the_users_zone() {
        let brands = HashMap::from([
            ("s1".to_owned(), "Fjord".to_owned()),
            ("s2".to_owned(), "Fjord".to_owned()),
            ("s3".to_owned(), "Atlas".to_owned()),
        ]);
        let rows = alert_rows(
            &[alert(AlertState::Sent)],
            &brands,
            Zone::named(Some("Europe/Paris")),
        );
        assert_eq!(
            rows,
            vec![AlertRow {
                id: "a1".into(),
                name: "Weekend sale".into(),
                subject: "On sale".into(),
                state: "sent",
                send_at: "2024-05-01 14:00".into(),
                brands: "Fjord, Atlas".into(),
                audience: Some(10),
            }]
        );
    }

    #[test]
    fn brand_search_matches_ids_and_names_ignoring_case() {
        let brands = [
            brand("fjord", "Fjord Footwear"),
            brand("atlas-denim", "Atlas Denim"),
        ];
        assert_eq!(matching_brands(&brands, "FOOT"), HashSet::from(["fjord"]));
        assert_eq!(
            matching_brands(&brands, " atlas-"),
            HashSet::from(["atlas-denim"])
        );
        assert!(matching_brands(&brands, "nothing").is_empty());
    }

    #[test]
    fn the_next_page_link_keeps_the_filters() {
        let query = ListQuery {
            state: "draft".into(),
            q: "Lumen & Co".into(),
            ..ListQuery::default()
        };
        assert_eq!(
            next_url(&query, "c/1"),
            "/ui/alerts?state=draft&q=Lumen+%26+Co&from=&until=&cursor=c%2F1"
        );
    }

    #[test]
    fn the_form_reads_times_in_the_users_zone_and_names_bad_fields() {
        let form = FormData::parse(
            b"name=Spring&subject=Hi&template_id=t1&sale_ids=s2&sale_ids=s1&send_at=2024-05-01T14%3A00&affinity_threshold=0.7",
        );
        let values = FormValues::from_form(&form);
        let new = values.parse(Zone::named(Some("Europe/Paris"))).unwrap();
        assert_eq!(new.send_at, NOON);
        assert_eq!(new.sale_ids, vec!["s2", "s1"]);
        assert_eq!(new.affinity_threshold, 0.7);

        let bad = FormValues::from_form(&FormData::parse(b"send_at=soon&affinity_threshold=high"));
        let errors = bad.parse(Zone::utc()).unwrap_err();
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["affinity_threshold", "send_at"]
        );
        assert!(errors["send_at"].contains("\"soon\""));
    }

    #[test]
    fn an_alert_shown_in_the_form_reads_back_unchanged() {
        let zone = Zone::named(Some("America/New_York"));
        let values = FormValues::of_alert(&alert(AlertState::Draft), zone);
        assert_eq!(values.send_at, "2024-05-01T08:00");
        assert_eq!(values.version, "3");
        let new = values.parse(zone).unwrap();
        assert_eq!((new.send_at, new.affinity_threshold), (NOON, 0.6));
    }

    #[test]
    fn sales_are_offered_under_their_brands() {
        let brands = [
            brand("fjord", "Fjord"),
            brand("empty", "No sales"),
            brand("atlas", "Atlas"),
        ];
        let sales = [
            sale("s1", "fjord"),
            sale("s2", "atlas"),
            sale("s3", "fjord"),
        ];
        let choices = brand_choices(&brands, &sales, &["s3".to_owned()]);
        assert_eq!(choices.len(), 2, "a brand without sales is not offered");
        assert_eq!(choices[0].name, "Fjord");
        let fjord: Vec<_> = choices[0]
            .sales
            .iter()
            .map(|c| (c.id.as_str(), c.selected))
            .collect();
        assert_eq!(fjord, [("s1", false), ("s3", true)]);
    }

    #[test]
    fn actions_follow_the_lifecycle() {
        let names = |s| actions_for(s).iter().map(|a| a.action).collect::<Vec<_>>();
        assert_eq!(names(AlertState::Draft), ["schedule", "cancel", "delete"]);
        assert_eq!(names(AlertState::Scheduled), ["unschedule", "cancel"]);
        assert_eq!(names(AlertState::Sending), ["cancel"]);
        assert!(names(AlertState::Sent).is_empty());
    }

    fn timeline_count(start: i64, event_type: &str, count: u64) -> TimelineCount {
        TimelineCount {
            bucket_start: Timestamp(start),
            event_type: event_type.into(),
            count,
        }
    }

    #[test]
    fn the_timeline_charts_followed_types_per_bucket_with_gaps_as_zeros() {
        let hour = TimeBucket::Hour.millis();
        // 2024-05-01 10:00 UTC.
        let start = 1_714_557_600_000;
        let timeline = EventTimeline {
            bucket: TimeBucket::Hour,
            counts: vec![
                timeline_count(start - hour, "processed", 9),
                timeline_count(start, "delivered", 4),
                timeline_count(start, "open", 2),
                timeline_count(start + 2 * hour, "click", 1),
                timeline_count(start + 2 * hour, "bounce", 3),
            ],
        };
        let view = timeline_view(&timeline, Zone::named(Some("Europe/Oslo")));
        assert_eq!(view.bucket, "hour");
        assert_eq!(
            view.rows,
            vec![
                TimelineRow {
                    at: "2024-05-01 12:00".into(),
                    delivered: 4,
                    opened: 2,
                    clicked: 0,
                    bounced: 0,
                },
                TimelineRow {
                    at: "2024-05-01 14:00".into(),
                    delivered: 0,
                    opened: 0,
                    clicked: 1,
                    bounced: 3,
                },
            ],
            "unfollowed types are left out, and so is the empty hour between"
        );
        let chart = &view.chart;
        assert!(chart.contains("role=\"img\"") && chart.contains("aria-label="));
        assert!(chart.contains(">Time (Europe/Oslo)<") && chart.contains(">Events per hour<"));
        assert_eq!(
            chart.matches("<polyline").count(),
            4,
            "delivered, opened, clicked, bounced"
        );
        assert_eq!(
            chart.matches("class=\"chart-point chart-line-0\"").count(),
            3,
            "three hours from first to last, the empty one as zero"
        );
        for label in ["Delivered", "Opened", "Clicked", "Bounced"] {
            assert!(chart.contains(&format!(">{label}<")), "legend {label}");
        }
    }

    #[test]
    fn a_timeline_without_followed_events_has_no_chart() {
        let only_processed = EventTimeline {
            bucket: TimeBucket::Minute,
            counts: vec![timeline_count(0, "processed", 2)],
        };
        let view = timeline_view(&only_processed, Zone::utc());
        assert_eq!(view.bucket, "minute");
        assert!(view.rows.is_empty() && view.chart.is_empty());
    }

    #[test]
    fn the_alert_page_counts_events_and_progress() {
        let stats = AlertStats {
            audience_size: Some(10),
            enqueued: 10,
            sent: 6,
            failed: 1,
            skipped: 1,
            events: BTreeMap::from([
                ("delivered".to_owned(), 5),
                ("open".to_owned(), 3),
                ("click".to_owned(), 1),
                ("bounce".to_owned(), 1),
            ]),
            ..AlertStats::default()
        };
        let the_alert = alert(AlertState::Sending);
        let brand = brand("fjord", "Fjord Footwear");
        let sales = [
            (sale("s1", "fjord"), Some(brand)),
            (sale("s9", "gone"), None),
        ];
        let facts = AlertFacts {
            alert: &the_alert,
            stats: &stats,
            template: None,
            sales: &sales,
            events: &[],
            timeline: &EventTimeline {
                bucket: TimeBucket::Hour,
                counts: Vec::new(),
            },
        };
        let page = alert_page(&facts, Zone::utc(), "schedule");
        assert_eq!(page.stats.progress_percent, Some(80));
        assert_eq!(
            (
                page.stats.delivered,
                page.stats.opened,
                page.stats.clicked,
                page.stats.bounced
            ),
            (5, 3, 1, 1)
        );
        assert!(page.live, "a sending alert's page follows progress");
        assert_eq!(page.template, "t1", "an unknown template shows its id");
        assert_eq!(page.sales[0].brand, "Fjord Footwear");
        assert_eq!(page.sales[1].brand, "gone");
        assert_eq!(
            page.notice.as_deref(),
            Some("Scheduled: it is sent at its send time.")
        );
        assert!(page.chart.contains(">6<") && page.chart.contains("Delivered"));
        assert_eq!(
            stats_view(&AlertStats {
                audience_size: Some(0),
                ..AlertStats::default()
            })
            .progress_percent,
            Some(100)
        );
    }

    #[test]
    fn test_addresses_split_on_any_separator() {
        assert_eq!(
            split_addresses(" a@example.com,b@example.com;\nc@example.com  "),
            ["a@example.com", "b@example.com", "c@example.com"]
        );
        assert!(split_addresses(" , ").is_empty());
    }

    #[test]
    fn confirmations_say_what_happens_and_where_it_posts() {
        let page = confirm_page(&alert(AlertState::Draft), Act::Schedule, Zone::utc());
        assert_eq!(page.action, "/ui/alerts/a1/do/schedule");
        assert!(
            page.question.contains("2024-05-01 12:00 (UTC)"),
            "{}",
            page.question
        );
        assert!(!page.danger);
        assert!(confirm_page(&alert(AlertState::Draft), Act::Cancel, Zone::utc()).danger);
        assert_eq!(Act::parse("explode"), None);
    }

    #[test]
    fn scheduling_a_draft_long_past_its_send_time_is_refused() {
        let draft = alert(AlertState::Draft);
        let just_after = NOON.plus(herald_core::alert::SCHEDULE_GRACE);
        assert_eq!(schedule_refusal(&draft, just_after, Zone::utc()), None);
        let later = just_after.plus(std::time::Duration::from_millis(1));
        assert!(schedule_refusal(&draft, later, Zone::utc()).is_some());
    }
}
