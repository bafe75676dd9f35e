//! One task on a worker: verify it, acknowledge it, run it with the engine, relay it (in
//! shared-nothing mode), and report its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_engine::RunRequest;

use super::link::Client;
use super::{Running, Worker, relay};
use crate::proto;
use crate::security;
use crate::table::TaskSpec;

/// The task's content as the scheduler signed it.
fn spec_of(task: &proto::Task) -> TaskSpec {
    TaskSpec {
        task_id: task.task_id.clone(),
        dag_name: task.dag_name.clone(),
        run_id: task.run_id.clone(),
        attempt: task.attempt,
        max_attempts: 0,
        definition_json: task.definition_json.clone(),
        params: task.params.clone(),
        selector: task.selector.clone().into_iter().collect(),
        queued_at: task.queued_at.clone(),
        queued_ms: 0,
        env: task.env.clone().into_iter().collect(),
        existing_run: task.existing_run,
        queue: String::new(),
        tags: Default::default(),
        signature: task.signature.clone(),
        parent: parent_of(task),
    }
}

fn parent_of(task: &proto::Task) -> Option<crate::table::ParentRef> {
    (!task.parent_json.is_empty())
        .then(|| serde_json::from_str(&task.parent_json).ok())
        .flatten()
}

/// Why the worker will not run a task, if it will not.
fn refusal(worker: &Worker, task: &proto::Task) -> Option<String> {
    let key = worker.opts.dial.key.as_ref()?;
    (!security::verify_task(key, &spec_of(task), &task.signature)).then(|| {
        if task.signature.is_empty() {
            "the task is not signed".to_string()
        } else {
            "the task's signature does not verify (it was changed after it was signed, or \
             signed with another key)"
                .to_string()
        }
    })
}

/// Acknowledges a claimed task (or refuses it) and starts it.
pub(super) async fn accept(
    worker: &Arc<Worker>,
    client: &mut Client,
    task: proto::Task,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let refused = refusal(worker, &task);
    if let Some(reason) = &refused {
        tracing::warn!(
            "worker {}: refusing task {} (run {} of {}): {reason}",
            worker.opts.id,
            task.task_id,
            task.run_id,
            task.dag_name
        );
    }
    let req = proto::AckRequest {
        worker_id: worker.opts.id.clone(),
        task_id: task.task_id.clone(),
        claim_token: task.claim_token.clone(),
        refuse: refused.is_some(),
        reason: refused.clone().unwrap_or_default(),
    };
    match client.ack(req).await {
        Ok(r) if r.get_ref().accepted && refused.is_none() => {}
        Ok(r) if refused.is_none() => {
            tracing::warn!(
                "worker {}: claim refused: {}",
                worker.opts.id,
                r.get_ref().error
            );
            return;
        }
        Ok(_) => return,
        Err(e) => {
            tracing::warn!("worker {}: ack failed: {}", worker.opts.id, e.message());
            return;
        }
    }
    let cancel = CancellationToken::new();
    let info = proto::RunningTask {
        task_id: task.task_id.clone(),
        claim_token: task.claim_token.clone(),
        dag_name: task.dag_name.clone(),
        run_id: task.run_id.clone(),
        root_run_id: task.run_id.clone(),
        started_at: jiff::Timestamp::now().to_string(),
    };
    worker
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            task.task_id.clone(),
            Running {
                info,
                cancel: cancel.clone(),
            },
        );
    worker.relay.track(&task.run_id, &task.task_id);
    let worker = worker.clone();
    tokio::spawn(async move {
        let done = CancellationToken::new();
        let shipper = tokio::spawn(ship(worker.clone(), task.clone(), done.clone()));
        let outcome = execute(&worker, &task, cancel).await;
        done.cancel();
        let _ = shipper.await;
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        report(&worker, &task, error).await;
        worker.relay.untrack(&task.run_id);
        worker
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.task_id);
        drop(permit);
    });
}

