-- Brand alerts and the send log. Times are milliseconds since the Unix epoch.

-- `build_cursor` is the last member id whose message the audience job has
-- enqueued: a restarted build goes on from there. `audience_size` is set when
-- the build finishes; `enqueued` and the excluded counts grow during it.
CREATE TABLE brand_alerts (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    subject               TEXT NOT NULL,
    template_id           TEXT NOT NULL REFERENCES templates (id),
    send_at               INTEGER NOT NULL,
    affinity_threshold    REAL NOT NULL,
    transport             TEXT,
    state                 TEXT NOT NULL,
    version               INTEGER NOT NULL DEFAULT 1,
    build_cursor          TEXT,
    audience_size         INTEGER,
    enqueued              INTEGER NOT NULL DEFAULT 0,
    excluded_unsubscribed INTEGER NOT NULL DEFAULT 0,
    excluded_suppressed   INTEGER NOT NULL DEFAULT 0,
    excluded_cadence      INTEGER NOT NULL DEFAULT 0,
    failure_reason        TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    build_started_at      INTEGER,
    build_finished_at     INTEGER,
    completed_at          INTEGER
) STRICT;

CREATE INDEX brand_alerts_by_state ON brand_alerts (state, send_at);

CREATE TABLE brand_alert_sales (
    alert_id TEXT NOT NULL REFERENCES brand_alerts (id) ON DELETE CASCADE,
    sale_id  TEXT NOT NULL REFERENCES sales (id),
    position INTEGER NOT NULL,
    PRIMARY KEY (alert_id, sale_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX brand_alert_sales_by_sale ON brand_alert_sales (sale_id);

-- One row per alert and member, claimed before a send and finished after:
-- what keeps sends to one per member. `claimed` rows carry the time their
-- claim lapses; a claim found lapsed was left by a process that died
-- mid-send, so the resend is flagged `possible_duplicate`.
-- state: claimed | released (transient failure, to retry) | sent | failed | skipped
CREATE TABLE send_log (
    alert_id            TEXT NOT NULL REFERENCES brand_alerts (id),
    member_id           TEXT NOT NULL,
    state               TEXT NOT NULL,
    claimed_at          INTEGER NOT NULL,
    claim_expires_at    INTEGER,
    attempts            INTEGER NOT NULL DEFAULT 1,
    possible_duplicate  INTEGER NOT NULL DEFAULT 0,
    finished_at         INTEGER,
    provider_message_id TEXT,
    reason              TEXT,
    PRIMARY KEY (alert_id, member_id)
) STRICT, WITHOUT ROWID;

-- The cadence check: a member's sends within the window.
CREATE INDEX send_log_by_member ON send_log (member_id, claimed_at);

-- Provider events per alert (delivered, open, click, bounce, ...), fed by the
-- inbound pipeline's stats subscriber.
CREATE TABLE alert_event_counts (
    alert_id   TEXT NOT NULL,
    event_type TEXT NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (alert_id, event_type)
) STRICT, WITHOUT ROWID;
