//! Runs driven in this process, to their end: `trellis start|retry|restart` in the
//! foreground. The service wires the engine (local executor, the environment steps may
//! see, where child runs with a label selector go) and listens for a stop from another
//! machine, so a front end only says what to run and renders what happens.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::params::ParamValue;
use trellis_core::status::RunRecord;
use trellis_engine::{Engine, Options, RemoteHandle, Retry, RunRequest};
use trellis_executor::{Executor, Local};
use trellis_store::Store;

use crate::{Error, Result, Runs};

/// A run to drive here.
pub struct Execute {
    pub dag: Arc<Dag>,
    pub params: Vec<ParamValue>,
    pub run_id: String,
    /// A new attempt of an ended run (same id) that keeps what succeeded.
    pub retry: Option<Retry>,
    /// Where `call:` looks for sub-DAG files and relative paths start.
    pub dags_dir: Option<PathBuf>,
    /// Where `call` steps with a label selector send their child runs.
    pub remote: Option<RemoteHandle>,
    /// The run was queued (its record exists): it gets a new attempt.
    pub queued: bool,
    /// Extra variables for every step (`DAG_RUN_SCHEDULED_TIME`).
    pub env: Vec<(String, String)>,
}

impl Runs {
    /// Drives the run until it ends or `cancel` fires (a stop request from another machine
    /// sharing the store fires it too); its final record. `store` is where the run is
    /// recorded: this service's store, or a wrapper of it (a progress display).
    pub async fn execute<S: Store + ?Sized + 'static>(
        &self,
        store: Arc<S>,
        run: Execute,
        cancel: CancellationToken,
    ) -> Result<RunRecord> {
        self.execute_with(store, Arc::new(Local), run, cancel).await
    }

    /// [`Runs::execute`] with the executor of command steps given: a daemon bounding the
    /// processes of all its runs together (daggyd's `threads`) passes a bounded one.
    pub async fn execute_with<S: Store + ?Sized + 'static, E: Executor + 'static>(
        &self,
        store: Arc<S>,
        exec: Arc<E>,
        run: Execute,
        cancel: CancellationToken,
    ) -> Result<RunRecord> {
        let opts = Options {
            dags_dir: run.dags_dir,
            base_env: trellis_engine::inherited_env(),
            worker_id: None,
            remote: run.remote,
            enqueue: Some(crate::queueing::enqueuer(self.store.clone())),
            executors: trellis_executor::Registry::builtin(),
        };
        let engine = Engine::new(store, exec, opts);
        let (this, name, id, token) = (
            self.clone(),
            run.dag.name.clone(),
            run.run_id.clone(),
            cancel.clone(),
        );
        let listener = tokio::spawn(async move { this.listen_for_stop(&name, &id, token).await });
        let req = RunRequest {
            locals: Arc::new(run.dag.local_dags.clone()),
            dag: run.dag,
            params: run.params,
            run_id: run.run_id.into(),
            parent: None,
            retry: run.retry,
            env: run.env,
            queued: run.queued,
        };
        // A task of its own on the runtime's workers (not driven from the caller's
        // thread), so a step's spawn and its settle do not hop between threads.
        let driven = tokio::spawn(async move { engine.run(req, cancel).await }).await;
        listener.abort();
        match driven {
            Ok(record) => Ok(record?),
            Err(e) => Err(Error::io("drive the run", std::io::Error::other(e))),
        }
    }
}
