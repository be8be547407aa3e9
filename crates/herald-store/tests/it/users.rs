//! Web UI users: accounts, password hashing, sessions, lock-out.

use std::time::Duration;

use herald_core::catalog::{EmailAddress, TimeZone};
use herald_store::users::{LockoutPolicy, NewUser, SignIn, UserRole, MAX_PASSWORD_BYTES};
use herald_store::StoreError;

use crate::harness::{TestDb, START};

store_suite!(
    created_user_signs_in_and_the_session_is_found,
    addresses_are_one_account_in_any_case,
    weak_and_oversized_passwords_are_refused,
    wrong_password_and_unknown_address_are_refused_alike,
    five_failures_lock_the_address_until_the_window_passes,
    a_success_clears_the_failures,
    sessions_expire_and_end_on_sign_out,
    forged_and_malformed_session_tokens_find_nothing,
    a_new_password_ends_every_session,
    only_hashes_are_stored,
);

const PASSWORD: &str = "correct horse battery";
const TTL: Duration = Duration::from_secs(3600);

fn new_user(email: &str, role: UserRole) -> NewUser {
    NewUser {
        email: EmailAddress::parse(email).unwrap(),
        role,
        password: PASSWORD.to_owned(),
        time_zone: Some(TimeZone::parse("Europe/Paris").unwrap()),
    }
}

async fn sign_in(db: &TestDb, email: &str, password: &str) -> SignIn {
    db.store
        .users()
        .sign_in(email, password, LockoutPolicy::default(), TTL)
        .await
        .unwrap()
}

