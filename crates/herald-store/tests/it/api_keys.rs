//! API keys: creation, authentication, revocation, listing, names.

use std::time::Duration;

use herald_core::api_key::{ApiKeyId, ApiKeyName, ApiKeyToken, Scope, Scopes};
use herald_store::api_keys::LAST_USED_RESOLUTION;
use herald_store::StoreError;
use sha2::{Digest, Sha256};

use crate::harness::{TestDb, START};

store_suite!(
    created_key_authenticates_with_its_token,
    only_the_hash_of_the_secret_is_stored,
    wrong_secret_and_unknown_id_are_refused,
    malformed_tokens_are_refused_without_error,
    revoked_key_is_refused_and_revocation_is_idempotent,
    revoking_an_unknown_key_is_not_found,
    list_shows_every_key_oldest_first,
    every_scope_kind_round_trips,
    active_names_are_unique_until_revoked,
    last_used_at_is_written_at_most_once_per_resolution,
);

fn name(text: &str) -> ApiKeyName {
    ApiKeyName::parse(text).unwrap()
}

fn scopes(text: &str) -> Scopes {
    text.parse().unwrap()
}

async fn created_key_authenticates_with_its_token(db: TestDb) {
    let keys = db.store.api_keys();
    let (key, token) = keys.create(&name("ops"), &scopes("admin")).await.unwrap();
    assert_eq!(key.name.as_str(), "ops");
    assert_eq!(key.scopes, scopes("admin"));
    assert_eq!(key.created_at, START);
    assert_eq!((key.last_used_at, key.revoked_at), (None, None));
    assert!(
        token.expose().starts_with(&format!("hk_{}_", key.id)),
        "{token:?}"
    );

    db.clock.advance(Duration::from_secs(5));
    let found = keys
        .authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");
    assert_eq!(found.id, key.id);
    assert_eq!(found.scopes, key.scopes);
    assert_eq!(found.last_used_at, Some(db.clock_now()));
    assert_eq!(keys.get(&key.id).await.unwrap(), Some(found));

    let (other, other_token) = keys.create(&name("ops 2"), &scopes("admin")).await.unwrap();
    assert_ne!(other.id, key.id);
    assert_ne!(other_token.secret(), token.secret());
}

async fn only_the_hash_of_the_secret_is_stored(db: TestDb) {
    let (key, token) = db
        .store
        .api_keys()
        .create(&name("hashed"), &scopes("read-only"))
        .await
        .unwrap();
    let stored = db.stored_secret_hash(key.id.as_str()).await;
    assert_eq!(stored, Sha256::digest(token.secret().as_bytes()).to_vec());
    assert_eq!(token.secret().len(), 64, "32 random bytes as hex");
}

async fn wrong_secret_and_unknown_id_are_refused(db: TestDb) {
    let keys = db.store.api_keys();
    let (key, token) = keys
        .create(&name("target"), &scopes("admin"))
        .await
        .unwrap();
    let mut secret = [0u8; 32];
    secret[0] = 1;
    let forged = ApiKeyToken::from_parts(&key.id, &secret);
    assert_eq!(keys.authenticate(forged.expose()).await.unwrap(), None);
    // One hex digit changed at the end of the real secret.
    let mut near = token.expose().to_owned();
    let last = if near.ends_with('0') { "1" } else { "0" };
    near.replace_range(near.len() - 1.., last);
    assert_eq!(keys.authenticate(&near).await.unwrap(), None);
    let unknown = ApiKeyId::parse("0000000000000000").unwrap();
    let secret_of_real = token.secret().to_owned();
    let elsewhere = format!("hk_{unknown}_{secret_of_real}");
    assert_eq!(keys.authenticate(&elsewhere).await.unwrap(), None);
    assert_eq!(keys.get(&unknown).await.unwrap(), None);
    assert!(keys.authenticate(token.expose()).await.unwrap().is_some());
}

async fn malformed_tokens_are_refused_without_error(db: TestDb) {
    let keys = db.store.api_keys();
    let (_, token) = keys.create(&name("real"), &scopes("admin")).await.unwrap();
    let real = token.expose();
    let huge = "a".repeat(1 << 20);
    let with_bearer = format!("Bearer {real}");
    let padded = format!(" {real}");
    let upper = real.to_uppercase();
    let truncated = &real[..real.len() - 1];
    let sql = format!("{}' OR '1'='1", &real[..real.len() - 11]);
    for bad in [
        "",
        "hk_",
        "hk__",
        "null",
        &huge,
        &with_bearer,
        &padded,
        &upper,
        truncated,
        &sql,
    ] {
        let shown: String = bad.chars().take(40).collect();
        assert_eq!(keys.authenticate(bad).await.unwrap(), None, "{shown:?}");
    }
}

