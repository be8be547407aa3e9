//! The PostgreSQL bus's SQL. Every statement has a fixed text, so each is
//! prepared once per connection: batches travel as arrays through `unnest`
//! instead of as one placeholder group per row. Times come from the
//! database's clock (`bus_now_ms()`, see the migration), never from the
//! caller's.

/// The LISTEN/NOTIFY channel; a notification's payload is a queue name.
macro_rules! channel {
    () => {
        "herald_bus"
    };
}

pub(super) const CHANNEL: &str = channel!();

/// Notifies listeners of queue `$1` when the statement changed a row: an
/// expression over a column `n` holding the count of changed rows. The
/// notification goes out when the transaction commits.
macro_rules! notify_if_changed {
    () => {
        concat!(
            "CASE WHEN n > 0 THEN (SELECT 1 FROM pg_notify('",
            channel!(),
            "', $1)) END"
        )
    };
}

/// Notifies listeners of each queue named in the text array `$1`.
pub(super) const NOTIFY_QUEUES: &str = concat!(
    "SELECT count(pg_notify('",
    channel!(),
    "', queue)) FROM unnest($1::TEXT[]) AS queue"
);

pub(super) const QUEUE_BY_NAME: &str = "SELECT id, max_receives, dead_letter_queue, \
     dedup_window_ms, max_body_bytes FROM bus_queues WHERE name = $1";

pub(super) const LIST_QUEUES: &str = "SELECT name, max_receives, dead_letter_queue, \
     dedup_window_ms, max_body_bytes FROM bus_queues ORDER BY name COLLATE \"C\"";

/// `$1` name, `$2` max_receives, `$3` dead_letter_queue, `$4`
/// dedup_window_ms, `$5` max_body_bytes.
pub(super) const UPSERT_QUEUE: &str = "INSERT INTO bus_queues \
     (name, max_receives, dead_letter_queue, dedup_window_ms, max_body_bytes, created_at) \
     VALUES ($1, $2, $3, $4, $5, bus_now_ms()) \
     ON CONFLICT (name) DO UPDATE SET max_receives = excluded.max_receives, \
         dead_letter_queue = excluded.dead_letter_queue, \
         dedup_window_ms = excluded.dedup_window_ms, \
         max_body_bytes = excluded.max_body_bytes";

/// Creates dead-letter queue `$1` unless it exists (`$2` dedup_window_ms,
/// `$3` max_body_bytes, both taken from the source queue). The id is read
/// by a second statement, whose snapshot also sees a queue that a
/// concurrent transaction created while this one waited on the name.
pub(super) const INSERT_DEAD_LETTER_QUEUE: &str = "INSERT INTO bus_queues \
     (name, max_receives, dead_letter_queue, dedup_window_ms, max_body_bytes, created_at) \
     VALUES ($1, 0, NULL, $2, $3, bus_now_ms()) ON CONFLICT (name) DO NOTHING";

pub(super) const QUEUE_ID: &str = "SELECT id FROM bus_queues WHERE name = $1";

/// Sends a batch of ungrouped messages in one statement, all or nothing: no
/// row is inserted unless queue `$1` exists and accepts the largest body
/// (`$2`). Per message, in the arrays: `$3` message_id, `$4` body, `$5`
/// attributes JSON (or NULL), `$6` delay in ms. Returns the queue's body
/// limit (NULL when there is no such queue) and how many rows went in.
pub(super) const SEND: &str = concat!(
    "WITH q AS (SELECT id, max_body_bytes, bus_now_ms() AS now FROM bus_queues WHERE name = $1), \
     ins AS ( \
         INSERT INTO bus_messages (queue_id, message_id, body, attributes, sent_at, ready_at, \
             lease_until, first_received_at, receipt) \
         SELECT q.id, u.message_id, u.body, u.attributes::JSONB, q.now, q.now + u.delay_ms, \
             q.now, q.now, bus_token() \
         FROM q CROSS JOIN unnest($3::TEXT[], $4::BYTEA[], $5::TEXT[], $6::BIGINT[]) \
             WITH ORDINALITY AS u (message_id, body, attributes, delay_ms, ord) \
         WHERE q.max_body_bytes >= $2 \
         ORDER BY u.ord \
         RETURNING 1) \
     SELECT (SELECT max_body_bytes FROM q), n, ",
    notify_if_changed!(),
    " FROM (SELECT count(*) AS n FROM ins) AS inserted"
);

