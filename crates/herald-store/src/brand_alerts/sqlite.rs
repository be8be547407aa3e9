use async_trait::async_trait;
use herald_core::alert::AlertState;
use herald_core::catalog::BRAND_ALERTS;
use herald_core::Timestamp;
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{Sqlite, SqliteConnection};

use super::{
    db_count, plan_claims, tally, AlertRow, AudienceQuery, BrandAlertSql, BuildStep, CandidateRow,
    ClaimFacts, ClaimOutcome, ClaimRequest, EventCountRow, ListQuery, MarkedEvent,
    MissingReference, NewBrandAlert, SendCountDelta, SendCountRow, SentMessage, Transition,
    Written, COLUMNS,
};
use crate::{SqliteDb, StoreError};

/// Reads go to the reader pool; every write goes through the single writer
/// connection, multi-statement ones in a `BEGIN IMMEDIATE` transaction that
/// takes the write lock up front, so a claim's reads and writes cannot
/// interleave with another claim in this process or another.
pub(crate) struct SqliteBrandAlertSql(pub SqliteDb);

/// Writes a claim's send-log rows: `?1` the alert, `?2` the claim's time,
/// `?3` a JSON array of `[member_id, state, claim_expires_at, attempts,
/// possible_duplicate, finished_at, reason]`. `WHERE true` tells SQLite's
/// parser that `ON CONFLICT` belongs to the insert, not to a join.
const CLAIM_WRITES: &str = "INSERT INTO send_log (alert_id, member_id, state, claimed_at, \
         claim_expires_at, attempts, possible_duplicate, finished_at, reason) \
     SELECT ?1, value ->> 0, value ->> 1, ?2, value ->> 2, value ->> 3, value ->> 4, \
         value ->> 5, value ->> 6 \
     FROM json_each(?3) WHERE true \
     ON CONFLICT (alert_id, member_id) DO UPDATE SET \
         state = excluded.state, claimed_at = excluded.claimed_at, \
         claim_expires_at = excluded.claim_expires_at, attempts = excluded.attempts, \
         possible_duplicate = send_log.possible_duplicate OR excluded.possible_duplicate, \
         finished_at = excluded.finished_at, reason = excluded.reason";

/// Adds the counts in the parameters named by `counts` (sent, failed,
/// skipped, possible duplicates) to the send counts of the alert named by
/// `alert`; nothing when all are zero. The claim runs it inside its one
/// multi-statement string, with that string's parameter numbers.
fn add_send_counts_sql(alert: &str, counts: [&str; 4]) -> String {
    let [sent, failed, skipped, duplicates] = counts;
    format!(
        "INSERT INTO alert_send_counts (alert_id, sent, failed, skipped, possible_duplicates) \
         SELECT {alert}, {sent}, {failed}, {skipped}, {duplicates} \
         WHERE {sent} <> 0 OR {failed} <> 0 OR {skipped} <> 0 OR {duplicates} <> 0 \
         ON CONFLICT (alert_id) DO UPDATE SET \
             sent = alert_send_counts.sent + excluded.sent, \
             failed = alert_send_counts.failed + excluded.failed, \
             skipped = alert_send_counts.skipped + excluded.skipped, \
             possible_duplicates = \
                 alert_send_counts.possible_duplicates + excluded.possible_duplicates"
    )
}

/// Marks alert `?1`'s claimed rows of a JSON array of `[member_id,
/// provider_message_id]` (`?3`) sent at `?2`. A row no longer claimed
/// (failed, or taken over and finished meanwhile) is left as it is. The
/// array is unpacked once into a materialized table that drives the
/// update, each member's row looked up by its key: with `json_each`
/// itself in `FROM`, SQLite's planner puts the updated table first and
/// scans all of the alert's rows, and a provider id looked up per row by a
/// correlated subquery over `json_each` re-reads the whole array per row.
const CONFIRM_ROWS: &str = "WITH sent (member_id, provider_message_id) AS MATERIALIZED \
         (SELECT value ->> 0, value ->> 1 FROM json_each(?3)) \
     UPDATE send_log SET state = 'sent', finished_at = ?2, \
         provider_message_id = sent.provider_message_id, claim_expires_at = NULL \
     FROM sent \
     WHERE send_log.alert_id = ?1 AND send_log.member_id = sent.member_id \
       AND send_log.state = 'claimed'";

/// Counts the rows [`CONFIRM_ROWS`] just marked as sent for alert `?1`:
/// run right after it, `changes()` is the number of rows it updated, so the
/// confirm is one round trip to the writer besides its transaction.
const COUNT_CONFIRMED: &str = "INSERT INTO alert_send_counts (alert_id, sent) \
     SELECT ?1, changes() WHERE changes() > 0 \
     ON CONFLICT (alert_id) DO UPDATE SET sent = alert_send_counts.sent + excluded.sent";

/// The alert's sale ids in marketing's order, as a JSON array.
const SALE_IDS: &str = "(SELECT json_group_array(s.sale_id ORDER BY s.position) \
     FROM brand_alert_sales AS s WHERE s.alert_id = brand_alerts.id) AS sale_ids";

