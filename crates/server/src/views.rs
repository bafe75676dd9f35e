//! What the REST API and the UI both show: DAG summaries, run summaries and pages of
//! runs, a run's full record, queues, workers and step logs. Each is a serde type with an
//! OpenAPI schema, read from the dags dir and the store on demand (nothing is cached that
//! another server replica could not see, except parsed DAG files keyed by modification
//! time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status, StepRecord};
use trellis_scheduler::catalog::Catalog;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::state::App;

pub(crate) mod log;
pub use log::{LogChunk, LogRange, LogStream, MAX_LOG_CHUNK, read_log};

/// The status of a run or a step (Dagu's names).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Status)]
pub enum StatusSchema {
    NotStarted,
    Queued,
    Running,
    Succeeded,
    Failed,
    Aborted,
    Skipped,
    PartiallySucceeded,
    Waiting,
    Retrying,
    Cancelled,
}

/// One run in a list.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    /// The DAG's name.
    pub name: String,
    pub run_id: String,
    #[schema(value_type = StatusSchema)]
    pub status: Status,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// From start to finish, or to now while the run goes on.
    pub duration_ms: Option<u64>,
    /// The params the run was started with, as one `--params` string.
    pub params: Option<String>,
    pub error: Option<String>,
}

impl RunSummary {
    /// The summary of a stored run (mark dead processes first with [`mark_dead`]).
    pub fn of(run: &RunRecord) -> RunSummary {
        RunSummary {
            name: run.name.clone(),
            run_id: run.run_id.to_string(),
            status: run.status,
            started_at: run.started_at.map(|t| t.to_string()),
            finished_at: run.finished_at.map(|t| t.to_string()),
            duration_ms: duration_ms(run),
            params: run.params_text(),
            error: run.error.clone(),
        }
    }
}

fn duration_ms(run: &RunRecord) -> Option<u64> {
    let start = run.started_at?.timestamp();
    let end = match run.finished_at.map(|t| t.timestamp()) {
        Some(end) => end,
        None if !run.status.is_final() => jiff::Timestamp::now(),
        None => return None,
    };
    u64::try_from(end.duration_since(start).as_millis()).ok()
}

/// A workflow file in the dags dir, with its last and next run.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DagSummary {
    /// The file stem: the name in `/api/v2/dags/{name}` URLs.
    pub name: String,
    /// The file name within the dags dir.
    pub file: String,
    /// The name runs are recorded under (the file's `name:`, else its stem).
    pub dag_name: String,
    /// The file loads without errors.
    pub valid: bool,
    /// Why it does not, as `file:line:col: message`.
    pub error: Option<String>,
    pub description: Option<String>,
    pub labels: IndexMap<String, String>,
    /// Cron expressions (with `TZ=` when set) and one-off times of `schedule`.
    pub schedules: Vec<String>,
    /// Schedules are suspended (manual and queued runs still start).
    pub suspended: bool,
    pub last_run: Option<RunSummary>,
    /// The next scheduled start (RFC 3339), unless there is none or it is suspended.
    pub next_run: Option<String>,
}

