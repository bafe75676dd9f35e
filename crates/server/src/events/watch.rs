//! Watching runs on disk: where a run's attempts live in the store's layout, and a run's
//! latest attempt re-read only when its files change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use trellis_core::status::{RunRecord, Status};

/// The size and modification time of a status log: it only grows, so a change in either
/// means new entries.
pub(crate) type Sig = (u64, Option<SystemTime>);

/// Where a run's latest status log is, and how it looked when last read.
#[derive(Default)]
pub(crate) struct Files {
    dir_mtime: Option<SystemTime>,
    file: Option<PathBuf>,
    sig: Option<Sig>,
}

impl Files {
    /// The status log's new signature when it changed since [`Files::read_as`] (two
    /// `stat` calls, a directory listing when a new attempt appeared). With `settled`,
    /// only a new attempt counts (one `stat`): for runs known to be final.
    pub fn stale(&mut self, run_dir: &Path, settled: bool) -> Option<Sig> {
        let dir_mtime = mtime(run_dir);
        if dir_mtime != self.dir_mtime || self.file.is_none() {
            self.dir_mtime = dir_mtime;
            self.file = latest_attempt(run_dir).map(|a| a.join("status.jsonl"));
        } else if settled && self.sig.is_some() {
            return None;
        }
        let meta = std::fs::metadata(self.file.as_ref()?).ok()?;
        let sig = (meta.len(), meta.modified().ok());
        (Some(sig) != self.sig).then_some(sig)
    }

    /// The latest attempt's status log.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Notes that the log was read as it was at `sig`.
    pub fn read_as(&mut self, sig: Sig) {
        self.sig = Some(sig);
    }
}

/// One run's latest attempt on disk, re-read only when its files change.
pub(crate) struct Tracked {
    dir: PathBuf,
    files: Files,
    pub record: Option<RunRecord>,
    /// A run in a database: there are no files to `stat`, so every look reads it.
    stored: Option<(trellis_store::Shared, String, String)>,
}

impl Tracked {
    pub fn new(dir: PathBuf) -> Tracked {
        Tracked {
            dir,
            files: Files::default(),
            record: None,
            stored: None,
        }
    }

    /// A run kept in a database store.
    pub fn in_store(store: trellis_store::Shared, dag: &str, run_id: &str) -> Tracked {
        Tracked {
            stored: Some((store, dag.to_string(), run_id.to_string())),
            ..Tracked::new(PathBuf::new())
        }
    }

    /// Re-reads the record when a new attempt appeared or the status log grew; true when
    /// it did.
    pub fn refresh(&mut self) -> bool {
        match self.stale() {
            Some(sig) => self.load(sig),
            None => false,
        }
    }

    /// Looks without reading: the status log's new signature when it changed.
    pub fn stale(&mut self) -> Option<Sig> {
        if self.stored.is_some() {
            return Some((0, None)); // cannot tell without reading
        }
        self.files.stale(&self.dir, false)
    }

    /// Reads the status log that [`Tracked::stale`] found changed; false if it could not
    /// (or, for a stored run, if the record is unchanged).
    pub fn load(&mut self, sig: Sig) -> bool {
        if let Some((store, dag, run_id)) = &self.stored {
            let Ok(Some(record)) = store.find(dag, run_id) else {
                return false;
            };
            let changed = self.record.as_ref() != Some(&record);
            self.record = Some(record);
            return changed;
        }
        match self.files.file().map(trellis_store::read_log) {
            Some(Ok(Some(record))) => {
                self.files.read_as(sig);
                self.record = Some(record);
                true
            }
            _ => false,
        }
    }

    /// The run's status now: a run recorded as running whose process is gone is failed.
    pub fn status(&self) -> Option<Status> {
        let record = self.record.as_ref()?;
        if record
            .host
            .as_deref()
            .is_some_and(|h| h != trellis_store::hostname())
        {
            return Some(record.status); // another machine's process: not ours to check
        }
        Some(status_now(
            record.status,
            record.pid,
            record.worker_id.is_some(),
        ))
    }

    /// The status, after reading the log once more if the process seems dead: it may have
    /// written its final status just before exiting. The bool says the record changed.
    pub fn settled_status(&mut self) -> (Option<Status>, bool) {
        let status = self.status();
        if status != self.record.as_ref().map(|r| r.status) {
            let changed = self.refresh();
            return (self.status(), changed);
        }
        (status, false)
    }

    /// The record with a dead process shown failed.
    pub fn view(&self) -> Option<RunRecord> {
        let mut view = self.record.clone()?;
        trellis_store::mark_dead(&mut view);
        Some(view)
    }
}

