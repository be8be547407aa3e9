//! The engine: leadership through the store's lease, then one [`Scheduler::tick`]
//! at a time: collect finished attempts, fire due schedules, and move every
//! active run along its DAG. Every write is fenced with the lease token.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use herald_core::schedule::{
    after_failure, after_run, due, on_new_run, readiness, run_outcome, AfterFailure, Executable,
    OverlapDecision, ProcessDefinition, Readiness, RunState, Schedule, TaskSpec, TaskState,
};
use herald_core::{Clock, Timestamp};
use herald_store::processes::{
    Attempt, Fence, Fenced, NewRun, RunDetail, TaskRun, Trigger, MAX_LOG_TAIL_BYTES,
};
use herald_store::{Lease, Store, StoreError};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::builtin::Builtins;
use crate::exec::{run_http, run_shell, Outcome, TaskContext};
use crate::notify::{Finished, Notifier};

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The lease every scheduler of one store competes for.
    pub lease_name: String,
    pub lease_ttl: Duration,
    /// Renewed this often: well before the ttl runs out.
    pub renew_every: Duration,
    pub tick_interval: Duration,
    /// This instance's name in the lease.
    pub holder: String,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            lease_name: "scheduler".into(),
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            tick_interval: Duration::from_secs(1),
            // The pid tells operators which process leads; the uuid keeps
            // holders unique across hosts and restarts.
            holder: format!(
                "scheduler-pid{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TickReport {
    pub leader: bool,
    pub runs_created: usize,
    pub attempts_started: usize,
    pub runs_finished: usize,
}

struct Running {
    cancel: CancellationToken,
    task: TaskRun,
    attempt: Attempt,
}

struct Done {
    run_id: String,
    task: String,
    outcome: Outcome,
}

pub struct Scheduler {
    store: Store,
    clock: Arc<dyn Clock>,
    settings: SchedulerSettings,
    builtins: Builtins,
    notifier: Arc<Notifier>,
    http: reqwest::Client,
    state: Mutex<State>,
    done_tx: mpsc::UnboundedSender<Done>,
}

