//! The cluster as the scheduler sees it ([`Handoff`]): the scheduler's queue pass decides
//! that a run starts and that it belongs on a worker; how it gets there — task files or
//! task rows, signed specs, cancel requests, knowing when it ended — is the cluster's.
//! [`TaskHandoff`] is today's implementation over [`Tasks`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use tokio::sync::mpsc;
use trellis_core::Dag;
use trellis_core::queue::Slot;
use trellis_store::{QueueItem, Shared};

use crate::table::{Phase, Task, TaskSpec};
use crate::tasks::{self, Tasks};

/// Why a run could not be handed to a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serialise the DAG: {0}")]
    Definition(#[from] serde_json::Error),
    #[error("cannot hand the run to a worker: {0}")]
    Write(#[from] std::io::Error),
}

/// A run on a worker (or waiting for one), as the scheduler counts it.
#[derive(Clone, Debug)]
pub struct HandedOff {
    pub task_id: String,
    pub run_id: String,
    /// The queue slot it holds until it ends.
    pub slot: Slot,
}

/// Keeps whatever announces ended runs alive (a file watcher); drop it to stop.
pub type Watch = Box<dyn std::any::Any + Send>;

/// The cluster as the scheduler uses it.
pub trait Handoff: Send + Sync + std::fmt::Debug {
    /// Hands a started run to a worker whose labels match the DAG's selector; the task id.
    fn hand_off(&self, item: &QueueItem, dag: &Dag, now: jiff::Timestamp) -> Result<String, Error>;
    /// Top-level runs on workers now, an earlier leader's included.
    fn handed_off(&self) -> Vec<HandedOff>;
    /// Ids of the tasks not ended yet (`None` when they cannot be listed now).
    fn running(&self) -> Option<HashSet<String>>;
    /// Asks the worker running `run_id` to stop it (or cancels it before it starts).
    fn cancel(&self, dag: &str, run_id: &str);
    /// Sends the task id of each run that ends, where the cluster can announce it (file
    /// events); otherwise `None` and [`Handoff::running`] is polled.
    fn watch_ended(&self, ended: mpsc::UnboundedSender<String>) -> Option<Watch>;
    /// Where `call` steps with a label selector send their child runs.
    fn remote(&self) -> trellis_engine::RemoteHandle;
}

/// [`Handoff`] over task files in the data dir, or task rows in a store that spans
/// machines; tasks are signed when the cluster has a key.
pub struct TaskHandoff {
    tasks: Tasks,
    data: PathBuf,
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for TaskHandoff {
    // By hand: the signing key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandoff")
            .field("tasks", &self.tasks)
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl TaskHandoff {
    pub fn new(data: &Path, store: &Shared, key: Option<Vec<u8>>) -> TaskHandoff {
        TaskHandoff {
            tasks: Tasks::of(data, store),
            data: data.to_path_buf(),
            key,
        }
    }
}

/// The task that hands a queued run to the coordinator, signed when there is a key.
fn task(
    item: &QueueItem,
    dag: &Dag,
    now: jiff::Timestamp,
    key: Option<&[u8]>,
) -> Result<Task, Error> {
    let mut env = IndexMap::new();
    if let Some(t) = &item.scheduled_time {
        env.insert("DAG_RUN_SCHEDULED_TIME".to_string(), t.clone());
    }
    let mut task = Task {
        spec: TaskSpec {
            task_id: uuid::Uuid::now_v7().to_string(),
            dag_name: dag.name.clone(),
            run_id: item.run_id.to_string(),
            attempt: 1,
            max_attempts: 1 + dag.retry_policy.as_ref().map_or(0, |p| p.limit),
            definition_json: serde_json::to_string(dag)?,
            params: item.params.clone().unwrap_or_default(),
            selector: dag.worker_selector.labels(),
            queued_at: item.queued_at.to_string(),
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
        task.spec.signature = crate::security::sign_task(key, &task.spec);
    }
    Ok(task)
}

impl Handoff for TaskHandoff {
    fn hand_off(&self, item: &QueueItem, dag: &Dag, now: jiff::Timestamp) -> Result<String, Error> {
        let task = task(item, dag, now, self.key.as_deref())?;
        self.tasks.write(&task)?;
        Ok(task.spec.task_id)
    }

    fn handed_off(&self) -> Vec<HandedOff> {
        // Child runs of `call` steps are their parent's to wait for, not the queue's.
        self.tasks
            .load_all()
            .into_iter()
            .filter(|t| t.spec.parent.is_none())
            .map(|t| HandedOff {
                task_id: t.spec.task_id,
                run_id: t.spec.run_id,
                slot: Slot {
                    dag: t.spec.dag_name,
                    queue: t.spec.queue,
                    tags: t.spec.tags,
                },
            })
            .collect()
    }

    fn running(&self) -> Option<HashSet<String>> {
        self.tasks.ids()
    }

    fn cancel(&self, dag: &str, run_id: &str) {
        if let Err(e) = self.tasks.request_cancel(dag, run_id) {
            tracing::warn!("scheduler: cannot ask to cancel run {run_id} of {dag}: {e}");
        }
    }

    fn watch_ended(&self, ended: mpsc::UnboundedSender<String>) -> Option<Watch> {
        use notify::Watcher;
        let Tasks::Files(data) = &self.tasks else {
            return None; // tasks in a database are looked at on each pass instead
        };
        let dir = tasks::dir(data);
        std::fs::create_dir_all(&dir).ok()?;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && event.kind.is_remove()
                {
                    for path in &event.paths {
                        if let Some(id) = tasks::id_of(path) {
                            let _ = ended.send(id);
                        }
                    }
                }
            })
            .ok()?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .ok()?;
        Some(Box::new(watcher))
    }

    fn remote(&self) -> trellis_engine::RemoteHandle {
        trellis_engine::RemoteHandle(std::sync::Arc::new(tasks::FileRemote {
            tasks: self.tasks.clone(),
            registry_dir: crate::registry::default_dir(&self.data),
            key: self.key.clone(),
        }))
    }
}
