//! Members, affinities, subscriptions, suppressions and the cadence policy.

use std::time::Duration;

use herald_core::cadence::CadencePolicy;
use herald_core::catalog::{
    AffinityScore, BrandId, CustomerId, EmailAddress, EmailType, Locale, MemberId, MemberStatus,
    SuppressionReason, TimeZone,
};
use herald_store::members::{MemberFilter, MemberInput, MemberPatch};
use herald_store::page::PageRequest;
use herald_store::StoreError;

use crate::harness::{TestDb, START};

store_suite!(
    members_are_upserted_read_and_deleted,
    members_page_and_filter_by_normalized_email,
    member_patch_changes_only_given_fields,
    upsert_batch_lets_the_last_entry_win,
    existing_reports_only_known_members,
    get_many_reads_the_known_members_of_a_list,
    affinities_are_set_listed_and_deleted,
    affinity_needs_a_known_member_and_brand,
    deleting_a_member_removes_affinities_and_subscriptions,
    subscriptions_default_to_subscribed_and_record_opt_outs,
    subscription_for_an_unknown_member_is_not_found,
    suppression_is_idempotent_and_keeps_the_first_since,
    suppressions_page_and_can_be_lifted,
    suppressing_a_malformed_address_is_invalid_input,
    cadence_policy_defaults_and_can_be_set,
);

pub fn member(id: &str, email: &str) -> MemberInput {
    MemberInput {
        id: MemberId::parse(id).unwrap(),
        email: EmailAddress::parse(email).unwrap(),
        name: Some(format!("Member {id}")),
        first_name: None,
        locale: Some(Locale::parse("en-GB").unwrap()),
        time_zone: Some(TimeZone::parse("Europe/London").unwrap()),
        status: MemberStatus::Active,
        customer_id: None,
    }
}

async fn brand(db: &TestDb, id: &str) {
    db.store
        .catalog()
        .create_brand(&BrandId::parse(id).unwrap(), id)
        .await
        .unwrap();
}

fn score(value: f64) -> AffinityScore {
    AffinityScore::new(value).unwrap()
}

async fn members_are_upserted_read_and_deleted(db: TestDb) {
    let members = db.store.members();
    let (created, was_new) = members
        .upsert(&member("m1", " Ann@Example.com"))
        .await
        .unwrap();
    assert!(was_new);
    assert_eq!(created.email, "Ann@Example.com");
    assert_eq!(created.email_normalized, "ann@example.com");
    assert_eq!(created.locale.as_deref(), Some("en-GB"));
    assert_eq!(created.time_zone.as_deref(), Some("Europe/London"));
    assert_eq!(created.status, MemberStatus::Active);
    assert_eq!((created.created_at, created.updated_at), (START, START));
    assert_eq!(members.get("m1").await.unwrap(), Some(created));

    db.clock.advance(Duration::from_secs(3));
    let mut replacement = member("m1", "ann@new.example");
    replacement.name = None;
    replacement.status = MemberStatus::Inactive;
    let (replaced, was_new) = members.upsert(&replacement).await.unwrap();
    assert!(!was_new);
    assert_eq!(replaced.email, "ann@new.example");
    assert_eq!(replaced.name, None, "an upsert replaces the whole record");
    assert_eq!(replaced.status, MemberStatus::Inactive);
    assert_eq!(replaced.created_at, START);
    assert_eq!(replaced.updated_at, db.clock_now());

    members.delete("m1").await.unwrap();
    assert_eq!(members.get("m1").await.unwrap(), None);
    assert!(matches!(
        members.delete("m1").await,
        Err(StoreError::NotFound { .. })
    ));

    let mut blank = member("m2", "b@example.com");
    blank.first_name = Some("   ".into());
    assert!(matches!(
        members.upsert(&blank).await,
        Err(StoreError::InvalidInput {
            field: "first_name",
            ..
        })
    ));
}

async fn members_page_and_filter_by_normalized_email(db: TestDb) {
    let members = db.store.members();
    for i in 0..5 {
        members
            .upsert(&member(&format!("m{i}"), &format!("m{i}@example.com")))
            .await
            .unwrap();
    }
    members
        .upsert(&member("m9", "M1@Example.com"))
        .await
        .unwrap();

    let first = members
        .list(&MemberFilter {
            email: None,
            page: PageRequest::first(4),
        })
        .await
        .unwrap();
    let ids: Vec<&str> = first.items.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m0", "m1", "m2", "m3"]);
    let second = members
        .list(&MemberFilter {
            email: None,
            page: PageRequest {
                after: first.next_cursor.clone(),
                limit: 4,
            },
        })
        .await
        .unwrap();
    let ids: Vec<&str> = second.items.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m4", "m9"]);
    assert_eq!(second.next_cursor, None);

    let same_address = members
        .list(&MemberFilter {
            email: Some(" m1@EXAMPLE.com".into()),
            page: PageRequest::default(),
        })
        .await
        .unwrap();
    let ids: Vec<&str> = same_address.items.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m9"]);
}

