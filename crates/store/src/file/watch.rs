//! Watching runs on the file backend without reading them: a run's latest status log only
//! grows, and a retry adds an attempt directory (which changes the run directory's
//! modification time), so two `stat` calls tell whether a run changed. Live pages poll
//! these every few hundred milliseconds; the status log is read only when it changed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use trellis_core::status::{RunRecord, Status};

use super::{FileStore, read_log};
use crate::{Followed, Result, RunFeed, RunWatch, Store};

/// The size and modification time of a status log: it only grows, so a change in either
/// means new entries.
pub(super) type Sig = (u64, Option<SystemTime>);

/// Where a run's latest status log is, and how it looked when last read.
#[derive(Debug, Default)]
pub(super) struct Files {
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

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest attempt directory of a run that has a status log (names sort by time): an
/// attempt whose process was killed before it wrote anything must not hide the run.
fn latest_attempt(run_dir: &Path) -> Option<PathBuf> {
    let names = std::fs::read_dir(run_dir).ok()?;
    let mut names: Vec<String> = names
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("attempt_"))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names
        .into_iter()
        .map(|n| run_dir.join(n))
        .find(|a| a.join("status.jsonl").exists())
}

/// One run's status log, followed by `stat`.
#[derive(Debug)]
pub(super) struct FileWatch {
    dir: PathBuf,
    files: Files,
    /// The signature [`RunWatch::stale`] saw, committed by the next read.
    seen: Option<Sig>,
}

impl FileWatch {
    pub fn new(dir: PathBuf) -> FileWatch {
        FileWatch {
            dir,
            files: Files::default(),
            seen: None,
        }
    }
}

impl RunWatch for FileWatch {
    fn stale(&mut self) -> bool {
        self.seen = self.files.stale(&self.dir, false);
        self.seen.is_some()
    }

    fn read(&mut self) -> Result<Option<RunRecord>> {
        let Some(file) = self.files.file() else {
            return Ok(None);
        };
        let record = read_log(file)?;
        if let (Some(sig), Some(_)) = (self.seen.take(), &record) {
            self.files.read_as(sig);
        }
        Ok(record)
    }
}

/// Watching on the file backend: by `stat`, reading a status log only when it changed.
impl FileStore {
    pub(crate) fn run_watch(&self, dag: &str, id: &str) -> Result<Option<Box<dyn RunWatch>>> {
        let dir = self.run_dir(dag, id)?;
        Ok(dir.map(|d| Box::new(FileWatch::new(d)) as Box<dyn RunWatch>))
    }

    pub(crate) fn run_feed(&self, per_dag: usize) -> Box<dyn RunFeed> {
        Box::new(FileFeed::new(self.clone(), per_dag))
    }
}

/// One watched run of the feed and the status last announced.
struct Watched {
    run: Followed,
    announced: Option<Status>,
}

/// The newest runs of each DAG, each followed by `stat`.
pub(super) struct FileFeed {
    store: FileStore,
    per_dag: usize,
    runs: HashMap<PathBuf, Watched>,
    first: bool,
}

impl FileFeed {
    pub fn new(store: FileStore, per_dag: usize) -> FileFeed {
        FileFeed {
            store,
            per_dag,
            runs: HashMap::new(),
            first: true,
        }
    }

    /// The `per_dag` newest run directories of every DAG.
    fn newest(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dag in self.store.dag_names().unwrap_or_default() {
            let (mut days, mut refs) = (Vec::new(), Vec::new());
            if self.store.run_refs(&dag, &mut days, &mut refs).is_err() {
                continue;
            }
            refs.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            let dirs = refs.iter().take(self.per_dag);
            out.extend(dirs.map(|(key, day)| days[*day].join(format!("dag-run_{key}"))));
        }
        out
    }
}

impl RunFeed for FileFeed {
    fn changes(&mut self) -> Vec<RunRecord> {
        let mut out = Vec::new();
        let mut visited = HashSet::new();
        for dir in self.newest() {
            let watched = self.runs.entry(dir.clone()).or_insert_with(|| Watched {
                run: Followed::new(Box::new(FileWatch::new(dir.clone()))),
                announced: None,
            });
            watched.run.refresh();
            let (status, _) = watched.run.settled_status();
            if status != watched.announced {
                watched.announced = status;
                if let (Some(view), false) = (watched.run.view(), self.first) {
                    out.push(view);
                }
            }
            visited.insert(dir);
        }
        self.runs.retain(|dir, _| visited.contains(dir));
        self.first = false;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(r: &RunRecord) -> String {
        let entry = crate::Entry::Snapshot(Box::new(r.clone()));
        format!("{}\n", serde_json::to_string(&entry).unwrap())
    }

    #[test]
    fn a_new_attempt_and_appends_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("dag-run_20260101_000000Z_r1");
        let first = run_dir.join("attempt_20260101_000000_000Z_aaaaaa");
        std::fs::create_dir_all(&first).unwrap();
        let mut run = FileWatch::new(run_dir.clone());
        assert!(!run.stale(), "no status log yet");
        let record = RunRecord {
            name: "etl".into(),
            run_id: "r1".into(),
            status: Status::Succeeded,
            ..RunRecord::default()
        };
        std::fs::write(first.join("status.jsonl"), line(&record)).unwrap();
        assert!(run.stale());
        assert_eq!(
            run.read().unwrap().map(|r| r.status),
            Some(Status::Succeeded)
        );
        assert!(!run.stale(), "unchanged");
        let second = run_dir.join("attempt_20260101_000100_000Z_bbbbbb");
        std::fs::create_dir_all(&second).unwrap();
        let failed = RunRecord {
            status: Status::Failed,
            ..record
        };
        std::fs::write(second.join("status.jsonl"), line(&failed)).unwrap();
        // Both attempts may be made within one tick of the filesystem clock here.
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(&run_dir)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(run.stale(), "the retry's attempt is followed");
        assert_eq!(run.read().unwrap().map(|r| r.status), Some(Status::Failed));
        // A third attempt whose process died before writing anything hides nothing.
        std::fs::create_dir_all(run_dir.join("attempt_20260101_000200_000Z_cccccc")).unwrap();
        let mut fresh = FileWatch::new(run_dir.clone());
        assert!(fresh.stale());
        assert_eq!(
            fresh.read().unwrap().map(|r| r.status),
            Some(Status::Failed)
        );
    }
}
