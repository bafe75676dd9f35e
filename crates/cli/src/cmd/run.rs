//! `trellis start` and `trellis status`: run a DAG in the foreground, show a stored run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, StepRecord};

use crate::cli::{StartArgs, StatusArgs};
use crate::report;

/// `TRELLIS_HOME`, else `$XDG_DATA_HOME/trellis`, else `~/.local/share/trellis`.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("TRELLIS_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("trellis");
    }
    let user = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user.join(".local/share/trellis")
}

/// Loads a workflow, printing its problems; `None` means invalid input (exit 2).
pub fn load(path: &Path) -> anyhow::Result<Option<Dag>> {
    let name = path.display().to_string();
    let text = super::read(path)?;
    match trellis_spec::load_file_str(path, &text) {
        Ok(loaded) => Ok(Some(loaded.dag)),
        Err(problems) => {
            eprint!("{}", report::problems(&name, &text, &problems));
            Ok(None)
        }
    }
}

pub fn start(args: &StartArgs) -> anyhow::Result<ExitCode> {
    let Some(dag) = load(&args.file)? else {
        return Ok(ExitCode::from(report::EXIT_INVALID));
    };
    let params = match trellis_spec::resolve_params(&dag, args.params.as_deref(), &args.positional)
    {
        Ok(values) => values,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {}: {e}", args.file.display());
            }
            return Ok(ExitCode::from(report::EXIT_INVALID));
        }
    };
    let dags_dir = args.file.parent().map(|p| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    });
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(trellis_engine::new_run_id);
    let record = execute(Arc::new(dag), params, run_id, None, dags_dir, args.quiet)?;
    Ok(ExitCode::from(record.status.exit_code()))
}

/// Runs a DAG in the foreground; SIGINT and SIGTERM cancel it cleanly.
pub fn execute(
    dag: Arc<Dag>,
    params: Vec<trellis_core::params::ParamValue>,
    run_id: String,
    retry: Option<trellis_engine::Retry>,
    dags_dir: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<RunRecord> {
    execute_as(
        dag,
        params,
        run_id,
        retry,
        dags_dir,
        quiet,
        Queued::default(),
    )
}

/// How a queued run differs from one started here.
#[derive(Default)]
pub struct Queued {
    queued: bool,
    env: Vec<(String, String)>,
}

fn execute_as(
    dag: Arc<Dag>,
    params: Vec<trellis_core::params::ParamValue>,
    run_id: String,
    retry: Option<trellis_engine::Retry>,
    dags_dir: Option<PathBuf>,
    quiet: bool,
    queued: Queued,
) -> anyhow::Result<RunRecord> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backend = super::open_store()?;
    let key = std::env::var("TRELLIS_COORDINATOR_SIGNING_KEY")
        .ok()
        .map(String::into_bytes);
    let remote = super::schedule::handoff(key)?.remote();
    let runs = super::runs()?;
    let record = runtime
        .block_on(async {
            let store = Arc::new(crate::progress::Progress::new(backend, quiet));
            let shown = store.clone();
            let cancel = CancellationToken::new();
            super::cancel_on_signals(cancel.clone());
            let run = trellis_runs::Execute {
                dag: dag.clone(),
                params,
                run_id,
                retry,
                dags_dir,
                remote: Some(remote),
                queued: queued.queued,
                env: queued.env,
            };
            let record = runs.execute(store, run, cancel).await;
            shown.finish();
            record
        })
        .map_err(|e| match e {
            // Kept whole, so `main` can tell an unreachable database (exit 3).
            trellis_runs::Error::Store(e) => anyhow::Error::from(e),
            e => anyhow::Error::from(e),
        })?;
    if !quiet {
        eprintln!("run {} {} ({})", record.run_id, record.status, dag.name);
        if let Some(step) = record.steps.first() {
            eprintln!("logs: trellis logs {} --step {:?}", dag.name, step.name);
        }
        if let Some(error) = &record.error {
            eprintln!("error: {error}");
        }
    }
    Ok(record)
}

