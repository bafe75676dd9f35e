//! Live updates over Server-Sent Events: a run's record on every change, a step's log as it
//! grows, and a feed of status changes of recent runs for list pages.
//!
//! The server keeps no state, so each stream watches the store through its watchers
//! (`trellis_store::watch_run`, `run_feed`). Every 200 ms a run stream asks its watcher
//! whether the run may have changed and re-reads it (on the blocking pool) only then: on
//! the file backend the watcher stats the run directory and its latest status log
//! (append-only; a retry adds an attempt directory), other backends read the run. Polling
//! was chosen over inotify (`notify`): it works on network filesystems, does not use up
//! the per-user inotify instance limit (128 by default) with a watcher per open page, and
//! measured cheap enough: 100 open run streams cost about 3 % of one core in
//! `bench/server.py` (about 65 µs of CPU per tick, mostly the timer wake-up and three
//! `stat` calls). The feed of all runs is one shared scan every 500 ms whatever the
//! number of subscribers, running only while someone listens.
//!
//! Every stream ends when its client goes away (axum drops it; nothing is spawned per
//! stream) or the server shuts down ([`Live::close`]).

mod log;

use trellis_store::Followed as Tracked;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use trellis_core::status::{RunRecord, Status};

use crate::App;
use crate::error::{Error, ErrorBody, Result};
use crate::views::{RunDetail, RunSummary};

/// How often a run or log stream looks at the store.
const RUN_POLL: Duration = Duration::from_millis(200);
/// How often the feed of all runs scans the store.
const FEED_POLL: Duration = Duration::from_millis(500);
/// The feed watches this many newest runs of each DAG.
const FEED_RUNS_PER_DAG: usize = 8;
/// How long a stream waits for a run that was just started to appear in the store.
const APPEAR_GRACE: Duration = Duration::from_secs(3);

/// The live-update state of one server: the shutdown signal of its streams and the shared
/// scan behind `/api/v2/events`.
#[derive(Default)]
pub struct Live {
    shutdown: CancellationToken,
    feed: Mutex<Option<broadcast::Sender<Arc<str>>>>,
    /// Streams open now (a metric, and proof that closed ones are gone).
    open: Arc<AtomicI64>,
}

impl Live {
    /// Ends every open stream (the server is shutting down).
    pub fn close(&self) {
        self.shutdown.cancel();
    }

    /// How many event streams are open.
    pub fn open_streams(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts a stream as open until it is dropped (ended, or its client went away).
struct Open(Arc<AtomicI64>);

impl Open {
    fn new(live: &Live) -> Open {
        live.open.fetch_add(1, Ordering::Relaxed);
        Open(live.open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The OpenAPI description of this module's routes (merged into `/api/v2/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(feed, run_events, log::log_events),
    components(schemas(log::LogEvent, EndEvent, SseEvent))
)]
pub struct Doc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v2/events", get(feed))
        .route("/api/v2/dag-runs/{name}/{run_id}/events", get(run_events))
        .route(
            "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log/stream",
            get(log::log_events),
        )
}

type Events = Sse<
    axum::response::sse::KeepAliveStream<
        futures_util::stream::BoxStream<'static, std::result::Result<Event, Infallible>>,
    >,
>;

fn sse(live: &Live, stream: impl Stream<Item = Event> + Send + 'static) -> Events {
    use futures_util::StreamExt;
    let open = Open::new(live);
    let stream = stream.map(move |event| {
        let _counted = &open;
        Ok(event)
    });
    Sse::new(stream.boxed()).keep_alive(KeepAlive::default())
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// One Server-Sent Event as a client reads it: its name and its data (JSON text).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SseEvent {
    /// `run`, `log`, `end` or `error`.
    pub event: String,
    /// The event's JSON document, as text.
    pub data: String,
}

/// Data of an `end` event: the run's final status.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EndEvent {
    pub status: String,
}

async fn locate(app: &App, name: &str, run_id: &str) -> Result<Tracked> {
    trellis_store::check_name(name)?;
    trellis_store::check_name(run_id)?;
    let deadline = tokio::time::Instant::now() + APPEAR_GRACE;
    loop {
        let (store, dag, id) = (app.store.clone(), name.to_string(), run_id.to_string());
        let found =
            tokio::task::spawn_blocking(move || trellis_store::watch_run(&store, &dag, &id))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
        if let Some(watch) = found {
            return Ok(Tracked::new(watch));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::not_found(format!("no run {run_id} of DAG `{name}`")));
        }
        tokio::time::sleep(RUN_POLL).await;
    }
}

/// Runs `f` on the blocking pool with `state`, handing the state back.
async fn blocking<S: Send + 'static, T: Send + 'static>(
    state: S,
    f: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Option<(S, T)> {
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        let out = f(&mut state);
        (state, out)
    })
    .await
    .ok()
}

