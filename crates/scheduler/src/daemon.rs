//! `trellis scheduler`: waits for the leader lease, then fires schedules and starts queued
//! runs within the limits, in this process. Dequeue is driven by events — a run finishing,
//! a queue file appearing — with a one-second timer as the safety net.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_core::queue::{Candidate, Slot, decide};
use trellis_core::status::Status;
use trellis_core::{Dag, Schedule};
use trellis_engine::{Engine, Options as EngineOptions, RunRequest};
use trellis_executor::Local;
use trellis_store::{Entry, FileStore, Queue, QueueItem, Store};

use crate::catalog::{self, Catalog};
use crate::clock::{Clock, Cron};
use crate::config::Config;
use crate::queueing::{self, Enqueue};
use crate::{dispatch, lease, ticks};

/// How the scheduler is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub home: PathBuf,
    pub dags_dir: PathBuf,
    pub config: Config,
    /// Names this process in the lease file and logs.
    pub id: String,
    /// The cluster signing key: tasks handed to workers are signed with it.
    pub signing_key: Option<Vec<u8>>,
}

/// A run this scheduler started and has not seen finish.
struct Active {
    slot: Slot,
    cancel: CancellationToken,
    /// The task file of a run handed to a worker.
    task: Option<String>,
}

struct Leader<C> {
    opts: Options,
    /// Fencing token of this leader's lease.
    token: u64,
    data: PathBuf,
    clock: Arc<C>,
    store: Arc<FileStore>,
    engine: Engine<FileStore, Local>,
    catalog: Catalog,
    active: HashMap<String, Active>,
    last_tick: HashMap<String, Timestamp>,
    started: Timestamp,
    done: mpsc::UnboundedSender<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// DAG-level `retry_policy`: re-runs due, and how many each run has had.
    retries: Vec<(Timestamp, String, String)>,
    retried: HashMap<String, u32>,
}

