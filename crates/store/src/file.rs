//! The file backend.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use trellis_core::Dag;
use trellis_core::status::RunRecord;

use crate::{Attempt, Entry, Error, Result, Store, safe_name};

/// Runs under `<home>/data/dag-runs` and logs under `<home>/logs`.
#[derive(Debug)]
pub struct FileStore {
    data: PathBuf,
    logs: PathBuf,
    /// The status log written last, kept open: a run appends to one file many times.
    open: std::sync::Mutex<Option<(PathBuf, File)>>,
}

impl Clone for FileStore {
    fn clone(&self) -> Self {
        FileStore {
            data: self.data.clone(),
            logs: self.logs.clone(),
            open: Default::default(),
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
    pub fn new(home: &Path) -> FileStore {
        FileStore {
            data: home.join("data"),
            logs: home.join("logs"),
            open: Default::default(),
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

    fn read_latest_attempt(run_dir: &Path) -> Result<Option<RunRecord>> {
        let attempts = sorted_children(run_dir)?;
        let latest = attempts.into_iter().rfind(|a| {
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("attempt_"))
        });
        match latest {
            Some(dir) => read_log(&dir.join("status.jsonl")),
            None => Ok(None),
        }
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
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut state = None;
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Entry>(&line) {
            Ok(entry) => entry.apply(&mut state),
            Err(_) => break,
        }
    }
    Ok(state)
}

impl Store for FileStore {
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
        let root_run_id = parent.map_or_else(|| run_id.to_string(), |p| p.root_run_id.clone());
        Ok(Attempt {
            dir,
            log_dir,
            run_id: run_id.to_string(),
            attempt_id,
            root_run_id,
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
            run_id: run_id.to_string(),
            attempt_id,
            root_run_id: run_id.to_string(),
        })
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        let path = attempt.dir.join("dag.json");
        let json = serde_json::to_vec(dag).map_err(|e| io(&path)(e.into()))?;
        write_atomic(&path, &json)
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
        fs::remove_dir_all(&run_dir).map_err(io(&run_dir))
    }
}

impl FileStore {
    fn run_dir(&self, dag: &str, run_id: &str) -> Result<Option<PathBuf>> {
        let suffix = format!("_{run_id}");
        Ok(self.run_dirs(dag)?.into_iter().find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        }))
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
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Renames a queue file that does not parse to `<name>.corrupt`, out of every later read
/// (items are written whole by rename, so this is damage, not a write in progress).
fn set_aside(path: &Path, why: &serde_json::Error) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    if fs::rename(path, &aside).is_ok() {
        eprintln!(
            "queue: {}: not a valid queue item ({why}); moved aside to {}",
            path.display(),
            aside.display()
        );
    }
}

impl crate::Queue for FileStore {
    fn enqueue(&self, item: &crate::QueueItem) -> Result<()> {
        crate::check_name(&item.run_id)?;
        let dir = self.queue_dir(&item.queue);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Names sort in start order: higher priority first (inverted), then time.
        let rank = i64::from(i32::MAX) - i64::from(item.priority);
        let stamp = Timestamp::now().as_nanosecond();
        let path = dir.join(format!("item_{rank:011}_{stamp:020}_{}.json", item.run_id));
        let json = serde_json::to_vec_pretty(item).map_err(|e| io(&path)(e.into()))?;
        write_atomic(&path, &json)
    }

    fn items(&self, queue: &str) -> Result<Vec<crate::QueueItem>> {
        let dir = self.queue_dir(queue);
        let mut paths: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&dir)(e)),
        };
        paths.sort();
        let mut items = Vec::with_capacity(paths.len());
        for path in &paths {
            // Gone meanwhile: another process took the item.
            let Ok(bytes) = fs::read(path) else { continue };
            match serde_json::from_slice(&bytes) {
                Ok(item) => items.push(item),
                Err(e) => set_aside(path, &e),
            }
        }
        Ok(items)
    }

    fn remove_item(&self, queue: &str, run_id: &str) -> Result<bool> {
        let dir = self.queue_dir(queue);
        let suffix = format!("_{run_id}.json");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(false);
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().ends_with(&suffix) {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::status::{Status, StepRecord};

    #[test]
    fn a_corrupt_queue_item_is_set_aside() {
        use crate::Queue;
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        let item = crate::QueueItem {
            queue: "q".into(),
            dag_name: "etl".into(),
            run_id: "r1".into(),
            file: "etl.yaml".into(),
            params: None,
            priority: 0,
            queued_at: "2026-11-22T16:00:00Z".into(),
            tags: Default::default(),
            scheduled_time: None,
            queue_limit: None,
        };
        store.enqueue(&item).unwrap();
        let dir = home.path().join("data/queue/q");
        fs::write(dir.join("item_0_0_bad.json"), "{not json").unwrap();
        assert_eq!(store.items("q").unwrap(), vec![item.clone()]);
        assert!(dir.join("item_0_0_bad.json.corrupt").exists());
        assert!(!dir.join("item_0_0_bad.json").exists());
        assert_eq!(store.items("q").unwrap(), vec![item]);
    }

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
        assert_eq!(store.find("etl", "r1").unwrap().unwrap().run_id, "r1");
        assert!(store.find("etl", "nope").unwrap().is_none());
    }
}
