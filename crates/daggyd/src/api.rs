//! daggyd's REST API (`/ready`, `/v1/dagruns`, `/v1/dagrun/...`) and DaggyR's
//! (`/api/v1/runs/...`). Run ids are Daggy's integers; states are Daggy's names. Every
//! error is a 4xx or 5xx with a JSON body: `{"error": ...}` (and the problems of a spec).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use trellis_server::auth::{self, Role};

use crate::api_list::{Filter, Summary};
use crate::daemon::{Daemon, Refused};
use crate::prepare::Problem;
use crate::record::State;
use crate::view::Shown;

/// The largest spec accepted (a 10 000-task fan-out is about 1 MiB).
pub const BODY_LIMIT: usize = 8 << 20;

type App = Arc<Daemon>;

/// An error answer: status and `{"error": message}`.
pub struct ApiError(StatusCode, Value);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, json!({"error": message.into()}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        tracing::error!("daggyd: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        match r {
            Refused::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such run"),
            Refused::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            Refused::Failed(e) => e.into(),
        }
    }
}

type Answer = Result<Response, ApiError>;

/// Who may call: the auth settings, and whether the daemon listens on loopback only.
pub struct Guard {
    pub settings: auth::Settings,
    pub loopback_only: bool,
}

pub fn router(daemon: App, guard: Arc<Guard>, web_threads: usize) -> Router {
    let limit = Arc::new(Semaphore::new(web_threads));
    Router::new()
        .route("/ready", get(ready))
        .route("/v1/dagruns", get(list_v1))
        .route("/v1/dagrun", post(submit_v1))
        .route("/v1/dagrun/", post(submit_v1))
        .route("/v1/dagrun/validate", post(validate))
        .route("/v1/dagrun/{run}", get(full_v1).delete(kill))
        .route("/v1/dagrun/{run}/state", get(state_v1))
        .route("/v1/dagrun/{run}/state/{state}", patch(set_state))
        .route("/v1/dagrun/{run}/tasks", get(tasks_v1))
        .route("/v1/dagrun/{run}/task/{task}", get(task))
        .route("/v1/dagrun/{run}/task/{task}/state", get(task_state))
        .route("/api/v1/runs", post(submit_r).get(list_r))
        .route("/api/v1/runs/{run}", get(tasks_r).delete(kill).patch(retry))
        .route("/api/v1/runs/{run}/state", get(state_r))
        .route("/api/v1/runs/{run}/full", get(full_r))
        .route("/api/v1/runs/{run}/tasks", get(tasks_r))
        .route("/api/v1/runs/{run}/tasks/{task}", get(task))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(guard, authorize))
        .layer(axum::middleware::from_fn_with_state(limit, bounded))
        .with_state(daemon)
}

/// At most `web-threads` requests at once; more wait their turn.
async fn bounded(
    AxState(limit): AxState<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = limit.acquire().await else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    };
    next.run(request).await
}

/// With auth on, reading needs a viewer and changing needs an operator; `/ready` is open.
async fn authorize(AxState(guard): AxState<Arc<Guard>>, request: Request, next: Next) -> Response {
    let settings = &guard.settings;
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    // A page on another site must not drive the daemon through a browser: Daggy's API has
    // no auth, and a posted spec runs commands. Scripts (curl) send no such headers.
    if changes && auth::cross_site(request.headers()) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    if !settings.enabled() && guard.loopback_only && !auth::loopback_host(request.headers()) {
        // Auth off means loopback only: a name pointed at 127.0.0.1 (DNS rebinding) is refused.
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "with authentication off, daggyd answers only to localhost names",
        )
        .into_response();
    }
    if !settings.enabled() || request.uri().path() == "/ready" {
        return next.run(request).await;
    }
    let needed = match *request.method() {
        Method::GET | Method::HEAD => Role::Viewer,
        _ => Role::Operator,
    };
    match auth::authenticate_headers(settings, request.headers()) {
        None => ApiError::new(StatusCode::UNAUTHORIZED, "authentication required").into_response(),
        Some(who) if who.role < needed => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} has role {}; this needs {}",
                who.name,
                who.role.as_str(),
                needed.as_str()
            ),
        )
        .into_response(),
        Some(_) => next.run(request).await,
    }
}

