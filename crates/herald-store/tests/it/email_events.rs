//! Email events: a batch stores only what is new (retries and repeats
//! inside a batch store nothing twice), the transactional insert path on a
//! held connection, reads by address and alert, counts, and the statistics
//! subscriber's once-only mark.

use std::time::Duration;

use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider, SourceName};
use herald_core::Timestamp;
use herald_store::email_events::{self, EventKey};
use herald_store::StoreError;
use serde_json::json;

use crate::harness::{TestDb, START};

store_suite!(
    a_batch_is_stored_once_and_retries_store_nothing,
    repeats_inside_a_batch_count_once,
    same_id_from_two_providers_are_two_events,
    stored_event_reads_back_whole,
    recent_events_by_address_and_alert_newest_first,
    counts_by_type_overall_and_per_alert,
    latest_events_across_alerts_newest_received_first_by_type,
    insert_on_a_held_connection_commits_with_the_caller,
    overlapping_batches_in_one_transaction_each_report_their_new_events,
    a_group_of_batches_reports_each_batch_s_new_events,
    large_batches_span_several_statements,
    empty_ids_are_refused_and_nothing_is_stored,
    prune_deletes_events_received_before_the_cutoff_in_chunks,
);

fn event(id: &str, event_type: EventType, address: &str, at: i64) -> EmailEvent {
    EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: id.into(),
        event_type,
        address: address.into(),
        occurred_at: Timestamp(at),
        message_id: Some(format!("msg-{id}")),
        bounce: None,
        tags: vec!["brand-alert".into()],
        custom_args: json!({"alert_id": "alert-1", "customer_id": "c-1"})
            .as_object()
            .unwrap()
            .clone(),
        raw: json!({"sg_event_id": id, "email": address}),
    }
}

fn without_alert(mut e: EmailEvent) -> EmailEvent {
    e.custom_args.remove("alert_id");
    e
}

async fn a_batch_is_stored_once_and_retries_store_nothing(db: TestDb) {
    let store = db.store.email_events();
    let batch = vec![
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e2", EventType::Open, "a@x.com", 2),
        event("e3", EventType::Click, "b@x.com", 3),
    ];
    assert_eq!(store.insert(&batch).await.unwrap(), vec![0, 1, 2]);
    assert_eq!(store.insert(&batch).await.unwrap(), Vec::<usize>::new());
    let mut overlapping = batch[1..].to_vec();
    overlapping.push(event("e4", EventType::Bounce, "c@x.com", 4));
    assert_eq!(store.insert(&overlapping).await.unwrap(), vec![2]);
    assert_eq!(store.count().await.unwrap(), 4);
    assert_eq!(store.insert(&[]).await.unwrap(), Vec::<usize>::new());
}

async fn repeats_inside_a_batch_count_once(db: TestDb) {
    let store = db.store.email_events();
    let batch = vec![
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e2", EventType::Open, "a@x.com", 2),
        event("e1", EventType::Delivered, "a@x.com", 1),
    ];
    assert_eq!(store.insert(&batch).await.unwrap(), vec![0, 2]);
    assert_eq!(store.count().await.unwrap(), 2);
}

async fn same_id_from_two_providers_are_two_events(db: TestDb) {
    let store = db.store.email_events();
    let sendgrid = event("same", EventType::Delivered, "a@x.com", 1);
    let mut sparkpost = sendgrid.clone();
    sparkpost.provider = Provider::SparkPost;
    let mut generic = sendgrid.clone();
    generic.provider = Provider::Generic(SourceName::parse("crm").unwrap());
    assert_eq!(
        store.insert(&[sendgrid, sparkpost, generic]).await.unwrap(),
        vec![0, 1, 2]
    );
}

async fn stored_event_reads_back_whole(db: TestDb) {
    let store = db.store.email_events();
    let mut e = event(
        "e1",
        EventType::Bounce,
        "  Mixed@Example.COM ",
        1_700_000_000_123,
    );
    e.bounce = Some(BounceClass::Hard);
    e.raw = json!({"nested": {"a": [1, 2, {"b": null}]}, "s": "ü \"q\""});
    e.custom_args.insert("n".into(), json!(7));
    store.insert(std::slice::from_ref(&e)).await.unwrap();
    let stored = store.get(&EventKey::of(&e)).await.unwrap().expect("stored");
    let mut expected = e.clone();
    expected.address = "mixed@example.com".into();
    assert_eq!(stored.event, expected);
    assert_eq!(stored.alert_id.as_deref(), Some("alert-1"));
    assert_eq!(stored.received_at, START);
    let missing = EventKey {
        provider: Provider::SparkPost,
        provider_event_id: "e1".into(),
    };
    assert_eq!(store.get(&missing).await.unwrap(), None);
}

