//! What the coordinator does besides answering calls: load task files (at start, when the
//! scheduler writes new ones, and on a slow timer as a safety net), expire leases, explain
//! and time out tasks no live worker matches, handle cancel requests, keep its registry
//! entry fresh and drop stale worker entries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_core::status::Status as RunStatus;
use trellis_core::worker::Health;
use trellis_store::Entry;

use super::Coord;
use crate::registry::{self, Kind};
use crate::table::{Expired, Phase};
use crate::{now_ms, tasks};

/// Loads every task file; leases get a fresh term, as no worker could renew them while
/// no coordinator was running.
pub(crate) fn load_tasks(coord: &Coord) {
    let now = now_ms();
    let lease = coord.opts.lease_timeout.as_millis() as i64;
    let mut table = coord.table();
    for mut task in coord.tasks.load_all() {
        match &mut task.phase {
            Phase::Claimed { lease_until_ms, .. } => *lease_until_ms = now + lease,
            // Workers are registering again: "no live worker" starts over.
            Phase::Pending { since_ms, .. } => *since_ms = None,
        }
        table.insert(task);
    }
    if !table.is_empty() {
        tracing::info!("coordinator: {} task(s) loaded", table.len());
    }
}

/// Adds task files the table does not have yet (new ones from the scheduler).
fn sync_new(coord: &Coord, paths: impl Iterator<Item = std::path::PathBuf>) -> bool {
    let mut added = false;
    for path in paths {
        let Some(id) = tasks::id_of(&path) else {
            continue;
        };
        if coord.table().get(&id).is_some() {
            continue;
        }
        let Some(task) = tasks::read(&path) else {
            continue;
        };
        if task.spec.task_id != id {
            tracing::warn!(
                "coordinator: ignoring {}: its task id does not match the file name",
                path.display()
            );
            continue;
        }
        added |= adopt(coord, task);
    }
    added
}

/// Adds stored tasks the table does not have yet (a database store).
fn sync_stored(coord: &Coord) -> bool {
    let mut added = false;
    for task in coord.tasks.load_all() {
        if coord.table().get(&task.spec.task_id).is_none() {
            added |= adopt(coord, task);
        }
    }
    added
}

/// Takes a new pending task into the table; `false` when it is not one to run.
fn adopt(coord: &Coord, task: crate::table::Task) -> bool {
    if !matches!(task.phase, Phase::Pending { .. }) {
        return false;
    }
    // A task put back after its run ended (a replay) must not run it again.
    if ended_any(coord, &task.spec.dag_name, &task.spec.run_id) {
        tracing::info!(
            "coordinator: dropping task {}: run {} already ended",
            task.spec.task_id,
            task.spec.run_id
        );
        let _ = coord.tasks.remove(&task.spec.task_id);
        return false;
    }
    coord.table().insert(task);
    true
}

fn scan(coord: &Coord) {
    let added = match &coord.tasks {
        tasks::Tasks::Store(_) => sync_stored(coord),
        tasks::Tasks::Files(data) => {
            let Ok(entries) = std::fs::read_dir(tasks::dir(data)) else {
                return;
            };
            sync_new(coord, entries.flatten().map(|e| e.path()))
        }
    };
    if added {
        coord.wake.notify_waiters();
    }
}

/// Watches the task dir so a new task reaches a waiting worker at once.
fn watch(coord: Arc<Coord>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let tasks::Tasks::Files(data) = &coord.tasks else {
        return None; // a database is polled (every 250 ms)
    };
    let dir = tasks::dir(data);
    std::fs::create_dir_all(&dir).ok()?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_create() || event.kind.is_modify())
            && sync_new(&coord, event.paths.into_iter())
        {
            coord.wake.notify_waiters();
        }
    })
    .ok()?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some(watcher)
}

