//! Running one step: preconditions, the process (with retries and repeats), outputs,
//! sub-DAG calls and routers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use trellis_core::backoff::Backoff;
use trellis_core::pattern::Pattern;
use trellis_core::status::{Status, StepRecord};
use trellis_core::{Action, Condition, Output, RepeatPolicy, Step};
use trellis_executor::{Executor, Outcome};
use trellis_store::Store;

use crate::expand::{Scope, StepVars};
use crate::output::{capture_fields, out_text, read_capped};
use crate::process::{Launch, process_specs, step_scope};
use crate::{Done, Error, RunCtx, StepEnv, now};

pub(crate) fn spawn<S: Store + ?Sized + 'static, E: Executor + 'static>(
    ctx: &RunCtx<S, E>,
    index: usize,
    resume: Option<trellis_core::status::Handle>,
    tx: mpsc::UnboundedSender<Done>,
) {
    let env = ctx.snapshot();
    let step = ctx.dag.steps[index].clone();
    tokio::spawn(async move {
        let done = execute(env, step, index, resume).await;
        let _ = tx.send(done);
    });
}

/// Runs a step to its settled state.
pub(crate) async fn execute<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: Arc<StepEnv<S, E>>,
    step: Step,
    index: usize,
    resume: Option<trellis_core::status::Handle>,
) -> Done {
    let mut record = StepRecord {
        name: step.name.clone(),
        started_at: Some(now()),
        worker_id: env.engine.opts.worker_id.clone(),
        // Work a dead runner left going: reattached to, not started again.
        handle: resume,
        ..StepRecord::default()
    };
    let (stdout, stderr) = (
        env.attempt
            .log_dir
            .join(crate::log_file_name(&step.name, "out")),
        env.attempt
            .log_dir
            .join(crate::log_file_name(&step.name, "err")),
    );
    record.stdout = Some(stdout.display().to_string());
    record.stderr = Some(stderr.display().to_string());
    // The log paths are derived from the step's name when a later step asks for them.
    let mut vars = StepVars::default();
    let mut skip = Vec::new();
    if let Err(reason) = check_conditions_env(&env, &step.preconditions).await {
        record.status = Status::Skipped;
        record.error = Some(format!("precondition not met: {reason}"));
        record.finished_at = Some(now());
        return Done {
            index,
            record,
            vars,
            skip,
            generated: Vec::new(),
        };
    }
    let result = match &step.action {
        Action::Call(_) => crate::call::call(&env, &step, &stdout, &mut record).await,
        Action::Router { value, routes } => {
            skip = route(&env, value, routes);
            Ok(0)
        }
        // Other step types go to their executor (a docker step with no command runs its
        // image's own); a type with none fails naming it, never on the local shell.
        _ if step.executor.is_some() => {
            run_with_policies(&env, &step, &stdout, &stderr, &mut record).await
        }
        Action::Noop => Ok(0),
        _ => run_with_policies(&env, &step, &stdout, &stderr, &mut record).await,
    };
    finish(
        &env,
        &step,
        result,
        &mut record,
        &mut vars,
        &stdout,
        &stderr,
    );
    if env.cancel.is_cancelled() && record.status == Status::Failed {
        record.status = Status::Cancelled;
    }
    let generated = generate(&env, &step, &mut record, &stdout);
    record.finished_at = Some(now());
    if let Some(mask) = &env.mask {
        hide_secrets(mask, &mut record, &mut vars);
    }
    Done {
        index,
        record,
        vars,
        skip,
        generated,
    }
}

/// What a step leaves in the run's record, with secret values masked: its output is
/// masked on its way to the log files, but an output file or an error message is not.
fn hide_secrets(mask: &trellis_executor::Mask, record: &mut StepRecord, vars: &mut StepVars) {
    for text in [&mut record.error, &mut record.output, &mut vars.output]
        .into_iter()
        .flatten()
    {
        *text = mask.apply(text);
    }
    for note in &mut record.notes {
        *note = mask.apply(note);
    }
}

