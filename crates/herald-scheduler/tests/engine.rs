//! The engine on a real store (SQLite file; PostgreSQL when
//! HERALD_TEST_DATABASE_URL is set): DAG, retries, runtime limit, log tail,
//! explicit success, overlap modes, missed schedules, lease takeover and
//! notifications, and the built-in maintenance jobs `holds.expire` and
//! `store.prune`. Time moves through a manual clock; only shell commands
//! and HTTP calls take real time, and tests wait for them with a deadline.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_bus::{Bus, EmbeddedBus, PostgresBus};
use herald_core::cadence::CadencePolicy;
use herald_core::email_event::{EmailEvent, EventType, Provider};
use herald_core::schedule::{ProcessDefinition, ProcessSpec, RunState, TaskState};
use herald_core::sharding::CustomerId;
use herald_core::{ManualClock, Timestamp};
use herald_router::routing::{default_route, route_dead_letter, HoldExpiry};
use herald_scheduler::builtin::{ExpireHolds, Prune};
use herald_scheduler::{Builtins, Notifier, Scheduler, SchedulerSettings};
use herald_store::holds::NewHeldEvent;
use herald_store::processes::{DefinitionSource, RunDetail};
use herald_store::{PgDb, SqliteDb, Store};
use serde_json::{json, Value};

/// 2026-11-25T12:00:00Z.
const START: Timestamp = Timestamp(1_764_072_000_000);
const TTL: Duration = Duration::from_secs(30);

struct Env {
    store: Store,
    clock: Arc<ManualClock>,
    reopen: Reopen,
    _dir: tempfile::TempDir,
}

enum Reopen {
    Sqlite(std::path::PathBuf),
    Postgres(Box<sqlx::postgres::PgConnectOptions>),
}

impl Env {
    async fn open(postgres: bool) -> Option<Env> {
        let clock = Arc::new(ManualClock::at(START));
        let dir = tempfile::tempdir().unwrap();
        let (store, reopen) = if postgres {
            let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
                assert!(
                    std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
                );
                eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
                return None;
            };
            let schema = format!("herald_sched_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]);
            let db = PgDb::connect_with(options.clone()).await.unwrap();
            (
                Store::from_postgres(db, clock.clone()),
                Reopen::Postgres(Box::new(options)),
            )
        } else {
            let path = dir.path().join("herald.db");
            let db = SqliteDb::open(&path).await.unwrap();
            (Store::from_sqlite(db, clock.clone()), Reopen::Sqlite(path))
        };
        store.migrate().await.unwrap();
        Some(Env {
            store,
            clock,
            reopen,
            _dir: dir,
        })
    }

    /// Another store on the same database, as a second process has.
    async fn another_store(&self) -> Store {
        match &self.reopen {
            Reopen::Sqlite(path) => {
                Store::from_sqlite(SqliteDb::open(path).await.unwrap(), self.clock.clone())
            }
            Reopen::Postgres(options) => Store::from_postgres(
                PgDb::connect_with(options.as_ref().clone()).await.unwrap(),
                self.clock.clone(),
            ),
        }
    }

    fn scheduler_on(
        &self,
        store: Store,
        holder: &str,
        notifier: Option<Arc<Notifier>>,
    ) -> Scheduler {
        self.scheduler_with(store, holder, notifier, Builtins::default())
    }

    fn scheduler_with(
        &self,
        store: Store,
        holder: &str,
        notifier: Option<Arc<Notifier>>,
        builtins: Builtins,
    ) -> Scheduler {
        Scheduler::new(
            store,
            self.clock.clone(),
            SchedulerSettings {
                lease_ttl: TTL,
                renew_every: Duration::from_secs(10),
                tick_interval: Duration::from_millis(10),
                holder: holder.into(),
                ..SchedulerSettings::default()
            },
            builtins,
            notifier.unwrap_or_else(|| Arc::new(Notifier::new(None, self.clock.clone()))),
        )
    }

    fn scheduler(&self) -> Scheduler {
        self.scheduler_on(self.store.clone(), "a", None)
    }

    async fn put(&self, name: &str, spec: Value) {
        let spec: ProcessSpec = serde_json::from_value(spec).unwrap();
        let definition = ProcessDefinition::parse(name, spec).unwrap();
        self.store
            .processes()
            .put(&definition, DefinitionSource::Api)
            .await
            .unwrap();
    }

