-- Catalog (brands, sales, templates) and audience data (members, affinities,
-- subscriptions, suppressions, the cadence policy). Times are milliseconds
-- since the Unix epoch.

-- Brand and member ids are the caller's own (catalog and CRM keys), so
-- imports can upsert by them; sale and template ids are Herald's.
CREATE TABLE brands (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE sales (
    id         TEXT PRIMARY KEY,
    brand_id   TEXT NOT NULL REFERENCES brands (id),
    headline   TEXT NOT NULL,
    url        TEXT NOT NULL,
    image      TEXT,
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX sales_by_brand ON sales (brand_id, starts_at);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    subject    TEXT NOT NULL,
    html       TEXT NOT NULL,
    text       TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- `email_normalized` (trimmed, lower-cased) is what suppressions match on.
-- `customer_id` is the key provider events are routed by; NULL means the
-- member id itself.
CREATE TABLE members (
    id               TEXT PRIMARY KEY,
    email            TEXT NOT NULL,
    email_normalized TEXT NOT NULL,
    name             TEXT,
    first_name       TEXT,
    locale           TEXT,
    time_zone        TEXT,
    status           TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    customer_id      TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX members_by_email ON members (email_normalized);

-- Keyed by member so the audience job streams candidates in member order
-- with one pass over the table; the brand index serves per-brand lookups.
CREATE TABLE affinities (
    member_id  TEXT NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    brand_id   TEXT NOT NULL REFERENCES brands (id) ON DELETE CASCADE,
    score      DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (member_id, brand_id)
);

CREATE INDEX affinities_by_brand ON affinities (brand_id, score);

-- No row for an email type means subscribed: members arrive from a CRM that
-- holds their consent; opting out is what gets recorded.
CREATE TABLE subscriptions (
    member_id  TEXT NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    email_type TEXT NOT NULL,
    subscribed BOOLEAN NOT NULL,
    source     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (member_id, email_type)
);

CREATE TABLE suppressions (
    address TEXT PRIMARY KEY,
    reason  TEXT NOT NULL,
    source  TEXT NOT NULL,
    detail  TEXT,
    since   BIGINT NOT NULL
);

CREATE TABLE cadence_policy (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    max_alerts  BIGINT NOT NULL CHECK (max_alerts >= 1),
    window_secs BIGINT NOT NULL CHECK (window_secs >= 1),
    updated_at  BIGINT NOT NULL
);

INSERT INTO cadence_policy (id, max_alerts, window_secs, updated_at) VALUES (1, 3, 604800, 0);
