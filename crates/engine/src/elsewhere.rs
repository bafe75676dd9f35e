//! Steps of other types than the local shell (`type: docker`): the step becomes a
//! [`StepRequest`] for its executor from the registry, which starts it and returns a
//! handle; the run loop records the handle while the step runs, and the executor follows
//! it to its end. A step whose record already holds a handle (a run resumed after its
//! runner died) is reattached, never started twice.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use trellis_core::status::StepRecord;
use trellis_core::{Action, ExecutorConfig, Step};
use trellis_executor::{Executor, StepRequest, Work, external_name};
use trellis_store::Store;

use crate::step::judge;
use crate::{Error, StepEnv};

/// Where a step runs when not as a local process: on its own type's executor, in the
/// run's container, or on the config's default executor (`executors.default`). `Err`
/// for a step of a run whose container did not start: never on this machine instead.
pub(crate) fn placement<'a, S: ?Sized, E>(
    env: &'a StepEnv<S, E>,
    step: &'a Step,
) -> Option<Result<Cow<'a, ExecutorConfig>, Error>> {
    if let Some(config) = &step.executor {
        return Some(Ok(Cow::Borrowed(config)));
    }
    if env.dag.in_run_container(step) {
        return Some(match &env.run_container {
            Some(config) => Ok(Cow::Borrowed(config)),
            None => Err(Error::SpawnFailed(
                "the run's container is not running".into(),
            )),
        });
    }
    let kind = env.engine.opts.executors.default_kind()?;
    let command = matches!(
        step.action,
        Action::Commands { .. } | Action::Script { .. } | Action::Exec { .. }
    );
    command.then(|| {
        Ok(Cow::Owned(ExecutorConfig {
            kind: kind.to_string(),
            config: serde_json::Value::Null,
        }))
    })
}

/// One try of a step on its executor. Ok(exit code) on success.
pub(crate) async fn run<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    config: &ExecutorConfig,
    stdout: &Path,
    stderr: &Path,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    let Some(executor) = env.engine.opts.executors.get(&config.kind).cloned() else {
        return Err(Error::UnsupportedType {
            kind: config.kind.clone(),
        });
    };
    let works = works(env, step);
    let try_no = record.retry_count + record.done_count;
    // Left by a runner that died (a new try starts with none): the first command's.
    let mut carried = record
        .handle
        .take()
        .filter(|h| h.executor == executor.kind());
    for (part, work) in works.into_iter().enumerate() {
        let mut req = request(env, step, config, work, (try_no, part), stdout, stderr);
        req.record = recorder(env, record);
        let found = match carried.take() {
            // Left by a runner that died: reattach when it is still there (by id, or by
            // the name it would have had when the runner died before recording its id).
            Some(h) => {
                executor
                    .find(&StepRequest {
                        name: h.id,
                        ..req.clone()
                    })
                    .await
            }
            None => None,
        };
        let handle = match found {
            Some(handle) => handle,
            None => executor
                .start(&req)
                .await
                .map_err(|e| Error::SpawnFailed(e.0))?,
        };
        record.handle = Some(handle.clone());
        let _ = env.started.send(crate::Started::Handle(
            env_index(record, env),
            handle.clone(),
            None,
        ));
        let outcome = executor.wait(&handle, &req, env.cancel.clone()).await;
        // Kept on the record, which shows where the step ran; the next command starts anew.
        judge(outcome, step, stderr, record)?;
    }
    Ok(0)
}

/// Records a handle in the run's store before the executor starts the work: the run
/// loop writes it and answers once the write is done. Only for the run's own steps
/// (handlers run after the run loop has stopped listening).
fn recorder<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    record: &StepRecord,
) -> Option<trellis_executor::Recorder> {
    let index = env_index(record, env);
    if index == usize::MAX {
        return None;
    }
    let started = env.started.clone();
    Some(std::sync::Arc::new(move |handle| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = started.send(crate::Started::Handle(index, handle, Some(tx)));
        Box::pin(async move {
            if sent.is_ok() {
                let _ = rx.await;
            }
        })
    }))
}

/// The step's index in the run, for the run loop (handlers have none it records).
pub(crate) fn env_index<S: ?Sized, E>(record: &StepRecord, env: &StepEnv<S, E>) -> usize {
    env.dag
        .steps
        .iter()
        .position(|s| s.name == record.name)
        .unwrap_or(usize::MAX)
}

/// What the step runs: one container (or exec) per command line, which the executor
/// runs with the shell its options name or splits into words (as Dagu does); a script through `sh -c` (or its `shell`); nothing given,
/// the image's own command.
fn works<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Vec<Work> {
    match &step.action {
        Action::Commands { commands } => commands
            .iter()
            .map(|c| Work::Line(env.scope.expand(c, false)))
            .collect(),
        Action::Exec { program, args } => {
            let mut argv = vec![env.scope.expand(program, true)];
            argv.extend(args.iter().map(|a| env.scope.expand(a, true)));
            vec![Work::Argv(argv)]
        }
        Action::Script { script, program } => vec![Work::Script {
            program: program
                .clone()
                .or_else(|| step.shell.as_ref().map(|s| s.program.clone())),
            text: env.scope.expand(script, false),
        }],
        _ => vec![Work::Default],
    }
}

