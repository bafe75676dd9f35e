//! The gRPC handlers of the coordinator. Each one updates the task table under its lock,
//! then persists what changed outside it.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tonic::{Request, Response, Status, Streaming};
use trellis_core::worker::Health;
use trellis_engine::blocking_section;

use super::{Coord, WorkerState};
use crate::now_ms;
use crate::proto::{self, coordinator_server::Coordinator};
use crate::table::{Phase, Task};

pub(crate) struct Service(pub Arc<Coord>);

/// Checks the worker token of every call when the cluster has a signing key, and records
/// who called; a refused call is logged and nothing it carries is looked at.
#[derive(Clone)]
pub(crate) struct Auth(pub Option<Arc<Vec<u8>>>);

/// The caller a valid token proved.
#[derive(Clone)]
pub(crate) struct Caller(pub String);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.0 else {
            return Ok(request);
        };
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let now = jiff::Timestamp::now().as_second();
        match token.map(|t| crate::security::check_token(key, t, now)) {
            Some(Ok(worker)) => {
                request.extensions_mut().insert(Caller(worker));
                Ok(request)
            }
            Some(Err(why)) => {
                tracing::warn!("coordinator: refused a call: {why}");
                Err(Status::unauthenticated(why.to_string()))
            }
            None => {
                tracing::warn!("coordinator: refused a call without a worker token");
                Err(Status::unauthenticated("a worker token is required"))
            }
        }
    }
}

/// With a signing key, the worker named in a request must be the one the token proved.
fn check_caller<T>(request: &Request<T>, worker_id: &str, keyed: bool) -> Result<(), Status> {
    if !keyed {
        return Ok(());
    }
    match request.extensions().get::<Caller>() {
        Some(Caller(id)) if id == worker_id => Ok(()),
        Some(Caller(id)) => {
            tracing::warn!("coordinator: refused {id} acting as worker {worker_id}");
            Err(Status::permission_denied(format!(
                "token is for {id}, not {worker_id}"
            )))
        }
        None => Err(Status::unauthenticated("a worker token is required")),
    }
}

/// The longest a poll waits, whatever the worker asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn labels(map: std::collections::HashMap<String, String>) -> IndexMap<String, String> {
    let mut labels: IndexMap<String, String> = map.into_iter().collect();
    labels.sort_keys();
    labels
}

fn to_proto(task: &Task) -> proto::Task {
    let token = match &task.phase {
        Phase::Claimed { claim_token, .. } => claim_token.clone(),
        Phase::Pending { .. } => String::new(),
    };
    let s = &task.spec;
    proto::Task {
        task_id: s.task_id.clone(),
        claim_token: token,
        dag_name: s.dag_name.clone(),
        run_id: s.run_id.clone(),
        attempt: s.attempt,
        definition_json: s.definition_json.clone(),
        params: s.params.clone(),
        selector: s.selector.clone().into_iter().collect(),
        queued_at: s.queued_at.clone(),
        env: s.env.clone().into_iter().collect(),
        existing_run: s.existing_run,
        signature: s.signature.clone(),
        parent_json: s
            .parent
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default(),
    }
}

impl Service {
    fn caller<T>(&self, request: &Request<T>, worker_id: &str) -> Result<(), Status> {
        check_caller(request, worker_id, self.0.opts.signing_key.is_some())
    }

