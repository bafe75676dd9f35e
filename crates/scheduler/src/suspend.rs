//! Suspended schedules: a flag file per DAG under `data/suspend/`, set from the API or UI.
//! A suspended DAG's ticks are claimed and marked skipped, so resuming it does not fire a
//! burst of missed runs; manual and queued runs are not affected.

use std::fs;
use std::path::{Path, PathBuf};

fn flag(data: &Path, dag: &str) -> PathBuf {
    data.join("suspend")
        .join(format!("{}.suspended", trellis_store::safe_name(dag)))
}

pub fn is_suspended(data: &Path, dag: &str) -> bool {
    flag(data, dag).exists()
}

/// Suspends (`true`) or resumes (`false`) a DAG's schedules.
pub fn set(data: &Path, dag: &str, suspended: bool) -> std::io::Result<()> {
    let path = flag(data, dag);
    if suspended {
        fs::create_dir_all(path.parent().unwrap_or(data))?;
        fs::write(path, jiff::Timestamp::now().to_string())
    } else {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The leader's heartbeat: rewritten every few seconds while it leads, so a health check
/// can tell a live scheduler from a dead one.
pub mod heartbeat {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct Heartbeat {
        pub holder: String,
        pub token: u64,
        pub at: String,
    }

    fn path(data: &Path) -> PathBuf {
        data.join("scheduler").join("heartbeat.json")
    }

    pub fn write(data: &Path, beat: &Heartbeat) -> std::io::Result<()> {
        let tmp = data.join("scheduler").join("heartbeat.json.tmp");
        fs::write(&tmp, serde_json::to_string(beat).unwrap_or_default())?;
        fs::rename(tmp, path(data))
    }

    pub fn read(data: &Path) -> Option<Heartbeat> {
        serde_json::from_str(&fs::read_to_string(path(data)).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_and_resume() {
        let data = tempfile::tempdir().unwrap();
        assert!(!is_suspended(data.path(), "etl"));
        set(data.path(), "etl", true).unwrap();
        assert!(is_suspended(data.path(), "etl"));
        set(data.path(), "etl", false).unwrap();
        set(data.path(), "etl", false).unwrap();
        assert!(!is_suspended(data.path(), "etl"));
    }
}
