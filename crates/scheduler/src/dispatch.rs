//! Runs that belong on workers. When the queue pass starts such a run, the leader writes a
//! task file for the coordinator instead of running it in-process, counts it as active
//! until the coordinator removes the file (the run ended), and asks for cancellation
//! through a cancel request file.

use std::path::Path;

use indexmap::IndexMap;
use tokio::sync::mpsc;
use trellis_cluster::table::{Phase, Task, TaskSpec};
use trellis_cluster::tasks::{self, Tasks};
use trellis_core::{Dag, WorkerSelector};
use trellis_store::QueueItem;

use crate::config::{Config, ExecutionMode};

/// Whether a DAG runs on a worker: a label selector says so, `local` says no, and
/// without a selector the config's `default_execution_mode` decides.
pub fn wanted(dag: &Dag, config: &Config) -> bool {
    match &dag.worker_selector {
        WorkerSelector::Labels(_) => true,
        WorkerSelector::Local => false,
        WorkerSelector::Any => config.default_execution_mode == ExecutionMode::Distributed,
    }
}

/// The task that hands a queued run to the coordinator, signed when the cluster has a key.
pub fn task(
    item: &QueueItem,
    dag: &Dag,
    now: jiff::Timestamp,
    key: Option<&[u8]>,
) -> Result<Task, String> {
    let mut env = IndexMap::new();
    if let Some(t) = &item.scheduled_time {
        env.insert("DAG_RUN_SCHEDULED_TIME".to_string(), t.clone());
    }
    let definition_json =
        serde_json::to_string(dag).map_err(|e| format!("cannot serialise the DAG: {e}"))?;
    let mut task = Task {
        spec: TaskSpec {
            task_id: uuid::Uuid::now_v7().to_string(),
            dag_name: dag.name.clone(),
            run_id: item.run_id.clone(),
            attempt: 1,
            max_attempts: 1 + dag.retry_policy.as_ref().map_or(0, |p| p.limit),
            definition_json,
            params: item.params.clone().unwrap_or_default(),
            selector: dag.worker_selector.labels(),
            queued_at: item.queued_at.clone(),
            queued_ms: now.as_millisecond(),
            env,
            existing_run: true,
            queue: item.queue.clone(),
            tags: item.tags.clone(),
            signature: String::new(),
            parent: None,
        },
        phase: Phase::pending(),
    };
    if let Some(key) = key {
        task.spec.signature = trellis_cluster::security::sign_task(key, &task.spec);
    }
    Ok(task)
}

/// Where `call` steps with a label selector send their child runs: task files for the
/// coordinator in this data dir, or the database the coordinator shares.
pub fn remote(
    data: &Path,
    store: &trellis_store::Shared,
    key: Option<Vec<u8>>,
) -> trellis_engine::RemoteHandle {
    trellis_engine::RemoteHandle(std::sync::Arc::new(tasks::FileRemote {
        tasks: Tasks::of(data, store),
        registry_dir: trellis_cluster::registry::default_dir(data),
        key,
    }))
}

pub fn cancel(tasks: &Tasks, dag: &str, run_id: &str) {
    if let Err(e) = tasks.request_cancel(dag, run_id) {
        tracing::error!("scheduler: cannot ask to cancel run {run_id} of {dag}: {e}");
    }
}

/// Sends the id of every task file removed (its run ended). Tasks in a database are
/// looked at on each pass instead.
pub fn watch_gone(
    tasks: &Tasks,
    gone: mpsc::UnboundedSender<String>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let Tasks::Files(data) = tasks else {
        return None;
    };
    let dir = tasks::dir(data);
    std::fs::create_dir_all(&dir).ok()?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.kind.is_remove()
        {
            for path in &event.paths {
                if let Some(id) = tasks::id_of(path) {
                    let _ = gone.send(id);
                }
            }
        }
    })
    .ok()?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some(watcher)
}
