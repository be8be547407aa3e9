//! Synthetic brand-alert data for the benchmarks, in a fresh SQLite store.
//!
//! The catalog (brands, sales, the template, the alerts) goes through the
//! store's API, so it passes Herald's own validation. The bulk (members,
//! affinities, opt-outs, suppressions, the cadence history) is written with
//! set-based SQL, one statement per table, on a connection tuned for loading
//! (no journal, no fsync, no foreign-key checks, secondary indexes built
//! after the rows): the benchmarks measure building and sending, not this.
//!
//! Member `i` (1-based) gets `affinities_per_member` distinct brands: a
//! random first brand, then steps of a random stride coprime with the number
//! of brands, so every brand is equally likely; scores are uniform in
//! [0, 1). Members fall into exclusion groups by `i % 100`, disjoint by
//! construction: the first `unsubscribed_percent` opted out of brand alerts,
//! the next `suppressed_percent` have a suppressed address, the next
//! `cadence_percent` already got the cadence limit's worth of other alerts
//! a day ago.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_core::alert::{AlertAction, AlertState};
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::{BrandId, HttpUrl, SuppressionReason, BRAND_ALERTS};
use herald_core::{Clock, SystemClock, Timestamp};
use herald_store::brand_alerts::NewBrandAlert;
use herald_store::catalog::{NewSale, NewTemplate};
use herald_store::{SqliteDb, Store};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};

use crate::demo::DEMO_TEMPLATE_HTML;

/// The tables the bulk load fills; their secondary indexes are dropped
/// before it and rebuilt after, which is much faster than keeping them up
/// to date row by row.
const BULK_TABLES: [&str; 5] = [
    "members",
    "affinities",
    "subscriptions",
    "suppressions",
    "send_log",
];

const FIRST_NAMES: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Finn", "Grace", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
    "Mateo", "Noor", "Oskar", "Priya",
];
const LAST_NAMES: [&str; 12] = [
    "Lovelace", "Okafor", "Martin", "Sharma", "Yilmaz", "Berg", "Hopper", "Dubois", "Costa",
    "Weber", "Mensah", "Tanaka",
];

/// SQLite's primary result code for a database locked by another
/// connection (extended codes add bits above the low byte).
const SQLITE_BUSY: i32 = 5;

/// How long ago the cadence history's sends happened: well inside any
/// window the policy allows.
const HISTORY_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DatasetSpec {
    pub members: u64,
    pub brands: u32,
    pub affinities_per_member: u32,
    /// The alert is over the first this many brands, one sale each.
    pub alert_brands: u32,
    pub threshold: f64,
    pub unsubscribed_percent: u32,
    pub suppressed_percent: u32,
    pub cadence_percent: u32,
}

impl DatasetSpec {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.members >= 1, "members: must be at least 1");
        anyhow::ensure!(
            (1..=999).contains(&self.brands),
            "brands: must be between 1 and 999, got {}",
            self.brands
        );
        anyhow::ensure!(
            (1..=self.brands).contains(&self.affinities_per_member),
            "affinities per member: must be between 1 and the number of brands ({}), got {}",
            self.brands,
            self.affinities_per_member
        );
        anyhow::ensure!(
            (1..=self.brands.min(100)).contains(&self.alert_brands),
            "alert brands: must be between 1 and the number of brands (at most 100), got {}",
            self.alert_brands
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.threshold),
            "threshold: must be an affinity score from 0 to 1, got {}",
            self.threshold
        );
        let excluded = self.unsubscribed_percent + self.suppressed_percent + self.cadence_percent;
        anyhow::ensure!(
            excluded <= 100,
            "the excluded shares add up to {excluded}%, more than every member"
        );
        Ok(())
    }

    pub fn affinities(&self) -> u64 {
        self.members * u64::from(self.affinities_per_member)
    }
}

/// A generated store and what the benchmarks need to know about it.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// The scheduled, due alert to build.
    pub alert_id: String,
    pub alert_brand_ids: Vec<String>,
    pub threshold: f64,
    pub cadence: CadencePolicy,
    member_id_width: usize,
    pub generated_in: Duration,
}

