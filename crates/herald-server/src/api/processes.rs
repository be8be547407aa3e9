//! The scheduler's processes (`/api/processes`) and their runs
//! (`/api/runs`).
//!
//! Reads need any valid key; changing a process, triggering, pausing,
//! resuming and cancelling need the admin scope. A definition that is wrong
//! (a bad cron expression or time zone, a cycle in the tasks, a dependency
//! on an unknown task, ...) is a 422 whose `field` names the part
//! (`schedule.expression`, `tasks[2].depends_on[0].task`). The active
//! scheduler picks up triggered and cancelled runs at its next tick.
//!
//! A task that must report its own success calls
//! `POST /api/runs/{run}/tasks/{task}/success` with the run's token in the
//! `Herald-Run-Token` header (shell tasks get it as `$HERALD_RUN_TOKEN`,
//! HTTP tasks as that same header); it needs no API key.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_core::schedule::{ProcessDefinition, ProcessSpec};
use herald_store::processes::{Attempt, DefinitionSource, Run, RunDetail, StoredProcess, TaskRun};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::catalog::{query, ApiTime, PageQuery};
use crate::api::ErrorResponse;
use crate::auth::{AdminAccess, ReadAccess};
use crate::extract::parse_json;
use crate::{ApiError, AppState};

/// The header a task shows its run's token in.
pub const RUN_TOKEN_HEADER: &str = "herald-run-token";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_processes))
        .routes(routes!(get_process, put_process))
        .routes(routes!(list_runs))
        .routes(routes!(trigger))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(report_success))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessResponse {
    pub name: String,
    /// The definition, as written (see the process file format).
    #[schema(value_type = Object)]
    pub definition: ProcessSpec,
    /// `api` or `file`: who wrote the definition last.
    pub source: String,
    pub paused: bool,
    pub next_fire_at: Option<ApiTime>,
    pub consecutive_failures: u32,
    pub last_run_state: Option<String>,
    pub created_at: ApiTime,
    pub updated_at: ApiTime,
}