pub(crate) async fn run(coord: Arc<Coord>, addr: SocketAddr, shutdown: CancellationToken) {
    let _watcher = watch(coord.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_slow = 0i64;
    let mut last_registry = 0i64;
    let grace = coord
        .opts
        .lease_timeout
        .min(std::time::Duration::from_secs(10));
    let grace_until = if coord.table().is_empty() {
        0
    } else {
        now_ms() + grace.as_millis() as i64
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = now_ms();
        let leading = trellis_engine::blocking_section(|| {
            expire(&coord, now);
            if now - last_slow >= 1_000 {
                last_slow = now;
                if !still_leading(&coord) {
                    return false;
                }
                scan(&coord);
                handle_cancel_requests(&coord);
                explain(&coord, now, grace_until);
                forget_offline(&coord, now);
                publish_workers(&coord);
            }
            if now - last_registry >= coord.opts.registry_interval.as_millis() as i64 {
                last_registry = now;
                refresh_registry(&coord, addr);
            }
            true
        });
        if !leading {
            tracing::error!(
                "coordinator: lost its lease; stopping so that only one coordinator acts"
            );
            coord.lost.store(true, std::sync::atomic::Ordering::Relaxed);
            shutdown.cancel();
            return;
        }
    }
}

/// Renews the coordinator's lease (a database lease lapses 5 s after its last renewal).
fn still_leading(coord: &Coord) -> bool {
    let lead = coord.lead.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lead) = lead.as_ref() else {
        return true;
    };
    match coord.store.renew_lease(lead) {
        Ok(held) => held,
        Err(e) => {
            tracing::error!("coordinator: cannot renew its lease: {e}");
            false
        }
    }
}

fn expire(coord: &Coord, now: i64) {
    let expired = coord.table().expire(now);
    for e in expired {
        match e {
            Expired::Unclaimed { task_id } => {
                persist(coord, &task_id);
                coord.wake.notify_waiters();
            }
            Expired::Cancelled { task } => {
                let msg = "stopped; its worker went silent before confirming";
                settle(coord, &task.spec, RunStatus::Cancelled, msg);
            }
            Expired::Requeued { task_id, attempt } => {
                let task = coord.table().get(&task_id).cloned();
                if let Some(task) = &task
                    && ended(coord, &task.spec.dag_name, &task.spec.run_id)
                {
                    coord.table().remove(&task_id);
                    let _ = coord.tasks.remove(&task_id);
                    continue;
                }
                if let Some(task) = task {
                    let msg = format!(
                        "worker lost (no heartbeat for {} s); re-queued as attempt {attempt} of {}",
                        coord.opts.lease_timeout.as_secs(),
                        task.spec.max_attempts
                    );
                    settle(coord, &task.spec, RunStatus::Queued, &msg);
                }
                persist(coord, &task_id);
                coord.wake.notify_waiters();
            }
            Expired::Lost { task, worker_id } => {
                let s = &task.spec;
                if ended(coord, &s.dag_name, &s.run_id) {
                    let _ = coord.tasks.remove(&s.task_id);
                    continue;
                }
                let msg = format!(
                    "worker lost: {worker_id} sent no heartbeat for {} s",
                    coord.opts.lease_timeout.as_secs()
                );
                settle(coord, s, RunStatus::Failed, &msg);
            }
        }
    }
}

/// The store already holds the run's end: its worker finished but could not report (the
/// coordinator was away). Re-running it would run it twice.
fn ended(coord: &Coord, dag: &str, run_id: &str) -> bool {
    matches!(
        coord.store.find(dag, run_id),
        Ok(Some(run)) if run.status.is_final() && run.worker_id.is_some()
    )
}

/// The run's latest record is final (whoever ran it).
fn ended_any(coord: &Coord, dag: &str, run_id: &str) -> bool {
    matches!(coord.store.find(dag, run_id), Ok(Some(run)) if run.status.is_final())
}

pub(crate) fn persist(coord: &Coord, task_id: &str) {
    let task = coord.table().get(task_id).cloned();
    if let Some(task) = task
        && let Err(e) = coord.tasks.write(&task)
    {
        tracing::error!("coordinator: cannot persist task {task_id}: {e}");
    }
}

/// Says what happened to a task's run, records it, and (when the run ends) deletes the task
/// file, which frees the run's slot in the scheduler.
pub(crate) fn settle(coord: &Coord, spec: &crate::table::TaskSpec, status: RunStatus, msg: &str) {
    tracing::info!(
        "coordinator: run {} of {}: {msg}",
        spec.run_id,
        spec.dag_name
    );
    record_task(coord, spec, status, msg);
    if status.is_final() {
        let _ = coord.tasks.remove(&spec.task_id);
    }
}

