//! Setting a run up: its first record, the variables its steps see (params, dotenv, env
//! with command substitution), and what a retry keeps from the previous attempt.

use std::path::PathBuf;

use trellis_core::status::{RunRecord, Status};
use trellis_core::{Dag, Output};
use trellis_store::Attempt;

use tokio_util::sync::CancellationToken;
use trellis_executor::Executor;

use crate::subst::Subst;
use crate::{Retry, RunRequest, Scope, StepVars, now};

pub(crate) fn initial_record(req: &RunRequest, attempt: &Attempt) -> RunRecord {
    RunRecord {
        params: req
            .params
            .iter()
            .map(|p| {
                if p.positional {
                    p.value.clone()
                } else {
                    format!("{}={}", p.name, p.value)
                }
            })
            .collect(),
        started_at: Some(now()),
        pid: Some(std::process::id()),
        host: Some(trellis_store::hostname().to_string()),
        queued: req.queued,
        parent: req.parent.as_ref().map(|p| p.run_id.to_string()),
        root: req.parent.as_ref().map(|p| p.root_run_id.to_string()),
        log_file: Some(attempt.log_dir.join("run.log").display().to_string()),
        ..RunRecord::new(&req.dag, &req.run_id, &attempt.attempt_id, Status::Running)
    }
}

pub(crate) fn initial_scope(
    req: &RunRequest,
    run: &RunRecord,
    attempt: &Attempt,
    dags_dir: Option<&std::path::Path>,
) -> Scope {
    let scope = Scope::default();
    scope.set_log_dir(attempt.log_dir.clone());
    for p in &req.params {
        if p.positional {
            scope.push_positional(p.value.clone());
        } else {
            scope.set_var(&p.name, p.value.clone());
        }
    }
    let named: serde_json::Map<String, serde_json::Value> = req
        .params
        .iter()
        .filter(|p| !p.positional)
        .map(|p| (p.name.clone(), p.value.clone().into()))
        .collect();
    let json = serde_json::Value::Object(named).to_string();
    for (k, v) in [
        ("DAG_NAME", req.dag.name.clone()),
        ("DAG_RUN_ID", req.run_id.to_string()),
        ("DAG_RUN_LOG_FILE", run.log_file.clone().unwrap_or_default()),
        ("DAGU_PARAMS_JSON", json.clone()),
        ("DAG_PARAMS_JSON", json),
        ("DAG_RUN_WORK_DIR", attempt.dir.display().to_string()),
    ] {
        scope.set_var(k, v);
    }
    for (k, v) in &req.env {
        scope.set_var(k, v.clone());
    }
    for file in &req.dag.dotenv {
        let path = dags_dir.map_or_else(|| PathBuf::from(file), |d| d.join(file));
        for (k, v) in read_dotenv(&path) {
            scope.set_var(&k, v);
        }
    }
    scope
}

/// The DAG's `env:` in order, each value expanded and its backtick commands run through
/// the executor with what steps see (base environment and the scope so far), never secrets.
pub(crate) async fn resolve_env<E: Executor>(
    req: &RunRequest,
    scope: &Scope,
    exec: &E,
    base_env: &[(String, String)],
    attempt: &Attempt,
    cancel: &CancellationToken,
) {
    let subst = Subst {
        exec,
        base_env,
        scope,
        dir: &attempt.dir,
        cancel,
    };
    for (k, v) in &req.dag.env {
        let value = subst.apply(&scope.expand(v, true)).await;
        scope.set_var(k, value);
    }
}

