-- The PostgreSQL bus (crate herald-bus, PostgresBus): queues, messages, dedup
-- records and topics beside the store's tables, in whatever schema the
-- connection's search_path names. Times are milliseconds since the Unix
-- epoch, read from the database's clock (bus_now_ms) so that processes on
-- machines whose clocks disagree still agree on delays and visibility.

-- now() is the transaction's start, so every row a transaction writes gets
-- the same time.
CREATE FUNCTION bus_now_ms() RETURNS BIGINT
LANGUAGE sql STABLE
AS $$ SELECT (extract(epoch FROM now()) * 1000)::BIGINT $$;

-- A fresh random delivery token (52 random bits); see bus_messages.receipt.
CREATE FUNCTION bus_token() RETURNS BIGINT
LANGUAGE sql VOLATILE
AS $$ SELECT ((random() - 0.5) * 1.8e19::FLOAT8)::BIGINT $$;

CREATE TABLE bus_queues (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    max_receives      BIGINT NOT NULL,
    -- As configured; NULL with max_receives > 0 means '<name>.dlq'.
    dead_letter_queue TEXT,
    dedup_window_ms   BIGINT NOT NULL,
    max_body_bytes    BIGINT NOT NULL,
    created_at        BIGINT NOT NULL
);

-- seq orders messages: new rows, redriven ones and dead letters all go to the
-- back. queue_id has no foreign key on purpose: checking it locks the queue's
-- row for every insert, and delete_queue removes the rows itself.
--
-- A message can be received once ready_at and lease_until have both passed
-- (and it is not held). A delivery only rewrites lease_until, receipt,
-- receive_count and first_received_at, none of them indexed, and the fill
-- factor keeps half of each page free, so every message of a page can be
-- leased in place: a HOT update that touches no index. Messages come and go,
-- so the table stays small; a fuller page made most leases rewrite three
-- indexes and halved receive throughput.
CREATE TABLE bus_messages (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id          BIGINT NOT NULL,
    message_id        TEXT NOT NULL,
    body              BYTEA NOT NULL,
    -- JSON object, NULL when there are none.
    attributes        JSONB,
    group_key         TEXT,
    -- True for a grouped message that is not the oldest of its group in its
    -- queue: only a group's head may be received. Kept by the triggers below.
    held              BOOLEAN NOT NULL DEFAULT false,
    sent_at           BIGINT NOT NULL,
    -- End of the send delay, or of a nack's delay.
    ready_at          BIGINT NOT NULL,
    -- End of the current delivery's visibility; in the past when not leased.
    lease_until       BIGINT NOT NULL,
    -- Random token of the current delivery. A nack replaces it with a fresh
    -- token never handed out, so no receipt matches any more.
    receipt           BIGINT NOT NULL,
    receive_count     BIGINT NOT NULL DEFAULT 0,
    -- Meaningful once receive_count > 0.
    first_received_at BIGINT NOT NULL,
    -- DeadLetterInfo for a message moved to a dead-letter queue.
    dead_letter       JSONB
) WITH (fillfactor = 50);

-- Serves receive (queue, ready_at, seq over receivable heads) and the wake-up
-- time of long polls.
CREATE INDEX bus_messages_ready ON bus_messages (queue_id, ready_at, seq) WHERE NOT held;

-- Serves peek, redrive, purge and stats: every message of a queue, by seq.
CREATE INDEX bus_messages_queue ON bus_messages (queue_id, seq);

CREATE INDEX bus_messages_group ON bus_messages (queue_id, group_key, seq)
    WHERE group_key IS NOT NULL;

-- Grouped messages: every transaction that adds a message to a group or takes
-- one out holds the group's lock until it commits, so the held flags of a
-- group are only ever computed from its committed state. A transaction that
-- touches several groups takes their locks up front, in lock-key order
-- (bus_lock_groups), so two of them never wait on each other in a cycle; the
-- triggers' own calls are then re-entrant no-ops.
CREATE FUNCTION bus_lock_group(queue_id BIGINT, group_key TEXT) RETURNS VOID
LANGUAGE sql VOLATILE
AS $$ SELECT pg_advisory_xact_lock((queue_id % 2147483648)::INTEGER, hashtext(group_key)) $$;

-- Returns how many locks it took.
CREATE FUNCTION bus_lock_groups(queue_ids BIGINT[], group_keys TEXT[]) RETURNS INTEGER
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    lock_key RECORD;
    taken    INTEGER := 0;
BEGIN
    FOR lock_key IN
        SELECT DISTINCT (t.queue_id % 2147483648)::INTEGER AS space, hashtext(t.group_key) AS id
        FROM unnest(queue_ids, group_keys) AS t (queue_id, group_key)
        WHERE t.group_key IS NOT NULL
        ORDER BY 1, 2
    LOOP
        PERFORM pg_advisory_xact_lock(lock_key.space, lock_key.id);
        taken := taken + 1;
    END LOOP;
    RETURN taken;