/// Records a task's run: a top-level run in its latest attempt; a child run (of a `call`
/// step) in a new attempt under its parent, where the parent is waiting for it to end.
pub(crate) fn record_task(
    coord: &Coord,
    spec: &crate::table::TaskSpec,
    status: RunStatus,
    msg: &str,
) {
    let Some(parent) = &spec.parent else {
        return record(coord, &spec.dag_name, &spec.run_id, status, msg);
    };
    let parent = parent.attempt();
    let store = &coord.store;
    let mut run = match store.find_child(&parent, &spec.run_id) {
        Ok(Some(run)) => run,
        _ => match serde_json::from_str::<trellis_core::Dag>(&spec.definition_json) {
            Ok(dag) => trellis_core::status::RunRecord::new(&dag, &spec.run_id, "", status),
            Err(_) => return,
        },
    };
    let Ok(attempt) = store.create_attempt(&spec.dag_name, &spec.run_id, Some(&parent)) else {
        tracing::error!("coordinator: cannot record sub-DAG run {}", spec.run_id);
        return;
    };
    run.attempt_id = attempt.attempt_id.clone();
    run.parent = Some(parent.run_id.to_string());
    run.root = Some(parent.root_run_id.to_string());
    run.status = status;
    run.error = Some(msg.to_string());
    if status.is_final() {
        run.finished_at = Some(jiff::Timestamp::now().into());
    }
    let _ = store.append(&attempt, &Entry::Snapshot(Box::new(run)));
}

/// Writes a status to the run's latest attempt: a failure ends the run (and its running
/// steps); a queued status carries the reason it waits.
pub(crate) fn record(coord: &Coord, dag: &str, run_id: &str, status: RunStatus, msg: &str) {
    let store = &coord.store;
    let (Ok(Some(attempt)), Ok(Some(mut run))) =
        (store.latest_attempt(dag, run_id), store.find(dag, run_id))
    else {
        tracing::error!("coordinator: run {run_id} of {dag} is not in the store");
        return;
    };
    run.status = status;
    run.error = Some(msg.to_string());
    if status.is_final() {
        run.finished_at = Some(jiff::Timestamp::now().into());
        for step in run.steps.iter_mut().chain(run.handlers.values_mut()) {
            if !step.status.is_final() && step.status != RunStatus::NotStarted {
                step.status = status;
                step.error = Some(msg.to_string());
            }
        }
    }
    if let Err(e) = store.append(&attempt, &Entry::Snapshot(Box::new(run))) {
        tracing::error!("coordinator: cannot record run {run_id}: {e}");
    }
}

/// Notes why pending tasks wait, and fails those no live worker has matched for
/// `dispatch_timeout`. After a restart with tasks outstanding it waits `grace_until`:
/// workers are still registering again (they retry within ~5 s).
fn explain(coord: &Coord, now: i64, grace_until: i64) {
    if now < grace_until {
        return;
    }
    let live: Vec<_> = coord
        .workers()
        .values()
        .filter(|w| Health::from_age_ms(now - w.last_heartbeat_ms).is_live())
        .map(|w| w.labels.clone())
        .collect();
    let changed = coord.table().explain(&live, now);
    for id in changed {
        persist(coord, &id);
        let task = coord.table().get(&id).cloned();
        if let Some(t) = task
            && let Phase::Pending { reason, .. } = &t.phase
        {
            let msg = reason.clone().unwrap_or_default();
            record_task(coord, &t.spec, RunStatus::Queued, &msg);
        }
    }
    let timeout = coord.opts.dispatch_timeout.as_millis() as i64;
    let stale = coord.table().unmatched_for(now, timeout);
    for id in stale {
        let Some(task) = coord.table().remove(&id) else {
            continue;
        };
        let reason = match &task.phase {
            Phase::Pending { reason, .. } => reason.clone().unwrap_or_default(),
            Phase::Claimed { .. } => String::new(),
        };
        let msg = format!("{reason} (waited {} s)", timeout / 1000);
        settle(coord, &task.spec, RunStatus::Failed, &msg);
    }
}

