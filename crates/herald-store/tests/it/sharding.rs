//! Sharding events, placements and holds: the state machine through the
//! store, idempotent ids, all-or-nothing batches, late events, the routing
//! lookup and the hold FIFO.

use std::time::Duration;

use herald_core::routing::CustomerState;
use herald_core::sharding::{
    CustomerId, Placement, ShardId, ShardingEvent, ShardingEventId, ShardingEventKind,
};
use herald_core::Timestamp;
use herald_store::holds::NewHeldEvent;
use herald_store::page::PageRequest;
use herald_store::sharding::{EventOutcome, ShardingError};

use crate::harness::TestDb;

store_suite!(
    every_legal_transition_moves_the_placement,
    illegal_transition_names_the_state_and_stores_nothing,
    same_id_twice_is_one_event,
    a_batch_is_all_or_nothing,
    late_events_are_superseded,
    routing_states_join_placement_and_hold,
    holds_are_fifo_per_customer_and_survive_a_new_connection,
    releasable_and_expired_holds,
);

fn s(id: &str) -> ShardId {
    ShardId::parse(id).unwrap()
}

fn c(id: &str) -> CustomerId {
    CustomerId::parse(id).unwrap()
}

fn ev(id: &str, customer: &str, kind: ShardingEventKind, at: i64) -> ShardingEvent {
    ShardingEvent {
        id: ShardingEventId::parse(id).unwrap(),
        customer: c(customer),
        kind,
        occurred_at: Timestamp(at),
    }
}

fn assigned(shard: &str) -> ShardingEventKind {
    ShardingEventKind::Assigned { shard: s(shard) }
}

fn started(from: &str, to: &str) -> ShardingEventKind {
    ShardingEventKind::MigrationStarted {
        from: s(from),
        to: s(to),
    }
}

fn succeeded(shard: &str) -> ShardingEventKind {
    ShardingEventKind::MigrationSucceeded { shard: s(shard) }
}

