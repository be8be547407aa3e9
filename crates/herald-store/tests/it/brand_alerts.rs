//! Brand alerts: creation and its checks, the lifecycle (every illegal move
//! a conflict naming the state), drafts, listing, the audience query with
//! its exclusions and paging, send-log claims and their outcomes, races
//! between claims under the cadence limit, completion and statistics (the
//! send counts kept with the send log, provider events counted once into
//! the counts and the timeline, and the migration that backfilled both).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_core::alert::{AlertAction, AlertState};
use herald_core::cadence::CadencePolicy;
use herald_core::email_event::{EmailEvent, EventType, Provider};
use herald_core::Timestamp;
use herald_store::brand_alerts::{
    Addressee, AudienceCandidate, BrandAlert, BrandAlertFilter, BrandAlertPatch, BuildStep,
    ClaimOutcome, Exclusion, NewBrandAlert, SendState, SentMessage, SkipReason,
};
use herald_store::email_events::{EventKey, EventTimeline, TimeBucket, TimelineCount};
use herald_store::page::PageRequest;
use herald_store::StoreError;
use serde_json::json;

use crate::harness::{Backend, TestDb, START};

store_suite!(
    created_alert_reads_back_as_a_draft,
    bad_alerts_are_refused_naming_the_field_and_nothing_is_stored,
    lifecycle_moves_stamp_the_alert,
    every_illegal_move_is_a_conflict_naming_the_state,
    only_drafts_are_edited_and_stale_versions_are_refused,
    only_drafts_are_deleted,
    list_filters_and_pages_newest_first,
    audience_lists_members_over_the_threshold_with_their_exclusion,
    audience_pages_cover_every_member_once,
    audience_ranges_cover_every_member_once,
    classify_applies_the_audience_rules_to_given_members,
    claims_answer_by_the_state_of_the_row,
    claims_skip_members_no_longer_eligible,
    one_batch_claims_and_confirms_rows_in_every_state,
    finishing_calls_act_only_on_rows_in_the_right_state,
    concurrent_claims_of_two_alerts_respect_the_cadence,
    send_counts_stay_exact_when_a_takeover_races_a_confirm,
    build_progress_only_moves_forward,
    finished_alerts_complete_and_stats_add_up,
    events_count_once_into_the_stats_and_the_timeline,
    the_migration_backfills_the_counts_and_new_events_add_to_them,
    prune_deletes_old_rows_of_finished_alerts_only_in_chunks,
    a_member_received_the_alerts_sent_to_them_latest_first,
);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// Runs statements behind the store's back (the catalog and member
/// aggregates have their own suites); literals only, valid on both engines.
async fn exec(db: &TestDb, sql: &str) {
    match (db.store.sqlite(), db.store.postgres()) {
        (Some(sqlite), _) => sqlx::raw_sql(sql).execute(&sqlite.writer).await.map(drop),
        (_, Some(pg)) => sqlx::raw_sql(sql).execute(&pg.pool).await.map(drop),
        (None, None) => unreachable!("a store has one backend"),
    }
    .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

/// The alert's send counts (kept with every send-log change) equal a count
/// of its send log.
async fn assert_send_counts_match_the_log(db: &TestDb, id: &str) {
    let stats = db.store.brand_alerts().stats(id).await.unwrap();
    let of = |condition: &str| {
        format!("SELECT count(*) FROM send_log WHERE alert_id = '{id}' AND {condition}")
    };
    let logged = (
        count(db, &of("state = 'sent'")).await,
        count(db, &of("state = 'failed'")).await,
        count(db, &of("state = 'skipped'")).await,
        count(db, &of("possible_duplicate")).await,
    );
    let counted = (
        stats.sent as i64,
        stats.failed as i64,
        stats.skipped as i64,
        stats.possible_duplicates as i64,
    );
    assert_eq!(
        counted, logged,
        "alert {id}: (sent, failed, skipped, duplicates)"
    );
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    match (db.store.sqlite(), db.store.postgres()) {
        (Some(sqlite), _) => sqlx::query_scalar(sql).fetch_one(&sqlite.reader).await,
        (_, Some(pg)) => sqlx::query_scalar(sql).fetch_one(&pg.pool).await,
        (None, None) => unreachable!("a store has one backend"),
    }
    .unwrap_or_else(|e| panic!("{e}: {sql}"))
}

/// Brands b1..b5, a sale per brand (s1..s5) and template t1.
async fn seed_catalog(db: &TestDb) {
    let mut sql = String::from(
        "INSERT INTO templates (id, name, subject, html, text, created_at, updated_at) \
         VALUES ('t1', 'basic', 'Hi', '<p>hi</p>', NULL, 0, 0), \
                ('t2', 'other', 'Hi', '<p>hi</p>', NULL, 0, 0);",
    );
    for i in 1..=5 {
        sql.push_str(&format!(
            "INSERT INTO brands (id, name, created_at, updated_at) VALUES ('b{i}', 'Brand {i}', 0, 0); \
             INSERT INTO sales (id, brand_id, headline, url, image, starts_at, ends_at, created_at, updated_at) \
             VALUES ('s{i}', 'b{i}', 'Sale {i}', 'https://shop.example/{i}', NULL, 0, NULL, 0, 0);"
        ));
    }
    exec(db, &sql).await;
}

fn member_sql(id: &str, status: &str) -> String {
    format!(
        "INSERT INTO members (id, email, email_normalized, name, first_name, locale, time_zone, \
             status, customer_id, created_at, updated_at) \
         VALUES ('{id}', '{id}@Example.com', '{id}@example.com', NULL, NULL, NULL, NULL, \
             '{status}', NULL, 0, 0);"
    )
}

fn affinity_sql(member: &str, brand: &str, score: f64) -> String {
    format!(
        "INSERT INTO affinities (member_id, brand_id, score, updated_at) \
         VALUES ('{member}', '{brand}', {score:.3}, 0);"
    )
}

fn unsubscribe_sql(member: &str, subscribed: bool) -> String {
    let flag = if subscribed { "1" } else { "0" };
    format!(
        "INSERT INTO subscriptions (member_id, email_type, subscribed, source, updated_at) \
         VALUES ('{member}', 'brand_alerts', '{flag}', 'test', 0);"
    )
}

fn suppress_sql(address: &str) -> String {
    format!(
        "INSERT INTO suppressions (address, reason, source, detail, since) \
         VALUES ('{address}', 'bounce', 'test', NULL, 0);"
    )
}

fn new_alert(name: &str, sales: &[&str]) -> NewBrandAlert {
    NewBrandAlert {
        name: name.into(),
        subject: "Brands you love are on sale".into(),
        template_id: "t1".into(),
        send_at: START.plus(DAY),
        affinity_threshold: 0.5,
        transport: None,
        sale_ids: sales.iter().map(|s| s.to_string()).collect(),
    }
}

async fn create(db: &TestDb, name: &str, sales: &[&str]) -> BrandAlert {
    db.store
        .brand_alerts()
        .create(&new_alert(name, sales))
        .await
        .unwrap()
}

/// An alert moved to `state` through the store's own operations.
async fn alert_in(db: &TestDb, state: AlertState) -> BrandAlert {
    let alerts = db.store.brand_alerts();
    let alert = create(db, &format!("in {state}"), &["s1"]).await;
    let id = alert.id.as_str();
    let due = alert.send_at;
    match state {
        AlertState::Draft => alert,
        AlertState::Scheduled => alerts.apply(id, AlertAction::Schedule, None).await.unwrap(),
        AlertState::Cancelled => alerts.apply(id, AlertAction::Cancel, None).await.unwrap(),
        AlertState::Failed => alerts
            .apply(id, AlertAction::Fail, Some("test"))
            .await
            .unwrap(),
        AlertState::Building | AlertState::Sending | AlertState::Sent => {
            alerts.apply(id, AlertAction::Schedule, None).await.unwrap();
            let building = alerts.start_build(id, due).await.unwrap();
            if state == AlertState::Building {
                return building;
            }
            let sending = alerts.finish_build(id, due).await.unwrap();
            if state == AlertState::Sending {
                return sending;
            }
            // An empty audience is complete at once.
            let completed = alerts.complete_finished(due).await.unwrap();
            assert!(completed.contains(&alert.id), "{completed:?}");
            alerts.get(id).await.unwrap().unwrap()
        }
    }
}

fn conflict_message(err: StoreError) -> String {
    match err {
        StoreError::Conflict { what } => what,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn invalid_field(err: StoreError) -> (&'static str, String) {
    match err {
        StoreError::InvalidInput { field, message } => (field, message),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

async fn created_alert_reads_back_as_a_draft(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let mut new = new_alert("spring", &["s3", "s1", "s2"]);
    new.transport = Some("smtp-main".into());
    let alert = alerts.create(&new).await.unwrap();
    let id = uuid::Uuid::parse_str(&alert.id).expect("a uuid");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(alert.name, "spring");
    assert_eq!(alert.subject, new.subject);
    assert_eq!(alert.template_id, "t1");
    assert_eq!(alert.send_at, new.send_at);
    assert_eq!(alert.affinity_threshold, 0.5);
    assert_eq!(alert.transport.as_deref(), Some("smtp-main"));
    assert_eq!(alert.state, AlertState::Draft);
    assert_eq!(alert.version, 1);
    assert_eq!(alert.sale_ids, vec!["s3", "s1", "s2"], "marketing's order");
    assert_eq!(alert.created_at, START);
    assert_eq!(alert.updated_at, START);
    assert_eq!(alert.completed_at, None);
    assert_eq!(alert.build, Default::default());
    assert_eq!(alerts.get(&alert.id).await.unwrap(), Some(alert.clone()));
    assert_eq!(alerts.get("no-such-alert").await.unwrap(), None);

    let other = create(&db, "second", &["s1"]).await;
    assert_ne!(other.id, alert.id);
}

async fn bad_alerts_are_refused_naming_the_field_and_nothing_is_stored(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let cases: Vec<(NewBrandAlert, &str, &str)> = vec![
        (
            NewBrandAlert {
                template_id: "t-missing".into(),
                ..new_alert("a", &["s1"])
            },
            "template_id",
            "t-missing",
        ),
        (
            new_alert("a", &["s1", "s2", "nope"]),
            "sale_ids",
            "sale_ids[2]",
        ),
        (new_alert("a", &[]), "sale_ids", "at least one"),
        (
            new_alert("a", &["s1", "s2", "s1"]),
            "sale_ids",
            "sale_ids[2] repeats",
        ),
        (new_alert("a", &["s1", ""]), "sale_ids", "sale_ids[1]"),
        (
            NewBrandAlert {
                affinity_threshold: f64::NAN,
                ..new_alert("a", &["s1"])
            },
            "affinity_threshold",
            "from 0 to 1",
        ),
        (
            NewBrandAlert {
                affinity_threshold: f64::INFINITY,
                ..new_alert("a", &["s1"])
            },
            "affinity_threshold",
            "from 0 to 1",
        ),
        (
            NewBrandAlert {
                affinity_threshold: 1.5,
                ..new_alert("a", &["s1"])
            },
            "affinity_threshold",
            "1.5",
        ),
        (
            NewBrandAlert {
                affinity_threshold: -0.1,
                ..new_alert("a", &["s1"])
            },
            "affinity_threshold",
            "-0.1",
        ),
        (new_alert("  ", &["s1"]), "name", "empty"),
        (new_alert(&"n".repeat(201), &["s1"]), "name", "at most 200"),
        (
            NewBrandAlert {
                subject: String::new(),
                ..new_alert("a", &["s1"])
            },
            "subject",
            "empty",
        ),
        (
            NewBrandAlert {
                transport: Some(" ".into()),
                ..new_alert("a", &["s1"])
            },
            "transport",
            "transport",
        ),
    ];
    for (new, field, needle) in cases {
        let (got_field, message) = invalid_field(alerts.create(&new).await.unwrap_err());
        assert_eq!(got_field, field, "{message}");
        assert!(
            message.contains(needle),
            "{field}: {message:?} lacks {needle:?}"
        );
    }
    let too_many: Vec<String> = (0..=herald_store::brand_alerts::MAX_SALES)
        .map(|i| format!("x{i}"))
        .collect();
    let new = NewBrandAlert {
        sale_ids: too_many,
        ..new_alert("a", &[])
    };
    assert_eq!(
        invalid_field(alerts.create(&new).await.unwrap_err()).0,
        "sale_ids"
    );

    let page = alerts.list(&BrandAlertFilter::default()).await.unwrap();
    assert!(page.items.is_empty(), "nothing partial stored: {page:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM brand_alert_sales").await,
        0
    );
}

async fn lifecycle_moves_stamp_the_alert(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = create(&db, "life", &["s1"]).await;
    let id = alert.id.as_str();

    db.clock.advance(Duration::from_secs(1));
    let scheduled = alerts.apply(id, AlertAction::Schedule, None).await.unwrap();
    assert_eq!(scheduled.state, AlertState::Scheduled);
    assert_eq!(scheduled.version, 2);
    assert_eq!(scheduled.updated_at, db.clock_now());
    let draft = alerts
        .apply(id, AlertAction::Unschedule, None)
        .await
        .unwrap();
    assert_eq!((draft.state, draft.version), (AlertState::Draft, 3));
    alerts.apply(id, AlertAction::Schedule, None).await.unwrap();

    // Not due yet: the audience job may not start it.
    assert!(alerts.due(START, 10).await.unwrap().is_empty());
    let early = alerts.start_build(id, START).await.unwrap_err();
    assert!(conflict_message(early).contains("not due"));

    let due_at = alert.send_at;
    let due = alerts.due(due_at, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec![id]
    );
    let building = alerts.start_build(id, due_at).await.unwrap();
    assert_eq!(building.state, AlertState::Building);
    assert_eq!(building.build.started_at, Some(due_at));
    // A resumed build gets the alert as it is, and it stays due.
    assert_eq!(alerts.start_build(id, due_at).await.unwrap(), building);
    assert_eq!(alerts.due(due_at, 10).await.unwrap().len(), 1);

    let cancelled = alerts
        .apply(id, AlertAction::Cancel, Some("ignored"))
        .await
        .unwrap();
    assert_eq!(cancelled.state, AlertState::Cancelled);
    assert_eq!(cancelled.completed_at, Some(db.clock_now()));
    assert_eq!(
        cancelled.failure_reason, None,
        "only a failure keeps its reason"
    );
    assert!(alerts.due(due_at, 10).await.unwrap().is_empty());

    let other = alert_in(&db, AlertState::Scheduled).await;
    let failed = alerts
        .apply(&other.id, AlertAction::Fail, Some("template vanished"))
        .await
        .unwrap();
    assert_eq!(failed.state, AlertState::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("template vanished"));

    let missing = alerts
        .apply("nope", AlertAction::Schedule, None)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
}

async fn every_illegal_move_is_a_conflict_naming_the_state(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let mut checked = 0;
    for state in AlertState::ALL {
        for action in AlertAction::ALL {
            let Err(expected) = state.apply(action) else {
                continue;
            };
            let alert = alert_in(&db, state).await;
            assert_eq!(alert.state, state);
            let err = alerts.apply(&alert.id, action, None).await.unwrap_err();
            assert_eq!(
                conflict_message(err),
                expected.to_string(),
                "{state} --{action}-->"
            );
            let unchanged = alerts.get(&alert.id).await.unwrap().unwrap();
            assert_eq!(unchanged, alert, "a refused move changes nothing");
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * 8 - 14, "every illegal pair of the lifecycle");
}

async fn only_drafts_are_edited_and_stale_versions_are_refused(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = create(&db, "draft", &["s1", "s2"]).await;
    let id = alert.id.as_str();

    db.clock.advance(Duration::from_secs(5));
    let patch = BrandAlertPatch {
        name: Some("renamed".into()),
        sale_ids: Some(vec!["s4".into(), "s2".into()]),
        transport: Some(Some("sendgrid".into())),
        affinity_threshold: Some(0.8),
        ..Default::default()
    };
    let edited = alerts.update_draft(id, &patch, Some(1)).await.unwrap();
    assert_eq!(edited.name, "renamed");
    assert_eq!(edited.subject, alert.subject, "untouched fields stay");
    assert_eq!(edited.sale_ids, vec!["s4", "s2"]);
    assert_eq!(edited.transport.as_deref(), Some("sendgrid"));
    assert_eq!(edited.affinity_threshold, 0.8);
    assert_eq!(edited.version, 2);
    assert_eq!(edited.updated_at, db.clock_now());
    assert_eq!(edited.created_at, START);

    let stale = alerts.update_draft(id, &patch, Some(1)).await.unwrap_err();
    assert!(conflict_message(stale).contains("version 2"));

    let cleared = BrandAlertPatch {
        transport: Some(None),
        ..Default::default()
    };
    let edited = alerts.update_draft(id, &cleared, None).await.unwrap();
    assert_eq!((edited.transport, edited.version), (None, 3));

    let empty = alerts
        .update_draft(id, &BrandAlertPatch::default(), Some(3))
        .await
        .unwrap();
    assert_eq!(empty.version, 3, "an empty patch changes nothing");

    let bad_sale = BrandAlertPatch {
        sale_ids: Some(vec!["s1".into(), "gone".into()]),
        ..Default::default()
    };
    let (field, message) =
        invalid_field(alerts.update_draft(id, &bad_sale, None).await.unwrap_err());
    assert_eq!(field, "sale_ids");
    assert!(message.contains("sale_ids[1]"), "{message}");
    let bad_template = BrandAlertPatch {
        template_id: Some("t9".into()),
        ..Default::default()
    };
    let (field, _) = invalid_field(
        alerts
            .update_draft(id, &bad_template, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(field, "template_id");
    let still = alerts.get(id).await.unwrap().unwrap();
    assert_eq!(
        (still.version, still.sale_ids.len()),
        (3, 2),
        "nothing partial stored"
    );

    alerts.apply(id, AlertAction::Schedule, None).await.unwrap();
    let err = alerts.update_draft(id, &patch, None).await.unwrap_err();
    assert_eq!(
        conflict_message(err),
        "cannot edit a brand alert that is scheduled"
    );
    let err = alerts.update_draft("nope", &patch, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

async fn only_drafts_are_deleted(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let draft = create(&db, "bye", &["s1", "s2"]).await;
    alerts.delete_draft(&draft.id).await.unwrap();
    assert_eq!(alerts.get(&draft.id).await.unwrap(), None);
    assert_eq!(
        count(&db, "SELECT count(*) FROM brand_alert_sales").await,
        0
    );
    let err = alerts.delete_draft(&draft.id).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    let scheduled = alert_in(&db, AlertState::Scheduled).await;
    let message = conflict_message(alerts.delete_draft(&scheduled.id).await.unwrap_err());
    assert!(message.contains("scheduled"), "{message}");
    assert!(alerts.get(&scheduled.id).await.unwrap().is_some());
}

async fn list_filters_and_pages_newest_first(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let mut created = Vec::new();
    for i in 0..7 {
        // Two alerts share each send time, so paging must order by id too.
        let new = NewBrandAlert {
            send_at: START.plus(DAY * (i / 2)),
            ..new_alert(&format!("a{i}"), &["s1"])
        };
        created.push(alerts.create(&new).await.unwrap());
    }
    alerts
        .apply(&created[1].id, AlertAction::Schedule, None)
        .await
        .unwrap();
    alerts
        .apply(&created[4].id, AlertAction::Schedule, None)
        .await
        .unwrap();

    let mut expected: Vec<(Timestamp, String)> =
        created.iter().map(|a| (a.send_at, a.id.clone())).collect();
    expected.sort();
    expected.reverse();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = alerts
            .list(&BrandAlertFilter {
                page: PageRequest { after, limit: 3 },
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|a| (a.send_at, a.id.clone())));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every alert once, newest send time first");

    let scheduled = alerts
        .list(&BrandAlertFilter {
            state: Some(AlertState::Scheduled),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: HashSet<&str> = scheduled.items.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([created[1].id.as_str(), created[4].id.as_str()])
    );
    assert_eq!(scheduled.items[0].sale_ids, vec!["s1"]);

    let window = alerts
        .list(&BrandAlertFilter {
            send_from: Some(START.plus(DAY)),
            send_until: Some(START.plus(DAY * 3)),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut names: Vec<&str> = window.items.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["a2", "a3", "a4", "a5"],
        "from inclusive, until exclusive"
    );

    for bad in ["garbage", "12", "x:y"] {
        let err = alerts
            .list(&BrandAlertFilter {
                page: PageRequest {
                    after: Some(bad.into()),
                    limit: 2,
                },
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(invalid_field(err).0, "cursor", "{bad}");
    }
}

/// Members for the audience tests, in id order:
/// - a01: b1 0.9, b3 0.6 → both brands, in the alert's order (b3 first)
/// - a02: b1 0.4 → under the threshold
/// - a03: b2 0.7 only, a brand outside the alert
/// - a04: b1 0.5 exactly the threshold, unsubscribed
/// - a05: b3 0.9, suppressed (matched on the normalized address)
/// - a06: b1 0.9, inactive
/// - a07: b1 0.9, at the cadence limit through another alert's send
/// - a08: b1 0.9, subscribed row present, old and failed sends only
/// - a09: b3 0.9 and unsubscribed and suppressed: unsubscribed wins
async fn seed_audience(db: &TestDb) {
    let mut sql = String::new();
    for (id, status) in [
        ("a01", "active"),
        ("a02", "active"),
        ("a03", "active"),
        ("a04", "active"),
        ("a05", "active"),
        ("a06", "inactive"),
        ("a07", "active"),
        ("a08", "active"),
        ("a09", "active"),
    ] {
        sql.push_str(&member_sql(id, status));
    }
    for (member, brand, score) in [
        ("a01", "b1", 0.9),
        ("a01", "b3", 0.6),
        ("a02", "b1", 0.4),
        ("a03", "b2", 0.7),
        ("a04", "b1", 0.5),
        ("a05", "b3", 0.9),
        ("a06", "b1", 0.9),
        ("a07", "b1", 0.9),
        ("a08", "b1", 0.9),
        ("a09", "b3", 0.9),
    ] {
        sql.push_str(&affinity_sql(member, brand, score));
    }
    sql.push_str(&unsubscribe_sql("a04", false));
    sql.push_str(&unsubscribe_sql("a08", true));
    sql.push_str(&unsubscribe_sql("a09", false));
    sql.push_str(&suppress_sql("a05@example.com"));
    sql.push_str(&suppress_sql("a09@example.com"));
    exec(db, &sql).await;
}

fn brands(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A claim of a member seeded by [`member_sql`], whose address is all an
/// email has of them.
fn claimed(member: &str, possible_duplicate: bool, attempt: u32) -> ClaimOutcome {
    ClaimOutcome::Claimed {
        possible_duplicate,
        attempt,
        member: Addressee {
            email: format!("{member}@Example.com"),
            name: None,
            first_name: None,
            locale: None,
            time_zone: None,
            customer_id: None,
        },
    }
}

async fn audience_lists_members_over_the_threshold_with_their_exclusion(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let cadence = CadencePolicy::new(1, 7 * DAY).unwrap();
    let alert = create(&db, "target", &["s3", "s1"]).await;
    let other = create(&db, "earlier", &["s1"]).await;
    let now = db.clock_now();

    // Seen from the audience's time, a day on: a07 got another alert a day
    // before, a08 one nine days before and a failed one; a01 has a row of
    // this very alert (a resumed build).
    let claimed = alerts
        .claim_sends(&other.id, &brands(&["a07"]), &cadence, CLAIM_TTL, now)
        .await
        .unwrap();
    assert!(matches!(claimed[0], ClaimOutcome::Claimed { .. }));
    alerts
        .confirm_sent(
            &other.id,
            &[SentMessage {
                member_id: "a07".into(),
                provider_message_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    let old = create(&db, "old", &["s1"]).await;
    alerts
        .claim_sends(
            &old.id,
            &brands(&["a08"]),
            &cadence,
            CLAIM_TTL,
            Timestamp(now.0 - 8 * 86_400_000),
        )
        .await
        .unwrap();
    let failed = create(&db, "failed", &["s1"]).await;
    alerts
        .mark_failed(&failed.id, "a08", "bounced", now)
        .await
        .unwrap();
    alerts
        .claim_sends(&alert.id, &brands(&["a01"]), &cadence, CLAIM_TTL, now)
        .await
        .unwrap();

    let page = alerts
        .audience_page(
            &alert,
            &brands(&["b3", "b1"]),
            &cadence,
            None,
            100,
            now.plus(DAY),
        )
        .await
        .unwrap();
    let expected = vec![
        candidate("a01", &["b3", "b1"], None),
        candidate("a04", &["b1"], Some(Exclusion::Unsubscribed)),
        candidate("a05", &["b3"], Some(Exclusion::Suppressed)),
        candidate("a07", &["b1"], Some(Exclusion::Cadence)),
        candidate("a08", &["b1"], None),
        candidate("a09", &["b3"], Some(Exclusion::Unsubscribed)),
    ];
    assert_eq!(page, expected);

    // The window rolls on: a week after a07's send it no longer counts.
    let later = alerts
        .audience_page(
            &alert,
            &brands(&["b3", "b1"]),
            &cadence,
            None,
            100,
            now.plus(DAY * 7),
        )
        .await
        .unwrap();
    assert_eq!(later[3], candidate("a07", &["b1"], None));

    // A raised limit lets a07 in; a higher threshold drops a04 and a01's b3.
    let roomy = CadencePolicy::new(2, 7 * DAY).unwrap();
    let strict = BrandAlert {
        affinity_threshold: 0.7,
        ..alert.clone()
    };
    let page = alerts
        .audience_page(
            &strict,
            &brands(&["b3", "b1"]),
            &roomy,
            None,
            100,
            now.plus(DAY),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|c| c.member_id.as_str()).collect();
    assert_eq!(ids, vec!["a01", "a05", "a07", "a08", "a09"]);
    assert_eq!(page[0].brand_ids, vec!["b1"]);
    assert_eq!(page[2].exclusion, None);

    let none = alerts
        .audience_page(&alert, &[], &cadence, None, 100, now)
        .await
        .unwrap();
    assert!(none.is_empty());
}

fn candidate(id: &str, brand_ids: &[&str], exclusion: Option<Exclusion>) -> AudienceCandidate {
    AudienceCandidate {
        member_id: id.into(),
        brand_ids: brands(brand_ids),
        exclusion,
    }
}

/// Ranges whose ends come before their reads: consecutive ranges of 9
/// members (any status, with or without affinities) together hold every
/// candidate once, each range only its own.
async fn audience_ranges_cover_every_member_once(db: TestDb) {
    seed_catalog(&db).await;
    let mut sql = String::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        let id = format!("r{i:03}");
        let status = if i % 4 == 0 { "inactive" } else { "active" };
        sql.push_str(&member_sql(&id, status));
        // Every fifth member has no affinity for the alert's brands.
        let brand = if i % 5 == 0 { "b4" } else { "b1" };
        sql.push_str(&affinity_sql(&id, brand, 0.9));
        if status == "active" && brand == "b1" {
            expected.push(id);
        }
    }
    exec(&db, &sql).await;
    let alert = create(&db, "ranged", &["s1", "s2"]).await;
    let alerts = db.store.brand_alerts();
    let cadence = CadencePolicy::default();
    let mut seen = Vec::new();
    let mut ends = Vec::new();
    let mut after: Option<String> = None;
    while let Some(upto) = alerts
        .audience_range_end(after.as_deref(), 9)
        .await
        .unwrap()
    {
        let range = alerts
            .audience_range(
                &alert,
                &brands(&["b1", "b2"]),
                &cadence,
                after.as_deref(),
                &upto,
                START,
            )
            .await
            .unwrap();
        assert!(range.iter().all(
            |c| after.as_deref().is_none_or(|a| c.member_id.as_str() > a) && c.member_id <= upto
        ));
        seen.extend(range.into_iter().map(|c| c.member_id));
        ends.push(upto.clone());
        after = Some(upto);
    }
    assert_eq!(seen, expected);
    assert_eq!(ends, ["r008", "r017", "r026", "r035", "r039"]);
    assert_eq!(
        alerts.audience_range_end(Some("r039"), 9).await.unwrap(),
        None,
        "nothing after the last member"
    );
    assert_eq!(
        alerts
            .audience_range_end(Some("r010"), 1)
            .await
            .unwrap()
            .as_deref(),
        Some("r011")
    );
}

async fn audience_pages_cover_every_member_once(db: TestDb) {
    seed_catalog(&db).await;
    let mut sql = String::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        let id = format!("p{i:03}");
        // Every third member is inactive, runs of them longer than a page
        // would be if the page were cut before the status check.
        let status = if (20..35).contains(&i) || i % 3 == 0 {
            "inactive"
        } else {
            "active"
        };
        sql.push_str(&member_sql(&id, status));
        sql.push_str(&affinity_sql(
            &id,
            if i % 2 == 0 { "b1" } else { "b2" },
            0.9,
        ));
        sql.push_str(&affinity_sql(&id, "b4", 0.9));
        if status == "active" {
            expected.push(id);
        }
    }
    exec(&db, &sql).await;
    let alert = create(&db, "paged", &["s1", "s2"]).await;
    let alerts = db.store.brand_alerts();
    let cadence = CadencePolicy::default();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = alerts
            .audience_page(
                &alert,
                &brands(&["b1", "b2"]),
                &cadence,
                after.as_deref(),
                7,
                START,
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page
            .iter()
            .all(|c| c.brand_ids.len() == 1 && c.exclusion.is_none()));
        after = page.last().map(|c| c.member_id.clone());
        seen.extend(page.into_iter().map(|c| c.member_id));
        pages += 1;
    }
    assert_eq!(seen, expected);
    assert_eq!(
        pages,
        expected.len().div_ceil(7),
        "full pages until the last"
    );
}

async fn classify_applies_the_audience_rules_to_given_members(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = create(&db, "external", &["s1"]).await;
    let cadence = CadencePolicy::default();
    let asked = brands(&["a09", "ghost", "a06", "a02", "a05", "a04", "a02"]);
    let got = alerts
        .classify_members(&alert, &asked, &cadence, START)
        .await
        .unwrap();
    let expected: Vec<(String, Option<Exclusion>)> = vec![
        ("a09".into(), Some(Exclusion::Unsubscribed)),
        ("a02".into(), None),
        ("a05".into(), Some(Exclusion::Suppressed)),
        ("a04".into(), Some(Exclusion::Unsubscribed)),
        ("a02".into(), None),
    ];
    assert_eq!(got, expected, "given order, missing and inactive left out");
}

async fn claims_answer_by_the_state_of_the_row(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Sending).await;
    let id = alert.id.as_str();
    let cadence = CadencePolicy::default();
    let t0 = db.clock_now();
    let members = brands(&["a01", "a08", "a02"]);
    exec(
        &db,
        "UPDATE members SET name = 'Ann Lee', first_name = 'Ann', locale = 'fr-FR', \
             time_zone = 'Europe/Paris', customer_id = 'c-8' WHERE id = 'a08'",
    )
    .await;

    // Absent rows are claimed, each with what the email needs of the
    // member; a member twice in a batch is busy the second time.
    let first = alerts
        .claim_sends(
            id,
            &brands(&["a01", "a08", "a02", "a01"]),
            &cadence,
            CLAIM_TTL,
            t0,
        )
        .await
        .unwrap();
    let a08 = |attempt| ClaimOutcome::Claimed {
        possible_duplicate: false,
        attempt,
        member: Addressee {
            email: "a08@Example.com".into(),
            name: Some("Ann Lee".into()),
            first_name: Some("Ann".into()),
            locale: Some("fr-FR".into()),
            time_zone: Some("Europe/Paris".into()),
            customer_id: Some("c-8".into()),
        },
    };
    let busy = ClaimOutcome::Busy {
        until: t0.plus(CLAIM_TTL),
    };
    assert_eq!(
        first,
        vec![
            claimed("a01", false, 1),
            a08(1),
            claimed("a02", false, 1),
            busy.clone()
        ]
    );

    // Live claims are busy until they lapse.
    let t1 = t0.plus(CLAIM_TTL - Duration::from_millis(1));
    let again = alerts
        .claim_sends(id, &members, &cadence, CLAIM_TTL, t1)
        .await
        .unwrap();
    assert_eq!(again, vec![busy.clone(), busy.clone(), busy.clone()]);

    // a01 is sent, a08 released after a transient failure, a02's claim lapses.
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a01".into(),
                provider_message_id: Some("pm-1".into()),
            }],
            t1,
        )
        .await
        .unwrap();
    alerts
        .release_claim(id, "a08", "421 try later", t1)
        .await
        .unwrap();
    let t2 = t0.plus(CLAIM_TTL);
    let third = alerts
        .claim_sends(id, &members, &cadence, CLAIM_TTL, t2)
        .await
        .unwrap();
    assert_eq!(
        third,
        vec![
            ClaimOutcome::Finished(SendState::Sent),
            a08(2),
            claimed("a02", true, 2),
        ]
    );
    // The takeover's flag stays through a release and a new claim, and is
    // counted once.
    alerts
        .release_claim(id, "a02", "timeout", t2)
        .await
        .unwrap();
    let fourth = alerts
        .claim_sends(id, &brands(&["a02"]), &cadence, CLAIM_TTL, t2)
        .await
        .unwrap();
    assert_eq!(fourth, vec![claimed("a02", false, 3)]);
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!((stats.sent, stats.possible_duplicates), (1, 1));
    assert_send_counts_match_the_log(&db, id).await;
    let provider_ids = count(
        &db,
        "SELECT count(*) FROM send_log WHERE provider_message_id = 'pm-1' AND state = 'sent'",
    )
    .await;
    assert_eq!(provider_ids, 1);

    let unknown = alerts
        .claim_sends("nope", &members, &cadence, CLAIM_TTL, t2)
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, StoreError::NotFound { .. }),
        "{unknown:?}"
    );
    assert!(alerts
        .claim_sends(id, &[], &cadence, CLAIM_TTL, t2)
        .await
        .unwrap()
        .is_empty());
}

/// A claim writes its batch in one statement and a confirm marks its batch
/// in one: each row still gets the answer its own state calls for, and the
/// counts move by what was written.
async fn one_batch_claims_and_confirms_rows_in_every_state(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Sending).await;
    let id = alert.id.as_str();
    let cadence = CadencePolicy::default();
    let t0 = db.clock_now();
    // Before the batch: a02 sent, a03 claimed (live at t1), a07 claimed and
    // lapsed by t1, a08 released.
    alerts
        .claim_sends(id, &brands(&["a02", "a07", "a08"]), &cadence, CLAIM_TTL, t0)
        .await
        .unwrap();
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a02".into(),
                provider_message_id: Some("early".into()),
            }],
            t0,
        )
        .await
        .unwrap();
    alerts.release_claim(id, "a08", "421", t0).await.unwrap();
    let t1 = t0.plus(CLAIM_TTL);
    alerts
        .claim_sends(id, &brands(&["a03"]), &cadence, CLAIM_TTL, t1)
        .await
        .unwrap();

    let batch = brands(&[
        "a01", "a02", "a03", "a04", "a05", "a06", "a07", "a08", "zz", "a01",
    ]);
    let outcomes = alerts
        .claim_sends(id, &batch, &cadence, CLAIM_TTL, t1)
        .await
        .unwrap();
    let busy = ClaimOutcome::Busy {
        until: t1.plus(CLAIM_TTL),
    };
    assert_eq!(
        outcomes,
        vec![
            claimed("a01", false, 1),
            ClaimOutcome::Finished(SendState::Sent),
            busy.clone(),
            ClaimOutcome::Skipped(SkipReason::Unsubscribed),
            ClaimOutcome::Skipped(SkipReason::Suppressed),
            ClaimOutcome::Skipped(SkipReason::MemberInactive),
            claimed("a07", true, 2),
            claimed("a08", false, 2),
            ClaimOutcome::Skipped(SkipReason::MemberMissing),
            busy,
        ]
    );
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!(
        (stats.sent, stats.skipped, stats.possible_duplicates),
        (1, 4, 1)
    );
    assert_send_counts_match_the_log(&db, id).await;
    let expires = count(
        &db,
        &format!(
            "SELECT count(*) FROM send_log WHERE alert_id = '{id}' AND state = 'claimed' \
             AND claim_expires_at = {} AND claimed_at = {}",
            t1.plus(CLAIM_TTL).millis(),
            t1.millis()
        ),
    )
    .await;
    assert_eq!(expires, 4, "a01, a03, a07 and a08 claimed at t1");

    // a03's claim lapses and another process takes it over and sends it;
    // then the first process confirms its whole batch. Rows no longer
    // claimed (a03 sent by the other, a02 sent long ago, a04 and zz
    // skipped) keep their state and are not counted again.
    let t2 = t1.plus(CLAIM_TTL);
    assert_eq!(
        alerts
            .claim_sends(id, &brands(&["a03"]), &cadence, CLAIM_TTL, t2)
            .await
            .unwrap(),
        vec![claimed("a03", true, 2)]
    );
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a03".into(),
                provider_message_id: Some("other".into()),
            }],
            t2,
        )
        .await
        .unwrap();
    let confirmed: Vec<SentMessage> = ["a01", "a02", "a03", "a04", "a07", "a08", "zz"]
        .iter()
        .map(|m| SentMessage {
            member_id: (*m).into(),
            provider_message_id: (*m != "a08").then(|| format!("pm-{m}")),
        })
        .collect();
    alerts.confirm_sent(id, &confirmed, t2).await.unwrap();
    let provider_of = |member: &str, provider: &str| {
        format!(
            "SELECT count(*) FROM send_log WHERE alert_id = '{id}' AND member_id = '{member}' \
             AND state = 'sent' AND {provider} AND finished_at IS NOT NULL \
             AND claim_expires_at IS NULL"
        )
    };
    for (member, provider) in [
        ("a01", "provider_message_id = 'pm-a01'"),
        ("a02", "provider_message_id = 'early'"),
        ("a03", "provider_message_id = 'other'"),
        ("a07", "provider_message_id = 'pm-a07'"),
        ("a08", "provider_message_id IS NULL"),
    ] {
        assert_eq!(
            count(&db, &provider_of(member, provider)).await,
            1,
            "{member}"
        );
    }
    let skipped = count(
        &db,
        &format!("SELECT count(*) FROM send_log WHERE alert_id = '{id}' AND member_id = 'a04' AND state = 'skipped'"),
    )
    .await;
    assert_eq!(skipped, 1);
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!(
        (stats.sent, stats.skipped, stats.possible_duplicates),
        (5, 4, 2)
    );
    assert_send_counts_match_the_log(&db, id).await;
}

async fn claims_skip_members_no_longer_eligible(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Sending).await;
    let other = alert_in(&db, AlertState::Sending).await;
    let cadence = CadencePolicy::new(1, 7 * DAY).unwrap();
    let now = db.clock_now();
    alerts
        .claim_sends(&other.id, &brands(&["a01"]), &cadence, CLAIM_TTL, now)
        .await
        .unwrap();

    let outcomes = alerts
        .claim_sends(
            &alert.id,
            &brands(&["ghost", "a06", "a04", "a05", "a01", "a08"]),
            &cadence,
            CLAIM_TTL,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            ClaimOutcome::Skipped(SkipReason::MemberMissing),
            ClaimOutcome::Skipped(SkipReason::MemberInactive),
            ClaimOutcome::Skipped(SkipReason::Unsubscribed),
            ClaimOutcome::Skipped(SkipReason::Suppressed),
            // The other alert's claim is still in flight: it counts.
            ClaimOutcome::Skipped(SkipReason::Cadence),
            claimed("a08", false, 1),
        ]
    );
    let reasons = count(
        &db,
        &format!(
            "SELECT count(*) FROM send_log WHERE alert_id = '{}' AND state = 'skipped' \
             AND reason IN ('member_missing', 'member_inactive', 'unsubscribed', 'suppressed', 'cadence')",
            alert.id
        ),
    )
    .await;
    assert_eq!(reasons, 5, "each skip is recorded with its reason");
    let again = alerts
        .claim_sends(&alert.id, &brands(&["a04"]), &cadence, CLAIM_TTL, now)
        .await
        .unwrap();
    assert_eq!(again, vec![ClaimOutcome::Finished(SendState::Skipped)]);

    // A lapsed claim of a member who unsubscribed since is skipped, not resent.
    exec(
        &db,
        "UPDATE subscriptions SET subscribed = '0' WHERE member_id = 'a08'",
    )
    .await;
    let later = now.plus(CLAIM_TTL);
    let lapsed = alerts
        .claim_sends(&alert.id, &brands(&["a08"]), &cadence, CLAIM_TTL, later)
        .await
        .unwrap();
    assert_eq!(
        lapsed,
        vec![ClaimOutcome::Skipped(SkipReason::Unsubscribed)]
    );
    assert_eq!(alerts.stats(&alert.id).await.unwrap().skipped, 6);
    assert_send_counts_match_the_log(&db, &alert.id).await;
    assert_send_counts_match_the_log(&db, &other.id).await;
}