/// Every DAG in the dags dir, sorted by name.
pub fn list_dags(app: &App) -> Vec<DagSummary> {
    let entries = catalog_entries(app);
    let mut out: Vec<DagSummary> = entries.iter().map(|e| summarize(app, e)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One DAG by its URL name (file stem); 404 when there is no such file.
pub fn dag_summary(app: &App, name: &str) -> Result<DagSummary> {
    Ok(summarize(app, &load_entry(app, name)?))
}

/// The loaded DAG of a file, or 422-style details of why it does not load.
pub fn load_dag(app: &App, name: &str) -> Result<(DagSummary, Dag)> {
    let entry = load_entry(app, name)?;
    let summary = summarize(app, &entry);
    match entry.dag {
        Ok(dag) => Ok((summary, dag)),
        Err(e) => Err(Error::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dag",
            e.to_string(),
        )),
    }
}

fn load_entry(app: &App, name: &str) -> Result<trellis_scheduler::catalog::Entry> {
    let path = app.dag_file(name)?;
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    Ok(trellis_scheduler::catalog::Entry {
        dag: trellis_scheduler::catalog::load(&path).map_err(std::sync::Arc::new),
        path,
        modified,
    })
}

/// The dags dir's entries, re-reading only files that changed since the last call.
fn catalog_entries(app: &App) -> Vec<trellis_scheduler::catalog::Entry> {
    static CATALOGS: OnceLock<Mutex<HashMap<PathBuf, Catalog>>> = OnceLock::new();
    let mut all = CATALOGS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let catalog = all.entry(app.dags_dir.clone()).or_default();
    catalog.refresh(&app.dags_dir);
    catalog.entries.clone()
}

fn summarize(app: &App, entry: &trellis_scheduler::catalog::Entry) -> DagSummary {
    let stem = trellis_spec::default_name(&entry.path.display().to_string());
    let dag_name = entry.name();
    let suspended = trellis_scheduler::heartbeat::is_suspended(&*app.store, &dag_name);
    // A page of one reads cached listings: cheaper than `latest` with many runs.
    let last_run = app
        .store
        .page(Some(&dag_name), None, 0, 1)
        .ok()
        .and_then(|page| {
            let mut run = page.runs.into_iter().next()?;
            trellis_store::mark_dead(&mut run);
            Some(RunSummary::of(&run))
        });
    let file = entry
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut summary = DagSummary {
        name: stem,
        file,
        dag_name,
        valid: entry.dag.is_ok(),
        error: entry.dag.as_ref().err().map(ToString::to_string),
        description: None,
        labels: IndexMap::new(),
        schedules: Vec::new(),
        suspended,
        last_run,
        next_run: None,
    };
    if let Ok(dag) = &entry.dag {
        describe(&mut summary, dag);
    }
    summary
}

/// The parts of a summary that come from a DAG that loaded.
fn describe(summary: &mut DagSummary, dag: &Dag) {
    summary.description = dag.description.clone();
    summary.labels = dag.labels.clone();
    summary.schedules = dag.schedule.start.iter().map(schedule_text).collect();
    if !summary.suspended {
        let now = jiff::Timestamp::now();
        summary.next_run = trellis_scheduler::daemon::crons(&dag.schedule.start)
            .filter_map(|c| c.next_after(now))
            .min()
            .map(|t| t.to_string());
    }
}

fn schedule_text(s: &trellis_core::model::Schedule) -> String {
    match s {
        trellis_core::model::Schedule::Cron {
            expression,
            timezone: Some(tz),
        } => format!("CRON_TZ={tz} {expression}"),
        trellis_core::model::Schedule::Cron { expression, .. } => expression.clone(),
        trellis_core::model::Schedule::At { at } => at.clone(),
    }
}

/// Which runs to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only this DAG's runs (the name runs are recorded under).
    pub name: Option<String>,
    /// Only runs with one of these statuses; empty means any.
    pub status: Vec<Status>,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

/// A page of runs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Runs matching in all; absent when counting them would mean reading every run
    /// (a status filter with more pages to go).
    pub total: Option<usize>,
    pub page: usize,
    pub per_page: usize,
    pub has_more: bool,
}

/// A page of runs across DAGs. Without a status filter only the page's runs are read.
pub fn list_runs(app: &App, filter: &RunFilter) -> Result<RunPage> {
    let page = filter.page.max(1);
    let per_page = filter.per_page.clamp(1, 500);
    if let Some(name) = &filter.name {
        trellis_store::check_name(name)?;
    }
    let wanted = |run: &RunRecord| {
        let mut run = run.clone();
        trellis_store::mark_dead(&mut run);
        filter.status.contains(&run.status)
    };
    let keep: trellis_store::Keep<'_> = if filter.status.is_empty() {
        None
    } else {
        Some(&wanted)
    };
    let offset = (page - 1).saturating_mul(per_page);
    let found = app
        .store
        .page(filter.name.as_deref(), keep, offset, per_page)?;
    Ok(RunPage {
        runs: found
            .runs
            .into_iter()
            .map(|mut run| {
                trellis_store::mark_dead(&mut run);
                RunSummary::of(&run)
            })
            .collect(),
        total: found.total,
        page,
        per_page,
        has_more: found.has_more,
    })
}