async fn every_legal_transition_moves_the_placement(db: TestDb) {
    let sharding = db.store.sharding();
    assert_eq!(
        sharding.placement(&c("c1")).await.unwrap().placement,
        Placement::Unknown
    );
    let steps = [
        (assigned("a"), Placement::Stable { shard: s("a") }, None),
        (assigned("b"), Placement::Stable { shard: s("b") }, None),
        (
            started("b", "c"),
            Placement::Migrating {
                from: s("b"),
                to: s("c"),
            },
            None,
        ),
        (
            succeeded("c"),
            Placement::Stable { shard: s("c") },
            Some(s("c")),
        ),
        (
            started("c", "a"),
            Placement::Migrating {
                from: s("c"),
                to: s("a"),
            },
            None,
        ),
        (
            ShardingEventKind::MigrationFailed,
            Placement::Stable { shard: s("c") },
            Some(s("c")),
        ),
    ];
    for (i, (kind, placement, release_to)) in steps.into_iter().enumerate() {
        let id = format!("e{i}");
        let recorded = sharding
            .record(&[ev(&id, "c1", kind, 100 + i as i64)])
            .await
            .unwrap();
        assert_eq!(recorded.len(), 1);
        let record = &recorded[0].record;
        assert!(!recorded[0].duplicate);
        assert_eq!(record.outcome, EventOutcome::Applied);
        assert_eq!(record.placement, placement);
        assert_eq!(record.release_to, release_to);
        let now = sharding.placement(&c("c1")).await.unwrap();
        assert_eq!(now.placement, placement);
        assert_eq!(now.last_event_id.unwrap().as_str(), id);
    }
    let history = sharding
        .history(&c("c1"), &PageRequest::first(4))
        .await
        .unwrap();
    assert_eq!(history.items.len(), 4);
    assert_eq!(history.items[0].event.id.as_str(), "e0");
    let rest = sharding
        .history(
            &c("c1"),
            &PageRequest {
                after: history.next_cursor.clone(),
                limit: 4,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items
            .iter()
            .map(|r| r.event.id.as_str())
            .collect::<Vec<_>>(),
        ["e4", "e5"]
    );
    assert_eq!(rest.next_cursor, None);
    assert_eq!(
        sharding.shards().await.unwrap(),
        vec![s("a"), s("b"), s("c")]
    );
}

async fn illegal_transition_names_the_state_and_stores_nothing(db: TestDb) {
    let sharding = db.store.sharding();
    let err = sharding
        .record(&[ev("x1", "c1", ShardingEventKind::MigrationFailed, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ShardingError::Rejected { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unknown"), "{err}");
    sharding
        .record(&[ev("x2", "c1", assigned("a"), 2)])
        .await
        .unwrap();
    let err = sharding
        .record(&[ev("x3", "c1", started("b", "c"), 3)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stable(a)"), "{err}");
    let history = sharding
        .history(&c("c1"), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        history.items.len(),
        1,
        "refused events are recorded nowhere"
    );
    assert_eq!(sharding.shards().await.unwrap(), vec![s("a")]);
}

async fn same_id_twice_is_one_event(db: TestDb) {
    let sharding = db.store.sharding();
    let first = sharding
        .record(&[ev("d1", "c1", assigned("a"), 1)])
        .await
        .unwrap();
    sharding
        .record(&[ev("d2", "c1", assigned("b"), 2)])
        .await
        .unwrap();
    let again = sharding
        .record(&[ev("d1", "c1", assigned("a"), 1)])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(
        again[0].record, first[0].record,
        "the original outcome comes back"
    );
    assert_eq!(
        sharding.placement(&c("c1")).await.unwrap().placement,
        Placement::Stable { shard: s("b") },
        "a repeat changes nothing"
    );
    let err = sharding
        .record(&[ev("d1", "c2", assigned("a"), 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ShardingError::IdReused { index: 0, .. }),
        "{err}"
    );
}

async fn a_batch_is_all_or_nothing(db: TestDb) {
    let sharding = db.store.sharding();
    let err = sharding
        .record(&[
            ev("b1", "c1", assigned("a"), 1),
            ev("b2", "c2", assigned("a"), 1),
            ev("b3", "c1", succeeded("b"), 2),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ShardingError::Rejected { index: 2, .. }),
        "{err}"
    );
    for customer in ["c1", "c2"] {
        assert_eq!(
            sharding.placement(&c(customer)).await.unwrap().placement,
            Placement::Unknown
        );
    }
    assert!(sharding.shards().await.unwrap().is_empty());
    let ok = sharding
        .record(&[
            ev("b1", "c1", assigned("a"), 1),
            ev("b4", "c1", started("a", "b"), 2),
            ev("b5", "c1", succeeded("b"), 3),
        ])
        .await
        .unwrap();
    assert_eq!(ok[2].record.release_to, Some(s("b")));
    assert!(ok[0].record.seq < ok[1].record.seq && ok[1].record.seq < ok[2].record.seq);
    assert!(matches!(
        sharding.record(&[]).await.unwrap_err(),
        ShardingError::Empty
    ));
    let many: Vec<_> = (0..1001)
        .map(|i| ev(&format!("m{i}"), "c9", assigned("a"), i))
        .collect();
    assert!(matches!(
        sharding.record(&many).await.unwrap_err(),
        ShardingError::TooMany(1001)
    ));
}

async fn late_events_are_superseded(db: TestDb) {
    let sharding = db.store.sharding();
    sharding
        .record(&[ev("l1", "c1", assigned("b"), 20)])
        .await
        .unwrap();
    let late = sharding
        .record(&[ev("l0", "c1", assigned("a"), 10)])
        .await
        .unwrap();
    assert_eq!(late[0].record.outcome, EventOutcome::Superseded);
    assert_eq!(
        late[0].record.placement,
        Placement::Stable { shard: s("b") }
    );
    assert_eq!(
        sharding.placement(&c("c1")).await.unwrap().placement,
        Placement::Stable { shard: s("b") }
    );
    let history = sharding
        .history(&c("c1"), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(history.items.len(), 2, "kept in the history");
}

fn held(customer: &str, message_id: &str) -> NewHeldEvent {
    NewHeldEvent {
        customer: c(customer),
        message_id: message_id.to_owned(),
        body: format!("{{\"m\":\"{message_id}\"}}").into_bytes(),
        attributes: [("type".to_owned(), "open".to_owned())].into(),
    }
}

async fn routing_states_join_placement_and_hold(db: TestDb) {
    let sharding = db.store.sharding();
    sharding
        .record(&[
            ev("r1", "c1", assigned("a"), 1),
            ev("r2", "c2", assigned("a"), 1),
            ev("r3", "c2", started("a", "b"), 2),
        ])
        .await
        .unwrap();
    db.store
        .holds()
        .park("shards", &[held("c2", "m1")])
        .await
        .unwrap();
    let states = sharding
        .routing_states("shards", &[c("c1"), c("c2"), c("c3"), c("c1")])
        .await
        .unwrap();
    assert_eq!(
        states[&c("c1")],
        CustomerState {
            placement: Placement::Stable { shard: s("a") },
            hold_nonempty: false
        }
    );
    assert!(states[&c("c2")].hold_nonempty);
    assert_eq!(states[&c("c3")].placement, Placement::Unknown);
    let other = sharding
        .routing_states("other-route", &[c("c2")])
        .await
        .unwrap();
    assert!(!other[&c("c2")].hold_nonempty, "holds are per route");
}

async fn holds_are_fifo_per_customer_and_survive_a_new_connection(db: TestDb) {
    let holds = db.store.holds();
    assert_eq!(
        holds
            .park("r", &[held("c1", "m1"), held("c2", "m2"), held("c1", "m3")])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        holds
            .park("r", &[held("c1", "m3"), held("c1", "m4")])
            .await
            .unwrap(),
        1,
        "a redelivered message is held once"
    );
    let again = db.connect_again().await;
    let oldest = again.holds().oldest("r", &c("c1"), 2).await.unwrap();
    assert_eq!(
        oldest
            .iter()
            .map(|h| h.message_id.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m3"]
    );
    assert_eq!(oldest[0].attributes["type"], "open");
    assert_eq!(oldest[0].body, b"{\"m\":\"m1\"}");
    assert_eq!(
        again
            .holds()
            .remove(&oldest.iter().map(|h| h.seq).collect::<Vec<_>>())
            .await
            .unwrap(),
        2
    );
    let rest = again.holds().oldest("r", &c("c1"), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].message_id, "m4");
    let summary = again.holds().summary().await.unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!((summary[0].events, summary[0].customers), (2, 2));
    assert_eq!(summary[0].oldest_held_at, db.clock_now());
    again.close().await;
}

async fn releasable_and_expired_holds(db: TestDb) {
    let sharding = db.store.sharding();
    let holds = db.store.holds();
    sharding
        .record(&[
            ev("h1", "c1", assigned("a"), 1),
            ev("h2", "c1", started("a", "b"), 2),
            ev("h3", "c2", assigned("a"), 1),
            ev("h4", "c2", started("a", "b"), 2),
        ])
        .await
        .unwrap();
    holds.park("r", &[held("c1", "m1")]).await.unwrap();
    db.clock.advance(Duration::from_secs(60));
    holds.park("r", &[held("c2", "m2")]).await.unwrap();
    assert!(holds.releasable(10).await.unwrap().is_empty());
    assert_eq!(holds.customers(10).await.unwrap().len(), 2);
    sharding
        .record(&[ev("h5", "c1", succeeded("b"), 3)])
        .await
        .unwrap();
    let releasable = holds.releasable(10).await.unwrap();
    assert_eq!(releasable.len(), 1);
    assert_eq!(releasable[0].customer, c("c1"));
    assert_eq!(releasable[0].release_to, Some(s("b")));
    assert_eq!(releasable[0].events, 1);
    let expired = holds.expired(Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|h| h.message_id.as_str())
            .collect::<Vec<_>>(),
        ["m1"]
    );
    assert!(holds
        .expired(Duration::from_secs(61), 10)
        .await
        .unwrap()
        .is_empty());
}
