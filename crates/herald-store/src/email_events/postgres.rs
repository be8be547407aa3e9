//! PostgreSQL statements for email events. A batch is one INSERT over
//! UNNESTed arrays, `ON CONFLICT DO NOTHING RETURNING` the keys it stored; a
//! concurrent transaction storing the same event waits for this one and then
//! stores nothing, so each event is new to exactly one caller.

use async_trait::async_trait;
use herald_core::email_event::EmailEvent;
use herald_core::Timestamp;
use sqlx::{PgConnection, PgPool};

use super::{check_events, first_indexes, EmailEventSql, EventColumns, EventRow, COLUMNS};
use crate::StoreError;

const BACKEND: &str = crate::postgres::BACKEND;

const INSERT: &str = "INSERT INTO email_events (provider, provider_event_id, event_type, \
     address, occurred_at, message_id, alert_id, bounce, tags, custom_args, raw, received_at) \
     SELECT p, id, t, a, o, m, al, b, tg::jsonb, ca::jsonb, r::jsonb, $12 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) \
          AS x(p, id, t, a, o, m, al, b, tg, ca, r) \
     ON CONFLICT (provider, provider_event_id) DO NOTHING \
     RETURNING provider, provider_event_id";

fn err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

/// Stores the events not stored before, on a connection the caller holds
/// (inside its transaction, so that what it publishes commits with the
/// events); returns the indexes of the events it stored, first occurrences
/// only.
pub async fn insert_new(
    conn: &mut PgConnection,
    events: &[EmailEvent],
    received_at: Timestamp,
) -> Result<Vec<usize>, StoreError> {
    check_events(events)?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let columns = events
        .iter()
        .map(EventColumns::of)
        .collect::<Result<Vec<_>, _>>()?;
    let text = |f: fn(&EventColumns) -> &str| columns.iter().map(f).collect::<Vec<&str>>();
    let opt =
        |f: fn(&EventColumns) -> Option<&str>| columns.iter().map(f).collect::<Vec<Option<&str>>>();
    let inserted: Vec<(String, String)> = sqlx::query_as(INSERT)
        .bind(text(|c| &c.provider))
        .bind(text(|c| &c.provider_event_id))
        .bind(text(|c| &c.event_type))
        .bind(text(|c| &c.address))
        .bind(columns.iter().map(|c| c.occurred_at).collect::<Vec<i64>>())
        .bind(opt(|c| c.message_id.as_deref()))
        .bind(opt(|c| c.alert_id.as_deref()))
        .bind(opt(|c| c.bounce))
        .bind(text(|c| &c.tags))
        .bind(text(|c| &c.custom_args))
        .bind(text(|c| &c.raw))
        .bind(received_at.millis())
        .fetch_all(&mut *conn)
        .await
        .map_err(err("store email events"))?;
    Ok(first_indexes(events, inserted))
}

pub(crate) struct PgEmailEventSql(pub PgPool);

#[async_trait]
impl EmailEventSql for PgEmailEventSql {
    const BACKEND: &'static str = BACKEND;

    async fn insert(
        &self,
        events: &[EmailEvent],
        received_at: Timestamp,
    ) -> Result<Vec<usize>, StoreError> {
        let mut tx = self.0.begin().await.map_err(err("store email events"))?;
        let new = insert_new(&mut tx, events, received_at).await?;
        tx.commit().await.map_err(err("store email events"))?;
        Ok(new)
    }

    async fn by_key(&self, provider: &str, id: &str) -> Result<Option<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE provider = $1 AND provider_event_id = $2"
        ))
        .bind(provider)
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map_err(err("read email event"))
    }

    async fn by_address(&self, address: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE address = $1 \
             ORDER BY occurred_at DESC, seq DESC LIMIT $2"
        ))
        .bind(address)
        .bind(limit)
        .fetch_all(&self.0)
        .await
        .map_err(err("read email events of an address"))
    }

    async fn by_alert(&self, alert_id: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE alert_id = $1 \
             ORDER BY occurred_at DESC, seq DESC LIMIT $2"
        ))
        .bind(alert_id)
        .bind(limit)
        .fetch_all(&self.0)
        .await
        .map_err(err("read email events of a brand alert"))
    }

    async fn latest(
        &self,
        event_type: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE $1::text IS NULL OR event_type = $1 \
             ORDER BY seq DESC LIMIT $2"
        ))
        .bind(event_type)
        .bind(limit)
        .fetch_all(&self.0)
        .await
        .map_err(err("read the latest email events"))
    }

    async fn count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM email_events")
            .fetch_one(&self.0)
            .await
            .map_err(err("count email events"))
    }

    async fn counts_by_type(
        &self,
        alert_id: Option<&str>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT event_type, COUNT(*) FROM email_events \
             WHERE $1::text IS NULL OR alert_id = $1 GROUP BY event_type",
        )
        .bind(alert_id)
        .fetch_all(&self.0)
        .await
        .map_err(err("count email events by type"))
    }

    async fn delete_received_before(
        &self,
        before: Timestamp,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM email_events WHERE seq IN \
             (SELECT seq FROM email_events WHERE received_at < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before.millis())
        .bind(limit)
        .execute(&self.0)
        .await
        .map_err(err("prune email events"))?
        .rows_affected())
    }
}