    async fn runs(&self, name: &str) -> Vec<RunDetail> {
        let page = self
            .store
            .processes()
            .runs(name, herald_store::page::PageRequest::first(100))
            .await
            .unwrap();
        let mut out = Vec::new();
        for run in page.items.into_iter().rev() {
            out.push(self.store.processes().run(&run.id).await.unwrap().unwrap());
        }
        out
    }

    /// The bus over the same database, as the app builds it.
    async fn bus(&self) -> Arc<dyn Bus> {
        match (self.store.sqlite(), self.store.postgres()) {
            (Some(db), _) => Arc::new(EmbeddedBus::new(db.clone())),
            (_, Some(db)) => Arc::new(PostgresBus::new(db.clone()).await.unwrap()),
            (None, None) => unreachable!("a store has one backend"),
        }
    }

    /// Runs one built-in job as a one-task process, to its end; returns the
    /// run's state and the attempt's log.
    async fn run_builtin(
        &self,
        scheduler: &Scheduler,
        job: &str,
        args: Value,
    ) -> (RunState, String) {
        let name = format!(
            "{}-{}",
            job.replace('.', "-"),
            uuid::Uuid::new_v4().simple()
        );
        self.put(
            &name,
            json!({"tasks": [{"name": "job", "run": {"kind": "builtin", "job": job, "args": args}}]}),
        )
        .await;
        let run = self.store.processes().trigger(&name).await.unwrap();
        tick_until(scheduler, "the run ends", || async {
            self.store
                .processes()
                .run(&run.id)
                .await
                .unwrap()
                .unwrap()
                .run
                .state
                .is_terminal()
        })
        .await;
        let detail = self.store.processes().run(&run.id).await.unwrap().unwrap();
        let log = detail.attempts.last().unwrap().log_tail.clone();
        (detail.run.state, log)
    }

    async fn task_state(&self, run_id: &str, task: &str) -> TaskState {
        let detail = self.store.processes().run(run_id).await.unwrap().unwrap();
        detail.tasks.iter().find(|t| t.task == task).unwrap().state
    }
}

/// Ticks (without moving the clock) until `done` holds; real time passes
/// only for the shell commands and HTTP calls the tasks run.
async fn tick_until<F, Fut>(scheduler: &Scheduler, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        scheduler.tick().await.unwrap();
        if done().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves the clock by `by` in steps shorter than the lease renewal, ticking
/// after each, as a live leader would.
async fn advance(env: &Env, scheduler: &Scheduler, by: Duration) {
    let step = Duration::from_secs(5);
    let mut left = by;
    while !left.is_zero() {
        let d = left.min(step);
        env.clock.advance(d);
        left -= d;
        scheduler.tick().await.unwrap();
    }
}

fn shell(script: &str) -> Value {
    json!({"kind": "shell", "command": ["/bin/sh", "-c", script]})
}

macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(env) = super::Env::open(false).await {
                        super::$case(env).await;
                    }
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(env) = super::Env::open(true).await {
                        super::$case(env).await;
                    }
                }
            )+
        }
    };
}

both_backends!(
    dag_runs_in_order_retries_and_skips,
    a_hanging_task_is_killed_with_its_process_group_at_max_runtime,
    huge_output_keeps_the_capped_tail,
    explicit_success_completes_the_task,
    overlap_skip_wait_and_terminate,
    missed_fires_run_once_and_never_twice,
    a_new_leader_takes_over_and_retries_the_interrupted_task,
    notifications_reach_webhook_and_pagerduty,
    a_failed_run_is_mailed_through_the_transport,
    holds_expire_moves_old_held_events_to_the_route_dead_letter_queue,
    store_prune_deletes_old_events_in_chunks_and_keeps_the_cadence_window,
);

fn held(id: &str) -> NewHeldEvent {
    NewHeldEvent {
        customer: CustomerId::parse("c1").unwrap(),
        message_id: id.into(),
        body: id.as_bytes().to_vec(),
        attributes: BTreeMap::new(),
    }
}

