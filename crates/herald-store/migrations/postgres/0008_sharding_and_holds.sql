-- Sharding events, customer placements, known shards and migration holds.
-- Times are milliseconds since the Unix epoch.

-- The append-only log of accepted sharding events. `outcome` is `applied`
-- (the event moved the placement) or `superseded` (it happened before the
-- customer's latest applied event, so it changed nothing); `placement_*` is
-- the customer's placement right after the event was recorded, so a
-- repeated id answers with the original outcome.
CREATE TABLE sharding_events (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    customer         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    shard            TEXT,
    from_shard       TEXT,
    to_shard         TEXT,
    occurred_at      BIGINT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    outcome          TEXT NOT NULL,
    placement_state  TEXT NOT NULL,
    placement_shard  TEXT,
    placement_from   TEXT,
    placement_to     TEXT,
    release_to       TEXT
);

CREATE INDEX sharding_events_by_customer ON sharding_events (customer, seq);

-- Where each customer lives now; no row means unknown. `shard` is set when
-- stable, `from_shard` and `to_shard` while migrating.
CREATE TABLE customer_placements (
    customer         TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    shard            TEXT,
    from_shard       TEXT,
    to_shard         TEXT,
    last_event_id    TEXT NOT NULL,
    last_occurred_at BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX customer_placements_migrating ON customer_placements (customer)
    WHERE state = 'migrating';

-- Every shard a sharding event has named; broadcast routes send to each.
CREATE TABLE shards (
    id            TEXT PRIMARY KEY,
    first_seen_at BIGINT NOT NULL
);

-- Events of migrating customers, parked per route and customer in arrival
-- order (`seq`) until the migration ends. `message_id` is the event's id on
-- the route's queue: a redelivered message is parked once.
CREATE TABLE holds (
    seq        BIGSERIAL PRIMARY KEY,
    route      TEXT NOT NULL,
    customer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body       BYTEA NOT NULL,
    attributes TEXT NOT NULL,
    held_at    BIGINT NOT NULL,
    UNIQUE (route, message_id)
);

CREATE INDEX holds_by_customer ON holds (route, customer, seq);
CREATE INDEX holds_by_age ON holds (held_at);
