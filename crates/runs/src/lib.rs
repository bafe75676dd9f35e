//! Run control: the one service ([`Runs`]) that every front end — the CLI, the server,
//! webhooks, and the daemons to come — calls to start, enqueue, stop, retry, restart,
//! dequeue and watch runs. Front ends never pick a mechanism or poll a store themselves:
//! stopping a run is one call whichever process or machine executes it, and returns when
//! the run has ended or the deadline passed.
//!
//! How a run outlives the process that asked for it (the server alone, with no
//! scheduler) is decided here too: [`Launcher`] starts a detached `trellis` process in
//! its own process group, which records the run in the shared store; the service then
//! waits until the run is visible, so the caller gets an id that already resolves.

mod execute;
mod launch;
mod logs;
pub mod queueing;
mod stop;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use trellis_core::status::{RunRecord, Status};
use trellis_store::Shared;

pub use execute::Execute;
pub use launch::{Launch, Launcher};
pub use logs::Stream;
pub use stop::Route;

/// How long a stop waits for the run to record its end, unless told otherwise.
pub const STOP_WITHIN: Duration = Duration::from_secs(60);
/// How long a launched run has to appear in the store.
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
/// How often the store is read while waiting for a run to change.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// What run control can fail with. Front ends map these to exit codes or HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] trellis_store::Error),
    #[error("no run of {dag}{}", run_id.as_ref().map(|id| format!(" with id {id}")).unwrap_or_default())]
    NotFound { dag: String, run_id: Option<String> },
    #[error("run {run_id} is queued but in no queue; try again")]
    NotInAnyQueue { run_id: String },
    #[error("run {run_id} has no process id")]
    NoProcess { run_id: String },
    /// This process was not given a way to start runs that outlive it.
    #[error("this process cannot start detached runs (no launcher)")]
    NoLauncher,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Another request of this process is starting the same run again right now.
    #[error("run {run_id} is already being started again")]
    Busy { run_id: String },
    /// Only a run that has ended can be retried.
    #[error("run {run_id} is {status}: wait for it to end, or stop it, before retrying")]
    NotFinal { run_id: String, status: String },
    #[error("run {run_id} did not {what} within {} s", within.as_secs())]
    Deadline {
        run_id: String,
        what: &'static str,
        within: Duration,
    },
}

impl Error {
    /// Whether asking again later may succeed (a database blip, a deadline).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(trellis_store::Error::Db { transient, .. }) => *transient,
            Error::Store(trellis_store::Error::Unreachable { .. }) => true,
            Error::NotInAnyQueue { .. } | Error::Deadline { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The run-control service. Cheap to clone; every method that touches the store runs it
/// on the blocking pool, so async callers never block a runtime thread.
#[derive(Clone)]
pub struct Runs {
    store: Shared,
    /// Where step logs are read.
    logs: std::sync::Arc<dyn trellis_store::LogStore>,
    /// The data dir: where task and cancel files live on the file store.
    data: PathBuf,
    launcher: Option<Launcher>,
    /// Runs this process is starting again (a retry) until the new attempt shows.
    relaunching: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl Runs {
    pub fn new(store: Shared, data: PathBuf) -> Runs {
        Runs {
            store,
            logs: trellis_store::open_logs(),
            data,
            launcher: None,
            relaunching: Default::default(),
        }
    }

    /// Lets the service start runs that outlive this process.
    pub fn with_launcher(mut self, launcher: Launcher) -> Runs {
        self.launcher = Some(launcher);
        self
    }

    pub fn store(&self) -> &Shared {
        &self.store
    }

    /// Where step logs are read.
    pub fn logs(&self) -> &std::sync::Arc<dyn trellis_store::LogStore> {
        &self.logs
    }

    /// The run as users see it: one whose process is gone reads as failed, "process died".
    pub async fn find(&self, dag: &str, run_id: Option<&str>) -> Result<RunRecord> {
        self.load(dag, run_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                dag: dag.to_string(),
                run_id: run_id.map(String::from),
            })
    }

    /// The run (the DAG's latest without an id) as users see it, if stored.
    async fn load(&self, dag: &str, run_id: Option<&str>) -> Result<Option<RunRecord>> {
        let (store, name, id) = (
            self.store.clone(),
            dag.to_string(),
            run_id.map(String::from),
        );
        let found = blocking(move || {
            Ok(match &id {
                Some(id) => store.find(&name, id)?,
                None => store.latest(&name)?,
            })
        })
        .await?;
        Ok(found.map(|mut run| {
            trellis_store::mark_dead(&mut run);
            run
        }))
    }

    /// Waits until `ready` holds for the stored run (absent runs are waited for too), or
    /// `within` passes (`None`).
    pub async fn watch(
        &self,
        dag: &str,
        run_id: &str,
        within: Duration,
        ready: impl Fn(&RunRecord) -> bool,
    ) -> Result<Option<RunRecord>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(run) = self.load(dag, Some(run_id)).await?
                && ready(&run)
            {
                return Ok(Some(run));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Waits until the run has ended; its final status, or a deadline error.
    pub async fn wait_final(&self, dag: &str, run_id: &str, within: Duration) -> Result<Status> {
        match self
            .watch(dag, run_id, within, |r| r.status.is_final())
            .await?
        {
            Some(run) => Ok(run.status),
            None => Err(Error::Deadline {
                run_id: run_id.to_string(),
                what: "end",
                within,
            }),
        }
    }

    /// Takes a queued run out of `queue` and records it aborted; `None` if it was not
    /// there (or the scheduler took it first).
    pub async fn dequeue(
        &self,
        queue: &str,
        run_id: &str,
    ) -> Result<Option<trellis_store::QueueItem>> {
        let (store, queue, id) = (self.store.clone(), queue.to_string(), run_id.to_string());
        blocking(move || Ok(trellis_store::dequeue(&*store, &queue, &id)?)).await
    }

    /// Puts a run in its queue (idempotent by run id). A blocking store write: async
    /// callers run it on the blocking pool.
    pub fn enqueue(&self, req: queueing::Enqueue<'_>) -> Result<queueing::Outcome> {
        Ok(queueing::enqueue(&*self.store, req)?)
    }
}

/// Runs a store call on the blocking pool: the sync store may wait on a database.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(Error::io("run a store call", std::io::Error::other(e))),
    }
}