async fn finishing_calls_act_only_on_rows_in_the_right_state(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Sending).await;
    let id = alert.id.as_str();
    let cadence = CadencePolicy::default();
    let now = db.clock_now();
    alerts
        .claim_sends(
            id,
            &brands(&["a01", "a02", "a08"]),
            &cadence,
            CLAIM_TTL,
            now,
        )
        .await
        .unwrap();
    let state_of = |member: &str| {
        format!("SELECT count(*) FROM send_log WHERE alert_id = '{id}' AND member_id = '{member}' AND state = ")
    };

    let sent = [SentMessage {
        member_id: "a01".into(),
        provider_message_id: Some("first".into()),
    }];
    alerts.confirm_sent(id, &sent, now).await.unwrap();
    // Confirming again (a redelivered confirmation) keeps the first answer.
    let again = [SentMessage {
        member_id: "a01".into(),
        provider_message_id: Some("second".into()),
    }];
    alerts.confirm_sent(id, &again, now).await.unwrap();
    assert_eq!(
        count(
            &db,
            &format!(
                "{}'sent' AND provider_message_id = 'first'",
                state_of("a01")
            )
        )
        .await,
        1
    );
    // Neither a release nor a failure undoes a send.
    alerts
        .release_claim(id, "a01", "late timeout", now)
        .await
        .unwrap();
    alerts
        .mark_failed(id, "a01", "late bounce", now)
        .await
        .unwrap();
    assert_eq!(count(&db, &format!("{}'sent'", state_of("a01"))).await, 1);

    // A released row is not confirmable; it fails permanently though.
    alerts.release_claim(id, "a02", "421", now).await.unwrap();
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a02".into(),
                provider_message_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        count(&db, &format!("{}'released'", state_of("a02"))).await,
        1
    );
    alerts
        .mark_failed(id, "a02", "gave up after retries", now)
        .await
        .unwrap();
    assert_eq!(count(&db, &format!("{}'failed'", state_of("a02"))).await, 1);

    // A claimed row fails directly; a member never claimed gets a failed row
    // (a message that failed before its claim still finishes the alert).
    alerts
        .mark_failed(id, "a08", "invalid address", now)
        .await
        .unwrap();
    alerts
        .mark_failed(id, "a05", "render error", now)
        .await
        .unwrap();
    assert_eq!(count(&db, &format!("{}'failed'", state_of("a08"))).await, 1);
    assert_eq!(count(&db, &format!("{}'failed'", state_of("a05"))).await, 1);
    // Confirming or releasing a member with no row writes nothing.
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a09".into(),
                provider_message_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    alerts.release_claim(id, "a09", "x", now).await.unwrap();
    alerts
        .mark_failed("no-such-alert", "a09", "x", now)
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM send_log WHERE member_id = 'a09'").await,
        0
    );
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!((stats.sent, stats.failed), (1, 3));
    assert_send_counts_match_the_log(&db, id).await;
}

