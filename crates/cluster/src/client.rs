//! Talking to a coordinator from the outside: finding it, and asking it for its workers
//! (for `trellis workers`, the API and the UI).

use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;

use crate::proto::{self, coordinator_client::CoordinatorClient};
use crate::registry::{self, Kind};

/// `host:port` of the freshest live coordinator in the registry.
pub fn discover(registry_dir: &Path) -> Option<String> {
    registry::live(registry_dir, Kind::Coordinator, jiff::Timestamp::now())
        .first()
        .map(|e| format!("{}:{}", e.host, e.port))
}

pub async fn connect(addr: &str) -> Result<CoordinatorClient<Channel>, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad coordinator address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the coordinator at {addr}: {e}"))?;
    Ok(CoordinatorClient::new(channel))
}

/// The workers a coordinator knows, with their health.
pub async fn workers(addr: &str) -> Result<Vec<proto::WorkerInfo>, String> {
    let mut client = connect(addr).await?;
    let reply = client
        .get_workers(proto::GetWorkersRequest {})
        .await
        .map_err(|e| format!("coordinator at {addr}: {}", e.message()))?;
    Ok(reply.into_inner().workers)
}

/// Asks the coordinator to cancel a run on a worker; `Ok(false)` when it has no task for it.
pub async fn cancel(addr: &str, dag: &str, run_id: &str) -> Result<bool, String> {
    let mut client = connect(addr).await?;
    let reply = client
        .cancel(proto::CancelRequest {
            dag_name: dag.into(),
            run_id: run_id.into(),
        })
        .await
        .map_err(|e| format!("coordinator at {addr}: {}", e.message()))?;
    Ok(reply.into_inner().found)
}
