//! The DAGs in the dags directory, reloaded when files change. A file that does not load is
//! kept as invalid with its first problem; it never stops the other DAGs.

use crate::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use trellis_core::Dag;

/// One workflow file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub modified: Option<SystemTime>,
    /// The DAG, or why the file is invalid (shown as `file:line:col: message`). Shared, as
    /// entries are cloned and an I/O error cannot be.
    pub dag: Result<Dag, Arc<Error>>,
}

impl Entry {
    /// The DAG's name, or the file stem when it is invalid.
    pub fn name(&self) -> String {
        match &self.dag {
            Ok(dag) => dag.name.clone(),
            Err(_) => trellis_spec::default_name(&self.path.display().to_string()),
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// Rescans `dir`, re-reading only files whose modification time changed. Deleted files
    /// drop out (their history stays in the store).
    pub fn refresh(&mut self, dir: &Path) -> bool {
        let mut old: HashMap<PathBuf, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.path.clone(), e))
            .collect();
        let mut changed = false;
        for path in workflow_files(dir) {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            match old.remove(&path) {
                Some(entry) if entry.modified == modified => self.entries.push(entry),
                _ => {
                    changed = true;
                    self.entries.push(Entry {
                        dag: load(&path).map_err(Arc::new),
                        path,
                        modified,
                    });
                }
            }
        }
        changed || !old.is_empty()
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name() == name)
    }
}

fn workflow_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Loads one file, summarising its first error as `file:line:col: message`.
pub fn load(path: &Path) -> Result<Dag, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    trellis_spec::load_file_str(path, &text)
        .map(|l| l.dag)
        .map_err(|problems| {
            let count = problems.iter().filter(|p| !p.warning).count();
            let first = problems.iter().find(|p| !p.warning).or(problems.first());
            let (line, col) = first.map_or((1, 1), |p| p.line_col(&text));
            Error::InvalidDag {
                path: path.to_path_buf(),
                line,
                col,
                message: first.map_or_else(|| "invalid".into(), |p| p.message.clone()),
                more: count.saturating_sub(1),
            }
        })
}
