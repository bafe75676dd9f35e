//! The leader's side of runs handed to workers: writing their task files, counting them as
//! active until the coordinator removes the files, and adopting those of an earlier leader.

use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::queue::Slot;
use trellis_store::QueueItem;

use super::{Active, Leader};
use crate::clock::Clock;
use crate::dispatch;

impl<C: Clock + 'static> Leader<C> {
    /// Hands a run to the coordinator through a task file.
    pub(super) fn dispatch(&mut self, item: &QueueItem, slot: Slot, dag: &Dag) {
        let key = self.opts.signing_key.as_deref();
        let task = match dispatch::task(item, dag, self.clock.now(), key) {
            Ok(task) => task,
            Err(e) => return self.fail(item, &e),
        };
        if let Err(e) = self.handoff.write(&task) {
            return self.fail(item, &format!("cannot hand the run to a worker: {e}"));
        }
        tracing::info!(
            "scheduler: run {} of {} handed to a worker ({})",
            item.run_id,
            dag.name,
            dag.worker_selector.describe()
        );
        self.active.insert(
            item.run_id.clone(),
            Active {
                slot,
                cancel: CancellationToken::new(),
                task: Some(task.spec.task_id),
            },
        );
    }

    /// Counts the runs already on workers (tasks of an earlier leader) as active.
    pub(super) fn adopt_dispatched(&mut self) {
        // Child runs of `call` steps are their parent's to wait for, not the queue's.
        for task in self.handoff.load_all() {
            if task.spec.parent.is_some() {
                continue;
            }
            let s = task.spec;
            let slot = Slot {
                dag: s.dag_name,
                queue: s.queue,
                tags: s.tags,
            };
            self.active.insert(
                s.run_id,
                Active {
                    slot,
                    cancel: CancellationToken::new(),
                    task: Some(s.task_id),
                },
            );
        }
    }

    /// Runs whose task file is gone have ended (the safety net under the watcher).
    pub(super) fn reap_dispatched(&mut self) {
        if !self.active.values().any(|a| a.task.is_some()) {
            return;
        }
        // One listing for every task (one query on a database).
        let Some(ids) = self.handoff.ids() else {
            return;
        };
        let ended: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.task.as_ref().is_some_and(|t| !ids.contains(t)))
            .map(|(run, _)| run.clone())
            .collect();
        for run in ended {
            self.finished(&run);
        }
    }

    pub(super) fn task_ended(&mut self, task_id: &str) {
        let run = self
            .active
            .iter()
            .find(|(_, a)| a.task.as_deref() == Some(task_id))
            .map(|(run, _)| run.clone());
        if let Some(run) = run {
            self.finished(&run);
        }
    }
}