/// A Daggy generator's stdout becomes new steps; a bad document fails the generator.
fn generate<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    record: &mut StepRecord,
    stdout: &Path,
) -> Vec<Step> {
    if !step.generator || record.status != Status::Succeeded {
        return Vec::new();
    }
    let text = read_capped(stdout, env.dag.output_limit() as usize);
    match trellis_spec::generated_steps(&env.dag, &text) {
        Ok(steps)
            if steps
                .iter()
                .any(|s| env.dag.steps.iter().any(|o| o.name == s.name)) =>
        {
            record.status = Status::Failed;
            record.error = Some("generator produced a task whose name is already taken".into());
            Vec::new()
        }
        Ok(steps) => steps,
        Err(e) => {
            record.status = Status::Failed;
            record.error = Some(e.to_string());
            Vec::new()
        }
    }
}

fn finish<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    result: Result<i32, Error>,
    record: &mut StepRecord,
    vars: &mut StepVars,
    stdout: &Path,
    stderr: &Path,
) {
    let max = env.dag.output_limit() as usize;
    // Output beyond the limit failed the step and sets no variable (Dagu).
    let too_large = matches!(result, Err(Error::OutputTooLarge { .. }));
    if record.output.is_none() && !matches!(step.action, Action::Call(_)) {
        vars.output = (!too_large).then(|| read_capped(stdout, max).trim().to_string());
    } else {
        vars.output = record.output.clone();
    }
    match result {
        Ok(code) => {
            record.exit_code = Some(code);
            vars.exit_code = Some(code);
            if record.status != Status::PartiallySucceeded {
                record.status = Status::Succeeded;
            }
        }
        Err(error) => {
            let code = record.exit_code;
            vars.exit_code = code;
            record.status = Status::Failed;
            record.error = Some(error.to_string());
            let c = &step.continue_on;
            let out = vars.output.clone().unwrap_or_default();
            let by_output = c.output.iter().any(|p| p.found_in(&out));
            record.continued =
                c.failure || code.is_some_and(|code| c.exit_codes.contains(&code)) || by_output;
            if record.continued && c.mark_success {
                record.status = Status::Succeeded;
                record.continued = false;
                let note = format!(
                    "marked succeeded by continue_on.mark_success after: {}",
                    record.error.take().unwrap_or_default()
                );
                record.notes.push(note);
            }
        }
    }
    if let Some(Output::Fields(fields)) = step.output.as_deref().filter(|_| !too_large) {
        match capture_fields(
            env,
            step,
            fields,
            &out_text(stdout, max),
            &out_text(stderr, max),
        ) {
            Ok(v) => vars.fields = Some(Box::new(v)),
            Err(e) => {
                record.status = Status::Failed;
                record.error = Some(e.to_string());
            }
        }
    }
    if let Some(Output::Variable(_)) = step.output.as_deref() {
        record.output = vars.output.clone();
    }
    if step.approval.is_some() && record.status == Status::Succeeded {
        record.status = Status::Waiting;
    }
}

/// Runs the process with retry_policy and repeat_policy. Ok(exit code) on success.
async fn run_with_policies<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    stdout: &Path,
    stderr: &Path,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    let scope = step_scope(env, step);
    let launch = Launch {
        scope: &scope,
        stdout,
        stderr,
        errexit: true,
    };
    let mut result = run_once(env, step, &launch, record).await;
    if let Some(retry) = &step.retry_policy {
        let mut intervals = Backoff::new(retry.interval_sec, retry.backoff, retry.max_interval_sec);
        while let Err(error) = &result {
            // Dagu judges output beyond the limit as exit code 1.
            let code = match error {
                Error::OutputTooLarge { .. } => Some(1),
                _ => record.exit_code,
            };
            let retriable =
                retry.exit_codes.is_empty() || code.is_some_and(|c| retry.exit_codes.contains(&c));
            if record.retry_count >= retry.limit || !retriable || env.cancel.is_cancelled() {
                break;
            }
            tell_try(env, record, Status::Retrying, error);
            wait(env, intervals.next_secs()).await;
            record.retry_count += 1;
            tell_try(env, record, Status::Running, error);
            result = run_once(env, step, &launch, record).await;
        }
    }
    record.done_count = 1;
    match &step.repeat_policy {
        Some(repeat) => repeat_step(env, step, repeat, &launch, record, result).await,
        None => result,
    }
}