impl Dataset {
    /// The id of member `i` (1-based).
    pub fn member_id(&self, i: u64) -> String {
        format!("m{i:0width$}", width = self.member_id_width)
    }
}

/// The audience of the alert as counted by a query of its own, written
/// from the rules of DESIGN.md rather than taken from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudienceCounts {
    /// Active members with an affinity at or above the threshold for one of
    /// the alert's brands.
    pub candidates: u64,
    pub unsubscribed: u64,
    /// Suppressed and not unsubscribed.
    pub suppressed: u64,
    /// At the cadence limit and neither unsubscribed nor suppressed.
    pub cadence: u64,
}

impl AudienceCounts {
    pub fn eligible(&self) -> u64 {
        self.candidates - self.unsubscribed - self.suppressed - self.cadence
    }
}

/// Creates the store at `path` (which must not exist yet) and fills it.
pub(crate) async fn generate(path: &Path, spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    spec.validate()?;
    let started = Instant::now();
    let now = SystemClock.now();
    let catalog = {
        let db = SqliteDb::open(path).await?;
        let store = Store::from_sqlite(db, Arc::new(SystemClock));
        store.migrate().await?;
        let catalog = create_catalog(&store, spec, now).await;
        store.close().await;
        // Dropping the store drops its pools, which closes any connection
        // `close` missed (sqlx can return from it with one still open).
        drop(store);
        catalog?
    };

    let member_id_width = spec.members.to_string().len().max(7);
    bulk_load(path, spec, &catalog, member_id_width, now).await?;
    Ok(Dataset {
        alert_id: catalog.alert_id,
        alert_brand_ids: catalog.alert_brand_ids,
        threshold: spec.threshold,
        cadence: catalog.cadence,
        member_id_width,
        generated_in: started.elapsed(),
    })
}

struct Catalog {
    brand_format: String,
    alert_id: String,
    alert_brand_ids: Vec<String>,
    /// Other alerts the cadence history's sends belong to.
    history_alert_ids: Vec<String>,
    cadence: CadencePolicy,
}

async fn create_catalog(
    store: &Store,
    spec: &DatasetSpec,
    now: Timestamp,
) -> anyhow::Result<Catalog> {
    let width = spec.brands.to_string().len().max(2);
    let brand_format = format!("b%0{width}d");
    let catalog = store.catalog();
    let mut alert_brand_ids = Vec::new();
    for n in 1..=spec.brands {
        let id = format!("b{n:0width$}");
        catalog
            .create_brand(&BrandId::parse(&id)?, &format!("Brand {n}"))
            .await?;
        if n <= spec.alert_brands {
            alert_brand_ids.push(id);
        }
    }
    let mut sale_ids = Vec::new();
    for brand in &alert_brand_ids {
        let sale = catalog
            .create_sale(&NewSale {
                brand_id: BrandId::parse(brand)?,
                headline: format!("Brand {brand}: up to 40% off this weekend"),
                url: HttpUrl::parse(&format!("https://shop.example.com/sales/{brand}"))?,
                image: Some(HttpUrl::parse(&format!(
                    "https://shop.example.com/img/{brand}.jpg"
                ))?),
                starts_at: now,
                ends_at: Some(now.plus(Duration::from_secs(3 * 24 * 60 * 60))),
            })
            .await?;
        sale_ids.push(sale.id);
    }
    let template = catalog
        .create_template(&NewTemplate {
            name: "bench-brand-alert".to_owned(),
            subject: "{{ alert.subject }}".to_owned(),
            html: DEMO_TEMPLATE_HTML.to_owned(),
            text: None,
        })
        .await?;
    let alert = |name: &str| NewBrandAlert {
        name: name.to_owned(),
        subject: "Your brands are on sale this weekend".to_owned(),
        template_id: template.id.clone(),
        // Due already: the build may start at once.
        send_at: Timestamp(now.millis() - 1_000),
        affinity_threshold: spec.threshold,
        transport: None,
        sale_ids: sale_ids.clone(),
    };
    let alerts = store.brand_alerts();
    let cadence = store.members().cadence_policy().await?;
    let mut history_alert_ids = Vec::new();
    if spec.cadence_percent > 0 {
        for n in 1..=cadence.max_alerts() {
            history_alert_ids.push(
                alerts
                    .create(&alert(&format!("Earlier alert {n}")))
                    .await?
                    .id,
            );
        }
    }
    let created = alerts.create(&alert("Benchmark alert")).await?;
    alerts
        .apply(&created.id, AlertAction::Schedule, None)
        .await
        .context("scheduling the benchmark alert")?;
    Ok(Catalog {
        brand_format,
        alert_id: created.id,
        alert_brand_ids,
        history_alert_ids,
        cadence,
    })
}

