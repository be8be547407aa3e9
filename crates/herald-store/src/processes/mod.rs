//! Processes: the scheduler's definitions, runs, each task's state in a run
//! and every attempt.
//!
//! Writes come from two sides. Operators (the API, process files) put
//! definitions, pause them, trigger and cancel runs, and tasks report their
//! own success; those writes need no lease. The active scheduler moves runs
//! and tasks along; each of its writes is *fenced*: it names the scheduler
//! lease and token it holds, and the write happens only if that lease is
//! still held under that token, checked in the same transaction, so a
//! leader that was paused and lost its lease cannot act after a takeover.
//! Task writes are also conditional on the state the writer last saw, so a
//! task's success reported through the API is never overwritten.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::schedule::{
    first_fire, ProcessDefinition, ProcessSpec, RunState, ScheduleSpec, TaskState,
};
use herald_core::{Clock, Timestamp};
use serde::Serialize;

use crate::page::{Page, PageRequest};
use crate::{Lease, StoreError};

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// The longest log tail kept per attempt, in bytes; longer ones keep their
/// end.
pub const MAX_LOG_TAIL_BYTES: usize = 64 * 1024;
/// The longest error message kept, in bytes.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;

/// Who wrote a definition last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionSource {
    Api,
    File,
}

impl DefinitionSource {
    fn as_str(self) -> &'static str {
        match self {
            DefinitionSource::Api => "api",
            DefinitionSource::File => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredProcess {
    pub name: String,
    pub spec: ProcessSpec,
    pub source: DefinitionSource,
    pub paused: bool,
    /// The next scheduled run, if any.
    pub next_fire_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub last_run_state: Option<RunState>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: String,
    pub process: String,
    /// The definition as it was when the run was created.
    pub spec: ProcessSpec,
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    pub state: RunState,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// The secret a task shows to report its own success; never serialized.
    #[serde(skip)]
    pub token: String,
}

/// One task's current state in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRun {
    pub run_id: String,
    pub task: String,
    pub state: TaskState,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    /// When the current attempt is stopped (its `max_runtime`).
    pub deadline_at: Option<Timestamp>,
    /// The fencing token of the scheduler that started the current attempt.
    pub leader_token: Option<i64>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
}

/// One attempt of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    pub state: TaskState,
    pub leader_token: i64,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub exit_status: Option<i64>,
    pub error: Option<String>,
    pub log_tail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    pub run: Run,
    pub tasks: Vec<TaskRun>,
    /// Oldest first, per task.
    pub attempts: Vec<Attempt>,
}

/// The lease a scheduler holds, shown with each of its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub token: i64,
}

impl From<&Lease> for Fence {
    fn from(lease: &Lease) -> Self {
        Fence {
            lease: lease.name.clone(),
            token: lease.token,
        }
    }
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced<T> {
    Done(T),
    /// The lease is no longer held under the token: nothing was written.
    LeaseLost,
}

/// A run the scheduler creates.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub process: String,
    pub spec: ProcessSpec,
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    /// `Running` to start at once, `Queued` to wait for the running one.
    pub state: RunState,
}

/// How a finished run changed its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedRun {
    /// The state of the process's previous finished run.
    pub previous: Option<RunState>,
    /// Failed runs in a row, this one included.
    pub consecutive_failures: u32,
}