async fn holds_expire_moves_old_held_events_to_the_route_dead_letter_queue(env: Env) {
    let route = default_route();
    let bus = env.bus().await;
    env.store
        .holds()
        .park(&route.name, &[held("old")])
        .await
        .unwrap();
    env.clock.advance(Duration::from_secs(2 * 3600));
    env.store
        .holds()
        .park(&route.name, &[held("new")])
        .await
        .unwrap();
    let builtins = Builtins::default().with(
        "holds.expire",
        Arc::new(ExpireHolds {
            expiry: Arc::new(HoldExpiry::new(
                vec![route.clone()],
                env.store.clone(),
                bus.clone(),
            )),
            default_max_age: Duration::from_secs(24 * 3600),
        }),
    );
    let scheduler = env.scheduler_with(env.store.clone(), "a", None, builtins);

    let (state, log) = env.run_builtin(&scheduler, "holds.expire", json!({})).await;
    assert_eq!(state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("moved 0 event(s) held longer than 1d"),
        "{log}"
    );

    let (state, log) = env
        .run_builtin(&scheduler, "holds.expire", json!({"max_age": "1h"}))
        .await;
    assert_eq!(state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("moved 1 event(s) held longer than 1h"),
        "{log}"
    );
    let letters = bus
        .peek(&route_dead_letter(&route).unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(&letters[0].body[..], b"old");
    assert!(
        letters[0].attributes["reason"].contains("hold_max_age"),
        "{:?}",
        letters[0].attributes
    );
    let summary = env.store.holds().summary().await.unwrap();
    assert_eq!(summary[0].events, 1, "the newer event stays held");
}

fn email_event(id: &str) -> EmailEvent {
    EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: id.into(),
        event_type: EventType::Delivered,
        address: "a@x.com".into(),
        occurred_at: START,
        message_id: None,
        bounce: None,
        tags: Vec::new(),
        custom_args: Default::default(),
        raw: json!({"sg_event_id": id}),
    }
}

async fn store_prune_deletes_old_events_in_chunks_and_keeps_the_cadence_window(env: Env) {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let events = env.store.email_events();
    let old: Vec<_> = (0..1500)
        .map(|i| email_event(&format!("old-{i}")))
        .collect();
    events.insert(&old).await.unwrap();
    env.clock.advance(100 * DAY);
    events.insert(&[email_event("new")]).await.unwrap();
    env.store
        .members()
        .set_cadence_policy(&CadencePolicy::new(3, 7 * DAY).unwrap())
        .await
        .unwrap();
    let builtins = Builtins::default().with(
        "store.prune",
        Arc::new(Prune {
            store: env.store.clone(),
            clock: env.clock.clone(),
        }),
    );
    let scheduler = env.scheduler_with(env.store.clone(), "a", None, builtins);

    let (state, log) = env.run_builtin(&scheduler, "store.prune", json!({})).await;
    assert_eq!(state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("deleted 0 scheduler run(s) older than 30d"),
        "{log}"
    );
    assert!(
        log.contains("deleted 1500 email event(s) received more than 90d ago"),
        "more than one chunk: {log}"
    );
    assert!(
        log.contains("deleted 0 send-log row(s) of finished alerts claimed more than 90d ago"),
        "{log}"
    );
    assert_eq!(events.count().await.unwrap(), 1);

    let (state, log) = env
        .run_builtin(&scheduler, "store.prune", json!({"events_retention": "1d"}))
        .await;
    assert_eq!(state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("deleted 0 email event(s) received more than 1d ago"),
        "{log}"
    );
    assert!(
        log.contains("claimed more than 7d ago (the cadence window)"),
        "{log}"
    );
    assert_eq!(events.count().await.unwrap(), 1, "the event of today stays");

    env.clock.advance(40 * DAY);
    let (state, log) = env
        .run_builtin(
            &scheduler,
            "store.prune",
            json!({"retention": "1d", "events_retention": "1d"}),
        )
        .await;
    assert_eq!(state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("deleted 2 scheduler run(s) older than 1d"),
        "{log}"
    );
    assert_eq!(events.count().await.unwrap(), 0);
}