/// Inserts messages into the queue with id `$1`, in array order; per message
/// `$2` message_id, `$3` body, `$4` attributes JSON, `$5` group_key, `$6`
/// delay in ms. For the transactional send path (dedup keys, groups, publish).
pub(super) const INSERT_MESSAGES: &str = "INSERT INTO bus_messages \
     (queue_id, message_id, body, attributes, group_key, sent_at, ready_at, \
      lease_until, first_received_at, receipt) \
     SELECT $1, u.message_id, u.body, u.attributes::JSONB, u.group_key, c.now, \
         c.now + u.delay_ms, c.now, c.now, bus_token() \
     FROM (SELECT bus_now_ms() AS now) AS c \
     CROSS JOIN unnest($2::TEXT[], $3::BYTEA[], $4::TEXT[], $5::TEXT[], $6::BIGINT[]) \
         WITH ORDINALITY AS u (message_id, body, attributes, group_key, delay_ms, ord) \
     ORDER BY u.ord";

/// Takes the group locks of the (queue id, group key) pairs in the arrays
/// `$1` and `$2`, in the one order every transaction uses.
pub(super) const LOCK_GROUPS: &str = "SELECT bus_lock_groups($1::BIGINT[], $2::TEXT[])";

/// Takes the group locks for moving the messages with seqs `$1` to the
/// queue with id `$2`: their groups in their queue and in the target.
pub(super) const LOCK_GROUPS_OF_MOVE: &str = "SELECT bus_lock_groups( \
         array_agg(queue_id) || array_agg($2::BIGINT), array_agg(group_key) || array_agg(group_key)) \
     FROM bus_messages WHERE seq = ANY($1::BIGINT[]) AND group_key IS NOT NULL";

/// Takes, in one go, the group locks of the (queue id, group key) pairs in
/// `$1` and `$2` and those of the messages with seqs `$3`: a commit's sends
/// and acks.
pub(super) const LOCK_GROUPS_OF_COMMIT: &str = "SELECT bus_lock_groups( \
         $1::BIGINT[] || COALESCE(array_agg(queue_id), '{}'), \
         $2::TEXT[] || COALESCE(array_agg(group_key), '{}')) \
     FROM bus_messages WHERE seq = ANY($3::BIGINT[]) AND group_key IS NOT NULL";

/// Takes the group locks of the messages with seqs `$1`.
pub(super) const LOCK_GROUPS_OF_SEQS: &str =
    "SELECT bus_lock_groups(array_agg(queue_id), array_agg(group_key)) \
     FROM bus_messages WHERE seq = ANY($1::BIGINT[]) AND group_key IS NOT NULL";

/// Takes the locks of every group in the queue with id `$1` and returns
/// their keys (NULL for none).
pub(super) const LOCK_GROUPS_OF_QUEUE: &str =
    "SELECT bus_lock_groups(array_agg(queue_id), array_agg(group_key)), array_agg(group_key) \
     FROM (SELECT DISTINCT queue_id, group_key FROM bus_messages \
           WHERE queue_id = $1 AND group_key IS NOT NULL) AS g";

/// Deletes the messages of queue `$1` that are ungrouped or in one of the
/// groups `$2` (the ones whose locks the transaction holds).
pub(super) const DELETE_LOCKED_MESSAGES: &str = "DELETE FROM bus_messages \
     WHERE queue_id = $1 AND (group_key IS NULL OR group_key = ANY($2::TEXT[]))";