/// Runs a run a scheduler took from its queue (in the container the run launcher made
/// for it): the DAG from its file, else the definition stored with the run; steps a dead
/// runner left carried over, as the scheduler's own resume does.
pub fn run_queued(args: &crate::cli::RunQueuedArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store()?;
    let Some(run) = store.find(&args.dag, &args.run_id)? else {
        anyhow::bail!("no run {} of {}", args.run_id, args.dag);
    };
    if run.status.is_final() {
        eprintln!(
            "run {} of {} already ended: {}",
            args.run_id, args.dag, run.status
        );
        return Ok(ExitCode::from(run.status.exit_code()));
    }
    let from_file = args.file.as_deref().and_then(|f| load(f).ok().flatten());
    let dag = match from_file {
        Some(dag) => dag,
        None => store
            .definition(&args.dag, &args.run_id)?
            .ok_or_else(|| anyhow::anyhow!("run {} has no definition", args.run_id))?,
    };
    let params = trellis_spec::resolve_params(&dag, args.params.as_deref(), &[]).map_err(|e| {
        anyhow::anyhow!(
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let progressed = run
        .steps
        .iter()
        .any(|s| s.status != trellis_core::status::Status::NotStarted);
    let retry = progressed.then(|| trellis_engine::Retry {
        previous: run.clone(),
        from_step: None,
    });
    let queued = Queued {
        queued: true,
        env: args
            .scheduled_time
            .iter()
            .map(|t| ("DAG_RUN_SCHEDULED_TIME".to_string(), t.clone()))
            .collect(),
    };
    let dags_dir = args
        .file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let record = execute_as(
        Arc::new(dag),
        params,
        args.run_id.clone(),
        retry,
        dags_dir,
        true,
        queued,
    )?;
    Ok(ExitCode::from(record.status.exit_code()))
}

pub fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let name = dag_name(&args.target)?;
    let store = super::open_store()?;
    let found = match &args.run_id {
        Some(id) => store.find(&name, id)?,
        None => store.latest(&name)?,
    };
    let Some(mut run) = found else {
        eprintln!("no runs of {name}");
        return Ok(ExitCode::from(1));
    };
    mark_dead(&mut run);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&run))?);
    } else {
        print_status(&run);
    }
    Ok(ExitCode::SUCCESS)
}

/// A file path names its DAG (by `name:` or stem); anything else is a DAG name.
pub fn dag_name(target: &str) -> anyhow::Result<String> {
    let path = Path::new(target);
    if path.is_file() {
        let text = super::read(path)?;
        return Ok(match trellis_spec::load_str(target, &text) {
            Ok(l) => l.dag.name,
            Err(_) => trellis_spec::default_name(target),
        });
    }
    trellis_store::check_name(target)
        .with_context(|| format!("{target} is neither a file nor a DAG name"))?;
    Ok(target.to_string())
}

/// A run recorded as running whose process is gone died without finishing (shared with
/// the server, which shows runs the same way).
pub use trellis_store::mark_dead;

fn step_json(s: &StepRecord) -> Value {
    json!({
        "name": s.name, "status": s.status, "exit_code": s.exit_code, "retry_count": s.retry_count,
        "output": s.output, "started_at": s.started_at, "finished_at": s.finished_at,
        "worker_id": s.worker_id, "error": s.error, "notes": s.notes, "children": s.children,
        "handle": s.handle.as_ref().map(|h| format!("{}:{}", h.executor, h.id)),
    })
}

/// The `status --json` contract.
pub fn status_json(run: &RunRecord) -> Value {
    let handlers: serde_json::Map<String, Value> = run
        .handlers
        .iter()
        .map(|(k, v)| (k.clone(), step_json(v)))
        .collect();
    json!({
        "name": run.name, "run_id": run.run_id, "status": run.status,
        "steps": run.steps.iter().map(step_json).collect::<Vec<_>>(),
        "handlers": handlers, "outputs": run.outputs, "error": run.error,
        "params": run.params, "started_at": run.started_at, "finished_at": run.finished_at,
        "warnings": run.warnings,
    })
}

fn print_status(run: &RunRecord) {
    println!("{} run {}: {}", run.name, run.run_id, run.status);
    for s in run.steps.iter().chain(run.handlers.values()) {
        let code = s
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        println!("  {:<24} {}{code}", s.name, s.status);
    }
    if let Some(e) = &run.error {
        println!("error: {e}");
    }
    for w in &run.warnings {
        println!("warning: {w}");
    }
}
