//! Jobs for operators: every process definition with its schedule and
//! state, a process's recent runs, and trigger / pause / resume (admins).
//! Everything goes through the store's `ProcessStore`, as the API does.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use herald_store::page::PageRequest;
use herald_store::processes::{Run, StoredProcess};
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
}
