//! Prometheus metrics at `/metrics`, in the OpenMetrics text format (what Prometheus
//! negotiates; served as `application/openmetrics-text`).
//!
//! Nearly everything is read from the store when scraped, so any replica reports the same
//! numbers. Runs are counted by the store (`status_counts`: one query on a database, an
//! index re-read only where runs changed on files), reused for [`REFRESH`], with a run
//! whose process on this machine is gone counted failed. The step duration histogram
//! observes the steps of attempts that finished since this server started, once each,
//! where the store can say which finished (`newly_finished`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::App;
use crate::error::{Error, Result};

/// How long run counts are reused between scrapes.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Bucket bounds of the step duration histogram, in seconds.
const STEP_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0,
];

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the server counts between scrapes.
pub struct Metrics {
    http: Family<HttpLabels, Counter>,
    steps: Histogram,
    /// Runs by status, and when they were counted.
    runs: Mutex<Option<(Instant, BTreeMap<&'static str, i64>)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            http: Family::default(),
            steps: Histogram::new(STEP_BUCKETS),
            runs: Mutex::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

/// The OpenAPI description of this module's routes (merged into `/api/v2/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub struct Doc;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/metrics", get(metrics))
}

/// Counts each request by method, route pattern and status (middleware for every route).
pub async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .map(|p| p.strip_prefix(app.path_prefix.as_str()).unwrap_or(p))
        .unwrap_or("unmatched")
        .to_string();
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16().to_string(),
    };
    app.metrics.http.get_or_create(&labels).inc();
    response
}

/// Metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
async fn metrics(State(app): State<Arc<App>>) -> Result<Response> {
    let worker = app.clone();
    let snapshot = tokio::task::spawn_blocking(move || snapshot(&worker))
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry(&app, &snapshot))
        .map_err(|e| Error::internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Numbers read from the store for one scrape.
struct Snapshot {
    runs: BTreeMap<&'static str, i64>,
    queues: BTreeMap<String, i64>,
    heartbeat_age: Option<f64>,
    tick_lag: Option<f64>,
}

fn snapshot(app: &App) -> Snapshot {
    Snapshot {
        runs: run_counts(app),
        queues: queue_depths(app),
        heartbeat_age: crate::health::heartbeat_age(app).map(|(age, _)| age),
        tick_lag: tick_lag(app),
    }
}

/// Runs by status, counted at most every [`REFRESH`]; each count also observes the steps
/// of attempts finished since.
fn run_counts(app: &App) -> BTreeMap<&'static str, i64> {
    let mut cached = app.metrics.runs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, counts)) = cached.as_ref()
        && at.elapsed() < REFRESH
    {
        return counts.clone();
    }
    let counts = match app.store.status_counts() {
        Some(counts) => alive_counts(app, stored_counts(counts)),
        None => BTreeMap::new(),
    };
    if let Some(Ok(finished)) = app.store.newly_finished(app.started_at) {
        finished
            .iter()
            .for_each(|run| observe_steps(run, &app.metrics.steps));
    }
    *cached = Some((Instant::now(), counts.clone()));
    counts
}

fn observe_steps(run: &trellis_core::status::RunRecord, steps: &Histogram) {
    for step in run.steps.iter().chain(run.handlers.values()) {
        if step.status == trellis_core::status::Status::Skipped {
            continue;
        }
        let start = step.started_at.map(|t| t.timestamp());
        let end = step.finished_at.map(|t| t.timestamp());
        if let (Some(start), Some(end)) = (start, end) {
            steps.observe(end.duration_since(start).as_secs_f64().max(0.0));
        }
    }
}

