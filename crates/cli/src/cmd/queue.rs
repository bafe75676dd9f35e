//! `trellis enqueue` / `trellis dequeue`: queue files that the scheduler consumes.

use std::process::ExitCode;

use anyhow::Context;
use trellis_runs::queueing::{Enqueue, Outcome};

use super::run::load;
use crate::cli::{DequeueArgs, EnqueueArgs};
use crate::report::EXIT_INVALID;

pub fn enqueue(args: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    let Some(dag) = load(&args.file)? else {
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    if let Err(errors) = trellis_spec::resolve_params(&dag, args.params.as_deref(), &[]) {
        for e in errors {
            eprintln!("error: {}: {e}", args.file.display());
        }
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let runs = super::runs()?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(trellis_engine::new_run_id);
    let req = Enqueue {
        params: args.params.clone(),
        tags: run_tags(args.tags.as_deref()),
        priority: args.priority,
        queue: args.queue.clone(),
        ..Enqueue::new(&dag, &args.file, run_id.clone())
    };
    match runs.enqueue(req)? {
        Outcome::Queued => {
            println!("{run_id}");
            eprintln!("queued run {run_id} of {}", dag.name);
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Exists(status) => {
            anyhow::bail!("run {run_id} of {} already exists ({status})", dag.name)
        }
    }
}

/// `--tags k=v,...` (the DAG's labels are added by the queue).
fn run_tags(extra: Option<&str>) -> indexmap::IndexMap<String, String> {
    let mut tags = indexmap::IndexMap::new();
    for part in extra
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        tags.insert(k.trim().to_string(), v.trim().to_string());
    }
    tags
}

pub fn dequeue(args: &DequeueArgs) -> anyhow::Result<ExitCode> {
    let runs = super::runs()?;
    let item = super::block_on(runs.dequeue(&args.queue, &args.run_id))??
        .with_context(|| format!("run {} is not in queue {}", args.run_id, args.queue))?;
    println!("dequeued run {} of {}", item.run_id, item.dag_name);
    Ok(ExitCode::SUCCESS)
}