#[async_trait]
pub trait ProcessStore: Send + Sync {
    /// Creates or replaces a definition; true when it is new. A new process,
    /// or one whose schedule changed, gets its first fire counted from now.
    async fn put(
        &self,
        definition: &ProcessDefinition,
        source: DefinitionSource,
    ) -> Result<(StoredProcess, bool), StoreError>;
    async fn get(&self, name: &str) -> Result<Option<StoredProcess>, StoreError>;
    /// Every process, by name.
    async fn list(&self) -> Result<Vec<StoredProcess>, StoreError>;
    /// Pauses or resumes; resuming counts the next fire from now, so the
    /// time spent paused fires nothing.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<StoredProcess, StoreError>;
    /// A manual run, queued for the scheduler to start.
    async fn trigger(&self, name: &str) -> Result<Run, StoreError>;
    /// Asks the scheduler to cancel a run; a queued run is cancelled at once.
    async fn request_cancel(&self, run_id: &str) -> Result<Run, StoreError>;
    /// A task's own report that it succeeded, with the run's token.
    async fn report_success(
        &self,
        run_id: &str,
        task: &str,
        token: &str,
    ) -> Result<TaskRun, StoreError>;
    async fn run(&self, id: &str) -> Result<Option<RunDetail>, StoreError>;
    /// A process's runs, newest first.
    async fn runs(&self, process: &str, page: PageRequest) -> Result<Page<Run>, StoreError>;
    /// Queued and running runs with their tasks (attempts left out), oldest
    /// first.
    async fn active_runs(&self) -> Result<Vec<RunDetail>, StoreError>;

