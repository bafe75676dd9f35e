//! The file backend.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use trellis_core::status::RunRecord;

use crate::{Attempt, Entry, Error, Result, Store, safe_name};

/// Runs under `<home>/data/dag-runs` and logs under `<home>/logs`.
#[derive(Clone, Debug)]
pub struct FileStore {
    data: PathBuf,
    logs: PathBuf,
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
        Ok(Attempt {
            dir,
            log_dir,
            run_id: run_id.to_string(),
            attempt_id,
        })
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        let path = attempt.dir.join("status.jsonl");
        let mut line = serde_json::to_vec(entry).map_err(|e| io(&path)(e.into()))?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // One write call per entry: O_APPEND keeps concurrent writers from interleaving, and
        // a kill mid-write leaves at most one torn last line, which readers skip.
        file.write_all(&line).map_err(io(&path))?;
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
        let suffix = format!("_{run_id}");
        for dir in self.run_dirs(dag)? {
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
            {
                return FileStore::read_latest_attempt(&dir);
            }
        }
        Ok(None)
    }
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
        assert_eq!(store.find("etl", "r1").unwrap().unwrap().run_id, "r1");
        assert!(store.find("etl", "nope").unwrap().is_none());
    }
}
