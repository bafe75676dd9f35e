//! The daemon's runs: a posted spec gets the next Daggy id, is recorded as a queued
//! Trellis run, waits for one of `dag-threads` slots and is driven in this process by the
//! run-control service, its entries observed for the logger. Kill and retry act on it
//! here (or through the store, for a run this process does not hold).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_executor::Bounded;
use trellis_runs::{Execute, Runs};
use trellis_store::{Entry as StoreEntry, Shared};

use crate::book::{Book, Entry};
use crate::config::Executor;
use crate::observe::Observed;
use crate::prepare::{Prepared, Problem, prepare};
use crate::record::{Event, State};
use crate::sink::Sink;
use crate::{Error, blocking};

/// How long a kill waits for the run to record its end.
const KILL_WAIT: Duration = Duration::from_secs(60);

pub struct Daemon {
    pub(crate) runs: Runs,
    pub(crate) store: Shared,
    pub(crate) book: Book,
    sink: Sink,
    executor: Executor,
    bounded: Option<Arc<Bounded>>,
    dag_slots: Arc<Semaphore>,
    /// Runs this process holds (waiting for a slot or running), to kill them here.
    active: Mutex<HashMap<u64, CancellationToken>>,
    /// Runs launched whose new attempt has not written its first record yet: until it
    /// has, the store still shows the last attempt (ended, or dead), which they are not.
    pub(crate) pending: crate::observe::Pending,
    tracker: TaskTracker,
}

/// A kill or retry that does not apply to the run as it is.
#[derive(Debug)]
pub enum Refused {
    NotFound,
    Conflict(String),
    Failed(Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Refused {
        Refused::Failed(e)
    }
}

impl Daemon {
    pub fn new(
        runs: Runs,
        book: Book,
        sink: Sink,
        executor: Executor,
        dag_threads: usize,
    ) -> Arc<Daemon> {
        let bounded = match &executor {
            Executor::Forking { threads } => Some(Arc::new(Bounded::new(*threads))),
            _ => None,
        };
        Arc::new(Daemon {
            store: runs.store().clone(),
            runs,
            book,
            sink,
            executor,
            bounded,
            dag_slots: Arc::new(Semaphore::new(dag_threads)),
            active: Mutex::new(HashMap::new()),
            pending: Default::default(),
            tracker: TaskTracker::new(),
        })
    }

    /// Checks a spec as `submit` would, recording nothing.
    pub fn validate(&self, text: &str) -> Result<Prepared, Vec<Problem>> {
        prepare(text, self.book.prefix(), &self.executor)
    }

    /// Accepts a spec: records the run (queued) and starts it when a slot frees; its id.
    pub async fn submit(self: &Arc<Self>, prepared: Prepared) -> Result<u64, Error> {
        let Prepared {
            dag,
            tags,
            spec,
            warnings,
        } = prepared;
        for w in &warnings {
            tracing::warn!("daggyd: {}:{}: {}", w.line, w.column, w.message);
        }
        let run = self.book.allocate().await?;
        let entry = Entry {
            run,
            dag: dag.name.clone(),
            run_id: self.book.run_id(run),
        };
        let (store, queued, record) = (self.store.clone(), dag.clone(), entry.clone());
        blocking(move || record_queued(&store, &queued, &record.run_id)).await?;
        self.book.bind(&entry).await?;
        self.sink.send(Event::Created {
            run,
            dag: entry.dag.clone(),
            run_id: entry.run_id.clone(),
            tags,
            spec,
        });
        self.sink.send(Event::Run {
            run,
            change: crate::observe::change(None, State::Queued),
        });
        self.launch(entry, dag, None);
        Ok(run)
    }

    /// Drives the run in a task of its own once a `dag-threads` slot is free.
    pub(crate) fn launch(
        self: &Arc<Self>,
        entry: Entry,
        dag: Dag,
        retry: Option<trellis_engine::Retry>,
    ) {
        let cancel = CancellationToken::new();
        if let Ok(mut active) = self.active.lock() {
            active.insert(entry.run, cancel.clone());
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(entry.run);
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let slot = tokio::select! {
                slot = this.dag_slots.clone().acquire_owned() => slot.ok(),
                () = cancel.cancelled() => None,
            };
            if slot.is_some() {
                this.drive(&entry, dag, retry, cancel).await;
            } else {
                this.never_started(&entry).await;
            }
            if let Ok(mut active) = this.active.lock() {
                active.remove(&entry.run);
            }
            if let Ok(mut pending) = this.pending.lock() {
                pending.remove(&entry.run);
            }
        });
    }

    async fn drive(
        &self,
        entry: &Entry,
        dag: Dag,
        retry: Option<trellis_engine::Retry>,
        cancel: CancellationToken,
    ) {
        let attempts = self.book.redis().is_some();
        let store = Observed::new(self.store.clone(), entry.run, self.sink.clone(), attempts)
            .clearing(self.pending.clone());
        let run = Execute {
            dag: Arc::new(dag),
            params: Vec::new(),
            run_id: entry.run_id.clone(),
            queued: retry.is_none(),
            retry,
            dags_dir: None,
            remote: None,
            env: Vec::new(),
        };
        let ended = match &self.bounded {
            Some(exec) => {
                self.runs
                    .execute_with(store, exec.clone(), run, cancel)
                    .await
            }
            None => self.runs.execute(store, run, cancel).await,
        };
        if let Err(e) = ended {
            tracing::error!("daggyd: run {}: {e}", entry.run);
        }
    }

