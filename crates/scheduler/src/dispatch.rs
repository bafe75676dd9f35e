//! Which runs belong on workers. When the queue pass starts such a run, the leader hands it
//! to the cluster ([`trellis_cluster::handoff::Handoff`]) instead of running it in-process,
//! and counts it as active until the cluster says it ended.

use trellis_core::{Dag, WorkerSelector};

use crate::config::{Config, ExecutionMode};

/// Whether a DAG runs on a worker: a label selector says so, `local` says no, and
/// without a selector the config's `default_execution_mode` decides.
pub fn wanted(dag: &Dag, config: &Config) -> bool {
    match &dag.worker_selector {
        WorkerSelector::Labels(_) => true,
        WorkerSelector::Local => false,
        WorkerSelector::Any => config.default_execution_mode == ExecutionMode::Distributed,
    }
}