/// Tells the run loop a try ended (`Retrying`, with why) or the next began (`Running`).
fn tell_try<S: ?Sized, E>(env: &StepEnv<S, E>, record: &StepRecord, status: Status, error: &Error) {
    let index = crate::elsewhere::env_index(record, env);
    if index == usize::MAX {
        return; // a handler: the run loop no longer listens
    }
    let mut now_record = record.clone();
    now_record.status = status;
    if status == Status::Retrying {
        now_record.finished_at = Some(now());
        now_record.error = Some(error.to_string());
    } else {
        // This try's start; the step's own record keeps its first.
        now_record.started_at = Some(now());
        (now_record.finished_at, now_record.error) = (None, None);
    }
    let _ = env
        .started
        .send(crate::Started::Try(index, Box::new(now_record)));
}

/// Runs the step again while its repeat_policy says so. Each check comes after a run and
/// sees the output variable that run just captured (Dagu reloads it before the check).
async fn repeat_step<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    repeat: &RepeatPolicy,
    launch: &Launch<'_>,
    record: &mut StepRecord,
    mut result: Result<i32, Error>,
) -> Result<i32, Error> {
    let mut intervals = Backoff::new(repeat.interval_sec, repeat.backoff, repeat.max_interval_sec);
    loop {
        if repeat.limit.is_some_and(|l| record.done_count >= l) || env.cancel.is_cancelled() {
            break;
        }
        let hit = match (&repeat.condition, repeat.exit_codes.is_empty()) {
            (Some(c), _) => {
                let scope = with_output(env, step, launch, &result);
                let dir = step.working_dir.as_deref();
                check_condition(env, &scope, c, dir).await.is_ok()
            }
            (None, false) => record
                .exit_code
                .is_some_and(|c| repeat.exit_codes.contains(&c)),
            (None, true) => result.is_ok(),
        };
        let again = match repeat.mode {
            trellis_core::RepeatMode::While => hit,
            trellis_core::RepeatMode::Until => !hit,
        };
        if !again {
            break;
        }
        wait(env, intervals.next_secs()).await;
        result = run_once(env, step, launch, record).await;
        record.done_count += 1;
    }
    result
}

/// The step's variables with the `output:` variable its last run captured, if it fitted.
fn with_output<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    launch: &Launch<'_>,
    result: &Result<i32, Error>,
) -> Scope {
    let mut scope = launch.scope.clone();
    if let Some(Output::Variable(var)) = step.output.as_deref()
        && !matches!(result, Err(Error::OutputTooLarge { .. }))
    {
        let text = read_capped(launch.stdout, env.dag.output_limit() as usize);
        scope.set_local(var, text.trim().to_string());
    }
    scope
}

async fn wait<S: ?Sized, E>(env: &StepEnv<S, E>, secs: f64) {
    if secs > 0.0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
            _ = env.cancel.cancelled() => {}
        }
    }
}

/// One attempt: each command line in turn, stopping at the first failure.
async fn run_once<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    step: &Step,
    launch: &Launch<'_>,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    let (stdout, stderr) = (launch.stdout, launch.stderr);
    if record.retry_count > 0 || record.done_count > 0 {
        // A new attempt of the step starts its logs afresh, and new work: the last try's
        // handle is where that try ran, not something to reattach to.
        let _ = std::fs::remove_file(stdout);
        let _ = std::fs::remove_file(stderr);
        record.handle = None;
    }
    let code = match crate::elsewhere::placement(env, step) {
        Some(place) => {
            let place = place?;
            crate::elsewhere::run(env, step, &place, stdout, stderr, record).await?
        }
        None => {
            for spec in process_specs(env, step, launch)? {
                let outcome = env.engine.exec.run(spec, env.cancel.clone()).await;
                judge(outcome, step, stderr, record)?;
            }
            0
        }
    };
    output_fits(env, step, stdout)?;
    Ok(code)
}

/// Dagu fails a step whose stdout, captured for `output:`, passes `max_output_size`,
/// whatever its exit code; the log keeps all of it.
fn output_fits<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step, stdout: &Path) -> Result<(), Error> {
    if step.output.is_none() {
        return Ok(());
    }
    let max = env.dag.output_limit();
    match std::fs::metadata(stdout) {
        Ok(m) if m.len() > max => Err(Error::OutputTooLarge { max }),
        _ => Ok(()),
    }
}

