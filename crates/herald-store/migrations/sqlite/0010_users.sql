-- Web UI users, their sessions and sign-in attempts. Times are milliseconds
-- since the Unix epoch.

-- password_hash is an Argon2id PHC string; the password itself is never kept.
CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    email            TEXT NOT NULL,
    email_normalized TEXT NOT NULL UNIQUE,
    role             TEXT NOT NULL,
    password_hash    TEXT NOT NULL,
    time_zone        TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;

-- Only the SHA-256 of a session token is kept, so a copy of the database
-- cannot be used to sign in. csrf_token is the synchronizer token every
-- form of the session carries.
CREATE TABLE user_sessions (
    token_hash  BLOB PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX user_sessions_expiry ON user_sessions (expires_at);

-- One row per sign-in attempt not (yet) followed by a success for the same
-- address; enough of them within the lock-out window lock the address.
CREATE TABLE user_sign_in_attempts (
    id               TEXT PRIMARY KEY,
    email_normalized TEXT NOT NULL,
    attempted_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX user_sign_in_attempts_by_email ON user_sign_in_attempts (email_normalized, attempted_at);