/// A task queued again (its worker left or went silent) resumes from the run's record:
/// what succeeded is kept, and steps whose work outlived that worker (containers, with
/// handles) are reattached to instead of started again.
fn resume_of(worker: &Worker, task: &proto::Task) -> Option<trellis_engine::Retry> {
    use trellis_store::Store;
    if !task.existing_run || parent_of(task).is_some() {
        return None;
    }
    let run = worker
        .relay
        .find(&task.dag_name, &task.run_id)
        .ok()
        .flatten()?;
    let progressed = run
        .steps
        .iter()
        .any(|s| s.status != trellis_core::status::Status::NotStarted);
    progressed.then_some(trellis_engine::Retry {
        previous: run,
        from_step: None,
    })
}

/// Runs the task's DAG with the engine. `Err` says why it could not start (the coordinator
/// records the run as failed with it).
async fn execute(
    worker: &Worker,
    task: &proto::Task,
    cancel: CancellationToken,
) -> Result<(), crate::Error> {
    let dag: Dag =
        serde_json::from_str(&task.definition_json).map_err(crate::Error::TaskDefinition)?;
    let params = trellis_spec::resolve_params(&dag, Some(&task.params), &[])
        .map_err(crate::Error::TaskParams)?;
    let dag = Arc::new(dag);
    let req = RunRequest {
        locals: Arc::new(dag.local_dags.clone()),
        dag,
        params,
        run_id: task.run_id.clone().into(),
        parent: parent_of(task).map(|p| p.attempt()),
        retry: resume_of(worker, task),
        env: task.env.clone().into_iter().collect(),
        queued: task.existing_run,
    };
    let record = worker
        .engine
        .run(req, cancel)
        .await
        .map_err(crate::Error::RunStart)?;
    tracing::info!(
        "worker {}: run {} of {} {}",
        worker.opts.id,
        record.run_id,
        record.name,
        record.status
    );
    Ok(())
}

/// Shared-nothing: relays the run's record and logs every 250 ms while it runs (changes
/// in between are coalesced), then the rest of the logs once it ends, until delivered.
/// The final record travels with the end report.
async fn ship(worker: Arc<Worker>, task: proto::Task, done: CancellationToken) {
    if worker.opts.coordinators.is_empty() {
        return;
    }
    let mut sent: HashMap<(String, i32), u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                ship_once(&worker, &task, &mut sent, true).await;
            }
            _ = done.cancelled() => break,
        }
    }
    let mut delays =
        trellis_core::backoff::Backoff::doubling(Duration::from_millis(50), Duration::from_secs(2));
    // Bounded: a coordinator away for longer than ~10 minutes gets the end report
    // without the last log bytes rather than holding the slot for ever.
    for _ in 0..300 {
        match ship_once(&worker, &task, &mut sent, false).await {
            Shipped::All | Shipped::Refused => return,
            Shipped::Partly => {}
        }
        tokio::time::sleep(delays.next_delay()).await;
    }
    tracing::error!(
        "worker {}: gave up relaying the logs of task {}",
        worker.opts.id,
        task.task_id
    );
}

/// How far a relay round got.
enum Shipped {
    All,
    /// Something is left; try again.
    Partly,
    /// The coordinator will never take it (the claim is no longer ours).
    Refused,
}

fn refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::OutOfRange | tonic::Code::InvalidArgument
    )
}