    /// A run killed while it waited for a slot: recorded as cancelled.
    async fn never_started(&self, entry: &Entry) {
        let (store, e) = (self.store.clone(), entry.clone());
        let ended = blocking(move || {
            let Some(attempt) = store.latest_attempt(&e.dag, &e.run_id)? else {
                return Ok(());
            };
            let Some(mut run) = store.find(&e.dag, &e.run_id)? else {
                return Ok(());
            };
            run.status = Status::Cancelled;
            run.finished_at = Some(trellis_core::ids::Stamp(jiff::Timestamp::now()));
            store.append(&attempt, &StoreEntry::Snapshot(Box::new(run)))?;
            Ok(())
        })
        .await;
        match ended {
            Ok(()) => self.sink.send(Event::Run {
                run: entry.run,
                change: crate::observe::change(None, State::Killed),
            }),
            Err(e) => tracing::error!("daggyd: run {}: cannot record the kill: {e}", entry.run),
        }
    }

    /// Kills a run: here when this process holds it, else through the run-control
    /// service (a run of another daemon sharing the store). Its final state.
    pub async fn kill(&self, run: u64) -> Result<State, Refused> {
        let entry = self.book.lookup(run).await?.ok_or(Refused::NotFound)?;
        let token = self.active.lock().ok().and_then(|a| a.get(&run).cloned());
        let status = match token {
            Some(token) => {
                token.cancel();
                self.runs
                    .wait_final(&entry.dag, &entry.run_id, KILL_WAIT)
                    .await
                    .map_err(|e| Error::Runs(Box::new(e)))?
            }
            None => {
                let record = self.runs.find(&entry.dag, Some(&entry.run_id)).await;
                let record = record.map_err(|e| Error::Runs(Box::new(e)))?;
                self.runs
                    .stop(&record, KILL_WAIT)
                    .await
                    .map_err(|e| Error::Runs(Box::new(e)))?
            }
        };
        Ok(State::of(status))
    }

    /// Starts an ended run again: what completed stays, the rest is queued again.
    pub async fn retry(self: &Arc<Self>, run: u64) -> Result<(), Refused> {
        let entry = self.book.lookup(run).await?.ok_or(Refused::NotFound)?;
        if self.active.lock().is_ok_and(|a| a.contains_key(&run)) {
            return Err(Refused::Conflict(format!(
                "run {run} is active; kill it before retrying"
            )));
        }
        let (Some(previous), Some(dag)) = self.stored(&entry).await? else {
            return Err(Refused::Conflict(format!(
                "run {run} has no record to retry from"
            )));
        };
        let seen = trellis_store::live_status(&previous);
        if !seen.is_final() {
            return Err(Refused::Conflict(format!(
                "run {run} is {}; kill it before retrying",
                State::of(seen).as_str()
            )));
        }
        self.sink.send(Event::Run {
            run,
            change: crate::observe::change(None, State::Queued),
        });
        let retry = trellis_engine::Retry {
            previous,
            from_step: None,
        };
        self.launch(entry, dag, Some(retry));
        Ok(())
    }

    /// The run's raw record (a dead runner's run still reads as running) and definition.
    pub(crate) async fn stored(
        &self,
        entry: &Entry,
    ) -> Result<(Option<RunRecord>, Option<Dag>), Error> {
        let (store, e) = (self.store.clone(), entry.clone());
        blocking(move || {
            let run = store.find(&e.dag, &e.run_id)?;
            Ok((run, store.definition(&e.dag, &e.run_id)?))
        })
        .await
    }

    /// Waits for the runs this process drives (after shutdown stopped the rest).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    pub fn holds(&self, run: u64) -> bool {
        self.active.lock().is_ok_and(|a| a.contains_key(&run))
    }

    /// The run's record as users see it (a dead runner's run reads as failed).
    pub async fn record(&self, entry: &Entry) -> Result<Option<RunRecord>, Error> {
        match self.runs.find(&entry.dag, Some(&entry.run_id)).await {
            Ok(run) => Ok(Some(run)),
            Err(trellis_runs::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Runs(Box::new(e))),
        }
    }
}

/// A new run recorded before it starts, so a crash before the start still lists it.
fn record_queued(store: &Shared, dag: &Dag, run_id: &str) -> Result<(), Error> {
    let attempt = store.create_attempt(&dag.name, run_id, None)?;
    let mut run = RunRecord::new(dag, run_id, attempt.attempt_id.as_str(), Status::Queued);
    run.queued_at = Some(trellis_core::ids::Stamp(jiff::Timestamp::now()));
    store.save_definition(&attempt, dag)?;
    store.append(&attempt, &StoreEntry::Snapshot(Box::new(run)))?;
    Ok(())
}