fn registry(app: &App, s: &Snapshot) -> Registry {
    let mut r = Registry::default();
    let version = vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    r.register(
        "trellis",
        "Trellis version of this server",
        Info::new(version),
    );
    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(app.started.elapsed().as_secs_f64());
    r.register_with_unit(
        "trellis_uptime",
        "Seconds since this server started",
        Unit::Seconds,
        uptime,
    );
    let runs = Family::<Vec<(String, String)>, Gauge>::default();
    for (status, n) in &s.runs {
        runs.get_or_create(&vec![("status".into(), status.to_string())])
            .set(*n);
    }
    r.register(
        "trellis_dag_runs",
        "Top-level runs in the store by the status of their latest attempt (a run whose \
         process died counts as failed)",
        runs,
    );
    let running = Gauge::<i64>::default();
    running.set(s.runs.get("running").copied().unwrap_or(0));
    r.register("trellis_dag_runs_running", "Runs running now", running);
    let queues = Family::<Vec<(String, String)>, Gauge>::default();
    for (queue, n) in &s.queues {
        queues
            .get_or_create(&vec![("queue".into(), queue.clone())])
            .set(*n);
    }
    r.register("trellis_queue_depth", "Runs waiting in each queue", queues);
    r.register_with_unit(
        "trellis_step_duration",
        "Durations of the steps of run attempts that finished since this server started \
         (observed when a scrape first sees the attempt finished)",
        Unit::Seconds,
        app.metrics.steps.clone(),
    );
    register_scheduler(&mut r, s);
    let workers = Family::<Vec<(String, String)>, Gauge>::default();
    let all = crate::views::workers(app);
    for health in ["HEALTHY", "WARNING", "UNHEALTHY", "OFFLINE"] {
        let n = all
            .iter()
            .filter(|w| serde_json::to_value(w.health_status).ok() == Some(health.into()))
            .count();
        workers
            .get_or_create(&vec![("health".into(), health.into())])
            .set(n as i64);
    }
    r.register(
        "trellis_workers",
        "Workers of the cluster by health",
        workers,
    );
    let streams = Gauge::<i64>::default();
    streams.set(app.live.open_streams());
    r.register(
        "trellis_live_streams",
        "Server-Sent Event streams open now (run, log and feed streams)",
        streams,
    );
    let failed = Counter::<u64>::default();
    failed.inc_by(trellis_engine::failed_writes());
    r.register(
        "trellis_run_record_write_failures",
        "Writes of run records that failed for good in this process (runs it executes, as \
         in start-all); each is listed in its run's warnings",
        failed,
    );
    r.register(
        "trellis_http_requests",
        "HTTP requests served, by method, route pattern and status",
        app.metrics.http.clone(),
    );
    r
}

fn register_scheduler(r: &mut Registry, s: &Snapshot) {
    if let Some(age) = s.heartbeat_age {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(age);
        r.register_with_unit(
            "scheduler_heartbeat_age",
            "Seconds since the leading scheduler's heartbeat (written every 5 s; absent when \
             none was ever written)",
            Unit::Seconds,
            g,
        );
    }
    if let Some(lag) = s.tick_lag {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(lag);
        r.register_with_unit(
            "scheduler_lag",
            "How late the most recent schedule tick was claimed after its scheduled time \
             (from the tick files; absent before the first tick)",
            Unit::Seconds,
            g,
        );
    }
}

/// Items waiting per queue, with configured queues shown even when empty.
fn queue_depths(app: &App) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = app.config.queues.keys().map(|q| (q.clone(), 0)).collect();
    for queue in app.store.queues().unwrap_or_default() {
        let n = app.store.items(&queue).map(|i| i.len()).unwrap_or(0);
        out.insert(queue, n as i64);
    }
    out
}

/// A run recorded running whose process on this machine is gone counts as failed, as
/// the file store's index counts it (the store's counts are as recorded).
fn alive_counts(app: &App, mut counts: BTreeMap<&'static str, i64>) -> BTreeMap<&'static str, i64> {
    let Some(Ok(going)) = app.store.unfinished(10_000) else {
        return counts;
    };
    for mut run in going {
        let recorded = run.status;
        trellis_store::mark_dead(&mut run);
        if run.status != recorded {
            *counts.entry(recorded.as_str()).or_default() -= 1;
            *counts.entry(run.status.as_str()).or_default() += 1;
        }
    }
    counts
}

/// Counts from a database store, keyed by the statuses' own names.
fn stored_counts(counts: trellis_store::Result<Vec<(String, i64)>>) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for (status, n) in counts.unwrap_or_default() {
        let parsed = serde_json::from_value::<trellis_core::status::Status>(status.into());
        if let Ok(status) = parsed {
            *out.entry(status.as_str()).or_default() += n;
        }
    }
    out
}

/// Seconds between the latest tick's scheduled time and when it was claimed, where the
/// store records claim times.
fn tick_lag(app: &App) -> Option<f64> {
    let tick = app.store.latest_tick()?.ok()??;
    Some(
        tick.claimed
            .duration_since(tick.scheduled)
            .as_secs_f64()
            .max(0.0),
    )
}