async fn ready() -> Json<Value> {
    Json(json!({"msg": "Ya like DAGs?"}))
}

fn body(bytes: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let bytes = bytes.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the spec is larger than {} MiB", BODY_LIMIT >> 20)
        } else {
            e.body_text()
        };
        ApiError::new(status, message)
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

fn invalid(problems: Vec<Problem>) -> ApiError {
    let first = problems
        .first()
        .map(|p| p.message.clone())
        .unwrap_or_default();
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({"valid": false, "error": first, "errors": problems}),
    )
}

async fn accept(daemon: &App, bytes: Result<Bytes, BytesRejection>) -> Result<u64, ApiError> {
    let text = body(bytes)?;
    let prepared = daemon.validate(&text).map_err(invalid)?;
    Ok(daemon.submit(prepared).await?)
}

async fn submit_v1(AxState(d): AxState<App>, bytes: Result<Bytes, BytesRejection>) -> Answer {
    let run = accept(&d, bytes).await?;
    Ok(Json(json!({"runID": run})).into_response())
}

async fn submit_r(AxState(d): AxState<App>, bytes: Result<Bytes, BytesRejection>) -> Answer {
    let run = accept(&d, bytes).await?;
    Ok(Json(json!({"run_id": run})).into_response())
}

async fn validate(AxState(d): AxState<App>, bytes: Result<Bytes, BytesRejection>) -> Answer {
    let text = body(bytes)?;
    let prepared = d.validate(&text).map_err(invalid)?;
    if prepared.warnings.is_empty() {
        return Ok(Json(json!({"valid": true})).into_response());
    }
    Ok(Json(json!({"valid": true, "warnings": prepared.warnings})).into_response())
}

/// A run id from the path: Daggy's ids are whole numbers.
fn run_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run `{text}`: run ids are whole numbers"),
        )
    })
}

async fn shown(d: &App, run: &str) -> Result<(u64, Shown), ApiError> {
    let run = run_id(run)?;
    match d.show(run).await? {
        Some(shown) => Ok((run, shown)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run {run}"),
        )),
    }
}

async fn kill(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let run = run_id(&run)?;
    let state = d.kill(run).await?;
    Ok(Json(json!({"runID": run, "run_id": run, "state": state})).into_response())
}

async fn retry(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let run = run_id(&run)?;
    d.retry(run).await?;
    Ok(Json(json!({"run_id": run})).into_response())
}

/// `PATCH /v1/dagrun/{run}/state/{state}`: `QUEUED` starts an ended run again (what
/// completed stays), `KILLED` kills it.
async fn set_state(AxState(d): AxState<App>, Path((run, state)): Path<(String, String)>) -> Answer {
    let run = run_id(&run)?;
    match State::parse(&state) {
        Some(State::Queued) => d.retry(run).await?,
        Some(State::Killed) => {
            d.kill(run).await?;
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("a run can be set to QUEUED (retry) or KILLED, not `{state}`"),
            ));
        }
    }
    Ok(Json(json!({"runID": run})).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
    tags: Option<String>,
    states: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
}

async fn listed(d: &App, q: &ListQuery) -> Result<Vec<Summary>, ApiError> {
    let filter = Filter::parse(
        q.tags.as_deref(),
        q.states.as_deref(),
        q.start_time.as_deref(),
        q.end_time.as_deref(),
    )
    .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let mut out = Vec::new();
    for entry in d.book.list().await? {
        let summary = d.summary(&entry).await?;
        if filter.keeps(&summary) {
            out.push(summary);
        }
    }
    Ok(out)
}

/// `GET /v1/dagruns`: runs not yet ended; `?all=1`: every run.
async fn list_v1(AxState(d): AxState<App>, Query(q): Query<ListQuery>) -> Answer {
    let all = q.all.as_deref().is_some_and(|a| a != "0" && a != "false");
    let runs = listed(&d, &q).await?;
    let items: Vec<Value> = runs
        .iter()
        .filter(|s| all || !s.state.is_final())
        .map(|s| {
            json!({
                "runID": s.run, "name": s.dag, "tags": s.tags, "state": s.state,
                "startTime": s.started, "lastUpdate": s.updated, "taskCounts": s.task_counts,
            })
        })
        .collect();
    Ok(Json(items).into_response())
}

