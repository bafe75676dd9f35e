//! `trellis enqueue` / `trellis dequeue`: queue files that the scheduler consumes.

use std::process::ExitCode;

use anyhow::Context;
use trellis_core::status::{RunRecord, Status};
use trellis_store::{Entry, FileStore, Queue, QueueItem, Store};

use super::run::{home, load};
use crate::cli::{DequeueArgs, EnqueueArgs};
use crate::report::EXIT_INVALID;

pub fn enqueue(args: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    let Some(dag) = load(&args.file)? else {
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let params = match trellis_spec::resolve_params(&dag, args.params.as_deref(), &[]) {
        Ok(values) => values,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {}: {e}", args.file.display());
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let store = FileStore::new(&home());
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(trellis_engine::new_run_id);
    let queue = args
        .queue
        .clone()
        .or_else(|| dag.queue.clone())
        .unwrap_or_else(|| dag.name.clone());
    let attempt = store.create_attempt(&dag.name, &run_id, None)?;
    store.save_definition(&attempt, &dag)?;
    let record = RunRecord {
        name: dag.name.clone(),
        run_id: run_id.clone(),
        attempt_id: attempt.attempt_id.clone(),
        status: Status::Queued,
        steps: dag
            .steps
            .iter()
            .map(|s| trellis_core::status::StepRecord {
                name: s.name.clone(),
                ..Default::default()
            })
            .collect(),
        params: params
            .iter()
            .map(|p| {
                if p.positional {
                    p.value.clone()
                } else {
                    format!("{}={}", p.name, p.value)
                }
            })
            .collect(),
        ..RunRecord::default()
    };
    store.append(&attempt, &Entry::Snapshot(Box::new(record)))?;
    let file = std::fs::canonicalize(&args.file).unwrap_or_else(|_| args.file.clone());
    let item = QueueItem {
        queue: queue.clone(),
        dag_name: dag.name.clone(),
        run_id: run_id.clone(),
        file: file.display().to_string(),
        params: args.params.clone(),
        priority: args.priority,
        queued_at: jiff::Timestamp::now().to_string(),
    };
    store.enqueue(&item)?;
    println!("{run_id}");
    eprintln!("queued run {run_id} of {} in queue {queue}", dag.name);
    Ok(ExitCode::SUCCESS)
}

pub fn dequeue(args: &DequeueArgs) -> anyhow::Result<ExitCode> {
    let store = FileStore::new(&home());
    let items = store.items(&args.queue)?;
    let item = items
        .iter()
        .find(|i| i.run_id == args.run_id)
        .with_context(|| format!("run {} is not in queue {}", args.run_id, args.queue))?;
    if !store.remove_item(&args.queue, &args.run_id)? {
        anyhow::bail!(
            "run {} left queue {} before it could be removed",
            args.run_id,
            args.queue
        );
    }
    if let Some(mut run) = store.find(&item.dag_name, &item.run_id)? {
        run.status = Status::Aborted;
        run.error = Some("removed from the queue (dequeue)".into());
        run.finished_at = Some(jiff::Timestamp::now().to_string());
        let attempt = store.retry_attempt(&item.dag_name, &item.run_id)?;
        store.append(&attempt, &Entry::Snapshot(Box::new(run)))?;
    }
    println!("dequeued run {} of {}", item.run_id, item.dag_name);
    Ok(ExitCode::SUCCESS)
}
