//! The seam for `call` steps whose `worker_selector` names labels: the child run goes to a
//! worker instead of running in this process. The engine hands it over through a
//! [`Remote`] (the cluster writes a task for the coordinator) and waits for the child's
//! record to end, reading it from the store under the parent's attempt.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::status::RunRecord;
use trellis_store::{Attempt, Store};

/// A child run to start on a worker.
pub struct RemoteChild<'a> {
    pub dag: &'a Dag,
    pub run_id: &'a str,
    /// Params as one `K=V ...` string.
    pub params: &'a str,
    pub env: &'a [(String, String)],
    /// The parent's attempt: the child is stored under it.
    pub parent: &'a Attempt,
    pub selector: &'a IndexMap<String, String>,
}

/// Why a [`Remote`] could not hand a child over, in the implementor's own error type (the
/// engine only records its message).
pub type RemoteError = Box<dyn std::error::Error + Send + Sync>;

/// Starts child runs on workers.
pub trait Remote: Send + Sync {
    /// Hands the child over; `Err` says why it cannot be (e.g. no coordinator runs).
    fn start_child(&self, child: &RemoteChild<'_>) -> Result<(), RemoteError>;
    /// Asks for the child to stop (the parent was cancelled).
    fn cancel_child(&self, dag: &str, run_id: &str);
}

/// A [`Remote`] in the engine's options (Debug for the options' sake).
#[derive(Clone)]
pub struct RemoteHandle(pub Arc<dyn Remote>);

impl std::fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteHandle")
    }
}

/// Starts the child on a worker and waits until its record is final. A cancelled parent
/// asks the child to stop and keeps waiting for it to end.
pub(crate) async fn run_child<S: Store + ?Sized>(
    remote: &RemoteHandle,
    store: &S,
    child: RemoteChild<'_>,
    cancel: &CancellationToken,
) -> Result<RunRecord, crate::Error> {
    crate::blocking_section(|| remote.0.start_child(&child)).map_err(crate::Error::Remote)?;
    let mut asked_to_stop = false;
    loop {
        let record = crate::blocking_section(|| store.find_child(child.parent, child.run_id))
            .map_err(crate::Error::Store)?;
        if let Some(r) = record.filter(|r| r.status.is_final()) {
            return Ok(r);
        }
        if cancel.is_cancelled() && !asked_to_stop {
            crate::blocking_section(|| remote.0.cancel_child(&child.dag.name, child.run_id));
            asked_to_stop = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled(), if !asked_to_stop => {}
        }
    }
}

/// Puts runs in a scheduler's queue (Dagu's `dag.enqueue`): given by whoever builds the
/// engine over a store with queues; the engine never waits for what it enqueues.
pub trait Enqueuer: Send + Sync {
    /// Queues a run of `dag` with `params` (`K=V ...`) in `queue` (else the DAG's own);
    /// the new run's id, or why it could not be queued.
    fn enqueue(&self, dag: &Dag, params: &str, queue: Option<&str>) -> Result<String, RemoteError>;
}

/// An [`Enqueuer`] in the engine's options.
#[derive(Clone)]
pub struct EnqueueHandle(pub Arc<dyn Enqueuer>);

impl std::fmt::Debug for EnqueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnqueueHandle")
    }
}