/// Runs until `shutdown`: as a follower until the lease is free, then as the leader.
pub async fn run<C: Clock + 'static>(
    opts: Options,
    clock: Arc<C>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let data = trellis_store::data_dir(&opts.home);
    let lease = loop {
        if let Some(lease) = lease::try_acquire(&data, &opts.id)? {
            break lease;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    eprintln!(
        "scheduler {}: leading (fencing token {})",
        opts.id, lease.info.token
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let store = Arc::new(FileStore::new(&opts.home));
    let engine_opts = EngineOptions {
        dags_dir: Some(opts.dags_dir.clone()),
        base_env: std::env::vars().collect(),
        worker_id: None,
    };
    let engine = Engine::new(store.clone(), Arc::new(Local), engine_opts);
    let started = clock.now();
    let mut leader = Leader {
        opts,
        token: lease.info.token,
        data,
        clock,
        store,
        engine,
        catalog: Catalog::default(),
        active: HashMap::new(),
        last_tick: HashMap::new(),
        started,
        done: done_tx,
        tasks: Vec::new(),
        retries: Vec::new(),
        retried: HashMap::new(),
    };
    // Loaded here for `recover`; report what does not load now, as `lead` sees no change.
    if leader.catalog.refresh(&leader.opts.dags_dir) {
        leader.report_invalid();
    }
    leader.adopt_dispatched();
    leader.recover(
        lease
            .previous
            .as_ref()
            .map(|p| p.pid)
            .filter(|p| *p != std::process::id()),
    );
    leader.lead(done_rx, shutdown).await;
    drop(lease);
    Ok(())
}

impl<C: Clock + 'static> Leader<C> {
    async fn lead(
        &mut self,
        mut done: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) {
        let (wake_tx, mut wake) = mpsc::unbounded_channel::<()>();
        let _watcher = watch_queue(&self.data.join("queue"), wake_tx);
        let (gone_tx, mut gone) = mpsc::unbounded_channel::<String>();
        let _gone_watcher = dispatch::watch_gone(&self.data, gone_tx);
        let mut last_beat = None;
        loop {
            if self.catalog.refresh(&self.opts.dags_dir) {
                self.report_invalid();
            }
            let now = self.clock.now();
            self.beat(now, &mut last_beat);
            self.reap_dispatched();
            self.fire_due(now);
            self.retry_due(now);
            self.process_queue(now);
            let wait = self.until_next_tick(now);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(run_id) = done.recv() => self.finished(&run_id),
                Some(task_id) = gone.recv() => self.task_ended(&task_id),
                Some(()) = wake.recv() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for active in self.active.values() {
            active.cancel.cancel();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Runs the previous leader was executing when it died are recorded as failed and
    /// queued again as a new attempt, so a killed scheduler never leaves a run stuck.
    /// Makes sure nothing a dead leader left half-done is lost: runs it was executing
    /// (recorded as running under a pid that is gone — holding the lock proves the previous
    /// leader is) are failed and queued again; queued runs whose queue item is missing (taken
    /// just before a crash) get it back; a claimed tick whose run was never written is
    /// enqueued.
    fn recover(&mut self, previous_pid: Option<u32>) {
        let entries: Vec<(Dag, PathBuf)> = self
            .catalog
            .entries
            .iter()
            .filter_map(|e| e.dag.as_ref().ok().map(|d| (d.clone(), e.path.clone())))
            .collect();
        let mut in_queues: std::collections::HashSet<String> =
            self.queued_items().into_iter().map(|i| i.run_id).collect();
        // Runs handed to workers are the coordinator's to recover.
        in_queues.extend(self.active.keys().cloned());
        for (dag, path) in &entries {
            for run in self.store.list(&dag.name, 50).unwrap_or_default() {
                let orphaned = run.status == Status::Running
                    && run.queued
                    && run.worker_id.is_none()
                    && run
                        .pid
                        .is_some_and(|p| Some(p) == previous_pid || !alive(p));
                // An enqueue writes the record just before the queue item: only a run queued
                // well before this scheduler took over can have lost its item.
                let settled = run
                    .queued_at
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| Timestamp::now().duration_since(t).as_secs() >= 10);
                let lost_item =
                    run.status == Status::Queued && settled && !in_queues.contains(&run.run_id);
                if orphaned || lost_item {
                    self.requeue(dag, path, run, orphaned);
                }
            }
            if let Some(at) = ticks::last(&self.data, &dag.name)
                .filter(|at| !ticks::skipped(&self.data, &dag.name, *at))
                && matches!(
                    self.store.find(&dag.name, &queueing::scheduled_run_id(at)),
                    Ok(None)
                )
            {
                eprintln!(
                    "scheduler: tick {at} of {} was claimed but never queued; queuing it",
                    dag.name
                );
                self.enqueue_tick(dag, path, at);
            }
        }
    }

    fn requeue(
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
                ..Enqueue::new(dag, path, run.run_id.clone())
            };
            match queueing::enqueue(&self.store, req) {
                Ok(_) => eprintln!(
                    "scheduler: run {} of {} was orphaned by a dead scheduler; queued again",
                    run.run_id, dag.name
                ),
                Err(e) => eprintln!(
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
            queued_at: Timestamp::now().to_string(),
            tags: dag.labels.clone(),
            scheduled_time: scheduled_time.map(|t| t.to_string()),
            queue_limit: None,
        };
        match self.store.enqueue(&item) {
            Ok(()) => eprintln!(
                "scheduler: queued run {} of {} had lost its queue item; restored",
                run.run_id, dag.name
            ),
            Err(e) => eprintln!(
                "scheduler: cannot restore the queue item of run {}: {e}",
                run.run_id
            ),
        }
    }

    fn enqueue_tick(&self, dag: &Dag, path: &std::path::Path, at: Timestamp) {
        let req = Enqueue {
            scheduled_time: Some(at),
            ..Enqueue::new(dag, path, queueing::scheduled_run_id(at))
        };
        if let Err(e) = queueing::enqueue(&self.store, req) {
            eprintln!("scheduler: {} at {at}: cannot enqueue: {e}", dag.name);
        }
    }

    /// A run ended: its slot frees, and a failed run of a DAG with a `retry_policy` is due
    /// again after the policy's interval (with backoff), up to its limit.
    fn finished(&mut self, run_id: &str) {
        let Some(active) = self.active.remove(run_id) else {
            return;
        };
        let Some(Ok(dag)) = self.catalog.find(&active.slot.dag).map(|e| e.dag.clone()) else {
            return;
        };
        let Some(policy) = &dag.retry_policy else {
            return;
        };
        let failed = matches!(self.store.find(&dag.name, run_id), Ok(Some(run)) if run.status == Status::Failed);
        let count = self.retried.get(run_id).copied().unwrap_or(0);
        if !failed || count >= policy.limit {
            return;
        }
        let mut wait = policy.interval_sec * policy.backoff.unwrap_or(1.0).powi(count as i32);
        if let Some(max) = policy.max_interval_sec {
            wait = wait.min(max);
        }
        let due = self.clock.now() + jiff::SignedDuration::from_secs_f64(wait.max(0.0));
        eprintln!(
            "scheduler: run {run_id} of {} failed; retry {} of {} at {due}",
            dag.name,
            count + 1,
            policy.limit
        );
        self.retried.insert(run_id.to_string(), count + 1);
        self.retries
            .push((due, dag.name.clone(), run_id.to_string()));
    }

    fn retry_due(&mut self, now: Timestamp) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.retries.drain(..).partition(|(at, _, _)| *at <= now);
        self.retries = later;
        for (_, name, run_id) in due {
            let Some(entry) = self.catalog.find(&name).cloned() else {
                continue;
            };
            let Ok(dag) = &entry.dag else { continue };
            let params = self
                .store
                .find(&name, &run_id)
                .ok()
                .flatten()
                .and_then(|r| r.params_text());
            let scheduled_time = scheduled_time_of(&run_id);
            let req = Enqueue {
                params,
                scheduled_time,
                ..Enqueue::new(dag, &entry.path, run_id)
            };
            if let Err(e) = queueing::enqueue(&self.store, req) {
                eprintln!("scheduler: cannot queue the retry of a run of {name}: {e}");
            }
        }
    }

    fn report_invalid(&self) {
        for entry in &self.catalog.entries {
            if let Err(e) = &entry.dag {
                eprintln!("scheduler: invalid DAG, not scheduled: {e}");
            }
        }
    }

    /// Sleeps until the next fire time, at most a second (files may change meanwhile).
    fn until_next_tick(&self, now: Timestamp) -> Duration {
        let next = self
            .catalog
            .entries
            .iter()
            .filter_map(|e| e.dag.as_ref().ok())
            .flat_map(|d| crons(&d.schedule.start))
            .filter_map(|c| c.next_after(now))
            .min();
        let wait = next.map_or(Duration::from_secs(1), |n| {
            n.duration_since(now).unsigned_abs()
        });
        wait.min(Duration::from_secs(1))
    }

    /// Rewrites the heartbeat file at most every 5 s (the loop wakes at least every second).
    fn beat(&self, now: Timestamp, last: &mut Option<Timestamp>) {
        if last.is_some_and(|l| now.duration_since(l).as_secs() < 5) {
            return;
        }
        let beat = crate::suspend::heartbeat::Heartbeat {
            holder: self.opts.id.clone(),
            token: self.token,
            at: now.to_string(),
        };
        if let Err(e) = crate::suspend::heartbeat::write(&self.data, &beat) {
            eprintln!("scheduler {}: cannot write heartbeat: {e}", self.opts.id);
        }
        *last = Some(now);
    }

    /// Claims and enqueues every tick due since the last one, within the catch-up horizon.
    fn fire_due(&mut self, now: Timestamp) {
        let dags: Vec<(Dag, PathBuf)> = self
            .catalog
            .entries
            .iter()
            .filter_map(|e| e.dag.as_ref().ok().map(|d| (d.clone(), e.path.clone())))
            .filter(|(d, _)| !d.schedule.is_empty())
            .collect();
        for (dag, path) in dags {
            let from = self.window_start(&dag, now);
            if crate::suspend::is_suspended(&self.data, &dag.name) {
                for at in due_times(&dag.schedule.start, from, now) {
                    if claim(&self.data, &dag.name, at) {
                        ticks::mark_skipped(&self.data, &dag.name, at);
                    }
                }
                self.last_tick.insert(dag.name.clone(), now);
                continue;
            }
            let mut due = due_times(&dag.schedule.start, from, now);
            due = self.apply_overlap(&dag, due);
            for at in due {
                self.fire(&dag, &path, at, from);
            }
            for at in due_times(&dag.schedule.stop, from, now) {
                if claim(&self.data, &format!("{}.stop", dag.name), at) {
                    self.stop_dag(&dag.name);
                }
            }
            for at in due_times(&dag.schedule.restart, from, now) {
                if claim(&self.data, &format!("{}.restart", dag.name), at) {
                    self.stop_dag(&dag.name);
                    self.fire(&dag, &path, at, from);
                }
            }
            self.last_tick.insert(dag.name.clone(), now);
        }
    }

    /// Ticks after the last one recorded fire; how far back is bounded by `catchup_window`
    /// (or a short grace that covers a leader change). A DAG never scheduled before starts
    /// from when this scheduler did.
    fn window_start(&self, dag: &Dag, now: Timestamp) -> Timestamp {
        let recorded = self
            .last_tick
            .get(&dag.name)
            .copied()
            .or_else(|| ticks::last(&self.data, &dag.name));
        let Some(last) = recorded else {
            return self.started.min(now);
        };
        let grace = dag.catchup_window_ms.map_or(
            self.opts.config.scheduler.failover_grace_sec as i64 * 1000,
            |ms| ms as i64,
        );
        let horizon = now - jiff::SignedDuration::from_millis(grace);
        last.max(horizon)
    }

    fn apply_overlap(&self, dag: &Dag, due: Vec<Timestamp>) -> Vec<Timestamp> {
        if due.len() <= 1 {
            return due;
        }
        match dag.overlap_policy {
            trellis_core::OverlapPolicy::All => due,
            trellis_core::OverlapPolicy::Latest => due.last().copied().into_iter().collect(),
            trellis_core::OverlapPolicy::Skip if self.is_active(&dag.name) => Vec::new(),
            trellis_core::OverlapPolicy::Skip => due,
        }
    }

    fn is_active(&self, dag: &str) -> bool {
        self.active.values().any(|a| a.slot.dag == dag)
    }

    fn fire(&mut self, dag: &Dag, path: &std::path::Path, at: Timestamp, since: Timestamp) {
        if !claim(&self.data, &dag.name, at) {
            return;
        }
        if dag.skip_if_successful && self.succeeded_since(dag, since) {
            eprintln!(
                "scheduler: {} at {at}: skipped, already succeeded since the previous tick",
                dag.name
            );
            ticks::mark_skipped(&self.data, &dag.name, at);
            return;
        }
        self.enqueue_tick(dag, path, at);
    }

    /// `skip_if_successful`: the latest run succeeded after the previous tick (`since`).
    fn succeeded_since(&self, dag: &Dag, since: Timestamp) -> bool {
        let Ok(Some(run)) = self.store.latest(&dag.name) else {
            return false;
        };
        let finished = run
            .finished_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        run.status == Status::Succeeded && finished.is_some_and(|f| f >= since)
    }

    fn stop_dag(&mut self, dag: &str) {
        for (run_id, active) in self.active.iter().filter(|(_, a)| a.slot.dag == dag) {
            match &active.task {
                Some(_) => dispatch::cancel(&self.data, dag, run_id),
                None => active.cancel.cancel(),
            }
        }
    }

    /// One pass of the queue: every item of every queue, decided in one place.
    fn process_queue(&mut self, now: Timestamp) {
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

    fn queued_items(&self) -> Vec<QueueItem> {
        let Ok(dirs) = std::fs::read_dir(self.data.join("queue")) else {
            return Vec::new();
        };
        let mut items: Vec<QueueItem> = dirs
            .filter_map(|d| d.ok())
            .filter_map(|d| d.file_name().into_string().ok())
            .flat_map(|q| self.store.items(&q).unwrap_or_default())
            .collect();
        items.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.queued_at.cmp(&b.queued_at))
        });
        items
    }

    fn candidate(&self, item: &QueueItem, seq: usize) -> Candidate {
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
    fn start(&mut self, item: &QueueItem, slot: Slot) {
        if !self
            .store
            .remove_item(&item.queue, &item.run_id)
            .unwrap_or(false)
        {
            return;
        }
        // A run that is no longer queued (a stale duplicate item) must not run twice.
        if let Ok(Some(run)) = self.store.find(&item.dag_name, &item.run_id)
            && run.status != Status::Queued
        {
            eprintln!(
                "scheduler: run {} of {} is {}, not queued; its queue item was dropped",
                item.run_id, item.dag_name, run.status
            );
            return;
        }
        let dag = match self.definition(item) {
            Ok(dag) => Arc::new(dag),
            Err(e) => return self.fail(item, &e),
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
        let cancel = CancellationToken::new();
        self.active.insert(
            item.run_id.clone(),
            Active {
                slot,
                cancel: cancel.clone(),
                task: None,
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
            retry: None,
            env,
            queued: true,
        };
        let (engine, done, run_id) = (self.engine.clone(), self.done.clone(), item.run_id.clone());
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = engine.run(req, cancel).await {
                eprintln!("scheduler: run {run_id}: {e}");
            }
            let _ = done.send(run_id);
        }));
    }

    /// Hands a run to the coordinator through a task file.
    fn dispatch(&mut self, item: &QueueItem, slot: Slot, dag: &Dag) {
        let key = self.opts.signing_key.as_deref();
        let task = match dispatch::task(item, dag, self.clock.now(), key) {
            Ok(task) => task,
            Err(e) => return self.fail(item, &e),
        };
        if let Err(e) = dispatch::write(&self.data, &task) {
            return self.fail(item, &format!("cannot hand the run to a worker: {e}"));
        }
        eprintln!(
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
    fn adopt_dispatched(&mut self) {
        for task in dispatch::outstanding(&self.data) {
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
    fn reap_dispatched(&mut self) {
        let ended: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| {
                a.task
                    .as_ref()
                    .is_some_and(|t| !dispatch::exists(&self.data, t))
            })
            .map(|(run, _)| run.clone())
            .collect();
        for run in ended {
            self.finished(&run);
        }
    }

    fn task_ended(&mut self, task_id: &str) {
        let run = self
            .active
            .iter()
            .find(|(_, a)| a.task.as_deref() == Some(task_id))
            .map(|(run, _)| run.clone());
        if let Some(run) = run {
            self.finished(&run);
        }
    }

    /// The DAG as it is now in the dags dir, else the file named at enqueue time, else
    /// the definition stored with the run.
    fn definition(&self, item: &QueueItem) -> Result<Dag, String> {
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
    fn fail(&self, item: &QueueItem, reason: &str) {
        eprintln!(
            "scheduler: run {} of {} failed to start: {reason}",
            item.run_id, item.dag_name
        );
        let Ok(Some(mut run)) = self.store.find(&item.dag_name, &item.run_id) else {
            return;
        };
        run.status = Status::Failed;
        run.error = Some(reason.to_string());
        run.finished_at = Some(Timestamp::now().to_string());
        if let Ok(attempt) = self.store.retry_attempt(&item.dag_name, &item.run_id) {
            let _ = self.store.append(&attempt, &Entry::Snapshot(Box::new(run)));
        }
    }

    /// Runs queued longer than `queue_timeout_sec` fail with the reason they waited.
    fn fail_stale(&self, items: &[QueueItem], blocked: &[(usize, String)], now: Timestamp) {
        let Some(limit) = self.opts.config.scheduler.queue_timeout_sec else {
            return;
        };
        for (i, reason) in blocked {
            let item = &items[*i];
            let queued = item.queued_at.parse::<Timestamp>().unwrap_or(now);
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

fn claim(data: &std::path::Path, key: &str, at: Timestamp) -> bool {
    ticks::claim(data, key, at).unwrap_or_else(|e| {
        eprintln!("scheduler: cannot record tick {key} at {at}: {e}");
        false
    })
}

/// The cron schedules of a list, in the DAG's timezone; invalid ones were rejected at load.
pub fn crons(list: &[Schedule]) -> impl Iterator<Item = Cron> + '_ {
    list.iter().filter_map(|s| match s {
        Schedule::Cron {
            expression,
            timezone,
        } => Cron::new(expression, timezone.as_deref()).ok(),
        Schedule::At { .. } => None,
    })
}

/// Every fire time of a schedule list in `(from, to]`, sorted.
pub fn due_times(list: &[Schedule], from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    let mut due: Vec<Timestamp> = crons(list)
        .flat_map(|c| c.between(from, to, 10_000))
        .collect();
    for s in list {
        if let Schedule::At { at } = s
            && let Ok(t) = at.parse::<Timestamp>()
            && t > from
            && t <= to
        {
            due.push(t);
        }
    }
    due.sort();
    due.dedup();
    due
}

/// The logical time of a scheduled run, from its id (`sched-<time>`).
fn scheduled_time_of(run_id: &str) -> Option<Timestamp> {
    let stamp = run_id.strip_prefix("sched-")?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp).ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
}

/// Wakes the queue pass when a queue file appears (another process enqueued).
fn watch_queue(
    dir: &std::path::Path,
    wake: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    std::fs::create_dir_all(dir).ok()?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
            let _ = wake.send(());
        }
    })
    .ok()?;
    watcher.watch(dir, notify::RecursiveMode::Recursive).ok()?;
    Some(watcher)
}
