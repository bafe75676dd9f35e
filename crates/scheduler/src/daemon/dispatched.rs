//! The leader's side of runs handed to workers: handing them to the cluster, counting them
//! as active until the cluster says they ended, and adopting those of an earlier leader.

use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::queue::Slot;
use trellis_store::QueueItem;

use super::{Active, Leader};
use crate::clock::Clock;

impl<C: Clock + 'static> Leader<C> {
    /// Hands a run to the cluster.
    pub(super) fn dispatch(&mut self, item: &QueueItem, slot: Slot, dag: &Dag) {
        let task = match self.opts.handoff.hand_off(item, dag, self.clock.now()) {
            Ok(task) => task,
            Err(e) => return self.fail(item, &e.to_string()),
        };
        tracing::info!(
            "scheduler: run {} of {} handed to a worker ({})",
            item.run_id,
            dag.name,
            dag.worker_selector.describe()
        );
        self.active.insert(
            item.run_id.to_string(),
            Active {
                slot,
                cancel: CancellationToken::new(),
                task: Some(task),
                contained: false,
            },
        );
    }

    /// Counts the runs already on workers (an earlier leader's) as active.
    pub(super) fn adopt_dispatched(&mut self) {
        for run in self.opts.handoff.handed_off() {
            self.active.insert(
                run.run_id,
                Active {
                    slot: run.slot,
                    cancel: CancellationToken::new(),
                    task: Some(run.task_id),
                    contained: false,
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
        let Some(ids) = self.opts.handoff.running() else {
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
