-- The embedded bus's dedup records as one B-tree (herald-bus, embedded/dedup.rs):
-- a WITHOUT ROWID table keyed by (queue_id, dedup_key), with no expiry index
-- (expired records are found by a sweep in key order) and no foreign key
-- (delete_queue removes a queue's records itself). Each record then costs one
-- B-tree insert instead of three plus a parent-key probe.

CREATE TABLE bus_dedup_v2 (
    queue_id   INTEGER NOT NULL,
    dedup_key  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue_id, dedup_key)
) WITHOUT ROWID;

INSERT INTO bus_dedup_v2 (queue_id, dedup_key, message_id, expires_at)
SELECT queue_id, dedup_key, message_id, expires_at FROM bus_dedup;

-- Also drops bus_dedup_expiry.
DROP TABLE bus_dedup;

ALTER TABLE bus_dedup_v2 RENAME TO bus_dedup;