/// Records dedup keys `$2` (with message ids `$3`) for queue `$1`, taking
/// over expired records, for `$4` ms; returns the keys it recorded. A key
/// with a live record is left alone and its row locked. Keys go in sorted
/// so that two batches never wait on each other's keys in a cycle.
pub(super) const CLAIM_DEDUP_KEYS: &str = "INSERT INTO bus_dedup \
     (queue_id, dedup_key, message_id, expires_at) \
     SELECT $1, k.dedup_key, k.message_id, bus_now_ms() + $4 \
     FROM unnest($2::TEXT[], $3::TEXT[]) AS k (dedup_key, message_id) \
     ORDER BY k.dedup_key \
     ON CONFLICT (queue_id, dedup_key) DO UPDATE \
     SET message_id = excluded.message_id, expires_at = excluded.expires_at \
     WHERE bus_dedup.expires_at <= bus_now_ms() \
     RETURNING dedup_key";

/// The message ids recorded for dedup keys `$2` of queue `$1`.
pub(super) const DEDUP_RECORDS: &str = "SELECT dedup_key, message_id FROM bus_dedup \
     WHERE queue_id = $1 AND dedup_key = ANY($2::TEXT[])";

/// Drops up to `$1` expired dedup records, skipping any another transaction
/// holds, so the table stays small without a sweeper.
pub(super) const PRUNE_DEDUP: &str = "DELETE FROM bus_dedup d USING ( \
         SELECT queue_id, dedup_key FROM bus_dedup WHERE expires_at <= bus_now_ms() \
         LIMIT $1 FOR UPDATE SKIP LOCKED) AS expired \
     WHERE d.queue_id = expired.queue_id AND d.dedup_key = expired.dedup_key";

/// Leases up to `$2` receivable messages of queue `$1` for `$3` ms (see
/// `bus_receive` in the migration for how, and for why its commit does not
/// wait for the WAL flush).
pub(super) const RECEIVE: &str = "SELECT seq, receipt, receive_count, first_received_at, \
     sent_at, max_receives, message_id, group_key, attributes, body \
     FROM bus_receive($1, $2, $3)";

/// Whether queue `$1` exists (its id, else NULL), and in how many ms its
/// next message becomes receivable if one waits for its delay or for a
/// lease to lapse. Early is harmless: the poll looks, then sleeps again.
pub(super) const NEXT_VISIBLE: &str = "SELECT q.id, LEAST( \
         (SELECT min(ready_at) FROM bus_messages \
          WHERE queue_id = q.id AND NOT held AND ready_at > bus_now_ms()), \
         (SELECT min(lease_until) FROM bus_messages \
          WHERE queue_id = q.id AND NOT held AND ready_at <= bus_now_ms() \
            AND lease_until > bus_now_ms()) \
     ) - bus_now_ms() \
     FROM (SELECT 1) AS one LEFT JOIN bus_queues q ON q.name = $1";

/// Deletes the messages of queue `$1` whose (seq, token) pairs are in the
/// arrays `$2` and `$3`; returns the pairs it deleted.
pub(super) const ACK: &str = "DELETE FROM bus_messages m \
     USING unnest($2::BIGINT[], $3::BIGINT[]) AS v (seq, token) \
     WHERE m.seq = v.seq AND m.receipt = v.token \
       AND m.queue_id = (SELECT id FROM bus_queues WHERE name = $1) \
     RETURNING m.seq, m.receipt";

/// Makes message `$2` of queue `$1`, leased with token `$3`, receivable
/// again in `$4` ms, under a fresh token no receipt holds. Returns the
/// queue's id (NULL when there is no such queue) and how many rows changed.
pub(super) const NACK: &str = concat!(
    "WITH q AS (SELECT id FROM bus_queues WHERE name = $1), \
     hit AS ( \
         UPDATE bus_messages SET ready_at = bus_now_ms() + $4, lease_until = bus_now_ms(), \
             receipt = bus_token() \
         WHERE seq = $2 AND receipt = $3 AND queue_id = (SELECT id FROM q) \
         RETURNING 1) \
     SELECT (SELECT id FROM q), n, ",
    notify_if_changed!(),
    " FROM (SELECT count(*) AS n FROM hit) AS changed"
);

