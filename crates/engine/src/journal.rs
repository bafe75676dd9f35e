//! The run's writer: every entry the run loop records goes into a bounded queue that a
//! task of its own applies to the store on the blocking pool, in order, in batches. The
//! store may wait on a database (a restart, a failover) for minutes; that delays the
//! record, never a step, and never blocks a runtime thread. A write that fails for good
//! is not dropped silently: it is counted, logged, and listed in the run's `warnings`.
//! A store that never waits (local files) is written in place instead. The run's first and
//! last snapshots are written here too, directly, since they bracket the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};
use trellis_core::status::RunRecord;
use trellis_executor::Executor;
use trellis_store::{Attempt, Entry, Store};

use crate::setup::initial_record;
use crate::{Engine, RunRequest};

/// Entries waiting beyond this hold the run loop before it starts more steps.
const CAPACITY: usize = 4096;
/// Warnings kept per run; later failures are only counted.
const MAX_WARNINGS: usize = 20;

static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);

/// Store writes of runs in this process that failed for good (for metrics and health).
pub fn failed_writes() -> u64 {
    FAILED_WRITES.load(Ordering::Relaxed)
}

enum Op {
    Append(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Op>>,
    /// Wakes the writer when the queue gets an op.
    pending: Notify,
    /// Wakes the run loop when the queue has room again.
    room: Notify,
    warnings: Mutex<(Vec<String>, u64)>,
    /// The run loop dropped its journal: write what is left, then stop.
    closed: std::sync::atomic::AtomicBool,
}

type Inline = Box<dyn Fn(&Entry) -> trellis_store::Result<()> + Send + Sync>;

/// The run loop's side of the writer. Dropping it lets the writer finish what is queued.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    /// Writes made in place, for a store that never waits ([`Store::may_wait`]): a
    /// hand-off to another thread would only add latency to every step.
    inline: Option<(Inline, String)>,
}

