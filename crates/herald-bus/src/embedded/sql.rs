//! The embedded bus's SQL. The hot paths (send, receive, ack) are one
//! autocommit statement each: every statement is a round trip to sqlx's
//! SQLite worker thread, and on a small machine those round trips, not
//! SQLite, dominate a batch.
//!
//! The multi-row statements use anonymous `?` parameters only: sqlx looks up
//! every parameter's name before binding it, and SQLite finds numbered names
//! with a linear scan, which makes a 100-row batch quadratic.

/// Which optional per-message values a batch carries; the others are bound
/// once (ready_at) or left NULL, since every bound value costs time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SendShape {
    pub delays: bool,
    pub attributes: bool,
    pub groups: bool,
}

/// Sends a batch in one statement, all or nothing: no row is inserted unless
/// the queue exists and accepts the largest body. Parameters: sent_at, then
/// ready_at unless the batch has delays, then sent_at twice more (the lease
/// placeholders); per row message_id, body, then ready_at, attributes and
/// group_key as the shape says; then the queue name and the largest body's
/// size.
pub(super) fn send_sql(rows: usize, shape: SendShape) -> String {
    let mut column = 2;
    let mut next = || {
        column += 1;
        format!("v.column{column}")
    };
    let ready_at = if shape.delays { next() } else { "?".into() };
    let attributes = if shape.attributes {
        next()
    } else {
        "NULL".into()
    };
    let group_key = if shape.groups { next() } else { "NULL".into() };
    let per_row = column;
    let mut sql = String::with_capacity(300 + rows * (per_row * 3 + 4));
    sql.push_str(&format!(
        "INSERT INTO bus_messages \
         (queue_id, sent_at, ready_at, lease_until, first_received_at, receipt, \
          message_id, body, attributes, group_key) \
         SELECT q.id, ?, {ready_at}, ?, ?, random(), \
             v.column1, v.column2, {attributes}, {group_key} \
         FROM (VALUES "
    ));
    let group = format!("({})", vec!["?"; per_row].join(", "));
    push_groups(&mut sql, rows, &group);
    sql.push_str(") v JOIN bus_queues q ON q.name = ? AND q.max_body_bytes >= ?");
    sql
}

/// `INSERT` of `rows` messages into a known queue, seven parameters per row
/// (queue id, sent_at, message_id, body, attributes, group_key, ready_at);
/// for the transactional send path (dedup keys, publish, huge batches).
pub(super) fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(300 + rows * 24);
    sql.push_str(
        "INSERT INTO bus_messages \
         (queue_id, sent_at, message_id, body, attributes, group_key, ready_at, \
          lease_until, first_received_at, receipt) \
         SELECT column1, column2, column3, column4, column5, column6, column7, \
             column2, column2, random() FROM (VALUES ",
    );
    push_groups(&mut sql, rows, "(?, ?, ?, ?, ?, ?, ?)");
    sql.push(')');
    sql
}

/// Acks `rows` (seq, token) pairs of the queue named by the last parameter,
/// and returns which were deleted.
pub(super) fn ack_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(300 + rows * 8);
    sql.push_str("DELETE FROM bus_messages WHERE seq IN (SELECT m.seq FROM (VALUES ");
    push_groups(&mut sql, rows, "(?, ?)");
    sql.push_str(
        ") v JOIN bus_messages m ON m.seq = v.column1 AND m.receipt = v.column2 \
         WHERE m.queue_id = (SELECT id FROM bus_queues WHERE name = ?)) \
         RETURNING seq, receipt",
    );
    sql
}

/// Acks `rows` distinct (seq, token) pairs only if every one of them is
/// current, deleting nothing otherwise; parameters: the pairs, the queue
/// name, then `rows`. The common case costs no returned rows at all.
pub(super) fn ack_all_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(400 + rows * 8);
    sql.push_str("WITH v (seq, token) AS (VALUES ");
    push_groups(&mut sql, rows, "(?, ?)");
    sql.push_str(
        "), hit AS (SELECT m.seq FROM v JOIN bus_messages m \
             ON m.seq = v.seq AND m.receipt = v.token \
             WHERE m.queue_id = (SELECT id FROM bus_queues WHERE name = ?)) \
         DELETE FROM bus_messages WHERE seq IN hit AND (SELECT COUNT(*) FROM hit) = ?",
    );
    sql
}

