//! `trellis coordinator`, `trellis worker`, `trellis workers`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use trellis_cluster::config::{ClusterFile, WorkerSection};
use trellis_cluster::worker::link::Dial;
use trellis_cluster::{client, coordinator, registry, worker};

use super::run::home;
use super::schedule::{runtime, until_signal};
use crate::cli::{CoordinatorArgs, CoordinatorFlags, Setup, WorkerArgs, WorkersArgs};

/// The `coordinator:` and `worker:` sections of the config file.
fn cluster_file(setup: &Setup) -> anyhow::Result<ClusterFile> {
    let Some(path) = super::server::config_file(setup) else {
        return Ok(ClusterFile::default());
    };
    let json = trellis_scheduler::config::load_json(&path).map_err(anyhow::Error::msg)?;
    if json.is_null() {
        return Ok(ClusterFile::default());
    }
    serde_json::from_value(json).with_context(|| format!("{}", path.display()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_ip(host: &str) -> anyhow::Result<IpAddr> {
    match host {
        "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
        h => h
            .parse()
            .with_context(|| format!("coordinator host `{h}` is not an IP address")),
    }
}

/// The coordinator's settings: flags, then env, then the config file, then defaults.
pub fn coordinator_options(
    setup: &Setup,
    flags: &CoordinatorFlags,
) -> anyhow::Result<coordinator::Options> {
    let file = cluster_file(setup)?.coordinator;
    let host = flags
        .host
        .clone()
        .or_else(|| env("TRELLIS_COORDINATOR_HOST"))
        .or(file.host)
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = match (flags.port, env("TRELLIS_COORDINATOR_PORT")) {
        (Some(p), _) => p,
        (None, Some(p)) => p
            .parse()
            .context("TRELLIS_COORDINATOR_PORT is not a port")?,
        (None, None) => file.port.unwrap_or(50055),
    };
    let mut opts = coordinator::Options::new(home(), SocketAddr::new(parse_ip(&host)?, port));
    opts.store = Some(super::open_store()?);
    opts.advertise = flags.advertise.clone().or(file.advertise);
    if let Some(secs) = flags.lease_timeout.or(file.lease_timeout) {
        opts.lease_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = flags.dispatch_timeout.or(file.dispatch_timeout) {
        opts.dispatch_timeout = Duration::from_secs(secs);
    }
    let tls = file.tls.unwrap_or_default();
    let cert = flags.tls_cert.clone().or(tls.cert_file);
    let key = flags.tls_key.clone().or(tls.key_file);
    let ca = flags.tls_ca.clone().or(tls.ca_file);
    opts.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(trellis_cluster::security::ServerTls {
            cert,
            key,
            client_ca: ca,
        }),
        (None, None) if ca.is_some() => bail!("--coordinator.tls-ca needs a certificate and key"),
        (None, None) => None,
        _ => bail!("the coordinator's TLS needs both a certificate and a key"),
    };
    opts.signing_key = signing_key(setup, flags.signing_key.as_deref())?;
    let mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if !opts.addr.ip().is_loopback()
        && opts.signing_key.is_none()
        && !mtls
        && !flags.insecure_no_auth
    {
        bail!(
            "refusing to serve the coordinator on {} without worker authentication: set a \
             signing key (--coordinator.signing-key) or mTLS (--coordinator.tls-ca), or pass \
             --coordinator.insecure-no-auth",
            opts.addr
        );
    }
    Ok(opts)
}

/// The cluster signing key: the flag, else `TRELLIS_COORDINATOR_SIGNING_KEY`, else the
/// config's `coordinator.signing_key`. Refuses short keys.
pub fn signing_key(setup: &Setup, flag: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    let key = match flag.map(str::to_string) {
        Some(k) => Some(k),
        None => {
            env("TRELLIS_COORDINATOR_SIGNING_KEY").or(cluster_file(setup)?.coordinator.signing_key)
        }
    };
    match key {
        Some(k) if k.len() < 16 => bail!("the signing key must be at least 16 characters"),
        Some(k) => Ok(Some(k.into_bytes())),
        None => Ok(None),
    }
}

/// Serves the coordinator until `shutdown`, printing its address once bound.
pub async fn serve(opts: coordinator::Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(addr) = rx.await {
            eprintln!("coordinator listening on {addr}");
        }
    });
    coordinator::serve(opts, shutdown, Some(tx))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn coordinator(args: &CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let opts = coordinator_options(&args.setup, &args.coordinator)?;
    until_signal(|shutdown| serve(opts, shutdown))
}

fn worker_options(args: &WorkerArgs) -> anyhow::Result<worker::Options> {
    let file = cluster_file(&args.setup)?.worker;
    let mut opts = worker::Options::new(home());
    opts.store = Some(super::open_store()?);
    if let Some(id) = args
        .id
        .clone()
        .or_else(|| env("TRELLIS_WORKER_ID"))
        .or(file.id.clone())
    {
        opts.id = id;
    }
    opts.labels = match args.labels.clone().or_else(|| env("TRELLIS_WORKER_LABELS")) {
        Some(text) => trellis_core::worker::parse_labels(&text)
            .map_err(|e| anyhow::anyhow!("--worker.labels: {e}"))?,
        None => file.labels.clone().unwrap_or_default(),
    };
    opts.max_active_runs = args
        .max_active_runs
        .or(file.max_active_runs)
        .unwrap_or(100)
        .max(1);
    opts.coordinator = static_coordinator(args, &file)?;
    if let Some(secs) = file.heartbeat_interval {
        opts.heartbeat_interval = Duration::from_secs_f64(secs.clamp(0.05, 60.0));
    }
    if let Some(secs) = file.registry_interval {
        opts.registry_interval = Duration::from_secs_f64(secs.clamp(0.05, 600.0));
    }
    if let Some(secs) = args.drain_grace {
        opts.drain_grace = Duration::from_secs(secs);
    }
    opts.coordinators = args
        .coordinators
        .as_deref()
        .map(trellis_cluster::config::split_addresses)
        .or(file.coordinators.clone())
        .unwrap_or_default();
    opts.dial = worker_dial(args, &file)?;
    Ok(opts)
}

/// The coordinator of shared-filesystem mode when given (else the registry finds it).
fn static_coordinator(args: &WorkerArgs, file: &WorkerSection) -> anyhow::Result<Option<String>> {
    let host = args
        .coordinator_host
        .clone()
        .or_else(|| env("TRELLIS_WORKER_COORDINATOR_HOST"))
        .or_else(|| env("TRELLIS_COORDINATOR_HOST"))
        .or(file.coordinator_host.clone());
    let port = match (args.coordinator_port, env("TRELLIS_COORDINATOR_PORT")) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(
            p.parse()
                .context("TRELLIS_COORDINATOR_PORT is not a port")?,
        ),
        (None, None) => file.coordinator_port,
    };
    Ok(host.map(|h| format!("{h}:{}", port.unwrap_or(50055))))
}

/// TLS (on when a CA or certificate is given), the plaintext override and the key.
fn worker_dial(args: &WorkerArgs, file: &WorkerSection) -> anyhow::Result<Dial> {
    let tls = file.tls.clone().unwrap_or_default();
    let client_tls = trellis_cluster::security::ClientTls {
        ca: args.tls_ca.clone().or(tls.ca_file),
        cert: args.tls_cert.clone().or(tls.cert_file),
        key: args.tls_key.clone().or(tls.key_file),
    };
    let any_tls = client_tls.ca.is_some() || client_tls.cert.is_some();
    Ok(Dial {
        tls: any_tls.then_some(client_tls),
        insecure: args.insecure || file.insecure.unwrap_or(false),
        key: signing_key(&args.setup, args.signing_key.as_deref())?,
    })
}

pub fn worker(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let opts = worker_options(args)?;
    until_signal(|shutdown| async move {
        worker::run(opts, shutdown)
            .await
            .map_err(anyhow::Error::msg)
    })
}

/// The workers as JSON in the shape of `GET /api/v2/workers`: from the coordinator, else
/// (none reachable) from the registry files, where health is the registry entry's age.
pub async fn workers_json(coordinator: Option<String>, how: &Dial) -> serde_json::Value {
    let registry_dir = registry::default_dir(&trellis_store::data_dir(&home()));
    // Opening a database store and reading it block: off the runtime's threads.
    let direct = coordinator.is_none();
    let stored = tokio::task::spawn_blocking(move || match super::open_store() {
        Ok(store) if store.spans_machines() && direct => Some(client::stored_workers(&*store)),
        _ => None,
    })
    .await
    .ok()
    .flatten();
    let addr = coordinator.or_else(|| client::discover(&registry_dir));
    let fetched = match (&stored, &addr) {
        (Some(_), _) | (None, None) => None,
        (None, Some(addr)) => client::workers(addr, how).await.ok(),
    };
    if let Some(list) = stored.or(fetched) {
        let workers: Vec<_> = list
            .iter()
            .map(|w| {
                json!({
                    "id": w.id, "labels": w.labels, "health_status": w.health_status,
                    "last_heartbeat": w.last_heartbeat,
                    "running_tasks": w.running_tasks.iter().map(|t| json!({
                        "dag_name": t.dag_name, "dag_run_id": t.run_id,
                        "root_dag_run_name": t.dag_name, "started_at": t.started_at,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json!({ "workers": workers, "source": "coordinator" });
    }
    let workers: Vec<_> = client::registry_workers(&registry_dir)
        .iter()
        .map(|w| {
            json!({"id": w.id, "labels": w.labels, "health_status": w.health_status,
                   "last_heartbeat": w.last_heartbeat, "running_tasks": []})
        })
        .collect();
    json!({ "workers": workers, "source": "registry" })
}

/// How the server and `trellis workers` reach the coordinator: the config's `worker.tls`
/// settings and the signing key. A config that sets up only the coordinator's TLS (the
/// main instance's) still dials over TLS, trusting the CA it names (else the coordinator's
/// own certificate): never plaintext to a TLS coordinator.
pub fn client_dial(setup: &Setup) -> anyhow::Result<Dial> {
    let cluster = cluster_file(setup)?;
    let file = cluster.worker;
    let own = file.tls.map(|t| trellis_cluster::security::ClientTls {
        ca: t.ca_file,
        cert: t.cert_file,
        key: t.key_file,
    });
    let coordinator = cluster.coordinator.tls.and_then(|t| {
        Some(trellis_cluster::security::ClientTls {
            ca: Some(t.ca_file.or(t.cert_file)?),
            cert: None,
            key: None,
        })
    });
    let tls = own.or(coordinator);
    Ok(Dial {
        tls,
        insecure: file.insecure.unwrap_or(false),
        key: signing_key(setup, None)?,
    })
}

pub fn workers(args: &WorkersArgs) -> anyhow::Result<ExitCode> {
    let how = client_dial(&args.setup)?;
    let value = runtime()?.block_on(workers_json(args.coordinator.clone(), &how));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = value["workers"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<28} {:<10} {:<26} {:<6} LABELS",
        "ID", "HEALTH", "LAST HEARTBEAT", "TASKS"
    );
    for w in &list {
        let labels: Vec<String> = w["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<28} {:<10} {:<26} {:<6} {}",
            w["id"].as_str().unwrap_or_default(),
            w["health_status"].as_str().unwrap_or_default(),
            w["last_heartbeat"].as_str().unwrap_or_default(),
            w["running_tasks"].as_array().map_or(0, Vec::len),
            labels.join(",")
        );
    }
    if list.is_empty() {
        eprintln!("no workers registered");
    }
    Ok(ExitCode::SUCCESS)
}