async fn recent_events_by_address_and_alert_newest_first(db: TestDb) {
    let store = db.store.email_events();
    store
        .insert(&[
            event("e1", EventType::Processed, "a@x.com", 10),
            event("e2", EventType::Delivered, "A@X.com", 30),
            event("e3", EventType::Open, "a@x.com", 20),
            without_alert(event("e4", EventType::Click, "b@x.com", 40)),
        ])
        .await
        .unwrap();
    let ids = |events: Vec<email_events::StoredEmailEvent>| {
        events
            .into_iter()
            .map(|s| s.event.provider_event_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.recent_for_address(" a@X.COM", 10).await.unwrap()),
        ["e2", "e3", "e1"]
    );
    assert_eq!(
        ids(store.recent_for_address("a@x.com", 2).await.unwrap()),
        ["e2", "e3"]
    );
    assert_eq!(
        ids(store.recent_for_alert("alert-1", 10).await.unwrap()),
        ["e2", "e3", "e1"]
    );
    assert!(store.recent_for_alert("nope", 10).await.unwrap().is_empty());
}

async fn counts_by_type_overall_and_per_alert(db: TestDb) {
    let store = db.store.email_events();
    store
        .insert(&[
            event("e1", EventType::Open, "a@x.com", 1),
            event("e2", EventType::Open, "b@x.com", 2),
            without_alert(event("e3", EventType::Open, "c@x.com", 3)),
            event(
                "e4",
                EventType::Other("group_resubscribe".into()),
                "d@x.com",
                4,
            ),
        ])
        .await
        .unwrap();
    let all = store.counts_by_type(None).await.unwrap();
    assert_eq!(all.get("open"), Some(&3));
    assert_eq!(all.get("group_resubscribe"), Some(&1));
    let alert = store.counts_by_type(Some("alert-1")).await.unwrap();
    assert_eq!(alert.get("open"), Some(&2));
    assert!(store.counts_by_type(Some("none")).await.unwrap().is_empty());
}

async fn latest_events_across_alerts_newest_received_first_by_type(db: TestDb) {
    let store = db.store.email_events();
    store
        .insert(&[
            event("e1", EventType::Delivered, "a@x.com", 50),
            without_alert(event("e2", EventType::Open, "b@x.com", 10)),
        ])
        .await
        .unwrap();
    store
        .insert(&[event("e3", EventType::Delivered, "c@x.com", 5)])
        .await
        .unwrap();
    let ids = |events: Vec<email_events::StoredEmailEvent>| {
        events
            .into_iter()
            .map(|s| s.event.provider_event_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.latest(None, 10).await.unwrap()),
        ["e3", "e2", "e1"],
        "received order, not occurrence: a late event still shows first"
    );
    assert_eq!(ids(store.latest(None, 2).await.unwrap()), ["e3", "e2"]);
    assert_eq!(
        ids(store.latest(Some("delivered"), 10).await.unwrap()),
        ["e3", "e1"]
    );
    assert!(store.latest(Some("nope"), 10).await.unwrap().is_empty());
    assert_eq!(
        store.latest(None, 0).await.unwrap().len(),
        1,
        "clamped to one"
    );
}

/// The ingest's path: the caller holds the transaction; nothing is visible
/// before its commit and a rollback leaves nothing behind.
async fn insert_on_a_held_connection_commits_with_the_caller(db: TestDb) {
    let batch = [
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e2", EventType::Open, "a@x.com", 2),
    ];
    let now = db.clock_now();
    let insert_then = |commit: bool| {
        let db = db.clone();
        let batch = batch.clone();
        async move {
            if let Some(sqlite) = db.store.sqlite() {
                let mut conn = sqlite.writer.acquire().await.unwrap();
                let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                let new = email_events::sqlite::insert_new(&mut tx, &batch, now)
                    .await
                    .unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                new
            } else {
                let pg = db.store.postgres().unwrap();
                let mut tx = pg.pool.begin().await.unwrap();
                let new = email_events::postgres::insert_new(&mut tx, &batch, now)
                    .await
                    .unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                new
            }
        }
    };
    assert_eq!(insert_then(false).await, vec![0, 2]);
    assert_eq!(db.store.email_events().count().await.unwrap(), 0);
    assert_eq!(insert_then(true).await, vec![0, 2]);
    assert_eq!(insert_then(true).await, Vec::<usize>::new());
    assert_eq!(db.store.email_events().count().await.unwrap(), 2);
}

async fn large_batches_span_several_statements(db: TestDb) {
    let store = db.store.email_events();
    let batch: Vec<EmailEvent> = (0..1234)
        .map(|i| event(&format!("e{i}"), EventType::Delivered, "a@x.com", i))
        .collect();
    let new = store.insert(&batch).await.unwrap();
    assert_eq!(new, (0..1234).collect::<Vec<_>>());
    let mut retry = batch[1000..].to_vec();
    retry.push(event("last", EventType::Open, "a@x.com", 1));
    assert_eq!(store.insert(&retry).await.unwrap(), vec![234]);
    assert_eq!(store.count().await.unwrap(), 1235);
}

async fn empty_ids_are_refused_and_nothing_is_stored(db: TestDb) {
    let store = db.store.email_events();
    let batch = [
        event("ok", EventType::Open, "a@x.com", 1),
        event("", EventType::Open, "a@x.com", 1),
    ];
    let err = store.insert(&batch).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "provider_event_id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.count().await.unwrap(), 0);
}

