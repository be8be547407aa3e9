-- The scheduler: process definitions, their runs, each task's state in a
-- run and every attempt. Times are milliseconds since the Unix epoch.

-- `definition` is the process spec as JSON; `source` says whether the API
-- or a process file wrote it last. `next_fire_at` is the next scheduled
-- time (NULL: manual only, or a continuous process whose run is going).
CREATE TABLE processes (
    name                 TEXT PRIMARY KEY,
    definition           TEXT NOT NULL,
    source               TEXT NOT NULL,
    paused               BOOLEAN NOT NULL,
    next_fire_at         BIGINT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_run_state       TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- A run keeps the definition it started with, so editing a process never
-- changes a run in flight. One run per process and scheduled time.
-- `token` is the secret a task shows to report its own success.
CREATE TABLE process_runs (
    id               TEXT PRIMARY KEY,
    process          TEXT NOT NULL REFERENCES processes (name) ON DELETE CASCADE,
    definition       TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    scheduled_for    BIGINT,
    state            TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    token            TEXT NOT NULL,
    error            TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    ended_at         BIGINT
);

CREATE UNIQUE INDEX process_runs_scheduled ON process_runs (process, scheduled_for)
    WHERE scheduled_for IS NOT NULL;
CREATE INDEX process_runs_by_process ON process_runs (process, id);
CREATE INDEX process_runs_active ON process_runs (state)
    WHERE state IN ('queued', 'running');

-- A task's current state in a run. `leader_token` is the fencing token of
-- the scheduler that started the current attempt.
CREATE TABLE process_run_tasks (
    run_id          TEXT NOT NULL REFERENCES process_runs (id) ON DELETE CASCADE,
    task            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    deadline_at     BIGINT,
    leader_token    BIGINT,
    started_at      BIGINT,
    ended_at        BIGINT,
    PRIMARY KEY (run_id, task)
);

-- Every attempt of every task, with its outcome and the tail of its log.
CREATE TABLE process_task_attempts (
    run_id       TEXT NOT NULL REFERENCES process_runs (id) ON DELETE CASCADE,
    task         TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    state        TEXT NOT NULL,
    leader_token BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    ended_at     BIGINT,
    exit_status  BIGINT,
    error        TEXT,
    log_tail     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, task, attempt)
);
