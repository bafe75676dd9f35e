//! Shared-nothing mode, coordinator side: workers that cannot reach the data and log dirs
//! send their run records and step logs here, and the coordinator stores them as an
//! attempt of the run, exactly as a local run would have written it. Only the worker that
//! holds a task's live claim is heard; a worker whose lease expired is refused, so nothing
//! it still sends is stored.

use tonic::{Response, Status, Streaming};
use trellis_core::status::RunRecord;
use trellis_store::{Attempt, Entry, safe_name};

use super::Coord;
use crate::proto;
use crate::table::Phase;
use trellis_engine::blocking_section;

/// Stores a run record a worker reported, in the run's attempt for that task. A claim
/// that is not the worker's is `PermissionDenied` (final); a store failure is
/// `Unavailable`, so the worker sends it again.
pub(crate) fn store_report(coord: &Coord, r: &proto::StatusReport) -> Result<(), Status> {
    let attempt = attempt_for(coord, &r.task_id, &r.worker_id, &r.claim_token)?;
    let mut record: RunRecord = serde_json::from_str(&r.record_json)
        .map_err(|e| Status::invalid_argument(format!("bad run record: {e}")))?;
    relocate(&mut record, &attempt);
    coord
        .store
        .append(&attempt, &Entry::Snapshot(Box::new(record)))
        .map_err(|e| Status::unavailable(format!("cannot store the record: {e}")))
}

/// The attempt that holds a task's reports, made on the first report of the claim.
fn attempt_for(coord: &Coord, task_id: &str, worker: &str, token: &str) -> Result<Attempt, Status> {
    let _one = coord.remote.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, remote) = {
        let table = coord.table();
        if !table.owns(task_id, worker, token) {
            tracing::warn!(
                "coordinator: refused a report from {worker} for task {task_id}: not its claim"
            );
            return Err(Status::permission_denied(
                "the task is not this worker's (its lease expired?)",
            ));
        }
        let task = table
            .get(task_id)
            .ok_or_else(|| Status::permission_denied("no such task"))?;
        let remote = match &task.phase {
            Phase::Claimed { remote_attempt, .. } => remote_attempt.clone(),
            Phase::Pending { .. } => None,
        };
        (task.spec.clone(), remote)
    };
    let store = &coord.store;
    if let Some(id) = remote
        && let Ok(Some(attempt)) = store.latest_attempt(&spec.dag_name, &spec.run_id)
        && attempt.attempt_id == id
    {
        return Ok(attempt);
    }
    let attempt = if spec.existing_run {
        store.retry_attempt(&spec.dag_name, &spec.run_id)
    } else {
        store.create_attempt(&spec.dag_name, &spec.run_id, None)
    }
    .map_err(|e| Status::unavailable(format!("cannot create the attempt: {e}")))?;
    let task = {
        let mut table = coord.table();
        table.set_remote_attempt(task_id, &attempt.attempt_id);
        table.get(task_id).cloned()
    };
    if let Some(task) = task {
        let _ = coord.tasks.write(&task);
    }
    Ok(attempt)
}

/// Points the record's log paths at the coordinator's copies.
fn relocate(record: &mut RunRecord, attempt: &Attempt) {
    record.attempt_id = attempt.attempt_id.clone();
    record.log_file = Some(attempt.log_dir.join("run.log").display().to_string());
    for step in record.steps.iter_mut().chain(record.handlers.values_mut()) {
        let safe = safe_name(&step.name);
        if step.stdout.is_some() {
            step.stdout = Some(
                attempt
                    .log_dir
                    .join(format!("{safe}.out"))
                    .display()
                    .to_string(),
            );
        }
        if step.stderr.is_some() {
            step.stderr = Some(
                attempt
                    .log_dir
                    .join(format!("{safe}.err"))
                    .display()
                    .to_string(),
            );
        }
    }
}

/// Stores streamed log chunks. A chunk's sequence is its byte offset in the step's stream:
/// bytes below what the file already holds are a resend and are dropped, so the stored log
/// has no gap and no duplicate however often a worker resends.
pub(crate) async fn receive_logs(
    coord: &Coord,
    caller: Option<String>,
    mut stream: Streaming<proto::LogChunk>,
) -> Result<Response<proto::LogAck>, Status> {
    let mut ack = proto::LogAck::default();
    while let Some(chunk) = stream.message().await? {
        ack.chunks_received += 1;
        if caller.as_ref().is_some_and(|c| *c != chunk.worker_id) {
            return Err(Status::permission_denied("the token is for another worker"));
        }
        ack.bytes_written += blocking_section(|| store_chunk(coord, &chunk))?;
    }
    Ok(Response::new(ack))
}

/// Appends one chunk to its step's log (store calls: on the blocking pool's terms).
fn store_chunk(coord: &Coord, chunk: &proto::LogChunk) -> Result<u64, Status> {
    let attempt = attempt_for(coord, &chunk.task_id, &chunk.worker_id, &chunk.claim_token)?;
    let ext = if chunk.stream == proto::log_chunk::Stream::Stderr as i32 {
        "err"
    } else {
        "out"
    };
    let path = attempt
        .log_dir
        .join(format!("{}.{ext}", safe_name(&chunk.step_name)));
    let log = path.display().to_string();
    let written = coord.logs.append_at(&log, chunk.sequence, &chunk.data);
    written.map_err(|e| {
        let msg = format!("{}: {e}", path.display());
        if e.kind() == std::io::ErrorKind::InvalidInput {
            Status::out_of_range(msg)
        } else {
            Status::unavailable(msg)
        }
    })
}
