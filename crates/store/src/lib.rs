//! Where runs live. [`Store`] is what the engine and CLI talk to; [`FileStore`] is the
//! embedded backend under `TRELLIS_HOME`, in Dagu's layout:
//! `data/dag-runs/<dag>/dag-runs/YYYY/MM/DD/dag-run_<ts>_<id>/attempt_<ts>_<id>/status.jsonl`.
//!
//! A run is an append-only log: a full snapshot when the attempt starts and ends, and one
//! line per step change in between, so an update costs one short append, not a rewrite.
//! Each line is written whole with one `write` call; a torn last line (a kill mid-write) is
//! ignored on read, so a stored run is always readable.

mod file;

pub use file::{FileStore, read_log};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trellis_core::Dag;
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
    pub run_id: String,
    pub attempt_id: String,
    /// The top-level run this one belongs to (itself for a top-level run).
    pub root_run_id: String,
}

/// Storage of runs. Implementations must make `append` atomic per entry.
pub trait Store: Send + Sync {
    /// Creates the directories of a new run attempt. `parent` nests a child run under it.
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt>;
    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()>;
    /// The most recent top-level run of a DAG.
    fn latest(&self, dag: &str) -> Result<Option<RunRecord>>;
    /// A top-level run by id.
    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>>;
    /// A new attempt of an existing top-level run (for `retry`: same run id).
    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt>;
    /// Keeps the resolved DAG with the attempt, so a run can be retried without its file.
    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()>;
    /// The DAG a run was started from.
    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>>;
    /// Top-level runs of a DAG, newest first.
    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>>;
    /// Names of the DAGs that have runs.
    fn dag_names(&self) -> Result<Vec<String>>;
    /// Deletes a run with its attempts and logs.
    fn remove(&self, dag: &str, run_id: &str) -> Result<()>;
}

/// A run waiting in a queue for the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub queue: String,
    pub dag_name: String,
    pub run_id: String,
    /// The workflow file to run.
    pub file: String,
    pub params: Option<String>,
    pub priority: i32,
    pub queued_at: String,
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
}

/// Accepts names that are safe as one path component.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c));
    if ok {
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
