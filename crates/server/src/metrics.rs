//! Prometheus metrics at `/metrics`, in the OpenMetrics text format (what Prometheus
//! negotiates; served as `application/openmetrics-text`).
//!
//! Nearly everything is read from the store when scraped, so any replica reports the same
//! numbers. Counting runs by status would mean reading every run; instead an index keeps
//! each run's latest attempt and re-reads it only when it changes (a finished run costs one
//! `stat` of its directory per refresh), refreshed at most every [`REFRESH`]. The index
//! also feeds the step duration histogram: steps of attempts that finished since this
//! server started, observed once each when a refresh first sees them finished.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

mod index;

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
    index: Mutex<index::Index>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            http: Family::default(),
            steps: Histogram::new(STEP_BUCKETS),
            index: Mutex::new(index::Index::default()),
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
    let runs = match app.store.status_counts() {
        Some(counts) => alive_counts(app, stored_counts(counts)),
        None => app
            .metrics
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts(&app.data, app.started_at, &app.metrics.steps),
    };
    Snapshot {
        runs,
        queues: queue_depths(app),
        heartbeat_age: crate::health::heartbeat_age(app).map(|(age, _)| age),
        tick_lag: tick_lag(&app.data),
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

fn dag_dirs_of(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds between the latest tick's scheduled time and when it was claimed (the tick
/// file's modification time).
fn tick_lag(data: &std::path::Path) -> Option<f64> {
    let ticks = data.join("scheduler").join("ticks");
    let latest = dag_dirs_of(&ticks)
        .into_iter()
        .filter_map(|dag| {
            let dir = ticks.join(dag);
            let name = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .max()?;
            Some((name.clone(), dir.join(name)))
        })
        .max()?;
    let scheduled = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &latest.0)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp();
    let claimed =
        jiff::Timestamp::try_from(std::fs::metadata(&latest.1).ok()?.modified().ok()?).ok()?;
    Some(claimed.duration_since(scheduled).as_secs_f64().max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_lag_is_claim_time_minus_schedule() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(tick_lag(data.path()), None);
        let dir = data.path().join("scheduler/ticks/etl");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("20260101T000000Z");
        std::fs::write(&file, "").unwrap();
        std::fs::write(dir.join("20251231T000000Z"), "").unwrap();
        let claimed: jiff::Timestamp = "2026-01-01T00:00:02.5Z".parse().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(claimed.into())
            .unwrap();
        assert_eq!(tick_lag(data.path()), Some(2.5));
    }
}
