//! Jobs for operators: every process definition with its schedule and
//! state, a process's recent runs, and trigger / pause / resume (admins).
//! Everything goes through the store's `ProcessStore`, as the API does.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use herald_store::page::PageRequest;
use herald_store::processes::{Attempt, Run, RunDetail, StoredProcess};
use serde::Serialize;

use crate::auth::{encode, Signed};
use crate::time::Zone;
use crate::{WebError, WebState};

/// Runs a process's page shows.
const RECENT_RUNS: u32 = 25;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/ui/jobs", get(list))
        .route("/ui/jobs/{name}", get(show))
        .route("/ui/jobs/{name}/trigger", post(trigger))
        .route("/ui/jobs/{name}/pause", post(pause))
        .route("/ui/jobs/{name}/resume", post(resume))
        .route("/ui/runs/{id}", get(run_page))
}

/// A value's serialized name (`"running"`), or its compact JSON when it is
/// not a plain string (a schedule).
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "–".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// What the jobs page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct JobsPage {
    pub rows: Vec<JobRow>,
    pub zone: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct JobRow {
    pub name: String,
    pub url: String,
    pub description: String,
    pub schedule: String,
    pub paused: bool,
    pub next_fire_at: String,
    pub last_run_state: String,
    pub consecutive_failures: u32,
    pub tasks: usize,
}

pub fn job_rows(processes: &[StoredProcess], zone: Zone) -> Vec<JobRow> {
    processes
        .iter()
        .map(|p| JobRow {
            name: p.name.clone(),
            url: format!("/ui/jobs/{}", encode(&p.name)),
            description: p.spec.description.clone(),
            schedule: label(&p.spec.schedule),
            paused: p.paused,
            next_fire_at: p
                .next_fire_at
                .map_or_else(|| "–".into(), |t| zone.format(t)),
            last_run_state: p.last_run_state.as_ref().map_or_else(|| "–".into(), label),
            consecutive_failures: p.consecutive_failures,
            tasks: p.spec.tasks.len(),
        })
        .collect()
}

/// What a process's page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct JobPage {
    pub job: JobRow,
    pub runs: Vec<RunRow>,
    pub notice: Option<String>,
    pub zone: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub trigger: String,
    pub state: String,
    pub created_at: String,
    pub started_at: String,
    pub ended_at: String,
    pub error: String,
}

