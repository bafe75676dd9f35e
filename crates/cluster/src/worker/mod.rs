//! `trellis worker`: registers with the coordinator (found in the service registry or
//! given), long-polls for tasks while it has free slots, runs each with the engine
//! in-process, heartbeats every second with the tasks it runs (renewing their leases),
//! and reports each run's end. A coordinator that goes away is retried with backoff while
//! the runs go on. On shutdown it stops taking work, drains, and deregisters.
//!
//! Shared-filesystem mode (the default) writes runs straight into the shared store.
//! Shared-nothing mode (`--worker.coordinators`) keeps them in a local store and relays
//! records and logs to the coordinator ([`relay`]).

pub mod link;
pub mod relay;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use trellis_engine::{Engine, Options as EngineOptions};
use trellis_executor::Local;
use trellis_store::FileStore;

use self::link::{Client, Dial};
use self::relay::Relay;
use crate::proto;
use crate::registry::{self, Kind};

/// Settings of `trellis worker`.
#[derive(Clone, Debug)]
pub struct Options {
    pub id: String,
    pub labels: IndexMap<String, String>,
    pub max_active_runs: u32,
    /// `host:port` of the coordinator; `None` finds it in the registry.
    pub coordinator: Option<String>,
    /// Shared-nothing mode: these coordinators (`host:port`), tried in turn; runs are kept
    /// locally and relayed.
    pub coordinators: Vec<String>,
    /// TLS, plaintext override and signing key.
    pub dial: Dial,
    pub home: PathBuf,
    /// The shared store a shared-filesystem worker writes runs to (the file store of
    /// `home`, or the database the scheduler uses); `None`: the file store of `home`.
    pub store: Option<trellis_store::Shared>,
    pub registry_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub registry_interval: Duration,
    /// How long a shutdown waits for running tasks before cancelling them.
    pub drain_grace: Duration,
}

impl Options {
    pub fn new(home: PathBuf) -> Options {
        Options {
            id: crate::default_id(),
            labels: IndexMap::new(),
            max_active_runs: 100,
            coordinator: None,
            coordinators: Vec::new(),
            dial: Dial::default(),
            store: None,
            registry_dir: registry::default_dir(&trellis_store::data_dir(&home)),
            home,
            heartbeat_interval: Duration::from_secs(1),
            registry_interval: Duration::from_secs(10),
            drain_grace: Duration::from_secs(60),
        }
    }
}

struct Running {
    info: proto::RunningTask,
    cancel: CancellationToken,
}

struct Worker {
    opts: Options,
    engine: Engine<Relay, Local>,
    relay: Arc<Relay>,
    running: Mutex<HashMap<String, Running>>,
    link: Mutex<Option<Client>>,
    /// Woken when the link comes up.
    linked: Notify,
    started_at: String,
}

impl Worker {
    fn client(&self) -> Option<Client> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_client(&self, client: Option<Client>) {
        let up = client.is_some();
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = client;
        if up {
            self.linked.notify_waiters();
        }
    }

