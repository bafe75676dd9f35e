//! `trellis scheduler`, `trellis dags`, `trellis backfill`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use trellis_scheduler::catalog::Catalog;
use trellis_scheduler::clock::{Clock, SystemClock};
use trellis_scheduler::config::Config;
use trellis_scheduler::daemon::{self, due_times};
use trellis_scheduler::queueing::{self, Enqueue, Outcome};

use super::run::home;
use crate::cli::{BackfillArgs, DagsArgs, SchedulerArgs, Setup};

/// The config file from `--config` or `TRELLIS_CONFIG`; none means defaults.
pub fn config(setup: &Setup) -> anyhow::Result<Config> {
    match setup
        .config
        .clone()
        .or_else(|| std::env::var_os("TRELLIS_CONFIG").map(PathBuf::from))
    {
        Some(path) => Config::load(&path).map_err(anyhow::Error::msg),
        None => Ok(Config::default()),
    }
}

/// `--dags`, else `TRELLIS_DAGS_DIR`, else the config's `paths.dags_dir`, else
/// `$TRELLIS_HOME/dags`.
pub fn dags_dir(setup: &Setup, config: &Config) -> PathBuf {
    setup
        .dags
        .clone()
        .or_else(|| std::env::var_os("TRELLIS_DAGS_DIR").map(PathBuf::from))
        .or_else(|| config.paths.dags_dir.clone())
        .unwrap_or_else(|| home().join("dags"))
}

/// The scheduler's settings from the command line, env and config.
/// `key` signs the tasks handed to workers.
pub fn scheduler_options(
    setup: &Setup,
    id: Option<&str>,
    key: Option<Vec<u8>>,
) -> anyhow::Result<daemon::Options> {
    let config = config(setup)?;
    let dags_dir = dags_dir(setup, &config);
    let id = id.map_or_else(trellis_cluster::default_id, str::to_string);
    eprintln!(
        "scheduler {id}: DAGs from {}, data in {}",
        dags_dir.display(),
        home().display()
    );
    Ok(daemon::Options {
        home: home(),
        dags_dir,
        config,
        id,
        handoff: handoff(key)?,
        store: super::open_store()?,
    })
}

/// How this process hands runs to workers: task files in the data dir or rows in the
/// database, signed with the cluster's key when it has one.
pub fn handoff(
    key: Option<Vec<u8>>,
) -> anyhow::Result<std::sync::Arc<dyn trellis_cluster::handoff::Handoff>> {
    let data = trellis_store::data_dir(&home());
    let store = super::open_store()?;
    Ok(std::sync::Arc::new(
        trellis_cluster::handoff::TaskHandoff::new(&data, &store, key),
    ))
}

/// Runs a long-lived service on [`runtime`] until it ends or SIGINT/SIGTERM cancels the
/// token it is given.
pub fn until_signal<F, Fut, E>(service: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    anyhow::Error: From<E>,
{
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        super::cancel_on_signals(shutdown.clone());
        service(shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A runtime for the long-running services; two workers match the machines we target.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub fn scheduler(args: &SchedulerArgs) -> anyhow::Result<ExitCode> {
    let key = super::cluster::signing_key(&args.setup, None)?;
    let opts = scheduler_options(&args.setup, args.id.as_deref(), key)?;
    until_signal(|shutdown| daemon::run(opts, Arc::new(SystemClock), shutdown))
}

pub fn dags(args: &DagsArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args.setup)?;
    let dir = dags_dir(&args.setup, &config);
    let mut catalog = Catalog::default();
    catalog.refresh(&dir);
    let store = super::open_store()?;
    let now = SystemClock.now();
    println!(
        "{:<28} {:<8} {:<20} {:<26} ",
        "NAME", "VALID", "LAST RUN", "NEXT RUN"
    );
    for entry in &catalog.entries {
        let name = entry.name();
        let last = store
            .latest(&name)
            .ok()
            .flatten()
            .map_or("-".to_string(), |r| r.status.as_str().to_string());
        match &entry.dag {
            Ok(dag) => {
                let next = daemon::crons(&dag.schedule.start)
                    .filter_map(|c| c.next_after(now))
                    .min()
                    .map_or("-".to_string(), |t| t.to_string());
                println!("{name:<28} {:<8} {last:<20} {next:<26}", "yes");
            }
            Err(e) => println!("{name:<28} {:<8} {last:<20} {:<26} {e}", "no", "-"),
        }
    }
    if catalog.entries.is_empty() {
        eprintln!("no workflow files in {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn backfill(args: &BackfillArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args.setup)?;
    let mut catalog = Catalog::default();
    catalog.refresh(&dags_dir(&args.setup, &config));
    let entry = catalog
        .find(&args.name)
        .with_context(|| format!("no DAG named {} in the dags dir", args.name))?;
    let dag = entry.dag.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let parse = |t: &str| {
        t.parse::<Timestamp>()
            .with_context(|| format!("`{t}` is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)"))
    };
    let (from, to) = (parse(&args.from)?, parse(&args.to)?);
    // `from` is inclusive: look from just before it.
    let times = due_times(
        &dag.schedule.start,
        from - jiff::SignedDuration::from_nanos(1),
        to,
    );
    let store = super::open_store()?;
    let (mut queued, mut kept) = (0, 0);
    for at in times {
        let req = Enqueue {
            scheduled_time: Some(at),
            queue: Some(format!("backfill-{}", dag.name)),
            queue_limit: Some(args.max_concurrent),
            ..Enqueue::new(dag, &entry.path, queueing::scheduled_run_id(at))
        };
        match queueing::enqueue(&*store, req)? {
            Outcome::Queued => queued += 1,
            Outcome::Exists(status) => {
                kept += 1;
                eprintln!("{at}: kept the existing run ({status})");
            }
        }
    }
    println!(
        "backfill of {}: {queued} run(s) queued, {kept} already present; the scheduler starts them (at most {} at a time)",
        dag.name, args.max_concurrent
    );
    Ok(ExitCode::SUCCESS)
}
