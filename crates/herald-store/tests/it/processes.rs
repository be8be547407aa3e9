//! Processes: definitions, runs, fenced scheduler writes, explicit success
//! with the run's token, cancellation and the process's failure count.

use std::time::Duration;

use herald_core::schedule::{ProcessDefinition, ProcessSpec, RunState, TaskState};
use herald_store::page::PageRequest;
use herald_store::processes::{
    Attempt, DefinitionSource, Fence, Fenced, NewRun, Trigger, MAX_LOG_TAIL_BYTES,
};
use herald_store::{Lease, StoreError};

use crate::harness::{TestDb, START};

store_suite!(
    put_get_list_and_first_fire,
    pause_and_resume_move_the_next_fire,
    writes_are_fenced_by_the_lease,
    one_run_per_scheduled_time,
    task_writes_are_conditional_and_attempts_recorded,
    explicit_success_needs_the_run_token,
    cancel_ends_a_queued_run_and_marks_a_running_one,
    finished_runs_count_failures_in_a_row,
    runs_are_listed_newest_first_in_pages,
    unknown_names_are_not_found,
);

const LEASE: &str = "scheduler";
const TTL: Duration = Duration::from_secs(30);

/// Tasks `a` then `b` (which reports its own success), with `schedule`.
fn definition(name: &str, schedule: serde_json::Value) -> ProcessDefinition {
    let spec: ProcessSpec = serde_json::from_value(serde_json::json!({
        "schedule": schedule,
        "tasks": [
            {"name": "a", "run": {"kind": "shell", "command": ["true"]}},
            {"name": "b", "depends_on": ["a"], "require_explicit_success": true,
             "run": {"kind": "shell", "command": ["true"]}},
        ],
    }))
    .unwrap();
    ProcessDefinition::parse(name, spec).unwrap()
}

fn every_minute() -> serde_json::Value {
    serde_json::json!({"kind": "cron", "expression": "* * * * *"})
}

fn manual_only() -> serde_json::Value {
    serde_json::json!({"kind": "none"})
}

async fn lead(db: &TestDb) -> (Lease, Fence) {
    let lease = db
        .store
        .leases()
        .try_acquire(LEASE, "leader", TTL)
        .await
        .unwrap()
        .expect("free");
    let fence = Fence::from(&lease);
    (lease, fence)
}

async fn new_run(
    db: &TestDb,
    fence: &Fence,
    name: &str,
    at: Option<i64>,
) -> herald_store::processes::Run {
    let process = db.store.processes().get(name).await.unwrap().unwrap();
    let run = NewRun {
        process: name.into(),
        spec: process.spec,
        trigger: Trigger::Schedule,
        scheduled_for: at.map(herald_core::Timestamp),
        state: RunState::Running,
    };
    match db
        .store
        .processes()
        .create_run(fence, &run, None)
        .await
        .unwrap()
    {
        Fenced::Done(Some(run)) => run,
        other => panic!("run not created: {other:?}"),
    }
}