fn load_err(step: &'static str) -> impl FnOnce(sqlx::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("generating benchmark data: {step}: {e}")
}

async fn bulk_load(
    path: &Path,
    spec: &DatasetSpec,
    catalog: &Catalog,
    member_id_width: usize,
    now: Timestamp,
) -> anyhow::Result<()> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(false)
        .pragma("cache_size", "-65536")
        // Bulk statements over millions of rows are meant to be slow; a
        // warning per statement would bury the benchmark's own report.
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::MAX);
    let mut conn = open_exclusive(&options).await?;
    let indexes = drop_indexes(&mut conn).await?;

    let id_format = format!("m%0{member_id_width}d");
    let strides = strides_coprime_with(spec.brands);
    let statements: [(&'static str, &str); 3] = [
        (
            "member table",
            "CREATE TEMP TABLE bench_members \
             (i INTEGER PRIMARY KEY, first_brand INTEGER NOT NULL, stride_index INTEGER NOT NULL)",
        ),
        (
            "stride table",
            "CREATE TEMP TABLE bench_strides (idx INTEGER PRIMARY KEY, stride INTEGER NOT NULL)",
        ),
        (
            "slot table",
            "CREATE TEMP TABLE bench_slots (k INTEGER PRIMARY KEY)",
        ),
    ];
    for (step, sql) in statements {
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .map_err(load_err(step))?;
    }
    sqlx::query("INSERT INTO bench_strides (idx, stride) SELECT key, value FROM json_each(?1)")
        .bind(serde_json::to_string(&strides)?)
        .execute(&mut conn)
        .await
        .map_err(load_err("strides"))?;
    sqlx::query("INSERT INTO bench_slots (k) SELECT key FROM json_each(?1)")
        .bind(serde_json::to_string(&vec![
            0;
            spec.affinities_per_member
                as usize
        ])?)
        .execute(&mut conn)
        .await
        .map_err(load_err("slots"))?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO bench_members (i, first_brand, stride_index) \
         SELECT i, abs(random() % ?2), abs(random() % ?3) FROM n",
    )
    .bind(i64::try_from(spec.members)?)
    .bind(spec.brands)
    .bind(strides.len() as i64)
    .execute(&mut conn)
    .await
    .map_err(load_err("member numbers"))?;

    sqlx::query(
        "INSERT INTO members (id, email, email_normalized, name, first_name, locale, time_zone, \
             status, customer_id, created_at, updated_at) \
         SELECT printf(?1, i), printf('member%d@example.com', i), printf('member%d@example.com', i), \
             json_extract(?2, printf('$[%d]', i % ?3)) || ' ' \
                 || json_extract(?4, printf('$[%d]', (i / ?3) % ?5)), \
             json_extract(?2, printf('$[%d]', i % ?3)), 'en-GB', 'Europe/London', 'active', \
             NULL, ?6, ?6 \
         FROM bench_members ORDER BY i",
    )
    .bind(&id_format)
    .bind(serde_json::to_string(&FIRST_NAMES)?)
    .bind(FIRST_NAMES.len() as i64)
    .bind(serde_json::to_string(&LAST_NAMES)?)
    .bind(LAST_NAMES.len() as i64)
    .bind(now.millis())
    .execute(&mut conn)
    .await
    .map_err(load_err("members"))?;

    // CROSS JOIN fixes the loop order: members outermost, so rows arrive in
    // the affinity table's key order.
    sqlx::query(
        "INSERT INTO affinities (member_id, brand_id, score, updated_at) \
         SELECT printf(?1, g.i), printf(?2, (g.first_brand + k.k * s.stride) % ?3 + 1), \
             abs(random() % 1000000) / 1000000.0, ?4 \
         FROM bench_members AS g CROSS JOIN bench_strides AS s CROSS JOIN bench_slots AS k \
         WHERE s.idx = g.stride_index",
    )
    .bind(&id_format)
    .bind(&catalog.brand_format)
    .bind(spec.brands)
    .bind(now.millis())
    .execute(&mut conn)
    .await
    .map_err(load_err("affinities"))?;

    let unsubscribed_end = spec.unsubscribed_percent;
    let suppressed_end = unsubscribed_end + spec.suppressed_percent;
    let cadence_end = suppressed_end + spec.cadence_percent;
    sqlx::query(
        "INSERT INTO subscriptions (member_id, email_type, subscribed, source, updated_at) \
         SELECT printf(?1, i), ?2, 0, 'bench', ?3 FROM bench_members WHERE i % 100 < ?4",
    )
    .bind(&id_format)
    .bind(BRAND_ALERTS)
    .bind(now.millis())
    .bind(unsubscribed_end)
    .execute(&mut conn)
    .await
    .map_err(load_err("subscriptions"))?;
    sqlx::query(
        "INSERT INTO suppressions (address, reason, source, detail, since) \
         SELECT printf('member%d@example.com', i), ?1, 'bench', NULL, ?2 \
         FROM bench_members WHERE i % 100 >= ?3 AND i % 100 < ?4",
    )
    .bind(SuppressionReason::HardBounce.as_str())
    .bind(now.millis())
    .bind(unsubscribed_end)
    .bind(suppressed_end)
    .execute(&mut conn)
    .await
    .map_err(load_err("suppressions"))?;

    let sent_at = Timestamp(now.millis() - HISTORY_AGE.as_millis() as i64);
    sqlx::query(
        "INSERT INTO send_log (alert_id, member_id, state, claimed_at, claim_expires_at, \
             attempts, possible_duplicate, finished_at, provider_message_id, reason) \
         SELECT h.value, printf(?1, g.i), 'sent', ?2, NULL, 1, 0, ?2, NULL, NULL \
         FROM bench_members AS g CROSS JOIN json_each(?3) AS h \
         WHERE g.i % 100 >= ?4 AND g.i % 100 < ?5",
    )
    .bind(&id_format)
    .bind(sent_at.millis())
    .bind(serde_json::to_string(&catalog.history_alert_ids)?)
    .bind(suppressed_end)
    .bind(cadence_end)
    .execute(&mut conn)
    .await
    .map_err(load_err("cadence history"))?;
    sqlx::query(
        "UPDATE brand_alerts SET state = ?1, build_started_at = ?2, build_finished_at = ?2, \
             completed_at = ?2 \
         WHERE id IN (SELECT value FROM json_each(?3))",
    )
    .bind(AlertState::Sent.as_str())
    .bind(sent_at.millis())
    .bind(serde_json::to_string(&catalog.history_alert_ids)?)
    .execute(&mut conn)
    .await
    .map_err(load_err("earlier alerts"))?;

    for (name, sql) in &indexes {
        sqlx::query(sql).execute(&mut conn).await.map_err(|e| {
            anyhow::anyhow!("generating benchmark data: rebuilding index {name}: {e}")
        })?;
    }
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut conn)
        .await
        .map_err(load_err("back to WAL"))?;
    conn.close().await.map_err(load_err("close"))?;
    super::flush_to_disk(&super::sqlite_files(path))
}

