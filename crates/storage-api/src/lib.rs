//! The storage seam: what every part of Trellis needs from where runs live, apart from
//! any backend. [`Store`] keeps runs (an append-only log of [`Entry`]s per attempt that
//! readers fold), [`Queue`] the runs waiting for the scheduler, [`State`] what processes
//! share beside runs (leases with fencing tokens, ticks claimed once, named values), and
//! [`Backend`] is all three plus capabilities — what a backend can do, never which one it
//! is. `trellis-store` implements it on files and on PostgreSQL/MariaDB; [`MemStore`] here
//! keeps everything in memory (tests, and a backend that needs nothing). The conformance
//! suite every backend must pass is [`conformance`], behind the `test-util` feature.

#[cfg(feature = "test-util")]
pub mod conformance;
pub mod logs;
mod memory;
pub mod state;
pub mod watch;

pub use logs::LogStore;
pub use memory::MemStore;
pub use state::{Lead, LeaseInfo, State};
pub use watch::{Followed, RunFeed, RunWatch, run_feed, watch_run};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trellis_core::Dag;
use trellis_core::ids::{AttemptId, RunId, Stamp};
use trellis_core::status::{RunRecord, StepRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid name `{0}`: use letters, digits, `-`, `_` and `.`")]
    InvalidName(String),
    /// A database operation failed; `transient` failures are worth retrying.
    #[error("database: {message}")]
    Db { transient: bool, message: String },
    /// The database could not be reached when the store was opened.
    #[error("cannot reach the database at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// A leader write from a lead (this fencing token) that has passed to another holder.
    #[error("lost the scheduler lead (fencing token {0} is no longer current)")]
    Fenced(u64),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One line of a run's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Snapshot(Box<RunRecord>),
    Step { index: usize, step: StepRecord },
    Handler { name: String, step: StepRecord },
}

impl Entry {
    /// Folds this entry into the state read so far.
    pub fn apply(self, state: &mut Option<RunRecord>) {
        match (self, state) {
            (Entry::Snapshot(record), state) => *state = Some(*record),
            (Entry::Step { index, step }, Some(run)) => {
                if let Some(slot) = run.steps.get_mut(index) {
                    *slot = step;
                }
            }
            (Entry::Handler { name, step }, Some(run)) => {
                run.handlers.insert(name, step);
            }
            _ => {}
        }
    }
}

/// An attempt being written: where its status and logs go.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub run_id: RunId,
    pub attempt_id: AttemptId,
    /// The top-level run this one belongs to (itself for a top-level run).
    pub root_run_id: RunId,
}

/// Storage of runs. Implementations must make `append` atomic per entry.
pub trait Store: Send + Sync {
    /// Creates the directories of a new run attempt. `parent` nests a child run under it.
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt>;
    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()>;
    /// Whether a call may wait a long time: a database that is away is retried for
    /// minutes. Async callers hand such a store's writes to a task of their own; a store
    /// that answers at once (local files) is written inline, which is faster.
    fn may_wait(&self) -> bool {
        true
    }
    /// The most recent top-level run of a DAG.
    fn latest(&self, dag: &str) -> Result<Option<RunRecord>>;
    /// A top-level run by id.
    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>>;
    /// A new attempt of an existing top-level run (for `retry`: same run id).
    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt>;
    /// The latest attempt of a top-level run, to append to it (e.g. a coordinator failing
    /// a run whose worker was lost).
    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>>;
    /// Keeps the resolved DAG with the attempt, so a run can be retried without its file.
    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()>;
    /// A child run (of a `call` step) by id, under its parent's attempt.
    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>>;
    /// The DAG a run was started from.
    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>>;
    /// Top-level runs of a DAG, newest first.
    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>>;
    /// Names of the DAGs that have runs.
    fn dag_names(&self) -> Result<Vec<String>>;
    /// Deletes a run with its attempts and logs.
    fn remove(&self, dag: &str, run_id: &str) -> Result<()>;

