use async_trait::async_trait;
use herald_core::schedule::{RunState, TaskState};
use herald_core::Timestamp;
use sqlx::{Sqlite, Transaction};

use super::statements as sql;
use super::{
    failures_after, Attempt, AttemptRow, DefinitionSource, Fence, FinishedRun, ProcessRow,
    ProcessSql, RunRow, TaskRow, TaskRun, ATTEMPT_COLUMNS, PROCESS_COLUMNS, RUN_COLUMNS,
    TASK_COLUMNS,
};
use crate::{SqliteDb, StoreError};

/// Multi-statement writes run in a `BEGIN IMMEDIATE` transaction: it takes
/// SQLite's write lock first, so the fence check and the writes cannot
/// interleave with a takeover by another process.
pub(crate) struct SqliteProcessSql(pub SqliteDb);

fn failed(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

type Tx = Transaction<'static, Sqlite>;

impl SqliteProcessSql {
    async fn begin(&self) -> Result<Tx, StoreError> {
        self.0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(failed("begin a scheduler write"))
    }

    async fn holds(tx: &mut Tx, fence: &Fence, now: Timestamp) -> Result<bool, StoreError> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT token FROM leases WHERE name = $1 AND token = $2 AND expires_at > $3",
        )
        .bind(&fence.lease)
        .bind(fence.token)
        .bind(now.millis())
        .fetch_optional(&mut **tx)
        .await
        .map_err(failed("check the scheduler lease"))?;
        Ok(held.is_some())
    }
}

