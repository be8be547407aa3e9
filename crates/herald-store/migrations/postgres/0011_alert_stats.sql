-- Pre-aggregated brand alert statistics: an alert's page and its stats read
-- a handful of rows instead of counting its send log and grouping its email
-- events on every view. Times are milliseconds since the Unix epoch.

-- Finished send-log rows and flagged resends per alert, changed in the same
-- transaction as the rows they count (one statement per claim, confirm or
-- failure batch, never one per message). Pruning the send log leaves them.
CREATE TABLE alert_send_counts (
    alert_id            TEXT PRIMARY KEY,
    sent                BIGINT NOT NULL DEFAULT 0,
    failed              BIGINT NOT NULL DEFAULT 0,
    skipped             BIGINT NOT NULL DEFAULT 0,
    possible_duplicates BIGINT NOT NULL DEFAULT 0
);

INSERT INTO alert_send_counts (alert_id, sent, failed, skipped, possible_duplicates)
SELECT alert_id, count(*) FILTER (WHERE state = 'sent'),
       count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'skipped'),
       count(*) FILTER (WHERE possible_duplicate)
FROM send_log
GROUP BY alert_id;

-- The span of an alert's counted events, which picks the chart's bucket.
ALTER TABLE alert_event_counts ADD COLUMN first_occurred_at BIGINT;
ALTER TABLE alert_event_counts ADD COLUMN last_occurred_at BIGINT;

-- Counted events per alert, type and time bucket of their occurrence, by
-- the minute (width 60000) and by the hour (width 3600000): a chart by the
-- minute spans at most two hours, by the day it sums the hours. Written with
-- alert_event_counts when the stats subscriber counts an event, once.
CREATE TABLE alert_event_buckets (
    alert_id     TEXT NOT NULL,
    width        BIGINT NOT NULL,
    bucket_start BIGINT NOT NULL,
    event_type   TEXT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (alert_id, width, bucket_start, event_type)
);

-- The events counted before this migration, as far as they are still stored.
UPDATE alert_event_counts
SET first_occurred_at = s.first_at, last_occurred_at = s.last_at
FROM (SELECT alert_id, event_type, min(occurred_at) AS first_at, max(occurred_at) AS last_at
      FROM email_events
      WHERE alert_id IS NOT NULL AND stats_counted_at IS NOT NULL
      GROUP BY alert_id, event_type) AS s
WHERE s.alert_id = alert_event_counts.alert_id AND s.event_type = alert_event_counts.event_type;

INSERT INTO alert_event_buckets (alert_id, width, bucket_start, event_type, count)
SELECT e.alert_id, w.width,
       e.occurred_at - ((e.occurred_at % w.width) + w.width) % w.width AS bucket_start,
       e.event_type, count(*)
FROM email_events AS e
CROSS JOIN (VALUES (60000::bigint), (3600000::bigint)) AS w (width)
WHERE e.alert_id IS NOT NULL AND e.stats_counted_at IS NOT NULL
  AND EXISTS (SELECT 1 FROM brand_alerts AS a WHERE a.id = e.alert_id)
GROUP BY e.alert_id, w.width, bucket_start, e.event_type;