async fn created_user_signs_in_and_the_session_is_found(db: TestDb) {
    let users = db.store.users();
    let user = users
        .create(&new_user("Ann@Example.com", UserRole::Marketer))
        .await
        .unwrap();
    assert_eq!(user.email, "Ann@Example.com");
    assert_eq!(user.role, UserRole::Marketer);
    assert_eq!(user.time_zone.as_deref(), Some("Europe/Paris"));
    assert_eq!(user.created_at, START);

    let SignIn::Accepted { session, token } = sign_in(&db, "ann@example.com", PASSWORD).await
    else {
        panic!("the right password is accepted");
    };
    assert_eq!(session.user, user);
    assert_eq!(session.expires_at, START.plus(TTL));
    assert_eq!(session.csrf_token.len(), 64);
    assert_ne!(session.csrf_token, token.expose());
    let found = users.session(token.expose()).await.unwrap();
    assert_eq!(found, Some(session));
    assert_eq!(users.get(&user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(users.list().await.unwrap(), vec![user]);
}

async fn addresses_are_one_account_in_any_case(db: TestDb) {
    let users = db.store.users();
    users
        .create(&new_user("bo@example.com", UserRole::Viewer))
        .await
        .unwrap();
    let err = users
        .create(&new_user(" BO@example.COM", UserRole::Admin))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    let found = users.by_email("Bo@Example.com").await.unwrap().unwrap();
    assert_eq!(
        found.role,
        UserRole::Viewer,
        "the first account is untouched"
    );
    assert_eq!(users.list().await.unwrap().len(), 1);
}

async fn weak_and_oversized_passwords_are_refused(db: TestDb) {
    let users = db.store.users();
    let huge = "x".repeat(MAX_PASSWORD_BYTES + 1);
    for bad in ["", "short", "elevenchars", huge.as_str()] {
        let mut user = new_user("cy@example.com", UserRole::Viewer);
        user.password = bad.to_owned();
        let err = users.create(&user).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidInput {
                    field: "password",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(users.list().await.unwrap().is_empty(), "nothing stored");
    users
        .create(&new_user("cy@example.com", UserRole::Viewer))
        .await
        .unwrap();
    let err = users
        .set_password("cy@example.com", "short")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    assert!(matches!(
        sign_in(&db, "cy@example.com", PASSWORD).await,
        SignIn::Accepted { .. }
    ));
    let err = users
        .set_password("nobody@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

async fn wrong_password_and_unknown_address_are_refused_alike(db: TestDb) {
    db.store
        .users()
        .create(&new_user("di@example.com", UserRole::Admin))
        .await
        .unwrap();
    let huge = "p".repeat(MAX_PASSWORD_BYTES * 4);
    assert_eq!(
        sign_in(&db, "di@example.com", "correct horse batterY").await,
        SignIn::Refused
    );
    assert_eq!(sign_in(&db, "di@example.com", "").await, SignIn::Refused);
    assert_eq!(sign_in(&db, "di@example.com", &huge).await, SignIn::Refused);
    assert_eq!(
        sign_in(&db, "nobody@example.com", PASSWORD).await,
        SignIn::Refused
    );
    assert_eq!(
        sign_in(&db, "'; DROP TABLE users; --", PASSWORD).await,
        SignIn::Refused
    );
    assert!(matches!(
        sign_in(&db, "di@example.com", PASSWORD).await,
        SignIn::Accepted { .. }
    ));
}

async fn five_failures_lock_the_address_until_the_window_passes(db: TestDb) {
    db.store
        .users()
        .create(&new_user("ed@example.com", UserRole::Marketer))
        .await
        .unwrap();
    let policy = LockoutPolicy::default();
    for attempt in 1..policy.max_failures {
        db.clock.advance(Duration::from_secs(10));
        assert_eq!(
            sign_in(&db, "ed@example.com", "wrong password!").await,
            SignIn::Refused,
            "attempt {attempt}"
        );
    }
    db.clock.advance(Duration::from_secs(10));
    let first_failure = START.plus(Duration::from_secs(10));
    let until = first_failure.plus(policy.window);
    assert_eq!(
        sign_in(&db, "ED@example.com", "wrong password!").await,
        SignIn::LockedOut { until },
        "the fifth failure locks, whatever the capitalisation"
    );
    assert_eq!(
        sign_in(&db, "ed@example.com", PASSWORD).await,
        SignIn::LockedOut { until },
        "even the right password is not checked while locked"
    );
    // Another address is not affected.
    assert_eq!(
        sign_in(&db, "other@example.com", PASSWORD).await,
        SignIn::Refused
    );

    db.clock.set(until);
    assert!(
        matches!(
            sign_in(&db, "ed@example.com", PASSWORD).await,
            SignIn::Accepted { .. }
        ),
        "the oldest failure aged out"
    );
}

async fn a_success_clears_the_failures(db: TestDb) {
    db.store
        .users()
        .create(&new_user("fa@example.com", UserRole::Viewer))
        .await
        .unwrap();
    for _ in 0..4 {
        assert_eq!(
            sign_in(&db, "fa@example.com", "not the password").await,
            SignIn::Refused
        );
    }
    assert!(matches!(
        sign_in(&db, "fa@example.com", PASSWORD).await,
        SignIn::Accepted { .. }
    ));
    for _ in 0..4 {
        assert_eq!(
            sign_in(&db, "fa@example.com", "not the password").await,
            SignIn::Refused
        );
    }
}

async fn sessions_expire_and_end_on_sign_out(db: TestDb) {
    let users = db.store.users();
    users
        .create(&new_user("gu@example.com", UserRole::Viewer))
        .await
        .unwrap();
    let SignIn::Accepted { token: first, .. } = sign_in(&db, "gu@example.com", PASSWORD).await
    else {
        panic!("accepted");
    };
    let SignIn::Accepted { token: second, .. } = sign_in(&db, "gu@example.com", PASSWORD).await
    else {
        panic!("accepted");
    };
    users.sign_out(first.expose()).await.unwrap();
    assert_eq!(users.session(first.expose()).await.unwrap(), None);
    assert!(
        users.session(second.expose()).await.unwrap().is_some(),
        "only that one ended"
    );
    users.sign_out(first.expose()).await.unwrap();

    db.clock.advance(TTL - Duration::from_millis(1));
    assert!(users.session(second.expose()).await.unwrap().is_some());
    db.clock.advance(Duration::from_millis(1));
    assert_eq!(
        users.session(second.expose()).await.unwrap(),
        None,
        "expired"
    );
}

async fn forged_and_malformed_session_tokens_find_nothing(db: TestDb) {
    let users = db.store.users();
    users
        .create(&new_user("hu@example.com", UserRole::Admin))
        .await
        .unwrap();
    let SignIn::Accepted { token, .. } = sign_in(&db, "hu@example.com", PASSWORD).await else {
        panic!("accepted");
    };
    let real = token.expose();
    let mut near = real.to_owned();
    let last = if near.ends_with('0') { "1" } else { "0" };
    near.replace_range(near.len() - 1.., last);
    let huge = "a".repeat(1 << 16);
    let upper = real.to_uppercase();
    for bad in ["", "null", &near, &huge, &real[1..], &upper, "' OR '1'='1"] {
        let shown: String = bad.chars().take(20).collect();
        assert_eq!(users.session(bad).await.unwrap(), None, "{shown:?}");
        users.sign_out(bad).await.unwrap();
    }
    assert!(users.session(real).await.unwrap().is_some(), "untouched");
}

async fn a_new_password_ends_every_session(db: TestDb) {
    let users = db.store.users();
    users
        .create(&new_user("io@example.com", UserRole::Marketer))
        .await
        .unwrap();
    let SignIn::Accepted { token, .. } = sign_in(&db, "io@example.com", PASSWORD).await else {
        panic!("accepted");
    };
    db.clock.advance(Duration::from_secs(1));
    let changed = users
        .set_password("IO@example.com", "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(changed.updated_at, db.clock_now());
    assert_eq!(users.session(token.expose()).await.unwrap(), None);
    assert_eq!(
        sign_in(&db, "io@example.com", PASSWORD).await,
        SignIn::Refused
    );
    assert!(matches!(
        sign_in(&db, "io@example.com", "a brand new passphrase").await,
        SignIn::Accepted { .. }
    ));
}

async fn only_hashes_are_stored(db: TestDb) {
    let user = db
        .store
        .users()
        .create(&new_user("jo@example.com", UserRole::Viewer))
        .await
        .unwrap();
    let SignIn::Accepted { token, .. } = sign_in(&db, "jo@example.com", PASSWORD).await else {
        panic!("accepted");
    };
    let (password_hash, token_hash) = stored_secrets(&db, &user.id).await;
    assert!(password_hash.starts_with("$argon2id$"), "{password_hash}");
    assert!(!password_hash.contains(PASSWORD));
    use sha2::Digest;
    assert_eq!(
        token_hash,
        sha2::Sha256::digest(token.expose().as_bytes()).to_vec()
    );
}

/// The password hash and session token hash of a user, read behind the
/// store's back.
async fn stored_secrets(db: &TestDb, user_id: &str) -> (String, Vec<u8>) {
    let password = "SELECT password_hash FROM users WHERE id = ";
    let session = "SELECT token_hash FROM user_sessions WHERE user_id = ";
    match (db.store.sqlite(), db.store.postgres()) {
        (Some(sqlite), _) => (
            sqlx::query_scalar(&format!("{password}?1"))
                .bind(user_id)
                .fetch_one(&sqlite.reader)
                .await
                .unwrap(),
            sqlx::query_scalar(&format!("{session}?1"))
                .bind(user_id)
                .fetch_one(&sqlite.reader)
                .await
                .unwrap(),
        ),
        (_, Some(pg)) => (
            sqlx::query_scalar(&format!("{password}$1"))
                .bind(user_id)
                .fetch_one(&pg.pool)
                .await
                .unwrap(),
            sqlx::query_scalar(&format!("{session}$1"))
                .bind(user_id)
                .fetch_one(&pg.pool)
                .await
                .unwrap(),
        ),
        (None, None) => unreachable!("a store has one backend"),
    }
}