fn request<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    config: &ExecutorConfig,
    work: Work,
    (try_no, part): (u32, usize),
    stdout: &Path,
    stderr: &Path,
) -> StepRequest {
    let attempt = &env.attempt;
    let labels = BTreeMap::from([
        ("trellis.dag".to_string(), env.dag.name.clone()),
        ("trellis.run_id".to_string(), attempt.run_id.to_string()),
        (
            "trellis.attempt".to_string(),
            attempt.attempt_id.to_string(),
        ),
        ("trellis.step".to_string(), step.name.clone()),
        ("trellis.try".to_string(), try_no.to_string()),
    ]);
    let limits = crate::process::Limits::of(env, step);
    // `${...}` only: `$VAR` in `with:` stays for the container's shell.
    let own = crate::output::expand_json(env, &config.config, false);
    let own = remote_step(env, step, &config.kind, own);
    let own = dag_defaults(env, &config.kind, own);
    let mut config = env.engine.opts.executors.with_defaults(&config.kind, own);
    crate::run_container::with_registry_auths(&env.dag, &env.scope, &mut config);
    StepRequest {
        name: work_name(
            &env.dag.name,
            attempt.run_id.as_str(),
            &step.name,
            try_no,
            part,
        ),
        work,
        env: crate::process::step_env(env, step).into_iter().collect(),
        working_dir: crate::process::working_dir(env, step),
        config,
        stdout: stdout.to_path_buf(),
        stderr: stderr.to_path_buf(),
        timeout: limits.timeout,
        stop_signal: limits.stop_signal,
        grace: limits.grace,
        mask: env.mask.clone(),
        labels,
        record: None,
    }
}

/// An ssh step's own `working_dir` and `env` (the DAG's stay local, and no other variable
/// of the run — a secret — reaches the host unless the step names it), under `with:`.
fn remote_step<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    kind: &str,
    mut own: serde_json::Value,
) -> serde_json::Value {
    if kind != "ssh" {
        return own;
    }
    if own.is_null() {
        own = serde_json::Value::Object(serde_json::Map::new());
    }
    let serde_json::Value::Object(map) = &mut own else {
        return own;
    };
    if let (Some(dir), false) = (&step.working_dir, map.contains_key("working_dir")) {
        map.insert("working_dir".into(), env.scope.expand(dir, false).into());
    }
    let scope = crate::process::step_scope(env, step);
    let vars: serde_json::Map<String, serde_json::Value> = step
        .env
        .iter()
        .map(|(k, _)| (k.clone(), scope.var(k).unwrap_or_default().into()))
        .collect();
    if !vars.is_empty() && !map.contains_key("env") {
        map.insert("env".into(), serde_json::Value::Object(vars));
    }
    own
}

/// A step's `with:` over the DAG's defaults for its executor (`kubernetes:`, `slurm:`).
fn dag_defaults<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    kind: &str,
    own: serde_json::Value,
) -> serde_json::Value {
    let executors = &env.engine.opts.executors;
    let canonical = executors.get(kind).map_or(kind, |e| e.kind());
    // sftp steps reach their host as ssh steps do: the DAG's `ssh:` serves both.
    let section = match canonical {
        "sftp" => "ssh",
        "mail" => "smtp",
        other => other,
    };
    match env.dag.executor_defaults.get(section) {
        // A mail step's server is the DAG's `smtp:`, under its own key.
        Some(smtp) if section == "smtp" => {
            let smtp = crate::output::expand_json(env, smtp, false);
            trellis_executor::lay_over(&serde_json::json!({ "smtp": smtp }), own)
        }
        Some(defaults) if matches!(section, "kubernetes" | "slurm" | "ssh") => {
            let mut defaults = crate::output::expand_json(env, defaults, false);
            // An sftp step takes the connection, not the shell or the command.
            if let (true, serde_json::Value::Object(map)) = (canonical == "sftp", &mut defaults) {
                for key in [
                    "shell",
                    "shell_args",
                    "shellArgs",
                    "working_dir",
                    "command",
                    "env",
                ] {
                    map.remove(key);
                }
            }
            trellis_executor::lay_over(&defaults, own)
        }
        _ => own,
    }
}

/// The name of what a try of a step creates: per run, not per attempt, so that the
/// attempt that resumes a run whose runner died finds it by name.
fn work_name(dag: &str, run_id: &str, step: &str, try_no: u32, part: usize) -> String {
    external_name(&format!("trellis-{dag}-{run_id}-{step}-{try_no}-{part}"))
}

/// The name of a run's DAG-level container.
pub(crate) fn run_container_name(dag: &str, run_id: &str) -> String {
    external_name(&format!("trellis-{dag}-{run_id}"))
}

/// Where a step that was running when its runner died may still be: its recorded
/// handle, else (died between starting it and recording the handle) its name. A step
/// exec'd into the run's container has no name to be found by: its handle or nothing.
pub(crate) fn resume_handle(
    dag: &trellis_core::Dag,
    step: &Step,
    prev: &StepRecord,
    run: &trellis_core::status::RunRecord,
) -> Option<trellis_executor::Handle> {
    // In the run's container, or sent to the config's default executor: the handle it
    // recorded, if any (a local step has none).
    let Some(kind) = step
        .executor
        .as_ref()
        .map(|e| &e.kind)
        .filter(|_| !dag.in_run_container(step))
    else {
        return prev.handle.clone();
    };
    prev.handle.clone().or_else(|| {
        let try_no = prev.retry_count + prev.done_count;
        Some(trellis_executor::Handle {
            executor: kind.clone(),
            id: work_name(&run.name, run.run_id.as_str(), &step.name, try_no, 0),
        })
    })
}

#[cfg(test)]
mod tests {
    use trellis_executor::external_name;

    #[test]
    fn external_names_are_valid_and_stay_unique_when_cut() {
        assert_eq!(external_name("trellis-a b/c-1"), "trellis-a-b-c-1");
        let long = |c: char| format!("trellis-{}", c.to_string().repeat(200));
        let (a, b) = (external_name(&long('a')), external_name(&long('b')));
        assert!(a.len() <= 128 && b.len() <= 128);
        assert_ne!(a, b);
        assert_eq!(a, external_name(&long('a')), "deterministic");
    }
}