/// What a run's page is given: the run, then every attempt of every task
/// with its exit status, error and captured output tail.
#[derive(Debug, Serialize)]
pub struct RunPage {
    pub process: String,
    pub process_url: String,
    pub run: RunRow,
    pub attempts: Vec<AttemptRow>,
    pub zone: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AttemptRow {
    pub task: String,
    pub attempt: u32,
    pub state: String,
    pub started_at: String,
    pub ended_at: String,
    pub exit_status: String,
    pub error: String,
    pub log_tail: String,
}

pub fn run_page_data(detail: &RunDetail, zone: Zone) -> RunPage {
    let attempt_row = |a: &Attempt| AttemptRow {
        task: a.task.clone(),
        attempt: a.attempt,
        state: label(&a.state),
        started_at: zone.format(a.started_at),
        ended_at: a.ended_at.map_or_else(|| "–".into(), |t| zone.format(t)),
        exit_status: a.exit_status.map_or_else(|| "–".into(), |s| s.to_string()),
        error: a.error.clone().unwrap_or_default(),
        log_tail: a.log_tail.clone(),
    };
    RunPage {
        process: detail.run.process.clone(),
        process_url: format!("/ui/jobs/{}", encode(&detail.run.process)),
        run: run_rows(std::slice::from_ref(&detail.run), zone).remove(0),
        attempts: detail.attempts.iter().map(attempt_row).collect(),
        zone: zone.name(),
    }
}

pub fn run_rows(runs: &[Run], zone: Zone) -> Vec<RunRow> {
    let time = |t: Option<herald_core::Timestamp>| t.map_or_else(|| "–".into(), |t| zone.format(t));
    runs.iter()
        .map(|r| RunRow {
            id: r.id.clone(),
            trigger: label(&r.trigger),
            state: label(&r.state),
            created_at: zone.format(r.created_at),
            started_at: time(r.started_at),
            ended_at: time(r.ended_at),
            error: r.error.clone().unwrap_or_default(),
        })
        .collect()
}

async fn list(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
) -> Result<Response, WebError> {
    let processes = state.app.store.processes().list().await?;
    let zone = signed.zone();
    let page = JobsPage {
        rows: job_rows(&processes, zone),
        zone: zone.name(),
    };
    Ok(state
        .page("jobs/list.html", &signed.layout("jobs", "Jobs"), &page)?
        .into_response())
}

async fn show(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
    query: Result<
        axum::extract::Query<std::collections::HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, WebError> {
    let store = state.app.store.processes();
    let process = store
        .get(&name)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no process {name}.")))?;
    let runs = store.runs(&name, PageRequest::first(RECENT_RUNS)).await?;
    let zone = signed.zone();
    let notice = query
        .ok()
        .and_then(|q| q.get("done").cloned())
        .and_then(|done| {
            Some(match done.as_str() {
                "trigger" => "A run was queued; the scheduler starts it shortly.",
                "pause" => "Paused: no scheduled runs until it is resumed.",
                "resume" => "Resumed.",
                _ => return None,
            })
        });
    let page = JobPage {
        job: job_rows(std::slice::from_ref(&process), zone).remove(0),
        runs: run_rows(&runs.items, zone),
        notice: notice.map(str::to_owned),
        zone: zone.name(),
    };
    let mut layout = signed.layout("jobs", name);
    layout.refresh = page
        .runs
        .iter()
        .any(|r| r.state == "queued" || r.state == "running")
        .then_some(3);
    Ok(state
        .page("jobs/show.html", &layout, &page)?
        .into_response())
}

async fn run_page(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let detail = state
        .app
        .store
        .processes()
        .run(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no run {id}.")))?;
    let page = run_page_data(&detail, signed.zone());
    let mut layout = signed.layout("jobs", format!("Run of {}", page.process));
    layout.refresh = (page.run.state == "queued" || page.run.state == "running").then_some(3);
    Ok(state.page("jobs/run.html", &layout, &page)?.into_response())
}

fn back(name: &str, done: &str) -> Response {
    Redirect::to(&format!("/ui/jobs/{}?done={done}", encode(name))).into_response()
}

async fn trigger(
    State(state): State<WebState>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    state.app.store.processes().trigger(&name).await?;
    Ok(back(&name, "trigger"))
}

async fn pause(
    State(state): State<WebState>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    state.app.store.processes().set_paused(&name, true).await?;
    Ok(back(&name, "pause"))
}

async fn resume(
    State(state): State<WebState>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    state.app.store.processes().set_paused(&name, false).await?;
    Ok(back(&name, "resume"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_serialized_names_or_compact_json() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum State {
            Running,
        }
        #[derive(Serialize)]
        struct Every {
            every: &'static str,
        }
        assert_eq!(label(&State::Running), "running");
        assert_eq!(label(&Every { every: "5m" }), r#"{"every":"5m"}"#);
        assert_eq!(label(&Option::<u8>::None), "–");
    }

    #[test]
    fn a_run_page_lists_every_attempt_with_its_exit_status_error_and_output() {
        use herald_core::schedule::{RunState, TaskState};
        use herald_core::Timestamp;
        use herald_store::processes::Trigger;

        let spec = serde_json::from_value(serde_json::json!({
            "tasks": [{ "name": "export", "run": { "kind": "shell", "command": ["/opt/export.sh"] } }]
        }))
        .unwrap();
        let attempt = |n: u32, state, exit: Option<i64>, error: Option<&str>, log: &str| Attempt {
            run_id: "r-1".into(),
            task: "export".into(),
            attempt: n,
            state,
            leader_token: 1,
            started_at: Timestamp(1_700_000_000_000),
            ended_at: Some(Timestamp(1_700_000_060_000)),
            exit_status: exit,
            error: error.map(str::to_owned),
            log_tail: log.into(),
        };
        let detail = RunDetail {
            run: Run {
                id: "r-1".into(),
                process: "nightly-export".into(),
                spec,
                trigger: Trigger::Manual,
                scheduled_for: None,
                state: RunState::Succeeded,
                cancel_requested: false,
                error: None,
                created_at: Timestamp(1_700_000_000_000),
                started_at: Some(Timestamp(1_700_000_000_000)),
                ended_at: Some(Timestamp(1_700_000_120_000)),
                token: "secret".into(),
            },
            tasks: Vec::new(),
            attempts: vec![
                attempt(
                    1,
                    TaskState::Failed,
                    Some(3),
                    Some("exited with status 3"),
                    "disk full\n",
                ),
                attempt(2, TaskState::Succeeded, Some(0), None, ""),
            ],
        };
        let page = run_page_data(&detail, Zone::utc());
        assert_eq!(page.process_url, "/ui/jobs/nightly-export");
        assert_eq!(page.run.state, "succeeded");
        assert_eq!(page.attempts.len(), 2);
        assert_eq!(page.attempts[0].state, "failed");
        assert_eq!(page.attempts[0].exit_status, "3");
        assert_eq!(page.attempts[0].error, "exited with status 3");
        assert_eq!(page.attempts[0].log_tail, "disk full\n");
        assert_eq!(page.attempts[1].exit_status, "0");
        assert_eq!(page.attempts[1].error, "");
    }
}
