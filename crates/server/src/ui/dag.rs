//! The DAG page (graph, spec, run-history grid, start and suspend) and the run page
//! (step table, graph of this run, log tail, stop/retry/restart). The script keeps the
//! run page live over SSE; what is rendered here is the state at load time.

use axum::extract::{Path, Query};
use axum::response::Response;
use serde::Deserialize;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status, StepRecord};

use super::format::{self, When};
use super::graph::{self, Layout};
use super::pages::{RunLink, dag_href, file_stems, run_href};
use super::{Base, Ctx};
use crate::error::{Error, Result};
use crate::views::{self, RunSummary};

/// Runs shown in the history grid.
const HISTORY: usize = 24;

#[derive(askama::Template)]
#[template(path = "dag.html")]
pub struct DagPage {
    pub base: Base,
    pub name: String,
    pub dag_name: String,
    pub file: String,
    pub description: String,
    pub labels: Vec<String>,
    pub schedules: Vec<String>,
    pub suspended: bool,
    pub error: Option<String>,
    pub spec: String,
    pub graph: Option<Layout>,
    pub graph_note: String,
    pub history: History,
    pub last: Option<RunLink>,
    pub next: When,
    pub params: String,
    pub steps: usize,
}

#[derive(Default)]
pub struct History {
    pub runs: Vec<HistoryRun>,
    pub rows: Vec<HistoryRow>,
    /// Steps left out of the grid (very large DAGs).
    pub more: usize,
}

pub struct HistoryRun {
    pub href: String,
    pub status: &'static str,
    pub title: String,
}

pub struct HistoryRow {
    pub step: String,
    pub cells: Vec<HistoryCell>,
}

pub struct HistoryCell {
    pub status: &'static str,
    pub href: String,
    pub title: String,
}

pub async fn dag(ctx: Ctx, Path(name): Path<String>) -> Response {
    ctx.page(move |ctx| dag_page(ctx, &name)).await
}

/// The DAG's summary, its model when the file loads, and the file's text.
fn load(ctx: &Ctx, name: &str) -> Result<(views::DagSummary, Option<Dag>, String)> {
    let (summary, dag) = match views::load_dag(&ctx.app, name) {
        Ok((summary, dag)) => (summary, Some(dag)),
        Err(e) if e.code == "invalid_dag" => (views::dag_summary(&ctx.app, name)?, None),
        Err(e) => return Err(e),
    };
    let file = ctx.app.dag_file(name)?;
    let spec = std::fs::read_to_string(&file)
        .map_err(|e| Error::internal(format!("{}: {e}", file.display())))?;
    Ok((summary, dag, spec))
}

fn dag_page(ctx: &Ctx, name: &str) -> Result<DagPage> {
    let (summary, dag, spec) = load(ctx, name)?;
    let mut runs = ctx.app.store.list(&summary.dag_name, HISTORY)?;
    runs.iter_mut().for_each(trellis_store::mark_dead);
    let steps: Vec<String> = match (&dag, runs.first()) {
        (Some(dag), _) => dag.steps.iter().map(|s| s.name.clone()).collect(),
        (None, Some(run)) => run.steps.iter().map(|s| s.name.clone()).collect(),
        (None, None) => Vec::new(),
    };
    let (graph, graph_note) = match &dag {
        // A queued run has no step statuses yet: colour by the latest run that started.
        Some(dag) => draw(
            ctx,
            dag,
            runs.iter()
                .find(|r| r.started_at.is_some())
                .or(runs.first()),
        ),
        None => (None, "The file does not load, so there is no graph.".into()),
    };
    Ok(DagPage {
        base: ctx.base("dags"),
        name: summary.name.clone(),
        dag_name: summary.dag_name.clone(),
        file: summary.file.clone(),
        description: summary.description.clone().unwrap_or_default(),
        labels: format::labels(&summary.labels),
        schedules: summary.schedules.clone(),
        suspended: summary.suspended,
        error: summary.error.clone(),
        spec,
        graph,
        graph_note,
        history: history(ctx, &steps, &runs),
        last: summary.last_run.as_ref().map(|r| RunLink::of(ctx, r)),
        next: When::of(summary.next_run.as_deref()),
        params: dag.as_ref().map(default_params).unwrap_or_default(),
        steps: steps.len(),
    })
}