/// Keeps message `$2` of queue `$1`, leased with token `$3`, invisible for
/// `$4` ms from now; returns as [`NACK`] does.
pub(super) const EXTEND: &str = "WITH q AS (SELECT id FROM bus_queues WHERE name = $1), \
     hit AS ( \
         UPDATE bus_messages SET lease_until = bus_now_ms() + $4 \
         WHERE seq = $2 AND receipt = $3 AND queue_id = (SELECT id FROM q) \
         RETURNING 1) \
     SELECT (SELECT id FROM q), (SELECT count(*) FROM hit)";

/// Locks, in seq order, the messages of queue `$3` still leased with the
/// (seq, token) pairs in `$1` and `$2`; returns their seqs.
pub(super) const LOCK_LEASED: &str = "SELECT m.seq FROM bus_messages m \
     JOIN unnest($1::BIGINT[], $2::BIGINT[]) AS v (seq, token) \
         ON m.seq = v.seq AND m.receipt = v.token \
     WHERE m.queue_id = $3 ORDER BY m.seq FOR UPDATE OF m";

/// The seqs of the oldest `$2` messages of queue `$1` (all when NULL).
pub(super) const OLDEST_SEQS: &str =
    "SELECT seq FROM bus_messages WHERE queue_id = $1 ORDER BY seq LIMIT $2";

/// Locks, in seq order, those of the messages `$1` still in queue `$2`;
/// returns their seqs.
pub(super) const LOCK_SEQS: &str = "SELECT seq FROM bus_messages \
     WHERE seq = ANY($1::BIGINT[]) AND queue_id = $2 ORDER BY seq FOR UPDATE";

/// Copies the messages `$3` to the back of queue `$1`, in their order; the
/// caller deletes the originals. `$2` dead-letter info JSON (or NULL), `$4`
/// true to keep the receive history (a dead-letter move) or false to start
/// over (a redrive).
pub(super) const COPY_MESSAGES: &str = "INSERT INTO bus_messages \
     (queue_id, message_id, body, attributes, group_key, sent_at, ready_at, \
      lease_until, receipt, receive_count, first_received_at, dead_letter) \
     SELECT $1, message_id, body, attributes, group_key, sent_at, bus_now_ms(), bus_now_ms(), \
         bus_token(), CASE WHEN $4 THEN receive_count - 1 ELSE 0 END, \
         CASE WHEN $4 THEN first_received_at ELSE bus_now_ms() END, $2::JSONB \
     FROM bus_messages WHERE seq = ANY($3::BIGINT[]) ORDER BY seq";

pub(super) const DELETE_SEQS: &str = "DELETE FROM bus_messages WHERE seq = ANY($1::BIGINT[])";

pub(super) const PEEK: &str = "SELECT message_id, body, attributes::TEXT AS attributes, \
         group_key, receive_count, sent_at, GREATEST(ready_at, lease_until) AS visible_at, \
         dead_letter::TEXT AS dead_letter \
     FROM bus_messages WHERE queue_id = $1 ORDER BY seq LIMIT $2";

/// Counts of queue `$1` by state, the oldest message's age in ms, and the
/// size of dead-letter queue `$2` (0 when NULL).
pub(super) const STATS: &str = "SELECT \
         count(*) FILTER (WHERE ready_at <= bus_now_ms() AND lease_until <= bus_now_ms()), \
         count(*) FILTER (WHERE lease_until > bus_now_ms()), \
         count(*) FILTER (WHERE ready_at > bus_now_ms() AND lease_until <= bus_now_ms()), \
         bus_now_ms() - min(sent_at), \
         (SELECT count(*) FROM bus_messages \
          WHERE queue_id = (SELECT id FROM bus_queues WHERE name = $2)) \
     FROM bus_messages WHERE queue_id = $1";

/// A topic's subscriptions as (queue name, filter JSON), by queue name.
pub(super) const TOPIC_SUBSCRIPTIONS: &str = "SELECT q.name, s.filter::TEXT \
     FROM bus_subscriptions s JOIN bus_queues q ON q.id = s.queue_id \
     WHERE s.topic = $1 ORDER BY q.name COLLATE \"C\"";
