//! `call` steps: a sub-DAG run of its own (nested under the parent's attempt), once or once
//! per `parallel` item with at most `max_concurrent` at a time.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use trellis_core::Action;
use trellis_core::Step;
use trellis_core::status::{RunRecord, Status, StepRecord};
use trellis_executor::Executor;
use trellis_store::Store;

use crate::expand::json_path;
use crate::{Error, RunRequest, StepEnv};

/// A `call` step: one child run, or one per `parallel` item.
pub(crate) async fn call<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    stdout: &Path,
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
    if let Some(to) = &call.enqueue {
        return enqueue(env, &child, items, to, stdout, record);
    }
    let limit = call
        .parallel
        .as_ref()
        .map_or(1, |p| p.max_concurrent as usize);
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    // The top-level run's DAG, for `state.*` steps of `scope: root_dag` in the child.
    let root = env
        .scope
        .var("TRELLIS_ROOT_DAG")
        .unwrap_or_else(|| env.dag.name.clone());
    let mut tasks = Vec::new();
    for (params, item) in items {
        let root = root.clone();
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
            let mut env = vec![("TRELLIS_ROOT_DAG".to_string(), root.clone())];
            if !item.is_empty() {
                env.push(("ITEM".to_string(), item));
            }
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
    if call.parallel.is_some() {
        publish_aggregate(env, step, stdout, record, &results)?;
    } else {
        let outputs = results.first().map(|r| serde_json::json!(r.outputs));
        record.output = Some(serde_json::json!({"name": name, "outputs": outputs}).to_string());
    }
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

/// A `parallel` call's result as Dagu gives it: the aggregate JSON, written to the step's
/// stdout log whatever the children's ends, and its output (trimmed, as any output). Like
/// any captured stdout, it fails the step past `max_output_size` when `output:` is set.
fn publish_aggregate<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    stdout: &Path,
    record: &mut StepRecord,
    results: &[RunRecord],
) -> Result<(), Error> {
    let text = aggregate(results);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stdout)
        .and_then(|mut log| log.write_all(text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(
            "cannot write the aggregate of step {} to its log: {e}",
            step.name
        );
    }
    let max = env.dag.output_limit();
    if step.output.is_some() && text.len() as u64 > max {
        return Err(Error::OutputTooLarge { max });
    }
    record.output = Some(text.trim().to_string());
    Ok(())
}

/// Dagu's `outputResults` (`parallel.go`): counts, each child's result, and the outputs of
/// the children that succeeded, in item order; pretty-printed with a final newline.
fn aggregate(results: &[RunRecord]) -> String {
    let ok = |r: &&RunRecord| matches!(r.status, Status::Succeeded | Status::PartiallySucceeded);
    let entries: Vec<Value> = results.iter().map(child_result).collect();
    let succeeded = results.iter().filter(ok).count();
    let value = json!({
        "summary": {
            "total": results.len(),
            "succeeded": succeeded,
            "failed": results.len() - succeeded,
        },
        "results": entries,
        "outputs": results.iter().filter(ok).map(|r| json!(r.outputs)).collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// One child as Dagu's `RunStatus` marshals it: empty name, id and params are left out.
fn child_result(run: &RunRecord) -> Value {
    let mut entry = serde_json::Map::new();
    let mut put = |key: &str, value: String| {
        if !value.is_empty() {
            entry.insert(key.into(), value.into());
        }
    };
    put("name", run.name.clone());
    put("dagRunId", run.run_id.to_string());
    put("params", run.params.join(" "));
    entry.insert("outputs".into(), json!(run.outputs));
    // Dagu has no "cancelled": a run stopped part-way is "aborted" there.
    let status = match run.status {
        Status::Cancelled => "aborted",
        other => other.as_str(),
    };
    entry.insert("status".into(), status.into());
    Value::Object(entry)
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

/// `dag.enqueue`: one queued run per item, not waited for; their ids are the step's
/// stdout (one per line) and its children.
fn enqueue<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    child: &trellis_core::Dag,
    items: Vec<(String, String)>,
    to: &trellis_core::Enqueue,
    stdout: &Path,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    let Some(queue) = &env.engine.opts.enqueue else {
        return Err(Error::SpawnFailed(
            "dag.enqueue: this process has no queue to put runs in (runs started by `trellis start`, the server and the scheduler do)".into(),
        ));
    };
    let name = to.queue.as_deref().map(|q| env.scope.expand(q, true));
    let mut ids = Vec::new();
    for (params, item) in items {
        let params = if item.is_empty() {
            params
        } else {
            format!("{params} ITEM={}", shell_word(&item))
        };
        let id = crate::blocking_section(|| queue.0.enqueue(child, &params, name.as_deref()))
            .map_err(|e| Error::SpawnFailed(format!("dag.enqueue of `{}`: {e}", child.name)))?;
        ids.push(id);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stdout)
        .map_err(|e| Error::SpawnFailed(format!("cannot write the step's log: {e}")))?;
    for id in &ids {
        let _ = writeln!(file, "{id}");
    }
    // Not `children`: an enqueued run is a run of its own, not nested under this one.
    record.output = Some(serde_json::json!({"name": child.name, "run_ids": ids}).to_string());
    Ok(0)
}

/// `value` as one `K=V` word: quoted when it holds spaces or quotes.
fn shell_word(value: &str) -> String {
    if value
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'))
    {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        value.to_string()
    }
}

fn find_dag<S: ?Sized, E>(env: &StepEnv<S, E>, name: &str) -> Option<trellis_core::Dag> {
    if let Some(d) = env.locals.iter().find(|d| d.name == name) {
        return Some(d.clone());
    }
    let dir = env.engine.opts.dags_dir.clone()?;
    for ext in ["yaml", "yml"] {
        let path = dir.join(format!("{name}.{ext}"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return trellis_spec::load_file_str(&path, &text)
                .ok()
                .map(|l| l.dag);
        }
    }
    None
}
