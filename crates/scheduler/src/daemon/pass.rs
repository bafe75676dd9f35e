//! The queue pass: every queued run of every queue, decided in one place
//! (`trellis_core::queue::decide`), then started in-process or handed to a worker.

use super::*;
use crate::dispatch;

impl<C: Clock + 'static> Leader<C> {
    /// One pass of the queue: every item of every queue, decided in one place.
    pub(super) fn process_queue(&mut self, now: Timestamp) {
        let items = self.queued_items();
        if items.is_empty() {
            return;
        }
        let mut limits = self.opts.config.limits();
        for item in &items {
            if let Some(limit) = item.queue_limit {
                limits.queues.insert(item.queue.clone(), limit);
            }
        }
        let candidates: Vec<Candidate> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.candidate(item, i))
            .collect();
        let running: Vec<Slot> = self.active.values().map(|a| a.slot.clone()).collect();
        let decision = decide(&limits, &running, &candidates);
        for &i in &decision.start {
            self.start(&items[i], candidates[i].slot.clone());
        }
        self.fail_stale(&items, &decision.blocked, now);
    }

    pub(super) fn queued_items(&self) -> Vec<QueueItem> {
        let queues = self.store.queues().unwrap_or_else(|e| {
            tracing::warn!("scheduler: cannot list queues: {e}");
            Vec::new()
        });
        let mut items: Vec<QueueItem> = queues
            .iter()
            .flat_map(|q| self.store.items(q).unwrap_or_default())
            .collect();
        items.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.queued_at.cmp(&b.queued_at))
        });
        items
    }

    pub(super) fn candidate(&self, item: &QueueItem, seq: usize) -> Candidate {
        let max_active = self
            .catalog
            .find(&item.dag_name)
            .and_then(|e| e.dag.as_ref().ok())
            .map_or(Some(1), |d| match d.max_active_runs {
                None => Some(1),
                Some(n) if n < 0 => None,
                Some(n) => Some(n as usize),
            });
        let slot = Slot {
            dag: item.dag_name.clone(),
            queue: item.queue.clone(),
            tags: item.tags.clone(),
        };
        Candidate {
            slot,
            priority: item.priority,
            seq: seq as u64,
            max_active_runs: max_active,
        }
    }

    /// Takes the item out of its queue (if another process took it first, nothing happens)
    /// and runs it in this process.
    pub(super) fn start(&mut self, item: &QueueItem, slot: Slot) {
        if !self
            .store
            .take(self.token, &item.queue, &item.run_id)
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "scheduler: cannot take run {} from its queue: {e}",
                    item.run_id
                );
                false
            })
        {
            return;
        }
        // A run that is no longer queued (a stale duplicate item) must not run twice.
        if let Ok(Some(run)) = self.store.find(&item.dag_name, &item.run_id)
            && run.status != Status::Queued
        {
            tracing::warn!(
                "scheduler: run {} of {} is {}, not queued; its queue item was dropped",
                item.run_id,
                item.dag_name,
                run.status
            );
            return;
        }
        let dag = match self.definition(item) {
            Ok(dag) => Arc::new(dag),
            Err(e) => return self.fail(item, &e.to_string()),
        };
        let params = match trellis_spec::resolve_params(&dag, item.params.as_deref(), &[]) {
            Ok(values) => values,
            Err(errors) => {
                return self.fail(
                    item,
                    &errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        };
        if dispatch::wanted(&dag, &self.opts.config) {
            return self.dispatch(item, slot, &dag);
        }
        if let Some(launcher) = self.opts.config.run_launcher.clone() {
            return self.launch(item, slot, &launcher);
        }
        let cancel = CancellationToken::new();
        self.active.insert(
            item.run_id.to_string(),
            Active {
                slot,
                cancel: cancel.clone(),
                task: None,
                contained: false,
            },
        );
        let env = item
            .scheduled_time
            .iter()
            .map(|t| ("DAG_RUN_SCHEDULED_TIME".to_string(), t.clone()))
            .collect();
        let req = RunRequest {
            locals: Arc::new(dag.local_dags.clone()),
            dag,
            params,
            run_id: item.run_id.clone(),
            parent: None,
            retry: self.resume_of(item),
            env,
            queued: true,
        };
        let (engine, done, run_id) = (self.engine.clone(), self.done.clone(), item.run_id.clone());
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = engine.run(req, cancel).await {
                tracing::error!("scheduler: run {run_id}: {e}");
            }
            let _ = done.send(run_id.into());
        }));
    }

    /// A queued run that carries the steps of an attempt whose runner died (recovery
    /// put them there) resumes from them, as a retry of what did not succeed.
    fn resume_of(&self, item: &QueueItem) -> Option<trellis_engine::Retry> {
        let run = self
            .store
            .find(&item.dag_name, &item.run_id)
            .ok()
            .flatten()?;
        let progressed = run.steps.iter().any(|s| s.status != Status::NotStarted);
        progressed.then_some(trellis_engine::Retry {
            previous: run,
            from_step: None,
        })
    }

    /// The DAG as it is now in the dags dir, else the file named at enqueue time, else
    /// the definition stored with the run.
    pub(super) fn definition(&self, item: &QueueItem) -> Result<Dag, crate::Error> {
        if let Some(Ok(dag)) = self.catalog.find(&item.dag_name).map(|e| e.dag.clone()) {
            return Ok(dag);
        }
        catalog::load(std::path::Path::new(&item.file)).or_else(|e| {
            self.store
                .definition(&item.dag_name, &item.run_id)
                .ok()
                .flatten()
                .ok_or(e)
        })
    }

    /// Records a queued run as failed with the reason.
    pub(super) fn fail(&self, item: &QueueItem, reason: &str) {
        tracing::error!(
            "scheduler: run {} of {} failed to start: {reason}",
            item.run_id,
            item.dag_name
        );
        let Ok(Some(mut run)) = self.store.find(&item.dag_name, &item.run_id) else {
            return;
        };
        run.status = Status::Failed;
        run.error = Some(reason.to_string());
        run.finished_at = Some(Timestamp::now().into());
        if let Ok(attempt) = self.store.retry_attempt(&item.dag_name, &item.run_id) {
            let _ = self.store.append(&attempt, &Entry::Snapshot(Box::new(run)));
        }
    }

    /// Runs queued longer than `queue_timeout_sec` fail with the reason they waited.
    pub(super) fn fail_stale(
        &self,
        items: &[QueueItem],
        blocked: &[(usize, String)],
        now: Timestamp,
    ) {
        let Some(limit) = self.opts.config.scheduler.queue_timeout_sec else {
            return;
        };
        for (i, reason) in blocked {
            let item = &items[*i];
            let queued = item.queued_at.timestamp();
            if now.duration_since(queued).as_secs() >= limit as i64
                && self
                    .store
                    .remove_item(&item.queue, &item.run_id)
                    .unwrap_or(false)
            {
                self.fail(item, &format!("queued for more than {limit} s: {reason}"));
            }
        }
    }
}
