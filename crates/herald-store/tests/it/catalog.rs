//! The catalog: brands, sales and templates, and the references that keep
//! them from being deleted while in use.

use std::time::Duration;

use herald_core::catalog::{BrandId, HttpUrl};
use herald_core::Timestamp;
use herald_store::catalog::{NewSale, NewTemplate, SaleFilter, SalePatch, TemplatePatch};
use herald_store::page::PageRequest;
use herald_store::StoreError;

use crate::harness::{TestDb, START};

store_suite!(
    brands_are_created_read_renamed_and_deleted,
    creating_a_brand_twice_conflicts_but_upsert_renames,
    brands_page_in_id_order,
    brand_with_sales_cannot_be_deleted,
    deleting_a_brand_removes_its_affinities,
    sales_are_created_updated_and_listed_by_brand,
    sale_for_an_unknown_brand_is_invalid_input,
    sale_ending_before_it_starts_is_refused,
    sale_used_by_an_alert_cannot_be_deleted,
    templates_have_unique_names,
    template_used_by_an_alert_cannot_be_deleted,
    existing_brands_reports_only_known_ids,
);

fn brand(id: &str) -> BrandId {
    BrandId::parse(id).unwrap()
}

fn url(text: &str) -> HttpUrl {
    HttpUrl::parse(text).unwrap()
}

fn new_sale(brand_id: &str) -> NewSale {
    NewSale {
        brand_id: brand(brand_id),
        headline: "Up to 50% off".into(),
        url: url("https://shop.example/sale"),
        image: None,
        starts_at: START,
        ends_at: Some(START.plus(Duration::from_secs(3600))),
    }
}

fn new_template(name: &str) -> NewTemplate {
    NewTemplate {
        name: name.into(),
        subject: "Hi {{ member.first_name }}".into(),
        html: "<p>{{ unsubscribe_url }}</p>".into(),
        text: None,
    }
}

/// A draft brand alert using `template_id` and `sale_id`, written behind the
/// store's back so these tests depend only on the schema.
async fn alert_using(db: &TestDb, template_id: &str, sale_id: &str) {
    let statements = [
        "INSERT INTO brand_alerts (id, name, subject, template_id, send_at, affinity_threshold, \
         state, created_at, updated_at) VALUES ('a1', 'alert', 's', {t}, 0, 0.5, 'draft', 0, 0)",
        "INSERT INTO brand_alert_sales (alert_id, sale_id, position) VALUES ('a1', {s}, 0)",
    ];
    for sql in statements {
        let sql = sql
            .replace("{t}", &format!("'{template_id}'"))
            .replace("{s}", &format!("'{sale_id}'"));
        match (db.store.sqlite(), db.store.postgres()) {
            (Some(d), _) => {
                sqlx::query(&sql).execute(&d.writer).await.unwrap();
            }
            (_, Some(d)) => {
                sqlx::query(&sql).execute(&d.pool).await.unwrap();
            }
            (None, None) => unreachable!("a store has one backend"),
        }
    }
}

async fn brands_are_created_read_renamed_and_deleted(db: TestDb) {
    let catalog = db.store.catalog();
    let created = catalog.create_brand(&brand("nike"), "Nike").await.unwrap();
    assert_eq!(created.name, "Nike");
    assert_eq!((created.created_at, created.updated_at), (START, START));
    assert_eq!(catalog.get_brand("nike").await.unwrap(), Some(created));

    db.clock.advance(Duration::from_secs(5));
    let renamed = catalog.update_brand("nike", "Nike Inc.").await.unwrap();
    assert_eq!(renamed.name, "Nike Inc.");
    assert_eq!(renamed.created_at, START);
    assert_eq!(renamed.updated_at, db.clock_now());

    catalog.delete_brand("nike").await.unwrap();
    assert_eq!(catalog.get_brand("nike").await.unwrap(), None);
    assert!(matches!(
        catalog.delete_brand("nike").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        catalog.update_brand("nike", "x").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        catalog.create_brand(&brand("blank"), "  ").await,
        Err(StoreError::InvalidInput { field: "name", .. })
    ));
}

async fn creating_a_brand_twice_conflicts_but_upsert_renames(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let err = catalog
        .create_brand(&brand("b1"), "Again")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(catalog.get_brand("b1").await.unwrap().unwrap().name, "One");

    db.clock.advance(Duration::from_secs(1));
    let (renamed, created) = catalog.upsert_brand(&brand("b1"), "Uno").await.unwrap();
    assert!(!created);
    assert_eq!((renamed.name.as_str(), renamed.created_at), ("Uno", START));
    let (fresh, created) = catalog.upsert_brand(&brand("b2"), "Two").await.unwrap();
    assert!(created);
    assert_eq!(fresh.created_at, db.clock_now());
}