/// A stored top-level run, a dead process shown failed (like `trellis status`).
pub fn find_run(app: &App, name: &str, run_id: &str) -> Result<RunRecord> {
    trellis_store::check_name(name)?;
    trellis_store::check_name(run_id)?;
    let mut run = app
        .store
        .find(name, run_id)?
        .ok_or_else(|| Error::not_found(format!("no run {run_id} of DAG `{name}`")))?;
    trellis_store::mark_dead(&mut run);
    Ok(run)
}

/// One step of a run, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StepDetail {
    pub name: String,
    #[schema(value_type = StatusSchema)]
    pub status: Status,
    pub exit_code: Option<i32>,
    pub retry_count: u32,
    pub done_count: u32,
    /// The captured output variable's value, when the step has `output: VAR`.
    pub output: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub worker_id: Option<String>,
    /// Where the step runs outside this machine's processes, as `executor:id` (`slurm:42`,
    /// `docker:<container id>`): what a restarted runner reattaches to.
    #[serde(default)]
    pub handle: Option<String>,
    /// Path of the stdout log on the server (read it through the log route).
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub error: Option<String>,
    /// Failed, but `continue_on` let the run go on.
    pub continued: bool,
    /// Child runs started by a `call` step.
    pub children: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}

impl From<StepRecord> for StepDetail {
    fn from(s: StepRecord) -> StepDetail {
        StepDetail {
            name: s.name,
            status: s.status,
            exit_code: s.exit_code,
            retry_count: s.retry_count,
            done_count: s.done_count,
            output: s.output,
            started_at: s.started_at.map(|t| t.to_string()),
            finished_at: s.finished_at.map(|t| t.to_string()),
            worker_id: s.worker_id,
            handle: s.handle.map(|h| format!("{}:{}", h.executor, h.id)),
            stdout: s.stdout,
            stderr: s.stderr,
            error: s.error,
            continued: s.continued,
            children: s.children,
            notes: s.notes,
        }
    }
}

/// Everything stored about a run's latest attempt.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub name: String,
    pub run_id: String,
    pub attempt_id: String,
    #[schema(value_type = StatusSchema)]
    pub status: Status,
    pub steps: Vec<StepDetail>,
    /// Lifecycle handlers that ran (onInit, onSuccess, onFailure, onExit, ...).
    pub handlers: IndexMap<String, StepDetail>,
    pub outputs: IndexMap<String, String>,
    pub params: Vec<String>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub pid: Option<u32>,
    pub root: Option<String>,
    pub parent: Option<String>,
    /// Started from a queue by a scheduler.
    pub queued: bool,
    pub queued_at: Option<String>,
}

impl From<RunRecord> for RunDetail {
    fn from(run: RunRecord) -> RunDetail {
        let duration_ms = duration_ms(&run);
        RunDetail {
            name: run.name,
            run_id: run.run_id.into(),
            attempt_id: run.attempt_id.into(),
            status: run.status,
            steps: run.steps.into_iter().map(StepDetail::from).collect(),
            handlers: run
                .handlers
                .into_iter()
                .map(|(k, v)| (k, StepDetail::from(v)))
                .collect(),
            outputs: run.outputs,
            params: run.params,
            error: run.error,
            started_at: run.started_at.map(|t| t.to_string()),
            finished_at: run.finished_at.map(|t| t.to_string()),
            duration_ms,
            pid: run.pid,
            root: run.root,
            parent: run.parent,
            queued: run.queued,
            queued_at: run.queued_at.map(|t| t.to_string()),
        }
    }
}

/// A run waiting in a queue.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueItemView {
    pub queue: String,
    pub dag_name: String,
    pub run_id: String,
    /// The workflow file the run will start from.
    pub file: String,
    pub params: Option<String>,
    /// Higher starts first.
    pub priority: i32,
    pub queued_at: String,
    pub tags: IndexMap<String, String>,
    pub scheduled_time: Option<String>,
}