#[async_trait]
impl ProcessSql for SqliteProcessSql {
    async fn upsert(
        &self,
        name: &str,
        definition: &str,
        source: DefinitionSource,
        paused: bool,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::UPSERT)
            .bind(name)
            .bind(definition)
            .bind(source.as_str())
            .bind(paused)
            .bind(next_fire_at.map(Timestamp::millis))
            .bind(now.millis())
            .execute(&self.0.writer)
            .await
            .map_err(failed("save process"))?;
        Ok(())
    }

    async fn process(&self, name: &str) -> Result<Option<ProcessRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {PROCESS_COLUMNS} FROM processes WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(failed("read process"))
    }

    async fn processes(&self) -> Result<Vec<ProcessRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {PROCESS_COLUMNS} FROM processes ORDER BY name"
        ))
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("list processes"))
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::SET_PAUSED)
            .bind(name)
            .bind(paused)
            .bind(next_fire_at.map(Timestamp::millis))
            .bind(now.millis())
            .execute(&self.0.writer)
            .await
            .map_err(failed("pause process"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_run(
        &self,
        fence: Option<&Fence>,
        run: &RunRow,
        tasks: &[String],
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(fence) = fence {
            if !Self::holds(&mut tx, fence, now).await? {
                return Ok(None);
            }
            sqlx::query(sql::SET_NEXT_FIRE)
                .bind(&run.process)
                .bind(next_fire_at.map(Timestamp::millis))
                .bind(now.millis())
                .execute(&mut *tx)
                .await
                .map_err(failed("set next fire"))?;
        }
        let inserted = sqlx::query(sql::INSERT_RUN)
            .bind(&run.id)
            .bind(&run.process)
            .bind(&run.definition)
            .bind(&run.trigger)
            .bind(run.scheduled_for)
            .bind(&run.state)
            .bind(run.cancel_requested)
            .bind(&run.token)
            .bind(&run.error)
            .bind(run.created_at)
            .bind(run.started_at)
            .bind(run.ended_at)
            .execute(&mut *tx)
            .await
            .map_err(failed("create run"))?
            .rows_affected()
            == 1;
        if inserted {
            for task in tasks {
                sqlx::query(sql::INSERT_TASK)
                    .bind(&run.id)
                    .bind(task)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed("create run task"))?;
            }
        }
        tx.commit().await.map_err(failed("create run"))?;
        Ok(Some(inserted))
    }

    async fn set_next_fire(
        &self,
        fence: &Fence,
        process: &str,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !Self::holds(&mut tx, fence, now).await? {
            return Ok(false);
        }
        sqlx::query(sql::SET_NEXT_FIRE)
            .bind(process)
            .bind(next_fire_at.map(Timestamp::millis))
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("set next fire"))?;
        tx.commit().await.map_err(failed("set next fire"))?;
        Ok(true)
    }

    async fn request_cancel(&self, run_id: &str, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let queued = sqlx::query(sql::CANCEL_QUEUED)
            .bind(run_id)
            .bind(now.millis())
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(failed("cancel run"))?
            .rows_affected();
        sqlx::query(sql::CANCEL_QUEUED_TASKS)
            .bind(run_id)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("cancel run"))?;
        let running = sqlx::query(sql::CANCEL_RUNNING)
            .bind(run_id)
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(failed("cancel run"))?
            .rows_affected();
        tx.commit().await.map_err(failed("cancel run"))?;
        Ok(queued + running > 0)
    }

    async fn report_success(
        &self,
        run_id: &str,
        task: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(sql::REPORT_SUCCESS)
            .bind(run_id)
            .bind(task)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("report success"))?
            .rows_affected()
            == 1;
        if changed {
            sqlx::query(sql::REPORT_SUCCESS_ATTEMPT)
                .bind(run_id)
                .bind(task)
                .bind(now.millis())
                .execute(&mut *tx)
                .await
                .map_err(failed("report success"))?;
        }
        tx.commit().await.map_err(failed("report success"))?;
        Ok(changed)
    }

    async fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM process_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(failed("read run"))
    }

    async fn tasks(&self, run_ids: &[String]) -> Result<Vec<TaskRow>, StoreError> {
        let mut out = Vec::new();
        for id in run_ids {
            let rows: Vec<TaskRow> = sqlx::query_as(&format!(
                "SELECT {TASK_COLUMNS} FROM process_run_tasks WHERE run_id = $1 ORDER BY task"
            ))
            .bind(id)
            .fetch_all(&self.0.reader)
            .await
            .map_err(failed("read run tasks"))?;
            out.extend(rows);
        }
        Ok(out)
    }

    async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM process_task_attempts WHERE run_id = $1 \
             ORDER BY task, attempt"
        ))
        .bind(run_id)
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("read attempts"))
    }

    async fn runs(
        &self,
        process: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM process_runs WHERE process = $1 \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(process)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("list runs"))
    }

    async fn active_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM process_runs {}",
            sql::ACTIVE_RUNS
        ))
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("list active runs"))
    }

    async fn start_run(
        &self,
        fence: &Fence,
        run_id: &str,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.begin().await?;
        if !Self::holds(&mut tx, fence, now).await? {
            return Ok(None);
        }
        let started = sqlx::query(sql::START_RUN)
            .bind(run_id)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("start run"))?
            .rows_affected()
            == 1;
        tx.commit().await.map_err(failed("start run"))?;
        Ok(Some(started))
    }

    async fn save_task(
        &self,
        fence: &Fence,
        expected: TaskState,
        task: &TaskRun,
        attempt: Option<&Attempt>,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.begin().await?;
        if !Self::holds(&mut tx, fence, now).await? {
            return Ok(None);
        }
        let saved = sqlx::query(sql::SAVE_TASK)
            .bind(&task.run_id)
            .bind(&task.task)
            .bind(expected.as_str())
            .bind(task.state.as_str())
            .bind(i64::from(task.attempts))
            .bind(task.next_attempt_at.map(Timestamp::millis))
            .bind(task.deadline_at.map(Timestamp::millis))
            .bind(task.leader_token)
            .bind(task.started_at.map(Timestamp::millis))
            .bind(task.ended_at.map(Timestamp::millis))
            .execute(&mut *tx)
            .await
            .map_err(failed("save task"))?
            .rows_affected()
            == 1;
        if saved {
            if let Some(a) = attempt {
                sqlx::query(sql::SAVE_ATTEMPT)
                    .bind(&a.run_id)
                    .bind(&a.task)
                    .bind(i64::from(a.attempt))
                    .bind(a.state.as_str())
                    .bind(a.leader_token)
                    .bind(a.started_at.millis())
                    .bind(a.ended_at.map(Timestamp::millis))
                    .bind(a.exit_status)
                    .bind(&a.error)
                    .bind(&a.log_tail)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed("save attempt"))?;
            }
        }
        tx.commit().await.map_err(failed("save task"))?;
        Ok(Some(saved))
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        next_fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<FinishedRun>, StoreError> {
        let mut tx = self.begin().await?;
        if !Self::holds(&mut tx, fence, now).await? {
            return Ok(None);
        }
        let process: Option<String> = sqlx::query_scalar(sql::FINISH_RUN)
            .bind(run_id)
            .bind(state.as_str())
            .bind(error)
            .bind(now.millis())
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed("finish run"))?;
        let Some(process) = process else {
            return Err(StoreError::Conflict {
                what: format!("run {run_id} has already ended"),
            });
        };
        sqlx::query(sql::CANCEL_OPEN_TASKS)
            .bind(run_id)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("finish run"))?;
        let (previous, failures): (Option<String>, i64) = sqlx::query_as(sql::PREVIOUS)
            .bind(&process)
            .fetch_one(&mut *tx)
            .await
            .map_err(failed("finish run"))?;
        let failures = failures_after(failures, state);
        sqlx::query(sql::RECORD_ON_PROCESS)
            .bind(&process)
            .bind(state.as_str())
            .bind(failures)
            .bind(next_fire_at.map(Timestamp::millis))
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed("finish run"))?;
        tx.commit().await.map_err(failed("finish run"))?;
        Ok(Some(FinishedRun {
            previous: previous.and_then(|p| p.parse().ok()),
            consecutive_failures: u32::try_from(failures).unwrap_or(u32::MAX),
        }))
    }

    async fn prune_runs(&self, before: Timestamp) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql::PRUNE_RUNS)
            .bind(before.millis())
            .execute(&self.0.writer)
            .await
            .map_err(failed("prune runs"))?
            .rows_affected())
    }
}