/// Opens the loading connection. Leaving WAL mode needs the only
/// connection to the file, and the store's connections may finish closing
/// on their worker threads a moment after the store is gone: retry while
/// SQLite answers busy.
async fn open_exclusive(options: &SqliteConnectOptions) -> anyhow::Result<SqliteConnection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SqliteConnection::connect_with(options).await {
            Ok(conn) => return Ok(conn),
            Err(sqlx::Error::Database(e)) if is_busy(e.as_ref()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(load_err("open")(e)),
        }
    }
}

fn is_busy(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

/// Drops the secondary indexes of the bulk tables; returns their names and
/// definitions to rebuild them with.
async fn drop_indexes(conn: &mut SqliteConnection) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT name, sql FROM sqlite_master \
         WHERE type = 'index' AND sql IS NOT NULL \
           AND tbl_name IN (SELECT value FROM json_each(?1))",
    )
    .bind(serde_json::to_string(&BULK_TABLES)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(load_err("list indexes"))?;
    let mut indexes = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("name").map_err(load_err("list indexes"))?;
        let sql: String = row.try_get("sql").map_err(load_err("list indexes"))?;
        sqlx::query(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))
            .execute(&mut *conn)
            .await
            .map_err(load_err("drop index"))?;
        indexes.push((name, sql));
    }
    Ok(indexes)
}