async fn revoked_key_is_refused_and_revocation_is_idempotent(db: TestDb) {
    let keys = db.store.api_keys();
    let (key, token) = keys
        .create(&name("leaky"), &scopes("marketing"))
        .await
        .unwrap();
    // Used just before revocation, so the refusal cannot rely on the
    // last-used write noticing the revocation.
    keys.authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");
    db.clock.advance(Duration::from_secs(1));
    let revoked = keys.revoke(&key.id).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(db.clock_now()));
    assert!(revoked.is_revoked());
    assert_eq!(keys.authenticate(token.expose()).await.unwrap(), None);
    db.clock.advance(LAST_USED_RESOLUTION);
    assert_eq!(keys.authenticate(token.expose()).await.unwrap(), None);

    db.clock.advance(Duration::from_secs(60));
    let again = keys.revoke(&key.id).await.unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "first revocation time is kept"
    );
    assert_eq!(keys.get(&key.id).await.unwrap(), Some(again));
}

async fn revoking_an_unknown_key_is_not_found(db: TestDb) {
    let unknown = ApiKeyId::parse("00000000000000ff").unwrap();
    let err = db.store.api_keys().revoke(&unknown).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("00000000000000ff"), "{err}");
}

async fn list_shows_every_key_oldest_first(db: TestDb) {
    let keys = db.store.api_keys();
    assert_eq!(keys.list().await.unwrap(), vec![]);
    let mut created = Vec::new();
    for n in ["first", "second", "third"] {
        created.push(keys.create(&name(n), &scopes("read-only")).await.unwrap().0);
        db.clock.advance(Duration::from_millis(1));
    }
    let revoked = keys.revoke(&created[1].id).await.unwrap();
    created[1] = revoked;
    assert_eq!(keys.list().await.unwrap(), created);
}

async fn every_scope_kind_round_trips(db: TestDb) {
    let keys = db.store.api_keys();
    let all = scopes("admin,marketing,read-only,queues:shard-3.,queues:shard-30.");
    let (key, token) = keys.create(&name("everything"), &all).await.unwrap();
    assert_eq!(key.scopes, all);
    let reader = Scope::Queues("shard-3.".parse().unwrap());
    let fetched = keys.get(&key.id).await.unwrap().expect("key");
    assert_eq!(fetched.scopes, all);
    assert!(fetched.scopes.contains(&reader));
    let authed = keys
        .authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");
    assert_eq!(authed.scopes, all);
    let (shard, _) = keys
        .create(&name("shard 7"), &scopes("queues:shard-7."))
        .await
        .unwrap();
    assert_eq!(
        keys.get(&shard.id)
            .await
            .unwrap()
            .unwrap()
            .scopes
            .to_string(),
        "queues:shard-7."
    );
}

async fn active_names_are_unique_until_revoked(db: TestDb) {
    let keys = db.store.api_keys();
    let (first, _) = keys
        .create(&name("shard-3"), &scopes("queues:shard-3."))
        .await
        .unwrap();
    let err = keys
        .create(&name("shard-3"), &scopes("admin"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("\"shard-3\""), "{err}");
    assert_eq!(
        keys.list().await.unwrap().len(),
        1,
        "the refused key left nothing behind"
    );

    keys.revoke(&first.id).await.unwrap();
    let (second, token) = keys
        .create(&name("shard-3"), &scopes("queues:shard-3."))
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    assert!(keys.authenticate(token.expose()).await.unwrap().is_some());
    assert_eq!(keys.list().await.unwrap().len(), 2);
}

async fn last_used_at_is_written_at_most_once_per_resolution(db: TestDb) {
    let keys = db.store.api_keys();
    let (key, token) = keys
        .create(&name("busy"), &scopes("read-only"))
        .await
        .unwrap();
    let first_use = db.clock_now();
    keys.authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");

    db.clock
        .advance(LAST_USED_RESOLUTION - Duration::from_millis(1));
    let soon = keys
        .authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");
    assert_eq!(soon.last_used_at, Some(first_use));

    db.clock.advance(Duration::from_millis(1));
    let later = keys
        .authenticate(token.expose())
        .await
        .unwrap()
        .expect("key");
    assert_eq!(later.last_used_at, Some(db.clock_now()));
    assert_eq!(
        keys.get(&key.id).await.unwrap().unwrap().last_used_at,
        Some(db.clock_now())
    );
}