/// The DAG's declared params with their defaults, as a `--params` string to edit.
fn default_params(dag: &Dag) -> String {
    let values: Vec<trellis_core::params::ParamValue> = dag
        .params
        .defs
        .iter()
        .enumerate()
        .map(|(i, d)| trellis_core::params::ParamValue {
            name: d.name.clone().unwrap_or_else(|| (i + 1).to_string()),
            value: d.default.clone().unwrap_or_default(),
            positional: d.name.is_none(),
        })
        .collect();
    trellis_core::params::render(&values)
}

/// The graph of `dag`, coloured by `run` (each node opens that run at the step).
fn draw(ctx: &Ctx, dag: &Dag, run: Option<&RunRecord>) -> (Option<Layout>, String) {
    if dag.steps.len() > graph::MAX_DRAWN {
        let note = format!(
            "{} steps are too many to draw; see the step table of a run.",
            dag.steps.len()
        );
        return (None, note);
    }
    let input: Vec<graph::Input> = dag
        .steps
        .iter()
        .map(|s| graph::Input {
            name: &s.name,
            depends: &s.depends,
        })
        .collect();
    let mut layout = graph::layout(&input);
    for node in &mut layout.nodes {
        let step = run.and_then(|r| r.steps.iter().find(|s| s.name == node.name));
        node.status = step
            .map_or(Status::NotStarted, |s| s.status)
            .as_str()
            .into();
        node.href = match run {
            Some(r) => format!(
                "{}?step={}",
                run_href(ctx, &r.name, &r.run_id),
                format::percent_encode(&node.name)
            ),
            None => String::new(),
        };
    }
    (Some(layout), String::new())
}

/// Steps × recent runs, newest run first.
fn history(ctx: &Ctx, steps: &[String], runs: &[RunRecord]) -> History {
    let runs_row = runs
        .iter()
        .map(|r| HistoryRun {
            href: run_href(ctx, &r.name, &r.run_id),
            status: r.status.as_str(),
            title: format!(
                "{} · {} · {}",
                r.run_id,
                format::label(r.status),
                When::of(r.started_at.map(|t| t.to_string()).as_deref()).exact
            ),
        })
        .collect();
    let rows = steps
        .iter()
        .take(graph::MAX_DRAWN)
        .map(|step| HistoryRow {
            step: step.clone(),
            cells: runs
                .iter()
                .map(|r| {
                    let status = r
                        .steps
                        .iter()
                        .find(|s| &s.name == step)
                        .map_or(Status::NotStarted, |s| s.status);
                    HistoryCell {
                        status: status.as_str(),
                        href: format!(
                            "{}?step={}",
                            run_href(ctx, &r.name, &r.run_id),
                            format::percent_encode(step)
                        ),
                        title: format!("{step} · {} · {}", format::label(status), r.run_id),
                    }
                })
                .collect(),
        })
        .collect();
    History {
        runs: runs_row,
        rows,
        more: steps.len().saturating_sub(graph::MAX_DRAWN),
    }
}

// ---- Run page ----

#[derive(askama::Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub base: Base,
    pub dag_name: String,
    pub dag_href: String,
    pub run_id: String,
    pub attempt_id: String,
    pub run: RunLink,
    pub finished: When,
    pub params: String,
    pub error: String,
    pub steps: Vec<StepRow>,
    pub graph: Option<Layout>,
    pub selected: String,
    pub is_final: bool,
    pub outputs: Vec<(String, String)>,
}