/// The exclusion facts of one member. Parameters: `?1` the email type,
/// `?2` the cadence window's start, `?3` the alert's id.
fn exclusion_columns(member: &str, email: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.member_id = {member} \
             AND s.email_type = ?1 AND s.subscribed = 0) AS unsubscribed, \
         EXISTS (SELECT 1 FROM suppressions AS p WHERE p.address = {email}) AS suppressed, \
         (SELECT count(*) FROM send_log AS l WHERE l.member_id = {member} \
             AND l.claimed_at > ?2 AND l.alert_id <> ?3 \
             AND l.state IN ('claimed', 'released', 'sent')) AS recent_sends"
    )
}

/// The audience page. Parameters: `?1`-`?3` as in [`exclusion_columns`],
/// `?4` the cursor, `?5` the brand ids (JSON), `?6` the threshold, `?7` the
/// page size and, when `bounded`, `?8` the last member id of the range.
///
/// Unbounded (a page after the cursor), the scan is driven from
/// `affinities`, clustered by (member_id, brand_id): one forward pass in
/// member order from the cursor, grouped as it goes, so LIMIT stops it after
/// one page and the status check happens before the limit (a run of inactive
/// members never cuts a page short). The unary `+` keeps the planner off the
/// brand index, whose order would need a sort of every match of the whole
/// audience before the first row; CROSS JOIN keeps `affinities` the outer
/// loop.
///
/// Bounded (a range whose end is known), the brand index, ordered by member
/// within each brand, gives one index range per brand of the alert: only
/// the alert's brands' affinities in the range are read (a sixteenth of the
/// rows for 3 of 50 brands), and grouping them by member sorts one range's
/// matches, not the audience's.
///
/// The exclusion subqueries run once per group, as it is output.
fn audience_sql(bounded: bool) -> String {
    let (source, range, brand, score) = if bounded {
        (
            "affinities AS a INDEXED BY affinities_by_brand",
            "AND a.member_id <= ?8 ",
            "a.brand_id",
            "a.score",
        )
    } else {
        ("affinities AS a", "", "+a.brand_id", "+a.score")
    };
    format!(
        "SELECT a.member_id AS member_id, json_group_array(a.brand_id) AS brand_ids, {} \
         FROM {source} CROSS JOIN members AS m \
         WHERE a.member_id > ?4 {range}\
           AND {brand} IN (SELECT value FROM json_each(?5)) \
           AND {score} >= ?6 \
           AND m.id = a.member_id AND m.status = 'active' \
         GROUP BY a.member_id \
         ORDER BY a.member_id \
         LIMIT ?7",
        exclusion_columns("a.member_id", "m.email_normalized"),
    )
}

/// The audience page as one value: a JSON array with one
/// `[member_id, brand_ids, unsubscribed, suppressed, recent_sends]` entry
/// per member. One value crosses from SQLite instead of a row per member,
/// whose decoding cost more than the query itself.
fn audience_page_sql(bounded: bool) -> String {
    format!(
        "SELECT json_group_array(json_array(member_id, json(brand_ids), unsubscribed, \
             suppressed, recent_sends)) \
         FROM ({})",
        audience_sql(bounded)
    )
}

/// One entry of [`audience_page_sql`]'s array.
#[derive(serde::Deserialize)]
struct PageEntry(String, Vec<String>, i64, i64, i64);

impl From<PageEntry> for CandidateRow {
    fn from(
        PageEntry(member_id, brand_ids, unsubscribed, suppressed, recent_sends): PageEntry,
    ) -> Self {
        CandidateRow {
            member_id,
            brand_ids: Json(brand_ids),
            unsubscribed: unsubscribed != 0,
            suppressed: suppressed != 0,
            recent_sends,
        }
    }
}

/// Begins a claim's transaction and reads the facts of its members as one
/// value: a JSON array with one [`FactsEntry`] per member. Parameters:
/// `?1`-`?3` as in [`exclusion_columns`], `?4` the member ids (JSON). One
/// value crosses from SQLite instead of a row per member.
fn claim_facts_sql() -> String {
    format!(
        "BEGIN IMMEDIATE; \
         SELECT json_group_array(json_array(alert_exists, member_id, status, unsubscribed, \
             suppressed, recent_sends, row_state, row_possible_duplicate, claim_expires_at, \
             attempts, email, name, first_name, locale, time_zone, customer_id)) \
         FROM (SELECT EXISTS (SELECT 1 FROM brand_alerts WHERE id = ?3) AS alert_exists, \
                 j.value AS member_id, m.status AS status, {}, \
                 l.state AS row_state, l.possible_duplicate AS row_possible_duplicate, \
                 l.claim_expires_at, l.attempts, m.email, m.name, m.first_name, m.locale, \
                 m.time_zone, m.customer_id \
             FROM json_each(?4) AS j \
             LEFT JOIN members AS m ON m.id = j.value \
             LEFT JOIN send_log AS l ON l.alert_id = ?3 AND l.member_id = j.value)",
        exclusion_columns("j.value", "m.email_normalized")
    )
}