/// Sleeps one poll interval; false when the server is shutting down.
async fn pause(live: &Live, every: Duration) -> bool {
    tokio::select! {
        _ = live.shutdown.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

// ---------------------------------------------------------------------------------------
// GET /api/v2/dag-runs/{name}/{run_id}/events

/// A run's record as it changes.
///
/// Event `run` carries the RunDetail (first the current state, then one per change);
/// event `end` (`{"status"}`) follows a final status, and the stream ends.
#[utoipa::path(
    get,
    path = "/api/v2/dag-runs/{name}/{run_id}/events",
    tag = "live",
    params(("name" = String, Path, description = "DAG name"), ("run_id" = String, Path)),
    responses(
        (status = 200, description = "`run` events (RunDetail JSON), then `end`", content_type = "text/event-stream", body = SseEvent),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
async fn run_events(
    State(app): State<Arc<App>>,
    UrlPath((name, run_id)): UrlPath<(String, String)>,
) -> Result<Events> {
    let run = locate(&app, &name, &run_id).await?;
    let state = RunFeed {
        app: app.clone(),
        run,
        sent: None,
        pending: VecDeque::new(),
        done: false,
    };
    Ok(sse(
        &app.live,
        futures_util::stream::unfold(state, next_run_event),
    ))
}

struct RunFeed {
    app: Arc<App>,
    run: Tracked,
    /// The status last sent: a dead process changes it without changing the log.
    sent: Option<Status>,
    pending: VecDeque<Event>,
    done: bool,
}

async fn next_run_event(mut feed: RunFeed) -> Option<(Event, RunFeed)> {
    loop {
        if let Some(event) = feed.pending.pop_front() {
            return Some((event, feed));
        }
        if feed.done {
            return None;
        }
        let (run, (status, changed)) = look(feed.run).await?;
        feed.run = run;
        if status.is_some()
            && (changed || status != feed.sent)
            && let Some(view) = feed.run.view()
        {
            let end = view.status.is_final().then(|| end_event(&view));
            feed.pending
                .push_back(json_event("run", &RunDetail::from(view)));
            feed.pending.extend(end);
            feed.done = status.is_some_and(Status::is_final);
            feed.sent = status;
            continue;
        }
        if !pause(&feed.app.live, RUN_POLL).await {
            return None;
        }
    }
}

/// One look at a run: its status now and whether its record changed. The `stat` calls
/// run here; reading the log, only when it changed, runs on the blocking pool.
async fn look(mut run: Tracked) -> Option<(Tracked, (Option<Status>, bool))> {
    let mut changed = false;
    if run.stale() {
        let (back, loaded) = blocking(run, Tracked::load).await?;
        run = back;
        changed = loaded;
    }
    let status = run.status();
    if status == run.record.as_ref().map(|r| r.status) {
        return Some((run, (status, changed)));
    }
    // The process is gone: read the record again before calling the run failed.
    let (run, (status, reread)) = blocking(run, Tracked::settled_status).await?;
    Some((run, (status, changed || reread)))
}

fn end_event(run: &RunRecord) -> Event {
    json_event(
        "end",
        &EndEvent {
            status: run.status.as_str().to_string(),
        },
    )
}

// ---------------------------------------------------------------------------------------
// GET /api/v2/events

/// Status changes of recent runs of every DAG.
///
/// Event `run` carries a RunSummary each time a run appears or its status changes (the
/// newest runs of each DAG are watched). Nothing is sent on connecting: load the list
/// first, then apply events.
#[utoipa::path(
    get,
    path = "/api/v2/events",
    tag = "live",
    responses((status = 200, description = "`run` events (RunSummary JSON)", content_type = "text/event-stream", body = SseEvent))
)]
async fn feed(State(app): State<Arc<App>>) -> Events {
    let rx = subscribe(&app);
    let live = app.clone();
    let stream = futures_util::stream::unfold((app, rx), |(app, mut rx)| async move {
        loop {
            let next = tokio::select! {
                _ = app.live.shutdown.cancelled() => return None,
                next = rx.recv() => next,
            };
            match next {
                Ok(json) => {
                    let event = Event::default().event("run").data(&*json);
                    return Some((event, (app, rx)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    sse(&live.live, stream)
}

/// Joins the shared scan, starting it if nobody was listening.
fn subscribe(app: &Arc<App>) -> broadcast::Receiver<Arc<str>> {
    let mut slot = app.live.feed.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = slot.as_ref() {
        return tx.subscribe();
    }
    let (tx, rx) = broadcast::channel(1024);
    *slot = Some(tx.clone());
    tokio::spawn(scan_loop(app.clone(), tx));
    rx
}

/// Scans until the last subscriber leaves or the server shuts down.
async fn scan_loop(app: Arc<App>, tx: broadcast::Sender<Arc<str>>) {
    let mut scan = trellis_store::run_feed(&app.store, FEED_RUNS_PER_DAG);
    loop {
        let Some((state, changes)) = blocking(scan, |feed| feed.changes()).await else {
            break;
        };
        scan = state;
        for run in changes {
            if let Ok(json) = serde_json::to_string(&RunSummary::of(&run)) {
                let _ = tx.send(Arc::from(json));
            }
        }
        let running = pause(&app.live, FEED_POLL).await;
        let mut slot = app.live.feed.lock().unwrap_or_else(|e| e.into_inner());
        if !running || tx.receiver_count() == 0 {
            *slot = None;
            return;
        }
    }
    *app.live.feed.lock().unwrap_or_else(|e| e.into_inner()) = None;
}