struct State {
    lease: Option<Lease>,
    renewed_at: Timestamp,
    running: HashMap<(String, String), Running>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Scheduler {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: SchedulerSettings,
        builtins: Builtins,
        notifier: Arc<Notifier>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            store,
            clock,
            settings,
            builtins,
            notifier,
            http: reqwest::Client::new(),
            state: Mutex::new(State {
                lease: None,
                renewed_at: Timestamp(0),
                running: HashMap::new(),
                done_rx,
            }),
            done_tx,
        }
    }

    /// Ticks every `tick_interval` until `shutdown`, then stops its tasks
    /// and gives the lease up so another scheduler takes over at once.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SchedulerError> {
        tracing::info!(holder = %self.settings.holder, "scheduler started");
        while !shutdown.is_cancelled() {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "scheduler tick failed; trying again at the next tick");
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.settings.tick_interval) => {}
            }
        }
        self.step_down().await;
        tracing::info!("scheduler stopped");
        Ok(())
    }

    /// Stops local attempts and releases the lease; the next leader retries
    /// the interrupted attempts per their policy.
    pub async fn step_down(&self) {
        let mut state = self.state.lock().await;
        for running in state.running.values() {
            running.cancel.cancel();
        }
        state.running.clear();
        if let Some(lease) = state.lease.take() {
            if let Err(e) = self.store.leases().release(&lease).await {
                tracing::warn!(error = %e, "cannot release the scheduler lease; it expires on its own");
            }
        }
    }

    /// Whether this instance held the lease at its last tick.
    pub async fn is_leader(&self) -> bool {
        self.state.lock().await.lease.is_some()
    }

    /// One deterministic step. Tests call it directly, moving a manual
    /// clock between calls.
    pub async fn tick(&self) -> Result<TickReport, SchedulerError> {
        let mut state = self.state.lock().await;
        let mut report = TickReport::default();
        let Some(fence) = self.lead(&mut state).await? else {
            return Ok(report);
        };
        report.leader = true;
        match self.step(&mut state, &fence, &mut report).await {
            Ok(()) => Ok(report),
            Err(StepError::Lost) => {
                self.lose(&mut state, "a write was refused");
                Ok(TickReport::default())
            }
            Err(StepError::Store(e)) => Err(e.into()),
        }
    }

    async fn lead(&self, state: &mut State) -> Result<Option<Fence>, StoreError> {
        let now = self.clock.now();
        let leases = self.store.leases();
        match &state.lease {
            Some(lease) if now.since(state.renewed_at) < self.settings.renew_every => {}
            Some(lease) => match leases.renew(lease, self.settings.lease_ttl).await? {
                Some(renewed) => {
                    state.lease = Some(renewed);
                    state.renewed_at = now;
                }
                None => self.lose(state, "the lease could not be renewed"),
            },
            None => {
                if let Some(lease) = leases
                    .try_acquire(
                        &self.settings.lease_name,
                        &self.settings.holder,
                        self.settings.lease_ttl,
                    )
                    .await?
                {
                    tracing::info!(holder = %lease.holder, token = lease.token, "this scheduler leads now");
                    state.lease = Some(lease);
                    state.renewed_at = now;
                }
            }
        }
        Ok(state.lease.as_ref().map(Fence::from))
    }

    fn lose(&self, state: &mut State, why: &str) {
        if state.lease.take().is_some() {
            tracing::warn!(
                reason = why,
                "this scheduler lost its lease; stopping its tasks"
            );
        }
        for running in state.running.values() {
            running.cancel.cancel();
        }
        state.running.clear();
    }

    async fn step(
        &self,
        state: &mut State,
        fence: &Fence,
        report: &mut TickReport,
    ) -> Result<(), StepError> {
        self.collect(state, fence).await?;
        self.fire(fence, report).await?;
        for detail in self.store.processes().active_runs().await? {
            self.advance(state, fence, detail, report).await?;
        }
        Ok(())
    }

    /// Records the attempts that ended since the last tick.
    async fn collect(&self, state: &mut State, fence: &Fence) -> Result<(), StepError> {
        while let Ok(done) = state.done_rx.try_recv() {
            let key = (done.run_id.clone(), done.task.clone());
            let Some(running) = state.running.remove(&key) else {
                continue;
            };
            let Some(spec) = self.task_spec(&done.run_id, &done.task).await? else {
                continue;
            };
            let now = self.clock.now();
            let mut task = running.task;
            let mut attempt = running.attempt;
            attempt.ended_at = Some(now);
            attempt.exit_status = done.outcome.exit_status;
            attempt.error = done.outcome.error.clone();
            attempt.log_tail = done.outcome.log_tail;
            if done.outcome.success {
                if spec.require_explicit_success {
                    task.state = TaskState::AwaitingSuccess;
                    attempt.state = TaskState::AwaitingSuccess;
                } else {
                    task.state = TaskState::Succeeded;
                    task.ended_at = Some(now);
                    task.deadline_at = None;
                    attempt.state = TaskState::Succeeded;
                }
            } else {
                attempt.state = TaskState::Failed;
                fail(&mut task, &spec, now);
            }
            fenced(
                self.store
                    .processes()
                    .save_task(fence, TaskState::Running, &task, Some(&attempt))
                    .await?,
            )?;
        }
        Ok(())
    }

    async fn task_spec(&self, run_id: &str, task: &str) -> Result<Option<TaskSpec>, StoreError> {
        Ok(self
            .store
            .processes()
            .run(run_id)
            .await?
            .and_then(|d| d.run.spec.tasks.into_iter().find(|t| t.name == task)))
    }

    /// Creates the runs whose scheduled time has come, one per process and
    /// time, applying the overlap policy.
    async fn fire(&self, fence: &Fence, report: &mut TickReport) -> Result<(), StepError> {
        let now = self.clock.now();
        let processes = self.store.processes();
        let active = processes.active_runs().await?;
        for process in processes.list().await? {
            if process.paused {
                continue;
            }
            let definition = match ProcessDefinition::parse(&process.name, process.spec.clone()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(process = %process.name, error = %e, "stored definition no longer valid; not scheduling it");
                    continue;
                }
            };
            let Some(fire) = due(&definition.schedule, process.next_fire_at, now) else {
                continue;
            };
            let going: Vec<&RunDetail> = active
                .iter()
                .filter(|d| d.run.process == process.name)
                .collect();
            let decision = on_new_run(process.spec.overlap, !going.is_empty());
            let state = match decision {
                OverlapDecision::Skip => {
                    tracing::info!(process = %process.name, "a run is still going; this scheduled run is skipped");
                    fenced(
                        processes
                            .set_next_fire(fence, &process.name, fire.following)
                            .await?,
                    )?;
                    continue;
                }
                OverlapDecision::Queue => RunState::Queued,
                OverlapDecision::Start => RunState::Running,
                OverlapDecision::TerminateThenStart => {
                    for run in &going {
                        processes.request_cancel(&run.run.id).await?;
                    }
                    RunState::Queued
                }
            };
            let new = NewRun {
                process: process.name.clone(),
                spec: process.spec.clone(),
                trigger: Trigger::Schedule,
                scheduled_for: Some(fire.scheduled_for),
                state,
            };
            if let Some(run) = fenced(processes.create_run(fence, &new, fire.following).await?)? {
                tracing::info!(process = %run.process, run_id = %run.id, state = %run.state, "scheduled run created");
                report.runs_created += 1;
            }
        }
        Ok(())
    }

    async fn advance(
        &self,
        state: &mut State,
        fence: &Fence,
        detail: RunDetail,
        report: &mut TickReport,
    ) -> Result<(), StepError> {
        let processes = self.store.processes();
        let run = &detail.run;
        let now = self.clock.now();
        if run.cancel_requested {
            return self.cancel(state, fence, detail, report).await;
        }
        if run.state == RunState::Queued {
            let others = processes
                .active_runs()
                .await?
                .into_iter()
                .any(|d| d.run.process == run.process && d.run.state == RunState::Running);
            if others || !fenced(processes.start_run(fence, &run.id).await?)? {
                return Ok(());
            }
        }
        let mut states: BTreeMap<String, TaskState> = detail
            .tasks
            .iter()
            .map(|t| (t.task.clone(), t.state))
            .collect();
        for task in &detail.tasks {
            let Some(spec) = run.spec.tasks.iter().find(|s| s.name == task.task) else {
                continue;
            };
            let key = (run.id.clone(), task.task.clone());
            let mut next = task.clone();
            // A running attempt this scheduler did not start here is one an
            // earlier leader lost; the process that ran it stops it when it
            // notices it lost the lease.
            let mine = task.leader_token == Some(fence.token) && state.running.contains_key(&key);
            let failure = match task.state {
                TaskState::Running if !mine => {
                    fail(&mut next, spec, now);
                    Some("interrupted: the scheduler running it stopped or lost its lease")
                }
                TaskState::Running | TaskState::AwaitingSuccess
                    if task.deadline_at.is_some_and(|d| d <= now) =>
                {
                    if let Some(r) = state.running.remove(&key) {
                        r.cancel.cancel();
                    }
                    fail(&mut next, spec, now);
                    Some("stopped: ran past its max_runtime")
                }
                TaskState::Pending => match readiness(spec, &states) {
                    Readiness::Wait => None,
                    Readiness::Skip => {
                        next.state = TaskState::Skipped;
                        next.ended_at = Some(now);
                        fenced(processes.save_task(fence, task.state, &next, None).await?)?;
                        states.insert(task.task.clone(), next.state);
                        continue;
                    }
                    Readiness::Ready => {
                        if self.start(state, fence, run, spec, task).await? {
                            report.attempts_started += 1;
                            states.insert(task.task.clone(), TaskState::Running);
                        }
                        continue;
                    }
                },
                TaskState::Retrying if task.next_attempt_at.is_none_or(|t| t <= now) => {
                    if self.start(state, fence, run, spec, task).await? {
                        report.attempts_started += 1;
                        states.insert(task.task.clone(), TaskState::Running);
                    }
                    continue;
                }
                _ => None,
            };
            if let Some(error) = failure {
                let attempt = Attempt {
                    run_id: run.id.clone(),
                    task: task.task.clone(),
                    attempt: task.attempts,
                    state: TaskState::Failed,
                    leader_token: task.leader_token.unwrap_or(fence.token),
                    started_at: task.started_at.unwrap_or(now),
                    ended_at: Some(now),
                    exit_status: None,
                    error: Some(error.to_owned()),
                    log_tail: String::new(),
                };
                tracing::warn!(run_id = %run.id, task = %task.task, error, "attempt failed");
                fenced(
                    processes
                        .save_task(fence, task.state, &next, Some(&attempt))
                        .await?,
                )?;
                states.insert(task.task.clone(), next.state);
            }
        }
        if let Some(outcome) = run_outcome(&states) {
            self.finish(fence, &detail, outcome, None, report).await?;
        }
        Ok(())
    }

    async fn start(
        &self,
        state: &mut State,
        fence: &Fence,
        run: &herald_store::processes::Run,
        spec: &TaskSpec,
        task: &TaskRun,
    ) -> Result<bool, StepError> {
        let now = self.clock.now();
        let mut next = task.clone();
        next.state = TaskState::Running;
        next.attempts = task.attempts + 1;
        next.next_attempt_at = None;
        next.deadline_at = spec.max_runtime.map(|d| now.plus(d));
        next.leader_token = Some(fence.token);
        next.started_at = Some(now);
        next.ended_at = None;
        let attempt = Attempt {
            run_id: run.id.clone(),
            task: task.task.clone(),
            attempt: next.attempts,
            state: TaskState::Running,
            leader_token: fence.token,
            started_at: now,
            ended_at: None,
            exit_status: None,
            error: None,
            log_tail: String::new(),
        };
        if !fenced(
            self.store
                .processes()
                .save_task(fence, task.state, &next, Some(&attempt))
                .await?,
        )? {
            return Ok(false);
        }
        let cancel = CancellationToken::new();
        let context = TaskContext {
            run_id: run.id.clone(),
            task: task.task.clone(),
            attempt: next.attempts,
            run_token: run.token.clone(),
        };
        tracing::info!(run_id = %run.id, task = %task.task, attempt = next.attempts, "attempt started");
        self.spawn(spec.run.clone(), context, cancel.clone());
        state.running.insert(
            (run.id.clone(), task.task.clone()),
            Running {
                cancel,
                task: next,
                attempt,
            },
        );
        Ok(true)
    }

    fn spawn(&self, executable: Executable, context: TaskContext, cancel: CancellationToken) {
        let builtins = self.builtins.clone();
        let http = self.http.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = match &executable {
                Executable::Builtin { job, args } => match builtins.get(job) {
                    Some(job) => match job.run(args, cancel).await {
                        Ok(log) => Outcome::succeeded(log),
                        Err(e) => Outcome::failed(e, String::new()),
                    },
                    None => Outcome::failed(
                        format!("the built-in job {job:?} is not available in this process"),
                        String::new(),
                    ),
                },
                Executable::Shell {
                    command,
                    env,
                    working_dir,
                } => {
                    run_shell(
                        command,
                        env,
                        working_dir.as_deref(),
                        &context,
                        MAX_LOG_TAIL_BYTES,
                        cancel,
                    )
                    .await
                }
                Executable::Http {
                    method,
                    url,
                    headers,
                    body,
                    expected_status,
                } => {
                    run_http(
                        &http,
                        method,
                        url,
                        headers,
                        body.as_deref(),
                        *expected_status,
                        &context,
                        MAX_LOG_TAIL_BYTES,
                        cancel,
                    )
                    .await
                }
            };
            let _ = done.send(Done {
                run_id: context.run_id,
                task: context.task,
                outcome,
            });
        });
    }

    async fn cancel(
        &self,
        state: &mut State,
        fence: &Fence,
        detail: RunDetail,
        report: &mut TickReport,
    ) -> Result<(), StepError> {
        let now = self.clock.now();
        for task in &detail.tasks {
            if task.state.is_terminal() {
                continue;
            }
            if let Some(r) = state
                .running
                .remove(&(detail.run.id.clone(), task.task.clone()))
            {
                r.cancel.cancel();
            }
            let mut next = task.clone();
            next.state = TaskState::Cancelled;
            next.ended_at = Some(now);
            fenced(
                self.store
                    .processes()
                    .save_task(fence, task.state, &next, None)
                    .await?,
            )?;
        }
        self.finish(
            fence,
            &detail,
            RunState::Cancelled,
            Some("cancelled on request"),
            report,
        )
        .await
    }

    async fn finish(
        &self,
        fence: &Fence,
        detail: &RunDetail,
        outcome: RunState,
        error: Option<&str>,
        report: &mut TickReport,
    ) -> Result<(), StepError> {
        let now = self.clock.now();
        let run = &detail.run;
        let next = ProcessDefinition::parse(&run.process, run.spec.clone())
            .ok()
            .and_then(|d| match d.schedule {
                Schedule::Continuous(_) => after_run(&d.schedule, now),
                _ => None,
            });
        let error = error.map(str::to_owned).or_else(|| {
            let failed: Vec<&str> = detail
                .tasks
                .iter()
                .filter(|t| matches!(t.state, TaskState::Failed))
                .map(|t| t.task.as_str())
                .collect();
            (outcome == RunState::Failed && !failed.is_empty())
                .then(|| format!("failed task(s): {}", failed.join(", ")))
        });
        let history = match self
            .store
            .processes()
            .finish_run(fence, &run.id, outcome, error.as_deref(), next)
            .await
        {
            Ok(Fenced::Done(history)) => history,
            Ok(Fenced::LeaseLost) => return Err(StepError::Lost),
            // Finished meanwhile (by a cancel racing this tick): nothing to do.
            Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        report.runs_finished += 1;
        tracing::info!(process = %run.process, run_id = %run.id, state = %outcome, "run finished");
        let mut finished_run = run.clone();
        finished_run.error = error;
        finished_run.state = outcome;
        let notifier = self.notifier.clone();
        let spec = run.spec.clone();
        tokio::spawn(async move {
            notifier
                .finished(&Finished {
                    spec: &spec,
                    run: &finished_run,
                    state: outcome,
                    history,
                })
                .await;
        });
        Ok(())
    }
}

/// A failed attempt: retry after the backoff, or give up.
fn fail(task: &mut TaskRun, spec: &TaskSpec, now: Timestamp) {
    task.deadline_at = None;
    match after_failure(&spec.backoff, spec.max_attempts, task.attempts, now) {
        AfterFailure::RetryAt(at) => {
            task.state = TaskState::Retrying;
            task.next_attempt_at = Some(at);
        }
        AfterFailure::GiveUp => {
            task.state = TaskState::Failed;
            task.next_attempt_at = None;
            task.ended_at = Some(now);
        }
    }
}

/// Why a tick stopped early.
enum StepError {
    /// A fenced write was refused: another scheduler leads now.
    Lost,
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

fn fenced<T>(outcome: Fenced<T>) -> Result<T, StepError> {
    match outcome {
        Fenced::Done(t) => Ok(t),
        Fenced::LeaseLost => Err(StepError::Lost),
    }
}
