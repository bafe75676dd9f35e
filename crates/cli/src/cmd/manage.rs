//! Commands over stored runs: stop, retry, restart, history, logs, cleanup.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_store::Backend;

use super::run::{dag_name, execute, load, mark_dead};
use crate::cli::{CleanupArgs, HistoryArgs, LogsArgs, RestartArgs, RetryArgs, RunTarget};

fn find(store: &dyn Backend, name: &str, run_id: Option<&str>) -> anyhow::Result<RunRecord> {
    let found = match run_id {
        Some(id) => store.find(name, id)?,
        None => store.latest(name)?,
    };
    let mut run = found.with_context(|| {
        format!(
            "no run of {name}{}",
            run_id
                .map(|id| format!(" with id {id}"))
                .unwrap_or_default()
        )
    })?;
    mark_dead(&mut run);
    Ok(run)
}

/// Stops a run through the run-control service and waits for its end.
fn stop_run(run: &RunRecord) -> anyhow::Result<Status> {
    let runs = super::runs()?;
    Ok(super::block_on(runs.stop(run, trellis_runs::STOP_WITHIN))??)
}

pub fn stop(args: &RunTarget) -> anyhow::Result<ExitCode> {
    let store = super::open_store()?;
    let run = find(&*store, &dag_name(&args.target)?, args.run_id.as_deref())?;
    if run.status.is_final() {
        println!("run {} already ended: {}", run.run_id, run.status);
        return Ok(ExitCode::SUCCESS);
    }
    let status = stop_run(&run)?;
    println!("run {} stopped: {status}", run.run_id);
    Ok(ExitCode::SUCCESS)
}

/// The DAG of a run: the file named on the command line, else the stored definition.
fn definition(store: &dyn Backend, target: &str, run: &RunRecord) -> anyhow::Result<Option<Dag>> {
    if Path::new(target).is_file() {
        return load(Path::new(target));
    }
    Ok(Some(store.definition(&run.name, &run.run_id)?.context(
        "the run's definition was not stored; pass the workflow file",
    )?))
}

fn dags_dir(target: &str) -> Option<std::path::PathBuf> {
    let path = Path::new(target);
    path.is_file()
        .then(|| path.parent().map(|p| p.to_path_buf()).unwrap_or_default())
}

pub fn retry(args: &RetryArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store()?;
    let previous = find(&*store, &dag_name(&args.target)?, Some(&args.run_id))?;
    if !previous.status.is_final() {
        bail!(
            "run {} is still {}; stop it first",
            previous.run_id,
            previous.status
        );
    }
    let Some(dag) = definition(&*store, &args.target, &previous)? else {
        return Ok(ExitCode::from(crate::report::EXIT_INVALID));
    };
    if let Some(step) = &args.step
        && !dag.steps.iter().any(|s| &s.name == step)
    {
        bail!("DAG {} has no step named `{step}`", dag.name);
    }
    let params = previous.param_values();
    let retry = trellis_engine::Retry {
        previous: previous.clone(),
        from_step: args.step.clone(),
    };
    let record = execute(
        std::sync::Arc::new(dag),
        params,
        previous.run_id.to_string(),
        Some(retry),
        dags_dir(&args.target),
        args.quiet,
    )?;
    Ok(ExitCode::from(record.status.exit_code()))
}

pub fn restart(restart: &RestartArgs) -> anyhow::Result<ExitCode> {
    let args = &restart.run;
    if let Some(id) = &restart.new_run_id {
        trellis_store::check_name(id).context("--new-run-id")?;
    }
    let store = super::open_store()?;
    let previous = find(&*store, &dag_name(&args.target)?, args.run_id.as_deref())?;
    if !previous.status.is_final() {
        stop_run(&previous)?;
    }
    let Some(dag) = definition(&*store, &args.target, &previous)? else {
        return Ok(ExitCode::from(crate::report::EXIT_INVALID));
    };
    let record = execute(
        std::sync::Arc::new(dag),
        previous.param_values(),
        restart
            .new_run_id
            .clone()
            .unwrap_or_else(trellis_engine::new_run_id),
        None,
        dags_dir(&args.target),
        false,
    )?;
    Ok(ExitCode::from(record.status.exit_code()))
}

fn duration(run: &RunRecord) -> String {
    match (run.started_at, run.finished_at) {
        (Some(a), Some(b)) => format!("{:.2}s", b.0.duration_since(a.0).as_secs_f64()),
        _ => "-".into(),
    }
}

pub fn history(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let name = dag_name(&args.target)?;
    let store = super::open_store()?;
    let mut runs = store.list(&name, args.limit)?;
    runs.iter_mut().for_each(mark_dead);
    if args.json {
        let rows: Vec<_> = runs.iter().map(super::run::status_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<38} {:<20} {:<32} {:>9}",
        "RUN ID", "STATUS", "STARTED", "DURATION"
    );
    for run in &runs {
        let started = run.started_at.map_or("-".into(), |t| t.to_string());
        println!(
            "{:<38} {:<20} {:<32} {:>9}",
            run.run_id,
            run.status.as_str(),
            started,
            duration(run)
        );
    }
    if runs.is_empty() {
        eprintln!("no runs of {name}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let name = dag_name(&args.target)?;
    let store = super::open_store()?;
    let run = find(&*store, &name, args.run_id.as_deref())?;
    if !run
        .steps
        .iter()
        .chain(run.handlers.values())
        .any(|s| s.name == args.step)
    {
        bail!("run {} has no step named `{}`", run.run_id, args.step);
    }
    let stream = match args.stderr {
        true => trellis_runs::Stream::Stderr,
        false => trellis_runs::Stream::Stdout,
    };
    let runs = super::runs()?;
    let mut out = std::io::stdout();
    let copied = super::block_on(runs.copy_log(&run, &args.step, stream, args.follow, &mut out))??;
    if copied.is_none() {
        bail!("step `{}` has not started, so it has no log", args.step);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cleanup(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store()?;
    let cutoff = jiff::Timestamp::now()
        - jiff::SignedDuration::from_hours(24 * i64::from(args.retention_days));
    let names = match &args.target {
        Some(target) => vec![trellis_store::safe_name(&dag_name(target)?)],
        None => store.dag_names()?,
    };
    let mut removed = 0;
    for name in names {
        for mut run in store.list(&name, usize::MAX)? {
            mark_dead(&mut run);
            let ended = run.finished_at.or(run.started_at).map(|t| t.0);
            if !run.status.is_final() || ended.is_none_or(|t| t >= cutoff) {
                continue;
            }
            if args.dry_run {
                println!("would remove {} {} ({})", name, run.run_id, run.status);
            } else {
                store.remove(&name, &run.run_id)?;
            }
            removed += 1;
        }
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {removed} run(s) older than {} days",
        args.retention_days
    );
    Ok(ExitCode::SUCCESS)
}