/// One entry of [`claim_facts_sql`]'s array.
#[derive(serde::Deserialize)]
struct FactsEntry(
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl From<FactsEntry> for ClaimFacts {
    fn from(
        FactsEntry(
            alert_exists,
            member_id,
            status,
            unsubscribed,
            suppressed,
            recent_sends,
            row_state,
            row_possible_duplicate,
            claim_expires_at,
            attempts,
            email,
            name,
            first_name,
            locale,
            time_zone,
            customer_id,
        ): FactsEntry,
    ) -> Self {
        ClaimFacts {
            alert_exists: alert_exists != 0,
            member_id,
            status,
            unsubscribed: unsubscribed != 0,
            suppressed: suppressed != 0,
            recent_sends,
            row_state,
            row_possible_duplicate: row_possible_duplicate.map(|flag| flag != 0),
            claim_expires_at,
            attempts,
            email,
            name,
            first_name,
            locale,
            time_zone,
            customer_id,
        }
    }
}

/// The writer connection in a transaction that a statement string begins
/// itself (`BEGIN IMMEDIATE; ...`) and commits itself (`...; COMMIT`),
/// sparing the round trips to the connection's thread that sqlx's own
/// BEGIN and COMMIT would each take. sqlx does not know about such a
/// transaction, so this guard ends it instead: after a failed statement
/// [`WriterTransaction::roll_back`] rolls it back, and a guard dropped
/// while the transaction may be open (its future cancelled mid-way) closes
/// the connection, which rolls back, rather than return it to the pool
/// inside a transaction.
struct WriterTransaction {
    conn: PoolConnection<Sqlite>,
    may_be_open: bool,
}

impl WriterTransaction {
    async fn acquire(db: &SqliteDb) -> Result<Self, StoreError> {
        let conn = db
            .writer
            .acquire()
            .await
            .map_err(err("acquire the writer connection"))?;
        Ok(Self {
            conn,
            may_be_open: true,
        })
    }

    /// The string's COMMIT ran.
    fn committed(mut self) {
        self.may_be_open = false;
    }

    /// Rolls back after `error`, which may have stopped the string between
    /// its BEGIN and its COMMIT, and returns the error. A ROLLBACK that
    /// fails (no transaction was open: the BEGIN failed) leaves the guard
    /// to close the connection, the safe side.
    async fn roll_back(mut self, error: StoreError) -> StoreError {
        if sqlx::query("ROLLBACK")
            .execute(&mut *self.conn)
            .await
            .is_ok()
        {
            self.may_be_open = false;
        }
        error
    }
}

impl Drop for WriterTransaction {
    fn drop(&mut self) {
        if self.may_be_open {
            self.conn.close_on_drop();
        }
    }
}

fn json_array(ids: &[String]) -> String {
    serde_json::Value::from(ids).to_string()
}

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

async fn select_alert(
    conn: &mut SqliteConnection,
    id: &str,
    context: &'static str,
) -> Result<AlertRow, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts WHERE id = ?1"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(err(context))
}

/// The first reference of `content` that does not exist, if any.
async fn find_missing(
    conn: &mut SqliteConnection,
    content: &NewBrandAlert,
    context: &'static str,
) -> Result<Option<MissingReference>, StoreError> {
    let template_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM templates WHERE id = ?1)")
            .bind(&content.template_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(err(context))?;
    if !template_exists {
        return Ok(Some(MissingReference::Template));
    }
    let missing_sale: Option<i64> = sqlx::query_scalar(
        "SELECT min(j.key) FROM json_each(?1) AS j \
         WHERE NOT EXISTS (SELECT 1 FROM sales AS s WHERE s.id = j.value)",
    )
    .bind(json_array(&content.sale_ids))
    .fetch_one(conn)
    .await
    .map_err(err(context))?;
    Ok(missing_sale.map(|i| MissingReference::Sale(usize::try_from(i).unwrap_or_default())))
}

/// Adds to the alert's send counts, inside the caller's transaction.
async fn add_send_counts(
    conn: &mut SqliteConnection,
    alert_id: &str,
    delta: SendCountDelta,
    context: &'static str,
) -> Result<(), StoreError> {
    if delta.is_zero() {
        return Ok(());
    }
    sqlx::query(&add_send_counts_sql("?1", ["?2", "?3", "?4", "?5"]))
        .bind(alert_id)
        .bind(delta.sent)
        .bind(delta.failed)
        .bind(delta.skipped)
        .bind(delta.possible_duplicates)
        .execute(conn)
        .await
        .map_err(err(context))?;
    Ok(())
}

fn to_json(value: impl serde::Serialize, context: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(&value).map_err(|e| StoreError::InvalidInput {
        field: context,
        message: e.to_string(),
    })
}

async fn insert_sales(
    conn: &mut SqliteConnection,
    id: &str,
    sale_ids: &[String],
    context: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO brand_alert_sales (alert_id, sale_id, position) \
         SELECT ?1, j.value, j.key FROM json_each(?2) AS j",
    )
    .bind(id)
    .bind(json_array(sale_ids))
    .execute(conn)
    .await
    .map_err(err(context))?;
    Ok(())
}

#[async_trait]
impl BrandAlertSql for SqliteBrandAlertSql {
    const BACKEND: &'static str = crate::sqlite::BACKEND;

