//! Shared-nothing mode, worker side. The worker keeps its runs in its own local store (so
//! its logs and records survive a coordinator outage on its disk) and relays them: the
//! latest run record of each task, and the new bytes of each step log, sent with their
//! byte offsets. What is not acknowledged is sent again; the coordinator drops bytes it
//! already holds. The buffer is bounded: one record per task (a newer one replaces it),
//! and log bytes that stay in their local files until sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::Notify;
use trellis_core::Dag;
use trellis_core::status::RunRecord;
use trellis_store::{Attempt, Entry, Store};

/// A run being relayed.
#[derive(Default)]
struct Tracked {
    record: Option<RunRecord>,
    /// The record changed since it was last sent.
    dirty: bool,
    log_dir: Option<PathBuf>,
}

/// The worker's store: the shared store, or (in shared-nothing mode) its local file store
/// plus a copy of each task's record to relay.
pub struct Relay {
    inner: trellis_store::Shared,
    forward: bool,
    /// Run id → task id, for runs about to start.
    tracked: Mutex<HashMap<String, (String, Tracked)>>,
    pub changed: Notify,
}

impl Relay {
    pub fn new(inner: trellis_store::Shared, forward: bool) -> Relay {
        Relay {
            inner,
            forward,
            tracked: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Tracked)>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts relaying the top-level run `run_id` of a task.
    pub fn track(&self, run_id: &str, task_id: &str) {
        if self.forward {
            self.lock().insert(
                run_id.to_string(),
                (task_id.to_string(), Tracked::default()),
            );
        }
    }

    pub fn untrack(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    /// The record to send, if it changed since the last call.
    pub fn take_dirty(&self, run_id: &str) -> Option<RunRecord> {
        let mut map = self.lock();
        let (_, t) = map.get_mut(run_id)?;
        if !t.dirty {
            return None;
        }
        t.dirty = false;
        t.record.clone()
    }

    /// Marks the record unsent again (its send failed).
    pub fn mark_dirty(&self, run_id: &str) {
        if let Some((_, t)) = self.lock().get_mut(run_id) {
            t.dirty = true;
        }
    }

    pub fn latest(&self, run_id: &str) -> Option<RunRecord> {
        self.lock().get(run_id).and_then(|(_, t)| t.record.clone())
    }

    pub fn log_dir(&self, run_id: &str) -> Option<PathBuf> {
        self.lock().get(run_id).and_then(|(_, t)| t.log_dir.clone())
    }

    fn note_attempt(&self, run_id: &str, parent: bool, attempt: &Attempt) {
        if parent {
            return;
        }
        if let Some((_, t)) = self.lock().get_mut(run_id) {
            t.log_dir = Some(attempt.log_dir.clone());
        }
    }
}

impl Store for Relay {
    fn may_wait(&self) -> bool {
        self.inner.may_wait()
    }

    fn create_attempt(
        &self,
        dag: &str,
        run_id: &str,
        parent: Option<&Attempt>,
    ) -> trellis_store::Result<Attempt> {
        let attempt = self.inner.create_attempt(dag, run_id, parent)?;
        self.note_attempt(run_id, parent.is_some(), &attempt);
        Ok(attempt)
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> trellis_store::Result<()> {
        self.inner.append(attempt, entry)?;
        if !self.forward || attempt.run_id != attempt.root_run_id {
            return Ok(());
        }
        let mut map = self.lock();
        if let Some((_, t)) = map.get_mut(attempt.run_id.as_str())
            && t.log_dir.as_deref() == Some(attempt.log_dir.as_path())
        {
            entry.clone().apply(&mut t.record);
            t.dirty = true;
            drop(map);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    fn latest(&self, dag: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.latest(dag)
    }

    fn find(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find(dag, run_id)
    }

    /// A worker without the shared store has no earlier attempt of the run: it starts
    /// the run afresh in its local store (the coordinator adds the attempt on its side).
    fn retry_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Attempt> {
        let attempt = match self.inner.retry_attempt(dag, run_id) {
            Ok(a) => a,
            Err(_) if self.forward => self.inner.create_attempt(dag, run_id, None)?,
            Err(e) => return Err(e),
        };
        self.note_attempt(run_id, false, &attempt);
        Ok(attempt)
    }

    fn find_child(
        &self,
        parent: &Attempt,
        run_id: &str,
    ) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find_child(parent, run_id)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Attempt>> {
        self.inner.latest_attempt(dag, run_id)
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> trellis_store::Result<()> {
        self.inner.save_definition(attempt, dag)
    }

    fn definition(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Dag>> {
        self.inner.definition(dag, run_id)
    }

    fn list(&self, dag: &str, limit: usize) -> trellis_store::Result<Vec<RunRecord>> {
        self.inner.list(dag, limit)
    }

    fn dag_names(&self) -> trellis_store::Result<Vec<String>> {
        self.inner.dag_names()
    }

    fn remove(&self, dag: &str, run_id: &str) -> trellis_store::Result<()> {
        self.inner.remove(dag, run_id)
    }

    fn history(&self, dag: &str, run_id: &str) -> trellis_store::Result<Vec<(String, Entry)>> {
        self.inner.history(dag, run_id)
    }
}

/// The step log files of an attempt: (file stem = step, stream, path).
pub fn log_files(dir: &Path) -> Vec<(String, i32, PathBuf)> {
    use crate::proto::log_chunk::Stream;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?.to_string();
            let stream = match path.extension()?.to_str()? {
                "out" => Stream::Stdout as i32,
                "err" => Stream::Stderr as i32,
                _ => return None,
            };
            Some((stem, stream, path))
        })
        .collect();
    out.sort();
    out
}