pub struct StepRow {
    pub name: String,
    /// `step`, or the handler's event (`onSuccess`...).
    pub kind: String,
    pub status: &'static str,
    pub label: String,
    pub started: When,
    pub duration: String,
    pub exit_code: String,
    pub error: String,
    pub retries: u32,
    /// Where it runs outside this machine (`slurm job 42`, `docker 3f2a…`), or empty.
    pub handle: String,
    /// The handle in full, for the tooltip.
    pub handle_id: String,
}

impl StepRow {
    fn of(s: &StepRecord, kind: &str) -> StepRow {
        StepRow {
            name: s.name.clone(),
            kind: kind.to_string(),
            status: s.status.as_str(),
            label: format::label(s.status),
            started: When::of(s.started_at.map(|t| t.to_string()).as_deref()),
            duration: format::duration(format::between(
                s.started_at.map(|t| t.to_string()).as_deref(),
                s.finished_at.map(|t| t.to_string()).as_deref(),
                !s.status.is_final(),
            )),
            exit_code: s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            error: s.error.clone().unwrap_or_default(),
            retries: s.retry_count,
            handle: s.handle.as_ref().map(format::handle).unwrap_or_default(),
            handle_id: s
                .handle
                .as_ref()
                .map(|h| format!("{} {}", h.executor, h.id))
                .unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
pub struct RunPath {
    name: String,
    run_id: String,
}

#[derive(Deserialize)]
pub struct StepQuery {
    step: Option<String>,
}

pub async fn run(ctx: Ctx, Path(p): Path<RunPath>, Query(q): Query<StepQuery>) -> Response {
    ctx.page(move |ctx| run_page(ctx, &p.name, &p.run_id, q.step))
        .await
}

fn run_page(ctx: &Ctx, name: &str, run_id: &str, step: Option<String>) -> Result<RunPage> {
    let run = views::find_run(&ctx.app, name, run_id)?;
    let stem = file_stems(ctx, [run.name.as_str()]).remove(&run.name);
    let dag = ctx
        .app
        .store
        .definition(&run.name, &run.run_id)
        .ok()
        .flatten()
        .or_else(|| {
            stem.as_ref()
                .and_then(|s| views::load_dag(&ctx.app, s).ok())
                .map(|d| d.1)
        });
    let graph = dag.as_ref().and_then(|d| draw(ctx, d, Some(&run)).0);
    let mut steps: Vec<StepRow> = run.steps.iter().map(|s| StepRow::of(s, "step")).collect();
    steps.extend(run.handlers.iter().map(|(event, s)| StepRow::of(s, event)));
    let selected = step
        .filter(|s| steps.iter().any(|r| &r.name == s))
        .unwrap_or_else(|| pick_step(&run));
    Ok(RunPage {
        base: ctx.base("runs"),
        dag_href: dag_href(ctx, stem.as_deref().unwrap_or(&run.name)),
        dag_name: run.name.clone(),
        run_id: run.run_id.to_string(),
        attempt_id: run.attempt_id.to_string(),
        run: RunLink::of(ctx, &RunSummary::of(&run)),
        finished: When::of(run.finished_at.map(|t| t.to_string()).as_deref()),
        params: run.params_text().unwrap_or_default(),
        error: run.error.clone().unwrap_or_default(),
        steps,
        graph,
        selected,
        is_final: run.status.is_final(),
        outputs: run
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// The step whose log is most likely wanted: a failed one, else a running one, else the
/// last one that started.
fn pick_step(run: &RunRecord) -> String {
    let find = |want: &[Status]| run.steps.iter().find(|s| want.contains(&s.status));
    find(&[Status::Failed])
        .or_else(|| find(&[Status::Running, Status::Retrying]))
        .or_else(|| run.steps.iter().rev().find(|s| s.started_at.is_some()))
        .or(run.steps.first())
        .map(|s| s.name.clone())
        .unwrap_or_default()
}
