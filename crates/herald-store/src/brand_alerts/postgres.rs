use async_trait::async_trait;
use herald_core::alert::AlertState;
use herald_core::catalog::BRAND_ALERTS;
use herald_core::Timestamp;
use sqlx::{PgConnection, PgPool};

use super::{
    db_count, plan_claims, tally, AlertRow, AudienceQuery, BrandAlertSql, BuildStep, CandidateRow,
    ClaimFacts, ClaimOutcome, ClaimRequest, EventCountRow, ListQuery, MarkedEvent,
    MissingReference, NewBrandAlert, SendCountRow, SentMessage, Transition, Written, COLUMNS,
};
use crate::StoreError;

/// Transactions run at READ COMMITTED: each compare-and-set is one
/// statement, and a claim locks the members it concerns first, so claims of
/// different alerts for the same member queue behind each other and each
/// sees the other's rows when it counts the cadence.
pub(crate) struct PgBrandAlertSql(pub PgPool);

/// The alert's sale ids in marketing's order, as a JSON array.
const SALE_IDS: &str = "(SELECT COALESCE(json_agg(s.sale_id ORDER BY s.position), '[]'::json) \
     FROM brand_alert_sales AS s WHERE s.alert_id = brand_alerts.id) AS sale_ids";

/// The exclusion facts of one member. Parameters: `$1` the email type,
/// `$2` the cadence window's start, `$3` the alert's id.
///
/// Scalar subqueries on unique keys rather than EXISTS: the planner may run
/// an EXISTS as a hashed subplan, reading all of `subscriptions` and
/// `suppressions` for every page, where a page needs one index probe per
/// member.
fn exclusion_columns(member: &str, email: &str) -> String {
    format!(
        "COALESCE((SELECT NOT s.subscribed FROM subscriptions AS s \
             WHERE s.member_id = {member} AND s.email_type = $1), FALSE) AS unsubscribed, \
         COALESCE((SELECT TRUE FROM suppressions AS p WHERE p.address = {email}), FALSE) \
             AS suppressed, \
         (SELECT count(*) FROM send_log AS l WHERE l.member_id = {member} \
             AND l.claimed_at > $2 AND l.alert_id <> $3 \
             AND l.state IN ('claimed', 'released', 'sent')) AS recent_sends"
    )
}

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

/// Adds one count column of `alert_send_counts` for the rows the
/// data-modifying statement `done` returns, in the same statement.
fn with_send_count(done: &str, column: &str) -> String {
    format!(
        "WITH done AS ({done} RETURNING 1) \
         INSERT INTO alert_send_counts (alert_id, {column}) \
         SELECT $1, count(*) FROM done HAVING count(*) > 0 \
         ON CONFLICT (alert_id) DO UPDATE \
             SET {column} = alert_send_counts.{column} + excluded.{column}"
    )
}

async fn select_alert(
    conn: &mut PgConnection,
    id: &str,
    context: &'static str,
) -> Result<AlertRow, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(err(context))
}

/// The first reference of `content` that does not exist, if any.
async fn find_missing(
    conn: &mut PgConnection,
    content: &NewBrandAlert,
    context: &'static str,
) -> Result<Option<MissingReference>, StoreError> {
    let template_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1)")
            .bind(&content.template_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(err(context))?;
    if !template_exists {
        return Ok(Some(MissingReference::Template));
    }
    let missing_sale: Option<i64> = sqlx::query_scalar(
        "SELECT min(j.ord) - 1 FROM unnest($1::text[]) WITH ORDINALITY AS j(id, ord) \
         WHERE NOT EXISTS (SELECT 1 FROM sales AS s WHERE s.id = j.id)",
    )
    .bind(&content.sale_ids)
    .fetch_one(conn)
    .await
    .map_err(err(context))?;
    Ok(missing_sale.map(|i| MissingReference::Sale(usize::try_from(i).unwrap_or_default())))
}

