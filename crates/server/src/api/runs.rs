//! Runs: start (detached or waiting), enqueue, list, read, stop, retry, restart, outputs
//! and step logs. Runs are executed by `trellis` processes the server launches, so a run
//! outlives the server; a 202 is returned only once the run is visible in the store, so a
//! client can read it right away.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use trellis_core::status::{RunRecord, Status};
use trellis_runs::queueing::{Enqueue, Outcome};
use utoipa::{IntoParams, ToSchema};

use super::{Body, DagPath, Path, Query, RunPath, StepPath, blocking, check_id, dags};
use crate::App;
use crate::error::{Error, ErrorBody, Result};
use crate::views::{
    self, LogChunk, LogRange, LogStream, RunDetail, RunFilter, RunPage, RunSummary,
};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v2/dags/{name}/start", post(start))
        .route("/api/v2/dags/{name}/start-sync", post(start_sync))
        .route("/api/v2/dags/{name}/enqueue", post(enqueue))
        .route("/api/v2/dags/{name}/dag-runs", get(dag_runs))
        .route("/api/v2/dag-runs", get(list))
        .route("/api/v2/dag-runs/{name}/{run_id}", get(detail))
        .route("/api/v2/dag-runs/{name}/{run_id}/stop", post(stop))
        .route("/api/v2/dag-runs/{name}/{run_id}/retry", post(retry))
        .route("/api/v2/dag-runs/{name}/{run_id}/restart", post(restart))
        .route("/api/v2/dag-runs/{name}/{run_id}/outputs", get(outputs))
        .route(
            "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log",
            get(log),
        )
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Parameters: `KEY=value KEY2='two words' positional`.
    params: Option<String>,
    /// Run id to use instead of a new UUIDv7.
    #[schema(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    run_id: Option<String>,
}

/// A run that was started or queued.
#[derive(Serialize, ToSchema)]
pub struct Started {
    /// The DAG's name, as runs are recorded (`/api/v2/dag-runs/{name}/{run_id}`).
    name: String,
    run_id: String,
}

/// Checks what a start needs before any process is launched: a valid DAG, params that
/// resolve, and a run id that is free.
fn prepare(
    app: &App,
    name: &str,
    params: Option<&str>,
    run_id: Option<String>,
) -> Result<(trellis_core::Dag, std::path::PathBuf, String)> {
    let (dag, path) = dags::runnable(app, name)?;
    if let Err(errors) = trellis_spec::resolve_params(&dag, params, &[]) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            text.join("; "),
        ));
    }
    let run_id = match run_id {
        Some(id) => {
            check_id("run id", &id)?;
            if let Some(run) = app.store.find(&dag.name, &id)? {
                return Err(Error::conflict(format!(
                    "run {id} of {} exists ({})",
                    dag.name, run.status
                )));
            }
            id
        }
        None => trellis_engine::new_run_id(),
    };
    Ok((dag, path, run_id))
}

/// Launches `trellis start` for a DAG and waits until the run is recorded.
async fn launch_start(app: &Arc<App>, name: String, req: StartRequest) -> Result<Started> {
    let params = req.params.clone();
    let task = app.clone();
    let (dag, path, run_id) =
        blocking(move || prepare(&task, &name, params.as_deref(), req.run_id)).await?;
    let launch = trellis_runs::Launch::Start {
        file: path,
        dag: dag.name.clone(),
        run_id: run_id.clone(),
        params: req.params,
        env: Vec::new(),
    };
    app.runs.launch(launch).await?;
    Ok(Started {
        name: dag.name,
        run_id,
    })
}

