//! What a starting daemon does with the runs a killed one left: a run still queued starts;
//! a run whose runner died resumes. Its completed tasks keep their results; a task in a
//! container or a Slurm job is reattached by the engine (its handle is recorded); a task
//! that was a process of the dead daemon died with it, and that try counts: it is tried
//! again while its `maxRetries` allow, else the run ends Errored, saying so. Nothing is
//! left looking as if it still ran.

use std::sync::Arc;

use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_store::{Entry as StoreEntry, Shared};

use crate::book::Entry;
use crate::daemon::Daemon;
use crate::{Error, blocking};

/// Why a try ended without a result.
const DIED: &str = "daggyd died while the task ran";

impl Daemon {
    /// Starts or resumes every run of this daemon's ids that a dead process left.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        let mut resumed = 0;
        for entry in self.book.list().await? {
            let (Some(run), Some(dag)) = self.stored(&entry).await? else {
                continue;
            };
            if self.resume(entry, run, dag).await? {
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    async fn resume(
        self: &Arc<Self>,
        entry: Entry,
        run: RunRecord,
        dag: Dag,
    ) -> Result<bool, Error> {
        if run.status == Status::Queued && run.pid.is_none() {
            tracing::info!("daggyd: run {} was queued; starting it", entry.run);
            self.launch(entry, dag, None);
            return Ok(true);
        }
        if run.status.is_final() || trellis_store::live_status(&run) != Status::Failed {
            return Ok(false); // ended, or still driven by a live process
        }
        match interrupted(&run, dag) {
            Resume::Again(dag) => {
                tracing::info!("daggyd: run {} lost its runner; resuming it", entry.run);
                let retry = trellis_engine::Retry {
                    previous: run,
                    from_step: None,
                };
                self.launch(entry, *dag, Some(retry));
            }
            Resume::Exhausted(task) => {
                tracing::warn!("daggyd: run {}: task {task} has no retries left", entry.run);
                let store = self.store.clone();
                blocking(move || fail(&store, &entry, run, &task)).await?;
            }
        }
        Ok(true)
    }
}

enum Resume {
    /// The DAG with the retries the lost tries used taken off.
    Again(Box<Dag>),
    /// A task lost its last try.
    Exhausted(String),
}

/// Counts each lost try against its task's retries.
fn interrupted(run: &RunRecord, mut dag: Dag) -> Resume {
    for record in &run.steps {
        // A recorded handle is reattached, not lost; a step waiting to retry lost nothing.
        if record.status != Status::Running || record.handle.is_some() {
            continue;
        }
        let Some(step) = dag.steps.iter_mut().find(|s| s.name == record.name) else {
            continue;
        };
        let used = record.retry_count + 1;
        match step.retry_policy.as_mut() {
            Some(policy) if policy.limit >= used => policy.limit -= used,
            _ => return Resume::Exhausted(record.name.clone()),
        }
    }
    Resume::Again(Box::new(dag))
}

/// Records the run Errored: the task's lost try ended it.
fn fail(store: &Shared, entry: &Entry, mut run: RunRecord, task: &str) -> Result<(), Error> {
    let Some(attempt) = store.latest_attempt(&entry.dag, &entry.run_id)? else {
        return Ok(());
    };
    let now = trellis_core::ids::Stamp(jiff::Timestamp::now());
    for step in &mut run.steps {
        if step.status == Status::Running {
            step.status = Status::Failed;
            step.error = Some(DIED.into());
            step.finished_at = Some(now);
        }
    }
    run.status = Status::Failed;
    run.error = Some(format!("{DIED}: task {task} has no retries left"));
    run.finished_at = Some(now);
    store.append(&attempt, &StoreEntry::Snapshot(Box::new(run)))?;
    Ok(())
}