    /// Creates a run with every task pending and sets the process's next
    /// fire. `Done(None)`: a run for that scheduled time exists already.
    async fn create_run(
        &self,
        fence: &Fence,
        run: &NewRun,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<Option<Run>>, StoreError>;
    /// Moves the process's next fire without creating a run (a skipped
    /// overlap).
    async fn set_next_fire(
        &self,
        fence: &Fence,
        process: &str,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<()>, StoreError>;
    /// Starts a queued run.
    async fn start_run(&self, fence: &Fence, run_id: &str) -> Result<Fenced<bool>, StoreError>;
    /// Writes a task's state if it is still `expected`, and the attempt
    /// (inserted or replaced) in the same transaction. `Done(false)`: the
    /// task moved meanwhile and nothing was written.
    async fn save_task(
        &self,
        fence: &Fence,
        expected: TaskState,
        task: &TaskRun,
        attempt: Option<&Attempt>,
    ) -> Result<Fenced<bool>, StoreError>;
    /// Ends a run and records it on its process; for a continuous process
    /// `next_fire_at` is its next start.
    async fn finish_run(
        &self,
        fence: &Fence,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<FinishedRun>, StoreError>;
    /// Deletes finished runs that ended before `before`; returns how many.
    async fn prune_runs(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The statements one dialect runs; [`Processes`] reads the clock, checks
/// input and makes ids and tokens.
#[async_trait]
pub(crate) trait ProcessSql: Send + Sync + 'static {
    async fn upsert(
        &self,
        name: &str,
        definition: &str,
        source: DefinitionSource,
        paused: bool,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn process(&self, name: &str) -> Result<Option<ProcessRow>, StoreError>;
    async fn processes(&self) -> Result<Vec<ProcessRow>, StoreError>;
    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Inserts a run and its pending tasks; with a fence, only while the
    /// lease holds and also setting the process's next fire. `Ok(None)`
    /// when the fence failed; `Ok(Some(false))` on a duplicate scheduled
    /// time.
    async fn insert_run(
        &self,
        fence: Option<&Fence>,
        run: &RunRow,
        tasks: &[String],
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError>;
    async fn set_next_fire(
        &self,
        fence: &Fence,
        process: &str,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn request_cancel(&self, run_id: &str, now: Timestamp) -> Result<bool, StoreError>;
    async fn report_success(
        &self,
        run_id: &str,
        task: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError>;
    async fn tasks(&self, run_ids: &[String]) -> Result<Vec<TaskRow>, StoreError>;
    async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRow>, StoreError>;
    async fn runs(
        &self,
        process: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError>;
    async fn active_runs(&self) -> Result<Vec<RunRow>, StoreError>;
    async fn start_run(
        &self,
        fence: &Fence,
        run_id: &str,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError>;
    async fn save_task(
        &self,
        fence: &Fence,
        expected: TaskState,
        task: &TaskRun,
        attempt: Option<&Attempt>,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError>;
    async fn finish_run(
        &self,
        fence: &Fence,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<FinishedRun>, StoreError>;
    async fn prune_runs(&self, before: Timestamp) -> Result<u64, StoreError>;
}

pub(crate) struct Processes<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: ProcessSql> Processes<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }

    async fn require(&self, name: &str) -> Result<StoredProcess, StoreError> {
        self.get(name).await?.ok_or_else(|| StoreError::NotFound {
            what: format!("process {name:?}"),
        })
    }

    async fn detail(&self, run: RunRow, with_attempts: bool) -> Result<RunDetail, StoreError> {
        let tasks = self.sql.tasks(std::slice::from_ref(&run.id)).await?;
        let attempts = if with_attempts {
            self.sql.attempts(&run.id).await?
        } else {
            Vec::new()
        };
        Ok(RunDetail {
            run: run.into_run()?,
            tasks: tasks
                .into_iter()
                .map(TaskRow::into_task)
                .collect::<Result<_, _>>()?,
            attempts: attempts
                .into_iter()
                .map(AttemptRow::into_attempt)
                .collect::<Result<_, _>>()?,
        })
    }
}

fn fenced<T>(outcome: Option<T>) -> Fenced<T> {
    outcome.map_or(Fenced::LeaseLost, Fenced::Done)
}

fn new_run_row(run: &NewRun, now: Timestamp) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: uuid::Uuid::now_v7().to_string(),
        process: run.process.clone(),
        definition: spec_json(&run.spec)?,
        trigger: run.trigger.as_str().to_owned(),
        scheduled_for: run.scheduled_for.map(Timestamp::millis),
        state: run.state.as_str().to_owned(),
        cancel_requested: false,
        token: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
        error: None,
        created_at: now.millis(),
        started_at: (run.state == RunState::Running).then_some(now.millis()),
        ended_at: None,
    })
}

fn spec_json(spec: &ProcessSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::InvalidInput {
        field: "definition",
        message: e.to_string(),
    })
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
pub fn keep_tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[async_trait]
impl<S: ProcessSql> ProcessStore for Processes<S> {
    async fn put(
        &self,
        definition: &ProcessDefinition,
        source: DefinitionSource,
    ) -> Result<(StoredProcess, bool), StoreError> {
        let name = definition.name.as_str();
        let now = self.clock.now();
        let existing = self.get(name).await?;
        let next_fire_at = match &existing {
            Some(old)
                if schedule_unchanged(&old.spec.schedule, &definition.spec.schedule)
                    && old.paused == definition.spec.paused =>
            {
                old.next_fire_at
            }
            _ => first_fire(&definition.schedule, now),
        };
        self.sql
            .upsert(
                name,
                &spec_json(&definition.spec)?,
                source,
                definition.spec.paused,
                next_fire_at,
                now,
            )
            .await?;
        Ok((self.require(name).await?, existing.is_none()))
    }

    async fn get(&self, name: &str) -> Result<Option<StoredProcess>, StoreError> {
        self.sql
            .process(name)
            .await?
            .map(ProcessRow::into_process)
            .transpose()
    }

    async fn list(&self) -> Result<Vec<StoredProcess>, StoreError> {
        self.sql
            .processes()
            .await?
            .into_iter()
            .map(ProcessRow::into_process)
            .collect()
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<StoredProcess, StoreError> {
        let process = self.require(name).await?;
        let now = self.clock.now();
        let definition =
            ProcessDefinition::parse(name, process.spec).map_err(|e| StoreError::Corrupt {
                backend: "store",
                what: "process definition",
                message: e.to_string(),
            })?;
        let next = if paused {
            process.next_fire_at
        } else {
            first_fire(&definition.schedule, now)
        };
        if !self.sql.set_paused(name, paused, next, now).await? {
            return Err(StoreError::NotFound {
                what: format!("process {name:?}"),
            });
        }
        self.require(name).await
    }

    async fn trigger(&self, name: &str) -> Result<Run, StoreError> {
        let process = self.require(name).await?;
        let now = self.clock.now();
        let tasks: Vec<String> = process.spec.tasks.iter().map(|t| t.name.clone()).collect();
        let row = new_run_row(
            &NewRun {
                process: process.name,
                spec: process.spec,
                trigger: Trigger::Manual,
                scheduled_for: None,
                state: RunState::Queued,
            },
            now,
        )?;
        let id = row.id.clone();
        self.sql.insert_run(None, &row, &tasks, None, now).await?;
        self.sql
            .run(&id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("run {id}"),
            })?
            .into_run()
    }

    async fn request_cancel(&self, run_id: &str) -> Result<Run, StoreError> {
        let run = self
            .sql
            .run(run_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("run {run_id}"),
            })?
            .into_run()?;
        if run.state.is_terminal() {
            return Err(StoreError::Conflict {
                what: format!("run {run_id} has already {}", run.state),
            });
        }
        self.sql.request_cancel(run_id, self.clock.now()).await?;
        self.sql
            .run(run_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("run {run_id}"),
            })?
            .into_run()
    }

    async fn report_success(
        &self,
        run_id: &str,
        task: &str,
        token: &str,
    ) -> Result<TaskRun, StoreError> {
        let not_found = || StoreError::NotFound {
            what: format!("task {task:?} of run {run_id}"),
        };
        let run = self.sql.run(run_id).await?.ok_or_else(not_found)?;
        // The same answer for a wrong token as for a missing run, so the
        // endpoint does not tell which runs exist.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            run.token.as_bytes(),
            token.as_bytes(),
        )) {
            return Err(not_found());
        }
        let run = run.into_run()?;
        let spec = run
            .spec
            .tasks
            .iter()
            .find(|t| t.name == task)
            .ok_or_else(not_found)?;
        if !spec.require_explicit_success {
            return Err(StoreError::Conflict {
                what: format!("task {task:?} does not report its own success"),
            });
        }
        if !self
            .sql
            .report_success(run_id, task, self.clock.now())
            .await?
        {
            let detail = self.detail(self.sql.run(run_id).await?.ok_or_else(not_found)?, false);
            let state = detail
                .await?
                .tasks
                .into_iter()
                .find(|t| t.task == task)
                .map(|t| t.state)
                .ok_or_else(not_found)?;
            return Err(StoreError::Conflict {
                what: format!("task {task:?} is {state}; only a running task can succeed"),
            });
        }
        self.detail(self.sql.run(run_id).await?.ok_or_else(not_found)?, false)
            .await?
            .tasks
            .into_iter()
            .find(|t| t.task == task)
            .ok_or_else(not_found)
    }

    async fn run(&self, id: &str) -> Result<Option<RunDetail>, StoreError> {
        match self.sql.run(id).await? {
            Some(row) => Ok(Some(self.detail(row, true).await?)),
            None => Ok(None),
        }
    }

    async fn runs(&self, process: &str, page: PageRequest) -> Result<Page<Run>, StoreError> {
        self.require(process).await?;
        let limit = page.effective_limit();
        let rows = self
            .sql
            .runs(process, page.after.as_deref(), limit + 1)
            .await?;
        let runs = rows
            .into_iter()
            .map(RunRow::into_run)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(runs, limit, |r| r.id.clone()))
    }

    async fn active_runs(&self) -> Result<Vec<RunDetail>, StoreError> {
        let runs = self.sql.active_runs().await?;
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let mut tasks = self.sql.tasks(&ids).await?;
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let (mine, rest): (Vec<TaskRow>, Vec<TaskRow>) =
                tasks.into_iter().partition(|t| t.run_id == run.id);
            tasks = rest;
            out.push(RunDetail {
                run: run.into_run()?,
                tasks: mine
                    .into_iter()
                    .map(TaskRow::into_task)
                    .collect::<Result<_, _>>()?,
                attempts: Vec::new(),
            });
        }
        Ok(out)
    }

    async fn create_run(
        &self,
        fence: &Fence,
        run: &NewRun,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<Option<Run>>, StoreError> {
        let now = self.clock.now();
        let row = new_run_row(run, now)?;
        let tasks: Vec<String> = run.spec.tasks.iter().map(|t| t.name.clone()).collect();
        match self
            .sql
            .insert_run(Some(fence), &row, &tasks, next_fire_at, now)
            .await?
        {
            None => Ok(Fenced::LeaseLost),
            Some(false) => Ok(Fenced::Done(None)),
            Some(true) => Ok(Fenced::Done(Some(row.into_run()?))),
        }
    }

    async fn set_next_fire(
        &self,
        fence: &Fence,
        process: &str,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<()>, StoreError> {
        let done = self
            .sql
            .set_next_fire(fence, process, next_fire_at, self.clock.now())
            .await?;
        Ok(fenced(done.then_some(())))
    }

    async fn start_run(&self, fence: &Fence, run_id: &str) -> Result<Fenced<bool>, StoreError> {
        Ok(fenced(
            self.sql.start_run(fence, run_id, self.clock.now()).await?,
        ))
    }

    async fn save_task(
        &self,
        fence: &Fence,
        expected: TaskState,
        task: &TaskRun,
        attempt: Option<&Attempt>,
    ) -> Result<Fenced<bool>, StoreError> {
        let trimmed = attempt.map(|a| Attempt {
            log_tail: keep_tail(&a.log_tail, MAX_LOG_TAIL_BYTES).to_owned(),
            error: a
                .error
                .as_deref()
                .map(|e| keep_tail(e, MAX_ERROR_BYTES).to_owned()),
            ..a.clone()
        });
        Ok(fenced(
            self.sql
                .save_task(fence, expected, task, trimmed.as_ref(), self.clock.now())
                .await?,
        ))
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        next_fire_at: Option<Timestamp>,
    ) -> Result<Fenced<FinishedRun>, StoreError> {
        let error = error.map(|e| keep_tail(e, MAX_ERROR_BYTES));
        Ok(fenced(
            self.sql
                .finish_run(fence, run_id, state, error, next_fire_at, self.clock.now())
                .await?,
        ))
    }

    async fn prune_runs(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.sql.prune_runs(before).await
    }
}

fn schedule_unchanged(old: &ScheduleSpec, new: &ScheduleSpec) -> bool {
    old == new
}

fn corrupt(what: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        backend: "store",
        what,
        message: message.to_string(),
    }
}

fn time(t: Option<i64>) -> Option<Timestamp> {
    t.map(Timestamp)
}

pub(crate) const PROCESS_COLUMNS: &str = "name, definition, source, paused, next_fire_at, \
     consecutive_failures, last_run_state, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ProcessRow {
    name: String,
    definition: String,
    source: String,
    paused: bool,
    next_fire_at: Option<i64>,
    consecutive_failures: i64,
    last_run_state: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl ProcessRow {
    fn into_process(self) -> Result<StoredProcess, StoreError> {
        Ok(StoredProcess {
            spec: serde_json::from_str(&self.definition)
                .map_err(|e| corrupt("process definition", e))?,
            source: match self.source.as_str() {
                "file" => DefinitionSource::File,
                _ => DefinitionSource::Api,
            },
            name: self.name,
            paused: self.paused,
            next_fire_at: time(self.next_fire_at),
            consecutive_failures: u32::try_from(self.consecutive_failures).unwrap_or(u32::MAX),
            last_run_state: self
                .last_run_state
                .map(|s| s.parse().map_err(|e| corrupt("run state", e)))
                .transpose()?,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

pub(crate) const RUN_COLUMNS: &str = "id, process, definition, trigger, scheduled_for, state, \
     cancel_requested, token, error, created_at, started_at, ended_at";

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct RunRow {
    pub id: String,
    pub process: String,
    pub definition: String,
    pub trigger: String,
    pub scheduled_for: Option<i64>,
    pub state: String,
    pub cancel_requested: bool,
    pub token: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

impl RunRow {
    fn into_run(self) -> Result<Run, StoreError> {
        Ok(Run {
            spec: serde_json::from_str(&self.definition)
                .map_err(|e| corrupt("run definition", e))?,
            trigger: match self.trigger.as_str() {
                "schedule" => Trigger::Schedule,
                _ => Trigger::Manual,
            },
            state: self.state.parse().map_err(|e| corrupt("run state", e))?,
            id: self.id,
            process: self.process,
            scheduled_for: time(self.scheduled_for),
            cancel_requested: self.cancel_requested,
            error: self.error,
            created_at: Timestamp(self.created_at),
            started_at: time(self.started_at),
            ended_at: time(self.ended_at),
            token: self.token,
        })
    }
}

pub(crate) const TASK_COLUMNS: &str = "run_id, task, state, attempts, next_attempt_at, \
     deadline_at, leader_token, started_at, ended_at";

#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    run_id: String,
    task: String,
    state: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    deadline_at: Option<i64>,
    leader_token: Option<i64>,
    started_at: Option<i64>,
    ended_at: Option<i64>,
}

impl TaskRow {
    fn into_task(self) -> Result<TaskRun, StoreError> {
        Ok(TaskRun {
            state: self.state.parse().map_err(|e| corrupt("task state", e))?,
            run_id: self.run_id,
            task: self.task,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at: time(self.next_attempt_at),
            deadline_at: time(self.deadline_at),
            leader_token: self.leader_token,
            started_at: time(self.started_at),
            ended_at: time(self.ended_at),
        })
    }
}

pub(crate) const ATTEMPT_COLUMNS: &str = "run_id, task, attempt, state, leader_token, \
     started_at, ended_at, exit_status, error, log_tail";

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    run_id: String,
    task: String,
    attempt: i64,
    state: String,
    leader_token: i64,
    started_at: i64,
    ended_at: Option<i64>,
    exit_status: Option<i64>,
    error: Option<String>,
    log_tail: String,
}

impl AttemptRow {
    fn into_attempt(self) -> Result<Attempt, StoreError> {
        Ok(Attempt {
            state: self
                .state
                .parse()
                .map_err(|e| corrupt("attempt state", e))?,
            run_id: self.run_id,
            task: self.task,
            attempt: u32::try_from(self.attempt).unwrap_or(u32::MAX),
            leader_token: self.leader_token,
            started_at: Timestamp(self.started_at),
            ended_at: time(self.ended_at),
            exit_status: self.exit_status,
            error: self.error,
            log_tail: self.log_tail,
        })
    }
}

/// The statements both dialects share, written with `$n` parameters (which
/// SQLite reads as numbered parameters too). What differs (how a write
/// transaction starts, how the fence row is locked) is in each dialect's
/// file.
pub(crate) mod statements {
    pub const UPSERT: &str =
        "INSERT INTO processes (name, definition, source, paused, next_fire_at, \
             consecutive_failures, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $6) \
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             source = excluded.source, paused = excluded.paused, \
             next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at";
    pub const SET_PAUSED: &str =
        "UPDATE processes SET paused = $2, next_fire_at = $3, updated_at = $4 WHERE name = $1";
    pub const SET_NEXT_FIRE: &str =
        "UPDATE processes SET next_fire_at = $2, updated_at = $3 WHERE name = $1";
    pub const INSERT_RUN: &str = "INSERT INTO process_runs (id, process, definition, trigger, \
             scheduled_for, state, cancel_requested, token, error, created_at, started_at, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT DO NOTHING";
    pub const INSERT_TASK: &str =
        "INSERT INTO process_run_tasks (run_id, task, state, attempts) VALUES ($1, $2, 'pending', 0)";
    /// Queued runs end at once; running ones are marked for the scheduler.
    pub const CANCEL_QUEUED: &str = "UPDATE process_runs SET state = 'cancelled', \
             cancel_requested = $3, ended_at = $2, error = 'cancelled before it started' \
         WHERE id = $1 AND state = 'queued'";
    pub const CANCEL_QUEUED_TASKS: &str = "UPDATE process_run_tasks SET state = 'cancelled', \
             ended_at = $2 WHERE run_id = $1 \
             AND (SELECT state FROM process_runs WHERE id = $1) = 'cancelled' \
             AND state = 'pending'";
    pub const CANCEL_RUNNING: &str =
        "UPDATE process_runs SET cancel_requested = $2 WHERE id = $1 AND state = 'running'";
    pub const REPORT_SUCCESS: &str = "UPDATE process_run_tasks SET state = 'succeeded', \
             ended_at = $3, next_attempt_at = NULL, deadline_at = NULL \
         WHERE run_id = $1 AND task = $2 AND state IN ('running', 'awaiting_success')";
    pub const REPORT_SUCCESS_ATTEMPT: &str =
        "UPDATE process_task_attempts SET state = 'succeeded', \
             ended_at = COALESCE(ended_at, $3) \
         WHERE run_id = $1 AND task = $2 \
           AND attempt = (SELECT attempts FROM process_run_tasks WHERE run_id = $1 AND task = $2)";
    pub const START_RUN: &str = "UPDATE process_runs SET state = 'running', started_at = $2 \
         WHERE id = $1 AND state = 'queued'";
    pub const SAVE_TASK: &str = "UPDATE process_run_tasks SET state = $4, attempts = $5, \
             next_attempt_at = $6, deadline_at = $7, leader_token = $8, started_at = $9, \
             ended_at = $10 \
         WHERE run_id = $1 AND task = $2 AND state = $3";
    pub const SAVE_ATTEMPT: &str =
        "INSERT INTO process_task_attempts (run_id, task, attempt, state, \
             leader_token, started_at, ended_at, exit_status, error, log_tail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (run_id, task, attempt) DO UPDATE SET state = excluded.state, \
             ended_at = excluded.ended_at, exit_status = excluded.exit_status, \
             error = excluded.error, log_tail = excluded.log_tail";
    pub const FINISH_RUN: &str = "UPDATE process_runs SET state = $2, error = $3, ended_at = $4 \
         WHERE id = $1 AND state IN ('queued', 'running') RETURNING process";
    pub const CANCEL_OPEN_TASKS: &str =
        "UPDATE process_run_tasks SET state = 'cancelled', ended_at = $2 \
         WHERE run_id = $1 AND state IN ('pending', 'retrying')";
    pub const PREVIOUS: &str =
        "SELECT last_run_state, consecutive_failures FROM processes WHERE name = $1";
    pub const RECORD_ON_PROCESS: &str = "UPDATE processes SET last_run_state = $2, \
             consecutive_failures = $3, next_fire_at = COALESCE($4, next_fire_at), updated_at = $5 \
         WHERE name = $1";
    pub const ACTIVE_RUNS: &str = "WHERE state IN ('queued', 'running') ORDER BY id";
    pub const PRUNE_RUNS: &str = "DELETE FROM process_runs \
         WHERE state IN ('succeeded', 'failed', 'cancelled') AND ended_at < $1";
}

/// Whether finishing in `state` counts as a failure in a row.
pub(crate) fn failures_after(previous_failures: i64, state: RunState) -> i64 {
    match state {
        RunState::Failed => previous_failures + 1,
        RunState::Succeeded => 0,
        _ => previous_failures,
    }
}