/// Start a run now (detached; poll the run or follow its events).
#[utoipa::path(post, path = "/api/v2/dags/{name}/start", tag = "runs",
    request_body = Option<StartRequest>,
    params(DagPath),
    responses((status = 202, body = Started), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn start(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Body(req): Body<StartRequest>,
) -> Result<(StatusCode, Json<Started>)> {
    let started = launch_start(&app, name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSyncRequest {
    params: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    run_id: Option<String>,
    /// How long to wait for the run to end (default 300, at most 3600).
    #[schema(minimum = 1, maximum = 3600)]
    timeout_sec: Option<u64>,
}

/// Start a run and wait until it ends. On timeout (408) the run keeps going.
#[utoipa::path(post, path = "/api/v2/dags/{name}/start-sync", tag = "runs",
    request_body = Option<StartSyncRequest>,
    params(DagPath),
    responses((status = 200, body = RunDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn start_sync(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Body(req): Body<StartSyncRequest>,
) -> Result<Json<RunDetail>> {
    let timeout = req.timeout_sec.unwrap_or(300);
    if !(1..=3600).contains(&timeout) {
        return Err(Error::bad_request("timeout_sec must be between 1 and 3600"));
    }
    let start = StartRequest {
        params: req.params,
        run_id: req.run_id,
    };
    let started = launch_start(&app, name, start).await?;
    let within = Duration::from_secs(timeout);
    let ended = app
        .runs
        .watch(&started.name, &started.run_id, within, |r| {
            r.status.is_final()
        })
        .await?;
    let done = match ended {
        Some(_) => {
            let (task, name, id) = (app.clone(), started.name.clone(), started.run_id.clone());
            Some(blocking(move || views::find_run(&task, &name, &id)).await?)
        }
        None => None,
    };
    match done {
        Some(run) => Ok(Json(RunDetail::from(run))),
        None => Err(Error::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "run {} of {} did not end within {timeout} s; it keeps running",
                started.run_id, started.name
            ),
        )),
    }
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    params: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    run_id: Option<String>,
    /// Queue name (default: the DAG's `queue`, else its name).
    #[schema(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    queue: Option<String>,
    /// Higher starts first (default 0).
    priority: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct Enqueued {
    name: String,
    run_id: String,
    queue: String,
}

/// Put a run in a queue; the scheduler starts it within the queue's limits.
#[utoipa::path(post, path = "/api/v2/dags/{name}/enqueue", tag = "runs",
    request_body = Option<EnqueueRequest>,
    params(DagPath),
    responses((status = 202, body = Enqueued), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn enqueue(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Body(req): Body<EnqueueRequest>,
) -> Result<(StatusCode, Json<Enqueued>)> {
    let queued = blocking(move || {
        if let Some(queue) = &req.queue {
            check_id("queue name", queue)?;
        }
        let (dag, path, run_id) = prepare(&app, &name, req.params.as_deref(), req.run_id)?;
        let queue = req
            .queue
            .clone()
            .or_else(|| dag.queue.clone())
            .unwrap_or_else(|| dag.name.clone());
        let enqueue = Enqueue {
            params: req.params,
            priority: req.priority.unwrap_or(0),
            queue: Some(queue.clone()),
            ..Enqueue::new(&dag, &path, run_id.clone())
        };
        match app.runs.enqueue(enqueue)? {
            Outcome::Queued => Ok(Enqueued {
                name: dag.name.clone(),
                run_id,
                queue,
            }),
            Outcome::Exists(status) => Err(Error::conflict(format!(
                "run {run_id} of {} exists ({status})",
                dag.name
            ))),
        }
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DagRunsQuery {
    /// How many runs (default 20, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    runs: Vec<RunSummary>,
}

/// The latest runs of one DAG, newest first.
#[utoipa::path(get, path = "/api/v2/dags/{name}/dag-runs", tag = "runs",
    params(DagPath, DagRunsQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn dag_runs(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Query(q): Query<DagRunsQuery>,
) -> Result<Json<RunList>> {
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    blocking(move || {
        let run_name = dags::run_name(&app, &name)?;
        let page = app.store.page(Some(&run_name), None, 0, limit)?;
        Ok(Json(RunList {
            runs: page.runs.into_iter().map(summary).collect(),
        }))
    })
    .await
}

fn summary(mut run: RunRecord) -> RunSummary {
    trellis_store::mark_dead(&mut run);
    RunSummary::of(&run)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this DAG's runs.
    name: Option<String>,
    /// Only runs with these statuses, comma-separated (e.g. `failed,aborted`).
    status: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    page: Option<usize>,
    /// Runs per page (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

/// Runs of every DAG, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v2/dag-runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody)))]
async fn list(State(app): State<Arc<App>>, Query(q): Query<RunsQuery>) -> Result<Json<RunPage>> {
    let filter = RunFilter {
        name: q.name.filter(|n| !n.is_empty()),
        status: parse_statuses(q.status.as_deref())?,
        page: q.page.unwrap_or(1),
        per_page: q.per_page.unwrap_or(50),
    };
    blocking(move || views::list_runs(&app, &filter))
        .await
        .map(Json)
}

fn parse_statuses(text: Option<&str>) -> Result<Vec<Status>> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
                Error::bad_request(format!(
                    "unknown status `{s}`: use not_started, queued, running, succeeded, \
                     failed, aborted, skipped, partially_succeeded, waiting, retrying, cancelled"
                ))
            })
        })
        .collect()
}

/// Reads a run off the async workers.
async fn find(app: &Arc<App>, name: &str, run_id: &str) -> Result<RunRecord> {
    let (app, name, run_id) = (app.clone(), name.to_string(), run_id.to_string());
    blocking(move || views::find_run(&app, &name, &run_id)).await
}

/// A run with its steps (a dead process is shown failed).
#[utoipa::path(get, path = "/api/v2/dag-runs/{name}/{run_id}", tag = "runs",
    params(RunPath),
    responses((status = 200, body = RunDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn detail(
    State(app): State<Arc<App>>,
    Path(RunPath { name, run_id }): Path<RunPath>,
) -> Result<Json<RunDetail>> {
    Ok(Json(RunDetail::from(find(&app, &name, &run_id).await?)))
}

#[derive(Serialize, ToSchema)]
pub struct Stopped {
    name: String,
    run_id: String,
    #[schema(value_type = views::StatusSchema)]
    status: Status,
}

/// Stop a running run: its steps get their stop signal, the run ends cancelled.
#[utoipa::path(post, path = "/api/v2/dag-runs/{name}/{run_id}/stop", tag = "runs",
    params(RunPath),
    responses((status = 200, body = Stopped), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn stop(
    State(app): State<Arc<App>>,
    Path(RunPath { name, run_id }): Path<RunPath>,
) -> Result<Json<Stopped>> {
    let run = find(&app, &name, &run_id).await?;
    let status = stop_run(&app, &run).await?;
    Ok(Json(Stopped {
        name: run.name,
        run_id: run.run_id.into(),
        status,
    }))
}

/// Stops a run through the run-control service (which waits for it to record its end).
async fn stop_run(app: &Arc<App>, run: &RunRecord) -> Result<Status> {
    if run.status.is_final() {
        return Ok(run.status);
    }
    if run.status == Status::Queued {
        return Err(Error::conflict(format!(
            "run {} is queued, not running; dequeue it instead",
            run.run_id
        )));
    }
    Ok(app.runs.stop(run, trellis_runs::STOP_WITHIN).await?)
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Re-run this step and everything after it (default: the steps that did not succeed).
    step: Option<String>,
}

/// Run an ended run again in a new attempt (same run id).
#[utoipa::path(post, path = "/api/v2/dag-runs/{name}/{run_id}/retry", tag = "runs",
    request_body = Option<RetryRequest>,
    params(RunPath),
    responses((status = 202, body = Started), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn retry(
    State(app): State<Arc<App>>,
    Path(RunPath { name, run_id }): Path<RunPath>,
    Body(req): Body<RetryRequest>,
) -> Result<(StatusCode, Json<Started>)> {
    let run = find(&app, &name, &run_id).await?;
    if !run.status.is_final() {
        return Err(Error::conflict(format!(
            "run {run_id} is still {}; stop it first",
            run.status
        )));
    }
    if let Some(step) = &req.step
        && !run.steps.iter().any(|s| &s.name == step)
    {
        return Err(Error::bad_request(format!(
            "run {run_id} has no step named `{step}`"
        )));
    }
    need_definition(&app, &run).await?;
    launch_retry(&app, &run, req.step.as_deref()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            name: run.name,
            run_id,
        }),
    ))
}

/// Launches `trellis retry` and waits until its new attempt is recorded.
async fn launch_retry(app: &Arc<App>, run: &RunRecord, step: Option<&str>) -> Result<()> {
    let launch = trellis_runs::Launch::Retry {
        previous: run.clone(),
        step: step.map(String::from),
    };
    app.runs.launch(launch).await?;
    Ok(())
}

/// Retry and restart run the stored definition; a run without one cannot be repeated.
async fn need_definition(app: &Arc<App>, run: &RunRecord) -> Result<()> {
    let (task, name, run_id) = (app.clone(), run.name.clone(), run.run_id.clone());
    let stored = blocking(move || Ok(task.store.definition(&name, &run_id)?)).await?;
    if stored.is_none() {
        return Err(Error::conflict(format!(
            "run {} has no stored definition to run again",
            run.run_id
        )));
    }
    Ok(())
}

/// Stop the run if it is running, then start the DAG again with the same params as a
/// new run.
#[utoipa::path(post, path = "/api/v2/dag-runs/{name}/{run_id}/restart", tag = "runs",
    params(RunPath),
    responses((status = 202, body = Started, description = "the new run"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn restart(
    State(app): State<Arc<App>>,
    Path(RunPath { name, run_id }): Path<RunPath>,
) -> Result<(StatusCode, Json<Started>)> {
    let run = find(&app, &name, &run_id).await?;
    need_definition(&app, &run).await?;
    stop_run(&app, &run).await?;
    let new_id = trellis_engine::new_run_id();
    let launch = trellis_runs::Launch::Restart {
        previous: run.clone(),
        new_run_id: new_id.clone(),
    };
    app.runs.launch(launch).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            name: run.name,
            run_id: new_id,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct Outputs {
    /// Output variables the run's steps captured.
    outputs: IndexMap<String, String>,
}

/// The output variables of a run.
#[utoipa::path(get, path = "/api/v2/dag-runs/{name}/{run_id}/outputs", tag = "runs",
    params(RunPath),
    responses((status = 200, body = Outputs), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn outputs(
    State(app): State<Arc<App>>,
    Path(RunPath { name, run_id }): Path<RunPath>,
) -> Result<Json<Outputs>> {
    let run = find(&app, &name, &run_id).await?;
    Ok(Json(Outputs {
        outputs: run.outputs,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `stdout` (default) or `stderr`.
    stream: Option<LogStream>,
    /// Byte offset to read from (ignored with `tail`).
    offset: Option<u64>,
    /// Most bytes to return (at most 1 MiB).
    limit: Option<u64>,
    /// Return the last this many lines instead.
    tail: Option<usize>,
}

/// Part of a step's log: from an offset, or the last lines.
#[utoipa::path(get, path = "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log", tag = "runs",
    params(StepPath, LogQuery),
    responses((status = 200, body = LogChunk), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn log(
    State(app): State<Arc<App>>,
    Path(StepPath { name, run_id, step }): Path<StepPath>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogChunk>> {
    let range = LogRange {
        offset: q.offset.unwrap_or(0),
        limit: q.limit,
        tail: q.tail,
    };
    let stream = q.stream.unwrap_or_default();
    blocking(move || views::read_log(&app, &name, &run_id, &step, stream, range))
        .await
        .map(Json)
}

/// The operations of this module, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    start, start_sync, enqueue, dag_runs, list, detail, stop, retry, restart, outputs, log
))]
pub struct Doc;
