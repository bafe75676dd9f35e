//! The record of schedule ticks: one file per (DAG, scheduled time), created with
//! `O_EXCL`, so a tick fires exactly once however many schedulers see it.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

fn dag_dir(data: &Path, dag: &str) -> PathBuf {
    data.join("scheduler")
        .join("ticks")
        .join(trellis_store::safe_name(dag))
}

/// File-name form of a tick: `20261122T160000Z`.
pub fn stamp(t: Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Claims a tick. `Ok(false)` means it was already claimed (fired before).
pub fn claim(data: &Path, dag: &str, at: Timestamp) -> std::io::Result<bool> {
    let dir = dag_dir(data, dag);
    fs::create_dir_all(&dir)?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(stamp(at)))
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Notes that a claimed tick deliberately started no run (`skip_if_successful`), so that
/// recovery does not mistake it for a tick lost in a crash.
pub fn mark_skipped(data: &Path, dag: &str, at: Timestamp) {
    let _ = fs::write(dag_dir(data, dag).join(stamp(at)), "skipped");
}

pub fn skipped(data: &Path, dag: &str, at: Timestamp) -> bool {
    fs::read_to_string(dag_dir(data, dag).join(stamp(at))).is_ok_and(|s| s == "skipped")
}

/// The latest tick claimed for a DAG.
pub fn last(data: &Path, dag: &str) -> Option<Timestamp> {
    let names = fs::read_dir(dag_dir(data, dag)).ok()?;
    let latest = names
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &latest)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_claimed_once() {
        let data = tempfile::tempdir().unwrap();
        let t: Timestamp = "2026-11-22T16:00:00Z".parse().unwrap();
        assert!(claim(data.path(), "etl", t).unwrap());
        assert!(!claim(data.path(), "etl", t).unwrap());
        let later: Timestamp = "2026-11-22T16:00:01Z".parse().unwrap();
        assert!(claim(data.path(), "etl", later).unwrap());
        assert_eq!(last(data.path(), "etl"), Some(later));
        assert_eq!(last(data.path(), "other"), None);
    }
}
