//! What a new leader repairs: runs a dead scheduler was executing, queue items lost in a
//! crash, and ticks that were claimed but never queued.

use super::*;

/// An enqueue writes the run's record just before its queue item: only a run queued this
/// long ago can have lost its item.
const ITEM_GRACE_SECS: f64 = 10.0;

impl<C: Clock + 'static> Leader<C> {
    /// Runs the previous leader was executing when it died are recorded as failed and
    /// queued again as a new attempt, so a killed scheduler never leaves a run stuck.
    /// Makes sure nothing a dead leader left half-done is lost: runs it was executing
    /// (recorded as running under a pid that is gone — holding the lock proves the previous
    /// leader is) are failed and queued again; queued runs whose queue item is missing (taken
    /// just before a crash) get it back; a claimed tick whose run was never written is
    /// enqueued.
    pub(super) fn recover(&mut self, previous: Option<(String, u32)>) {
        let entries: Vec<(Dag, PathBuf)> = self
            .catalog
            .entries
            .iter()
            .filter_map(|e| e.dag.as_ref().ok().map(|d| (d.clone(), e.path.clone())))
            .collect();
        let mut in_queues: std::collections::HashSet<String> = self
            .queued_items()
            .into_iter()
            .map(|i| i.run_id.into())
            .collect();
        // Runs handed to workers are the coordinator's to recover.
        in_queues.extend(self.active.keys().cloned());
        for (i, run) in self.unfinished_runs(&entries) {
            let (dag, path) = &entries[i];
            // In a container of its own: its container says when it ends.
            if run.status == Status::Running
                && run
                    .host
                    .as_deref()
                    .is_some_and(|h| h.starts_with("container/"))
            {
                self.adopt_launched(dag, &run);
                continue;
            }
            let orphaned = run.status == Status::Running
                && run.queued
                && run.worker_id.is_none()
                && (ran_in(&run, previous.as_ref()) || died_here(&run));
            let age = run
                .queued_at
                .map(|t| Timestamp::now().duration_since(t.0).as_secs_f64());
            let settled = age.is_some_and(|a| a >= ITEM_GRACE_SECS);
            let missing = run.status == Status::Queued && !in_queues.contains(run.run_id.as_str());
            if missing && !settled {
                self.recheck_in(ITEM_GRACE_SECS - age.unwrap_or(0.0));
            }
            if orphaned || (missing && settled) {
                self.requeue(dag, path, run, orphaned);
            }
        }
        for (dag, path) in &entries {
            if let Some(at) = self
                .last_recorded_tick(&dag.name)
                .filter(|at| !matches!(self.store.tick_skipped(&dag.name, &stamp(*at)), Ok(true)))
                && matches!(
                    self.store.find(&dag.name, &queueing::scheduled_run_id(at)),
                    Ok(None)
                )
            {
                tracing::warn!(
                    "scheduler: tick {at} of {} was claimed but never queued; queuing it",
                    dag.name
                );
                self.enqueue_tick(dag, path, at);
            }
        }
    }

    /// Every run not finished yet, with the index of its DAG in `entries`: all of them
    /// when the store can find them cheaply, else the 50 newest of each DAG (a long queue
    /// could hide an orphan behind them).
    fn unfinished_runs(
        &self,
        entries: &[(Dag, PathBuf)],
    ) -> Vec<(usize, trellis_core::status::RunRecord)> {
        let index: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, (d, _))| (d.name.as_str(), i))
            .collect();
        if let Some(Ok(runs)) = self.store.unfinished(usize::MAX) {
            return runs
                .into_iter()
                .filter_map(|r| Some((*index.get(r.name.as_str())?, r)))
                .collect();
        }
        let newest = |(i, (d, _)): (usize, &(Dag, PathBuf))| {
            let runs = self.store.list(&d.name, 50).unwrap_or_default();
            runs.into_iter().map(move |r| (i, r))
        };
        entries.iter().enumerate().flat_map(newest).collect()
    }

    /// Recovery again, every 30 s while leading: a run the previous leader took from its
    /// queue just before it died may still have looked freshly queued at takeover.
    /// Sooner when the last recovery saw a queued run without its item that was too young
    /// to restore: then as soon as it is old enough.
    pub(super) fn sweep(&mut self) {
        let now = std::time::Instant::now();
        let due = self.recheck.is_some_and(|t| now >= t);
        match self.swept {
            None if !due => self.swept = Some(now),
            Some(t) if !due && t.elapsed() < std::time::Duration::from_secs(30) => {}
            _ => {
                self.swept = Some(now);
                self.recheck = None;
                self.recover(None);
            }
        }
    }

    /// Gives the re-queued run the orphan's steps, so that it resumes (see
    /// `Leader::resume_of`): what succeeded is kept, and a step whose work outlives its
    /// runner (a container) is reattached rather than run a second time.
    fn carry_progress(&self, dag: &Dag, orphan: &trellis_core::status::RunRecord) {
        // The attempt the enqueue just made, not a new one.
        let (Ok(Some(mut queued)), Ok(Some(attempt))) = (
            self.store.find(&dag.name, &orphan.run_id),
            self.store.latest_attempt(&dag.name, &orphan.run_id),
        ) else {
            return;
        };
        queued.steps = orphan.steps.clone();
        for step in &mut queued.steps {
            if matches!(step.status, Status::Running | Status::Retrying) {
                step.status = Status::Failed;
                step.error = Some("process died".into());
            }
        }
        if let Err(e) = self
            .store
            .append(&attempt, &Entry::Snapshot(Box::new(queued)))
        {
            tracing::error!(
                "scheduler: run {}: cannot keep its progress: {e}",
                orphan.run_id
            );
        }
    }

    /// Asks for recovery again in `secs` (the earliest such request wins).
    fn recheck_in(&mut self, secs: f64) {
        let at = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs.max(0.0));
        self.recheck = Some(self.recheck.map_or(at, |t| t.min(at)));
    }

    pub(super) fn requeue(
        &self,
        dag: &Dag,
        path: &std::path::Path,
        mut run: trellis_core::status::RunRecord,
        orphaned: bool,
    ) {
        let scheduled_time = scheduled_time_of(&run.run_id);
        if orphaned {
            run.status = Status::Failed;
            run.error = Some("process died (its scheduler was killed); queued again".into());
            if let Ok(attempt) = self.store.retry_attempt(&dag.name, &run.run_id) {
                let _ = self
                    .store
                    .append(&attempt, &Entry::Snapshot(Box::new(run.clone())));
            }
            let params = run.params_text();
            let req = Enqueue {
                params,
                scheduled_time,
                ..Enqueue::new(dag, path, run.run_id.to_string())
            };
            match queueing::enqueue(&*self.store, req) {
                Ok(_) => {
                    self.carry_progress(dag, &run);
                    tracing::warn!(
                        "scheduler: run {} of {} was orphaned by a dead scheduler; queued again",
                        run.run_id,
                        dag.name
                    )
                }
                Err(e) => tracing::error!(
                    "scheduler: cannot re-queue orphaned run {}: {e}",
                    run.run_id
                ),
            }
            return;
        }
        let item = QueueItem {
            queue: dag.queue.clone().unwrap_or_else(|| dag.name.clone()),
            dag_name: dag.name.clone(),
            run_id: run.run_id.clone(),
            file: path.display().to_string(),
            params: run.params_text(),
            priority: 0,
            queued_at: Timestamp::now().into(),
            tags: dag.labels.clone(),
            scheduled_time: scheduled_time.map(|t| t.to_string()),
            queue_limit: None,
        };
        match self.store.enqueue(&item) {
            Ok(()) => tracing::warn!(
                "scheduler: queued run {} of {} had lost its queue item; restored",
                run.run_id,
                dag.name
            ),
            Err(e) => tracing::error!(
                "scheduler: cannot restore the queue item of run {}: {e}",
                run.run_id
            ),
        }
    }

    pub(super) fn enqueue_tick(&self, dag: &Dag, path: &std::path::Path, at: Timestamp) {
        let req = Enqueue {
            scheduled_time: Some(at),
            ..Enqueue::new(dag, path, queueing::scheduled_run_id(at))
        };
        if let Err(e) = queueing::enqueue(&*self.store, req) {
            tracing::error!("scheduler: {} at {at}: cannot enqueue: {e}", dag.name);
        }
    }
}

/// The run was executed by the previous leader's process (which is gone: its lease was).
/// A run recorded before runs named their machine is taken to be on the leader's.
fn ran_in(run: &trellis_core::status::RunRecord, previous: Option<&(String, u32)>) -> bool {
    previous.is_some_and(|(host, pid)| {
        run.pid == Some(*pid)
            && run
                .host
                .as_deref()
                .is_none_or(|h| h == host || host.is_empty())
    })
}

/// The run's process was on this machine and is gone. A process on another machine can
/// only be judged by its scheduler's lease ([`ran_in`]).
fn died_here(run: &trellis_core::status::RunRecord) -> bool {
    let here = run
        .host
        .as_deref()
        .is_none_or(|h| h == trellis_store::hostname());
    here && run.pid.is_some_and(|p| !trellis_store::process_alive(p))
}