impl From<StoredProcess> for ProcessResponse {
    fn from(p: StoredProcess) -> Self {
        Self {
            name: p.name,
            definition: p.spec,
            source: match p.source {
                DefinitionSource::Api => "api",
                DefinitionSource::File => "file",
            }
            .to_owned(),
            paused: p.paused,
            next_fire_at: p.next_fire_at.map(ApiTime),
            consecutive_failures: p.consecutive_failures,
            last_run_state: p.last_run_state.map(|s| s.to_string()),
            created_at: ApiTime(p.created_at),
            updated_at: ApiTime(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessList {
    pub items: Vec<ProcessResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunResponse {
    pub id: String,
    pub process: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub scheduled_for: Option<ApiTime>,
    /// queued, running, succeeded, failed or cancelled.
    pub state: String,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: ApiTime,
    pub started_at: Option<ApiTime>,
    pub ended_at: Option<ApiTime>,
}

impl From<Run> for RunResponse {
    fn from(r: Run) -> Self {
        Self {
            trigger: match r.trigger {
                herald_store::processes::Trigger::Schedule => "schedule",
                herald_store::processes::Trigger::Manual => "manual",
            }
            .to_owned(),
            state: r.state.to_string(),
            id: r.id,
            process: r.process,
            scheduled_for: r.scheduled_for.map(ApiTime),
            cancel_requested: r.cancel_requested,
            error: r.error,
            created_at: ApiTime(r.created_at),
            started_at: r.started_at.map(ApiTime),
            ended_at: r.ended_at.map(ApiTime),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResponse {
    pub task: String,
    /// pending, running, retrying, awaiting_success, succeeded, failed,
    /// skipped or cancelled.
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: Option<ApiTime>,
    pub deadline_at: Option<ApiTime>,
    pub started_at: Option<ApiTime>,
    pub ended_at: Option<ApiTime>,
}

impl From<TaskRun> for TaskResponse {
    fn from(t: TaskRun) -> Self {
        Self {
            task: t.task,
            state: t.state.to_string(),
            attempts: t.attempts,
            next_attempt_at: t.next_attempt_at.map(ApiTime),
            deadline_at: t.deadline_at.map(ApiTime),
            started_at: t.started_at.map(ApiTime),
            ended_at: t.ended_at.map(ApiTime),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptResponse {
    pub task: String,
    pub attempt: u32,
    pub state: String,
    pub started_at: ApiTime,
    pub ended_at: Option<ApiTime>,
    /// The exit status of a shell task, the HTTP status of an HTTP task.
    pub exit_status: Option<i64>,
    pub error: Option<String>,
    /// The end of the attempt's output (at most 64 KiB).
    pub log_tail: String,
}

impl From<Attempt> for AttemptResponse {
    fn from(a: Attempt) -> Self {
        Self {
            task: a.task,
            attempt: a.attempt,
            state: a.state.to_string(),
            started_at: ApiTime(a.started_at),
            ended_at: a.ended_at.map(ApiTime),
            exit_status: a.exit_status,
            error: a.error,
            log_tail: a.log_tail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetailResponse {
    #[serde(flatten)]
    pub run: RunResponse,
    pub tasks: Vec<TaskResponse>,
    pub attempts: Vec<AttemptResponse>,
}

impl From<RunDetail> for RunDetailResponse {
    fn from(d: RunDetail) -> Self {
        Self {
            run: d.run.into(),
            tasks: d.tasks.into_iter().map(Into::into).collect(),
            attempts: d.attempts.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskSuccessResponse {
    pub run_id: String,
    pub task: String,
    pub state: String,
}

fn process_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("process {name:?} not found"))
}

/// Every process, by name.
#[utoipa::path(get, path = "/api/processes", tag = "processes",
    responses((status = 200, body = ProcessList), (status = 401, body = ErrorResponse)))]
async fn list_processes(
    _key: ReadAccess,
    State(state): State<AppState>,
) -> Result<Json<ProcessList>, ApiError> {
    let items = state.store.processes().list().await?;
    Ok(Json(ProcessList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(get, path = "/api/processes/{name}", tag = "processes",
    params(("name" = String, Path)),
    responses((status = 200, body = ProcessResponse), (status = 404, body = ErrorResponse)))]
async fn get_process(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProcessResponse>, ApiError> {
    let process = state.store.processes().get(&name).await?;
    Ok(Json(
        process.ok_or_else(|| process_not_found(&name))?.into(),
    ))
}

/// Creates or replaces a process. The body is the definition: `schedule`,
/// `overlap`, `paused`, `notify_when`, `notify` and `tasks`.
#[utoipa::path(put, path = "/api/processes/{name}", tag = "processes",
    params(("name" = String, Path)),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 201, description = "created", body = ProcessResponse),
        (status = 200, description = "replaced", body = ProcessResponse),
        (status = 422, description = "a field is wrong; `field` names it", body = ErrorResponse),
    ))]
async fn put_process(
    _key: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ProcessResponse>), ApiError> {
    require_json(&headers)?;
    let spec: ProcessSpec = parse_json(&body)?;
    let definition = ProcessDefinition::parse(&name, spec)
        .map_err(|e| ApiError::invalid_field(e.field, e.message))?;
    let (process, created) = state
        .store
        .processes()
        .put(&definition, DefinitionSource::Api)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(process.into())))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim() == "application/json");
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ))
    }
}

/// A process's runs, newest first.
#[utoipa::path(get, path = "/api/processes/{name}/runs", tag = "processes",
    params(("name" = String, Path), PageQuery),
    responses((status = 200, body = RunPage), (status = 404, body = ErrorResponse)))]
async fn list_runs(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let page = query(page)?;
    let runs = state.store.processes().runs(&name, page.request()).await?;
    Ok(Json(RunPage {
        items: runs.items.into_iter().map(Into::into).collect(),
        next_cursor: runs.next_cursor,
    }))
}

/// Queues a manual run; the active scheduler starts it at its next tick
/// (after the running one, if any, unless `overlap` is `terminate`).
#[utoipa::path(post, path = "/api/processes/{name}/trigger", tag = "processes",
    params(("name" = String, Path)),
    responses((status = 202, body = RunResponse), (status = 404, body = ErrorResponse)))]
async fn trigger(
    _key: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RunResponse>), ApiError> {
    let run = state.store.processes().trigger(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

/// Stops scheduled runs; runs in flight go on, manual triggers still work.
#[utoipa::path(post, path = "/api/processes/{name}/pause", tag = "processes",
    params(("name" = String, Path)),
    responses((status = 200, body = ProcessResponse), (status = 404, body = ErrorResponse)))]
async fn pause(
    _key: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProcessResponse>, ApiError> {
    Ok(Json(
        state
            .store
            .processes()
            .set_paused(&name, true)
            .await?
            .into(),
    ))
}

/// Schedules again from now: times passed while paused do not run.
#[utoipa::path(post, path = "/api/processes/{name}/resume", tag = "processes",
    params(("name" = String, Path)),
    responses((status = 200, body = ProcessResponse), (status = 404, body = ErrorResponse)))]
async fn resume(
    _key: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProcessResponse>, ApiError> {
    Ok(Json(
        state
            .store
            .processes()
            .set_paused(&name, false)
            .await?
            .into(),
    ))
}

/// A run with its tasks' states and every attempt's log tail.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "processes",
    params(("id" = String, Path)),
    responses((status = 200, body = RunDetailResponse), (status = 404, body = ErrorResponse)))]
async fn get_run(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetailResponse>, ApiError> {
    let run = state.store.processes().run(&id).await?;
    Ok(Json(
        run.ok_or_else(|| ApiError::not_found(format!("run {id} not found")))?
            .into(),
    ))
}

/// Cancels a run: a queued one at once, a running one at the scheduler's
/// next tick (its running tasks are stopped).
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "processes",
    params(("id" = String, Path)),
    responses((status = 202, body = RunResponse), (status = 404, body = ErrorResponse),
              (status = 409, description = "the run has ended", body = ErrorResponse)))]
async fn cancel_run(
    _key: AdminAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunResponse>), ApiError> {
    let run = state.store.processes().request_cancel(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

/// A task reports its own success (tasks with `require_explicit_success`),
/// showing its run's token in the `Herald-Run-Token` header.
#[utoipa::path(post, path = "/api/runs/{run}/tasks/{task}/success", tag = "processes",
    params(("run" = String, Path), ("task" = String, Path),
           ("Herald-Run-Token" = String, Header, description = "the run's token")),
    security(()),
    responses((status = 200, body = TaskSuccessResponse),
              (status = 401, description = "no token", body = ErrorResponse),
              (status = 404, description = "no such run and task for this token", body = ErrorResponse),
              (status = 409, description = "the task is not running", body = ErrorResponse)))]
async fn report_success(
    State(state): State<AppState>,
    Path((run, task)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<TaskSuccessResponse>, ApiError> {
    let token = headers
        .get(RUN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "show the run's token in the Herald-Run-Token header",
            )
        })?;
    let done = state
        .store
        .processes()
        .report_success(&run, &task, token)
        .await?;
    Ok(Json(TaskSuccessResponse {
        run_id: done.run_id,
        task: done.task,
        state: done.state.to_string(),
    }))
}