impl Journal {
    /// Starts the writer of `attempt` on the current runtime.
    pub(crate) fn start<S: Store + ?Sized + 'static>(store: Arc<S>, attempt: Attempt) -> Journal {
        let shared = Arc::new(Shared::default());
        if !store.may_wait() {
            let run_id = attempt.run_id.to_string();
            let write: Inline = Box::new(move |entry| store.append(&attempt, entry));
            return Journal {
                shared,
                inline: Some((write, run_id)),
            };
        }
        tokio::spawn(write_loop(store, attempt, shared.clone()));
        Journal {
            shared,
            inline: None,
        }
    }

    /// Queues an entry (or writes it, see `inline`); never waits for a database.
    pub(crate) fn push(&self, entry: Entry) {
        if let Some((write, run_id)) = &self.inline {
            if let Err(e) = write(&entry) {
                let failure = format!("cannot record {}: {e}", describe(&entry));
                record(&self.shared, run_id, vec![failure]);
            }
            return;
        }
        self.enqueue(Op::Append(Box::new(entry)));
    }

    fn enqueue(&self, op: Op) {
        lock(&self.shared.queue).push_back(op);
        self.shared.pending.notify_one();
    }

    /// Waits while the queue is over capacity (the store is slow or away).
    pub(crate) async fn room(&self) {
        if self.inline.is_some() {
            return;
        }
        loop {
            let notified = self.shared.room.notified();
            if lock(&self.shared.queue).len() < CAPACITY {
                return;
            }
            notified.await;
        }
    }

    /// Tells `done` once everything queued so far is written (or failed).
    pub(crate) fn flush_then(&self, done: oneshot::Sender<()>) {
        match self.inline {
            Some(_) => {
                let _ = done.send(());
            }
            None => self.enqueue(Op::Flush(done)),
        }
    }

    /// Waits until everything queued so far is written (or failed); the warnings so far.
    pub(crate) async fn flush(&self) -> Vec<String> {
        if self.inline.is_none() {
            let (tx, rx) = oneshot::channel();
            self.enqueue(Op::Flush(tx));
            let _ = rx.await;
        }
        let (mut warnings, count) = lock(&self.shared.warnings).clone();
        if count > warnings.len() as u64 {
            let more = count - warnings.len() as u64;
            warnings.push(format!("{more} more store writes failed"));
        }
        warnings
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.pending.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes everything queued, writes it on the blocking pool, and repeats until the run
/// loop has dropped its [`Journal`] and the queue is empty.
async fn write_loop<S: Store + ?Sized + 'static>(
    store: Arc<S>,
    attempt: Attempt,
    shared: Arc<Shared>,
) {
    loop {
        let batch: Vec<Op> = lock(&shared.queue).drain(..).collect();
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            // `notify_one` keeps a permit when nobody waits, so no push is missed.
            shared.pending.notified().await;
            continue;
        }
        shared.room.notify_waiters();
        let (store, target) = (store.clone(), attempt.clone());
        let written =
            tokio::task::spawn_blocking(move || write_batch(&*store, &target, batch)).await;
        let (failures, flushes) =
            written.unwrap_or_else(|e| (vec![format!("the store writer failed: {e}")], Vec::new()));
        record(&shared, &attempt.run_id, failures);
        // Answered after the failures are recorded, so a flush sees them.
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn record(shared: &Shared, run_id: &str, failures: Vec<String>) {
    if failures.is_empty() {
        return;
    }
    let mut warnings = lock(&shared.warnings);
    for failure in failures {
        FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(run_id, "{failure}");
        warnings.1 += 1;
        if warnings.0.len() < MAX_WARNINGS {
            warnings.0.push(failure);
        }
    }
}

type Written = (Vec<String>, Vec<oneshot::Sender<()>>);

/// Applies the appends in order; the failures, as warnings, and the flushes to answer.
/// Once a write has failed after the store's own retries (minutes for a database), the
/// rest of the batch is not tried: each would wait as long again, and the run's end with
/// them.
fn write_batch<S: Store + ?Sized>(store: &S, attempt: &Attempt, batch: Vec<Op>) -> Written {
    let (mut failures, mut flushes) = (Vec::new(), Vec::new());
    let mut failed = false;
    for op in batch {
        match op {
            Op::Append(entry) if failed => {
                failures.push(format!(
                    "not recorded after an earlier failure: {}",
                    describe(&entry)
                ));
            }
            Op::Append(entry) => {
                if let Err(e) = store.append(attempt, entry.as_ref()) {
                    failures.push(format!("cannot record {}: {e}", describe(&entry)));
                    failed = true;
                }
            }
            Op::Flush(done) => flushes.push(done),
        }
    }
    (failures, flushes)
}

fn describe(entry: &Entry) -> String {
    match entry {
        Entry::Snapshot(_) => "the run's state".into(),
        Entry::Step { step, .. } => format!("step {} ({})", step.name, step.status),
        Entry::Handler { name, step } => format!("handler {name} ({})", step.status),
    }
}

/// The run's first and last record: whole snapshots, written in place (not queued), since
/// the run cannot start before the first is stored and is not over before the last is.
impl<S: Store + ?Sized + 'static, E: Executor + 'static> Engine<S, E> {
    /// The attempt and its first record, written before any step starts.
    pub(crate) async fn begin(
        &self,
        req: &RunRequest,
    ) -> Result<(Attempt, RunRecord), trellis_store::Error> {
        let store = self.store.clone();
        let (dag, run_id, parent) = (req.dag.clone(), req.run_id.clone(), req.parent.clone());
        let existing = req.retry.is_some() || req.queued;
        let attempt = blocking(&*self.store, move || {
            let attempt = match existing {
                true => store.retry_attempt(&dag.name, &run_id)?,
                false => store.create_attempt(&dag.name, &run_id, parent.as_ref())?,
            };
            store.save_definition(&attempt, &dag)?;
            Ok(attempt)
        })
        .await?;
        let mut run = initial_record(req, &attempt);
        run.worker_id = self.opts.worker_id.clone();
        self.write_snapshot(attempt, run).await
    }

    /// Writes the whole record on the blocking pool, without copying it (a 10 000-step
    /// record is megabytes).
    pub(crate) async fn write_snapshot(
        &self,
        attempt: Attempt,
        run: RunRecord,
    ) -> Result<(Attempt, RunRecord), trellis_store::Error> {
        let store = self.store.clone();
        blocking(&*self.store, move || {
            let entry = Entry::Snapshot(Box::new(run));
            store.append(&attempt, &entry)?;
            let Entry::Snapshot(run) = entry else {
                unreachable!("built as a snapshot above")
            };
            Ok((attempt, *run))
        })
        .await
    }
}

/// Runs `f`, which calls a store that may wait minutes for an absent database, as a
/// blocking section of an async task (a leader's pass, a coordinator's upkeep): on a
/// multi-thread runtime the other tasks move to the other threads meanwhile, so no step
/// and no request waits behind it.
pub fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs store calls on the blocking pool when the store may wait on a database; inline
/// for one that answers at once (another thread would only cost time and memory, and a
/// larger process makes every step's fork slower).
async fn blocking<S: Store + ?Sized, T: Send + 'static>(
    store: &S,
    f: impl FnOnce() -> Result<T, trellis_store::Error> + Send + 'static,
) -> Result<T, trellis_store::Error> {
    if !store.may_wait() {
        return f();
    }
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(trellis_store::Error::Io {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}