    /// Every entry written for the run, attempt by attempt (oldest attempt first), each in
    /// the order it was written, with the id of the attempt it belongs to. A torn last line
    /// (files) is left out as `find` leaves it out. Empty when there is no such run.
    ///
    /// The folded record says where a run ended; this says how it got there (every state
    /// change, every try of every step), for a front end showing a run's history. Child
    /// runs are not included. Backends keep the log and override this; the default knows
    /// only the folded record, so it gives the latest attempt's record as one snapshot.
    fn history(&self, dag: &str, run_id: &str) -> Result<Vec<(String, Entry)>> {
        Ok(self
            .find(dag, run_id)?
            .map(|run| (run.attempt_id.to_string(), Entry::Snapshot(Box::new(run))))
            .into_iter()
            .collect())
    }

    /// A page of top-level runs of one DAG (or of every DAG), newest first: the runs
    /// `offset..offset + limit` among those `keep` accepts. Backends should read only the
    /// runs the page needs; this default reads every run.
    fn page(&self, dag: Option<&str>, keep: Keep<'_>, offset: usize, limit: usize) -> Result<Page> {
        let names = match dag {
            Some(name) => vec![name.to_string()],
            None => self.dag_names()?,
        };
        let mut runs = Vec::new();
        for name in names {
            runs.extend(self.list(&name, usize::MAX)?);
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        runs.retain(|r| keep.is_none_or(|k| k(r)));
        let total = runs.len();
        let has_more = total > offset.saturating_add(limit);
        let runs = runs.into_iter().skip(offset).take(limit).collect();
        Ok(Page {
            runs,
            total: Some(total),
            has_more,
        })
    }
}

/// A filter on stored runs; `None` keeps every run (and lets a page count them cheaply).
pub type Keep<'a> = Option<&'a dyn Fn(&RunRecord) -> bool>;

/// One page of runs from [`Store::page`].
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub runs: Vec<RunRecord>,
    /// How many runs pass the filter in all; `None` when counting them would mean reading
    /// every run.
    pub total: Option<usize>,
    /// More runs follow this page.
    pub has_more: bool,
}

/// Builds a page of the runs a filter keeps, from runs offered newest first: the runs
/// `offset..end` among those kept, and whether one more was kept after them.
pub struct Filtered<'a> {
    keep: &'a dyn Fn(&RunRecord) -> bool,
    offset: usize,
    end: usize,
    runs: Vec<RunRecord>,
    matched: usize,
}

impl<'a> Filtered<'a> {
    pub fn new(keep: &'a dyn Fn(&RunRecord) -> bool, offset: usize, end: usize) -> Self {
        Filtered {
            keep,
            offset,
            end,
            runs: Vec::new(),
            matched: 0,
        }
    }

    /// Takes the next run; `true` once a kept run falls past the page (stop reading).
    pub fn offer(&mut self, run: RunRecord) -> bool {
        if !(self.keep)(&run) {
            return false;
        }
        if self.matched >= self.end {
            return true;
        }
        if self.matched >= self.offset {
            self.runs.push(run);
        }
        self.matched += 1;
        false
    }

    /// The page; `more` when [`Filtered::offer`] said so (then the total is unknown).
    pub fn page(self, more: bool) -> Page {
        Page {
            runs: self.runs,
            total: (!more).then_some(self.matched),
            has_more: more,
        }
    }
}

/// A run waiting in a queue for the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub queue: String,
    pub dag_name: String,
    pub run_id: RunId,
    /// The workflow file to run.
    pub file: String,
    pub params: Option<String>,
    pub priority: i32,
    pub queued_at: Stamp,
    /// Labels used by tag concurrency limits (the DAG's labels plus `--tags`).
    #[serde(default)]
    pub tags: indexmap::IndexMap<String, String>,
    /// The logical time of a scheduled or backfilled run (RFC 3339).
    #[serde(default)]
    pub scheduled_time: Option<String>,
    /// A limit for this item's queue set by whoever enqueued it (a backfill's
    /// `--max-concurrent`); the config's limit applies when unset.
    #[serde(default)]
    pub queue_limit: Option<usize>,
}

