//! The file service registry of shared-filesystem mode (Dagu's layout):
//! `{registry}/{coordinator,worker}/<id>.json` holding id, host, port, pid, timestamps,
//! health and the active task count. Each process rewrites its own file every
//! `refresh` (10 s by default) and removes it on a graceful shutdown; readers ignore entries
//! older than 30 s, and the coordinator deletes stale worker entries. Workers find the
//! coordinator here, so they need no address.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// An entry older than this is stale: its process is presumed gone.
pub const STALE_MS: i64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Coordinator,
    Worker,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::Worker => "worker",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    /// `healthy`, or `draining` while a worker shuts down.
    pub status: String,
    #[serde(default)]
    pub active_tasks: u32,
    #[serde(default)]
    pub labels: IndexMap<String, String>,
}

impl Entry {
    pub fn age_ms(&self, now: jiff::Timestamp) -> i64 {
        self.updated_at
            .parse::<jiff::Timestamp>()
            .map_or(i64::MAX, |t| now.duration_since(t).as_millis() as i64)
    }
}

/// `TRELLIS_SERVICE_REGISTRY_DIR` (the CLI sets it from `paths.service_registry_dir`),
/// else `<data>/service-registry`.
pub fn default_dir(data: &Path) -> PathBuf {
    std::env::var_os("TRELLIS_SERVICE_REGISTRY_DIR")
        .map_or_else(|| data.join("service-registry"), PathBuf::from)
}

fn file(root: &Path, kind: Kind, id: &str) -> PathBuf {
    root.join(kind.dir())
        .join(format!("{}.json", trellis_store::safe_name(id)))
}

/// Writes this process's entry whole (temporary file, then rename).
pub fn write(root: &Path, kind: Kind, entry: &Entry) -> std::io::Result<()> {
    let path = file(root, kind, &entry.id);
    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        trellis_store::safe_name(&entry.id),
        entry.pid
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(
        serde_json::to_string(entry)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    fs::rename(tmp, path)
}

pub fn remove(root: &Path, kind: Kind, id: &str) {
    let _ = fs::remove_file(file(root, kind, id));
}

/// Every readable entry of a kind, stale ones included (callers decide).
pub fn list(root: &Path, kind: Kind) -> Vec<Entry> {
    let Ok(entries) = fs::read_dir(root.join(kind.dir())) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
        .collect()
}

/// Live entries, freshest first.
pub fn live(root: &Path, kind: Kind, now: jiff::Timestamp) -> Vec<Entry> {
    let mut out: Vec<Entry> = list(root, kind)
        .into_iter()
        .filter(|e| e.age_ms(now) <= STALE_MS)
        .collect();
    out.sort_by_key(|e| e.age_ms(now));
    out
}

/// Deletes entries not refreshed for [`STALE_MS`]; returns their ids.
pub fn drop_stale(root: &Path, kind: Kind, now: jiff::Timestamp) -> Vec<String> {
    let mut dropped = Vec::new();
    for entry in list(root, kind) {
        if entry.age_ms(now) > STALE_MS {
            remove(root, kind, &entry.id);
            dropped.push(entry.id);
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, updated: jiff::Timestamp) -> Entry {
        Entry {
            id: id.into(),
            host: "127.0.0.1".into(),
            port: 50055,
            pid: 1,
            started_at: updated.to_string(),
            updated_at: updated.to_string(),
            status: "healthy".into(),
            active_tasks: 0,
            labels: IndexMap::new(),
        }
    }

    #[test]
    fn stale_entries_are_ignored_and_dropped() {
        let root = tempfile::tempdir().unwrap();
        let now = jiff::Timestamp::now();
        let old = now - jiff::SignedDuration::from_secs(31);
        write(root.path(), Kind::Worker, &entry("w@1", now)).unwrap();
        write(root.path(), Kind::Worker, &entry("w@2", old)).unwrap();
        let live_ids: Vec<_> = live(root.path(), Kind::Worker, now)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(live_ids, vec!["w@1".to_string()]);
        assert_eq!(drop_stale(root.path(), Kind::Worker, now), vec!["w@2"]);
        assert_eq!(list(root.path(), Kind::Worker).len(), 1);
        remove(root.path(), Kind::Worker, "w@1");
        assert!(list(root.path(), Kind::Worker).is_empty());
    }
}
