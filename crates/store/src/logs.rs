//! [`LocalLogs`]: step logs as local files, in today's layout (a run's attempt has a log
//! directory, `<step>.out` and `<step>.err` in it). A log's reference is its path; steps write their output to it directly, so a local run pays nothing for the
//! seam.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

pub use trellis_storage_api::logs::{LogStore, complete_utf8_len, tail_start};

/// Logs in local files.
#[derive(Clone, Debug, Default)]
pub struct LocalLogs;

/// A path with no `..`: a reference that names a file under where it was recorded and
/// nothing else. (A relative one, from a relative `TRELLIS_HOME`, is read relative to the
/// reader's directory, as it always was.)
fn path(log: &str) -> io::Result<&Path> {
    let p = Path::new(log);
    if !log.is_empty() && !p.components().any(|c| c == Component::ParentDir) {
        Ok(p)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a log file path: {log}"),
        ))
    }
}

fn open_append(p: &Path) -> io::Result<fs::File> {
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(p)
}

impl LogStore for LocalLogs {
    fn append(&self, log: &str, data: &[u8]) -> io::Result<u64> {
        let mut file = open_append(path(log)?)?;
        file.write_all(data)?;
        Ok(file.metadata()?.len())
    }

    fn append_at(&self, log: &str, offset: u64, data: &[u8]) -> io::Result<u64> {
        let p = path(log)?;
        let held = fs::metadata(p).map_or(0, |m| m.len());
        if offset > held {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk at byte {offset} but only {held} bytes are stored"),
            ));
        }
        let skip = (held - offset) as usize;
        if skip >= data.len() {
            return Ok(0);
        }
        open_append(p)?.write_all(&data[skip..])?;
        Ok((data.len() - skip) as u64)
    }

    fn len(&self, log: &str) -> io::Result<Option<u64>> {
        match fs::metadata(path(log)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read(&self, log: &str, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let mut file = match fs::File::open(path(log)?) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        file.take(max as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let root = path(prefix)?;
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(p);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, prefix: &str) -> io::Result<()> {
        let p = path(prefix)?;
        let removed = if p.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn local_file(&self, log: &str) -> Option<PathBuf> {
        path(log).ok().map(Path::to_path_buf)
    }
}