/// Sends what changed: new log bytes, then (when `record`) the run record.
async fn ship_once(
    worker: &Worker,
    task: &proto::Task,
    sent: &mut HashMap<(String, i32), u64>,
    record: bool,
) -> Shipped {
    let Some(mut client) = worker.client() else {
        return Shipped::Partly;
    };
    let logs = match worker.relay.log_dir(&task.run_id) {
        Some(dir) => send_logs(worker, &mut client, task, &dir, sent).await,
        None => Shipped::All,
    };
    if !record || !matches!(logs, Shipped::All) {
        return logs;
    }
    let Some(record) = worker.relay.take_dirty(&task.run_id) else {
        return Shipped::All;
    };
    let req = proto::StatusReport {
        worker_id: worker.opts.id.clone(),
        task_id: task.task_id.clone(),
        claim_token: task.claim_token.clone(),
        record_json: serde_json::to_string(&record).unwrap_or_default(),
        finished: false,
        error: String::new(),
    };
    match client.report_status(req).await {
        Ok(r) if r.get_ref().accepted => Shipped::All,
        Ok(_) => Shipped::Refused,
        Err(e) if refused(&e) => Shipped::Refused,
        Err(_) => {
            worker.relay.mark_dirty(&task.run_id);
            Shipped::Partly
        }
    }
}

/// Streams the new bytes of every log file (64 KiB chunks, each with its byte offset).
async fn send_logs(
    worker: &Worker,
    client: &mut Client,
    task: &proto::Task,
    dir: &std::path::Path,
    sent: &mut HashMap<(String, i32), u64>,
) -> Shipped {
    let mut chunks = Vec::new();
    let mut advanced = Vec::new();
    for (step, stream, path) in relay::log_files(dir) {
        let from = sent.get(&(step.clone(), stream)).copied().unwrap_or(0);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if (bytes.len() as u64) <= from {
            continue;
        }
        for (i, piece) in bytes[from as usize..].chunks(64 * 1024).enumerate() {
            chunks.push(proto::LogChunk {
                worker_id: worker.opts.id.clone(),
                task_id: task.task_id.clone(),
                claim_token: task.claim_token.clone(),
                dag_name: task.dag_name.clone(),
                run_id: task.run_id.clone(),
                step_name: step.clone(),
                stream,
                sequence: from + (i * 64 * 1024) as u64,
                data: piece.to_vec(),
                is_final: false,
            });
        }
        advanced.push(((step, stream), bytes.len() as u64));
    }
    if chunks.is_empty() {
        return Shipped::All;
    }
    match client.stream_logs(tokio_stream::iter(chunks)).await {
        Ok(_) => {
            sent.extend(advanced);
            Shipped::All
        }
        Err(e) => {
            let id = &worker.opts.id;
            tracing::warn!("worker {id}: log relay failed: {}", e.message());
            if refused(&e) {
                Shipped::Refused
            } else {
                Shipped::Partly
            }
        }
    }
}

/// Tells the coordinator the run ended (with its final record in shared-nothing mode, or
/// why it could not start), retrying across reconnects and store hiccups.
async fn report(worker: &Worker, task: &proto::Task, error: String) {
    let record_json = worker
        .relay
        .latest(&task.run_id)
        .and_then(|r| serde_json::to_string(&r).ok())
        .unwrap_or_default();
    let mut delays = trellis_core::backoff::Backoff::new(0.1, Some(1.5), Some(5.0));
    for _ in 0..600 {
        if let Some(mut client) = worker.client() {
            let req = proto::StatusReport {
                worker_id: worker.opts.id.clone(),
                task_id: task.task_id.clone(),
                claim_token: task.claim_token.clone(),
                record_json: record_json.clone(),
                finished: true,
                error: error.clone(),
            };
            match client.report_status(req).await {
                Ok(r) => {
                    if !r.get_ref().accepted {
                        tracing::warn!(
                            "worker {}: report refused: {}",
                            worker.opts.id,
                            r.get_ref().error
                        );
                    }
                    return;
                }
                Err(e) if refused(&e) => {
                    tracing::warn!("worker {}: report refused: {}", worker.opts.id, e.message());
                    return;
                }
                Err(e) => {
                    tracing::warn!("worker {}: report failed: {}", worker.opts.id, e.message());
                    worker.set_client(None);
                }
            }
        }
        tokio::time::sleep(delays.next_delay()).await;
    }
}