    fn known(&self, worker_id: &str) -> Result<(), Status> {
        if self.0.workers().contains_key(worker_id) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "worker {worker_id} is not registered"
            )))
        }
    }

    /// Claims a task for the worker and persists the claim.
    fn try_claim(&self, worker_id: &str, labels: &IndexMap<String, String>) -> Option<Task> {
        let token = uuid::Uuid::now_v7().to_string();
        let task = {
            let mut table = self.0.table();
            table
                .claim(worker_id, labels, &token, now_ms(), self.0.timing())
                .cloned()
        }?;
        if let Err(e) = self.0.tasks.write(&task) {
            tracing::error!(
                "coordinator: cannot persist claim of {}: {e}",
                task.spec.task_id
            );
        }
        Some(task)
    }

    fn touch(&self, id: &str, labels: IndexMap<String, String>, running: Vec<proto::RunningTask>) {
        let mut workers = self.0.workers();
        if let Some(w) = workers.get_mut(id) {
            w.last_heartbeat_ms = now_ms();
            w.labels = labels;
            w.running = running;
        }
    }

    /// A worker will not run a task (its signature does not verify): the run fails with
    /// the worker's reason rather than going round the workers.
    fn refused(&self, r: &proto::AckRequest) -> proto::AckResponse {
        let task = {
            let mut table = self.0.table();
            if !table.owns(&r.task_id, &r.worker_id, &r.claim_token) {
                return proto::AckResponse {
                    accepted: false,
                    error: "the claim expired or is not yours".into(),
                };
            }
            table.remove(&r.task_id)
        };
        if let Some(task) = task {
            let msg = format!("refused by worker {}: {}", r.worker_id, r.reason);
            let status = trellis_core::status::Status::Failed;
            super::upkeep::settle(&self.0, &task.spec, status, &msg);
        }
        proto::AckResponse {
            accepted: true,
            error: String::new(),
        }
    }

    /// A worker could not start a run (bad definition or params): the run fails with the
    /// reason instead of staying queued.
    fn failed_to_start(&self, r: &proto::StatusReport) {
        let task = {
            let table = self.0.table();
            if !table.owns(&r.task_id, &r.worker_id, &r.claim_token) {
                return;
            }
            table.get(&r.task_id).cloned()
        };
        if let Some(task) = task {
            let msg = format!(
                "worker {} could not start the run: {}",
                r.worker_id, r.error
            );
            let status = trellis_core::status::Status::Failed;
            // The report that carries this removes the task.
            super::upkeep::record_task(&self.0, &task.spec, status, &msg);
            tracing::info!(
                "coordinator: run {} of {}: {msg}",
                task.spec.run_id,
                task.spec.dag_name
            );
        }
    }

    fn renew(&self, worker_id: &str, running: &[proto::RunningTask]) -> Vec<String> {
        let pairs: Vec<(String, String)> = running
            .iter()
            .map(|t| (t.task_id.clone(), t.claim_token.clone()))
            .collect();
        let timing = self.0.timing();
        self.0
            .table()
            .heartbeat(worker_id, &pairs, now_ms(), timing)
    }
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let r = request.into_inner();
        if r.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id is empty"));
        }
        let state = WorkerState {
            labels: labels(r.labels),
            host: r.host,
            max_active_runs: r.max_active_runs,
            connected_at: jiff::Timestamp::now().to_string(),
            last_heartbeat_ms: now_ms(),
            running: r.running.clone(),
        };
        let fresh = self
            .0
            .workers()
            .insert(r.worker_id.clone(), state)
            .is_none();
        if fresh {
            tracing::info!("coordinator: worker {} registered", r.worker_id);
        }
        self.renew(&r.worker_id, &r.running);
        self.0.wake.notify_waiters();
        Ok(Response::new(proto::RegisterResponse {
            coordinator_id: self.0.opts.id.clone(),
            heartbeat_interval_ms: self.0.opts.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn poll(
        &self,
        request: Request<proto::PollRequest>,
    ) -> Result<Response<proto::PollResponse>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let r = request.into_inner();
        self.known(&r.worker_id)?;
        let labels = labels(r.labels);
        let wait = Duration::from_millis(u64::from(r.wait_ms)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a task added in between still wakes us.
            let notified = self.0.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(task) = blocking_section(|| self.try_claim(&r.worker_id, &labels)) {
                return Ok(Response::new(proto::PollResponse {
                    task: Some(to_proto(&task)),
                }));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(Response::new(proto::PollResponse { task: None }));
                }
            }
        }
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let r = request.into_inner();
        if r.refuse {
            return Ok(Response::new(blocking_section(|| self.refused(&r))));
        }
        let timing = self.0.timing();
        let task = {
            let mut table = self.0.table();
            let ok = table.ack(&r.task_id, &r.worker_id, &r.claim_token, now_ms(), timing);
            ok.then(|| table.get(&r.task_id).cloned()).flatten()
        };
        let Some(task) = task else {
            return Ok(Response::new(proto::AckResponse {
                accepted: false,
                error: "the claim expired or is not yours".into(),
            }));
        };
        if let Err(e) = blocking_section(|| self.0.tasks.write(&task)) {
            tracing::error!("coordinator: cannot persist ack of {}: {e}", r.task_id);
        }
        Ok(Response::new(proto::AckResponse {
            accepted: true,
            error: String::new(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let r = request.into_inner();
        self.known(&r.worker_id)?;
        let cancel = self.renew(&r.worker_id, &r.running);
        self.touch(&r.worker_id, labels(r.labels), r.running);
        Ok(Response::new(proto::HeartbeatResponse {
            cancel_task_ids: cancel,
        }))
    }

    async fn report_status(
        &self,
        request: Request<proto::StatusReport>,
    ) -> Result<Response<proto::StatusAck>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let r = request.into_inner();
        if !r.record_json.is_empty()
            && let Err(e) = blocking_section(|| super::remote::store_report(&self.0, &r))
        {
            if e.code() == tonic::Code::PermissionDenied {
                return Ok(Response::new(proto::StatusAck {
                    accepted: false,
                    error: e.message().to_string(),
                }));
            }
            return Err(e);
        }
        if r.finished && !r.error.is_empty() {
            blocking_section(|| self.failed_to_start(&r));
        }
        if !r.finished {
            return Ok(Response::new(proto::StatusAck {
                accepted: true,
                error: String::new(),
            }));
        }
        let removed = {
            let mut table = self.0.table();
            match table.get(&r.task_id) {
                None => Ok(false),
                Some(_) if table.owns(&r.task_id, &r.worker_id, &r.claim_token) => {
                    Ok(table.remove(&r.task_id).is_some())
                }
                Some(_) => Err("the task is no longer this worker's (its lease expired)"),
            }
        };
        match removed {
            Ok(true) => {
                if let Err(e) = blocking_section(|| self.0.tasks.remove(&r.task_id)) {
                    tracing::warn!("coordinator: cannot remove task {}: {e}", r.task_id);
                }
                Ok(Response::new(proto::StatusAck {
                    accepted: true,
                    error: String::new(),
                }))
            }
            Ok(false) => Ok(Response::new(proto::StatusAck {
                accepted: true,
                error: String::new(),
            })),
            Err(e) => Ok(Response::new(proto::StatusAck {
                accepted: false,
                error: e.into(),
            })),
        }
    }

    async fn stream_logs(
        &self,
        request: Request<Streaming<proto::LogChunk>>,
    ) -> Result<Response<proto::LogAck>, Status> {
        let caller = request.extensions().get::<Caller>().map(|c| c.0.clone());
        super::remote::receive_logs(&self.0, caller, request.into_inner()).await
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let r = request.into_inner();
        let found = blocking_section(|| super::upkeep::cancel(&self.0, &r.dag_name, &r.run_id));
        Ok(Response::new(proto::CancelResponse { found }))
    }

    async fn get_workers(
        &self,
        _request: Request<proto::GetWorkersRequest>,
    ) -> Result<Response<proto::GetWorkersResponse>, Status> {
        let workers = worker_infos(&self.0);
        Ok(Response::new(proto::GetWorkersResponse { workers }))
    }

    async fn deregister(
        &self,
        request: Request<proto::DeregisterRequest>,
    ) -> Result<Response<proto::DeregisterResponse>, Status> {
        self.caller(&request, &request.get_ref().worker_id)?;
        let req = request.into_inner();
        let id = req.worker_id;
        let now = jiff::Timestamp::now().as_millisecond();
        for task in &req.released {
            let released = self
                .0
                .table()
                .release(&task.task_id, &id, &task.claim_token, now);
            let spec = self.0.table().get(&task.task_id).map(|t| t.spec.clone());
            if let (true, Some(spec)) = (released, spec) {
                let msg = format!(
                    "worker {id} left while its steps run on; queued for another worker to resume"
                );
                crate::coordinator::upkeep::settle(
                    &self.0,
                    &spec,
                    trellis_core::status::Status::Queued,
                    &msg,
                );
                crate::coordinator::upkeep::persist(&self.0, &task.task_id);
            }
        }
        if !req.released.is_empty() {
            self.0.wake.notify_waiters();
        }
        if self.0.workers().remove(&id).is_some() {
            tracing::info!("coordinator: worker {id} left");
        }
        Ok(Response::new(proto::DeregisterResponse {}))
    }
}

/// The workers the coordinator knows, with health from their last heartbeat, by id.
pub(super) fn worker_infos(coord: &Coord) -> Vec<proto::WorkerInfo> {
    let now = now_ms();
    let mut workers: Vec<proto::WorkerInfo> = coord
        .workers()
        .iter()
        .map(|(id, w)| proto::WorkerInfo {
            id: id.clone(),
            labels: w.labels.clone().into_iter().collect(),
            health_status: Health::from_age_ms(now - w.last_heartbeat_ms)
                .as_str()
                .into(),
            last_heartbeat: jiff::Timestamp::from_millisecond(w.last_heartbeat_ms)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            max_active_runs: w.max_active_runs,
            running_tasks: w.running.clone(),
            host: w.host.clone(),
            connected_at: w.connected_at.clone(),
        })
        .collect();
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    workers
}
