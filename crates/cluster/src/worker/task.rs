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
    }
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
        eprintln!(
            "worker {}: refusing task {} (run {} of {}): {reason}",
            worker.opts.id, task.task_id, task.run_id, task.dag_name
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
            eprintln!(
                "worker {}: claim refused: {}",
                worker.opts.id,
                r.get_ref().error
            );
            return;
        }
        Ok(_) => return,
        Err(e) => {
            eprintln!("worker {}: ack failed: {}", worker.opts.id, e.message());
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
        execute(&worker, &task, cancel).await;
        done.cancel();
        let _ = shipper.await;
        report(&worker, &task).await;
        worker.relay.untrack(&task.run_id);
        worker
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.task_id);
        drop(permit);
    });
}

/// Runs the task's DAG with the engine; a task that cannot start is logged.
async fn execute(worker: &Worker, task: &proto::Task, cancel: CancellationToken) {
    let dag: Dag = match serde_json::from_str(&task.definition_json) {
        Ok(dag) => dag,
        Err(e) => {
            eprintln!(
                "worker {}: task {} has a bad definition: {e}",
                worker.opts.id, task.task_id
            );
            return;
        }
    };
    let params = match trellis_spec::resolve_params(&dag, Some(&task.params), &[]) {
        Ok(p) => p,
        Err(errors) => {
            let msg: Vec<String> = errors.iter().map(ToString::to_string).collect();
            eprintln!(
                "worker {}: task {}: {}",
                worker.opts.id,
                task.task_id,
                msg.join("; ")
            );
            return;
        }
    };
    let dag = Arc::new(dag);
    let req = RunRequest {
        locals: Arc::new(dag.local_dags.clone()),
        dag,
        params,
        run_id: task.run_id.clone(),
        parent: None,
        retry: None,
        env: task.env.clone().into_iter().collect(),
        queued: task.existing_run,
    };
    match worker.engine.run(req, cancel).await {
        Ok(record) => eprintln!(
            "worker {}: run {} of {} {}",
            worker.opts.id, record.run_id, record.name, record.status
        ),
        Err(e) => eprintln!("worker {}: run {}: {e}", worker.opts.id, task.run_id),
    }
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
    let mut backoff = Duration::from_millis(50);
    while !ship_once(&worker, &task, &mut sent, false).await {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Sends what changed: new log bytes, then (when `record`) the run record. True when
/// nothing is left unsent.
async fn ship_once(
    worker: &Worker,
    task: &proto::Task,
    sent: &mut HashMap<(String, i32), u64>,
    record: bool,
) -> bool {
    let Some(mut client) = worker.client() else {
        return false;
    };
    let logs_ok = match worker.relay.log_dir(&task.run_id) {
        Some(dir) => send_logs(worker, &mut client, task, &dir, sent).await,
        None => true,
    };
    if !record {
        return logs_ok;
    }
    let Some(record) = worker.relay.take_dirty(&task.run_id) else {
        return logs_ok;
    };
    let req = proto::StatusReport {
        worker_id: worker.opts.id.clone(),
        task_id: task.task_id.clone(),
        claim_token: task.claim_token.clone(),
        record_json: serde_json::to_string(&record).unwrap_or_default(),
        finished: false,
    };
    match client.report_status(req).await {
        Ok(r) if r.get_ref().accepted => logs_ok,
        _ => {
            worker.relay.mark_dirty(&task.run_id);
            false
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
) -> bool {
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
        return true;
    }
    match client.stream_logs(tokio_stream::iter(chunks)).await {
        Ok(_) => {
            sent.extend(advanced);
            true
        }
        Err(e) => {
            eprintln!(
                "worker {}: log relay failed: {}",
                worker.opts.id,
                e.message()
            );
            false
        }
    }
}

/// Tells the coordinator the run ended (with its final record in shared-nothing mode),
/// retrying across reconnects.
async fn report(worker: &Worker, task: &proto::Task) {
    let record_json = worker
        .relay
        .latest(&task.run_id)
        .and_then(|r| serde_json::to_string(&r).ok())
        .unwrap_or_default();
    let mut backoff = Duration::from_millis(100);
    for _ in 0..600 {
        if let Some(mut client) = worker.client() {
            let req = proto::StatusReport {
                worker_id: worker.opts.id.clone(),
                task_id: task.task_id.clone(),
                claim_token: task.claim_token.clone(),
                record_json: record_json.clone(),
                finished: true,
            };
            match client.report_status(req).await {
                Ok(r) => {
                    if !r.get_ref().accepted {
                        eprintln!(
                            "worker {}: report refused: {}",
                            worker.opts.id,
                            r.get_ref().error
                        );
                    }
                    return;
                }
                Err(e) => {
                    eprintln!("worker {}: report failed: {}", worker.opts.id, e.message());
                    worker.set_client(None);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 3 / 2).min(Duration::from_secs(5));
    }
}
