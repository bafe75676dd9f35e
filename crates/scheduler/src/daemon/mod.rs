//! `trellis scheduler`: waits for the leader lease, then fires schedules and starts queued
//! runs within the limits, in this process. Dequeue is driven by events — a run finishing,
//! a queue file appearing — with a one-second timer as the safety net.

mod dispatched;
mod launched;
mod pass;
mod recovery;
mod shared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_core::backoff::Backoff;
use trellis_core::queue::{Candidate, Slot, decide};
use trellis_core::status::Status;
use trellis_core::{Dag, Schedule};
use trellis_engine::{Engine, Options as EngineOptions, RunRequest, blocking_section};
use trellis_executor::Local;
use trellis_store::state::scope;
use trellis_store::{Backend, Entry, Lead, QueueItem, Shared};

use crate::catalog::{self, Catalog};
use crate::clock::{Clock, Cron};
use crate::config::Config;
use crate::queueing::stamp;
use crate::queueing::{self, Enqueue};
use trellis_cluster::handoff::Handoff;

/// How the scheduler is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub home: PathBuf,
    pub dags_dir: PathBuf,
    pub config: Config,
    /// Names this process in the lease file and logs.
    pub id: String,
    /// Where runs that belong on workers are handed.
    pub handoff: Arc<dyn Handoff>,
    /// Where runs, queues, ticks and the lead live.
    pub store: Shared,
}

/// A run this scheduler started and has not seen finish.
struct Active {
    slot: Slot,
    cancel: CancellationToken,
    /// The task file of a run handed to a worker.
    task: Option<String>,
    /// Runs in a container of its own (the run launcher): it outlives this scheduler.
    contained: bool,
}