/// `GET /api/v1/runs` with DaggyR's filters.
async fn list_r(AxState(d): AxState<App>, Query(q): Query<ListQuery>) -> Answer {
    let runs = listed(&d, &q).await?;
    let items: Vec<Value> = runs
        .iter()
        .map(|s| {
            json!({
                "run_id": s.run, "tags": s.tags, "state": s.state, "start_time": s.started,
                "last_update_time": s.updated, "task_states": s.task_counts,
            })
        })
        .collect();
    Ok(Json(items).into_response())
}

async fn full_v1(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (run, s) = shown(&d, &run).await?;
    let tasks = s.tasks();
    let pick = |f: &dyn Fn(&str, &crate::record::RememberedTask) -> Value| -> serde_json::Map<String, Value> {
        tasks.iter().map(|(n, t)| (n.clone(), f(n, t))).collect()
    };
    Ok(Json(json!({
        "runID": run, "name": s.story.dag, "trellisRunID": s.story.run_id,
        "tags": s.story.tags, "parameters": s.parameters(), "state": s.state(),
        "startTime": s.started, "lastUpdate": s.updated,
        "tasks": pick(&|n, _| s.task_spec(n)),
        "taskStates": pick(&|_, t| json!(t.state.unwrap_or(State::Queued))),
        "taskAttempts": pick(&|_, t| json!(t.attempts)),
        "taskStateChanges": pick(&|_, t| json!(t.state_changes)),
        "stateChanges": s.story.state_changes,
    }))
    .into_response())
}

async fn full_r(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (_, s) = shown(&d, &run).await?;
    let tasks: serde_json::Map<String, Value> = s
        .tasks()
        .iter()
        .map(|(n, t)| (n.clone(), task_record(&s, n, t)))
        .collect();
    Ok(Json(json!({
        "tags": s.story.tags, "parameters": s.parameters(), "tasks": tasks,
        "state_changes": s.story.state_changes,
    }))
    .into_response())
}

fn task_record(s: &Shown, name: &str, t: &crate::record::RememberedTask) -> Value {
    json!({
        "task": s.task_spec(name), "state": t.state.unwrap_or(State::Queued),
        "attempts": t.attempts, "state_changes": t.state_changes,
    })
}

async fn state_v1(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (run, s) = shown(&d, &run).await?;
    Ok(Json(json!({"runID": run, "state": s.state()})).into_response())
}

async fn state_r(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (_, s) = shown(&d, &run).await?;
    Ok(Json(json!({"datetime": s.updated, "state": s.state()})).into_response())
}

async fn tasks_v1(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (_, s) = shown(&d, &run).await?;
    let states: serde_json::Map<String, Value> = s
        .tasks()
        .iter()
        .map(|(n, t)| (n.clone(), json!(t.state.unwrap_or(State::Queued))))
        .collect();
    Ok(Json(states).into_response())
}

async fn tasks_r(AxState(d): AxState<App>, Path(run): Path<String>) -> Answer {
    let (_, s) = shown(&d, &run).await?;
    let items: Vec<Value> = s
        .tasks()
        .iter()
        .map(|(n, t)| json!({"task_id": n, "state": t.state.unwrap_or(State::Queued)}))
        .collect();
    Ok(Json(items).into_response())
}

/// A task of a run, or a 404 naming both.
async fn task_of(
    d: &App,
    run: &str,
    name: &str,
) -> Result<(Shown, crate::record::RememberedTask), ApiError> {
    let (run, s) = shown(d, run).await?;
    let task = s.tasks().get(name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run {run} has no task `{name}`"),
        )
    })?;
    Ok((s, task))
}

async fn task(AxState(d): AxState<App>, Path((run, name)): Path<(String, String)>) -> Answer {
    let (s, t) = task_of(&d, &run, &name).await?;
    Ok(Json(task_record(&s, &name, &t)).into_response())
}

async fn task_state(AxState(d): AxState<App>, Path((run, name)): Path<(String, String)>) -> Answer {
    let (_, t) = task_of(&d, &run, &name).await?;
    Ok(Json(json!({"task_id": name, "state": t.state.unwrap_or(State::Queued)})).into_response())
}