async fn member_patch_changes_only_given_fields(db: TestDb) {
    let members = db.store.members();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    let patch = MemberPatch {
        first_name: Some(Some("Ann".into())),
        locale: Some(None),
        customer_id: Some(Some(CustomerId::parse("c-9").unwrap())),
        ..MemberPatch::default()
    };
    let patched = members.update("m1", &patch).await.unwrap();
    assert_eq!(patched.first_name.as_deref(), Some("Ann"));
    assert_eq!(patched.locale, None);
    assert_eq!(patched.customer_id.as_deref(), Some("c-9"));
    assert_eq!(patched.name.as_deref(), Some("Member m1"));
    assert_eq!(patched.time_zone.as_deref(), Some("Europe/London"));
    assert_eq!(patched.email, "a@example.com");
    assert!(matches!(
        members.update("ghost", &patch).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn upsert_batch_lets_the_last_entry_win(db: TestDb) {
    let members = db.store.members();
    let batch = vec![
        member("m1", "first@example.com"),
        member("m2", "two@example.com"),
        member("m1", "last@example.com"),
    ];
    assert_eq!(members.upsert_batch(&batch).await.unwrap(), 3);
    assert_eq!(
        members.get("m1").await.unwrap().unwrap().email,
        "last@example.com"
    );
    assert!(members.get("m2").await.unwrap().is_some());
    let big: Vec<MemberInput> = (0..2500)
        .map(|i| member(&format!("b{i:05}"), &format!("b{i}@example.com")))
        .collect();
    assert_eq!(members.upsert_batch(&big).await.unwrap(), 2500);
    let ids: Vec<String> = big.iter().map(|m| m.id.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(members.existing(&ids).await.unwrap().len(), 2500);
}

async fn existing_reports_only_known_members(db: TestDb) {
    let members = db.store.members();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    let found = members.existing(&["m1", "m2"]).await.unwrap();
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["m1"]);
    assert!(members.existing(&[]).await.unwrap().is_empty());
}

async fn get_many_reads_the_known_members_of_a_list(db: TestDb) {
    let members = db.store.members();
    for (id, email) in [("m1", "a@example.com"), ("m2", "b@example.com")] {
        members.upsert(&member(id, email)).await.unwrap();
    }
    let mut found = members.get_many(&["m2", "nobody", "m1"]).await.unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], members.get("m1").await.unwrap().unwrap());
    assert_eq!(found[1].email, "b@example.com");
    assert!(members.get_many(&[]).await.unwrap().is_empty());
}

async fn affinities_are_set_listed_and_deleted(db: TestDb) {
    brand(&db, "b1").await;
    brand(&db, "b2").await;
    let members = db.store.members();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    members.set_affinity("m1", "b2", score(0.25)).await.unwrap();
    members.set_affinity("m1", "b1", score(0.5)).await.unwrap();
    db.clock.advance(Duration::from_secs(1));
    let again = members.set_affinity("m1", "b1", score(0.9)).await.unwrap();
    assert_eq!(again.updated_at, db.clock_now());

    let list = members.affinities("m1").await.unwrap();
    let pairs: Vec<(&str, f64)> = list
        .iter()
        .map(|a| (a.brand_id.as_str(), a.score))
        .collect();
    assert_eq!(pairs, [("b1", 0.9), ("b2", 0.25)]);

    members.delete_affinity("m1", "b2").await.unwrap();
    assert_eq!(members.affinities("m1").await.unwrap().len(), 1);
    assert!(matches!(
        members.delete_affinity("m1", "b2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(members.affinities("ghost").await.unwrap().is_empty());
}

async fn affinity_needs_a_known_member_and_brand(db: TestDb) {
    brand(&db, "b1").await;
    let members = db.store.members();
    let err = members
        .set_affinity("ghost", "b1", score(0.5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    let err = members
        .set_affinity("m1", "nope", score(0.5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "brand_id",
                ..
            }
        ),
        "{err}"
    );
    assert!(members.affinities("m1").await.unwrap().is_empty());
}

async fn deleting_a_member_removes_affinities_and_subscriptions(db: TestDb) {
    brand(&db, "b1").await;
    let members = db.store.members();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    members.set_affinity("m1", "b1", score(0.5)).await.unwrap();
    members
        .set_subscription("m1", &EmailType::brand_alerts(), false, "api")
        .await
        .unwrap();
    members.delete("m1").await.unwrap();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    assert!(members.affinities("m1").await.unwrap().is_empty());
    assert!(members.subscriptions("m1").await.unwrap().is_empty());
}

async fn subscriptions_default_to_subscribed_and_record_opt_outs(db: TestDb) {
    let members = db.store.members();
    members
        .upsert(&member("m1", "a@example.com"))
        .await
        .unwrap();
    assert!(members.subscriptions("m1").await.unwrap().is_empty());

    let alerts = EmailType::brand_alerts();
    let digest = EmailType::parse("weekly_digest").unwrap();
    let off = members
        .set_subscription("m1", &alerts, false, "unsubscribe_link")
        .await
        .unwrap();
    assert!(!off.subscribed);
    members
        .set_subscription("m1", &digest, true, "import")
        .await
        .unwrap();
    db.clock.advance(Duration::from_secs(1));
    members
        .set_subscription("m1", &alerts, false, "api")
        .await
        .unwrap();

    let subs = members.subscriptions("m1").await.unwrap();
    let rows: Vec<(&str, bool, &str)> = subs
        .iter()
        .map(|s| (s.email_type.as_str(), s.subscribed, s.source.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("brand_alerts", false, "api"),
            ("weekly_digest", true, "import")
        ]
    );
    assert_eq!(subs[0].updated_at, db.clock_now());
    assert!(matches!(
        members.set_subscription("m1", &alerts, true, "").await,
        Err(StoreError::InvalidInput {
            field: "source",
            ..
        })
    ));
}

async fn subscription_for_an_unknown_member_is_not_found(db: TestDb) {
    let err = db
        .store
        .members()
        .set_subscription("ghost", &EmailType::brand_alerts(), false, "api")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

async fn suppression_is_idempotent_and_keeps_the_first_since(db: TestDb) {
    let members = db.store.members();
    let first = members
        .suppress(
            " Ann@Example.com",
            SuppressionReason::HardBounce,
            "sendgrid",
            Some("550 no such user"),
        )
        .await
        .unwrap();
    assert_eq!(first.address, "ann@example.com");
    assert_eq!(first.since, START);

    db.clock.advance(Duration::from_secs(60));
    let again = members
        .suppress(
            "ann@example.com",
            SuppressionReason::SpamReport,
            "sparkpost",
            None,
        )
        .await
        .unwrap();
    assert_eq!(again.since, START, "the first since is kept");
    assert_eq!(again.reason, SuppressionReason::SpamReport);
    assert_eq!(again.source, "sparkpost");
    assert_eq!(again.detail, None);
    assert_eq!(
        members.suppression("ANN@example.com").await.unwrap(),
        Some(again)
    );
    assert_eq!(
        members.suppression("other@example.com").await.unwrap(),
        None
    );

    let long = "x".repeat(5000);
    let cut = members
        .suppress(
            "b@example.com",
            SuppressionReason::Manual,
            "ops",
            Some(&long),
        )
        .await
        .unwrap();
    assert_eq!(
        cut.detail.unwrap().len(),
        herald_store::members::MAX_DETAIL_CHARS
    );
}

async fn suppressions_page_and_can_be_lifted(db: TestDb) {
    let members = db.store.members();
    for name in ["c", "a", "b"] {
        members
            .suppress(
                &format!("{name}@example.com"),
                SuppressionReason::Unsubscribe,
                "api",
                None,
            )
            .await
            .unwrap();
    }
    let first = members
        .list_suppressions(&PageRequest::first(2))
        .await
        .unwrap();
    let addresses: Vec<&str> = first.items.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(addresses, ["a@example.com", "b@example.com"]);
    let rest = members
        .list_suppressions(&PageRequest {
            after: first.next_cursor,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_cursor, None);

    members.unsuppress("B@Example.com").await.unwrap();
    assert_eq!(members.suppression("b@example.com").await.unwrap(), None);
    assert!(matches!(
        members.unsuppress("b@example.com").await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn suppressing_a_malformed_address_is_invalid_input(db: TestDb) {
    let members = db.store.members();
    let err = members
        .suppress("not an address", SuppressionReason::Manual, "ops", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "address",
                ..
            }
        ),
        "{err}"
    );
    let err = members
        .suppress(
            "a@example.com",
            SuppressionReason::Manual,
            "bad\nsource",
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "source",
                ..
            }
        ),
        "{err}"
    );
    assert!(members
        .list_suppressions(&PageRequest::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

async fn cadence_policy_defaults_and_can_be_set(db: TestDb) {
    let members = db.store.members();
    assert_eq!(
        members.cadence_policy().await.unwrap(),
        CadencePolicy::default()
    );
    let policy = CadencePolicy::new(5, Duration::from_secs(86_400)).unwrap();
    assert_eq!(members.set_cadence_policy(&policy).await.unwrap(), policy);
    assert_eq!(members.cadence_policy().await.unwrap(), policy);
    let reopened = db.connect_again().await;
    assert_eq!(reopened.members().cadence_policy().await.unwrap(), policy);
}