/// The DAG's secrets, read now and set as variables of its steps; the values to mask.
/// A secret that cannot be read fails the run (the message never holds a value).
pub(crate) fn resolve_secrets(
    dag: &Dag,
    scope: &Scope,
) -> Result<Option<std::sync::Arc<trellis_executor::Mask>>, String> {
    use trellis_core::SecretProvider;
    if dag.secrets.is_empty() {
        return Ok(None);
    }
    let mut values = Vec::new();
    for secret in &dag.secrets {
        let value = match secret.provider {
            SecretProvider::Env => std::env::var(&secret.key).map_err(|_| {
                format!(
                    "secret `{}`: environment variable `{}` is not set",
                    secret.name, secret.key
                )
            })?,
            SecretProvider::File => std::fs::read_to_string(&secret.key)
                .map(|text| {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_string()
                })
                .map_err(|e| {
                    format!(
                        "secret `{}`: cannot read `{}`: {e}",
                        secret.name, secret.key
                    )
                })?,
        };
        scope.set_var(&secret.name, value.clone());
        values.push(value);
    }
    Ok(Some(std::sync::Arc::new(trellis_executor::Mask::new(
        values,
    ))))
}

/// `KEY=value` lines of a .env file (`export`, quotes and `#` comments allowed). A missing
/// file contributes nothing, as in Dagu.
fn read_dotenv(path: &std::path::Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ").unwrap_or(l).split_once('=')?;
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), unquoted.to_string()))
        })
        .collect()
}

/// A step whose runner died while it ran: its work may still be going on elsewhere.
fn orphaned(prev: &trellis_core::status::StepRecord) -> bool {
    matches!(prev.status, Status::Running | Status::Retrying)
        || prev.error.as_deref() == Some("process died")
}

/// Copies the steps a retry keeps (and what they published) from the previous attempt.
pub(crate) fn keep_settled(dag: &Dag, retry: &Retry, run: &mut RunRecord, scope: &Scope) {
    let rerun = rerun_set(dag, retry);
    for (i, step) in dag.steps.iter().enumerate() {
        let Some(prev) = retry.previous.steps.iter().find(|s| s.name == step.name) else {
            continue;
        };
        if rerun.contains(&i) {
            if orphaned(prev) {
                run.steps[i].handle =
                    crate::elsewhere::resume_handle(dag, step, prev, &retry.previous);
            }
            continue;
        }
        run.steps[i] = prev.clone();
        if let (Some(Output::Variable(var)), Some(value)) = (step.output.as_deref(), &prev.output) {
            scope.set_var(var, value.clone());
            run.outputs.insert(var.clone(), value.clone());
        }
        let logs = (
            prev.stdout.clone().unwrap_or_default(),
            prev.stderr.clone().unwrap_or_default(),
        );
        let vars = StepVars {
            output: prev.output.clone(),
            fields: None,
            exit_code: prev.exit_code,
            // The previous attempt's files, not this attempt's.
            logs: Some(Box::new(logs)),
        };
        // Known by id and by name, as a step that ran in this attempt is.
        if let Some(id) = &step.id {
            scope.set_step(id, &step.name, vars.clone());
        }
        scope.set_step(&step.name, &step.name, vars);
    }
}

/// Steps a retry runs again: the named step and its dependents, or every step that did
/// not succeed and everything downstream of those.
fn rerun_set(dag: &Dag, retry: &Retry) -> std::collections::HashSet<usize> {
    let ok = |name: &str| {
        retry.previous.steps.iter().any(|s| {
            s.name == name
                && matches!(
                    s.status,
                    Status::Succeeded | Status::Skipped | Status::PartiallySucceeded
                )
        })
    };
    let mut set: std::collections::HashSet<usize> = dag
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| match &retry.from_step {
            Some(from) => &s.name == from,
            None => !ok(&s.name),
        })
        .map(|(i, _)| i)
        .collect();
    // Steps are in dependency order after loading, so one pass reaches every dependent.
    let order = trellis_core::graph::Graph::new(
        dag.steps.len(),
        dag.steps.iter().enumerate().flat_map(|(i, s)| {
            s.depends
                .iter()
                .filter_map(move |d| dag.steps.iter().position(|x| &x.name == d).map(|j| (j, i)))
        }),
    )
    .topo_order()
    .unwrap_or_default();
    for i in order {
        if dag.steps[i].depends.iter().any(|d| {
            dag.steps
                .iter()
                .position(|x| &x.name == d)
                .is_some_and(|j| set.contains(&j))
        }) {
            set.insert(i);
        }
    }
    set
}
