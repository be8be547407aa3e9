-- The embedded bus (crate herald-bus): queues, messages, dedup records and
-- topics in the store's SQLite file. Times are milliseconds since the Unix
-- epoch.

CREATE TABLE bus_queues (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    max_receives      INTEGER NOT NULL,
    -- As configured; NULL with max_receives > 0 means '<name>.dlq'.
    dead_letter_queue TEXT,
    dedup_window_ms   INTEGER NOT NULL,
    max_body_bytes    INTEGER NOT NULL,
    created_at        INTEGER NOT NULL
);

-- seq orders messages: new rows, redriven ones and dead letters all go to the
-- back. queue_id has no foreign key on purpose: checking it on every insert
-- costs throughput, and delete_queue removes the rows itself.
--
-- A message can be received once ready_at and lease_until have both passed
-- (and it is not held). A delivery only rewrites lease_until, receipt,
-- receive_count and first_received_at, none of them indexed, and rows are
-- inserted with same-sized placeholders in those columns, so SQLite
-- overwrites the row in place and a lease costs no index work. The price:
-- receive steps over messages leased at the front of a queue, which stay few
-- while consumers ack what they receive.
CREATE TABLE bus_messages (
    seq               INTEGER PRIMARY KEY,
    queue_id          INTEGER NOT NULL,
    message_id        TEXT NOT NULL,
    body              BLOB NOT NULL,
    -- JSON object, NULL when there are none.
    attributes        TEXT,
    group_key         TEXT,
    -- 1 for a grouped message that is not the oldest of its group in its
    -- queue: only a group's head may be received. Kept by the triggers below.
    held              INTEGER NOT NULL DEFAULT 0,
    sent_at           INTEGER NOT NULL,
    -- End of the send delay, or of a nack's delay.
    ready_at          INTEGER NOT NULL,
    -- End of the current delivery's visibility; in the past when not leased.
    lease_until       INTEGER NOT NULL,
    -- Random token of the current delivery. A nack replaces it with a fresh
    -- token never handed out, so no receipt matches any more.
    receipt           INTEGER NOT NULL,
    receive_count     INTEGER NOT NULL DEFAULT 0,
    -- Meaningful once receive_count > 0.
    first_received_at INTEGER NOT NULL,
    -- JSON DeadLetterInfo for a message moved to a dead-letter queue.
    dead_letter       TEXT
);

-- Serves receive (queue, held = 0, ready_at, then seq as the implicit rowid),
-- the wake-up time of long polls, and per-queue scans.
CREATE INDEX bus_messages_ready ON bus_messages (queue_id, held, ready_at);

CREATE INDEX bus_messages_group ON bus_messages (queue_id, group_key)
    WHERE group_key IS NOT NULL;

-- A new grouped message is held when an older message of its group is
-- already in the queue.
CREATE TRIGGER bus_messages_group_insert AFTER INSERT ON bus_messages
WHEN NEW.group_key IS NOT NULL
BEGIN
    UPDATE bus_messages SET held = 1
    WHERE seq = NEW.seq
      AND EXISTS (
          SELECT 1 FROM bus_messages o
          WHERE o.queue_id = NEW.queue_id
            AND o.group_key = NEW.group_key
            AND o.seq < NEW.seq
      );
END;

-- When a group's head leaves its queue (ack, purge, dead letter, redrive),
-- the next message of the group becomes the head.
CREATE TRIGGER bus_messages_group_delete AFTER DELETE ON bus_messages
WHEN OLD.group_key IS NOT NULL AND OLD.held = 0
BEGIN
    UPDATE bus_messages SET held = 0
    WHERE seq = (
        SELECT MIN(seq) FROM bus_messages
        WHERE queue_id = OLD.queue_id AND group_key = OLD.group_key
    );
END;

-- A dedup record outlives its message: a resend within the window returns
-- the first id even after that message was acked.
CREATE TABLE bus_dedup (
    queue_id   INTEGER NOT NULL REFERENCES bus_queues (id) ON DELETE CASCADE,
    dedup_key  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue_id, dedup_key)
);

CREATE INDEX bus_dedup_expiry ON bus_dedup (expires_at);

CREATE TABLE bus_topics (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE bus_subscriptions (
    topic    TEXT NOT NULL REFERENCES bus_topics (name) ON DELETE CASCADE,
    queue_id INTEGER NOT NULL REFERENCES bus_queues (id) ON DELETE CASCADE,
    -- JSON FilterPolicy.
    filter   TEXT NOT NULL,
    PRIMARY KEY (topic, queue_id)
);

CREATE INDEX bus_subscriptions_queue ON bus_subscriptions (queue_id);
