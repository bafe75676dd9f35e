//! The list pages: DAGs, recent runs, queues and workers, plus the error page. Each
//! handler turns [`crate::views`] data into rows the templates place as they are.

use std::collections::HashMap;

use axum::extract::Query;
use axum::response::Response;
use serde::Deserialize;
use trellis_core::status::Status;

use super::format::{self, When};
use super::{Base, Ctx};
use crate::error::Result;
use crate::views::{self, DagSummary, RunFilter, RunSummary, WorkerHealth};

pub use super::dag::{dag, run};

#[derive(askama::Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub base: Base,
    pub code: u16,
    pub title: String,
    pub message: String,
}

/// A run as a link with its status, for tables.
pub struct RunLink {
    pub run_id: String,
    pub href: String,
    pub status: &'static str,
    pub label: String,
    pub started: When,
    pub duration: String,
}

impl RunLink {
    pub fn of(ctx: &Ctx, run: &RunSummary) -> RunLink {
        RunLink {
            run_id: run.run_id.clone(),
            href: run_href(ctx, &run.name, &run.run_id),
            status: run.status.as_str(),
            label: format::label(run.status),
            started: When::of(run.started_at.as_deref()),
            duration: format::duration(run.duration_ms),
        }
    }
}

pub fn run_href(ctx: &Ctx, dag_name: &str, run_id: &str) -> String {
    format!(
        "{}/dags/{}/runs/{}",
        ctx.prefix(),
        format::percent_encode(dag_name),
        format::percent_encode(run_id)
    )
}

pub fn dag_href(ctx: &Ctx, name: &str) -> String {
    format!("{}/dags/{}", ctx.prefix(), format::percent_encode(name))
}

// ---- DAG list ----

#[derive(askama::Template)]
#[template(path = "dags.html")]
pub struct DagsPage {
    pub base: Base,
    pub search: String,
    pub rows: Vec<DagRow>,
    pub shown: usize,
}

pub struct DagRow {
    pub name: String,
    pub href: String,
    pub description: String,
    pub labels: Vec<String>,
    pub schedules: String,
    pub suspended: bool,
    pub error: Option<String>,
    pub last: Option<RunLink>,
    pub next: When,
    /// Lower-case text the search box matches against.
    pub search: String,
    pub hidden: bool,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    search: Option<String>,
}

pub async fn dags(ctx: Ctx, Query(q): Query<SearchQuery>) -> Response {
    ctx.page(move |ctx| Ok(dag_list(ctx, q.search.unwrap_or_default())))
        .await
}

fn dag_list(ctx: &Ctx, search: String) -> DagsPage {
    let needle = search.trim().to_lowercase();
    let rows: Vec<DagRow> = views::list_dags(&ctx.app)
        .into_iter()
        .map(|d| dag_row(ctx, d, &needle))
        .collect();
    DagsPage {
        base: ctx.base("dags"),
        shown: rows.iter().filter(|r| !r.hidden).count(),
        search,
        rows,
    }
}

fn dag_row(ctx: &Ctx, d: DagSummary, needle: &str) -> DagRow {
    let labels = format::labels(&d.labels);
    let description = d.description.clone().unwrap_or_default();
    let search = format!(
        "{} {} {} {}",
        d.name,
        d.dag_name,
        description,
        labels.join(" ")
    )
    .to_lowercase();
    DagRow {
        href: dag_href(ctx, &d.name),
        hidden: !needle.is_empty() && !search.contains(needle),
        search,
        labels,
        description,
        schedules: d.schedules.join(", "),
        suspended: d.suspended,
        error: d.error.clone(),
        last: d.last_run.as_ref().map(|r| RunLink::of(ctx, r)),
        next: When::of(d.next_run.as_deref()),
        name: d.name,
    }
}

// ---- Recent runs ----