    fn running_tasks(&self) -> Vec<proto::RunningTask> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().map(|r| r.info.clone()).collect()
    }

    fn labels(&self) -> HashMap<String, String> {
        self.opts.labels.clone().into_iter().collect()
    }

    /// Waits for the link; `None` when shutting down first.
    async fn wait_client(&self, stop: &CancellationToken) -> Option<Client> {
        loop {
            let notified = self.linked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.client() {
                return Some(c);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }
}

/// Runs the worker until `shutdown`, then drains and deregisters.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<(), crate::Error> {
    let shared_nothing = !opts.coordinators.is_empty();
    let local = || -> trellis_store::Shared { Arc::new(FileStore::new(&opts.home)) };
    // Shared-nothing: runs stay in a local store and are relayed. Shared: they go straight
    // into the store everyone uses, a database included.
    let store = match (&opts.store, shared_nothing) {
        (Some(shared), false) => shared.clone(),
        _ => local(),
    };
    let engine_opts = EngineOptions {
        dags_dir: None,
        base_env: trellis_engine::inherited_env(),
        worker_id: Some(opts.id.clone()),
        // A parent running here can send its sub-DAGs to other workers through the shared
        // data dir; a shared-nothing worker has none.
        remote: opts.coordinators.is_empty().then(|| {
            let data = trellis_store::data_dir(&opts.home);
            trellis_engine::RemoteHandle(Arc::new(crate::tasks::FileRemote {
                registry_dir: opts.registry_dir.clone(),
                tasks: crate::tasks::Tasks::of(&data, &store),
                key: opts.dial.key.clone(),
            }))
        }),
        // A worker's runs are handed to it; queues are the scheduler's, not its own.
        enqueue: None,
        executors: trellis_executor::Registry::builtin(),
    };
    let relay = Arc::new(Relay::new(store.clone(), shared_nothing));
    let worker = Arc::new(Worker {
        engine: Engine::new(relay.clone(), Arc::new(Local), engine_opts),
        relay,
        opts,
        running: Mutex::new(HashMap::new()),
        link: Mutex::new(None),
        linked: Notify::new(),
        started_at: jiff::Timestamp::now().to_string(),
    });
    tracing::info!(
        "worker {}: labels {:?}, {} slots, {}",
        worker.opts.id,
        worker.opts.labels,
        worker.opts.max_active_runs,
        if shared_nothing {
            "shared-nothing (runs relayed to the coordinator)"
        } else {
            "shared filesystem"
        }
    );
    let stop_link = CancellationToken::new();
    let link = tokio::spawn(link_loop(worker.clone(), stop_link.clone()));
    let registry = tokio::spawn(registry_loop(worker.clone(), stop_link.clone()));
    let slots = Arc::new(Semaphore::new(worker.opts.max_active_runs.max(1) as usize));
    poll_loop(worker.clone(), slots.clone(), shutdown.clone()).await;
    let released = match shared_nothing {
        // A shared-nothing worker's records are its own: nobody else could resume.
        true => Vec::new(),
        false => movable(&worker),
    };
    drain(&worker, &slots, &released).await;
    stop_link.cancel();
    let _ = link.await;
    let _ = registry.await;
    if let Some(mut client) = worker.client() {
        if !released.is_empty() {
            tracing::info!(
                "worker {}: leaving {} run(s) whose steps run on in containers to another worker",
                worker.opts.id,
                released.len()
            );
        }
        let req = proto::DeregisterRequest {
            worker_id: worker.opts.id.clone(),
            released,
        };
        let _ = client.deregister(req).await;
    }
    registry::remove(&worker.opts.registry_dir, Kind::Worker, &worker.opts.id);
    tracing::info!("worker {}: stopped", worker.opts.id);
    Ok(())
}

/// Runs that can move to another worker as they are: every step running now runs where
/// it outlives this process (a container) and is recorded with its handle.
fn movable(worker: &Worker) -> Vec<proto::RunningTask> {
    use trellis_store::Store;
    let running: Vec<proto::RunningTask> = worker
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|r| r.info.clone())
        .collect();
    running
        .into_iter()
        .filter(|task| {
            let Ok(Some(run)) = worker.relay.find(&task.dag_name, &task.run_id) else {
                return false;
            };
            let mut live = run
                .steps
                .iter()
                .filter(|s| s.status == trellis_core::status::Status::Running)
                .peekable();
            live.peek().is_some() && live.all(|s| s.handle.is_some())
        })
        .collect()
}

/// Waits for running tasks up to the grace period, then cancels what is left; runs
/// `released` to another worker are neither waited for nor cancelled.
async fn drain(worker: &Arc<Worker>, slots: &Arc<Semaphore>, released: &[proto::RunningTask]) {
    let total = (worker.opts.max_active_runs.max(1) as usize).saturating_sub(released.len()) as u32;
    let busy = (total as usize).saturating_sub(slots.available_permits());
    if busy > 0 {
        tracing::info!(
            "worker {}: draining {busy} running task(s) (up to {} s)",
            worker.opts.id,
            worker.opts.drain_grace.as_secs()
        );
    }
    let all = slots.clone().acquire_many_owned(total);
    if tokio::time::timeout(worker.opts.drain_grace, all)
        .await
        .is_err()
    {
        tracing::warn!(
            "worker {}: grace period over; cancelling runs",
            worker.opts.id
        );
        for r in worker
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|r| !released.iter().any(|t| t.task_id == r.info.task_id))
        {
            r.cancel.cancel();
        }
        let _ = slots.clone().acquire_many_owned(total).await;
    }
}