/// Cancels a run's task: a waiting one ends cancelled now; a running one is stopped by
/// its worker at the next heartbeat. False when no task of that run exists.
pub(crate) fn cancel(coord: &Coord, dag: &str, run_id: &str) -> bool {
    let outcome = coord.table().cancel(dag, run_id);
    match outcome {
        None => false,
        Some(None) => {
            persist_run(coord, dag, run_id);
            true
        }
        Some(Some(task)) => {
            let msg = "cancelled before it started";
            settle(coord, &task.spec, RunStatus::Cancelled, msg);
            true
        }
    }
}

fn persist_run(coord: &Coord, dag: &str, run_id: &str) {
    let id = coord
        .table()
        .tasks()
        .find(|t| t.spec.dag_name == dag && t.spec.run_id == run_id)
        .map(|t| t.spec.task_id.clone());
    if let Some(id) = id {
        persist(coord, &id);
    }
}

fn handle_cancel_requests(coord: &Coord) {
    for request in coord.tasks.cancel_requests() {
        let (dag, run_id) = (&request.dag, request.run_id.clone());
        let dag_name = coord
            .table()
            .tasks()
            .find(|t| trellis_store::safe_name(&t.spec.dag_name) == *dag && t.spec.run_id == run_id)
            .map(|t| t.spec.dag_name.clone());
        let matched = dag_name.is_some_and(|name| cancel(coord, &name, &run_id));
        // An unmatched request may be for a task the scheduler is writing right now:
        // keep it for a while before giving up on it.
        if matched || request.age_secs > 30 {
            coord.tasks.drop_cancel(&request);
        }
    }
}

/// Publishes the workers in a database store, where servers on other machines read them
/// (with files, servers ask the coordinator found in the shared registry).
fn publish_workers(coord: &Coord) {
    if !coord.store.spans_machines() {
        return;
    }
    let workers: Vec<(String, String)> = coord
        .workers()
        .iter()
        .filter_map(|(id, w)| {
            let published = crate::client::Published {
                id: id.clone(),
                labels: w.labels.clone(),
                host: w.host.clone(),
                max_active_runs: w.max_active_runs,
                connected_at: w.connected_at.clone(),
                last_heartbeat_ms: w.last_heartbeat_ms,
                running: w
                    .running
                    .iter()
                    .map(|t| {
                        let t = t.clone();
                        (t.task_id, t.dag_name, t.run_id, t.root_run_id, t.started_at)
                    })
                    .collect(),
            };
            Some((id.clone(), serde_json::to_string(&published).ok()?))
        })
        .collect();
    for (id, json) in workers {
        if let Err(e) = coord.store.put_worker(&id, &json) {
            tracing::warn!("coordinator: cannot publish worker {id}: {e}");
        }
    }
}

/// Workers silent for 10 minutes leave the table (they show as offline until then).
fn forget_offline(coord: &Coord, now: i64) {
    coord
        .workers()
        .retain(|_, w| now - w.last_heartbeat_ms < 600_000);
}

fn refresh_registry(coord: &Coord, addr: SocketAddr) {
    let now = jiff::Timestamp::now();
    let entry = registry::Entry {
        id: coord.opts.id.clone(),
        host: coord
            .opts
            .advertise
            .clone()
            .unwrap_or_else(|| addr.ip().to_string()),
        port: addr.port(),
        pid: std::process::id(),
        started_at: now.to_string(),
        updated_at: now.to_string(),
        status: "healthy".into(),
        active_tasks: coord.table().len() as u32,
        labels: Default::default(),
    };
    if let Err(e) = registry::write(&coord.opts.registry_dir, Kind::Coordinator, &entry) {
        tracing::warn!("coordinator: cannot write registry entry: {e}");
    }
    for id in registry::drop_stale(&coord.opts.registry_dir, Kind::Worker, now) {
        tracing::info!("coordinator: dropped stale registry entry of worker {id}");
    }
}