/// A run's status with a dead process shown failed, by the store's rule (`mark_dead`).
pub(crate) fn status_now(status: Status, pid: Option<u32>, on_worker: bool) -> Status {
    if !matches!(status, Status::Running | Status::Retrying) {
        return status;
    }
    // Only what `mark_dead` looks at, so no steps are copied.
    let mut probe = RunRecord {
        status,
        pid,
        worker_id: on_worker.then(String::new),
        ..RunRecord::default()
    };
    trellis_store::mark_dead(&mut probe);
    probe.status
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Names in a directory that start with `prefix`, newest (greatest) first.
fn children_desc(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names
}

fn latest_attempt(run_dir: &Path) -> Option<PathBuf> {
    children_desc(run_dir, "attempt_")
        .into_iter()
        .next()
        .map(|n| run_dir.join(n))
}

/// Directory listings, reused while a directory is unchanged: the feed and the metrics
/// index walk the same directories again and again, and a day of 1 000 runs is a large
/// listing to read and sort every half second.
#[derive(Default)]
pub(crate) struct Listings {
    dirs: HashMap<PathBuf, Listing>,
    pass: u64,
}

struct Listing {
    mtime: SystemTime,
    names: Arc<Vec<String>>,
    pass: u64,
}

impl Listings {
    /// The names in `dir` starting with `prefix`, newest first.
    fn get(&mut self, dir: &Path, prefix: &str) -> Arc<Vec<String>> {
        let Some(now) = mtime(dir) else {
            return Arc::new(Vec::new());
        };
        // A directory changed in the last second may change again within one tick of
        // the filesystem clock, leaving its time as it was: list it afresh.
        let settled = now.elapsed().is_ok_and(|age| age > Duration::from_secs(1));
        if let Some(l) = self.dirs.get_mut(dir)
            && l.mtime == now
            && settled
        {
            l.pass = self.pass;
            return l.names.clone();
        }
        let names = Arc::new(children_desc(dir, prefix));
        let listing = Listing {
            mtime: now,
            names: names.clone(),
            pass: self.pass,
        };
        self.dirs.insert(dir.to_path_buf(), listing);
        names
    }

    /// Forgets the directories the walks since the last sweep did not visit.
    pub fn sweep(&mut self) {
        let pass = self.pass;
        self.dirs.retain(|_, l| l.pass == pass);
        self.pass += 1;
    }
}

/// Calls `f` with each top-level run directory of a DAG, newest first, until it returns
/// false (the store's layout: `dag-runs/<dag>/dag-runs/YYYY/MM/DD/dag-run_<ts>_<id>`).
pub(crate) fn walk_runs(
    data: &Path,
    dag_dir: &str,
    listings: &mut Listings,
    mut f: impl FnMut(PathBuf) -> bool,
) {
    let root = data.join("dag-runs").join(dag_dir).join("dag-runs");
    for year in listings.get(&root, "").iter() {
        let year = root.join(year);
        for month in listings.get(&year, "").iter() {
            let month = year.join(month);
            for day in listings.get(&month, "").iter() {
                let day = month.join(day);
                for run in listings.get(&day, "dag-run_").iter() {
                    if !f(day.join(run)) {
                        return;
                    }
                }
            }
        }
    }
}

/// The directories under `data/dag-runs`: one per DAG with runs.
pub(crate) fn dag_dirs(data: &Path) -> Vec<String> {
    children_desc(&data.join("dag-runs"), "")
}

pub(super) fn find_run_dir(data: &Path, dag: &str, run_id: &str) -> Option<PathBuf> {
    let suffix = format!("_{run_id}");
    let mut found = None;
    let once = &mut Listings::default();
    walk_runs(data, &trellis_store::safe_name(dag), once, |dir| {
        let hit = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(&suffix));
        if hit {
            found = Some(dir);
        }
        !hit
    });
    found
}

/// The run's directory, waiting briefly for a run that was started a moment ago.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_attempt_and_appends_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("dag-run_20260101_000000Z_r1");
        let first = run_dir.join("attempt_20260101_000000_000Z_aaaaaa");
        std::fs::create_dir_all(&first).unwrap();
        let mut run = Tracked::new(run_dir.clone());
        assert!(!run.refresh(), "no status log yet");
        let record = RunRecord {
            name: "etl".into(),
            run_id: "r1".into(),
            status: trellis_core::status::Status::Succeeded,
            ..RunRecord::default()
        };
        let line = |r: &RunRecord| {
            let entry = trellis_store::Entry::Snapshot(Box::new(r.clone()));
            format!("{}\n", serde_json::to_string(&entry).unwrap())
        };
        std::fs::write(first.join("status.jsonl"), line(&record)).unwrap();
        assert!(run.refresh());
        assert!(!run.refresh(), "unchanged");
        let second = run_dir.join("attempt_20260101_000100_000Z_bbbbbb");
        std::fs::create_dir_all(&second).unwrap();
        let failed = RunRecord {
            status: trellis_core::status::Status::Failed,
            ..record
        };
        std::fs::write(second.join("status.jsonl"), line(&failed)).unwrap();
        // Both attempts may be made within one tick of the filesystem clock here.
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::open(&run_dir)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(run.refresh(), "the retry's attempt is followed");
        assert_eq!(
            run.record.map(|r| r.status),
            Some(trellis_core::status::Status::Failed)
        );
    }
}
