//! Counting runs on the file backend without reading them all: an index keeps what each
//! top-level run's latest attempt says (a status, and whether it finished and when) and
//! re-reads it only when it changes. A finished run costs one `stat` of its directory per
//! refresh (a retry adds an attempt directory, which changes it); only the last snapshot
//! line of a changed status log is decoded, skipping the steps. Behind
//! [`Backend::status_counts`](crate::Backend::status_counts), `unfinished` and
//! `newly_finished` (the metrics of `/metrics`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use trellis_core::status::{RunRecord, Status};

use super::FileStore;
use super::watch::Files;
use crate::{Result, Store};

/// Every top-level run of the store, as of the last refresh.
#[derive(Debug, Default)]
pub(super) struct Census {
    /// Bumped by every refresh; entries not seen by the latest one were deleted.
    generation: u64,
    runs: HashMap<PathBuf, Entry>,
}

/// What the census keeps of one run.
#[derive(Debug, Default)]
struct Entry {
    files: Files,
    status: Option<Status>,
    finished_at: Option<jiff::Timestamp>,
    attempt: Box<str>,
    /// The attempt last returned by `newly_finished`.
    returned: Option<Box<str>>,
    generation: u64,
}

/// The fields of a status log line that counting needs; serde skips the rest unparsed.
#[derive(Deserialize)]
struct Lean {
    kind: String,
    status: Option<Status>,
    attempt_id: Option<String>,
    finished_at: Option<String>,
}

impl Census {
    /// Runs by their recorded status.
    pub fn counts(&mut self, store: &FileStore) -> Result<Vec<(String, i64)>> {
        self.refresh(store)?;
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for status in self.runs.values().filter_map(|e| e.status) {
            *counts.entry(status.as_str()).or_default() += 1;
        }
        Ok(counts.into_iter().map(|(s, n)| (s.into(), n)).collect())
    }

    /// The records of runs not finished yet (at most `limit`).
    pub fn unfinished(&mut self, store: &FileStore, limit: usize) -> Result<Vec<RunRecord>> {
        self.refresh(store)?;
        let dirs = self.runs.iter().filter(|(_, e)| {
            e.status
                .is_some_and(|s| !s.is_final() || s == Status::Waiting)
        });
        let mut out = Vec::new();
        for (dir, _) in dirs.take(limit) {
            out.extend(FileStore::read_latest_attempt(dir)?);
        }
        Ok(out)
    }

    /// The records of runs whose latest attempt finished at or after `since` that were not
    /// returned before.
    pub fn newly_finished(
        &mut self,
        store: &FileStore,
        since: jiff::Timestamp,
    ) -> Result<Vec<RunRecord>> {
        self.refresh(store)?;
        let mut out = Vec::new();
        for (dir, entry) in &mut self.runs {
            let finished = entry.status.is_some_and(Status::is_final)
                && entry.finished_at.is_some_and(|t| t >= since);
            if !finished || entry.returned.as_deref() == Some(&*entry.attempt) {
                continue;
            }
            entry.returned = Some(entry.attempt.clone());
            out.extend(FileStore::read_latest_attempt(dir)?);
        }
        Ok(out)
    }

    fn refresh(&mut self, store: &FileStore) -> Result<()> {
        self.generation += 1;
        let generation = self.generation;
        for dag in store.dag_names()? {
            let (mut days, mut refs) = (Vec::new(), Vec::new());
            store.run_refs(&dag, &mut days, &mut refs)?;
            for (key, day) in refs {
                let dir = days[day].join(format!("dag-run_{key}"));
                let entry = self.runs.entry(dir).or_default();
                entry.generation = generation;
            }
        }
        self.runs.retain(|_, e| e.generation == generation);
        for (dir, entry) in &mut self.runs {
            entry.update(dir);
        }
        Ok(())
    }
}

/// Counting on the file backend goes through the handle's census.
impl FileStore {
    fn census(&self) -> std::sync::MutexGuard<'_, Census> {
        self.census
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        self.census().counts(self)
    }

    pub(crate) fn unfinished(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.census().unfinished(self, limit)
    }

    pub(crate) fn newly_finished(&self, since: jiff::Timestamp) -> Result<Vec<RunRecord>> {
        self.census().newly_finished(self, since)
    }
}

impl Entry {
    fn update(&mut self, dir: &Path) {
        // A waiting run is final for now but may go on in the same attempt.
        let settled = self
            .status
            .is_some_and(|s| s.is_final() && s != Status::Waiting);
        let Some(sig) = self.files.stale(dir, settled) else {
            return;
        };
        let Some(last) = self.files.file().and_then(last_snapshot) else {
            return;
        };
        self.files.read_as(sig);
        self.status = last.status;
        self.finished_at = last.finished_at.and_then(|t| t.parse().ok());
        self.attempt = last.attempt_id.unwrap_or_default().into();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(record: &RunRecord) -> String {
        let entry = crate::Entry::Snapshot(Box::new(record.clone()));
        format!("{}\n", serde_json::to_string(&entry).unwrap())
    }

    #[test]
    fn counts_follow_new_runs_retries_and_deletions() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        let day = store.runs_dir("etl").join("2026/01/01");
        let write = |run: &str, attempt: &str, status: Status| {
            let dir = day
                .join(format!("dag-run_20260101_000000Z_{run}"))
                .join(attempt);
            std::fs::create_dir_all(&dir).unwrap();
            let record = RunRecord {
                name: "etl".into(),
                run_id: run.into(),
                attempt_id: attempt.into(),
                status,
                finished_at: "2026-01-01T00:00:01Z".parse().ok(),
                ..RunRecord::default()
            };
            // A torn last line, as a kill mid-write leaves, is skipped.
            std::fs::write(dir.join("status.jsonl"), line(&record) + "{\"kind\":\"snap").unwrap();
        };
        write("a", "attempt_1", Status::Succeeded);
        write("b", "attempt_1", Status::Failed);
        let mut census = Census::default();
        let counts = census.counts(&store).unwrap();
        assert_eq!(counts, vec![("failed".into(), 1), ("succeeded".into(), 1)]);
        let since: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(census.newly_finished(&store, since).unwrap().len(), 2);
        assert!(
            census.newly_finished(&store, since).unwrap().is_empty(),
            "once each"
        );
        write("b", "attempt_2", Status::Succeeded);
        std::fs::remove_dir_all(day.join("dag-run_20260101_000000Z_a")).unwrap();
        // Both attempts of b may be made within one tick of the filesystem clock here.
        let b = day.join("dag-run_20260101_000000Z_b");
        let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        std::fs::File::open(&b)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let counts = census.counts(&store).unwrap();
        assert_eq!(counts, vec![("succeeded".into(), 1)]);
        assert_eq!(census.runs.len(), 1);
        let retried = census.newly_finished(&store, since).unwrap();
        assert_eq!(retried.len(), 1, "the retry's attempt is new");
    }
}
