-- Provider delivery events (the webhook ingest), one row per provider event:
-- a provider's retried batch finds its events here and stores nothing twice.
-- Times are milliseconds since the Unix epoch.
--
-- `stats_counted_at` is set once by the statistics subscriber when it counts
-- the event for its brand alert, so a redelivered message is not counted
-- again.
CREATE TABLE email_events (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider          TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    address           TEXT NOT NULL,
    occurred_at       BIGINT NOT NULL,
    message_id        TEXT,
    alert_id          TEXT,
    bounce            TEXT,
    tags              JSONB NOT NULL,
    custom_args       JSONB NOT NULL,
    raw               JSONB NOT NULL,
    received_at       BIGINT NOT NULL,
    stats_counted_at  BIGINT,
    UNIQUE (provider, provider_event_id)
);

-- "Recent events for an address" (support, suppression checks).
CREATE INDEX email_events_by_address ON email_events (address, occurred_at);

-- "Recent events of a brand alert"; most events of other mail carry none.
CREATE INDEX email_events_by_alert ON email_events (alert_id, occurred_at)
    WHERE alert_id IS NOT NULL;
