//! The file backend.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use trellis_core::Dag;
use trellis_core::status::RunRecord;

use crate::{Attempt, Entry, Error, Result, Store, safe_name};

mod census;
mod listing;
mod queue;
mod state;
mod watch;

/// Runs under `<home>/data/dag-runs` and logs under `<home>/logs`.
#[derive(Debug)]
pub struct FileStore {
    data: PathBuf,
    logs: PathBuf,
    /// The status log written last, kept open: a run appends to one file many times.
    open: std::sync::Mutex<Option<(PathBuf, File)>>,
    /// Run directory listings for pages of runs.
    listings: listing::Listings,
    /// What each run's latest attempt says, for counting runs (per handle).
    census: std::sync::Mutex<census::Census>,
}

impl Clone for FileStore {
    fn clone(&self) -> Self {
        FileStore {
            data: self.data.clone(),
            logs: self.logs.clone(),
            open: Default::default(),
            listings: Default::default(),
            census: Default::default(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileStore {
    /// Checks the data directory can be created and listed.
    pub fn probe_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.data).map_err(io(&self.data))?;
        fs::read_dir(&self.data).map_err(io(&self.data)).map(drop)
    }

    pub fn new(home: &Path) -> FileStore {
        FileStore {
            data: crate::data_dir(home),
            logs: crate::log_dir(home),
            open: Default::default(),
            listings: Default::default(),
            census: Default::default(),
        }
    }

    fn runs_dir(&self, dag: &str) -> PathBuf {
        self.data
            .join("dag-runs")
            .join(safe_name(dag))
            .join("dag-runs")
    }

    /// Every run directory of a DAG, newest first (names sort by time).
    fn run_dirs(&self, dag: &str) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for year in sorted_children(&self.runs_dir(dag))? {
            for month in sorted_children(&year)? {
                for day in sorted_children(&month)? {
                    dirs.extend(sorted_children(&day)?);
                }
            }
        }
        dirs.retain(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dag-run_"))
        });
        dirs.sort_by_key(|d| d.file_name().map(|n| n.to_os_string()));
        dirs.reverse();
        Ok(dirs)
    }

    /// The record of the latest attempt that has one: an attempt whose process was
    /// killed before it wrote anything must not hide the run.
    fn read_latest_attempt(run_dir: &Path) -> Result<Option<RunRecord>> {
        for dir in attempt_dirs(run_dir)?.into_iter().rev() {
            if let Some(record) = read_log(&dir.join("status.jsonl"))? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }
}

fn sorted_children(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Folds a status log; a line that does not parse (a torn write) ends the read.
pub fn read_log(path: &Path) -> Result<Option<RunRecord>> {
    let mut state = None;
    each_entry(path, |entry| entry.apply(&mut state))?;
    Ok(state)
}

/// Hands each entry of a status log to `take`, in the order written, one line at a time
/// (a log is never read whole: a run's snapshots may be megabytes each). A line that does not parse (a torn write)
/// ends the read; a missing log has no entries. The one reader of status logs, so a
/// run's history leaves out exactly what its folded record leaves out.
fn each_entry(path: &Path, mut take: impl FnMut(Entry)) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Entry>(&line) {
            Ok(entry) => take(entry),
            Err(_) => break,
        }
    }
    Ok(())
}

/// The attempt directories of a run, oldest first: an attempt's name starts with the
/// time it was created, to the millisecond (`attempt_<ts>_<id>`), so name order is
/// creation order.
fn attempt_dirs(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = sorted_children(run_dir)?;
    dirs.retain(|a| {
        a.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("attempt_"))
    });
    Ok(dirs)
}

/// The attempt id an attempt directory's name ends with (`attempt_<ts>_<id>`).
fn attempt_id_of(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    name.as_deref()
        .and_then(|n| n.rsplit('_').next())
        .unwrap_or_default()
        .to_string()
}