/// Queues of runs that the scheduler consumes.
pub trait Queue: Send + Sync {
    fn enqueue(&self, item: &QueueItem) -> Result<()>;
    /// Items of a queue in the order they will start (priority, then FIFO).
    fn items(&self, queue: &str) -> Result<Vec<QueueItem>>;
    /// Removes an item; `false` when it was not queued.
    fn remove_item(&self, queue: &str, run_id: &str) -> Result<bool>;
    /// Changes a queued item's priority, keeping its place among items of equal priority;
    /// `None` when it is not (or no longer) queued.
    fn set_priority(&self, queue: &str, run_id: &str, priority: i32) -> Result<Option<QueueItem>>;
    /// Takes an item to start it, for the leader holding lease token `lead`: like
    /// [`Queue::remove_item`], but refused with [`Error::Fenced`] once the lead has passed.
    fn take(&self, lead: u64, queue: &str, run_id: &str) -> Result<bool> {
        let _ = lead;
        self.remove_item(queue, run_id)
    }
    /// Names of the queues that have items.
    fn queues(&self) -> Result<Vec<String>>;
}

/// Everything a process needs from where runs live: runs, queues and shared state.
pub trait Backend: Store + Queue + State + std::fmt::Debug {
    /// `file`, `postgres`, `mysql` or `memory`: for people (health details, messages).
    fn kind(&self) -> &'static str;
    /// Processes sharing this backend may run on other machines. Then their pids cannot be
    /// checked here and files in the data dir do not reach them: tasks, cancel and stop
    /// requests and published workers go through the backend, and changes are polled
    /// (there are no file events). A capability, not a backend's name: callers never ask
    /// which backend they have.
    fn spans_machines(&self) -> bool {
        false
    }
    /// Variables a `trellis` child process needs to open this same backend (a database
    /// URL, with its password). Passed to the processes Trellis starts itself, never to
    /// steps.
    fn child_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Checks the backend answers now (not retried), for deep health checks.
    fn probe(&self) -> Result<()>;
    /// Operations waiting for the backend to come back (0 when all is well).
    fn failing(&self) -> u64 {
        0
    }
    /// Top-level runs by their latest attempt's recorded status, when the backend can
    /// count them cheaply (`None`: count by reading runs).
    fn status_counts(&self) -> Option<Result<Vec<(String, i64)>>> {
        None
    }
    /// Top-level runs not finished yet (queued, running, waiting), newest first, at most
    /// `limit`, when the backend can find them without reading every run.
    fn unfinished(&self, limit: usize) -> Option<Result<Vec<RunRecord>>> {
        let _ = limit;
        None
    }
    /// The top-level runs whose latest attempt finished at or after `since` and that this
    /// handle has not returned before (each attempt once per handle), when the backend
    /// can tell without reading every run (`None`: it cannot). Feeds step-duration
    /// metrics.
    fn newly_finished(&self, since: jiff::Timestamp) -> Option<Result<Vec<RunRecord>>> {
        let _ = since;
        None
    }
    /// The most recently scheduled tick that was claimed: its scheduled time and when it
    /// was claimed, when the backend records claim times (`None`: it does not).
    fn latest_tick(&self) -> Option<Result<Option<TickClaim>>> {
        None
    }
    /// A watcher that can tell a change of the run without reading it (`None`: this
    /// backend cannot; [`watch_run`] then reads the run on every look).
    fn run_watch(&self, dag: &str, run_id: &str) -> Option<Result<Option<Box<dyn RunWatch>>>> {
        let _ = (dag, run_id);
        None
    }
    /// A feed that can tell changes without reading every run (`None`: this backend
    /// cannot; [`run_feed`] then pages through the newest runs).
    fn run_feed(&self, per_dag: usize) -> Option<Box<dyn RunFeed>> {
        let _ = per_dag;
        None
    }
    /// Where a step's log is kept (host, path, bytes when the step ended), for a log on
    /// another machine; `None` when the backend keeps no log index.
    fn log_location(&self, attempt_id: &str, step: &str, stream: &str) -> Option<LogLocation> {
        let _ = (attempt_id, step, stream);
        None
    }
}