async fn dag_runs_in_order_retries_and_skips(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order");
    let log = log.display();
    env.put(
        "dag",
        json!({"tasks": [
            {"name": "first", "run": shell(&format!("echo first >> {log}"))},
            {"name": "flaky", "depends_on": ["first"], "max_attempts": 2,
             "backoff": {"base": "10s", "exponent": 2.0, "cap": "1m"},
             "run": shell(&format!("echo flaky >> {log}; exit 3"))},
            {"name": "needs-flaky", "depends_on": ["flaky"], "run": shell(&format!("echo never >> {log}"))},
            {"name": "after-flaky", "depends_on": [{"task": "flaky", "success_required": false}],
             "run": shell(&format!("echo after >> {log}"))},
        ]}),
    )
    .await;
    let scheduler = env.scheduler();
    let run = env.store.processes().trigger("dag").await.unwrap();
    tick_until(&scheduler, "flaky fails once", || async {
        env.task_state(&run.id, "flaky").await == TaskState::Retrying
    })
    .await;
    scheduler.tick().await.unwrap();
    assert_eq!(
        env.task_state(&run.id, "flaky").await,
        TaskState::Retrying,
        "waits for its backoff"
    );
    env.clock.advance(Duration::from_secs(10));
    tick_until(&scheduler, "the run ends", || async {
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .is_terminal()
    })
    .await;
    let detail = env.store.processes().run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.state, RunState::Failed);
    let states: BTreeMap<_, _> = detail
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.state))
        .collect();
    assert_eq!(states["first"], TaskState::Succeeded);
    assert_eq!(states["flaky"], TaskState::Failed);
    assert_eq!(states["needs-flaky"], TaskState::Skipped);
    assert_eq!(states["after-flaky"], TaskState::Succeeded);
    let flaky: Vec<_> = detail
        .attempts
        .iter()
        .filter(|a| a.task == "flaky")
        .collect();
    assert_eq!(flaky.len(), 2);
    assert!(flaky.iter().all(|a| a.exit_status == Some(3)));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("order")).unwrap(),
        "first\nflaky\nflaky\nafter\n"
    );
}

async fn a_hanging_task_is_killed_with_its_process_group_at_max_runtime(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    env.put(
        "hang",
        json!({"tasks": [{"name": "hang", "max_runtime": "5s",
            "run": shell(&format!("sleep 1000 & echo $! > {}; wait", pid_file.display()))}]}),
    )
    .await;
    let scheduler = env.scheduler();
    let run = env.store.processes().trigger("hang").await.unwrap();
    tick_until(&scheduler, "the child starts", || async {
        pid_file.exists() && std::fs::read_to_string(&pid_file).unwrap().ends_with('\n')
    })
    .await;
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{child}")).exists());
    env.clock.advance(Duration::from_secs(4));
    scheduler.tick().await.unwrap();
    assert_eq!(
        env.task_state(&run.id, "hang").await,
        TaskState::Running,
        "not yet"
    );
    env.clock.advance(Duration::from_secs(1));
    scheduler.tick().await.unwrap();
    let detail = env.store.processes().run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.state, RunState::Failed);
    assert!(detail.attempts[0]
        .error
        .as_deref()
        .unwrap()
        .contains("max_runtime"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "the background child of the task still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn huge_output_keeps_the_capped_tail(env: Env) {
    env.put(
        "loud",
        json!({"tasks": [{"name": "loud",
            "run": shell("head -c 200000000 /dev/zero | tr '\\0' x; echo; echo THE-END >&2")}]}),
    )
    .await;
    let scheduler = env.scheduler();
    let run = env.store.processes().trigger("loud").await.unwrap();
    tick_until(&scheduler, "the run ends", || async {
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .is_terminal()
    })
    .await;
    let detail = env.store.processes().run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.state, RunState::Succeeded);
    let tail = &detail.attempts[0].log_tail;
    assert!(
        tail.len() <= herald_store::processes::MAX_LOG_TAIL_BYTES,
        "{}",
        tail.len()
    );
    assert!(tail.trim_end().ends_with("THE-END"), "the end is kept");
}

