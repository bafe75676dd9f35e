//! Talking to a coordinator from the outside (`trellis workers`, the API and the UI):
//! finding it, and asking it for its workers. Uses the same TLS and token settings as a
//! worker, under the id `trellis-client`.

use std::path::Path;

use crate::proto;
use crate::registry::{self, Kind};
use crate::worker::link::{self, Client, Dial};

/// `host:port` of the freshest live coordinator in the registry.
pub fn discover(registry_dir: &Path) -> Option<String> {
    registry::live(registry_dir, Kind::Coordinator, jiff::Timestamp::now())
        .first()
        .map(|e| format!("{}:{}", e.host, e.port))
}

/// Workers as their registry files show them, for when no coordinator answers. Files are
/// rewritten every 10 s, so health is coarse: HEALTHY up to 15 s old, WARNING up to 30 s,
/// then OFFLINE.
pub fn registry_workers(registry_dir: &Path) -> Vec<proto::WorkerInfo> {
    let now = jiff::Timestamp::now();
    registry::list(registry_dir, Kind::Worker)
        .into_iter()
        .map(|e| {
            let age = e.age_ms(now);
            let health = match age {
                a if a <= 15_000 => "HEALTHY",
                a if a <= registry::STALE_MS => "WARNING",
                _ => "OFFLINE",
            };
            proto::WorkerInfo {
                health_status: health.into(),
                last_heartbeat: e.updated_at,
                labels: e.labels.into_iter().collect(),
                id: e.id,
                host: e.host,
                ..Default::default()
            }
        })
        .collect()
}

/// A worker as a coordinator publishes it in a database store, for servers on other
/// machines (`trellis_store::State::put_worker`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub id: String,
    pub labels: indexmap::IndexMap<String, String>,
    pub host: String,
    pub max_active_runs: u32,
    pub connected_at: String,
    pub last_heartbeat_ms: i64,
    /// (task id, DAG, run id, root run id, started at) of each running task.
    pub running: Vec<(String, String, String, String, String)>,
}

impl Published {
    pub fn info(self, now_ms: i64) -> proto::WorkerInfo {
        proto::WorkerInfo {
            health_status: trellis_core::worker::Health::from_age_ms(
                now_ms - self.last_heartbeat_ms,
            )
            .as_str()
            .into(),
            last_heartbeat: jiff::Timestamp::from_millisecond(self.last_heartbeat_ms)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            labels: self.labels.into_iter().collect(),
            max_active_runs: self.max_active_runs,
            running_tasks: self
                .running
                .into_iter()
                .map(
                    |(task_id, dag_name, run_id, root_run_id, started_at)| proto::RunningTask {
                        task_id,
                        dag_name,
                        run_id,
                        root_run_id,
                        started_at,
                        claim_token: String::new(),
                    },
                )
                .collect(),
            id: self.id,
            host: self.host,
            connected_at: self.connected_at,
        }
    }
}

/// The workers coordinators published in a database store, with their health now.
pub fn stored_workers(store: &dyn trellis_store::Backend) -> Vec<proto::WorkerInfo> {
    let now = crate::now_ms();
    let mut out: Vec<proto::WorkerInfo> = store
        .workers()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|json| serde_json::from_str::<Published>(&json).ok())
        .map(|p| p.info(now))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

pub async fn connect(addr: &str, how: &Dial) -> Result<Client, crate::Error> {
    link::dial(addr, how, "trellis-client").await
}

/// The workers a coordinator knows, with their health.
pub async fn workers(addr: &str, how: &Dial) -> Result<Vec<proto::WorkerInfo>, crate::Error> {
    let mut client = connect(addr, how).await?;
    let reply = client
        .get_workers(proto::GetWorkersRequest {})
        .await
        .map_err(|e| crate::Error::Call {
            addr: addr.to_string(),
            message: e.message().to_string(),
        })?;
    Ok(reply.into_inner().workers)
}

/// Asks the coordinator to cancel a run on a worker; `Ok(false)` when it has no task for it.
pub async fn cancel(addr: &str, how: &Dial, dag: &str, run_id: &str) -> Result<bool, crate::Error> {
    let mut client = connect(addr, how).await?;
    let reply = client
        .cancel(proto::CancelRequest {
            dag_name: dag.into(),
            run_id: run_id.into(),
        })
        .await
        .map_err(|e| crate::Error::Call {
            addr: addr.to_string(),
            message: e.message().to_string(),
        })?;
    Ok(reply.into_inner().found)
}
