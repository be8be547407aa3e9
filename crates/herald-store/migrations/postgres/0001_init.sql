-- Herald store, SQLite. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS herald_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
