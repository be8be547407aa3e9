//! Leases: one holder at a time, expiry, takeover with a larger fencing
//! token, renewal, release, and races between many acquirers.

use std::collections::HashSet;
use std::time::Duration;

use herald_store::{Lease, StoreError};

use crate::harness::{TestDb, START};

store_suite!(
    free_lease_is_acquired_and_a_second_holder_refused,
    expired_lease_is_taken_over_with_a_larger_token,
    renew_extends_only_while_held,
    release_frees_at_once_and_tokens_keep_growing,
    leases_with_different_names_are_independent,
    concurrent_acquirers_exactly_one_wins,
    bad_lease_input_is_named,
);

const TTL: Duration = Duration::from_secs(30);
const NAME: &str = "scheduler";

async fn free_lease_is_acquired_and_a_second_holder_refused(db: TestDb) {
    let leases = db.store.leases();
    assert_eq!(leases.current(NAME).await.unwrap(), None);
    let lease = leases
        .try_acquire(NAME, "a", TTL)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(
        lease,
        Lease {
            name: NAME.into(),
            holder: "a".into(),
            token: lease.token,
            acquired_at: START,
            expires_at: START.plus(TTL),
        }
    );
    assert_eq!(leases.try_acquire(NAME, "b", TTL).await.unwrap(), None);
    assert_eq!(
        leases.try_acquire(NAME, "a", TTL).await.unwrap(),
        None,
        "holders renew, not re-acquire"
    );
    db.clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(
        leases.try_acquire(NAME, "b", TTL).await.unwrap(),
        None,
        "one ms before expiry"
    );
    assert_eq!(leases.current(NAME).await.unwrap(), Some(lease));
}

async fn expired_lease_is_taken_over_with_a_larger_token(db: TestDb) {
    let leases = db.store.leases();
    let old = leases
        .try_acquire(NAME, "a", TTL)
        .await
        .unwrap()
        .expect("free");
    db.clock.advance(TTL);
    assert_eq!(
        leases.current(NAME).await.unwrap(),
        None,
        "expired at exactly expires_at"
    );
    let new = leases
        .try_acquire(NAME, "b", TTL)
        .await
        .unwrap()
        .expect("expired");
    assert_eq!(new.holder, "b");
    assert!(new.token > old.token, "{} > {}", new.token, old.token);
    assert_eq!(new.acquired_at, db.clock_now());

    assert_eq!(
        leases.renew(&old, TTL).await.unwrap(),
        None,
        "old holder lost it"
    );
    assert!(
        !leases.release(&old).await.unwrap(),
        "old holder cannot release it"
    );
    assert_eq!(leases.current(NAME).await.unwrap(), Some(new.clone()));

    // Even the same holder name gets a new token after losing the lease.
    db.clock.advance(TTL);
    let again = leases
        .try_acquire(NAME, "b", TTL)
        .await
        .unwrap()
        .expect("expired");
    assert!(again.token > new.token);
    assert_eq!(leases.renew(&new, TTL).await.unwrap(), None, "stale token");
}

async fn renew_extends_only_while_held(db: TestDb) {
    let leases = db.store.leases();
    let lease = leases
        .try_acquire(NAME, "a", TTL)
        .await
        .unwrap()
        .expect("free");
    db.clock.advance(Duration::from_secs(20));
    let renewed = leases
        .renew(&lease, TTL)
        .await
        .unwrap()
        .expect("still held");
    assert_eq!(renewed.token, lease.token);
    assert_eq!(renewed.acquired_at, lease.acquired_at);
    assert_eq!(renewed.expires_at, db.clock_now().plus(TTL));

    // Past the original expiry but within the renewed one: still held.
    db.clock.advance(Duration::from_secs(20));
    assert_eq!(leases.try_acquire(NAME, "b", TTL).await.unwrap(), None);
    assert_eq!(leases.current(NAME).await.unwrap(), Some(renewed.clone()));

    // Ran out with nobody taking it: lost all the same.
    db.clock.advance(TTL);
    assert_eq!(leases.renew(&renewed, TTL).await.unwrap(), None);
    let mut forged = renewed.clone();
    forged.holder = "b".into();
    db.clock.set(START);
    assert_eq!(
        leases.renew(&forged, TTL).await.unwrap(),
        None,
        "holder must match"
    );
}

async fn release_frees_at_once_and_tokens_keep_growing(db: TestDb) {
    let leases = db.store.leases();
    let mut tokens = Vec::new();
    for holder in ["a", "b", "c"] {
        let lease = leases
            .try_acquire(NAME, holder, TTL)
            .await
            .unwrap()
            .expect("free");
        tokens.push(lease.token);
        db.clock.advance(Duration::from_secs(1));
        assert!(leases.release(&lease).await.unwrap());
        assert_eq!(leases.current(NAME).await.unwrap(), None);
        assert!(
            !leases.release(&lease).await.unwrap(),
            "second release is a no-op"
        );
        assert_eq!(
            leases.renew(&lease, TTL).await.unwrap(),
            None,
            "released is lost"
        );
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

async fn leases_with_different_names_are_independent(db: TestDb) {
    let leases = db.store.leases();
    let one = leases
        .try_acquire("scheduler", "a", TTL)
        .await
        .unwrap()
        .expect("free");
    let two = leases
        .try_acquire("redrive", "b", TTL)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(
        leases.current("scheduler").await.unwrap(),
        Some(one.clone())
    );
    assert_eq!(leases.current("redrive").await.unwrap(), Some(two));
    assert!(leases.release(&one).await.unwrap());
    assert!(leases.current("redrive").await.unwrap().is_some());
}

async fn concurrent_acquirers_exactly_one_wins(db: TestDb) {
    // Half the contenders go through a second, independent store on the same
    // database, as a second process would.
    let other = db.connect_again().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .leases()
                .try_acquire(NAME, &format!("holder-{i}"), TTL)
                .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.unwrap().unwrap() {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        db.store.leases().current(NAME).await.unwrap().as_ref(),
        winners.first()
    );

    // Same race after expiry: one takeover, one new token.
    db.clock.advance(TTL);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .leases()
                .try_acquire(NAME, &format!("late-{i}"), TTL)
                .await
        }));
    }
    let mut tokens = HashSet::new();
    for task in tasks {
        if let Some(lease) = task.await.unwrap().unwrap() {
            tokens.insert(lease.token);
        }
    }
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(tokens.iter().all(|t| *t > winners[0].token));
    other.close().await;
}

async fn bad_lease_input_is_named(db: TestDb) {
    let leases = db.store.leases();
    let cases = [
        (leases.try_acquire("", "a", TTL).await, "lease name"),
        (leases.try_acquire(NAME, "", TTL).await, "lease holder"),
        (
            leases.try_acquire(&"n".repeat(201), "a", TTL).await,
            "lease name",
        ),
        (
            leases.try_acquire(NAME, "a", Duration::ZERO).await,
            "lease ttl",
        ),
        (
            leases
                .try_acquire(NAME, "a", Duration::from_micros(999))
                .await,
            "lease ttl",
        ),
    ];
    for (outcome, field) in cases {
        let err = outcome.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidInput { field: f, .. } if *f == field),
            "{field}: {err}"
        );
        assert!(err.to_string().starts_with(field), "{err}");
    }
    let lease = leases
        .try_acquire(NAME, "a", TTL)
        .await
        .unwrap()
        .expect("free");
    let err = leases.renew(&lease, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "lease ttl",
                ..
            }
        ),
        "{err}"
    );
    assert!(leases
        .try_acquire(&"n".repeat(200), "a", TTL)
        .await
        .unwrap()
        .is_some());
}
