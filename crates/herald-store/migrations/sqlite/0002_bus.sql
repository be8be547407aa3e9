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
    visible_at        INTEGER NOT NULL,
    receive_count     INTEGER NOT NULL DEFAULT 0,
    first_received_at INTEGER,
    -- Random token of the current delivery; NULL when not received, or
    -- nacked since.
    receipt           INTEGER,
    -- JSON DeadLetterInfo for a message moved to a dead-letter queue.
    dead_letter       TEXT
);

-- One index serves receive (queue, held = 0, visible_at, then seq as the
-- implicit rowid), the wake-up time of long polls, and per-queue scans.
CREATE INDEX bus_messages_ready ON bus_messages (queue_id, held, visible_at);

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