#[derive(askama::Template)]
#[template(path = "runs.html")]
pub struct RunsPage {
    pub base: Base,
    pub rows: Vec<RunRow>,
    pub name: String,
    pub status: String,
    pub statuses: Vec<(&'static str, String)>,
    pub page: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
}

pub struct RunRow {
    pub dag: String,
    pub dag_href: String,
    pub run: RunLink,
    pub params: String,
    pub error: String,
}

#[derive(Deserialize)]
pub struct RunsQuery {
    name: Option<String>,
    status: Option<String>,
    page: Option<String>,
}

const RUNS_PER_PAGE: usize = 50;

pub async fn runs(ctx: Ctx, Query(q): Query<RunsQuery>) -> Response {
    ctx.page(move |ctx| run_list(ctx, q)).await
}

fn run_list(ctx: &Ctx, q: RunsQuery) -> Result<RunsPage> {
    let name = q.name.unwrap_or_default().trim().to_string();
    let status = q.status.unwrap_or_default();
    let page = q.page.and_then(|p| p.parse().ok()).unwrap_or(1usize).max(1);
    let wanted: Vec<Status> = ALL_STATUSES
        .iter()
        .copied()
        .filter(|s| status.split(',').any(|w| w == s.as_str()))
        .collect();
    let filter = RunFilter {
        name: (!name.is_empty()).then(|| name.clone()),
        status: wanted,
        page,
        per_page: RUNS_PER_PAGE,
    };
    let found = views::list_runs(&ctx.app, &filter)?;
    let stems = file_stems(ctx, found.runs.iter().map(|r| r.name.as_str()));
    let rows = found
        .runs
        .iter()
        .map(|r| RunRow {
            dag: r.name.clone(),
            dag_href: dag_href(ctx, stems.get(&r.name).unwrap_or(&r.name)),
            run: RunLink::of(ctx, r),
            params: r.params.clone().unwrap_or_default(),
            error: r.error.clone().unwrap_or_default(),
        })
        .collect();
    let link = |p: usize| {
        format!(
            "{}/runs?name={}&status={}&page={p}",
            ctx.prefix(),
            format::percent_encode(&name),
            format::percent_encode(&status)
        )
    };
    Ok(RunsPage {
        base: ctx.base("runs"),
        rows,
        prev: (page > 1).then(|| link(page - 1)),
        next: found.has_more.then(|| link(page + 1)),
        statuses: ALL_STATUSES
            .iter()
            .map(|s| (s.as_str(), format::label(*s)))
            .collect(),
        name,
        status,
        page,
    })
}

pub const ALL_STATUSES: [Status; 10] = [
    Status::Running,
    Status::Queued,
    Status::Succeeded,
    Status::Failed,
    Status::PartiallySucceeded,
    Status::Aborted,
    Status::Cancelled,
    Status::Waiting,
    Status::Retrying,
    Status::NotStarted,
];

/// The file stem (the DAG page's name) of each of `names`, the names runs are recorded
/// under. Usually they are the same; only when one is not a file is the dags dir read.
pub fn file_stems<'a>(
    ctx: &Ctx,
    names: impl IntoIterator<Item = &'a str>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut all: Option<HashMap<String, String>> = None;
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        let stem = if ctx.app.dag_file(name).is_ok() {
            name.to_string()
        } else {
            let all = all.get_or_insert_with(|| {
                views::list_dags(&ctx.app)
                    .into_iter()
                    .map(|d| (d.dag_name, d.name))
                    .collect()
            });
            all.get(name).cloned().unwrap_or_else(|| name.to_string())
        };
        out.insert(name.to_string(), stem);
    }
    out
}

// ---- Queues ----

#[derive(askama::Template)]
#[template(path = "queue.html")]
pub struct QueuePage {
    pub base: Base,
    pub queues: Vec<QueueBox>,
}

pub struct QueueBox {
    pub name: String,
    pub limit: String,
    pub running: usize,
    pub items: Vec<QueueRow>,
}

pub struct QueueRow {
    pub position: usize,
    pub dag: String,
    pub run_id: String,
    pub href: String,
    pub params: String,
    pub priority: i32,
    pub queued: When,
}

pub async fn queue(ctx: Ctx) -> Response {
    ctx.page(|ctx| {
        let queues = views::queues(&ctx.app)
            .into_iter()
            .map(|q| QueueBox {
                limit: q.limit.map_or("no limit".into(), |l| l.to_string()),
                running: q.running,
                items: q
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| QueueRow {
                        position: i + 1,
                        dag: item.dag_name.clone(),
                        run_id: item.run_id.clone(),
                        href: run_href(ctx, &item.dag_name, &item.run_id),
                        params: item.params.clone().unwrap_or_default(),
                        priority: item.priority,
                        queued: When::of(Some(&item.queued_at)),
                    })
                    .collect(),
                name: q.name,
            })
            .collect();
        Ok(QueuePage {
            base: ctx.base("queue"),
            queues,
        })
    })
    .await
}

// ---- Workers ----

#[derive(askama::Template)]
#[template(path = "workers.html")]
pub struct WorkersPage {
    pub base: Base,
    pub workers: Vec<WorkerRow>,
}

pub struct WorkerRow {
    pub id: String,
    pub labels: Vec<String>,
    pub health: &'static str,
    pub health_label: &'static str,
    pub last: When,
    pub tasks: Vec<(String, String)>,
}

pub async fn workers(ctx: Ctx) -> Response {
    ctx.page(|ctx| {
        let workers = views::workers(&ctx.app)
            .into_iter()
            .map(|w| {
                let (health, health_label) = match w.health_status {
                    WorkerHealth::Healthy => ("HEALTHY", "Healthy"),
                    WorkerHealth::Warning => ("WARNING", "Warning"),
                    WorkerHealth::Unhealthy => ("UNHEALTHY", "Unhealthy"),
                    WorkerHealth::Offline => ("OFFLINE", "Offline"),
                };
                WorkerRow {
                    labels: w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    health,
                    health_label,
                    last: When::of(w.last_heartbeat.as_deref()),
                    tasks: w
                        .running_tasks
                        .iter()
                        .map(|t| {
                            let text = format!("{} · {}", t.dag_name, t.dag_run_id);
                            (text, run_href(ctx, &t.dag_name, &t.dag_run_id))
                        })
                        .collect(),
                    id: w.id,
                }
            })
            .collect();
        Ok(WorkersPage {
            base: ctx.base("workers"),
            workers,
        })
    })
    .await
}