async fn explicit_success_completes_the_task(env: Env) {
    env.put(
        "explicit",
        json!({"tasks": [
            {"name": "ask", "require_explicit_success": true, "max_runtime": "1h",
             "run": shell("test -n \"$HERALD_RUN_TOKEN\"")},
            {"name": "then", "depends_on": ["ask"], "run": shell("true")},
        ]}),
    )
    .await;
    let scheduler = env.scheduler();
    let run = env.store.processes().trigger("explicit").await.unwrap();
    tick_until(&scheduler, "the task waits for its call", || async {
        env.task_state(&run.id, "ask").await == TaskState::AwaitingSuccess
    })
    .await;
    scheduler.tick().await.unwrap();
    assert_eq!(env.task_state(&run.id, "then").await, TaskState::Pending);
    env.store
        .processes()
        .report_success(&run.id, "ask", &run.token)
        .await
        .unwrap();
    tick_until(&scheduler, "the run ends", || async {
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .is_terminal()
    })
    .await;
    assert_eq!(
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state,
        RunState::Succeeded
    );
}

fn every_minute(overlap: &str) -> Value {
    json!({"overlap": overlap,
           "schedule": {"kind": "cron", "expression": "* * * * *"},
           "tasks": [{"name": "long", "run": shell("sleep 1000")}]})
}

async fn overlap_skip_wait_and_terminate(env: Env) {
    for mode in ["skip", "wait", "terminate"] {
        env.put(mode, every_minute(mode)).await;
    }
    let scheduler = env.scheduler();
    scheduler.tick().await.unwrap();
    advance(&env, &scheduler, Duration::from_secs(60)).await;
    for mode in ["skip", "wait", "terminate"] {
        assert_eq!(env.runs(mode).await.len(), 1, "{mode}");
    }
    advance(&env, &scheduler, Duration::from_secs(60)).await;
    scheduler.tick().await.unwrap();

    let skip = env.runs("skip").await;
    assert_eq!(skip.len(), 1, "skip: no second run");
    assert_eq!(skip[0].run.state, RunState::Running);

    let wait = env.runs("wait").await;
    assert_eq!(wait.len(), 2);
    assert_eq!(wait[0].run.state, RunState::Running);
    assert_eq!(
        wait[1].run.state,
        RunState::Queued,
        "wait: queued behind the first"
    );

    let terminate = env.runs("terminate").await;
    assert_eq!(terminate.len(), 2);
    assert_eq!(
        terminate[0].run.state,
        RunState::Cancelled,
        "terminate: the first is cancelled"
    );
    assert_eq!(terminate[1].run.state, RunState::Running);

    // The queued run starts once the first one ends.
    env.store
        .processes()
        .request_cancel(&wait[0].run.id)
        .await
        .unwrap();
    scheduler.tick().await.unwrap();
    scheduler.tick().await.unwrap();
    let wait = env.runs("wait").await;
    assert_eq!(wait[0].run.state, RunState::Cancelled);
    assert_eq!(wait[1].run.state, RunState::Running);
    scheduler.step_down().await;
}

async fn missed_fires_run_once_and_never_twice(env: Env) {
    env.put(
        "every-minute",
        json!({"schedule": {"kind": "cron", "expression": "* * * * *"},
               "tasks": [{"name": "t", "run": shell("true")}]}),
    )
    .await;
    // Down for ten minutes: one run on start-up, not ten.
    env.clock.advance(Duration::from_secs(600));
    let scheduler = env.scheduler();
    assert_eq!(scheduler.tick().await.unwrap().runs_created, 1);
    assert_eq!(scheduler.tick().await.unwrap().runs_created, 0);
    tick_until(&scheduler, "the run ends", || async {
        env.runs("every-minute").await[0].run.state.is_terminal()
    })
    .await;
    advance(&env, &scheduler, Duration::from_secs(60)).await;
    let runs = env.runs("every-minute").await;
    let times: Vec<_> = runs.iter().map(|r| r.run.scheduled_for.unwrap()).collect();
    assert_eq!(
        times,
        [
            START.plus(Duration::from_secs(60)),
            START.plus(Duration::from_secs(660))
        ]
    );
    scheduler.step_down().await;
}