/// Keeps a registered connection and heartbeats on it.
async fn link_loop(worker: Arc<Worker>, stop: CancellationToken) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut delays = trellis_core::backoff::Backoff::new(0.1, Some(1.5), Some(5.0));
    let mut backoff = FIRST;
    let mut said_down = false;
    let mut attempt = 0usize;
    loop {
        if worker.client().is_none() {
            attempt += 1;
            match connect(&worker, attempt - 1).await {
                Ok(client) => {
                    if said_down {
                        tracing::info!("worker {}: coordinator reachable again", worker.opts.id);
                    }
                    said_down = false;
                    delays.reset(FIRST);
                    backoff = FIRST;
                    worker.set_client(Some(client));
                }
                Err(e) => {
                    if !said_down {
                        tracing::warn!("worker {}: {e}; retrying", worker.opts.id);
                        said_down = true;
                    }
                    backoff = delays.next_delay();
                }
            }
        } else if let Err(e) = heartbeat(&worker).await {
            tracing::warn!("worker {}: heartbeat failed: {e}", worker.opts.id);
            worker.set_client(None);
            said_down = true;
        }
        let wait = if worker.client().is_some() {
            worker.opts.heartbeat_interval
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The coordinator's address: the configured one, one of the shared-nothing list (in
/// turn, `attempt` picks), else the freshest live registry entry.
fn coordinator_address(worker: &Worker, attempt: usize) -> Result<String, crate::Error> {
    if !worker.opts.coordinators.is_empty() {
        let list = &worker.opts.coordinators;
        return Ok(list[attempt % list.len()].clone());
    }
    if let Some(addr) = &worker.opts.coordinator {
        return Ok(addr.clone());
    }
    let live = registry::live(
        &worker.opts.registry_dir,
        Kind::Coordinator,
        jiff::Timestamp::now(),
    );
    live.first()
        .map(|e| format!("{}:{}", e.host, e.port))
        .ok_or_else(|| crate::Error::NoLiveCoordinator {
            registry: worker.opts.registry_dir.clone(),
        })
}

async fn connect(worker: &Worker, attempt: usize) -> Result<Client, crate::Error> {
    let addr = coordinator_address(worker, attempt)?;
    let mut client = link::dial(&addr, &worker.opts.dial, &worker.opts.id).await?;
    let req = proto::RegisterRequest {
        worker_id: worker.opts.id.clone(),
        labels: worker.labels(),
        max_active_runs: worker.opts.max_active_runs,
        host: crate::hostname(),
        pid: std::process::id(),
        running: worker.running_tasks(),
    };
    client
        .register(req)
        .await
        .map_err(|e| crate::Error::RegisterRefused {
            addr: addr.clone(),
            message: link::status_text(&e),
        })?;
    tracing::info!(
        "worker {}: registered with the coordinator at {addr}",
        worker.opts.id
    );
    Ok(client)
}

async fn heartbeat(worker: &Worker) -> Result<(), crate::Error> {
    let Some(mut client) = worker.client() else {
        return Ok(());
    };
    let req = proto::HeartbeatRequest {
        worker_id: worker.opts.id.clone(),
        labels: worker.labels(),
        running: worker.running_tasks(),
        max_active_runs: worker.opts.max_active_runs,
    };
    let reply = client
        .heartbeat(req)
        .await
        .map_err(|e| crate::Error::Heartbeat {
            message: e.message().to_string(),
        })?
        .into_inner();
    let running = worker.running.lock().unwrap_or_else(|e| e.into_inner());
    for id in reply.cancel_task_ids {
        if let Some(r) = running.get(&id) {
            tracing::info!(
                "worker {}: stopping run {} of {} as the coordinator asks",
                worker.opts.id,
                r.info.run_id,
                r.info.dag_name
            );
            r.cancel.cancel();
        }
    }
    Ok(())
}

/// Takes tasks while there are free slots, until shutdown.
async fn poll_loop(worker: Arc<Worker>, slots: Arc<Semaphore>, shutdown: CancellationToken) {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let Some(mut client) = worker.wait_client(&shutdown).await else {
            return;
        };
        let req = proto::PollRequest {
            worker_id: worker.opts.id.clone(),
            labels: worker.labels(),
            wait_ms: 10_000,
        };
        let reply = tokio::select! {
            r = client.poll(req) => r,
            _ = shutdown.cancelled() => return,
        };
        match reply {
            Ok(reply) => {
                if let Some(task) = reply.into_inner().task {
                    task::accept(&worker, &mut client, task, permit).await;
                }
            }
            Err(e) => {
                tracing::warn!("worker {}: poll failed: {}", worker.opts.id, e.message());
                worker.set_client(None);
            }
        }
    }
}

/// Refreshes the worker's registry entry (discovery, and what `trellis workers` shows
/// without a coordinator).
async fn registry_loop(worker: Arc<Worker>, stop: CancellationToken) {
    // A shared-nothing worker has no shared registry to write to.
    if !worker.opts.coordinators.is_empty() {
        return;
    }
    loop {
        let entry = registry::Entry {
            id: worker.opts.id.clone(),
            host: crate::hostname(),
            port: 0,
            pid: std::process::id(),
            started_at: worker.started_at.clone(),
            updated_at: jiff::Timestamp::now().to_string(),
            status: "healthy".into(),
            active_tasks: worker.running_tasks().len() as u32,
            labels: worker.opts.labels.clone(),
        };
        if let Err(e) = registry::write(&worker.opts.registry_dir, Kind::Worker, &entry) {
            tracing::warn!(
                "worker {}: cannot write its registry entry: {e}",
                worker.opts.id
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(worker.opts.registry_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
