//! Task files: the hand-off between the scheduler (which decides a run starts and writes a
//! pending task) and the coordinator (which claims it for a worker and removes the file when
//! the run ends). One JSON file per task under `data/distributed/tasks/`, written whole
//! (temporary file, then rename), so a reader never sees half a task and a coordinator
//! restart reloads every task it had.
//!
//! Cancel requests (`trellis stop` of a run on a worker) are empty files under
//! `data/distributed/cancel/`, named `<dag>~<run_id>`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use trellis_store::state::scope;

use crate::table::Task;

pub fn dir(data: &Path) -> PathBuf {
    data.join("distributed").join("tasks")
}

pub fn cancel_dir(data: &Path) -> PathBuf {
    data.join("distributed").join("cancel")
}

/// Writes (or rewrites) a task file atomically.
pub fn write(data: &Path, task: &Task) -> std::io::Result<()> {
    let dir = dir(data);
    fs::create_dir_all(&dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("{}.json", task.spec.task_id);
    // Unique per write: concurrent persists of one task must not share a temporary file.
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(
        serde_json::to_string(task)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    fs::rename(tmp, dir.join(name))
}

pub fn remove(data: &Path, task_id: &str) -> std::io::Result<()> {
    match fs::remove_file(dir(data).join(format!("{task_id}.json"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn read(path: &Path) -> Option<Task> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// The task id a task file path names (`None` for temporary files).
pub fn id_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    name.strip_suffix(".json").map(str::to_string)
}

/// Every task on disk; unreadable files are reported and skipped.
pub fn load_all(data: &Path) -> Vec<Task> {
    let Ok(entries) = fs::read_dir(dir(data)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if id_of(&path).is_none() {
            continue;
        }
        match read(&path) {
            Some(task) => out.push(task),
            None => tracing::warn!("coordinator: cannot read task file {}", path.display()),
        }
    }
    out
}

/// Asks the coordinator to cancel a run that runs (or waits) on a worker.
pub fn request_cancel(data: &Path, dag: &str, run_id: &str) -> std::io::Result<()> {
    let dir = cancel_dir(data);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(cancel_name(dag, run_id)), b"")
}

pub fn cancel_name(dag: &str, run_id: &str) -> String {
    format!("{}~{run_id}", trellis_store::safe_name(dag))
}

/// Pending cancel requests as (file, dag, run id); the coordinator removes each it handles.
pub fn cancel_requests(data: &Path) -> Vec<(PathBuf, String, String)> {
    let Ok(entries) = fs::read_dir(cancel_dir(data)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (dag, run) = name.split_once('~')?;
            Some((e.path(), dag.to_string(), run.to_string()))
        })
        .collect()
}

/// Where tasks and cancel requests live: task files under a data dir (one machine, or a
/// shared filesystem), or named values in a database store, which every scheduler and
/// coordinator sharing the database sees.
#[derive(Clone, Debug)]
pub enum Tasks {
    Files(PathBuf),
    Store(trellis_store::Shared),
}

/// A cancel request, with how long it has waited.
pub struct CancelRequest {
    key: String,
    pub dag: String,
    pub run_id: String,
    pub age_secs: u64,
}

impl Tasks {
    /// Task files in `data` for the file store; the database for a database store.
    pub fn of(data: &Path, store: &trellis_store::Shared) -> Tasks {
        if store.spans_machines() {
            Tasks::Store(store.clone())
        } else {
            Tasks::Files(data.to_path_buf())
        }
    }

    pub fn write(&self, task: &Task) -> std::io::Result<()> {
        match self {
            Tasks::Files(data) => write(data, task),
            Tasks::Store(store) => {
                let json = serde_json::to_string(task).map_err(std::io::Error::other)?;
                let id = &task.spec.task_id;
                store
                    .put(scope::TASK, id, Some(&json))
                    .map_err(std::io::Error::other)
            }
        }
    }

    pub fn remove(&self, task_id: &str) -> std::io::Result<()> {
        match self {
            Tasks::Files(data) => remove(data, task_id),
            Tasks::Store(store) => store
                .put(scope::TASK, task_id, None)
                .map_err(std::io::Error::other),
        }
    }

    /// Every task; unreadable ones are reported and skipped.
    pub fn load_all(&self) -> Vec<Task> {
        let store = match self {
            Tasks::Files(data) => return load_all(data),
            Tasks::Store(store) => store,
        };
        match store.values(scope::TASK) {
            Ok(values) => values
                .into_iter()
                .filter_map(|(id, json)| match serde_json::from_str(&json) {
                    Ok(task) => Some(task),
                    Err(e) => {
                        tracing::warn!("coordinator: cannot read task {id}: {e}");
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::warn!("cannot list tasks: {e}");
                Vec::new()
            }
        }
    }

    /// Ids of every task (`None` when they cannot be listed now).
    pub fn ids(&self) -> Option<std::collections::HashSet<String>> {
        match self {
            Tasks::Files(data) => {
                let entries = fs::read_dir(dir(data)).ok()?;
                Some(entries.flatten().filter_map(|e| id_of(&e.path())).collect())
            }
            Tasks::Store(store) => {
                let values = store.values(scope::TASK).ok()?;
                Some(values.into_iter().map(|(id, _)| id).collect())
            }
        }
    }

    pub fn request_cancel(&self, dag: &str, run_id: &str) -> std::io::Result<()> {
        match self {
            Tasks::Files(data) => request_cancel(data, dag, run_id),
            Tasks::Store(store) => {
                let now = jiff::Timestamp::now().to_string();
                let key = cancel_name(dag, run_id);
                store
                    .put(scope::CANCEL, &key, Some(&now))
                    .map_err(std::io::Error::other)
            }
        }
    }

    pub fn cancel_requests(&self) -> Vec<CancelRequest> {
        match self {
            Tasks::Files(data) => cancel_requests(data)
                .into_iter()
                .map(|(path, dag, run_id)| {
                    let age = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    let age_secs = age
                        .and_then(|t| t.elapsed().ok())
                        .map_or(0, |e| e.as_secs());
                    let key = path.display().to_string();
                    CancelRequest {
                        key,
                        dag,
                        run_id,
                        age_secs,
                    }
                })
                .collect(),
            Tasks::Store(store) => {
                let now = jiff::Timestamp::now();
                let values = store.values(scope::CANCEL).unwrap_or_default();
                values
                    .into_iter()
                    .filter_map(|(key, at)| {
                        let (dag, run) = key.split_once('~')?;
                        let at: jiff::Timestamp = at.parse().ok()?;
                        let age_secs = now.duration_since(at).as_secs().max(0) as u64;
                        let (dag, run_id) = (dag.to_string(), run.to_string());
                        Some(CancelRequest {
                            key,
                            dag,
                            run_id,
                            age_secs,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Forgets a cancel request that was handled (or waited too long).
    pub fn drop_cancel(&self, request: &CancelRequest) {
        let _ = match self {
            Tasks::Files(_) => fs::remove_file(&request.key).map_err(|e| e.to_string()),
            Tasks::Store(store) => store
                .put(scope::CANCEL, &request.key, None)
                .map_err(|e| e.to_string()),
        };
    }
}

/// Hands child runs of `call` steps with a label `worker_selector` to the coordinator
/// through task files (shared-filesystem mode) or the database, signed when the cluster
/// has a key.
pub struct FileRemote {
    pub tasks: Tasks,
    pub registry_dir: PathBuf,
    pub key: Option<Vec<u8>>,
}

impl trellis_engine::Remote for FileRemote {
    fn start_child(
        &self,
        c: &trellis_engine::RemoteChild<'_>,
    ) -> Result<(), trellis_engine::RemoteError> {
        use crate::registry::{self, Kind};
        use crate::table::{ParentRef, Phase, TaskSpec};
        let now = jiff::Timestamp::now();
        // With a database, coordinators are found by their lease, not a shared registry;
        // a task no coordinator takes fails after the dispatch timeout.
        if matches!(self.tasks, Tasks::Files(_))
            && registry::live(&self.registry_dir, Kind::Coordinator, now).is_empty()
        {
            let labels: Vec<String> = c.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let dag = c.dag.name.clone();
            let selector = labels.join(",");
            return Err(crate::Error::NoCoordinatorForChild { dag, selector }.into());
        }
        let mut spec = TaskSpec {
            task_id: uuid::Uuid::now_v7().to_string(),
            dag_name: c.dag.name.clone(),
            run_id: c.run_id.to_string(),
            attempt: 1,
            max_attempts: 1,
            definition_json: serde_json::to_string(c.dag).map_err(crate::Error::EncodeDag)?,
            params: c.params.to_string(),
            selector: c.selector.clone(),
            queued_at: now.to_string(),
            queued_ms: now.as_millisecond(),
            env: c.env.iter().cloned().collect(),
            existing_run: false,
            queue: String::new(),
            tags: Default::default(),
            signature: String::new(),
            parent: Some(ParentRef::of(c.parent)),
        };
        if let Some(key) = &self.key {
            spec.signature = crate::security::sign_task(key, &spec);
        }
        let task = Task {
            spec,
            phase: Phase::pending(),
        };
        self.tasks.write(&task).map_err(crate::Error::Handoff)?;
        Ok(())
    }

    fn cancel_child(&self, dag: &str, run_id: &str) {
        if let Err(e) = self.tasks.request_cancel(dag, run_id) {
            tracing::error!("cannot ask to cancel sub-DAG run {run_id} of {dag}: {e}");
        }
    }
}