impl Store for FileStore {
    fn may_wait(&self) -> bool {
        false
    }

    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt> {
        crate::check_name(run_id)?;
        let now = Timestamp::now();
        let stamp = now.strftime("%Y%m%d_%H%M%SZ").to_string();
        let run_dir = match parent {
            Some(p) => p.dir.join("children").join(format!("child_{run_id}")),
            None => self
                .runs_dir(dag)
                .join(now.strftime("%Y/%m/%d").to_string())
                .join(format!("dag-run_{stamp}_{run_id}")),
        };
        let attempt_id = format!("{:06x}", now.subsec_nanosecond() as u32 & 0xff_ffff);
        let ms = now.strftime("%Y%m%d_%H%M%S_%3fZ").to_string();
        let dir = run_dir.join(format!("attempt_{ms}_{attempt_id}"));
        let log_dir = match parent {
            Some(p) => p.log_dir.join(format!("child_{run_id}")),
            None => self
                .logs
                .join(safe_name(dag))
                .join(format!("dag-run_{stamp}_{run_id}")),
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        if parent.is_none() {
            self.index(dag, run_id, &run_dir);
        }
        let root_run_id = parent.map_or_else(|| run_id.to_string(), |p| p.root_run_id.to_string());
        Ok(Attempt {
            dir,
            log_dir,
            run_id: run_id.to_string().into(),
            attempt_id: attempt_id.into(),
            root_run_id: root_run_id.into(),
        })
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        let path = attempt.dir.join("status.jsonl");
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.as_ref().is_none_or(|(p, _)| *p != path) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            *open = Some((path.clone(), file));
        }
        let Some((_, file)) = open.as_mut() else {
            return Ok(());
        };
        // A small entry goes out in one write call (the buffer is larger), so a kill leaves
        // at most one torn last line, which readers skip. A large snapshot streams through
        // the buffer instead of being built in memory first.
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, &mut *file);
        serde_json::to_writer(&mut out, entry).map_err(|e| io(&path)(e.into()))?;
        out.write_all(b"\n").map_err(io(&path))?;
        out.flush().map_err(io(&path))?;
        drop(out);
        if matches!(entry, Entry::Snapshot(_)) {
            file.sync_data().map_err(io(&path))?;
        }
        Ok(())
    }

    fn latest(&self, dag: &str) -> Result<Option<RunRecord>> {
        for dir in self.run_dirs(dag)? {
            if let Some(record) = FileStore::read_latest_attempt(&dir)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>> {
        match self.run_dir(dag, run_id)? {
            Some(dir) => FileStore::read_latest_attempt(&dir),
            None => Ok(None),
        }
    }

    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt> {
        let run_dir = self
            .run_dir(dag, run_id)?
            .ok_or_else(|| FileStore::not_found(dag, run_id))?;
        let now = Timestamp::now();
        let attempt_id = format!("{:06x}", now.subsec_nanosecond() as u32 & 0xff_ffff);
        let dir = run_dir.join(format!(
            "attempt_{}_{attempt_id}",
            now.strftime("%Y%m%d_%H%M%S_%3fZ")
        ));
        let run_name = run_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let log_dir = self
            .logs
            .join(safe_name(dag))
            .join(run_name)
            .join(format!("attempt_{attempt_id}"));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        Ok(Attempt {
            dir,
            log_dir,
            run_id: run_id.to_string().into(),
            attempt_id: attempt_id.into(),
            root_run_id: run_id.to_string().into(),
        })
    }

    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>> {
        crate::check_name(run_id)?;
        let dir = parent.dir.join("children").join(format!("child_{run_id}"));
        if !dir.is_dir() {
            return Ok(None);
        }
        FileStore::read_latest_attempt(&dir)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>> {
        let Some(run_dir) = self.run_dir(dag, run_id)? else {
            return Ok(None);
        };
        let Some(dir) = attempt_dirs(&run_dir)?.pop() else {
            return Ok(None);
        };
        let attempt_id = attempt_id_of(&dir);
        let log_dir = self
            .logs
            .join(safe_name(dag))
            .join(run_dir.file_name().unwrap_or_default())
            .join(format!("attempt_{attempt_id}"));
        Ok(Some(Attempt {
            dir,
            log_dir,
            run_id: run_id.to_string().into(),
            attempt_id: attempt_id.into(),
            root_run_id: run_id.to_string().into(),
        }))
    }

    /// The lines of each attempt's `status.jsonl`, attempts in the order of their
    /// directories (creation order), read as `find` reads them.
    fn history(&self, dag: &str, run_id: &str) -> Result<Vec<(String, Entry)>> {
        let Some(run_dir) = self.run_dir(dag, run_id)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for dir in attempt_dirs(&run_dir)? {
            let id = attempt_id_of(&dir);
            each_entry(&dir.join("status.jsonl"), |entry| {
                out.push((id.clone(), entry));
            })?;
        }
        Ok(out)
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        let path = attempt.dir.join("dag.json");
        // Streamed through a small buffer: a 10 000-step definition is megabytes of JSON,
        // and building it whole set the peak memory of the whole run.
        write_atomic_with(&path, |file| {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
            serde_json::to_writer(&mut out, dag).map_err(std::io::Error::from)?;
            out.flush()
        })
    }

    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>> {
        let Some(run_dir) = self.run_dir(dag, run_id)? else {
            return Ok(None);
        };
        for attempt in sorted_children(&run_dir)?.into_iter().rev() {
            if let Ok(bytes) = fs::read(attempt.join("dag.json")) {
                return Ok(serde_json::from_slice(&bytes).ok());
            }
        }
        Ok(None)
    }

    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for dir in self.run_dirs(dag)? {
            if out.len() >= limit {
                break;
            }
            if let Some(record) = FileStore::read_latest_attempt(&dir)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn page(
        &self,
        dag: Option<&str>,
        keep: crate::Keep<'_>,
        offset: usize,
        limit: usize,
    ) -> Result<crate::Page> {
        let names = match dag {
            Some(name) => vec![name.to_string()],
            None => self.dag_names()?,
        };
        let (mut days, mut refs) = (Vec::new(), Vec::new());
        for name in &names {
            self.run_refs(name, &mut days, &mut refs)?;
        }
        // Directory names start with the run's start time, so this is newest first.
        refs.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        let dir = |(key, day): &(String, usize)| days[*day].join(format!("dag-run_{key}"));
        let end = offset.saturating_add(limit);
        let Some(keep) = keep else {
            let mut runs = Vec::new();
            for run in refs.iter().take(end).skip(offset) {
                runs.extend(FileStore::read_latest_attempt(&dir(run))?);
            }
            return Ok(crate::Page {
                runs,
                total: Some(refs.len()),
                has_more: refs.len() > end,
            });
        };
        filtered_page(refs.iter().map(dir), keep, offset, end)
    }

    fn dag_names(&self) -> Result<Vec<String>> {
        let root = self.data.join("dag-runs");
        Ok(sorted_children(&root)?
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove(&self, dag: &str, run_id: &str) -> Result<()> {
        let run_dir = self
            .run_dir(dag, run_id)?
            .ok_or_else(|| FileStore::not_found(dag, run_id))?;
        if let Some(name) = run_dir.file_name() {
            let logs = self.logs.join(safe_name(dag)).join(name);
            if logs.exists() {
                fs::remove_dir_all(&logs).map_err(io(&logs))?;
            }
        }
        let _ = fs::remove_file(self.index_path(dag, run_id));
        fs::remove_dir_all(&run_dir).map_err(io(&run_dir))
    }
}

impl FileStore {
    /// The directory of a top-level run: through the run-id index (one small read), else
    /// by scanning the DAG's runs (runs stored before the index existed), which then
    /// indexes it.
    fn run_dir(&self, dag: &str, run_id: &str) -> Result<Option<PathBuf>> {
        crate::check_name(run_id)?;
        let index = self.index_path(dag, run_id);
        if let Ok(rel) = fs::read_to_string(&index) {
            let dir = self.runs_dir(dag).join(rel.trim());
            if dir.is_dir() {
                return Ok(Some(dir));
            }
        }
        let suffix = format!("_{run_id}");
        let found = self.run_dirs(dag)?.into_iter().find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        });
        if let Some(dir) = &found {
            self.index(dag, run_id, dir);
        }
        Ok(found)
    }

    /// `dag-runs/<dag>/by-id/<run_id>` holds the run's directory relative to the DAG's
    /// runs, so finding a run does not list every run of its DAG.
    fn index_path(&self, dag: &str, run_id: &str) -> PathBuf {
        self.data
            .join("dag-runs")
            .join(safe_name(dag))
            .join("by-id")
            .join(run_id)
    }

    /// Best effort: a missing index entry only costs a scan.
    fn index(&self, dag: &str, run_id: &str, run_dir: &Path) {
        let Ok(rel) = run_dir.strip_prefix(self.runs_dir(dag)) else {
            return;
        };
        let path = self.index_path(dag, run_id);
        if let Some(parent) = path.parent()
            && fs::create_dir_all(parent).is_ok()
        {
            let _ = fs::write(&path, rel.to_string_lossy().as_bytes());
        }
    }

    fn queue_dir(&self, queue: &str) -> PathBuf {
        self.data.join("queue").join(safe_name(queue))
    }

    fn not_found(dag: &str, run_id: &str) -> Error {
        Error::Io {
            path: PathBuf::from(format!("{dag}/{run_id}")),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such run"),
        }
    }
}

/// Writes a file whole: to a temporary name, fsync, then rename over the target.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes a file whole or not at all: `write` fills a temporary file, which is synced and
/// renamed over `path`.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    write(&mut file).map_err(io(&tmp))?;
    file.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

impl FileStore {
    /// Adds every top-level run directory of a DAG to `refs` as `<stamp>_<run id>` and
    /// the index of its day directory in `days`. Reads cached directory listings only
    /// (never a status file): listing 10 000 runs must stay well within a page's budget.
    fn run_refs(
        &self,
        dag: &str,
        days: &mut Vec<PathBuf>,
        refs: &mut Vec<(String, usize)>,
    ) -> Result<()> {
        let runs = self.runs_dir(dag);
        let listings = &self.listings;
        for year in listings.names(&runs)?.iter() {
            let year = runs.join(year);
            for month in listings.names(&year)?.iter() {
                let month = year.join(month);
                for day in listings.names(&month)?.iter() {
                    let day = month.join(day);
                    let names = listings.names(&day)?;
                    let keys = names.iter().filter_map(|n| n.strip_prefix("dag-run_"));
                    refs.extend(keys.map(|key| (key.to_string(), days.len())));
                    days.push(day);
                }
            }
        }
        Ok(())
    }
}

/// The runs among `dirs` (newest first) that `keep` accepts, from the `offset`th to
/// before the `end`th, reading status files only until the page is full.
fn filtered_page(
    dirs: impl Iterator<Item = PathBuf>,
    keep: &dyn Fn(&RunRecord) -> bool,
    offset: usize,
    end: usize,
) -> Result<crate::Page> {
    let mut page = crate::Filtered::new(keep, offset, end);
    for dir in dirs {
        let Some(run) = FileStore::read_latest_attempt(&dir)? else {
            continue;
        };
        if page.offer(run) {
            return Ok(page.page(true));
        }
    }
    Ok(page.page(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::status::{Status, StepRecord};

    #[test]
    fn a_torn_last_line_is_ignored() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        let attempt = store.create_attempt("etl", "r1", None).unwrap();
        let mut run = RunRecord {
            name: "etl".into(),
            run_id: "r1".into(),
            ..RunRecord::default()
        };
        run.steps.push(StepRecord {
            name: "a".into(),
            ..StepRecord::default()
        });
        store
            .append(&attempt, &Entry::Snapshot(Box::new(run)))
            .unwrap();
        let step = StepRecord {
            name: "a".into(),
            status: Status::Succeeded,
            ..StepRecord::default()
        };
        store
            .append(&attempt, &Entry::Step { index: 0, step })
            .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(attempt.dir.join("status.jsonl"))
            .unwrap();
        f.write_all(br#"{"kind":"step","index":0,"st"#).unwrap();
        let got = store.latest("etl").unwrap().unwrap();
        assert_eq!(got.steps[0].status, Status::Succeeded);
        let history = store.history("etl", "r1").unwrap();
        assert_eq!(
            history.len(),
            2,
            "the torn line is left out of the history too"
        );
        assert!(history.iter().all(|(id, _)| *id == attempt.attempt_id));
        assert_eq!(store.find("etl", "r1").unwrap().unwrap().run_id, "r1");
        assert!(store.find("etl", "nope").unwrap().is_none());
    }

    fn record(store: &FileStore, dag: &str, run_id: &str, status: Status) {
        let attempt = store.create_attempt(dag, run_id, None).unwrap();
        let run = RunRecord {
            name: dag.into(),
            run_id: run_id.into(),
            status,
            ..RunRecord::default()
        };
        store
            .append(&attempt, &Entry::Snapshot(Box::new(run)))
            .unwrap();
    }

    #[test]
    fn pages_of_runs_across_dags_newest_first() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        // Run ids that sort like UUIDv7s: later is larger within the same second.
        for i in 0..7 {
            let dag = if i % 2 == 0 { "even" } else { "odd" };
            let status = if i % 3 == 0 {
                Status::Failed
            } else {
                Status::Succeeded
            };
            record(&store, dag, &format!("r{i}"), status);
        }
        let ids = |p: &crate::Page| p.runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();
        let first = store.page(None, None, 0, 3).unwrap();
        assert_eq!(ids(&first), ["r6", "r5", "r4"]);
        assert_eq!((first.total, first.has_more), (Some(7), true));
        let last = store.page(None, None, 6, 3).unwrap();
        assert_eq!(ids(&last), ["r0"]);
        assert!(!last.has_more);
        let odd = store.page(Some("odd"), None, 0, 10).unwrap();
        assert_eq!(ids(&odd), ["r5", "r3", "r1"]);
        let failed = |r: &RunRecord| r.status == Status::Failed;
        let page = store.page(None, Some(&failed), 0, 2).unwrap();
        assert_eq!(ids(&page), ["r6", "r3"]);
        assert_eq!((page.total, page.has_more), (None, true));
        let page = store.page(None, Some(&failed), 2, 2).unwrap();
        assert_eq!(ids(&page), ["r0"]);
        assert_eq!((page.total, page.has_more), (Some(3), false));
    }

    #[test]
    fn a_run_whose_process_is_gone_is_failed() {
        let mut run = RunRecord {
            status: Status::Running,
            pid: Some(u32::MAX - 1),
            steps: vec![StepRecord {
                status: Status::Running,
                ..StepRecord::default()
            }],
            ..RunRecord::default()
        };
        let mut alive = RunRecord {
            pid: Some(std::process::id()),
            ..run.clone()
        };
        crate::mark_dead(&mut run);
        assert_eq!(
            (run.status, run.steps[0].status),
            (Status::Failed, Status::Failed)
        );
        crate::mark_dead(&mut alive);
        assert_eq!(alive.status, Status::Running);
    }
}