async fn put_get_list_and_first_fire(db: TestDb) {
    let processes = db.store.processes();
    let (stored, created) = processes
        .put(
            &definition("nightly", every_minute()),
            DefinitionSource::Api,
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(stored.name, "nightly");
    assert_eq!(stored.source, DefinitionSource::Api);
    assert_eq!(
        stored.next_fire_at,
        Some(START.plus(Duration::from_secs(60)))
    );
    assert_eq!(stored.spec.tasks.len(), 2);

    db.clock.advance(Duration::from_secs(5));
    let (again, created) = processes
        .put(
            &definition("nightly", every_minute()),
            DefinitionSource::File,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.source, DefinitionSource::File);
    assert_eq!(
        again.next_fire_at, stored.next_fire_at,
        "same schedule, same fire"
    );
    assert_eq!(again.created_at, START);

    let (manual, _) = processes
        .put(&definition("nightly", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    assert_eq!(manual.next_fire_at, None, "manual only");
    processes
        .put(&definition("another", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    let names: Vec<String> = processes
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["another", "nightly"]);
}

async fn pause_and_resume_move_the_next_fire(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", every_minute()), DefinitionSource::Api)
        .await
        .unwrap();
    let paused = processes.set_paused("p", true).await.unwrap();
    assert!(paused.paused);
    db.clock.advance(Duration::from_secs(3600));
    let resumed = processes.set_paused("p", false).await.unwrap();
    assert!(!resumed.paused);
    assert_eq!(
        resumed.next_fire_at,
        Some(START.plus(Duration::from_secs(3660))),
        "the paused hour fires nothing"
    );
}

async fn writes_are_fenced_by_the_lease(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", every_minute()), DefinitionSource::Api)
        .await
        .unwrap();
    let (_old, old_fence) = lead(&db).await;
    let run = new_run(&db, &old_fence, "p", Some(1)).await;
    db.clock.advance(TTL);
    let new = db
        .store
        .leases()
        .try_acquire(LEASE, "other", TTL)
        .await
        .unwrap()
        .expect("expired");
    let new_fence = Fence::from(&new);

    let spec = processes.get("p").await.unwrap().unwrap().spec;
    let stale = NewRun {
        process: "p".into(),
        spec,
        trigger: Trigger::Schedule,
        scheduled_for: Some(herald_core::Timestamp(2)),
        state: RunState::Running,
    };
    assert_eq!(
        processes
            .create_run(&old_fence, &stale, None)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        processes
            .set_next_fire(&old_fence, "p", None)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        processes
            .finish_run(&old_fence, &run.id, RunState::Failed, None, None)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    let detail = processes.run(&run.id).await.unwrap().unwrap();
    let task = detail.tasks[0].clone();
    assert_eq!(
        processes
            .save_task(&old_fence, TaskState::Pending, &task, None)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        processes.run(&run.id).await.unwrap().unwrap().run.state,
        RunState::Running
    );
    assert!(matches!(
        processes
            .finish_run(&new_fence, &run.id, RunState::Succeeded, None, None)
            .await
            .unwrap(),
        Fenced::Done(_)
    ));
}

async fn one_run_per_scheduled_time(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", every_minute()), DefinitionSource::Api)
        .await
        .unwrap();
    let (_lease, fence) = lead(&db).await;
    let first = new_run(&db, &fence, "p", Some(60_000)).await;
    let spec = processes.get("p").await.unwrap().unwrap().spec;
    let again = NewRun {
        process: "p".into(),
        spec,
        trigger: Trigger::Schedule,
        scheduled_for: Some(herald_core::Timestamp(60_000)),
        state: RunState::Running,
    };
    let next = Some(herald_core::Timestamp(120_000));
    assert_eq!(
        processes.create_run(&fence, &again, next).await.unwrap(),
        Fenced::Done(None),
        "the same scheduled time twice"
    );
    assert_eq!(
        processes.get("p").await.unwrap().unwrap().next_fire_at,
        next
    );
    let active = processes.active_runs().await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].run.id, first.id);
    assert_eq!(active[0].tasks.len(), 2);
    assert!(active[0]
        .tasks
        .iter()
        .all(|t| t.state == TaskState::Pending));
}

async fn task_writes_are_conditional_and_attempts_recorded(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    let (_lease, fence) = lead(&db).await;
    let run = new_run(&db, &fence, "p", None).await;
    let mut task = processes.run(&run.id).await.unwrap().unwrap().tasks[0].clone();
    task.state = TaskState::Running;
    task.attempts = 1;
    task.leader_token = Some(fence.token);
    task.started_at = Some(db.clock_now());
    let attempt = Attempt {
        run_id: run.id.clone(),
        task: task.task.clone(),
        attempt: 1,
        state: TaskState::Running,
        leader_token: fence.token,
        started_at: db.clock_now(),
        ended_at: None,
        exit_status: None,
        error: None,
        log_tail: String::new(),
    };
    assert_eq!(
        processes
            .save_task(&fence, TaskState::Pending, &task, Some(&attempt))
            .await
            .unwrap(),
        Fenced::Done(true)
    );
    assert_eq!(
        processes
            .save_task(&fence, TaskState::Pending, &task, Some(&attempt))
            .await
            .unwrap(),
        Fenced::Done(false),
        "the task is no longer pending"
    );
    let huge = format!("{}é-end", "x".repeat(MAX_LOG_TAIL_BYTES * 2));
    let mut done = task.clone();
    done.state = TaskState::Failed;
    done.ended_at = Some(db.clock_now());
    let finished = Attempt {
        state: TaskState::Failed,
        ended_at: Some(db.clock_now()),
        exit_status: Some(3),
        error: Some("exit status 3".into()),
        log_tail: huge,
        ..attempt
    };
    assert_eq!(
        processes
            .save_task(&fence, TaskState::Running, &done, Some(&finished))
            .await
            .unwrap(),
        Fenced::Done(true)
    );
    let detail = processes.run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 1);
    let kept = &detail.attempts[0];
    assert_eq!(kept.exit_status, Some(3));
    assert!(kept.log_tail.len() <= MAX_LOG_TAIL_BYTES);
    assert!(kept.log_tail.ends_with("é-end"), "the tail is kept");
    assert_eq!(
        detail.tasks.iter().find(|t| t.task == "a").unwrap().state,
        TaskState::Failed
    );
}

async fn explicit_success_needs_the_run_token(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    let (_lease, fence) = lead(&db).await;
    let run = new_run(&db, &fence, "p", None).await;
    let mut b = processes.run(&run.id).await.unwrap().unwrap().tasks[1].clone();
    assert_eq!(b.task, "b");
    assert!(
        matches!(
            processes.report_success(&run.id, "b", &run.token).await,
            Err(StoreError::Conflict { .. })
        ),
        "pending tasks cannot succeed"
    );
    b.state = TaskState::AwaitingSuccess;
    b.attempts = 1;
    assert_eq!(
        processes
            .save_task(&fence, TaskState::Pending, &b, None)
            .await
            .unwrap(),
        Fenced::Done(true)
    );
    for forged in ["", "wrong", &run.token[1..]] {
        assert!(matches!(
            processes.report_success(&run.id, "b", forged).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(
        matches!(
            processes.report_success(&run.id, "a", &run.token).await,
            Err(StoreError::Conflict { .. })
        ),
        "a does not report its own success"
    );
    assert!(matches!(
        processes.report_success(&run.id, "zz", &run.token).await,
        Err(StoreError::NotFound { .. })
    ));
    let ok = processes
        .report_success(&run.id, "b", &run.token)
        .await
        .unwrap();
    assert_eq!(ok.state, TaskState::Succeeded);
    assert!(
        matches!(
            processes.report_success(&run.id, "b", &run.token).await,
            Err(StoreError::Conflict { .. })
        ),
        "twice"
    );
    assert_eq!(
        processes
            .save_task(&fence, TaskState::AwaitingSuccess, &b, None)
            .await
            .unwrap(),
        Fenced::Done(false),
        "the scheduler does not overwrite a reported success"
    );
}

async fn cancel_ends_a_queued_run_and_marks_a_running_one(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    let queued = processes.trigger("p").await.unwrap();
    assert_eq!(queued.state, RunState::Queued);
    assert_eq!(queued.trigger, Trigger::Manual);
    let cancelled = processes.request_cancel(&queued.id).await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    let detail = processes.run(&queued.id).await.unwrap().unwrap();
    assert!(detail.tasks.iter().all(|t| t.state == TaskState::Cancelled));
    assert!(matches!(
        processes.request_cancel(&queued.id).await,
        Err(StoreError::Conflict { .. })
    ));

    let (_lease, fence) = lead(&db).await;
    let running = new_run(&db, &fence, "p", None).await;
    let marked = processes.request_cancel(&running.id).await.unwrap();
    assert_eq!(marked.state, RunState::Running);
    assert!(marked.cancel_requested);
}

async fn finished_runs_count_failures_in_a_row(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(
            &definition(
                "p",
                serde_json::json!({"kind": "continuous", "interval": "30s"}),
            ),
            DefinitionSource::Api,
        )
        .await
        .unwrap();
    let (_lease, fence) = lead(&db).await;
    let mut seen = Vec::new();
    for state in [RunState::Failed, RunState::Failed, RunState::Succeeded] {
        let run = new_run(&db, &fence, "p", None).await;
        let next = Some(db.clock_now().plus(Duration::from_secs(30)));
        let Fenced::Done(finished) = processes
            .finish_run(&fence, &run.id, state, Some("boom"), next)
            .await
            .unwrap()
        else {
            panic!("lease lost");
        };
        seen.push((finished.previous, finished.consecutive_failures));
        let detail = processes.run(&run.id).await.unwrap().unwrap();
        assert_eq!(detail.run.state, state);
        assert_eq!(detail.run.ended_at, Some(db.clock_now()));
        assert!(
            detail.tasks.iter().all(|t| t.state == TaskState::Cancelled),
            "open tasks end with the run"
        );
        assert!(matches!(
            processes
                .finish_run(&fence, &run.id, state, None, None)
                .await,
            Err(StoreError::Conflict { .. })
        ));
    }
    assert_eq!(
        seen,
        [
            (None, 1),
            (Some(RunState::Failed), 2),
            (Some(RunState::Failed), 0)
        ]
    );
    let process = processes.get("p").await.unwrap().unwrap();
    assert_eq!(process.last_run_state, Some(RunState::Succeeded));
    assert_eq!(
        process.next_fire_at,
        Some(START.plus(Duration::from_secs(30)))
    );
    assert!(processes.active_runs().await.unwrap().is_empty());

    db.clock.advance(Duration::from_secs(3600));
    assert_eq!(processes.prune_runs(db.clock_now()).await.unwrap(), 3);
}

async fn runs_are_listed_newest_first_in_pages(db: TestDb) {
    let processes = db.store.processes();
    processes
        .put(&definition("p", manual_only()), DefinitionSource::Api)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(processes.trigger("p").await.unwrap().id);
        db.clock.advance(Duration::from_millis(2));
    }
    ids.reverse();
    let first = processes.runs("p", PageRequest::first(2)).await.unwrap();
    let mut listed: Vec<String> = first.items.iter().map(|r| r.id.clone()).collect();
    let mut cursor = first.next_cursor;
    while let Some(after) = cursor {
        let page = processes
            .runs(
                "p",
                PageRequest {
                    after: Some(after),
                    limit: 2,
                },
            )
            .await
            .unwrap();
        listed.extend(page.items.iter().map(|r| r.id.clone()));
        cursor = page.next_cursor;
    }
    assert_eq!(listed, ids);
}

async fn unknown_names_are_not_found(db: TestDb) {
    let processes = db.store.processes();
    assert_eq!(processes.get("nope").await.unwrap(), None);
    assert!(matches!(
        processes.trigger("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        processes.set_paused("nope", true).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        processes.runs("nope", PageRequest::first(1)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        processes.request_cancel("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(processes.run("nope").await.unwrap(), None);
}
