//! The run index behind `trellis_dag_runs`: what each run's latest attempt says, kept small
//! (a status, a pid and where the log is) and re-read only when it changes. A finished
//! run costs one `stat` of its directory per refresh (a retry adds an attempt directory,
//! which changes it); only the last snapshot line of a changed status log is decoded,
//! skipping the steps. The steps of attempts that finished since the server started are
//! read in full once, for the step duration histogram.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use trellis_core::status::{RunRecord, Status};

use super::REFRESH;
use crate::events::{Files, Listings, dag_dirs, status_now, walk_runs};

/// Every top-level run in the store.
#[derive(Default)]
pub(super) struct Index {
    refreshed: Option<Instant>,
    /// Bumped by every refresh; entries not seen by the latest one were deleted.
    generation: u64,
    runs: HashMap<PathBuf, Entry>,
    listings: Listings,
    counts: BTreeMap<&'static str, i64>,
}

/// What the index keeps of one run.
#[derive(Default)]
struct Entry {
    files: Files,
    status: Option<Status>,
    pid: Option<u32>,
    on_worker: bool,
    /// The attempt whose steps went into the histogram.
    observed: Option<Box<str>>,
    generation: u64,
}

/// The fields of a status log line that counting needs; serde skips the rest unparsed.
#[derive(Deserialize)]
struct Lean {
    kind: String,
    status: Option<Status>,
    pid: Option<u32>,
    worker_id: Option<String>,
    attempt_id: Option<String>,
    finished_at: Option<String>,
}

impl Index {
    /// Runs by status (a dead process counted failed), refreshing the index if it is
    /// older than [`REFRESH`]; `since` is when the server started.
    pub fn counts(
        &mut self,
        data: &Path,
        since: jiff::Timestamp,
        steps: &Histogram,
    ) -> BTreeMap<&'static str, i64> {
        if self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return self.counts.clone();
        }
        self.generation += 1;
        let generation = self.generation;
        let mut counts = BTreeMap::new();
        for dag in dag_dirs(data) {
            walk_runs(data, &dag, &mut self.listings, |dir| {
                let entry = match self.runs.get_mut(&dir) {
                    Some(entry) => entry,
                    None => self.runs.entry(dir.clone()).or_default(),
                };
                entry.generation = generation;
                entry.update(&dir, since, steps);
                if let Some(status) = entry.status {
                    let now = status_now(status, entry.pid, entry.on_worker);
                    *counts.entry(now.as_str()).or_default() += 1;
                }
                true
            });
        }
        self.runs.retain(|_, e| e.generation == generation);
        self.listings.sweep();
        self.counts = counts;
        self.refreshed = Some(Instant::now());
        self.counts.clone()
    }
}

impl Entry {
    fn update(&mut self, dir: &Path, since: jiff::Timestamp, steps: &Histogram) {
        // A waiting run is final for now but may go on in the same attempt.
        let settled = self
            .status
            .is_some_and(|s| s.is_final() && s != Status::Waiting);
        let Some(sig) = self.files.stale(dir, settled) else {
            return;
        };
        let Some(file) = self.files.file().map(Path::to_path_buf) else {
            return;
        };
        let Some(last) = last_snapshot(&file) else {
            return;
        };
        self.files.read_as(sig);
        self.status = last.status;
        self.pid = last.pid;
        self.on_worker = last.worker_id.is_some();
        let finished = last.status.is_some_and(Status::is_final)
            && timestamp(last.finished_at.as_deref()).is_some_and(|t| t >= since);
        let attempt = last.attempt_id.unwrap_or_default();
        if finished && self.observed.as_deref() != Some(attempt.as_str()) {
            if let Ok(Some(run)) = trellis_store::read_log(&file) {
                observe_steps(&run, steps);
            }
            self.observed = Some(attempt.into());
        }
    }
}

/// The last whole snapshot line of a status log (a torn last line is skipped).
fn last_snapshot(file: &Path) -> Option<Lean> {
    let bytes = std::fs::read(file).ok()?;
    bytes
        .split(|b| *b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<Lean>(line).ok())
        .find(|lean| lean.kind == "snapshot")
}

fn timestamp(t: Option<&str>) -> Option<jiff::Timestamp> {
    t?.parse().ok()
}

fn observe_steps(run: &RunRecord, steps: &Histogram) {
    for step in run.steps.iter().chain(run.handlers.values()) {
        if step.status == Status::Skipped {
            continue;
        }
        let start = timestamp(step.started_at.as_deref());
        let end = timestamp(step.finished_at.as_deref());
        if let (Some(start), Some(end)) = (start, end) {
            steps.observe(end.duration_since(start).as_secs_f64().max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(record: &RunRecord) -> String {
        let entry = trellis_store::Entry::Snapshot(Box::new(record.clone()));
        format!("{}\n", serde_json::to_string(&entry).unwrap())
    }

    #[test]
    fn counts_follow_new_runs_retries_and_deletions() {
        let data = tempfile::tempdir().unwrap();
        let day = data.path().join("dag-runs/etl/dag-runs/2026/01/01");
        let write = |run: &str, attempt: &str, status: Status| {
            let dir = day
                .join(format!("dag-run_20260101_000000Z_{run}"))
                .join(attempt);
            std::fs::create_dir_all(&dir).unwrap();
            let record = RunRecord {
                name: "etl".into(),
                run_id: run.into(),
                status,
                finished_at: Some("2026-01-01T00:00:01Z".into()),
                ..RunRecord::default()
            };
            // A torn last line, as a kill mid-write leaves, is skipped.
            std::fs::write(dir.join("status.jsonl"), line(&record) + "{\"kind\":\"snap").unwrap();
        };
        write("a", "attempt_1", Status::Succeeded);
        write("b", "attempt_1", Status::Failed);
        let mut index = Index::default();
        let since: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let steps = Histogram::new([1.0]);
        let counts = index.counts(data.path(), since, &steps);
        assert_eq!(counts.get("succeeded"), Some(&1));
        assert_eq!(counts.get("failed"), Some(&1));
        write("b", "attempt_2", Status::Succeeded);
        std::fs::remove_dir_all(day.join("dag-run_20260101_000000Z_a")).unwrap();
        // Both attempts of b may be made within one tick of the filesystem clock here.
        let b = day.join("dag-run_20260101_000000Z_b");
        let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        std::fs::File::open(&b)
            .unwrap()
            .set_modified(later)
            .unwrap();
        index.refreshed = None;
        let counts = index.counts(data.path(), since, &steps);
        assert_eq!(counts.get("succeeded"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("failed"), None, "{counts:?}");
        assert_eq!(index.runs.len(), 1);
    }
}
