//! Putting runs in the queue, shared by `trellis enqueue`, schedules and backfills. A run
//! id derived from (DAG, scheduled time) makes enqueueing idempotent: a tick or a backfill
//! seen twice finds its run and does not add another.

use std::path::Path;

use indexmap::IndexMap;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_store::{Entry, Queue, QueueItem, Store};

/// What to enqueue.
pub struct Enqueue<'a> {
    pub dag: &'a Dag,
    pub file: &'a Path,
    pub run_id: String,
    pub params: Option<String>,
    pub tags: IndexMap<String, String>,
    pub priority: i32,
    pub scheduled_time: Option<jiff::Timestamp>,
    /// Queue name; default the DAG's `queue`, else its name.
    pub queue: Option<String>,
    pub queue_limit: Option<usize>,
}

impl<'a> Enqueue<'a> {
    /// A run of `dag` with no params, tags or priority, in the DAG's own queue.
    pub fn new(dag: &'a Dag, file: &'a Path, run_id: String) -> Enqueue<'a> {
        Enqueue {
            dag,
            file,
            run_id,
            params: None,
            tags: IndexMap::new(),
            priority: 0,
            scheduled_time: None,
            queue: None,
            queue_limit: None,
        }
    }
}

/// What happened to an enqueue request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Queued,
    /// A run with this id already succeeded, is queued or is running.
    Exists(Status),
}

/// Records the run as queued and writes its queue item. A run with the same id that ended
/// without succeeding is queued again as a new attempt.
pub fn enqueue<S: Store + Queue + ?Sized>(
    store: &S,
    req: Enqueue,
) -> trellis_store::Result<Outcome> {
    let existing = store.find(&req.dag.name, &req.run_id)?;
    let attempt = match &existing {
        Some(run)
            if !run.status.is_final()
                || matches!(run.status, Status::Succeeded | Status::PartiallySucceeded) =>
        {
            return Ok(Outcome::Exists(run.status));
        }
        Some(_) => store.retry_attempt(&req.dag.name, &req.run_id)?,
        None => store.create_attempt(&req.dag.name, &req.run_id, None)?,
    };
    store.save_definition(&attempt, req.dag)?;
    let record = RunRecord {
        params: req.params.iter().cloned().collect(),
        queued_at: Some(jiff::Timestamp::now().into()),
        ..RunRecord::new(req.dag, &req.run_id, &attempt.attempt_id, Status::Queued)
    };
    store.append(&attempt, &Entry::Snapshot(Box::new(record)))?;
    let file = std::fs::canonicalize(req.file).unwrap_or_else(|_| req.file.to_path_buf());
    let mut tags = req.dag.labels.clone();
    tags.extend(req.tags);
    let item = QueueItem {
        queue: req
            .queue
            .or_else(|| req.dag.queue.clone())
            .unwrap_or_else(|| req.dag.name.clone()),
        dag_name: req.dag.name.clone(),
        run_id: req.run_id.into(),
        file: file.display().to_string(),
        params: req.params,
        priority: req.priority,
        queued_at: jiff::Timestamp::now().into(),
        tags,
        scheduled_time: req.scheduled_time.map(|t| t.to_string()),
        queue_limit: req.queue_limit,
    };
    store.enqueue(&item)?;
    Ok(Outcome::Queued)
}

/// The run id of a scheduled or backfilled run: the same for the same (DAG, time).
pub fn scheduled_run_id(at: jiff::Timestamp) -> String {
    format!("sched-{}", stamp(at))
}

/// The stored form of a tick time: `20261122T160000Z`.
pub fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Puts `dag.enqueue` steps' runs in the queues of `store` (what `trellis enqueue` does),
/// for the engines of `trellis start`, the server and the scheduler.
pub struct StoreEnqueuer(pub trellis_store::Shared);

impl trellis_engine::Enqueuer for StoreEnqueuer {
    fn enqueue(
        &self,
        dag: &Dag,
        params: &str,
        queue: Option<&str>,
    ) -> std::result::Result<String, trellis_engine::RemoteError> {
        let run_id = trellis_engine::new_run_id();
        // No file: a scheduler starts the run from the definition stored with it (a
        // sub-DAG of another file has no file of its own), unless the dags dir has the DAG.
        let mut req = Enqueue::new(dag, Path::new(""), run_id.clone());
        req.params = (!params.trim().is_empty()).then(|| params.to_string());
        req.queue = queue.map(String::from);
        match enqueue(&*self.0, req)? {
            Outcome::Queued => Ok(run_id),
            other => Err(format!("not queued: {other:?}").into()),
        }
    }
}

/// The engine's handle on [`StoreEnqueuer`].
pub fn enqueuer(store: trellis_store::Shared) -> trellis_engine::EnqueueHandle {
    trellis_engine::EnqueueHandle(std::sync::Arc::new(StoreEnqueuer(store)))
}