impl From<trellis_store::QueueItem> for QueueItemView {
    fn from(i: trellis_store::QueueItem) -> QueueItemView {
        QueueItemView {
            queue: i.queue,
            dag_name: i.dag_name,
            run_id: i.run_id.into(),
            file: i.file,
            params: i.params,
            priority: i.priority,
            queued_at: i.queued_at.to_string(),
            tags: i.tags,
            scheduled_time: i.scheduled_time,
        }
    }
}

/// A queue with its waiting runs in start order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Runs of this queue allowed at once; absent means no queue-specific limit.
    pub limit: Option<usize>,
    /// Runs of DAGs in this queue running now.
    pub running: usize,
    pub items: Vec<QueueItemView>,
}

/// Every queue that has items or a configured limit, by name.
pub fn queues(app: &App) -> Vec<QueueView> {
    let mut names: Vec<String> = app.store.queues().unwrap_or_default();
    names.extend(app.config.queues.keys().cloned());
    names.sort();
    names.dedup();
    let entries = catalog_entries(app);
    names
        .into_iter()
        .filter_map(|name| {
            let items = app.store.items(&name).unwrap_or_default();
            let configured = app.config.queues.get(&name).map(|q| q.max_concurrent_runs);
            if items.is_empty() && configured.is_none() {
                return None;
            }
            let limit = configured.or_else(|| items.iter().find_map(|i| i.queue_limit));
            Some(QueueView {
                running: running_in(app, &entries, &name),
                limit,
                items: items.into_iter().map(QueueItemView::from).collect(),
                name,
            })
        })
        .collect()
}

/// Runs now running of the DAGs whose queue is `queue` (their recent runs only).
fn running_in(app: &App, entries: &[trellis_scheduler::catalog::Entry], queue: &str) -> usize {
    entries
        .iter()
        .filter_map(|e| e.dag.as_ref().ok())
        .filter(|d| d.queue.as_deref().unwrap_or(&d.name) == queue)
        .map(|d| {
            let runs = app.store.list(&d.name, 20).unwrap_or_default();
            runs.into_iter()
                .filter(|r| {
                    let mut r = r.clone();
                    trellis_store::mark_dead(&mut r);
                    r.queued && r.status == Status::Running
                })
                .count()
        })
        .sum()
}

/// Health of a worker, from the age of its last heartbeat.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerHealth {
    Healthy,
    Warning,
    Unhealthy,
    Offline,
}

/// A run a worker is executing.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunningTask {
    pub dag_name: String,
    pub dag_run_id: String,
    pub root_dag_run_name: String,
    pub started_at: Option<String>,
}

/// A worker of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub labels: IndexMap<String, String>,
    pub health_status: WorkerHealth,
    pub last_heartbeat: Option<String>,
    pub running_tasks: Vec<RunningTask>,
}

/// The cluster's workers, as the coordinator last reported them (refreshed every second),
/// or from the service registry when no coordinator answers.
pub fn workers(app: &App) -> Vec<WorkerInfo> {
    app.workers()
        .into_iter()
        .map(|w| {
            let mut labels: IndexMap<String, String> = w.labels.into_iter().collect();
            labels.sort_keys();
            WorkerInfo {
                health_status: match w.health_status.as_str() {
                    "HEALTHY" => WorkerHealth::Healthy,
                    "WARNING" => WorkerHealth::Warning,
                    "UNHEALTHY" => WorkerHealth::Unhealthy,
                    _ => WorkerHealth::Offline,
                },
                last_heartbeat: Some(w.last_heartbeat).filter(|t| !t.is_empty()),
                running_tasks: w
                    .running_tasks
                    .into_iter()
                    .map(|t| RunningTask {
                        root_dag_run_name: t.dag_name.clone(),
                        dag_name: t.dag_name,
                        dag_run_id: t.run_id,
                        started_at: Some(t.started_at).filter(|s| !s.is_empty()),
                    })
                    .collect(),
                id: w.id,
                labels,
            }
        })
        .collect()
}