async fn brands_page_in_id_order(db: TestDb) {
    let catalog = db.store.catalog();
    for i in (0..7).rev() {
        catalog
            .create_brand(&brand(&format!("b{i}")), &format!("Brand {i}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let got = catalog.list_brands(&page).await.unwrap();
        assert!(got.items.len() <= 3);
        seen.extend(got.items.iter().map(|b| b.id.clone()));
        match got.next_cursor {
            Some(cursor) => page.after = Some(cursor),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("b{i}")).collect();
    assert_eq!(seen, expected);
}

async fn brand_with_sales_cannot_be_deleted(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let sale = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let err = catalog.delete_brand("b1").await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("sales"), "{err}");
    assert!(catalog.get_brand("b1").await.unwrap().is_some());

    catalog.delete_sale(&sale.id).await.unwrap();
    catalog.delete_brand("b1").await.unwrap();
}

async fn deleting_a_brand_removes_its_affinities(db: TestDb) {
    use herald_core::catalog::{AffinityScore, EmailAddress, MemberId, MemberStatus};
    use herald_store::members::MemberInput;

    db.store
        .catalog()
        .create_brand(&brand("b1"), "One")
        .await
        .unwrap();
    db.store
        .catalog()
        .create_brand(&brand("b2"), "Two")
        .await
        .unwrap();
    let member = MemberInput {
        id: MemberId::parse("m1").unwrap(),
        email: EmailAddress::parse("m1@example.com").unwrap(),
        name: None,
        first_name: None,
        locale: None,
        time_zone: None,
        status: MemberStatus::Active,
        customer_id: None,
    };
    let members = db.store.members();
    members.upsert(&member).await.unwrap();
    for b in ["b1", "b2"] {
        members
            .set_affinity("m1", b, AffinityScore::new(0.5).unwrap())
            .await
            .unwrap();
    }
    db.store.catalog().delete_brand("b1").await.unwrap();
    let left: Vec<String> = members
        .affinities("m1")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.brand_id)
        .collect();
    assert_eq!(left, ["b2"]);
}

async fn sales_are_created_updated_and_listed_by_brand(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    catalog.create_brand(&brand("b2"), "Two").await.unwrap();
    let first = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let second = catalog.create_sale(&new_sale("b2")).await.unwrap();
    let third = catalog.create_sale(&new_sale("b1")).await.unwrap();
    assert!(uuid::Uuid::parse_str(&first.id).is_ok(), "{}", first.id);
    assert_eq!(
        catalog.get_sale(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(catalog.get_sale("nope").await.unwrap(), None);

    let all = catalog.list_sales(&SaleFilter::default()).await.unwrap();
    let ids: Vec<&str> = all.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [&first.id, &second.id, &third.id], "creation order");

    let b1 = catalog
        .list_sales(&SaleFilter {
            brand_id: Some("b1".into()),
            page: PageRequest::first(1),
        })
        .await
        .unwrap();
    assert_eq!(b1.items, vec![first.clone()]);
    let rest = catalog
        .list_sales(&SaleFilter {
            brand_id: Some("b1".into()),
            page: PageRequest {
                after: b1.next_cursor,
                limit: 1,
            },
        })
        .await
        .unwrap();
    assert_eq!(rest.items, vec![third]);
    assert_eq!(rest.next_cursor, None);

    db.clock.advance(Duration::from_secs(2));
    let patch = SalePatch {
        brand_id: Some(brand("b2")),
        headline: Some("Last day".into()),
        image: Some(Some(url("https://cdn.example/x.png"))),
        ends_at: Some(None),
        ..SalePatch::default()
    };
    let updated = catalog.update_sale(&first.id, &patch).await.unwrap();
    assert_eq!(updated.brand_id, "b2");
    assert_eq!(updated.headline, "Last day");
    assert_eq!(updated.image.as_deref(), Some("https://cdn.example/x.png"));
    assert_eq!(updated.ends_at, None);
    assert_eq!(updated.url, first.url);
    assert_eq!(updated.updated_at, db.clock_now());
    assert_eq!(catalog.get_sale(&first.id).await.unwrap(), Some(updated));
    assert!(matches!(
        catalog.update_sale("nope", &SalePatch::default()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn sale_for_an_unknown_brand_is_invalid_input(db: TestDb) {
    let catalog = db.store.catalog();
    let err = catalog.create_sale(&new_sale("ghost")).await.unwrap_err();
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
    assert!(catalog
        .list_sales(&SaleFilter::default())
        .await
        .unwrap()
        .items
        .is_empty());

    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let sale = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let patch = SalePatch {
        brand_id: Some(brand("ghost")),
        ..SalePatch::default()
    };
    let err = catalog.update_sale(&sale.id, &patch).await.unwrap_err();
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
    assert_eq!(
        catalog.get_sale(&sale.id).await.unwrap().unwrap().brand_id,
        "b1"
    );
}

async fn sale_ending_before_it_starts_is_refused(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let mut sale = new_sale("b1");
    sale.ends_at = Some(sale.starts_at);
    let err = catalog.create_sale(&sale).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidInput {
                field: "ends_at",
                ..
            }
        ),
        "{err}"
    );
    let ok = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let patch = SalePatch {
        starts_at: Some(Timestamp(ok.ends_at.unwrap().0 + 1)),
        ..SalePatch::default()
    };
    assert!(matches!(
        catalog.update_sale(&ok.id, &patch).await,
        Err(StoreError::InvalidInput {
            field: "ends_at",
            ..
        })
    ));
}

async fn sale_used_by_an_alert_cannot_be_deleted(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let sale = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let template = catalog.create_template(&new_template("t")).await.unwrap();
    alert_using(&db, &template.id, &sale.id).await;
    let err = catalog.delete_sale(&sale.id).await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("brand alert"), "{err}");
    assert!(catalog.get_sale(&sale.id).await.unwrap().is_some());
    assert!(matches!(
        catalog.delete_sale("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn templates_have_unique_names(db: TestDb) {
    let catalog = db.store.catalog();
    let welcome = catalog
        .create_template(&new_template("welcome"))
        .await
        .unwrap();
    assert_eq!(
        catalog.get_template(&welcome.id).await.unwrap(),
        Some(welcome.clone())
    );
    let err = catalog
        .create_template(&new_template("welcome"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("welcome"), "{err}");

    let other = catalog
        .create_template(&new_template("other"))
        .await
        .unwrap();
    let rename = TemplatePatch {
        name: Some("welcome".into()),
        ..TemplatePatch::default()
    };
    assert!(matches!(
        catalog.update_template(&other.id, &rename).await,
        Err(StoreError::Conflict { .. })
    ));

    db.clock.advance(Duration::from_secs(1));
    let patch = TemplatePatch {
        subject: Some("New subject".into()),
        text: Some(Some("plain".into())),
        ..TemplatePatch::default()
    };
    let updated = catalog.update_template(&welcome.id, &patch).await.unwrap();
    assert_eq!(updated.name, "welcome");
    assert_eq!(updated.subject, "New subject");
    assert_eq!(updated.text.as_deref(), Some("plain"));
    assert_eq!(updated.html, welcome.html);
    assert_eq!(updated.updated_at, db.clock_now());

    let page = catalog
        .list_templates(&PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(page.items, vec![updated, other.clone()]);

    catalog.delete_template(&other.id).await.unwrap();
    assert_eq!(catalog.get_template(&other.id).await.unwrap(), None);
    assert!(matches!(
        catalog.delete_template(&other.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn template_used_by_an_alert_cannot_be_deleted(db: TestDb) {
    let catalog = db.store.catalog();
    catalog.create_brand(&brand("b1"), "One").await.unwrap();
    let sale = catalog.create_sale(&new_sale("b1")).await.unwrap();
    let template = catalog.create_template(&new_template("t")).await.unwrap();
    alert_using(&db, &template.id, &sale.id).await;
    let err = catalog.delete_template(&template.id).await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(catalog.get_template(&template.id).await.unwrap().is_some());
}

async fn existing_brands_reports_only_known_ids(db: TestDb) {
    let catalog = db.store.catalog();
    for id in ["a", "b", "c"] {
        catalog.create_brand(&brand(id), id).await.unwrap();
    }
    let found = catalog.existing_brands(&["a", "c", "zz"]).await.unwrap();
    let mut found: Vec<String> = found.into_iter().collect();
    found.sort();
    assert_eq!(found, ["a", "c"]);
    assert!(catalog.existing_brands(&[]).await.unwrap().is_empty());
}