END
$$;

-- A new grouped message is held when another message of its group is already
-- in the queue. Each statement of a trigger function sees the latest committed
-- state, and the lock makes that state final for this group.
CREATE FUNCTION bus_messages_hold() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM bus_lock_group(NEW.queue_id, NEW.group_key);
    NEW.held := EXISTS (
        SELECT 1 FROM bus_messages o
        WHERE o.queue_id = NEW.queue_id AND o.group_key = NEW.group_key
    );
    RETURN NEW;
END
$$;

CREATE TRIGGER bus_messages_group_insert BEFORE INSERT ON bus_messages
FOR EACH ROW WHEN (NEW.group_key IS NOT NULL)
EXECUTE FUNCTION bus_messages_hold();

-- When a group's head leaves its queue (ack, purge, dead letter, redrive), the
-- next message of the group becomes the head.
CREATE FUNCTION bus_messages_release() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM bus_lock_group(OLD.queue_id, OLD.group_key);
    UPDATE bus_messages SET held = false
    WHERE seq = (
        SELECT min(seq) FROM bus_messages
        WHERE queue_id = OLD.queue_id AND group_key = OLD.group_key
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER bus_messages_group_delete AFTER DELETE ON bus_messages
FOR EACH ROW WHEN (OLD.group_key IS NOT NULL AND NOT OLD.held)
EXECUTE FUNCTION bus_messages_release();

-- Leases up to max_count receivable messages of a queue for visibility_ms;
-- returns them with the queue's max_receives, so that messages past it can be
-- moved to the dead-letter queue. Rows another receiver is leasing right now
-- are skipped, not waited for, so any number of receivers in any number of
-- processes share a queue.
--
-- The lease commits asynchronously (synchronous_commit off for the calling
-- transaction only): a lease lost to a database crash makes the message
-- receivable again, which at-least-once delivery allows, and it spares every
-- receive a WAL flush. Acks, sends and moves still wait for theirs.
--
-- Sorting is off while planning: statistics that have not caught up with a
-- queue's backlog (a new table, or one queue filling up while the others
-- dominate the sample) make sorting every receivable message look cheaper
-- than reading the first few from the index in order, and it never is.
CREATE FUNCTION bus_receive(queue_name TEXT, max_count BIGINT, visibility_ms BIGINT)
RETURNS TABLE (
    seq               BIGINT,
    receipt           BIGINT,
    receive_count     BIGINT,
    first_received_at BIGINT,
    sent_at           BIGINT,
    max_receives      BIGINT,
    message_id        TEXT,
    group_key         TEXT,
    attributes        TEXT,
    body              BYTEA
)
LANGUAGE plpgsql VOLATILE
SET enable_sort = off
AS $$
#variable_conflict use_column
DECLARE
    leased_queue BIGINT;
    queue_max    BIGINT;
    now_ms       BIGINT := bus_now_ms();
BEGIN
    SELECT q.id, q.max_receives INTO leased_queue, queue_max
    FROM bus_queues q WHERE q.name = queue_name;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH picked AS (
        SELECT m.seq FROM bus_messages m
        WHERE m.queue_id = leased_queue AND NOT m.held
          AND m.ready_at <= now_ms AND m.lease_until <= now_ms
        ORDER BY m.ready_at, m.seq
        LIMIT max_count
        FOR UPDATE SKIP LOCKED)
    UPDATE bus_messages m
    SET receipt = bus_token(), lease_until = now_ms + visibility_ms,
        receive_count = m.receive_count + 1,
        first_received_at = CASE m.receive_count WHEN 0 THEN now_ms ELSE m.first_received_at END
    FROM picked WHERE m.seq = picked.seq
    RETURNING m.seq, m.receipt, m.receive_count, m.first_received_at, m.sent_at, queue_max,
        m.message_id, m.group_key, m.attributes::TEXT, m.body;
END
$$;

-- A dedup record outlives its message: a resend within the window returns the
-- first id even after that message was acked.
CREATE TABLE bus_dedup (
    queue_id   BIGINT NOT NULL REFERENCES bus_queues (id) ON DELETE CASCADE,
    dedup_key  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (queue_id, dedup_key)
);

CREATE INDEX bus_dedup_expiry ON bus_dedup (expires_at);

CREATE TABLE bus_topics (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE bus_subscriptions (
    topic    TEXT NOT NULL REFERENCES bus_topics (name) ON DELETE CASCADE,
    queue_id BIGINT NOT NULL REFERENCES bus_queues (id) ON DELETE CASCADE,
    -- FilterPolicy.
    filter   JSONB NOT NULL,
    PRIMARY KEY (topic, queue_id)
);

CREATE INDEX bus_subscriptions_queue ON bus_subscriptions (queue_id);