struct Leader<C> {
    opts: Options,
    /// Fencing token of this leader's lease.
    token: u64,
    lead: Option<Lead>,
    /// When the lead was last renewed.
    renewed: Option<std::time::Instant>,
    /// When stop requests from other machines were last looked at.
    stops_checked: Option<std::time::Instant>,
    /// When queued runs that lost their item were last looked for.
    swept: Option<std::time::Instant>,
    /// When a queued run seen without its queue item at the last recovery will be old
    /// enough to restore (recovery runs again then, not only every 30 s).
    recheck: Option<std::time::Instant>,
    data: PathBuf,
    clock: Arc<C>,
    store: Shared,
    engine: Engine<dyn Backend, Local>,
    catalog: Catalog,
    active: HashMap<String, Active>,
    last_tick: HashMap<String, Timestamp>,
    started: Timestamp,
    done: mpsc::UnboundedSender<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tasks following launched containers: dropped at shutdown, the containers go on.
    followers: Vec<tokio::task::JoinHandle<()>>,
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
        let acquired = blocking_section(|| opts.store.acquire_lead(&opts.id));
        if let Some(lease) = acquired.map_err(std::io::Error::other)? {
            break lease;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    tracing::info!(
        "scheduler {}: leading (fencing token {})",
        opts.id,
        lease.info.token
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let store = opts.store.clone();
    let engine_opts = EngineOptions {
        dags_dir: Some(opts.dags_dir.clone()),
        base_env: trellis_engine::inherited_env(),
        worker_id: None,
        remote: Some(opts.handoff.remote()),
        enqueue: Some(trellis_runs::queueing::enqueuer(store.clone())),
        executors: trellis_executor::Registry::builtin(),
    };
    let engine = Engine::new(store.clone(), Arc::new(Local), engine_opts);
    let started = clock.now();
    let mut leader = Leader {
        opts,
        token: lease.info.token,
        lead: None,
        renewed: None,
        stops_checked: None,
        swept: None,
        recheck: None,
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
        followers: Vec::new(),
        retries: Vec::new(),
        retried: HashMap::new(),
    };
    // Loaded here for `recover`; report what does not load now, as `lead` sees no change.
    if leader.catalog.refresh(&leader.opts.dags_dir) {
        leader.report_invalid();
    }
    blocking_section(|| leader.adopt_dispatched());
    // The previous leader's process (machine and pid), unless it was this one.
    let previous = lease
        .previous
        .as_ref()
        .map(|p| (p.host.clone(), p.pid))
        .filter(|(h, p)| (h.as_str(), *p) != (trellis_store::hostname(), std::process::id()));
    blocking_section(|| leader.recover(previous));
    leader.lead = Some(lease);
    let lost = leader.lead(done_rx, shutdown).await;
    if let Some(lease) = leader.lead.take() {
        blocking_section(|| leader.store.release_lead(lease));
    }
    if lost {
        return Err(std::io::Error::other(format!(
            "scheduler {}: lost the lead (fencing token {}); exiting so that only the new leader acts",
            leader.opts.id, leader.token
        )));
    }
    Ok(())
}

impl<C: Clock + 'static> Leader<C> {
    /// Leads until `shutdown`; `true` when the lead was lost instead.
    async fn lead(
        &mut self,
        mut done: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) -> bool {
        let (wake_tx, mut wake) = mpsc::unbounded_channel::<()>();
        let _watcher = watch_queue(&self.data.join("queue"), wake_tx);
        let (gone_tx, mut gone) = mpsc::unbounded_channel::<String>();
        let _gone_watcher = self.opts.handoff.watch_ended(gone_tx);
        let mut last_beat = None;
        let mut lost = false;
        loop {
            let Some(wait) = blocking_section(|| self.pass(&mut last_beat)) else {
                lost = true;
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(run_id) = done.recv() => blocking_section(|| {
                    self.finished(&run_id);
                    // Runs that ended meanwhile share the next pass.
                    while let Ok(run_id) = done.try_recv() {
                        self.finished(&run_id);
                    }
                }),
                Some(task_id) = gone.recv() => blocking_section(|| self.task_ended(&task_id)),
                Some(()) = wake.recv() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for active in self.active.values().filter(|a| !a.contained) {
            active.cancel.cancel();
        }
        // A run in its own container carries on; the next leader follows it.
        for follower in self.followers.drain(..) {
            follower.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        lost
    }

    /// One pass of the leader; how long it may sleep, or `None` when the lead was lost.
    fn pass(&mut self, last_beat: &mut Option<Timestamp>) -> Option<Duration> {
        if !self.still_leading() {
            return None;
        }
        if self.catalog.refresh(&self.opts.dags_dir) {
            self.report_invalid();
        }
        let now = self.clock.now();
        self.beat(now, last_beat);
        self.reap_dispatched();
        self.stop_requested();
        self.sweep();
        self.fire_due(now);
        self.retry_due(now);
        self.process_queue(now);
        Some(self.until_next_tick(now))
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
        let wait =
            Backoff::new(policy.interval_sec, policy.backoff, policy.max_interval_sec).after(count);
        let due = self.clock.now() + jiff::SignedDuration::from_secs_f64(wait.max(0.0));
        tracing::warn!(
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
            if let Err(e) = queueing::enqueue(&*self.store, req) {
                tracing::error!("scheduler: cannot queue the retry of a run of {name}: {e}");
            }
        }
    }

    fn report_invalid(&self) {
        for entry in &self.catalog.entries {
            if let Err(e) = &entry.dag {
                tracing::warn!("scheduler: invalid DAG, not scheduled: {e}");
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
        // A file store wakes the pass through inotify when another process enqueues; a
        // database cannot, so its queue is polled more often.
        let poll = if self.store.spans_machines() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        wait.min(poll)
    }

    /// Rewrites the heartbeat at most every 5 s (the loop wakes at least every second).
    fn beat(&self, now: Timestamp, last: &mut Option<Timestamp>) {
        if last.is_some_and(|l| now.duration_since(l).as_secs() < 5) {
            return;
        }
        let beat = crate::heartbeat::Heartbeat {
            holder: self.opts.id.clone(),
            token: self.token,
            at: now.to_string(),
        };
        if let Err(e) = crate::heartbeat::write(&*self.store, &beat) {
            tracing::warn!("scheduler {}: cannot write heartbeat: {e}", self.opts.id);
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
            if self.suspended(&dag.name) {
                for at in due_times(&dag.schedule.start, from, now) {
                    if self.claim(&dag.name, at) {
                        self.mark_skipped(&dag.name, at);
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
                if self.claim(&format!("{}.stop", dag.name), at) {
                    self.stop_dag(&dag.name);
                }
            }
            for at in due_times(&dag.schedule.restart, from, now) {
                if self.claim(&format!("{}.restart", dag.name), at) {
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
            .or_else(|| self.last_recorded_tick(&dag.name));
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
        if !self.claim(&dag.name, at) {
            return;
        }
        if dag.skip_if_successful && self.succeeded_since(dag, since) {
            tracing::info!(
                "scheduler: {} at {at}: skipped, already succeeded since the previous tick",
                dag.name
            );
            self.mark_skipped(&dag.name, at);
            return;
        }
        self.enqueue_tick(dag, path, at);
    }

    /// `skip_if_successful`: the latest run succeeded after the previous tick (`since`).
    fn succeeded_since(&self, dag: &Dag, since: Timestamp) -> bool {
        let Ok(Some(run)) = self.store.latest(&dag.name) else {
            return false;
        };
        let finished = run.finished_at.map(|t| t.0);
        run.status == Status::Succeeded && finished.is_some_and(|f| f >= since)
    }

    fn stop_dag(&mut self, dag: &str) {
        for (run_id, active) in self.active.iter().filter(|(_, a)| a.slot.dag == dag) {
            match &active.task {
                Some(_) => self.opts.handoff.cancel(dag, run_id),
                None => active.cancel.cancel(),
            }
        }
    }
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
