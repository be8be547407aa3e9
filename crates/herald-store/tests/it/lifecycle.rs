//! Opening, migrating, pinging and closing, and the errors a missing or
//! unreachable database gives.

use std::sync::Arc;

use herald_core::api_key::{ApiKeyName, Scopes};
use herald_core::SystemClock;
use herald_store::{Store, StoreError};

use crate::harness::TestDb;

store_suite!(
    migrating_twice_is_a_no_op,
    ping_answers_and_names_the_backend,
    a_closed_store_errors_and_names_the_backend,
    a_second_connection_sees_the_same_data,
);

async fn migrating_twice_is_a_no_op(db: TestDb) {
    let name = ApiKeyName::parse("before second migration").unwrap();
    let (key, _) = db
        .store
        .api_keys()
        .create(&name, &"admin".parse().unwrap())
        .await
        .unwrap();
    db.store.migrate().await.unwrap();
    db.store.migrate().await.unwrap();
    let keys = db.store.api_keys().list().await.unwrap();
    assert_eq!(keys, vec![key]);
}

async fn ping_answers_and_names_the_backend(db: TestDb) {
    db.store.ping().await.unwrap();
    let expected = match (db.store.sqlite(), db.store.postgres()) {
        (Some(_), None) => "sqlite",
        (None, Some(_)) => "postgres",
        other => panic!("a store has exactly one backend, got {other:?}"),
    };
    assert_eq!(db.store.backend(), expected);
    assert!(format!("{:?}", db.store).contains(expected));
}

async fn a_closed_store_errors_and_names_the_backend(db: TestDb) {
    db.store.close().await;
    let backend = db.store.backend();
    let errors = [
        db.store.ping().await.unwrap_err(),
        db.store.api_keys().list().await.unwrap_err(),
        db.store.leases().current("scheduler").await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.backend(), Some(backend), "{err}");
        assert!(
            err.to_string().starts_with(&format!("{backend} store:")),
            "{err}"
        );
    }
}

async fn a_second_connection_sees_the_same_data(db: TestDb) {
    let other = db.connect_again().await;
    let scopes: Scopes = "read-only".parse().unwrap();
    let (key, token) = db
        .store
        .api_keys()
        .create(&ApiKeyName::parse("shared").unwrap(), &scopes)
        .await
        .unwrap();
    let seen = other.api_keys().authenticate(token.expose()).await.unwrap();
    assert_eq!(seen.map(|k| k.id), Some(key.id));
    other.close().await;
}

#[tokio::test]
async fn unreachable_postgres_is_a_postgres_error_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let err = Store::connect("postgres://herald:hunter2@127.0.0.1:1/herald")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.backend(), Some("postgres"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn sqlite_in_an_impossible_place_is_a_sqlite_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    // Permissions would not stop a test run as root; a path through a
    // regular file fails for everyone.
    let url = format!("sqlite://{}/herald.db", file.display());
    let err = Store::connect(&url).await.unwrap_err();
    assert_eq!(err.backend(), Some("sqlite"), "{err}");
    assert!(err.to_string().contains("not-a-folder"), "{err}");
}

#[tokio::test]
async fn a_sqlite_file_that_is_not_a_database_is_a_sqlite_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("garbage.db");
    std::fs::write(&file, vec![0x42u8; 8192]).unwrap();
    let outcome = async {
        let store = Store::connect(file.to_str().unwrap()).await?;
        store.migrate().await
    }
    .await;
    let err = outcome.unwrap_err();
    assert_eq!(err.backend(), Some("sqlite"), "{err}");
}

#[tokio::test]
async fn urls_choose_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    for url in [
        format!("sqlite://{}/a.db", dir.path().display()),
        format!("sqlite:{}/b.db", dir.path().display()),
        format!("{}/c.db", dir.path().display()),
    ] {
        let store = Store::connect_with_clock(&url, clock.clone())
            .await
            .unwrap();
        assert_eq!(store.backend(), "sqlite", "{url}");
        assert!(store.sqlite().is_some() && store.postgres().is_none());
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        store.close().await;
    }
    for url in ["mysql://root:hunter2@db/herald", "redis://cache", ""] {
        let err = Store::connect(url).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
