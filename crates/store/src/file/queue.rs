//! Queues of the file backend: one JSON file per waiting run under `data/queue/<queue>/`,
//! named `item_<rank>_<stamp>_<run id>.json` so that names sort in start order (higher
//! priority first, then arrival). Files are written whole by rename, so a reader never
//! sees half an item.

use std::fs;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::{FileStore, io, write_atomic};
use crate::Result;

/// Renames a queue file that does not parse to `<name>.corrupt`, out of every later read
/// (items are written whole by rename, so this is damage, not a write in progress).
fn set_aside(path: &Path, why: &serde_json::Error) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    if fs::rename(path, &aside).is_ok() {
        tracing::warn!(
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
        let Some(path) = self.item_path(queue, run_id) else {
            return Ok(false);
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn set_priority(
        &self,
        queue: &str,
        run_id: &str,
        priority: i32,
    ) -> Result<Option<crate::QueueItem>> {
        let Some(path) = self.item_path(queue, run_id) else {
            return Ok(None);
        };
        // Claim the item by renaming it out of the `.json` names readers see: the
        // scheduler cannot start it half-changed, and if it took the item first the
        // rename fails and nothing is written back.
        let claimed = path.with_extension("json.moving");
        match fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        }
        let bytes = fs::read(&claimed).map_err(io(&claimed))?;
        let mut item: crate::QueueItem = match serde_json::from_slice(&bytes) {
            Ok(item) => item,
            Err(e) => {
                set_aside(&claimed, &e);
                return Ok(None);
            }
        };
        item.priority = priority;
        // Same arrival stamp, new rank: the item keeps its place among equal priorities.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let stamp = name
            .as_deref()
            .and_then(parse_item_name)
            .map_or(0, |(stamp, _)| stamp);
        let rank = i64::from(i32::MAX) - i64::from(priority);
        let target =
            path.with_file_name(format!("item_{rank:011}_{stamp:020}_{}.json", item.run_id));
        let json = serde_json::to_vec_pretty(&item).map_err(|e| io(&target)(e.into()))?;
        write_atomic(&target, &json)?;
        fs::remove_file(&claimed).map_err(io(&claimed))?;
        Ok(Some(item))
    }

    fn queues(&self) -> Result<Vec<String>> {
        let root = self.data.join("queue");
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&root)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

impl FileStore {
    /// The file of a queued run: `item_<rank>_<stamp>_<run id>.json`, matched exactly.
    fn item_path(&self, queue: &str, run_id: &str) -> Option<PathBuf> {
        let entries = fs::read_dir(self.queue_dir(queue)).ok()?;
        entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_item_name)
                .is_some_and(|(_, id)| id == run_id)
        })
    }
}

/// `(stamp, run id)` of a queue item's file name.
fn parse_item_name(name: &str) -> Option<(u128, &str)> {
    let rest = name.strip_prefix("item_")?.strip_suffix(".json")?;
    let mut parts = rest.splitn(3, '_');
    let (_rank, stamp, run_id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((stamp.parse().ok()?, run_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Queue, Store};
    use trellis_core::status::{RunRecord, Status};

    fn item(queue: &str, run_id: &str, priority: i32) -> crate::QueueItem {
        crate::QueueItem {
            queue: queue.into(),
            dag_name: "etl".into(),
            run_id: run_id.into(),
            file: "etl.yaml".into(),
            params: None,
            priority,
            queued_at: "2026-11-22T16:00:00Z".parse().unwrap(),
            tags: Default::default(),
            scheduled_time: None,
            queue_limit: None,
        }
    }

    fn ids(items: &[crate::QueueItem]) -> Vec<&str> {
        items.iter().map(|i| i.run_id.as_str()).collect()
    }

    #[test]
    fn a_corrupt_queue_item_is_set_aside() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        let item = item("q", "r1", 0);
        store.enqueue(&item).unwrap();
        let dir = home.path().join("data/queue/q");
        fs::write(dir.join("item_0_0_bad.json"), "{not json").unwrap();
        assert_eq!(store.items("q").unwrap(), vec![item.clone()]);
        assert!(dir.join("item_0_0_bad.json.corrupt").exists());
        assert!(!dir.join("item_0_0_bad.json").exists());
        assert_eq!(store.items("q").unwrap(), vec![item]);
    }

    #[test]
    fn priority_changes_keep_arrival_order_and_match_ids_exactly() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        for id in ["a", "x_a", "b", "c"] {
            store.enqueue(&item("q", id, 0)).unwrap();
        }
        let changed = store.set_priority("q", "a", 3).unwrap().unwrap();
        assert_eq!(changed.priority, 3);
        assert_eq!(ids(&store.items("q").unwrap()), ["a", "x_a", "b", "c"]);
        store.set_priority("q", "c", 3).unwrap();
        assert_eq!(ids(&store.items("q").unwrap()), ["a", "c", "x_a", "b"]);
        store.set_priority("q", "a", -1).unwrap();
        assert_eq!(ids(&store.items("q").unwrap()), ["c", "x_a", "b", "a"]);
        assert!(store.set_priority("q", "nope", 1).unwrap().is_none());
        assert!(store.set_priority("other", "a", 1).unwrap().is_none());
        // `a` must not take `x_a` with it.
        assert!(store.remove_item("q", "a").unwrap());
        assert_eq!(ids(&store.items("q").unwrap()), ["c", "x_a", "b"]);
        assert!(!store.remove_item("q", "a").unwrap());
    }

    #[test]
    fn dequeue_records_the_run_aborted() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        let attempt = store.create_attempt("etl", "r1", None).unwrap();
        let run = RunRecord {
            name: "etl".into(),
            run_id: "r1".into(),
            status: Status::Queued,
            ..RunRecord::default()
        };
        store
            .append(&attempt, &Entry::Snapshot(Box::new(run)))
            .unwrap();
        store.enqueue(&item("q", "r1", 0)).unwrap();
        assert_eq!(
            crate::dequeue(&store, "q", "r1").unwrap().map(|i| i.run_id),
            Some("r1".into())
        );
        assert!(store.items("q").unwrap().is_empty());
        assert_eq!(
            store.find("etl", "r1").unwrap().unwrap().status,
            Status::Aborted
        );
        assert!(crate::dequeue(&store, "q", "r1").unwrap().is_none());
    }
}