/// A step's log as the log index records it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLocation {
    pub host: String,
    pub path: String,
    pub bytes: i64,
}

/// A schedule tick that was claimed: when it was due and when a scheduler claimed it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TickClaim {
    pub scheduled: jiff::Timestamp,
    pub claimed: jiff::Timestamp,
}

/// A backend shared by the parts of a process.
pub type Shared = std::sync::Arc<dyn Backend>;

/// Takes a queued run out of its queue and records it aborted (`trellis dequeue`).
/// `None` when the run is not in the queue.
pub fn dequeue<S: Store + Queue + ?Sized>(
    store: &S,
    queue: &str,
    run_id: &str,
) -> Result<Option<QueueItem>> {
    let items = store.items(queue)?;
    let Some(item) = items.into_iter().find(|i| i.run_id == run_id) else {
        return Ok(None);
    };
    // Another process (the scheduler starting it) may take it first.
    if !store.remove_item(queue, run_id)? {
        return Ok(None);
    }
    if let Some(mut run) = store.find(&item.dag_name, &item.run_id)? {
        run.status = trellis_core::status::Status::Aborted;
        run.error = Some("removed from the queue (dequeue)".into());
        run.finished_at = Some(jiff::Timestamp::now().into());
        let attempt = store.retry_attempt(&item.dag_name, &item.run_id)?;
        store.append(&attempt, &Entry::Snapshot(Box::new(run)))?;
    }
    Ok(Some(item))
}

/// A run recorded as running whose process is gone died without finishing; so did its
/// running steps. A queued run has no process yet and is left as it is.
pub fn mark_dead(run: &mut RunRecord) {
    use trellis_core::status::Status;
    if live_status(run) != run.status {
        run.status = Status::Failed;
        run.error = Some("process died".into());
        for step in run.steps.iter_mut().chain(run.handlers.values_mut()) {
            if matches!(step.status, Status::Running | Status::Retrying) {
                step.status = Status::Failed;
                step.error = Some("process died".into());
            }
        }
    }
}

/// The run's status with a dead process shown failed, as [`mark_dead`] would make it,
/// without copying the run.
pub fn live_status(run: &RunRecord) -> trellis_core::status::Status {
    use trellis_core::status::Status;
    // A run on a worker may live on another machine: the coordinator's lease decides.
    if run.worker_id.is_some() {
        return run.status;
    }
    // A process on another machine (sharing a database) cannot be checked from here.
    if run.host.as_deref().is_some_and(|h| h != hostname()) {
        return run.status;
    }
    let running = matches!(run.status, Status::Running | Status::Retrying);
    if running && !run.pid.is_some_and(process_alive) {
        return Status::Failed;
    }
    run.status
}

/// This machine's name, as runs, workers and coordinators record it (the kernel's, else
/// `/etc/hostname`, else `localhost`). The one definition: runs compare it to decide
/// whether a recorded pid can be checked here.
/// Overrides [`hostname`] (the name runs record as where their process is).
pub const HOST_NAME_VAR: &str = "TRELLIS_HOST_NAME";

pub fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        // Set by the run launcher for a run in a container: its pid means nothing on any
        // machine, so no scheduler takes the run for a dead process of its own.
        if let Some(name) = std::env::var(HOST_NAME_VAR).ok().filter(|n| !n.is_empty()) {
            return name;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// Whether process `pid` of this machine is running: it exists and is not a zombie (a
/// zombie has ended; only its parent has not collected it yet). The one rule for every
/// "did the process that ran this die?" question.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
}

/// Accepts names that are safe as one path component.
pub fn check_name(name: &str) -> Result<()> {
    if trellis_core::ids::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// A DAG or step name turned into one safe path component.
pub fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => cleaned,
    }
}