fn push_groups(sql: &mut String, rows: usize, group: &str) {
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(group);
    }
}

/// The queues named in the JSON array `?1`.
pub(super) const QUEUES_BY_NAME: &str = "SELECT name, id, max_receives, dead_letter_queue, \
     dedup_window_ms, max_body_bytes FROM bus_queues \
     WHERE name IN (SELECT value FROM json_each(?1))";

pub(super) const QUEUE_BY_NAME: &str = "SELECT id, max_receives, dead_letter_queue, \
     dedup_window_ms, max_body_bytes FROM bus_queues WHERE name = ?1";

/// Leases up to `?3` receivable messages of queue `?1` until `?4`; `?2` is
/// now. Also returns the queue's max_receives, so messages past it can be
/// moved to the dead-letter queue without another round trip first.
///
/// Each row comes back as two values, the body and everything else packed
/// in one text (see [`Packed`]): sqlx's SQLite driver copies every returned
/// value on its own, and ten values a row made that copying cost more than
/// the update itself.
pub(super) const RECEIVE: &str = "UPDATE bus_messages \
     SET receipt = random(), lease_until = ?4, receive_count = receive_count + 1, \
         first_received_at = CASE receive_count WHEN 0 THEN ?2 ELSE first_received_at END \
     WHERE seq IN (SELECT seq FROM bus_messages \
         WHERE queue_id = (SELECT id FROM bus_queues WHERE name = ?1) \
           AND held = 0 AND ready_at <= ?2 AND lease_until <= ?2 \
         ORDER BY ready_at, seq LIMIT ?3) \
     RETURNING seq || ',' || receipt || ',' || receive_count || ',' || first_received_at \
         || ',' || sent_at || ',' || (SELECT max_receives FROM bus_queues WHERE name = ?1) \
         || ',' || message_id || ',' || COALESCE(length(CAST(group_key AS BLOB)), -1) \
         || ',' || COALESCE(group_key, '') || COALESCE(attributes, ''), \
         body";

/// One row of [`RECEIVE`]'s packed text: `seq,receipt,receive_count,
/// first_received_at,sent_at,max_receives,message_id,group_len,` then the
/// group key (`group_len` bytes; -1 for none) and the attributes JSON (empty
/// for none).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Packed<'a> {
    pub seq: i64,
    pub token: i64,
    pub receive_count: i64,
    pub first_received_at: i64,
    pub sent_at: i64,
    pub max_receives: i64,
    pub message_id: &'a str,
    pub group: Option<&'a str>,
    pub attributes: Option<&'a str>,
}

impl<'a> Packed<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut fields = text.splitn(9, ',');
        let mut int = || fields.next()?.parse::<i64>().ok();
        let (seq, token, receive_count, first_received_at, sent_at, max_receives) =
            (int()?, int()?, int()?, int()?, int()?, int()?);
        let message_id = fields.next()?;
        let group_len = fields.next()?.parse::<i64>().ok()?;
        let rest = fields.next()?;
        let (group, attributes) = match usize::try_from(group_len) {
            Ok(len) => {
                let group = rest.get(..len)?;
                (Some(group), &rest[len..])
            }
            Err(_) => (None, rest),
        };
        Some(Self {
            seq,
            token,
            receive_count,
            first_received_at,
            sent_at,
            max_receives,
            message_id,
            group,
            attributes: Some(attributes).filter(|a| !a.is_empty()),
        })
    }
}

/// Whether queue `?1` exists, and about when its next message becomes
/// receivable if one waits for its delay or for a lease to lapse (`?2` is
/// now). Early is harmless: the poll looks, then sleeps again.
pub(super) const NEXT_VISIBLE: &str = "SELECT q.id, \
         (SELECT MIN(ready_at) FROM bus_messages \
          WHERE queue_id = q.id AND held = 0 AND ready_at > ?2), \
         (SELECT MIN(lease_until) FROM bus_messages \
          WHERE queue_id = q.id AND held = 0 AND ready_at <= ?2 AND lease_until > ?2) \
     FROM (SELECT 1) LEFT JOIN bus_queues q ON q.name = ?1";

