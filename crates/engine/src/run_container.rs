//! The DAG-level `container:`: opened through the docker executor before a run's first
//! step (or found again when the run resumes), every command step and handler exec'd
//! into it, and closed after the handlers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_core::{Dag, ExecutorConfig};
use trellis_executor::{Shared, SharedRequest, StepExecutor};
use trellis_store::Attempt;

use crate::expand::Scope;

/// An open run container: what its steps run with, and how to close it.
pub(crate) struct RunContainer {
    executor: Arc<dyn StepExecutor>,
    shared: Shared,
    /// The `type`/`with:` of every step that runs in it.
    pub step: Arc<ExecutorConfig>,
}

/// Opens the DAG's run container; `Ok(None)` when it has none.
pub(crate) async fn open(
    dag: &Dag,
    registry: &trellis_executor::Registry,
    attempt: &Attempt,
    scope: &Scope,
    cancel: &CancellationToken,
) -> Result<Option<RunContainer>, String> {
    let Some(config) = dag.run_container() else {
        return Ok(None);
    };
    let executor = registry
        .get("docker")
        .cloned()
        .ok_or("the DAG-level `container:` needs the docker executor, which this build lacks")?;
    let mut config = crate::output::expand_value(scope, config);
    with_registry_auths(dag, scope, &mut config);
    let req = SharedRequest {
        name: crate::elsewhere::run_container_name(&dag.name, attempt.run_id.as_str()),
        config,
        working_dir: dag
            .working_dir
            .as_ref()
            .map(|d| PathBuf::from(scope.expand(d, true))),
        labels: BTreeMap::from([
            ("trellis.dag".to_string(), dag.name.clone()),
            ("trellis.run_id".to_string(), attempt.run_id.to_string()),
        ]),
    };
    let shared = executor
        .open_shared(&req, cancel.clone())
        .await
        .map_err(|e| format!("the run's container: {}", e.0))?;
    let step = Arc::new(ExecutorConfig {
        kind: executor.kind().to_string(),
        config: shared.step_config.clone(),
    });
    Ok(Some(RunContainer {
        executor,
        shared,
        step,
    }))
}

impl<S: trellis_store::Store + ?Sized + 'static, E: trellis_executor::Executor + 'static>
    crate::RunCtx<S, E>
{
    /// Opens the DAG's run container (if it has one) for the steps that follow.
    pub(crate) async fn open_container(&mut self) -> Result<(), String> {
        let registry = &self.engine.opts.executors;
        let container = open(
            &self.dag,
            registry,
            &self.attempt,
            &self.scope,
            &self.cancel,
        )
        .await?;
        self.run_container = container.as_ref().map(|c| c.step.clone());
        self.container = container;
        Ok(())
    }
}

impl RunContainer {
    pub(crate) async fn close(self) {
        self.executor.close_shared(&self.shared).await;
    }
}

/// Adds the DAG's `registry_auths` to a docker `with:` that pulls an image, so the pull
/// is made with the credentials for its registry.
pub(crate) fn with_registry_auths(dag: &Dag, scope: &Scope, config: &mut serde_json::Value) {
    let (Some(auths), Some(map)) = (
        dag.executor_defaults.get("registry_auths"),
        config.as_object_mut(),
    ) else {
        return;
    };
    if !map.contains_key("registry_auths") && map.contains_key("image") {
        map.insert(
            "registry_auths".into(),
            crate::output::expand_value(scope, auths),
        );
    }
}