/// Steps that visit `brands` distinct brands before repeating one.
fn strides_coprime_with(brands: u32) -> Vec<u32> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    (1..brands.max(2))
        .filter(|&s| gcd(s, brands) == 1)
        .collect()
}

/// Counts the alert's audience from the tables, by its own query: members
/// first, then the facts about each, as DESIGN.md states the rules.
pub(crate) async fn count_audience(
    path: &Path,
    dataset: &Dataset,
) -> anyhow::Result<AudienceCounts> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::MAX);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(load_err("open for counting"))?;
    let window_start = dataset.cadence.window_start(SystemClock.now());
    let row = sqlx::query(
        "SELECT count(*) AS candidates, \
             coalesce(sum(unsubscribed), 0) AS unsubscribed, \
             coalesce(sum(NOT unsubscribed AND suppressed), 0) AS suppressed, \
             coalesce(sum(NOT unsubscribed AND NOT suppressed AND recent >= ?5), 0) AS cadence \
         FROM ( \
             SELECT \
                 EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.member_id = m.id \
                     AND s.email_type = ?1 AND s.subscribed = 0) AS unsubscribed, \
                 EXISTS (SELECT 1 FROM suppressions AS p \
                     WHERE p.address = m.email_normalized) AS suppressed, \
                 (SELECT count(*) FROM send_log AS l WHERE l.member_id = m.id \
                     AND l.alert_id <> ?3 AND l.claimed_at > ?2 \
                     AND l.state IN ('claimed', 'released', 'sent')) AS recent \
             FROM members AS m \
             WHERE m.status = 'active' AND EXISTS ( \
                 SELECT 1 FROM affinities AS a WHERE a.member_id = m.id \
                     AND a.brand_id IN (SELECT value FROM json_each(?4)) AND a.score >= ?6))",
    )
    .bind(BRAND_ALERTS)
    .bind(window_start.millis())
    .bind(&dataset.alert_id)
    .bind(serde_json::to_string(&dataset.alert_brand_ids)?)
    .bind(dataset.cadence.max_alerts())
    .bind(dataset.threshold)
    .fetch_one(&mut conn)
    .await
    .map_err(load_err("count the audience"))?;
    let count = |name: &str| -> anyhow::Result<u64> {
        let n: i64 = row.try_get(name).map_err(load_err("count the audience"))?;
        Ok(u64::try_from(n)?)
    };
    let counts = AudienceCounts {
        candidates: count("candidates")?,
        unsubscribed: count("unsubscribed")?,
        suppressed: count("suppressed")?,
        cadence: count("cadence")?,
    };
    conn.close().await.map_err(load_err("close"))?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatasetSpec {
        DatasetSpec {
            members: 3_000,
            brands: 12,
            affinities_per_member: 4,
            alert_brands: 3,
            threshold: 0.4,
            unsubscribed_percent: 10,
            suppressed_percent: 2,
            cadence_percent: 5,
        }
    }

    #[test]
    fn strides_visit_every_brand_before_repeating() {
        for brands in [1, 2, 3, 12, 50] {
            for stride in strides_coprime_with(brands) {
                let mut seen: Vec<u32> = (0..brands).map(|k| k * stride % brands).collect();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(
                    seen.len(),
                    brands as usize,
                    "{brands} brands, stride {stride}"
                );
            }
        }
        assert_eq!(strides_coprime_with(50).len(), 20);
        assert_eq!(strides_coprime_with(1), vec![1]);
    }

    #[test]
    fn nonsense_specs_are_refused_by_name() {
        for (bad, needle) in [
            (
                DatasetSpec {
                    members: 0,
                    ..spec()
                },
                "members",
            ),
            (
                DatasetSpec {
                    brands: 0,
                    ..spec()
                },
                "brands",
            ),
            (
                DatasetSpec {
                    brands: 1000,
                    ..spec()
                },
                "brands",
            ),
            (
                DatasetSpec {
                    affinities_per_member: 13,
                    ..spec()
                },
                "affinities per member",
            ),
            (
                DatasetSpec {
                    affinities_per_member: 0,
                    ..spec()
                },
                "affinities per member",
            ),
            (
                DatasetSpec {
                    alert_brands: 13,
                    ..spec()
                },
                "alert brands",
            ),
            (
                DatasetSpec {
                    threshold: 1.5,
                    ..spec()
                },
                "threshold",
            ),
            (
                DatasetSpec {
                    threshold: f64::NAN,
                    ..spec()
                },
                "threshold",
            ),
            (
                DatasetSpec {
                    unsubscribed_percent: 95,
                    ..spec()
                },
                "add up to 102%",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn generated_data_has_the_asked_shape() {
        let dir = super::super::RunDir::create(None).unwrap();
        let path = dir.path().join("herald.db");
        let spec = spec();
        let dataset = generate(&path, &spec).await.unwrap();
        assert_eq!(dataset.alert_brand_ids, vec!["b01", "b02", "b03"]);
        assert_eq!(dataset.member_id(42), "m0000042");

        let store = Store::connect(&path.display().to_string()).await.unwrap();
        let members = store.members();
        let affinities = members.affinities(&dataset.member_id(42)).await.unwrap();
        assert_eq!(affinities.len(), 4);
        let mut brands: Vec<&str> = affinities.iter().map(|a| a.brand_id.as_str()).collect();
        brands.dedup();
        assert_eq!(brands.len(), 4, "distinct brands: {affinities:?}");
        assert!(affinities.iter().all(|a| (0.0..1.0).contains(&a.score)));
        // Member 5 is in the unsubscribed group, 10 in the suppressed one
        // (i % 100 decides), 42 in none.
        let opted_out = members.subscriptions(&dataset.member_id(5)).await.unwrap();
        assert_eq!(opted_out.len(), 1);
        assert!(!opted_out[0].subscribed);
        assert!(members
            .suppression("member10@example.com")
            .await
            .unwrap()
            .is_some());
        assert!(members
            .suppression("member42@example.com")
            .await
            .unwrap()
            .is_none());
        let alert = store
            .brand_alerts()
            .get(&dataset.alert_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alert.state, AlertState::Scheduled);
        assert!(alert.send_at <= SystemClock.now());
        store.close().await;

        let counts = count_audience(&path, &dataset).await.unwrap();
        // Three in four members hold one of the 3 brands (4 of 12 drawn)
        // and 60% of scores pass: about half of them are candidates.
        assert!((1_200..1_800).contains(&counts.candidates), "{counts:?}");
        let share = |n: u64| n as f64 / counts.candidates as f64;
        assert!(
            (0.05..0.15).contains(&share(counts.unsubscribed)),
            "{counts:?}"
        );
        assert!(
            (0.002..0.05).contains(&share(counts.suppressed)),
            "{counts:?}"
        );
        assert!((0.02..0.09).contains(&share(counts.cadence)), "{counts:?}");
    }
}