async fn insert_sales(
    conn: &mut PgConnection,
    id: &str,
    sale_ids: &[String],
    context: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO brand_alert_sales (alert_id, sale_id, position) \
         SELECT $1, j.id, j.ord - 1 FROM unnest($2::text[]) WITH ORDINALITY AS j(id, ord)",
    )
    .bind(id)
    .bind(sale_ids)
    .execute(conn)
    .await
    .map_err(err(context))?;
    Ok(())
}

#[async_trait]
impl BrandAlertSql for PgBrandAlertSql {
    const BACKEND: &'static str = crate::postgres::BACKEND;

    async fn insert(
        &self,
        id: &str,
        content: &NewBrandAlert,
        now: Timestamp,
    ) -> Result<Result<AlertRow, MissingReference>, StoreError> {
        const CONTEXT: &str = "create brand alert";
        let mut tx = self.0.begin().await.map_err(err(CONTEXT))?;
        if let Some(missing) = find_missing(&mut tx, content, CONTEXT).await? {
            return Ok(Err(missing));
        }
        sqlx::query(
            "INSERT INTO brand_alerts (id, name, subject, template_id, send_at, \
                 affinity_threshold, transport, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
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
        let mut tx = self.0.begin().await.map_err(err(CONTEXT))?;
        if let Some(missing) = find_missing(&mut tx, content, CONTEXT).await? {
            return Ok(Written::Missing(missing));
        }
        let updated = sqlx::query(
            "UPDATE brand_alerts SET name = $2, subject = $3, template_id = $4, send_at = $5, \
                 affinity_threshold = $6, transport = $7, version = version + 1, updated_at = $8 \
             WHERE id = $1 AND version = $9 AND state = $10",
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
        sqlx::query("DELETE FROM brand_alert_sales WHERE alert_id = $1")
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
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map_err(err("read brand alert"))
    }

    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<AlertRow>, StoreError> {
        let (after_send_at, after_id) = query.after.unzip();
        sqlx::query_as(&format!(
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts \
             WHERE ($1::text IS NULL OR state = $1) \
               AND ($2::bigint IS NULL OR send_at >= $2) \
               AND ($3::bigint IS NULL OR send_at < $3) \
               AND ($4::bigint IS NULL OR (send_at, id) < ($4, $5::text)) \
             ORDER BY send_at DESC, id DESC LIMIT $6"
        ))
        .bind(query.state)
        .bind(query.send_from)
        .bind(query.send_until)
        .bind(after_send_at)
        .bind(after_id)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(&self.0)
        .await
        .map_err(err("list brand alerts"))
    }

    async fn transition(
        &self,
        id: &str,
        change: &Transition<'_>,
    ) -> Result<Option<AlertRow>, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE brand_alerts SET state = $3, version = version + 1, updated_at = $4, \
                 build_started_at = COALESCE($5, build_started_at), \
                 build_finished_at = COALESCE($6, build_finished_at), \
                 audience_size = CASE WHEN $6::bigint IS NULL THEN audience_size \
                     ELSE enqueued END, \
                 completed_at = COALESCE($7, completed_at), \
                 failure_reason = COALESCE($8, failure_reason) \
             WHERE id = $1 AND state = $2 \
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
        .fetch_optional(&self.0)
        .await
        .map_err(err("change brand alert state"))
    }

    async fn delete_draft(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM brand_alerts WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(AlertState::Draft.as_str())
            .execute(&self.0)
            .await
            .map_err(err("delete brand alert"))?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn send_counts(&self, id: &str) -> Result<Option<SendCountRow>, StoreError> {
        sqlx::query_as(
            "SELECT sent, failed, skipped, possible_duplicates FROM alert_send_counts \
             WHERE alert_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map_err(err("count brand alert sends"))
    }

    async fn event_counts(&self, id: &str) -> Result<Vec<EventCountRow>, StoreError> {
        sqlx::query_as(
            "SELECT event_type, count FROM alert_event_counts WHERE alert_id = $1 \
             ORDER BY event_type",
        )
        .bind(id)
        .fetch_all(&self.0)
        .await
        .map_err(err("read brand alert event counts"))
    }

    async fn event_span(&self, id: &str) -> Result<(Option<i64>, Option<i64>), StoreError> {
        sqlx::query_as(
            "SELECT min(first_occurred_at), max(last_occurred_at) FROM alert_event_counts \
             WHERE alert_id = $1",
        )
        .bind(id)
        .fetch_one(&self.0)
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
            "SELECT bucket_start - ((bucket_start % $3) + $3) % $3 AS start, event_type, \
                    sum(count)::bigint \
             FROM alert_event_buckets WHERE alert_id = $1 AND width = $2 \
             GROUP BY start, event_type ORDER BY start, event_type",
        )
        .bind(id)
        .bind(width)
        .bind(bucket_millis)
        .fetch_all(&self.0)
        .await
        .map_err(err("count a brand alert's events over time"))
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS}, {SALE_IDS} FROM brand_alerts \
             WHERE (state = $1 AND send_at <= $2) OR state = $3 \
             ORDER BY send_at, id LIMIT $4"
        ))
        .bind(AlertState::Scheduled.as_str())
        .bind(now.millis())
        .bind(AlertState::Building.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.0)
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
            "UPDATE brand_alerts SET build_cursor = $2, enqueued = enqueued + $3, \
                 excluded_unsubscribed = excluded_unsubscribed + $4, \
                 excluded_suppressed = excluded_suppressed + $5, \
                 excluded_cadence = excluded_cadence + $6, \
                 version = version + 1, updated_at = $7 \
             WHERE id = $1 AND state = $8 AND (build_cursor IS NULL OR build_cursor < $2)",
        )
        .bind(id)
        .bind(&step.cursor)
        .bind(db_count(step.enqueued))
        .bind(db_count(step.excluded_unsubscribed))
        .bind(db_count(step.excluded_suppressed))
        .bind(db_count(step.excluded_cadence))
        .bind(now.millis())
        .bind(AlertState::Building.as_str())
        .execute(&self.0)
        .await
        .map_err(err("record brand alert build progress"))?;
        Ok(updated.rows_affected() == 1)
    }

    async fn audience(&self, query: &AudienceQuery<'_>) -> Result<Vec<CandidateRow>, StoreError> {
        // One forward pass over the affinities' primary key from the
        // cursor, grouped in member order as it goes, so LIMIT (or the
        // range's end) stops it after one page. `m.id > $4` repeats the
        // cursor for the members side so a merge join starts there too
        // instead of at the first member.
        let sql = format!(
            "WITH hits AS ( \
                 SELECT a.member_id, json_agg(a.brand_id) AS brand_ids, \
                     min(m.email_normalized) AS email \
                 FROM affinities AS a JOIN members AS m ON m.id = a.member_id \
                 WHERE a.member_id > $4 AND m.id > $4 {} \
                   AND a.brand_id = ANY($5) AND a.score >= $6 AND m.status = 'active' \
                 GROUP BY a.member_id \
                 ORDER BY a.member_id \
                 LIMIT $7 \
             ) \
             SELECT h.member_id, h.brand_ids, {} \
             FROM hits AS h ORDER BY h.member_id",
            if query.upto.is_some() {
                "AND a.member_id <= $8 AND m.id <= $8"
            } else {
                ""
            },
            exclusion_columns("h.member_id", "h.email")
        );
        let mut statement = sqlx::query_as(&sql)
            .bind(BRAND_ALERTS)
            .bind(query.window_start.millis())
            .bind(query.alert_id)
            .bind(query.after)
            .bind(query.brand_ids)
            .bind(query.threshold)
            .bind(i64::from(query.limit));
        if let Some(upto) = query.upto {
            statement = statement.bind(upto);
        }
        statement
            .fetch_all(&self.0)
            .await
            .map_err(err("read brand alert audience"))
    }

    async fn range_end(&self, after: &str, members: u32) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT coalesce( \
                 (SELECT id FROM members WHERE id > $1 ORDER BY id OFFSET $2 - 1 LIMIT 1), \
                 (SELECT max(id) FROM members WHERE id > $1))",
        )
        .bind(after)
        .bind(i64::from(members))
        .fetch_one(&self.0)
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
            "SELECT m.id AS member_id, '[]'::json AS brand_ids, {} \
             FROM members AS m \
             WHERE m.id = ANY($4) AND m.status = 'active'",
            exclusion_columns("m.id", "m.email_normalized")
        ))
        .bind(BRAND_ALERTS)
        .bind(window_start.millis())
        .bind(alert_id)
        .bind(member_ids)
        .fetch_all(&self.0)
        .await
        .map_err(err("classify brand alert members"))
    }

    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimOutcome>, StoreError> {
        const CONTEXT: &str = "claim brand alert sends";
        let mut tx = self.0.begin().await.map_err(err(CONTEXT))?;
        // Lock the members (in id order, so two claims never deadlock) before
        // counting their sends: a claim of another alert for one of them
        // waits here until this transaction commits, then counts our rows.
        sqlx::query("SELECT id FROM members WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&request.unique_ids)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        // And this alert's rows of them: a confirm or failure of another
        // process waits, or is seen, so the send counts move with the rows.
        sqlx::query(
            "SELECT member_id FROM send_log WHERE alert_id = $1 AND member_id = ANY($2) \
             ORDER BY member_id FOR UPDATE",
        )
        .bind(request.alert_id)
        .bind(&request.unique_ids)
        .execute(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let facts: Vec<ClaimFacts> = sqlx::query_as(&format!(
            "SELECT EXISTS (SELECT 1 FROM brand_alerts WHERE id = $3) AS alert_exists, \
                 j.member_id, m.status, {}, \
                 l.state AS row_state, l.possible_duplicate AS row_possible_duplicate, \
                 l.claim_expires_at, l.attempts, m.email, m.name, m.first_name, m.locale, \
                 m.time_zone, m.customer_id \
             FROM unnest($4::text[]) AS j(member_id) \
             LEFT JOIN members AS m ON m.id = j.member_id \
             LEFT JOIN send_log AS l ON l.alert_id = $3 AND l.member_id = j.member_id",
            exclusion_columns("j.member_id", "m.email_normalized")
        ))
        .bind(BRAND_ALERTS)
        .bind(request.window_start.millis())
        .bind(request.alert_id)
        .bind(&request.unique_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let (outcomes, writes, delta) = plan_claims(Self::BACKEND, request, facts)?;
        if !writes.is_empty() {
            let mut member_ids = Vec::with_capacity(writes.len());
            let mut states = Vec::with_capacity(writes.len());
            let mut expires = Vec::with_capacity(writes.len());
            let mut attempts = Vec::with_capacity(writes.len());
            let mut duplicates = Vec::with_capacity(writes.len());
            let mut finished = Vec::with_capacity(writes.len());
            let mut reasons = Vec::with_capacity(writes.len());
            for write in writes {
                member_ids.push(write.member_id);
                states.push(write.state.as_str());
                expires.push(write.claim_expires_at);
                attempts.push(write.attempts);
                duplicates.push(write.possible_duplicate);
                finished.push(write.finished_at);
                reasons.push(write.reason);
            }
            // The rows and the counts in one statement.
            sqlx::query(
                "WITH written AS (INSERT INTO send_log (alert_id, member_id, state, claimed_at, \
                     claim_expires_at, attempts, possible_duplicate, finished_at, reason) \
                 SELECT $1, w.member_id, w.state, $2, w.claim_expires_at, w.attempts, \
                     w.possible_duplicate, w.finished_at, w.reason \
                 FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                     $7::boolean[], $8::bigint[], $9::text[]) \
                     AS w(member_id, state, claim_expires_at, attempts, possible_duplicate, \
                          finished_at, reason) \
                 ON CONFLICT (alert_id, member_id) DO UPDATE SET \
                     state = excluded.state, claimed_at = excluded.claimed_at, \
                     claim_expires_at = excluded.claim_expires_at, \
                     attempts = excluded.attempts, \
                     possible_duplicate = send_log.possible_duplicate OR excluded.possible_duplicate, \
                     finished_at = excluded.finished_at, reason = excluded.reason) \
                 INSERT INTO alert_send_counts \
                     (alert_id, sent, failed, skipped, possible_duplicates) \
                 SELECT $1, $10, $11, $12, $13 \
                 WHERE $10 <> 0 OR $11 <> 0 OR $12 <> 0 OR $13 <> 0 \
                 ON CONFLICT (alert_id) DO UPDATE SET \
                     sent = alert_send_counts.sent + excluded.sent, \
                     failed = alert_send_counts.failed + excluded.failed, \
                     skipped = alert_send_counts.skipped + excluded.skipped, \
                     possible_duplicates = \
                         alert_send_counts.possible_duplicates + excluded.possible_duplicates",
            )
            .bind(request.alert_id)
            .bind(request.now.millis())
            .bind(member_ids)
            .bind(states)
            .bind(expires)
            .bind(attempts)
            .bind(duplicates)
            .bind(finished)
            .bind(reasons)
            .bind(delta.sent)
            .bind(delta.failed)
            .bind(delta.skipped)
            .bind(delta.possible_duplicates)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        }
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(outcomes)
    }

    async fn confirm(
        &self,
        alert_id: &str,
        sent: &[SentMessage],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (member_ids, provider_ids): (Vec<&str>, Vec<Option<&str>>) = sent
            .iter()
            .map(|m| (m.member_id.as_str(), m.provider_message_id.as_deref()))
            .unzip();
        sqlx::query(&with_send_count(
            "UPDATE send_log AS l SET state = 'sent', finished_at = $2, \
                 provider_message_id = w.provider_message_id, claim_expires_at = NULL \
             FROM unnest($3::text[], $4::text[]) AS w(member_id, provider_message_id) \
             WHERE l.alert_id = $1 AND l.member_id = w.member_id AND l.state = 'claimed'",
            "sent",
        ))
        .bind(alert_id)
        .bind(now.millis())
        .bind(member_ids)
        .bind(provider_ids)
        .execute(&self.0)
        .await
        .map_err(err("confirm brand alert sends"))?;
        Ok(())
    }

    async fn release(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE send_log SET state = 'released', claim_expires_at = NULL, reason = $3 \
             WHERE alert_id = $1 AND member_id = $2 AND state = 'claimed'",
        )
        .bind(alert_id)
        .bind(member_id)
        .bind(reason)
        .execute(&self.0)
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
        sqlx::query(&with_send_count(
            "INSERT INTO send_log (alert_id, member_id, state, claimed_at, claim_expires_at, \
                 attempts, possible_duplicate, finished_at, reason) \
             SELECT $1, $2, 'failed', $3, NULL, 1, FALSE, $3, $4 \
             WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = $1) \
             ON CONFLICT (alert_id, member_id) DO UPDATE SET state = 'failed', \
                 claim_expires_at = NULL, finished_at = excluded.finished_at, \
                 reason = excluded.reason \
             WHERE send_log.state IN ('claimed', 'released')",
            "failed",
        ))
        .bind(alert_id)
        .bind(member_id)
        .bind(now.millis())
        .bind(reason)
        .execute(&self.0)
        .await
        .map_err(err("mark brand alert send failed"))?;
        Ok(())
    }

    async fn complete(
        &self,
        from: AlertState,
        to: AlertState,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "UPDATE brand_alerts SET state = $2, version = version + 1, updated_at = $3, \
                 completed_at = $3 \
             WHERE state = $1 AND audience_size IS NOT NULL \
               AND COALESCE((SELECT c.sent + c.failed + c.skipped FROM alert_send_counts AS c \
                        WHERE c.alert_id = brand_alerts.id), 0) >= audience_size \
             RETURNING id",
        )
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now.millis())
        .fetch_all(&self.0)
        .await
        .map_err(err("complete brand alerts"))
    }

    async fn count_events(
        &self,
        keys: &[(String, String)],
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, StoreError> {
        const CONTEXT: &str = "count brand alert events";
        let (providers, ids): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(p, id)| (p.as_str(), id.as_str())).unzip();
        let mut tx = self.0.begin().await.map_err(err(CONTEXT))?;
        // A concurrent transaction marking the same event waits for this one
        // and then finds it marked: each event is counted by one of them.
        let marked: Vec<MarkedEvent> = sqlx::query_as(
            "UPDATE email_events e SET stats_counted_at = $1 \
             FROM UNNEST($2::text[], $3::text[]) AS k(p, id) \
             WHERE e.provider = k.p AND e.provider_event_id = k.id \
               AND e.stats_counted_at IS NULL \
             RETURNING e.provider, e.provider_event_id, e.alert_id, e.event_type, \
                 e.occurred_at",
        )
        .bind(now.millis())
        .bind(providers)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let tally = tally(&marked);
        if !tally.by_type.is_empty() {
            let mut alerts = Vec::new();
            let mut kinds = Vec::new();
            let mut counts = Vec::new();
            let mut firsts = Vec::new();
            let mut lasts = Vec::new();
            for ((alert, kind), (n, first, last)) in &tally.by_type {
                alerts.push(alert.as_str());
                kinds.push(kind.as_str());
                counts.push(*n);
                firsts.push(*first);
                lasts.push(*last);
            }
            sqlx::query(
                "INSERT INTO alert_event_counts \
                     (alert_id, event_type, count, first_occurred_at, last_occurred_at) \
                 SELECT a, t, n, f, l \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
                     AS x(a, t, n, f, l) \
                 WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = x.a) \
                 ON CONFLICT (alert_id, event_type) DO UPDATE SET \
                     count = alert_event_counts.count + excluded.count, \
                     first_occurred_at = LEAST(alert_event_counts.first_occurred_at, \
                         excluded.first_occurred_at), \
                     last_occurred_at = GREATEST(alert_event_counts.last_occurred_at, \
                         excluded.last_occurred_at)",
            )
            .bind(alerts)
            .bind(kinds)
            .bind(counts)
            .bind(firsts)
            .bind(lasts)
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
            let mut alerts = Vec::new();
            let mut widths = Vec::new();
            let mut starts = Vec::new();
            let mut kinds = Vec::new();
            let mut counts = Vec::new();
            for ((alert, width, start, kind), n) in &tally.by_bucket {
                alerts.push(alert.as_str());
                widths.push(*width);
                starts.push(*start);
                kinds.push(kind.as_str());
                counts.push(*n);
            }
            sqlx::query(
                "INSERT INTO alert_event_buckets \
                     (alert_id, width, bucket_start, event_type, count) \
                 SELECT a, w, s, t, n \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[]) \
                     AS x(a, w, s, t, n) \
                 WHERE EXISTS (SELECT 1 FROM brand_alerts WHERE id = x.a) \
                 ON CONFLICT (alert_id, width, bucket_start, event_type) DO UPDATE SET \
                     count = alert_event_buckets.count + excluded.count",
            )
            .bind(alerts)
            .bind(widths)
            .bind(starts)
            .bind(kinds)
            .bind(counts)
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
                  WHERE a.state IN ('sent', 'cancelled', 'failed') AND l.claimed_at < $1 \
                  LIMIT $2)",
        )
        .bind(before.millis())
        .bind(limit)
        .execute(&self.0)
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
             WHERE l.member_id = $1 AND l.state = 'sent' \
             ORDER BY l.claimed_at DESC, l.alert_id DESC LIMIT $2",
        )
        .bind(member_id)
        .bind(limit)
        .fetch_all(&self.0)
        .await
        .map_err(err("read the alerts a member received"))
    }
}
