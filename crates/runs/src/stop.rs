//! Stopping a run wherever it executes. The mechanism follows from where the run is:
//! - on (or waiting for) a worker: a cancel request the coordinator relays at the
//!   worker's next heartbeat, or that cancels the task before it starts;
//! - still queued: taken out of its queue and recorded aborted (like `dequeue`);
//! - started from a queue (a scheduler executes it in its own process, with other runs),
//!   run by this very process, or by a process on another machine sharing the database:
//!   a stop request in the store, which schedulers look for twice a second and foreground
//!   runners on a database every second;
//! - run by a `trellis start|retry|restart` on this machine: SIGTERM to it, which cancels
//!   the run cleanly.
//!
//! In every case the run's own process records the end; [`Runs::stop`] waits for it.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use trellis_cluster::tasks::{Tasks, cancel_name};
use trellis_core::status::{RunRecord, Status};
use trellis_store::state::scope;

use crate::{Error, Result, Runs, blocking};

/// How a stop reaches a run (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Worker,
    Queue,
    Request,
    Process(u32),
}

impl Runs {
    /// Stops `run` and waits up to `within` for it to record its end; its final status.
    /// A run that already ended is left as it is.
    pub async fn stop(&self, run: &RunRecord, within: Duration) -> Result<Status> {
        if run.status.is_final() {
            return Ok(run.status);
        }
        // The caller's copy may be old: the run may have ended (or been stopped) since.
        let run = &self.find(&run.name, Some(&run.run_id)).await?;
        if run.status.is_final() {
            return Ok(run.status);
        }
        let (this, target) = (self.clone(), run.clone());
        blocking(move || this.request_stop(&target)).await?;
        let ended = self.wait_final(&run.name, &run.run_id, within).await;
        if ended.is_err() {
            // Not left behind for a later attempt of the same run id to find.
            let (store, key) = (self.store.clone(), cancel_name(&run.name, &run.run_id));
            let _ = blocking(move || Ok(store.put(scope::STOP, &key, None)?)).await;
        }
        ended
    }

    /// Asks whatever executes `run` to stop, without waiting.
    fn request_stop(&self, run: &RunRecord) -> Result<()> {
        let tasks = Tasks::of(&self.data, &self.store);
        match self.route(run, &tasks)? {
            Route::Worker => tasks
                .request_cancel(&run.name, &run.run_id)
                .map_err(|e| Error::io("ask the coordinator to stop the run", e)),
            Route::Queue => {
                for queue in self.store.queues()? {
                    if trellis_store::dequeue(&*self.store, &queue, &run.run_id)?.is_some() {
                        return Ok(());
                    }
                }
                Err(Error::NotInAnyQueue {
                    run_id: run.run_id.to_string(),
                })
            }
            Route::Request => {
                let key = cancel_name(&run.name, &run.run_id);
                let now = jiff::Timestamp::now().to_string();
                Ok(self.store.put(scope::STOP, &key, Some(&now))?)
            }
            Route::Process(pid) => {
                let pid = i32::try_from(pid).map_err(|_| Error::NoProcess {
                    run_id: run.run_id.to_string(),
                })?;
                match kill(Pid::from_raw(pid), Signal::SIGTERM) {
                    // Gone already: it ended, or died; the record says which.
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(Error::io("signal the run's process", e.into())),
                }
            }
        }
    }

    fn route(&self, run: &RunRecord, tasks: &Tasks) -> Result<Route> {
        let on_worker = run.worker_id.is_some()
            || tasks
                .load_all()
                .iter()
                .any(|t| t.spec.dag_name == run.name && t.spec.run_id == run.run_id);
        if on_worker {
            return Ok(Route::Worker);
        }
        if run.status == Status::Queued {
            return Ok(Route::Queue);
        }
        let elsewhere = self.store.spans_machines()
            && run
                .host
                .as_deref()
                .is_some_and(|h| h != trellis_store::hostname());
        // A scheduler runs queued runs in its own process: a signal would stop them all.
        let shared_process = run.queued || run.pid == Some(std::process::id());
        if elsewhere || shared_process {
            return Ok(Route::Request);
        }
        run.pid.map(Route::Process).ok_or_else(|| Error::NoProcess {
            run_id: run.run_id.to_string(),
        })
    }

    /// Cancels `cancel` when a stop request for the run appears in the store (a `stop`
    /// from another machine sharing the database). For processes that execute a run in
    /// the foreground; on one machine a stop arrives as SIGTERM instead.
    pub async fn listen_for_stop(
        &self,
        dag: &str,
        run_id: &str,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        if !self.store.spans_machines() {
            return;
        }
        let key = cancel_name(dag, run_id);
        // A request from well before this run started was for an earlier attempt (the
        // margin allows for clocks of machines that disagree a little).
        let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(30);
        while !cancel.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return,
            }
            let (store, key) = (self.store.clone(), key.clone());
            let asked = blocking(move || {
                let Some(at) = store.get(scope::STOP, &key)? else {
                    return Ok(false);
                };
                store.put(scope::STOP, &key, None)?;
                let old = at.parse::<jiff::Timestamp>().is_ok_and(|t| t < since);
                Ok(!old)
            })
            .await;
            match asked {
                Ok(true) => cancel.cancel(),
                Ok(false) => {}
                Err(e) => tracing::warn!(run_id, error = %e, "cannot read stop requests"),
            }
        }
    }
}