async fn a_new_leader_takes_over_and_retries_the_interrupted_task(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    env.put(
        "long",
        json!({"schedule": {"kind": "cron", "expression": "* * * * *"},
               "tasks": [{"name": "t", "max_attempts": 2, "backoff": {"base": "1s"},
                          "run": shell(&format!("echo x >> {}; sleep 1000", starts.display()))}]}),
    )
    .await;
    let a = env.scheduler();
    let b = env.scheduler_on(env.another_store().await, "b", None);
    env.clock.advance(Duration::from_secs(60));
    assert!(a.tick().await.unwrap().leader);
    assert!(!b.tick().await.unwrap().leader, "one leader at a time");
    let run = env.runs("long").await.remove(0).run;
    tick_until(&a, "the task starts", || async { starts.exists() }).await;

    // `a` stops ticking (paused, or killed); its lease runs out.
    env.clock.advance(TTL);
    let report = b.tick().await.unwrap();
    assert!(report.leader, "b takes over after one lease period");
    assert_eq!(
        env.task_state(&run.id, "t").await,
        TaskState::Retrying,
        "interrupted, retried per policy"
    );
    assert_eq!(report.runs_created, 0, "the fire of 12:01 is not run again");

    // The old leader wakes up: its writes are refused and it stops its task.
    assert!(!a.tick().await.unwrap().leader);
    assert!(!a.is_leader().await);

    env.clock.advance(Duration::from_secs(1));
    tick_until(&b, "the retry starts", || async {
        std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 2)
    })
    .await;
    let detail = env.store.processes().run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 2);
    assert!(detail.attempts[0]
        .error
        .as_deref()
        .unwrap()
        .contains("interrupted"));
    assert_eq!(
        env.runs("long").await.len(),
        1,
        "no scheduled time ran twice"
    );
    b.step_down().await;
}

#[derive(Default, Clone)]
struct Captured(Arc<Mutex<Vec<(String, axum::http::HeaderMap, String)>>>);