async fn prune_deletes_events_received_before_the_cutoff_in_chunks(db: TestDb) {
    let store = db.store.email_events();
    let old: Vec<_> = (0..5)
        .map(|i| event(&format!("old-{i}"), EventType::Delivered, "a@x.com", i))
        .collect();
    store.insert(&old).await.unwrap();
    db.clock.advance(Duration::from_secs(10));
    let cutoff = db.clock_now();
    store
        .insert(&[event("new", EventType::Open, "a@x.com", 9)])
        .await
        .unwrap();

    let mut chunks = Vec::new();
    loop {
        let deleted = store.prune_received_before(cutoff, 2).await.unwrap();
        chunks.push(deleted);
        if deleted < 2 {
            break;
        }
    }
    assert_eq!(chunks, vec![2, 2, 1]);
    assert_eq!(store.count().await.unwrap(), 1);
    let kept = store
        .get(&EventKey {
            provider: Provider::SendGrid,
            provider_event_id: "new".into(),
        })
        .await
        .unwrap();
    assert!(kept.is_some(), "the event received at the cutoff stays");
    assert_eq!(store.prune_received_before(cutoff, 2).await.unwrap(), 0);
}

/// A group commit stores several batches in one transaction; a later batch
/// repeating events of an earlier one must report only its own new events.
async fn overlapping_batches_in_one_transaction_each_report_their_new_events(db: TestDb) {
    let first = [
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e2", EventType::Open, "a@x.com", 2),
    ];
    let second = [
        event("e2", EventType::Open, "a@x.com", 2),
        event("e3", EventType::Click, "a@x.com", 3),
        event("e1", EventType::Delivered, "a@x.com", 1),
        event("e4", EventType::Click, "a@x.com", 4),
    ];
    let now = db.clock_now();
    let (a, b) = if let Some(sqlite) = db.store.sqlite() {
        let mut conn = sqlite.writer.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let a = email_events::sqlite::insert_new(&mut tx, &first, now)
            .await
            .unwrap();
        let rows = email_events::EventRows::of(&second).unwrap();
        let b = email_events::sqlite::insert_rows(&mut tx, &rows, now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (a, b)
    } else {
        let pg = db.store.postgres().unwrap();
        let mut tx = pg.pool.begin().await.unwrap();
        let a = email_events::postgres::insert_new(&mut tx, &first, now)
            .await
            .unwrap();
        let b = email_events::postgres::insert_new(&mut tx, &second, now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (a, b)
    };
    assert_eq!(a, vec![0, 1]);
    assert_eq!(b, vec![1, 3]);
    assert_eq!(db.store.email_events().count().await.unwrap(), 4);
}

/// A group commit stores its batches with one call on SQLite (one after
/// another on PostgreSQL): each batch reports only its own new events, a
/// batch without events reports none, and a batch of several statements
/// counts as one.
async fn a_group_of_batches_reports_each_batch_s_new_events(db: TestDb) {
    let big: Vec<EmailEvent> = (0..1100)
        .map(|i| event(&format!("g{i}"), EventType::Delivered, "a@x.com", i))
        .collect();
    let with_repeats = vec![
        event("g5", EventType::Delivered, "a@x.com", 5),
        event("h1", EventType::Open, "b@x.com", 1),
        event("h1", EventType::Open, "b@x.com", 1),
        event("g1099", EventType::Delivered, "a@x.com", 1099),
        event("h2", EventType::Click, "b@x.com", 2),
    ];
    let batches: Vec<Vec<EmailEvent>> = vec![
        vec![event("h0", EventType::Open, "b@x.com", 1)],
        vec![],
        big.clone(),
        with_repeats,
        big[..3].to_vec(),
        vec![event("h3", EventType::Open, "b@x.com", 3)],
        vec![],
    ];
    let now = db.clock_now();
    let news = if let Some(sqlite) = db.store.sqlite() {
        let rows: Vec<email_events::EventRows> = batches
            .iter()
            .map(|b| email_events::EventRows::of(b).unwrap())
            .collect();
        let rows: Vec<&email_events::EventRows> = rows.iter().collect();
        let mut conn = sqlite.writer.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let news = email_events::sqlite::insert_batches(&mut tx, &rows, now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        news
    } else {
        let pg = db.store.postgres().unwrap();
        let mut tx = pg.pool.begin().await.unwrap();
        let mut news = Vec::new();
        for batch in &batches {
            news.push(
                email_events::postgres::insert_new(&mut tx, batch, now)
                    .await
                    .unwrap(),
            );
        }
        tx.commit().await.unwrap();
        news
    };
    let expected: Vec<Vec<usize>> = vec![
        vec![0],
        vec![],
        (0..1100).collect(),
        vec![1, 4],
        vec![],
        vec![0],
        vec![],
    ];
    assert_eq!(news, expected);
    assert_eq!(db.store.email_events().count().await.unwrap(), 1104);
}