    async fn insert(
        &self,
        id: &str,
        content: &NewBrandAlert,
        now: Timestamp,
    ) -> Result<Result<AlertRow, MissingReference>, StoreError> {
        const CONTEXT: &str = "create brand alert";
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        if let Some(missing) = find_missing(&mut tx, content, CONTEXT).await? {
            return Ok(Err(missing));
        }
        sqlx::query(
            "INSERT INTO brand_alerts (id, name, subject, template_id, send_at, \
                 affinity_threshold, transport, state, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        )
        .bind(id)
        .bind(&content.name)
        .bind(&content.subject)
        .bind(&content.template_id)
        .bind(content.send_at.millis())
        .bind(content.affinity_threshold)
        .bind(&content.transport)
        .bind(AlertState::Draft.as_str())
        .bind(now.millis())
        .execute(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        insert_sales(&mut tx, id, &content.sale_ids, CONTEXT).await?;
        let row = select_alert(&mut tx, id, CONTEXT).await?;
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(Ok(row))
    }

    async fn update_content(
        &self,
        id: &str,
        version: i64,
        content: &NewBrandAlert,
        now: Timestamp,
    ) -> Result<Written, StoreError> {
        const CONTEXT: &str = "update brand alert";
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        if let Some(missing) = find_missing(&mut tx, content, CONTEXT).await? {
            return Ok(Written::Missing(missing));
        }
        let updated = sqlx::query(
            "UPDATE brand_alerts SET name = ?2, subject = ?3, template_id = ?4, send_at = ?5, \
                 affinity_threshold = ?6, transport = ?7, version = version + 1, updated_at = ?8 \
             WHERE id = ?1 AND version = ?9 AND state = ?10",
        )
        .bind(id)
        .bind(&content.name)
        .bind(&content.subject)
        .bind(&content.template_id)
        .bind(content.send_at.millis())
        .bind(content.affinity_threshold)
        .bind(&content.transport)
        .bind(now.millis())
        .bind(version)
        .bind(AlertState::Draft.as_str())
        .execute(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        if updated.rows_affected() == 0 {
            return Ok(Written::Stale);
        }
        sqlx::query("DELETE FROM brand_alert_sales WHERE alert_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        insert_sales(&mut tx, id, &content.sale_ids, CONTEXT).await?;
        let row = select_alert(&mut tx, id, CONTEXT).await?;
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(Written::Done(Box::new(row)))
    }

    async fn by_id(&self, id: &str) -> Result<Option<AlertRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(err("read brand alert"))
    }

    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<AlertRow>, StoreError> {
        let (after_send_at, after_id) = query.after.unzip();
        sqlx::query_as(&format!(
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts \
             WHERE (?1 IS NULL OR state = ?1) \
               AND (?2 IS NULL OR send_at >= ?2) \
               AND (?3 IS NULL OR send_at < ?3) \
               AND (?4 IS NULL OR send_at < ?4 OR (send_at = ?4 AND id < ?5)) \
             ORDER BY send_at DESC, id DESC LIMIT ?6"
        ))
        .bind(query.state)
        .bind(query.send_from)
        .bind(query.send_until)
        .bind(after_send_at)
        .bind(after_id)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("list brand alerts"))
    }

    async fn transition(
        &self,
        id: &str,
        change: &Transition<'_>,
    ) -> Result<Option<AlertRow>, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE brand_alerts SET state = ?3, version = version + 1, updated_at = ?4, \
                 build_started_at = COALESCE(?5, build_started_at), \
                 build_finished_at = COALESCE(?6, build_finished_at), \
                 audience_size = CASE WHEN ?6 IS NULL THEN audience_size ELSE enqueued END, \
                 completed_at = COALESCE(?7, completed_at), \
                 failure_reason = COALESCE(?8, failure_reason) \
             WHERE id = ?1 AND state = ?2 \
             RETURNING {COLUMNS}, {SALE_IDS}"
        ))
        .bind(id)
        .bind(change.from.as_str())
        .bind(change.to.as_str())
        .bind(change.now.millis())
        .bind(change.build_started_at.map(Timestamp::millis))
        .bind(change.build_finished_at.map(Timestamp::millis))
        .bind(change.completed_at.map(Timestamp::millis))
        .bind(change.failure_reason)
        .fetch_optional(&self.0.writer)
        .await
        .map_err(err("change brand alert state"))
    }

    async fn delete_draft(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM brand_alerts WHERE id = ?1 AND state = ?2")
            .bind(id)
            .bind(AlertState::Draft.as_str())
            .execute(&self.0.writer)
            .await
            .map_err(err("delete brand alert"))?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn send_counts(&self, id: &str) -> Result<Option<SendCountRow>, StoreError> {
        sqlx::query_as(
            "SELECT sent, failed, skipped, possible_duplicates FROM alert_send_counts \
             WHERE alert_id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(err("count brand alert sends"))
    }

    async fn event_counts(&self, id: &str) -> Result<Vec<EventCountRow>, StoreError> {
        sqlx::query_as(
            "SELECT event_type, count FROM alert_event_counts WHERE alert_id = ?1 \
             ORDER BY event_type",
        )
        .bind(id)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read brand alert event counts"))
    }

    async fn event_span(&self, id: &str) -> Result<(Option<i64>, Option<i64>), StoreError> {
        sqlx::query_as(
            "SELECT min(first_occurred_at), max(last_occurred_at) FROM alert_event_counts \
             WHERE alert_id = ?1",
        )
        .bind(id)
        .fetch_one(&self.0.reader)
        .await
        .map_err(err("read the time span of a brand alert's events"))
    }

    async fn event_buckets(
        &self,
        id: &str,
        width: i64,
        bucket_millis: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT bucket_start - ((bucket_start % ?3) + ?3) % ?3 AS start, event_type, \
                    sum(count) \
             FROM alert_event_buckets WHERE alert_id = ?1 AND width = ?2 \
             GROUP BY start, event_type ORDER BY start, event_type",
        )
        .bind(id)
        .bind(width)
        .bind(bucket_millis)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("count a brand alert's events over time"))
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts \
             WHERE (state = ?1 AND send_at <= ?2) OR state = ?3 \
             ORDER BY send_at, id LIMIT ?4"
        ))
        .bind(AlertState::Scheduled.as_str())
        .bind(now.millis())
        .bind(AlertState::Building.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("find due brand alerts"))
    }

    async fn record_step(
        &self,
        id: &str,
        step: &BuildStep,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE brand_alerts SET build_cursor = ?2, enqueued = enqueued + ?3, \
                 excluded_unsubscribed = excluded_unsubscribed + ?4, \
                 excluded_suppressed = excluded_suppressed + ?5, \
                 excluded_cadence = excluded_cadence + ?6, \
                 version = version + 1, updated_at = ?7 \
             WHERE id = ?1 AND state = ?8 AND (build_cursor IS NULL OR build_cursor < ?2)",
        )
        .bind(id)
        .bind(&step.cursor)
        .bind(db_count(step.enqueued))
        .bind(db_count(step.excluded_unsubscribed))
        .bind(db_count(step.excluded_suppressed))
        .bind(db_count(step.excluded_cadence))
        .bind(now.millis())
        .bind(AlertState::Building.as_str())
        .execute(&self.0.writer)
        .await
        .map_err(err("record brand alert build progress"))?;
        Ok(updated.rows_affected() == 1)
    }

    async fn audience(&self, query: &AudienceQuery<'_>) -> Result<Vec<CandidateRow>, StoreError> {
        const CONTEXT: &str = "read brand alert audience";
        let sql = audience_page_sql(query.upto.is_some());
        let mut statement = sqlx::query_scalar(&sql)
            .bind(BRAND_ALERTS)
            .bind(query.window_start.millis())
            .bind(query.alert_id)
            .bind(query.after)
            .bind(json_array(query.brand_ids))
            .bind(query.threshold)
            .bind(i64::from(query.limit));
        if let Some(upto) = query.upto {
            statement = statement.bind(upto);
        }
        let page: String = statement
            .fetch_one(&self.0.reader)
            .await
            .map_err(err(CONTEXT))?;
        let entries: Vec<PageEntry> =
            serde_json::from_str(&page).map_err(|e| StoreError::Corrupt {
                backend: Self::BACKEND,
                what: CONTEXT,
                message: e.to_string(),
            })?;
        let mut rows: Vec<CandidateRow> = entries.into_iter().map(CandidateRow::from).collect();
        // SQL leaves the order an aggregate sees its rows in unspecified;
        // the page must be in member order for the cursor.
        if !rows.is_sorted_by(|a, b| a.member_id < b.member_id) {
            rows.sort_unstable_by(|a, b| a.member_id.cmp(&b.member_id));
        }
        Ok(rows)
    }

    async fn range_end(&self, after: &str, members: u32) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT coalesce( \
                 (SELECT id FROM members WHERE id > ?1 ORDER BY id LIMIT 1 OFFSET ?2 - 1), \
                 (SELECT max(id) FROM members WHERE id > ?1))",
        )
        .bind(after)
        .bind(i64::from(members))
        .fetch_one(&self.0.reader)
        .await
        .map_err(err("find the end of an audience range"))
    }

    async fn classify(
        &self,
        alert_id: &str,
        member_ids: &[String],
        window_start: Timestamp,
    ) -> Result<Vec<CandidateRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT m.id AS member_id, '[]' AS brand_ids, {} \
             FROM members AS m \
             WHERE m.id IN (SELECT value FROM json_each(?4)) AND m.status = 'active'",
            exclusion_columns("m.id", "m.email_normalized")
        ))
        .bind(BRAND_ALERTS)
        .bind(window_start.millis())
        .bind(alert_id)
        .bind(json_array(member_ids))
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("classify brand alert members"))
    }

    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimOutcome>, StoreError> {
        const CONTEXT: &str = "claim brand alert sends";
        let mut tx = WriterTransaction::acquire(&self.0).await?;
        // All rows rather than one: a fetch that stops at the first row
        // leaves the string's last statement unfinished.
        let read: Result<Vec<String>, _> = sqlx::query_scalar(&claim_facts_sql())
            .bind(BRAND_ALERTS)
            .bind(request.window_start.millis())
            .bind(request.alert_id)
            .bind(json_array(&request.unique_ids))
            .fetch_all(&mut *tx.conn)
            .await;
        let facts = match read {
            Ok(facts) => facts,
            Err(e) => return Err(tx.roll_back(err(CONTEXT)(e)).await),
        };
        let planned =
            serde_json::from_str::<Vec<FactsEntry>>(facts.first().map_or("", String::as_str))
                .map_err(|e| StoreError::Corrupt {
                    backend: Self::BACKEND,
                    what: "claim facts",
                    message: e.to_string(),
                })
                .and_then(|entries| {
                    let facts = entries.into_iter().map(ClaimFacts::from).collect();
                    plan_claims(Self::BACKEND, request, facts)
                });
        let (outcomes, writes, delta) = match planned {
            Ok(planned) => planned,
            Err(e) => return Err(tx.roll_back(e).await),
        };
        let written = if writes.is_empty() && delta.is_zero() {
            sqlx::query("COMMIT").execute(&mut *tx.conn).await
        } else {
            let rows: Vec<_> = writes
                .iter()
                .map(|w| {
                    (
                        &w.member_id,
                        w.state.as_str(),
                        w.claim_expires_at,
                        w.attempts,
                        w.possible_duplicate,
                        w.finished_at,
                        w.reason,
                    )
                })
                .collect();
            let rows = match to_json(rows, "claims") {
                Ok(rows) => rows,
                Err(e) => return Err(tx.roll_back(e).await),
            };
            // The rows, the counts and the commit in one round trip.
            sqlx::query(&format!(
                "{CLAIM_WRITES}; {}; COMMIT",
                add_send_counts_sql("?1", ["?4", "?5", "?6", "?7"])
            ))
            .bind(request.alert_id)
            .bind(request.now.millis())
            .bind(rows)
            .bind(delta.sent)
            .bind(delta.failed)
            .bind(delta.skipped)
            .bind(delta.possible_duplicates)
            .execute(&mut *tx.conn)
            .await
        };
        match written {
            Ok(_) => {
                tx.committed();
                Ok(outcomes)
            }
            Err(e) => Err(tx.roll_back(err(CONTEXT)(e)).await),
        }
    }

    async fn confirm(
        &self,
        alert_id: &str,
        sent: &[SentMessage],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        const CONTEXT: &str = "confirm brand alert sends";
        let sent: Vec<(&str, Option<&str>)> = sent
            .iter()
            .map(|m| (m.member_id.as_str(), m.provider_message_id.as_deref()))
            .collect();
        let sent = to_json(sent, "sent")?;
        let mut tx = WriterTransaction::acquire(&self.0).await?;
        // The transaction, the rows, the count and the commit in one round
        // trip to the writer.
        let confirmed = sqlx::query(&format!(
            "BEGIN IMMEDIATE; {CONFIRM_ROWS}; {COUNT_CONFIRMED}; COMMIT"
        ))
        .bind(alert_id)
        .bind(now.millis())
        .bind(sent)
        .execute(&mut *tx.conn)
        .await;
        match confirmed {
            Ok(_) => {
                tx.committed();
                Ok(())
            }
            Err(e) => Err(tx.roll_back(err(CONTEXT)(e)).await),
        }
    }

    async fn release(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE send_log SET state = 'released', claim_expires_at = NULL, reason = ?3 \
             WHERE alert_id = ?1 AND member_id = ?2 AND state = 'claimed'",
        )
        .bind(alert_id)
        .bind(member_id)
        .bind(reason)
        .execute(&self.0.writer)
        .await
        .map_err(err("release brand alert send"))?;
        Ok(())
    }

    async fn fail(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        const CONTEXT: &str = "mark brand alert send failed";
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        let failed = sqlx::query(
            "INSERT INTO send_log (alert_id, member_id, state, claimed_at, claim_expires_at, \
                 attempts, possible_duplicate, finished_at, reason) \
             SELECT ?1, ?2, 'failed', ?3, NULL, 1, 0, ?3, ?4 \
             WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = ?1) \
             ON CONFLICT (alert_id, member_id) DO UPDATE SET state = 'failed', \
                 claim_expires_at = NULL, finished_at = excluded.finished_at, \
                 reason = excluded.reason \
             WHERE send_log.state IN ('claimed', 'released')",
        )
        .bind(alert_id)
        .bind(member_id)
        .bind(now.millis())
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(err(CONTEXT))?
        .rows_affected();
        let delta = SendCountDelta {
            failed: db_count(failed),
            ..SendCountDelta::default()
        };
        add_send_counts(&mut tx, alert_id, delta, CONTEXT).await?;
        tx.commit().await.map_err(err(CONTEXT))
    }

    async fn complete(
        &self,
        from: AlertState,
        to: AlertState,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "UPDATE brand_alerts SET state = ?2, version = version + 1, updated_at = ?3, \
                 completed_at = ?3 \
             WHERE state = ?1 AND audience_size IS NOT NULL \
               AND COALESCE((SELECT c.sent + c.failed + c.skipped FROM alert_send_counts AS c \
                        WHERE c.alert_id = brand_alerts.id), 0) >= audience_size \
             RETURNING id",
        )
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now.millis())
        .fetch_all(&self.0.writer)
        .await
        .map_err(err("complete brand alerts"))
    }

    async fn count_events(
        &self,
        keys: &[(String, String)],
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, StoreError> {
        const CONTEXT: &str = "count brand alert events";
        let keys = to_json(keys, "keys")?;
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        let marked: Vec<MarkedEvent> = sqlx::query_as(
            "UPDATE email_events SET stats_counted_at = ?1 \
             WHERE stats_counted_at IS NULL \
               AND (provider, provider_event_id) IN \
                   (SELECT value ->> 0, value ->> 1 FROM json_each(?2)) \
             RETURNING provider, provider_event_id, alert_id, event_type, occurred_at",
        )
        .bind(now.millis())
        .bind(keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let tally = tally(&marked);
        if !tally.by_type.is_empty() {
            let by_type: Vec<(&str, &str, i64, i64, i64)> = tally
                .by_type
                .iter()
                .map(|((alert, kind), (n, first, last))| {
                    (alert.as_str(), kind.as_str(), *n, *first, *last)
                })
                .collect();
            sqlx::query(
                "INSERT INTO alert_event_counts \
                     (alert_id, event_type, count, first_occurred_at, last_occurred_at) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 \
                 FROM json_each(?1) \
                 WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = value ->> 0) \
                 ON CONFLICT (alert_id, event_type) DO UPDATE SET \
                     count = alert_event_counts.count + excluded.count, \
                     first_occurred_at = min(coalesce(alert_event_counts.first_occurred_at, \
                         excluded.first_occurred_at), excluded.first_occurred_at), \
                     last_occurred_at = max(coalesce(alert_event_counts.last_occurred_at, \
                         excluded.last_occurred_at), excluded.last_occurred_at)",
            )
            .bind(to_json(by_type, "events")?)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
            let by_bucket: Vec<(&str, i64, i64, &str, i64)> = tally
                .by_bucket
                .iter()
                .map(|((alert, width, start, kind), n)| {
                    (alert.as_str(), *width, *start, kind.as_str(), *n)
                })
                .collect();
            sqlx::query(
                "INSERT INTO alert_event_buckets \
                     (alert_id, width, bucket_start, event_type, count) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 \
                 FROM json_each(?1) \
                 WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = value ->> 0) \
                 ON CONFLICT (alert_id, width, bucket_start, event_type) DO UPDATE SET \
                     count = alert_event_buckets.count + excluded.count",
            )
            .bind(to_json(by_bucket, "events")?)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        }
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(marked
            .into_iter()
            .map(|e| (e.provider, e.provider_event_id))
            .collect())
    }

    async fn prune_send_log(&self, before: Timestamp, limit: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM send_log WHERE (alert_id, member_id) IN \
                 (SELECT l.alert_id, l.member_id FROM send_log AS l \
                  JOIN brand_alerts AS a ON a.id = l.alert_id \
                  WHERE a.state IN ('sent', 'cancelled', 'failed') AND l.claimed_at < ?1 \
                  LIMIT ?2)",
        )
        .bind(before.millis())
        .bind(limit)
        .execute(&self.0.writer)
        .await
        .map_err(err("prune the send log"))?
        .rows_affected())
    }

    async fn received_by_member(
        &self,
        member_id: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, String, i64, bool)>, StoreError> {
        sqlx::query_as(
            "SELECT l.alert_id, a.name, a.subject, COALESCE(l.finished_at, l.claimed_at), \
                    l.possible_duplicate \
             FROM send_log AS l JOIN brand_alerts AS a ON a.id = l.alert_id \
             WHERE l.member_id = ?1 AND l.state = 'sent' \
             ORDER BY l.claimed_at DESC, l.alert_id DESC LIMIT ?2",
        )
        .bind(member_id)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read the alerts a member received"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An audience page must stay one ordered pass over the affinity key:
    /// a plan that sorts (a temp b-tree) or starts from the brand index
    /// reads every match of the whole audience for each page. A range must
    /// read only its brands' affinities, from the brand index.
    #[tokio::test]
    async fn audience_plans_read_only_what_a_page_or_range_needs() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("plan.db")).await.unwrap();
        db.migrate().await.unwrap();
        for bounded in [false, true] {
            let sql = format!("EXPLAIN QUERY PLAN {}", audience_page_sql(bounded));
            let mut statement = sqlx::query_as(&sql)
                .bind(BRAND_ALERTS)
                .bind(0_i64)
                .bind("alert")
                .bind("")
                .bind(r#"["b1","b2","b3"]"#)
                .bind(0.5_f64)
                .bind(1000_i64);
            if bounded {
                statement = statement.bind("m9");
            }
            let rows: Vec<(i64, i64, i64, String)> = statement.fetch_all(&db.reader).await.unwrap();
            let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
            let text = plan.join("\n");
            let scan = if bounded {
                "SEARCH a USING COVERING INDEX affinities_by_brand \
                 (brand_id=? AND member_id>? AND member_id<?)"
            } else {
                "SEARCH a USING PRIMARY KEY (member_id>?)"
            };
            assert!(plan.iter().any(|d| d.starts_with(scan)), "{text}");
            assert!(
                plan.iter().any(
                    |d| d.starts_with("SEARCH m USING INDEX sqlite_autoindex_members_1 (id=?)")
                ),
                "{text}"
            );
            if !bounded {
                assert!(!text.contains("TEMP B-TREE"), "{text}");
                assert!(!text.contains("affinities_by_brand"), "{text}");
            }
        }
        db.close().await;
    }

    /// A claim's writes and a confirm look each member's row up by its key:
    /// a plan that walks the alert's rows costs a scan of the whole alert
    /// per batch.
    #[tokio::test]
    async fn claim_and_confirm_plans_look_rows_up_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("plan.db")).await.unwrap();
        db.migrate().await.unwrap();
        for statement in [CONFIRM_ROWS, CLAIM_WRITES] {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {statement}"))
                    .bind("alert")
                    .bind(0_i64)
                    .bind(r#"[["m1","x"],["m2",null]]"#)
                    .fetch_all(&db.reader)
                    .await
                    .unwrap();
            let text = rows
                .iter()
                .map(|r| r.3.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                !text.contains("send_log USING PRIMARY KEY (alert_id=?)")
                    && !text.contains("SCAN send_log"),
                "{statement}\n{text}"
            );
            assert!(
                !text.contains("CORRELATED"),
                "no subquery run once per row: {statement}\n{text}"
            );
        }
        db.close().await;
    }

    /// A claim for these members of alert `alert_id`, now.
    fn claim_request<'a>(alert_id: &'a str, member_ids: &'a [String]) -> ClaimRequest<'a> {
        ClaimRequest {
            alert_id,
            member_ids,
            unique_ids: member_ids.to_vec(),
            window_start: Timestamp(0),
            max_alerts: 10,
            now: Timestamp(1_000),
            claim_expires_at: Timestamp(61_000),
        }
    }

    /// The writer takes a transaction of its own: it would refuse to if a
    /// claim or confirm had left one open.
    async fn assert_writer_usable(db: &SqliteDb) {
        let tx = db.writer.begin_with("BEGIN IMMEDIATE").await;
        assert!(tx.is_ok(), "{:?}", tx.err());
        tx.unwrap().commit().await.unwrap();
    }

    async fn send_log_rows(db: &SqliteDb) -> Vec<(String, String)> {
        sqlx::query_as("SELECT member_id, state FROM send_log ORDER BY member_id")
            .fetch_all(&db.reader)
            .await
            .unwrap()
    }

    /// A claim or confirm begins and commits its transaction in its own
    /// statement strings; one that fails between the two rolls back, so no
    /// half of it stays and the writer is not left inside a transaction.
    #[tokio::test]
    async fn a_failed_claim_or_confirm_rolls_back_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("rollback.db"))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let sql = SqliteBrandAlertSql(db.clone());
        let members = vec!["m1".to_owned()];

        // Fails after its BEGIN: the alert does not exist.
        let unknown = sql.claim(&claim_request("nope", &members)).await;
        assert!(
            matches!(unknown, Err(StoreError::NotFound { .. })),
            "{unknown:?}"
        );
        assert_writer_usable(&db).await;

        sqlx::raw_sql(
            "INSERT INTO templates (id, name, subject, html, created_at, updated_at) \
                 VALUES ('t', 't', 's', 'h', 0, 0); \
             INSERT INTO brand_alerts (id, name, subject, template_id, send_at, \
                 affinity_threshold, state, created_at, updated_at) \
                 VALUES ('a', 'a', 's', 't', 0, 0.5, 'sending', 0, 0); \
             INSERT INTO members (id, email, email_normalized, status, created_at, updated_at) \
                 VALUES ('m1', 'm1@example.com', 'm1@example.com', 'active', 0, 0);",
        )
        .execute(&db.writer)
        .await
        .unwrap();
        let outcomes = sql.claim(&claim_request("a", &members)).await.unwrap();
        assert!(matches!(outcomes[0], ClaimOutcome::Claimed { .. }));

        // Fails after its UPDATE: the counts table is gone. The row stays
        // claimed.
        sqlx::raw_sql("ALTER TABLE alert_send_counts RENAME TO counts_away")
            .execute(&db.writer)
            .await
            .unwrap();
        let sent = [SentMessage {
            member_id: "m1".into(),
            provider_message_id: None,
        }];
        assert!(sql.confirm("a", &sent, Timestamp(2_000)).await.is_err());
        assert_eq!(send_log_rows(&db).await, [("m1".into(), "claimed".into())]);
        assert_writer_usable(&db).await;

        sqlx::raw_sql("ALTER TABLE counts_away RENAME TO alert_send_counts")
            .execute(&db.writer)
            .await
            .unwrap();
        sql.confirm("a", &sent, Timestamp(2_000)).await.unwrap();
        assert_eq!(send_log_rows(&db).await, [("m1".into(), "sent".into())]);
        db.close().await;
    }

    /// A claim cancelled while its transaction may be open (its caller
    /// gave up waiting) does not hand the writer back inside it.
    #[tokio::test]
    async fn a_cancelled_claim_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("cancel.db")).await.unwrap();
        db.migrate().await.unwrap();
        let sql = SqliteBrandAlertSql(db.clone());
        let members = vec!["m1".to_owned()];
        // Cut short after more and more polls, so at every step of it.
        let mut cut_short = 0;
        for polls in 1..=40 {
            let request = claim_request("nope", &members);
            let mut claim = Box::pin(sql.claim(&request));
            let mut finished = false;
            for _ in 0..polls {
                let polled = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(std::future::Future::poll(claim.as_mut(), cx).is_ready())
                })
                .await;
                if polled {
                    finished = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !finished {
                cut_short += 1;
            }
            drop(claim);
            assert_writer_usable(&db).await;
        }
        assert!(cut_short > 0, "no claim was cut short");
        db.close().await;
    }
}
