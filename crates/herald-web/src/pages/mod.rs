//! One module per area of the UI. Each exposes `routes()` and, beside its
//! handlers, the plain functions that build what its templates are given,
//! so what a page shows is unit-tested without a browser or a database.

use std::collections::BTreeMap;

use herald_store::email_events::StoredEmailEvent;
use herald_store::page::{PageRequest, MAX_PAGE_SIZE};
use herald_store::StoreError;

use crate::time::Zone;
use crate::WebError;

pub mod alerts;
pub mod catalog;
pub mod events;
pub mod jobs;
pub mod members;
pub mod queues;
pub mod shards;

/// Provider events (delivered, open, click, bounce, ...) shown as a tail.
pub const EVENT_TAIL: u32 = 20;

/// One provider event as a line of a tail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventLine {
    pub occurred_at: String,
    pub event_type: String,
    pub address: String,
    pub alert_id: Option<String>,
}

pub fn event_lines(events: &[StoredEmailEvent], zone: Zone) -> Vec<EventLine> {
    events
        .iter()
        .map(|e| EventLine {
            occurred_at: zone.format(e.event.occurred_at),
            event_type: e.event.event_type.as_str().to_owned(),
            address: e.event.address.clone(),
            alert_id: e.alert_id.clone(),
        })
        .collect()
}

/// Validation messages by form field, shown beside the field.
pub type FieldErrors = BTreeMap<String, String>;

/// A store refusal of one field becomes that field's inline error; any
/// other failure is the page's.
pub fn field_error(e: StoreError, errors: &mut FieldErrors) -> Result<(), WebError> {
    match e {
        StoreError::InvalidInput { field, message } => {
            errors.insert(field.to_owned(), message);
            Ok(())
        }
        other => Err(other.into()),
    }
}

/// Reads every page of a store listing, up to `cap` items: for the short
/// lists a form offers as choices (brands, sales, templates).
pub async fn read_all<T, F, Fut>(cap: usize, mut fetch: F) -> Result<Vec<T>, WebError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<herald_store::page::Page<T>, StoreError>>,
{
    let mut items = Vec::new();
    let mut request = PageRequest::first(MAX_PAGE_SIZE);
    loop {
        let page = fetch(request.clone()).await?;
        items.extend(page.items);
        match page.next_cursor {
            Some(cursor) if items.len() < cap => request.after = Some(cursor),
            _ => break,
        }
    }
    items.truncate(cap);
    Ok(items)
}