/// Copies messages to the back of another queue; the caller deletes the
/// originals. `?1` target queue id, `?2` now, `?3` dead_letter JSON (or
/// NULL), `?4` JSON array of seqs, `?5` true to keep the receive history (a
/// dead-letter move) or false to start over (a redrive).
pub(super) const MOVE_MESSAGES: &str = "INSERT INTO bus_messages \
     (queue_id, message_id, body, attributes, group_key, sent_at, ready_at, \
      lease_until, receipt, receive_count, first_received_at, dead_letter) \
     SELECT ?1, message_id, body, attributes, group_key, sent_at, ?2, ?2, random(), \
         CASE WHEN ?5 THEN receive_count - 1 ELSE 0 END, \
         CASE WHEN ?5 THEN first_received_at ELSE ?2 END, ?3 \
     FROM bus_messages WHERE seq IN (SELECT value FROM json_each(?4)) ORDER BY seq";

pub(super) const DELETE_SEQS: &str =
    "DELETE FROM bus_messages WHERE seq IN (SELECT value FROM json_each(?1))";

/// Of the JSON `[[seq, token], ...]` pairs in `?1`, the seqs still leased
/// with that token in queue `?2`.
pub(super) const LEASED_SEQS: &str = "SELECT m.seq FROM json_each(?1) j \
     JOIN bus_messages m ON m.seq = j.value ->> 0 AND m.receipt = j.value ->> 1 \
     WHERE m.queue_id = ?2 ORDER BY m.seq";

/// A topic's subscriptions as (queue name, filter JSON), by queue name.
pub(super) const TOPIC_SUBSCRIPTIONS: &str = "SELECT q.name, s.filter FROM bus_subscriptions s \
     JOIN bus_queues q ON q.id = s.queue_id WHERE s.topic = ?1 ORDER BY q.name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_parse_back() {
        let plain = Packed::parse("12,-5,1,1000,999,5,0190-ab,-1,").unwrap();
        assert_eq!(
            plain,
            Packed {
                seq: 12,
                token: -5,
                receive_count: 1,
                first_received_at: 1000,
                sent_at: 999,
                max_receives: 5,
                message_id: "0190-ab",
                group: None,
                attributes: None,
            }
        );
        // Group keys and attributes may hold commas and any character.
        let full = Packed::parse("1,2,3,4,5,0,id,7,g,ré,x{\"a\":\"1,2\"}").unwrap();
        assert_eq!(full.group, Some("g,ré,x"));
        assert_eq!(full.attributes, Some("{\"a\":\"1,2\"}"));
        let empty_group = Packed::parse("1,2,3,4,5,0,id,0,").unwrap();
        assert_eq!(
            (empty_group.group, empty_group.attributes),
            (Some(""), None)
        );
        for bad in [
            "",
            "1,2,3",
            "x,2,3,4,5,6,id,-1,",
            "1,2,3,4,5,6,id,9,short",
            "1,2,3,4,5,6,id,1,é",
        ] {
            assert_eq!(Packed::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_parameter_group_per_row() {
        assert!(insert_sql(2).ends_with("VALUES (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?))"));
        let all = SendShape {
            delays: true,
            attributes: true,
            groups: true,
        };
        assert_eq!(send_sql(3, all).matches("(?, ?, ?, ?, ?)").count(), 3);
        let plain = SendShape {
            delays: false,
            attributes: false,
            groups: false,
        };
        let sql = send_sql(3, plain);
        let head = "SELECT q.id, ?, ?, ?, ?, random(), v.column1, v.column2, NULL, NULL";
        assert!(sql.contains(head), "{sql}");
        assert!(sql.contains("VALUES (?, ?), (?, ?), (?, ?))"), "{sql}");
        let grouped = SendShape {
            groups: true,
            ..plain
        };
        assert!(send_sql(1, grouped).contains("v.column2, NULL, v.column3"));
        assert_eq!(ack_sql(3).matches("(?, ?)").count(), 3);
        assert_eq!(ack_all_sql(4).matches("(?, ?)").count(), 4);
        for sql in [send_sql(5, all), insert_sql(5), ack_sql(5), ack_all_sql(5)] {
            assert!(
                !sql.contains("?1"),
                "numbered parameters are slow to bind: {sql}"
            );
        }
    }
}