async fn concurrent_claims_of_two_alerts_respect_the_cadence(db: TestDb) {
    seed_catalog(&db).await;
    const MEMBERS: usize = 40;
    let mut sql = String::new();
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("c{i:03}")).collect();
    for id in &members {
        sql.push_str(&member_sql(id, "active"));
    }
    exec(&db, &sql).await;
    let first = alert_in(&db, AlertState::Sending).await;
    let second = alert_in(&db, AlertState::Sending).await;
    let cadence = CadencePolicy::new(1, 7 * DAY).unwrap();
    let now = db.clock_now();
    // Each alert claims from its own connections, as two mailer processes would.
    let other_store = db.connect_again().await;
    for round in 0..5 {
        // Alternate which side goes first and the order of members, so the
        // two claims overlap in different ways.
        let mut batch = members.clone();
        if round % 2 == 1 {
            batch.reverse();
        }
        let (a_store, b_store) = (db.store.clone(), other_store.clone());
        let (a_id, b_id) = (first.id.clone(), second.id.clone());
        let (a_batch, b_batch) = (batch.clone(), batch.clone());
        let at = now.plus(DAY * 8 * round);
        let a = tokio::spawn(async move {
            a_store
                .brand_alerts()
                .claim_sends(&a_id, &a_batch, &cadence, CLAIM_TTL, at)
                .await
                .unwrap()
        });
        let b = tokio::spawn(async move {
            b_store
                .brand_alerts()
                .claim_sends(&b_id, &b_batch, &cadence, CLAIM_TTL, at)
                .await
                .unwrap()
        });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        for (i, member) in batch.iter().enumerate() {
            let claimed = [&a[i], &b[i]]
                .iter()
                .filter(|o| matches!(o, ClaimOutcome::Claimed { .. }))
                .count();
            let cadence_skips = [&a[i], &b[i]]
                .iter()
                .filter(|o| matches!(o, ClaimOutcome::Skipped(SkipReason::Cadence)))
                .count();
            assert_eq!(
                (claimed, cadence_skips),
                (1, 1),
                "round {round}, {member}: {:?} / {:?}",
                a[i],
                b[i]
            );
        }
        // Next round: a window later, with fresh rows for both alerts.
        exec(&db, "DELETE FROM send_log").await;
    }
    other_store.close().await;
}

