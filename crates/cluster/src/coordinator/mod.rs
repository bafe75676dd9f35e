//! The coordinator: a gRPC server that gives task files to workers, tracks worker health
//! from heartbeats, and enforces leases. Its state is the task files plus what workers tell
//! it, so it can restart at any time: workers keep running, reconnect, and renew.

mod remote;
mod service;
mod tls;
mod upkeep;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use trellis_store::{FileStore, Shared};

use crate::proto::RunningTask;
use crate::proto::coordinator_server::CoordinatorServer;
use crate::table::{Table, Timing};

/// Settings of `trellis coordinator`.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// Host written in the registry for workers to dial (default: the bound address).
    pub advertise: Option<String>,
    pub home: PathBuf,
    pub registry_dir: PathBuf,
    pub id: String,
    /// A task whose worker stops heartbeating is lost after this.
    pub lease_timeout: Duration,
    /// A claim not acknowledged within this goes back to the queue.
    pub ack_timeout: Duration,
    /// How often workers heartbeat (told to them at registration).
    pub heartbeat_interval: Duration,
    /// How often the registry file is rewritten.
    pub registry_interval: Duration,
    /// A task no live worker matches fails after waiting this long.
    pub dispatch_timeout: Duration,
    pub tls: Option<crate::security::ServerTls>,
    /// With a key, every call must carry a valid worker token.
    pub signing_key: Option<Vec<u8>>,
    /// Where runs live; `None`: the file store of `home`.
    pub store: Option<trellis_store::Shared>,
    /// This coordinator's workers for a server in the same process (`start-all`).
    pub view: LocalView,
}

/// The workers of a coordinator running in this process, read directly: a server beside
/// it (`start-all`) needs no network path, TLS client identity or token to list them.
#[derive(Clone, Default)]
pub struct LocalView(Arc<std::sync::OnceLock<std::sync::Weak<Coord>>>);

impl LocalView {
    /// The workers, as `GetWorkers` answers; `None` while the coordinator is not serving
    /// (not started yet, a standby without the lease, or stopped).
    pub fn workers(&self) -> Option<Vec<crate::proto::WorkerInfo>> {
        let coord = self.0.get()?.upgrade()?;
        Some(service::worker_infos(&coord))
    }
}

impl std::fmt::Debug for LocalView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalView")
    }
}

impl Options {
    pub fn new(home: PathBuf, addr: SocketAddr) -> Options {
        Options {
            addr,
            advertise: None,
            registry_dir: crate::registry::default_dir(&trellis_store::data_dir(&home)),
            home,
            id: format!("coordinator-{}", crate::default_id()),
            lease_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            registry_interval: Duration::from_secs(10),
            dispatch_timeout: Duration::from_secs(300),
            tls: None,
            signing_key: None,
            store: None,
            view: LocalView::default(),
        }
    }
}

/// A worker as the coordinator knows it.
#[derive(Clone, Debug)]
pub(crate) struct WorkerState {
    pub labels: IndexMap<String, String>,
    pub host: String,
    pub max_active_runs: u32,
    pub connected_at: String,
    pub last_heartbeat_ms: i64,
    pub running: Vec<RunningTask>,
}

/// Shared by the gRPC handlers and the upkeep loops.
pub(crate) struct Coord {
    pub opts: Options,
    pub store: Shared,
    /// Where shared-nothing workers' step output is written.
    pub logs: std::sync::Arc<dyn trellis_store::LogStore>,
    /// Tasks and cancel requests: files in `data`, or the database.
    pub tasks: crate::tasks::Tasks,
    /// The coordinator's lease: one coordinator acts per data dir or database.
    pub lead: Mutex<Option<trellis_store::Lead>>,
    /// Set when the lease was lost (the serve call then fails).
    pub lost: std::sync::atomic::AtomicBool,
    pub table: Mutex<Table>,
    pub workers: Mutex<HashMap<String, WorkerState>>,
    /// Woken when a task becomes claimable.
    pub wake: Notify,
    /// Serialises creating the store attempt of a shared-nothing task.
    pub remote: Mutex<()>,
}

impl Coord {
    pub fn timing(&self) -> Timing {
        Timing {
            ack_ms: self.opts.ack_timeout.as_millis() as i64,
            lease_ms: self.opts.lease_timeout.as_millis() as i64,
        }
    }

    pub fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerState>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One coordinator per data dir (a lock file) or database (a lease row): a second one
/// waits, as a standby that does not listen, until the lease is free, so two never hand
/// out the same task and workers fail over to whichever serves. `None` when shut down
/// while waiting.
async fn exclusive(
    store: &Shared,
    id: &str,
    shutdown: &CancellationToken,
) -> Result<Option<trellis_store::Lead>, Box<dyn std::error::Error + Send + Sync>> {
    let mut said = false;
    loop {
        let (store, holder) = (store.clone(), id.to_string());
        let lead = tokio::task::spawn_blocking(move || {
            store.acquire_lease(trellis_store::state::COORDINATOR, &holder)
        })
        .await??;
        if let Some(lead) = lead {
            return Ok(Some(lead));
        }
        if !said {
            tracing::info!("coordinator: another coordinator serves this data dir; standing by");
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Serves until `shutdown`. `bound` receives the listening address (useful with port 0).
pub async fn serve(
    opts: Options,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let data = trellis_store::data_dir(&opts.home);
    let store = opts
        .store
        .clone()
        .unwrap_or_else(|| Arc::new(FileStore::new(&opts.home)));
    let Some(lead) = exclusive(&store, &opts.id, &shutdown).await? else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
    let addr = listener.local_addr()?;
    let coord = Arc::new(Coord {
        tasks: crate::tasks::Tasks::of(&data, &store),
        logs: trellis_store::open_logs(),
        store,
        lead: Mutex::new(Some(lead)),
        lost: Default::default(),
        opts,
        table: Mutex::new(Table::default()),
        workers: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        remote: Mutex::new(()),
    });
    trellis_engine::blocking_section(|| upkeep::load_tasks(&coord));
    let _ = coord.opts.view.0.set(Arc::downgrade(&coord));
    let upkeep = tokio::spawn(upkeep::run(coord.clone(), addr, shutdown.clone()));
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    let auth = service::Auth(coord.opts.signing_key.clone().map(Arc::new));
    let service = CoordinatorServer::with_interceptor(service::Service(coord.clone()), auth);
    let router = tonic::transport::Server::builder().add_service(service);
    let stop = shutdown.clone().cancelled_owned();
    let result = match &coord.opts.tls {
        Some(settings) => {
            let config = tls::config(settings)?;
            let incoming = tls::incoming(listener, config, shutdown.clone());
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    shutdown.cancel();
    let _ = upkeep.await;
    crate::registry::remove(
        &coord.opts.registry_dir,
        crate::registry::Kind::Coordinator,
        &coord.opts.id,
    );
    result?;
    if coord.lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err("the coordinator lost its lease to another coordinator".into());
    }
    if let Some(lead) = coord.lead.lock().unwrap_or_else(|e| e.into_inner()).take() {
        trellis_engine::blocking_section(|| coord.store.release_lease(lead));
    }
    Ok(())
}
