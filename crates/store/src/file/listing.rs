//! Listings of run directories, kept between calls and re-read only when a directory's
//! modification time changes. Run directories are only ever added or removed, which
//! changes their parent's mtime, so an unchanged day directory need not be read again:
//! a page of runs across 10 000 stored runs costs a `stat` per day, not a full scan.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::io;
use crate::Result;

/// A directory changed this recently may change again within the file system's
/// timestamp granularity without its mtime moving; such listings are not kept.
const SETTLE: Duration = Duration::from_secs(2);

/// A directory's names, as of its modification time.
type Seen = (SystemTime, Arc<Vec<String>>);

#[derive(Debug, Default)]
pub(super) struct Listings(Mutex<HashMap<PathBuf, Seen>>);

impl Listings {
    /// The names in `dir` (none when it does not exist).
    pub(super) fn names(&self, dir: &Path) -> Result<Arc<Vec<String>>> {
        let mtime = match fs::metadata(dir) {
            Ok(meta) => meta.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(io(dir)(e)),
        };
        let settled = mtime.filter(|t| t.elapsed().is_ok_and(|age| age > SETTLE));
        if let Some(t) = settled
            && let Some((seen, names)) = self.lock().get(dir)
            && *seen == t
        {
            return Ok(names.clone());
        }
        let names = Arc::new(read_names(dir)?);
        if let Some(t) = settled {
            self.lock().insert(dir.to_path_buf(), (t, names.clone()));
        }
        Ok(names)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Seen>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn read_names(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_directory_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let listings = Listings::default();
        fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(*listings.names(dir.path()).unwrap(), ["a"]);
        fs::create_dir(dir.path().join("b")).unwrap();
        let mut names = listings.names(dir.path()).unwrap().to_vec();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(listings.names(&dir.path().join("none")).unwrap().is_empty());
    }
}