async fn send_counts_stay_exact_when_a_takeover_races_a_confirm(db: TestDb) {
    seed_catalog(&db).await;
    const MEMBERS: usize = 30;
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("r{i:03}")).collect();
    let mut sql = String::new();
    for id in &members {
        sql.push_str(&member_sql(id, "active"));
    }
    exec(&db, &sql).await;
    let cadence = CadencePolicy::new(1000, DAY).unwrap();
    let other_store = db.connect_again().await;
    for round in 0..4 {
        let alert = alert_in(&db, AlertState::Sending).await;
        let now = db.clock_now();
        let lapsed = now.plus(CLAIM_TTL);
        let alerts = db.store.brand_alerts();
        alerts
            .claim_sends(&alert.id, &members, &cadence, CLAIM_TTL, now)
            .await
            .unwrap();
        // The first process confirms every send just as another takes over
        // the lapsed claims, from its own connections.
        let sent: Vec<SentMessage> = members
            .iter()
            .map(|m| SentMessage {
                member_id: m.clone(),
                provider_message_id: None,
            })
            .collect();
        let (a_store, b_store) = (db.store.clone(), other_store.clone());
        let (a_id, b_id) = (alert.id.clone(), alert.id.clone());
        let mut b_batch = members.clone();
        if round % 2 == 1 {
            b_batch.reverse();
        }
        let order = b_batch.clone();
        let a = tokio::spawn(async move {
            a_store
                .brand_alerts()
                .confirm_sent(&a_id, &sent, lapsed)
                .await
                .unwrap()
        });
        let b = tokio::spawn(async move {
            b_store
                .brand_alerts()
                .claim_sends(&b_id, &b_batch, &cadence, CLAIM_TTL, lapsed)
                .await
                .unwrap()
        });
        a.await.unwrap();
        let taken_over = b.await.unwrap();
        // The taker-over sends and confirms what it claimed.
        let resent: Vec<SentMessage> = order
            .iter()
            .zip(&taken_over)
            .filter(|(_, outcome)| matches!(outcome, ClaimOutcome::Claimed { .. }))
            .map(|(m, _)| SentMessage {
                member_id: m.clone(),
                provider_message_id: None,
            })
            .collect();
        alerts
            .confirm_sent(&alert.id, &resent, lapsed)
            .await
            .unwrap();
        assert_send_counts_match_the_log(&db, &alert.id).await;
        assert_eq!(
            alerts.stats(&alert.id).await.unwrap().sent,
            MEMBERS as u64,
            "round {round}"
        );
        db.clock.advance(DAY * 2);
    }
    other_store.close().await;
}

