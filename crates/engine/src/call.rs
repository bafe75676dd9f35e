//! `call` steps: a sub-DAG run of its own (nested under the parent's attempt), once or once
//! per `parallel` item with at most `max_concurrent` at a time.

use std::sync::Arc;

use serde_json::Value;
use trellis_core::Action;
use trellis_core::Step;
use trellis_core::status::{Status, StepRecord};
use trellis_executor::Executor;
use trellis_store::Store;

use crate::expand::json_path;
use crate::{Error, RunRequest, StepEnv};

/// A `call` step: one child run, or one per `parallel` item.
pub(crate) async fn call<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    let Action::Call(call) = &step.action else {
        return Ok(0);
    };
    let name = env.scope.expand(&call.dag, true);
    let child = find_dag(env, &name)
        .map(Arc::new)
        .ok_or_else(|| Error::SubDagNotFound { name: name.clone() })?;
    let items: Vec<(String, String)> = match &call.parallel {
        None => vec![(env.scope.expand(&call.params, true), String::new())],
        Some(p) => parallel_items(env, &p.items, &call.params)?,
    };
    let limit = call
        .parallel
        .as_ref()
        .map_or(1, |p| p.max_concurrent as usize);
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut tasks = Vec::new();
    for (params, item) in items {
        let (engine, child, locals, parent, cancel, sem) = (
            env.engine.clone(),
            child.clone(),
            env.locals.clone(),
            env.attempt.clone(),
            env.cancel.clone(),
            sem.clone(),
        );
        // The step's selector, else the sub-DAG's own; `local` keeps it in this process.
        let selector = match (&step.worker_selector, &child.worker_selector) {
            (trellis_core::WorkerSelector::Labels(l), _) => Some(l.clone()),
            (trellis_core::WorkerSelector::Local, _) => None,
            (_, trellis_core::WorkerSelector::Labels(l)) => Some(l.clone()),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let values = trellis_spec::resolve_params(&child, Some(&params), &[])
                .map_err(Error::SubDagParams)?;
            let env = if item.is_empty() {
                Vec::new()
            } else {
                vec![("ITEM".to_string(), item)]
            };
            let run_id = crate::new_run_id();
            if let Some(selector) = &selector {
                return on_worker(
                    &engine, &child, &run_id, &params, &env, &parent, selector, &cancel,
                )
                .await;
            }
            let req = RunRequest {
                dag: child,
                locals,
                params: values,
                run_id: run_id.into(),
                parent: Some(parent),
                retry: None,
                queued: false,
                env,
            };
            engine.run_boxed(req, cancel).await.map_err(Error::Store)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.map_err(Error::Join)??);
    }
    record.children = results.iter().map(|r| r.run_id.to_string()).collect();
    let outputs: Vec<Value> = results
        .iter()
        .map(|r| serde_json::to_value(&r.outputs).unwrap_or_default())
        .collect();
    let value = match (&call.parallel, outputs.first()) {
        (None, Some(o)) => serde_json::json!({"name": name, "outputs": o}),
        _ => serde_json::json!({"name": name, "outputs": outputs}),
    };
    record.output = Some(value.to_string());
    let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
    if statuses.iter().all(|s| *s == Status::Succeeded) {
        Ok(0)
    } else if statuses
        .iter()
        .all(|s| matches!(s, Status::Succeeded | Status::PartiallySucceeded))
    {
        record.status = Status::PartiallySucceeded;
        Ok(0)
    } else {
        let bad = results
            .iter()
            .find(|r| !matches!(r.status, Status::Succeeded | Status::PartiallySucceeded));
        Err(Error::SubDagFailed {
            name,
            status: bad.map_or("failed", |r| r.status.as_str()),
            error: bad.and_then(|r| r.error.clone()).unwrap_or_default(),
        })
    }
}

/// A child run on a worker whose labels match the step's `worker_selector`.
#[allow(clippy::too_many_arguments)]
async fn on_worker<S: Store + ?Sized + 'static, E: Executor + 'static>(
    engine: &crate::Engine<S, E>,
    child: &trellis_core::Dag,
    run_id: &str,
    params: &str,
    env: &[(String, String)],
    parent: &trellis_store::Attempt,
    selector: &indexmap::IndexMap<String, String>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<trellis_core::status::RunRecord, Error> {
    let Some(remote) = &engine.opts.remote else {
        return Err(Error::NoCoordinator);
    };
    let request = crate::RemoteChild {
        dag: child,
        run_id,
        params,
        env,
        parent,
        selector,
    };
    crate::remote::run_child(remote, &*engine.store, request, cancel).await
}

/// One child per item: its params, and the item itself (the child's `ITEM`). When the
/// step has `params`, they are expanded with `${ITEM}` for each item; otherwise a
/// `K=V ...` string or a map item is the child's params.
fn parallel_items<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    items: &trellis_core::ParallelItems,
    params: &str,
) -> Result<Vec<(String, String)>, Error> {
    let list = match items {
        trellis_core::ParallelItems::List(list) => list.clone(),
        trellis_core::ParallelItems::Variable(v) => {
            let text = env.scope.expand(v, true);
            serde_json::from_str::<Vec<Value>>(&text).map_err(|error| Error::ParallelItems {
                variable: v.clone(),
                error,
            })?
        }
    };
    Ok(list
        .into_iter()
        .map(|item| {
            let text = json_path(&item, "").unwrap_or_default();
            if !params.trim().is_empty() {
                let mut scope = env.scope.clone();
                scope.set_local("ITEM", text.clone());
                return (scope.expand(params, true), text);
            }
            let own = match &item {
                Value::String(s) if s.contains('=') => s.clone(),
                Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", json_path(v, "").unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            (own, text)
        })
        .collect())
}

fn find_dag<S: ?Sized, E>(env: &StepEnv<S, E>, name: &str) -> Option<trellis_core::Dag> {
    if let Some(d) = env.locals.iter().find(|d| d.name == name) {
        return Some(d.clone());
    }
    let dir = env.engine.opts.dags_dir.clone()?;
    for ext in ["yaml", "yml"] {
        let path = dir.join(format!("{name}.{ext}"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return trellis_spec::load_str(&path.display().to_string(), &text)
                .ok()
                .map(|l| l.dag);
        }
    }
    None
}