/// A process's or container's end as the step's result: Ok for exit 0, else the error
/// the step's record shows.
pub(crate) fn judge(
    outcome: Outcome,
    step: &Step,
    stderr: &Path,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    record.exit_code = outcome.exit_code();
    Err(match outcome {
        Outcome::Exited(0) => return Ok(0),
        Outcome::Exited(code) => Error::Exited {
            code,
            stderr: stderr_tail(stderr),
        },
        Outcome::Signaled(signal) => Error::Signaled {
            signal,
            stderr: stderr_tail(stderr),
        },
        Outcome::TimedOut => Error::TimedOut {
            secs: step.timeout_sec.unwrap_or(0),
        },
        Outcome::Cancelled => Error::Cancelled,
        Outcome::SpawnFailed(e) => Error::SpawnFailed(e),
        Outcome::Failed { reason, .. } => Error::Failed { reason },
        Outcome::Lost(why) => Error::Lost(why),
    })
}

/// The last lines a failed process wrote to stderr (what usually says why), if any.
fn stderr_tail(stderr: &Path) -> Option<String> {
    let text = read_capped(stderr, 64 * 1024);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    (!tail.is_empty()).then(|| tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

pub(crate) async fn check_conditions<S: Store + ?Sized + 'static, E: Executor + 'static>(
    ctx: &RunCtx<S, E>,
    conditions: &[Condition],
) -> Result<(), Error> {
    check_conditions_env(&ctx.snapshot(), conditions).await
}

async fn check_conditions_env<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    conditions: &[Condition],
) -> Result<(), Error> {
    for c in conditions {
        check_condition(env, &env.scope, c, None).await?;
    }
    Ok(())
}

/// With `expected`, compares the expanded condition; without, runs it as a command (in
/// `dir`, else the DAG's working directory) through the shell, without `-e` (Dagu).
async fn check_condition<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    scope: &Scope,
    c: &Condition,
    dir: Option<&str>,
) -> Result<(), Error> {
    let held = match &c.expected {
        Some(expected) => {
            let subst = crate::subst::Subst {
                exec: &*env.engine.exec,
                base_env: &env.engine.opts.base_env,
                scope,
                dir: &env.attempt.dir,
                cancel: &env.cancel,
            };
            let got = subst.apply(&scope.expand(&c.condition, true)).await;
            // As Dagu: a variable may supply the `re:` itself (`expected: ${WANT}`).
            let want = match expected {
                Pattern::Literal(t) => Pattern::parse(&scope.expand(t, true)),
                regex => regex.map(|t| scope.expand(t, true)),
            };
            want.matches_exactly(&got)
        }
        None => condition_command(env, scope, &c.condition, dir).await,
    };
    if held != c.negate {
        Ok(())
    } else {
        Err(Error::ConditionNotMet {
            condition: c.condition.clone(),
        })
    }
}

/// Whether a condition, run as a command, exits 0.
async fn condition_command<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    scope: &Scope,
    condition: &str,
    dir: Option<&str>,
) -> bool {
    let logs = env.attempt.dir.join("conditions");
    let _ = std::fs::create_dir_all(&logs);
    let (out, err) = (logs.join("out"), logs.join("err"));
    let mut probe = Step::command("precondition", condition);
    probe.working_dir = dir.map(String::from);
    let launch = Launch {
        scope,
        stdout: &out,
        stderr: &err,
        errexit: false,
    };
    let specs = process_specs(env, &probe, &launch).unwrap_or_default();
    let mut ok = true;
    for spec in specs {
        ok &= env.engine.exec.run(spec, env.cancel.clone()).await == Outcome::Exited(0);
    }
    ok
}

fn route<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    value: &str,
    routes: &[trellis_core::Route],
) -> Vec<String> {
    let value = env.scope.expand(value, true);
    // An exact value wins over a regex that also matches.
    let exact = routes
        .iter()
        .position(|r| matches!(&r.pattern, Pattern::Literal(t) if *t == value));
    let chosen = exact.or_else(|| {
        routes
            .iter()
            .position(|r| matches!(r.pattern, Pattern::Regex(_)) && r.pattern.found_in(&value))
    });
    routes
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != chosen)
        .flat_map(|(_, r)| r.targets.clone())
        .collect()
}