async fn capture_server(captured: Captured) -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/{*path}",
            post(
                |axum::extract::State(c): axum::extract::State<Captured>,
                 uri: axum::http::Uri,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let path = uri.path().to_owned();
                    c.0.lock().unwrap().push((path.clone(), headers, body));
                    if path.starts_with("/pagerduty") {
                        axum::http::StatusCode::ACCEPTED
                    } else {
                        axum::http::StatusCode::OK
                    }
                },
            ),
        )
        .with_state(captured);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn notifications_reach_webhook_and_pagerduty(env: Env) {
    let captured = Captured::default();
    let server = capture_server(captured.clone()).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let flag = tempfile::tempdir().unwrap();
    let fail_flag = flag.path().join("fail");
    std::fs::write(&fail_flag, "").unwrap();
    env.put(
        "watched",
        json!({"notify_when": "on_state_change_and_failures",
               "notify": [
                   {"kind": "webhook", "url": format!("{server}/hook"), "secret": secret},
                   {"kind": "webhook", "url": format!("{server}/slack"), "secret": secret, "format": "slack"},
                   {"kind": "pagerduty", "routing_key": "R0UT1NG", "after_failures": 2,
                    "events_url": format!("{server}/pagerduty")},
               ],
               "tasks": [{"name": "t", "run": shell(&format!("test ! -e {}", fail_flag.display()))}]}),
    )
    .await;
    let scheduler = env.scheduler();
    for _ in 0..2 {
        let run = env.store.processes().trigger("watched").await.unwrap();
        tick_until(&scheduler, "the run ends", || async {
            env.store
                .processes()
                .run(&run.id)
                .await
                .unwrap()
                .unwrap()
                .run
                .state
                .is_terminal()
        })
        .await;
    }
    std::fs::remove_file(&fail_flag).unwrap();
    let run = env.store.processes().trigger("watched").await.unwrap();
    tick_until(&scheduler, "the run ends", || async {
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .is_terminal()
    })
    .await;
    // Notifications go out in the background: 3 + 3 webhooks, 2 PagerDuty events.
    let deadline = Instant::now() + Duration::from_secs(10);
    while captured.0.lock().unwrap().len() < 8 {
        assert!(
            Instant::now() < deadline,
            "got {:?}",
            captured
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.0.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = captured.0.lock().unwrap().clone();
    let hooks: Vec<_> = calls.iter().filter(|c| c.0 == "/hook").collect();
    assert_eq!(hooks.len(), 3, "two failures and the recovery");
    for (_, headers, body) in &hooks {
        let id = headers["webhook-id"].to_str().unwrap();
        let ts = headers["webhook-timestamp"].to_str().unwrap();
        let signature = headers["webhook-signature"].to_str().unwrap();
        assert_eq!(
            signature,
            herald_scheduler::notify::sign(secret, id, ts, body).unwrap()
        );
        let json: Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["type"], "process.run.finished");
        assert_eq!(json["data"]["process"], "watched");
    }
    let states: Vec<Value> = hooks
        .iter()
        .map(|h| serde_json::from_str::<Value>(&h.2).unwrap()["data"]["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!("failed"), json!("failed"), json!("succeeded")]
    );
    let slack: Vec<Value> = calls
        .iter()
        .filter(|c| c.0 == "/slack")
        .map(|c| serde_json::from_str(&c.2).unwrap())
        .collect();
    assert_eq!(slack.len(), 3);
    assert!(slack[0]["text"].as_str().unwrap().contains("watched"));
    let pagerduty: Vec<Value> = calls
        .iter()
        .filter(|c| c.0 == "/pagerduty")
        .map(|c| serde_json::from_str(&c.2).unwrap())
        .collect();
    assert_eq!(
        pagerduty.len(),
        2,
        "trigger after the 2nd failure, resolve on success"
    );
    assert_eq!(pagerduty[0]["event_action"], "trigger");
    assert_eq!(pagerduty[0]["routing_key"], "R0UT1NG");
    assert_eq!(pagerduty[0]["dedup_key"], "herald-process-watched");
    assert_eq!(pagerduty[0]["payload"]["severity"], "error");
    assert_eq!(pagerduty[0]["payload"]["source"], "herald-scheduler");
    assert!(pagerduty[0]["payload"]["summary"].is_string());
    assert_eq!(pagerduty[1]["event_action"], "resolve");
    assert_eq!(pagerduty[1]["dedup_key"], "herald-process-watched");
}

/// A mail transport that keeps what it is given.
#[derive(Debug, Default)]
struct KeepingTransport(Mutex<Vec<herald_mail::OutgoingEmail>>);

#[async_trait::async_trait]
impl herald_mail::Transport for KeepingTransport {
    fn kind(&self) -> &'static str {
        "keeping"
    }

    async fn send(
        &self,
        email: &herald_mail::OutgoingEmail,
    ) -> Result<herald_mail::SendReceipt, herald_mail::SendError> {
        email.check()?;
        self.0.lock().unwrap().push(email.clone());
        Ok(herald_mail::SendReceipt {
            provider_message_id: None,
        })
    }
}

async fn a_failed_run_is_mailed_through_the_transport(env: Env) {
    let transport = Arc::new(KeepingTransport::default());
    let mut by_name: BTreeMap<String, Arc<dyn herald_mail::Transport>> = BTreeMap::new();
    by_name.insert("ops".into(), transport.clone());
    let email = herald_scheduler::TransportEmail {
        transports: Arc::new(herald_alerts::Transports::from_transports(by_name, "ops").unwrap()),
        from: "Herald <herald@example.com>".parse().unwrap(),
        domain: "example.com".into(),
    };
    let notifier = Arc::new(Notifier::new(Some(Arc::new(email)), env.clock.clone()));
    env.put(
        "mailed",
        json!({"notify_when": "on_state_change_and_failures",
               "notify": [{"kind": "email", "to": ["ops@example.com", "oncall@example.com"]}],
               "tasks": [{"name": "t", "run": shell("echo '<b>broken</b>'; exit 1")}]}),
    )
    .await;
    let scheduler = env.scheduler_on(env.store.clone(), "a", Some(notifier));
    let run = env.store.processes().trigger("mailed").await.unwrap();
    tick_until(&scheduler, "the run ends", || async {
        env.store
            .processes()
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .is_terminal()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while transport.0.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no email sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = transport.0.lock().unwrap().clone();
    let to: Vec<String> = sent.iter().map(|e| e.to.email.to_string()).collect();
    assert_eq!(to, ["ops@example.com", "oncall@example.com"]);
    assert_eq!(sent[0].subject, "Herald process mailed failed");
    assert!(sent[0].text.contains(&run.id), "{}", sent[0].text);
    assert!(
        sent[0].text.contains("failed task(s): t"),
        "{}",
        sent[0].text
    );
    assert!(sent[0].message_id.ends_with("@example.com"));
}