async fn build_progress_only_moves_forward(db: TestDb) {
    seed_catalog(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Building).await;
    let id = alert.id.as_str();
    let step = |cursor: &str, enqueued: u64| BuildStep {
        cursor: cursor.into(),
        enqueued,
        excluded_unsubscribed: 1,
        excluded_suppressed: 2,
        excluded_cadence: 3,
    };
    alerts
        .record_build_step(id, &step("m100", 10))
        .await
        .unwrap();
    alerts
        .record_build_step(id, &step("m200", 5))
        .await
        .unwrap();
    // Replays of earlier batches count once.
    alerts
        .record_build_step(id, &step("m200", 5))
        .await
        .unwrap();
    alerts
        .record_build_step(id, &step("m100", 10))
        .await
        .unwrap();
    let progress = alerts.get(id).await.unwrap().unwrap().build;
    assert_eq!(progress.cursor.as_deref(), Some("m200"));
    assert_eq!(
        (
            progress.enqueued,
            progress.excluded_unsubscribed,
            progress.excluded_suppressed,
            progress.excluded_cadence
        ),
        (15, 2, 4, 6)
    );
    assert_eq!(progress.audience_size, None, "known once the build ends");

    db.clock.advance(Duration::from_secs(30));
    let sending = alerts.finish_build(id, db.clock_now()).await.unwrap();
    assert_eq!(sending.state, AlertState::Sending);
    assert_eq!(sending.build.audience_size, Some(15));
    assert_eq!(sending.build.finished_at, Some(db.clock_now()));
    assert_eq!(
        alerts.finish_build(id, db.clock_now()).await.unwrap(),
        sending,
        "a replay"
    );

    let err = alerts
        .record_build_step(id, &step("m300", 1))
        .await
        .unwrap_err();
    assert!(conflict_message(err).contains("sending"));
    let err = alerts
        .record_build_step("nope", &step("m300", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let draft = alert_in(&db, AlertState::Draft).await;
    let err = alerts
        .finish_build(&draft.id, db.clock_now())
        .await
        .unwrap_err();
    assert_eq!(
        conflict_message(err),
        "cannot start sending a brand alert that is a draft"
    );
}

async fn finished_alerts_complete_and_stats_add_up(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Building).await;
    let id = alert.id.as_str();
    alerts
        .record_build_step(
            id,
            &BuildStep {
                cursor: "a09".into(),
                enqueued: 4,
                excluded_unsubscribed: 2,
                excluded_suppressed: 1,
                excluded_cadence: 1,
            },
        )
        .await
        .unwrap();
    let now = db.clock_now();
    alerts.finish_build(id, now).await.unwrap();
    let cadence = CadencePolicy::default();
    alerts
        .claim_sends(
            id,
            &brands(&["a01", "a02", "a08", "a04"]),
            &cadence,
            CLAIM_TTL,
            now,
        )
        .await
        .unwrap();
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a01".into(),
                provider_message_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    alerts.mark_failed(id, "a02", "bounce", now).await.unwrap();

    // Two of four finished (sent, failed) plus a04 skipped: one still queued.
    assert!(alerts.complete_finished(now).await.unwrap().is_empty());
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!(stats.audience_size, Some(4));
    assert_eq!((stats.enqueued, stats.queued), (4, 1));
    assert_eq!((stats.sent, stats.failed, stats.skipped), (1, 1, 1));
    assert_eq!(
        (
            stats.excluded_unsubscribed,
            stats.excluded_suppressed,
            stats.excluded_cadence
        ),
        (2, 1, 1)
    );
    assert_eq!(stats.possible_duplicates, 0);

    assert_send_counts_match_the_log(&db, id).await;

    let batch = [
        email_event(id, "e1", EventType::Delivered, 1),
        email_event(id, "e2", EventType::Delivered, 2),
        email_event(id, "e3", EventType::Delivered, 3),
        email_event(id, "e4", EventType::Open, 4),
        email_event("no-such-alert", "e5", EventType::Open, 5),
    ];
    count_events(&db, &batch).await;
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!(
        stats.events.into_iter().collect::<Vec<_>>(),
        vec![("delivered".to_string(), 3), ("open".to_string(), 1)]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM alert_event_counts").await,
        2
    );

    db.clock.advance(Duration::from_secs(10));
    alerts
        .confirm_sent(
            id,
            &[SentMessage {
                member_id: "a08".into(),
                provider_message_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    let done_at = db.clock_now();
    assert_eq!(
        alerts.complete_finished(done_at).await.unwrap(),
        vec![alert.id.clone()]
    );
    let sent = alerts.get(id).await.unwrap().unwrap();
    assert_eq!(sent.state, AlertState::Sent);
    assert_eq!(sent.completed_at, Some(done_at));
    assert!(alerts.complete_finished(done_at).await.unwrap().is_empty());
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!((stats.queued, stats.sent), (0, 2));
    assert_send_counts_match_the_log(&db, id).await;

    let err = alerts.stats("nope").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

/// A provider event of `alert_id` (the custom arg the mailer sets).
fn email_event(alert_id: &str, id: &str, event_type: EventType, at: i64) -> EmailEvent {
    EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: id.into(),
        event_type,
        address: format!("{id}@example.com"),
        occurred_at: Timestamp(at),
        message_id: Some(format!("msg-{id}")),
        bounce: None,
        tags: Vec::new(),
        custom_args: json!({ "alert_id": alert_id }).as_object().unwrap().clone(),
        raw: json!({ "sg_event_id": id }),
    }
}

fn keys(events: &[EmailEvent]) -> Vec<EventKey> {
    events.iter().map(EventKey::of).collect()
}

/// Stores the events (as the webhook ingest does) and counts them (as the
/// stats subscriber does); every one of them must be new.
async fn count_events(db: &TestDb, events: &[EmailEvent]) {
    let stored = db.store.email_events().insert(events).await.unwrap();
    assert_eq!(stored.len(), events.len(), "events stored before");
    let counted = db
        .store
        .brand_alerts()
        .count_events(&keys(events))
        .await
        .unwrap();
    assert_eq!(counted, (0..events.len()).collect::<Vec<_>>());
}

fn timeline_count(start: i64, event_type: &str, count: u64) -> TimelineCount {
    TimelineCount {
        bucket_start: Timestamp(start),
        event_type: event_type.into(),
        count,
    }
}

async fn events_count_once_into_the_stats_and_the_timeline(db: TestDb) {
    seed_catalog(&db).await;
    let alert = alert_in(&db, AlertState::Sending).await;
    let id = alert.id.as_str();
    let other = alert_in(&db, AlertState::Sending).await;
    let alerts = db.store.brand_alerts();
    let minute = TimeBucket::Minute.millis();
    let hour = TimeBucket::Hour.millis();
    let day = TimeBucket::Day.millis();
    let base = START.millis() - START.millis() % day;
    let mut unmarked = email_event("", "u1", EventType::Open, base + 1);
    unmarked.custom_args.clear();
    let batch = vec![
        email_event(id, "m1", EventType::Delivered, base + 5),
        email_event(id, "m2", EventType::Delivered, base + minute - 1),
        email_event(id, "m3", EventType::Open, base + 10),
        email_event(id, "m4", EventType::Click, base + 3 * minute + 7),
        email_event(&other.id, "m5", EventType::Open, base + 2 * day),
        email_event("no-such-alert", "m6", EventType::Open, base + 2 * day),
        unmarked,
    ];
    db.store.email_events().insert(&batch).await.unwrap();
    // One call repeating a key, and a key never stored.
    let mut first = keys(&batch);
    first.push(first[0].clone());
    first.push(EventKey {
        provider: Provider::SendGrid,
        provider_event_id: "never-stored".into(),
    });
    assert_eq!(
        alerts.count_events(&first).await.unwrap(),
        (0..batch.len()).collect::<Vec<_>>(),
        "each stored event counts once; the repeat and the unknown key count nothing"
    );
    // Redelivered: nothing counts again.
    assert!(alerts.count_events(&keys(&batch)).await.unwrap().is_empty());
    assert!(alerts.count_events(&[]).await.unwrap().is_empty());

    let events = alerts.stats(id).await.unwrap().events;
    assert_eq!(
        events.into_iter().collect::<Vec<_>>(),
        vec![
            ("click".to_string(), 1),
            ("delivered".to_string(), 2),
            ("open".to_string(), 1)
        ]
    );
    assert_eq!(
        alerts.timeline(id).await.unwrap(),
        EventTimeline {
            bucket: TimeBucket::Minute,
            counts: vec![
                timeline_count(base, "delivered", 2),
                timeline_count(base, "open", 1),
                timeline_count(base + 3 * minute, "click", 1),
            ],
        },
        "a span of minutes counts by the minute; another alert's event is left out"
    );
    assert_eq!(
        alerts.timeline(&other.id).await.unwrap().counts,
        vec![timeline_count(base + 2 * day, "open", 1)]
    );
    assert!(alerts
        .timeline("no-such-alert")
        .await
        .unwrap()
        .counts
        .is_empty());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM email_events WHERE stats_counted_at IS NULL"
        )
        .await,
        0,
        "events of unknown alerts and without one are marked too"
    );

    // A stored event the subscriber has not counted yet is not charted.
    db.store
        .email_events()
        .insert(&[email_event(id, "late", EventType::Open, base + 90 * minute)])
        .await
        .unwrap();
    assert_eq!(alerts.timeline(id).await.unwrap().counts.len(), 3);

    count_events(
        &db,
        &[email_event(
            id,
            "h1",
            EventType::Bounce,
            base + 5 * hour + 1,
        )],
    )
    .await;
    let hourly = alerts.timeline(id).await.unwrap();
    assert_eq!(hourly.bucket, TimeBucket::Hour);
    assert_eq!(
        hourly.counts,
        vec![
            timeline_count(base, "click", 1),
            timeline_count(base, "delivered", 2),
            timeline_count(base, "open", 1),
            timeline_count(base + 5 * hour, "bounce", 1),
        ]
    );

    count_events(
        &db,
        &[
            email_event(id, "d1", EventType::Open, base + 9 * day + 1),
            email_event(id, "d2", EventType::Open, base + 9 * day + 23 * hour),
        ],
    )
    .await;
    let daily = alerts.timeline(id).await.unwrap();
    assert_eq!(daily.bucket, TimeBucket::Day);
    assert_eq!(
        daily.counts,
        vec![
            timeline_count(base, "bounce", 1),
            timeline_count(base, "click", 1),
            timeline_count(base, "delivered", 2),
            timeline_count(base, "open", 1),
            timeline_count(base + 9 * day, "open", 2),
        ],
        "days sum their hours"
    );
    // The chart and the counts agree.
    let charted: u64 = daily.counts.iter().map(|c| c.count).sum();
    let counted: u64 = alerts.stats(id).await.unwrap().events.values().sum();
    assert_eq!(charted, counted);
}

async fn the_migration_backfills_the_counts_and_new_events_add_to_them(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let alert = alert_in(&db, AlertState::Sending).await;
    let id = alert.id.as_str();
    let now = db.clock_now();
    let cadence = CadencePolicy::default();
    let lapsed = now.plus(CLAIM_TTL);
    alerts
        .claim_sends(
            id,
            &brands(&["a01", "a02", "a04", "a08"]),
            &cadence,
            CLAIM_TTL,
            now,
        )
        .await
        .unwrap();
    // a08's claim lapses and is taken over: a possible duplicate.
    alerts
        .claim_sends(id, &brands(&["a08"]), &cadence, CLAIM_TTL, lapsed)
        .await
        .unwrap();
    let sent = |member: &str| SentMessage {
        member_id: member.into(),
        provider_message_id: None,
    };
    alerts
        .confirm_sent(id, &[sent("a01"), sent("a08")], lapsed)
        .await
        .unwrap();
    alerts
        .mark_failed(id, "a02", "bounce", lapsed)
        .await
        .unwrap();
    let hour = TimeBucket::Hour.millis();
    let base = START.millis();
    count_events(
        &db,
        &[
            email_event(id, "old-1", EventType::Delivered, base + 1),
            email_event(id, "old-2", EventType::Open, base + 2 * hour + 5),
        ],
    )
    .await;
    // Stored, not yet counted when the migration runs.
    let pending = [email_event(
        id,
        "pending",
        EventType::Click,
        base + 3 * hour,
    )];
    db.store.email_events().insert(&pending).await.unwrap();
    let stats_before = alerts.stats(id).await.unwrap();
    let timeline_before = alerts.timeline(id).await.unwrap();
    assert_eq!(
        (
            stats_before.sent,
            stats_before.failed,
            stats_before.skipped,
            stats_before.possible_duplicates
        ),
        (2, 1, 1, 1)
    );

    // Back to the schema before the aggregates, keeping the rows written
    // (as a database migrated up to 0010 holds them), and migrate again.
    exec(
        &db,
        "DROP TABLE alert_send_counts; DROP TABLE alert_event_buckets; \
         ALTER TABLE alert_event_counts DROP COLUMN first_occurred_at; \
         ALTER TABLE alert_event_counts DROP COLUMN last_occurred_at; \
         DELETE FROM _sqlx_migrations WHERE version = 11;",
    )
    .await;
    db.store.migrate().await.unwrap();
    assert_eq!(alerts.stats(id).await.unwrap(), stats_before);
    assert_eq!(alerts.timeline(id).await.unwrap(), timeline_before);
    assert_send_counts_match_the_log(&db, id).await;

    // After it, counting goes on from the backfilled figures, once.
    let mut redelivered = keys(&pending);
    redelivered.extend(keys(&[email_event(
        id,
        "old-1",
        EventType::Delivered,
        base + 1,
    )]));
    assert_eq!(alerts.count_events(&redelivered).await.unwrap(), vec![0]);
    count_events(
        &db,
        &[email_event(
            id,
            "new-1",
            EventType::Open,
            base + 2 * hour + 9,
        )],
    )
    .await;
    alerts
        .claim_sends(id, &brands(&["a09", "a03"]), &cadence, CLAIM_TTL, lapsed)
        .await
        .unwrap();
    alerts
        .confirm_sent(id, &[sent("a09")], lapsed)
        .await
        .unwrap();
    assert_send_counts_match_the_log(&db, id).await;
    let stats = alerts.stats(id).await.unwrap();
    assert_eq!(
        stats.events.into_iter().collect::<Vec<_>>(),
        vec![
            ("click".to_string(), 1),
            ("delivered".to_string(), 1),
            ("open".to_string(), 2)
        ]
    );
    assert_eq!(
        alerts.timeline(id).await.unwrap(),
        EventTimeline {
            bucket: TimeBucket::Hour,
            counts: vec![
                timeline_count(base, "delivered", 1),
                timeline_count(base + 2 * hour, "open", 2),
                timeline_count(base + 3 * hour, "click", 1),
            ],
        }
    );
}

async fn prune_deletes_old_rows_of_finished_alerts_only_in_chunks(db: TestDb) {
    seed_catalog(&db).await;
    let mut alerts = Vec::new();
    // Sent first: completing it would complete an (empty) sending alert too.
    for state in [
        AlertState::Sent,
        AlertState::Cancelled,
        AlertState::Failed,
        AlertState::Building,
        AlertState::Sending,
    ] {
        alerts.push((state, alert_in(&db, state).await.id));
    }
    let old = START.millis() - 100 * DAY.as_millis() as i64;
    let cutoff = Timestamp(START.millis() - 90 * DAY.as_millis() as i64);
    for (_, id) in &alerts {
        for (member, claimed_at) in [
            ("m-old-1", old),
            ("m-old-2", old),
            ("m-new", START.millis()),
        ] {
            exec(
                &db,
                &format!(
                    "INSERT INTO send_log (alert_id, member_id, state, claimed_at, finished_at) \
                     VALUES ('{id}', '{member}', 'sent', {claimed_at}, {claimed_at})"
                ),
            )
            .await;
        }
    }
    let store = db.store.brand_alerts();
    let mut chunks = Vec::new();
    loop {
        let deleted = store.prune_send_log(cutoff, 4).await.unwrap();
        chunks.push(deleted);
        if deleted < 4 {
            break;
        }
    }
    assert_eq!(
        chunks,
        vec![4, 2],
        "three finished alerts hold two old rows each"
    );
    for (state, id) in &alerts {
        let left = count(
            &db,
            &format!("SELECT COUNT(*) FROM send_log WHERE alert_id = '{id}'"),
        )
        .await;
        let expected = if state.is_terminal() { 1 } else { 3 };
        assert_eq!(left, expected, "{state}: rows left");
        assert_eq!(store.get(id).await.unwrap().unwrap().state, *state);
    }
    assert_eq!(store.prune_send_log(cutoff, 4).await.unwrap(), 0);
}

async fn a_member_received_the_alerts_sent_to_them_latest_first(db: TestDb) {
    seed_catalog(&db).await;
    seed_audience(&db).await;
    let alerts = db.store.brand_alerts();
    let cadence = CadencePolicy::default();
    let first = alert_in(&db, AlertState::Sending).await;
    let second = alert_in(&db, AlertState::Sending).await;
    let t1 = db.clock_now();
    let t2 = Timestamp(t1.millis() + 60_000);
    let sent = |member: &str| SentMessage {
        member_id: member.into(),
        provider_message_id: None,
    };
    alerts
        .claim_sends(&first.id, &brands(&["a01", "a02"]), &cadence, CLAIM_TTL, t1)
        .await
        .unwrap();
    alerts
        .confirm_sent(&first.id, &[sent("a01"), sent("a02")], t1)
        .await
        .unwrap();
    alerts
        .claim_sends(
            &second.id,
            &brands(&["a01", "a02"]),
            &cadence,
            CLAIM_TTL,
            t2,
        )
        .await
        .unwrap();
    alerts
        .confirm_sent(&second.id, &[sent("a01")], t2)
        .await
        .unwrap();
    alerts
        .mark_failed(&second.id, "a02", "bounce", t2)
        .await
        .unwrap();

    let received = alerts.received_by_member("a01", 10).await.unwrap();
    assert_eq!(
        received
            .iter()
            .map(|r| (r.alert_id.as_str(), r.sent_at))
            .collect::<Vec<_>>(),
        [(second.id.as_str(), t2), (first.id.as_str(), t1)]
    );
    assert_eq!(received[0].name, second.name);
    assert_eq!(received[0].subject, second.subject);
    assert!(!received[0].possible_duplicate);
    let only_sent = alerts.received_by_member("a02", 10).await.unwrap();
    assert_eq!(
        only_sent
            .iter()
            .map(|r| r.alert_id.as_str())
            .collect::<Vec<_>>(),
        [first.id.as_str()],
        "a failed send was not received"
    );
    assert_eq!(alerts.received_by_member("a01", 1).await.unwrap().len(), 1);
    assert_eq!(
        alerts.received_by_member("a01", 0).await.unwrap().len(),
        1,
        "clamped to one"
    );
    assert!(alerts
        .received_by_member("nobody", 10)
        .await
        .unwrap()
        .is_empty());
}

/// Times the audience query over the benchmark shape on SQLite:
/// 1,000,000 members (`HERALD_BENCH_MEMBERS` to change), 50 brands, five
/// affinities each, 10% unsubscribed, 2% suppressed, about 5% at their
/// cadence limit, an alert over 3 brands; beside it, raw SQL inserting as
/// many queue rows as the audience enqueues. Prints the figures and the
/// query plan; asserts only that every page is in order.
///
/// `cargo test --release -p herald-store --test it audience_benchmark -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of data generation; run it in release"]
async fn audience_benchmark() {
    crate::harness::run(Backend::Sqlite, audience_benchmark_case).await;
}

async fn audience_benchmark_case(db: TestDb) {
    let members: u64 = std::env::var("HERALD_BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let writer = &db.store.sqlite().expect("a sqlite store").writer;
    let started = Instant::now();
    let numbers = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {members})"
    );
    let seed = format!(
        "INSERT INTO templates (id, name, subject, html, text, created_at, updated_at) \
             VALUES ('t1', 'basic', 'Hi', '<p>hi</p>', NULL, 0, 0); \
         INSERT INTO brands (id, name, created_at, updated_at) \
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 49) \
             SELECT printf('b%02d', i), printf('Brand %d', i), 0, 0 FROM n; \
         INSERT INTO sales (id, brand_id, headline, url, image, starts_at, ends_at, created_at, updated_at) \
             SELECT 's' || id, id, 'Sale', 'https://shop.example/', NULL, 0, NULL, 0, 0 FROM brands; \
         INSERT INTO members (id, email, email_normalized, status, created_at, updated_at) \
             {numbers} SELECT printf('m%08d', i), printf('m%08d@example.com', i), \
                 printf('m%08d@example.com', i), 'active', 0, 0 FROM n; \
         INSERT INTO affinities (member_id, brand_id, score, updated_at) \
             {numbers}, k(j) AS (VALUES (0), (1), (2), (3), (4)) \
             SELECT printf('m%08d', i), \
                 printf('b%02d', ((i * 2654435761) % 4294967291 + j * 11) % 50), \
                 ((i * 40503 + j * 104729) % 1000003 % 1000) / 1000.0, 0 \
             FROM n CROSS JOIN k; \
         INSERT INTO subscriptions (member_id, email_type, subscribed, source, updated_at) \
             {numbers} SELECT printf('m%08d', i), 'brand_alerts', 0, 'bench', 0 FROM n WHERE i % 10 = 3; \
         INSERT INTO suppressions (address, reason, source, detail, since) \
             {numbers} SELECT printf('m%08d@example.com', i), 'bounce', 'bench', NULL, 0 FROM n WHERE i % 50 = 11;"
    );
    sqlx::raw_sql(&seed).execute(writer).await.unwrap();
    let alerts = db.store.brand_alerts();
    // Three earlier alerts sent to every twentieth member fill their window.
    for n in 0..3 {
        let earlier = create(&db, &format!("earlier {n}"), &["sb00"]).await;
        sqlx::raw_sql(&format!(
            "INSERT INTO send_log (alert_id, member_id, state, claimed_at, finished_at) \
             {numbers} SELECT '{}', printf('m%08d', i), 'sent', {now}, {now} FROM n WHERE i % 20 = 5",
            earlier.id,
            now = START.millis(),
        ))
        .execute(writer)
        .await
        .unwrap();
    }
    let alert = create(&db, "benchmark", &["sb00", "sb01", "sb02"]).await;
    eprintln!("generated {members} members in {:.1?}", started.elapsed());

    let brand_ids = brands(&["b00", "b01", "b02"]);
    let cadence = CadencePolicy::default();
    let now = START.plus(DAY);
    let started = Instant::now();
    let (mut candidates, mut eligible, mut pages) = (0_u64, 0_u64, 0_u64);
    let mut excluded = std::collections::HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = alerts
            .audience_page(&alert, &brand_ids, &cadence, after.as_deref(), 1000, now)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.windows(2).all(|w| w[0].member_id < w[1].member_id));
        assert!(after
            .as_deref()
            .is_none_or(|a| a < page[0].member_id.as_str()));
        after = Some(last.member_id.clone());
        pages += 1;
        for c in page {
            candidates += 1;
            match c.exclusion {
                None => eligible += 1,
                Some(e) => *excluded.entry(format!("{e:?}")).or_insert(0_u64) += 1,
            }
        }
    }
    let query_time = started.elapsed();

    sqlx::raw_sql(
        "CREATE TABLE bench_queue (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, \
             body BLOB NOT NULL, sent_at INTEGER NOT NULL)",
    )
    .execute(writer)
    .await
    .unwrap();
    let body = vec![b'x'; 120];
    let started = Instant::now();
    let mut inserted = 0;
    while inserted < eligible {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for _ in 0..1000.min(eligible - inserted) {
            sqlx::query("INSERT INTO bench_queue (message_id, body, sent_at) VALUES (?1, ?2, ?3)")
                .bind(format!("alert:m{inserted:08}"))
                .bind(&body)
                .bind(now.millis())
                .execute(&mut *tx)
                .await
                .unwrap();
            inserted += 1;
        }
        tx.commit().await.unwrap();
    }
    let reference_time = started.elapsed();

    eprintln!(
        "audience: {candidates} candidates in {pages} pages, {eligible} eligible, excluded {excluded:?}"
    );
    eprintln!(
        "audience query {query_time:.2?}; raw insert of {eligible} queue rows {reference_time:.2?}; \
         ratio {:.2}",
        query_time.as_secs_f64() / reference_time.as_secs_f64()
    );
    assert!(eligible > 0 && !excluded.is_empty());
}
