//! Running one step: preconditions, the process (with retries and repeats), outputs,
//! sub-DAG calls and routers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use trellis_core::backoff::Backoff;
use trellis_core::pattern::Pattern;
use trellis_core::status::{Status, StepRecord};
use trellis_core::{Action, Condition, Output, Step};
use trellis_executor::{Executor, Outcome, ProcessSpec};
use trellis_store::{Store, safe_name};

use crate::expand::StepVars;
use crate::output::{capture_fields, out_text, read_capped};
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
        Action::Call(_) => crate::call::call(&env, &step, &mut record).await,
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
    let text = read_capped(stdout, env.dag.max_output_size as usize);
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
    let max = env.dag.max_output_size as usize;
    if record.output.is_none() && !matches!(step.action, Action::Call(_)) {
        vars.output = Some(read_capped(stdout, max).trim().to_string());
        let size = std::fs::metadata(stdout).map_or(0, |m| m.len());
        if step.output.is_some() && size > max as u64 {
            record.notes.push(format!("output truncated to max_output_size ({max} bytes) of {size} bytes; the full stdout is in the log"));
        }
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
    if let Some(Output::Fields(fields)) = step.output.as_deref() {
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
    let mut result = run_once(env, step, stdout, stderr, record).await;
    if let Some(retry) = &step.retry_policy {
        let mut intervals = Backoff::new(retry.interval_sec, retry.backoff, retry.max_interval_sec);
        while result.is_err() {
            let code = record.exit_code;
            let retriable =
                retry.exit_codes.is_empty() || code.is_some_and(|c| retry.exit_codes.contains(&c));
            if record.retry_count >= retry.limit || !retriable || env.cancel.is_cancelled() {
                break;
            }
            wait(env, intervals.next_secs()).await;
            record.retry_count += 1;
            result = run_once(env, step, stdout, stderr, record).await;
        }
    }
    record.done_count = 1;
    if let Some(repeat) = &step.repeat_policy {
        let mut intervals =
            Backoff::new(repeat.interval_sec, repeat.backoff, repeat.max_interval_sec);
        loop {
            if repeat.limit.is_some_and(|l| record.done_count >= l) || env.cancel.is_cancelled() {
                break;
            }
            let hit = match (&repeat.condition, repeat.exit_codes.is_empty()) {
                (Some(c), _) => check_condition(env, c).await.is_ok(),
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
            result = run_once(env, step, stdout, stderr, record).await;
            record.done_count += 1;
        }
    }
    result
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
    stdout: &Path,
    stderr: &Path,
    record: &mut StepRecord,
) -> Result<i32, Error> {
    if record.retry_count > 0 || record.done_count > 0 {
        // A new attempt of the step starts its logs afresh, and new work: the last try's
        // handle is where that try ran, not something to reattach to.
        let _ = std::fs::remove_file(stdout);
        let _ = std::fs::remove_file(stderr);
        record.handle = None;
    }
    if let Some(place) = crate::elsewhere::placement(env, step) {
        let place = place?;
        return crate::elsewhere::run(env, step, &place, stdout, stderr, record).await;
    }
    let specs = process_specs(env, step, stdout, stderr)?;
    for spec in specs {
        let outcome = env.engine.exec.run(spec, env.cancel.clone()).await;
        judge(outcome, step, stderr, record)?;
    }
    Ok(0)
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

fn process_specs<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    stdout: &Path,
    stderr: &Path,
) -> Result<Vec<ProcessSpec>, Error> {
    let shell = step.shell.clone().or_else(|| env.dag.shell.clone());
    let (sh, sh_args) = shell
        .map(|s| (s.program, s.args))
        .unwrap_or_else(|| ("sh".into(), Vec::new()));
    let vars = process_env(env, step, stdout, stderr);
    let limits = Limits::of(env, step);
    let base = |program: String, args: Vec<String>| ProcessSpec {
        program,
        args,
        env: vars.clone(),
        working_dir: working_dir(env, step),
        stdout: stdout.to_path_buf(),
        stderr: stderr.to_path_buf(),
        timeout: limits.timeout,
        stop_signal: limits.stop_signal,
        grace: limits.grace,
        mask: env.mask.clone(),
    };
    Ok(match &step.action {
        Action::Commands { commands } => commands
            .iter()
            .map(|c| {
                let command = env.scope.expand(c, false);
                let default_shell = step.shell.is_none() && env.dag.shell.is_none();
                if let Some((program, args)) =
                    default_shell.then(|| direct(&command, &vars)).flatten()
                {
                    return base(program, args);
                }
                let mut args = sh_args.clone();
                args.extend(["-c".to_string(), command]);
                base(sh.clone(), args)
            })
            .collect(),
        Action::Exec { program, args } => vec![base(
            env.scope.expand(program, true),
            args.iter().map(|a| env.scope.expand(a, true)).collect(),
        )],
        Action::Script { script, program } => {
            let path = env
                .attempt
                .dir
                .join(format!("{}.script", safe_name(&step.name)));
            std::fs::write(&path, env.scope.expand(script, false)).map_err(Error::WriteScript)?;
            let file = path.display().to_string();
            match program {
                Some(p) => {
                    let mut words = p.split_whitespace().map(String::from);
                    let prog = words.next().unwrap_or_else(|| "sh".into());
                    vec![base(prog, words.chain([file]).collect())]
                }
                None if step.shell.is_none()
                    && env.dag.shell.is_none()
                    && script.starts_with("#!") =>
                {
                    let mut words = script.lines().next().unwrap_or_default()[2..]
                        .split_whitespace()
                        .map(String::from);
                    let prog = words.next().unwrap_or_else(|| "sh".into());
                    vec![base(prog, words.chain([file]).collect())]
                }
                None => vec![base(sh, sh_args.into_iter().chain([file]).collect())],
            }
        }
        _ => Vec::new(),
    })
}

/// A command with nothing for a shell to interpret (no quotes, variables, globs,
/// redirections, operators or builtins) runs as argv directly: the same result without the
/// cost of starting `sh` for every step. Anything else, or a program not on `PATH`, goes
/// through the shell so that errors read exactly as the shell's.
fn direct(command: &str, env: &[(String, String)]) -> Option<(String, Vec<String>)> {
    const SPECIAL: &str = "$`\\\"'|&;<>(){}[]*?~#=!%\n\r";
    const BUILTINS: &[&str] = &[
        "cd", "export", "exit", "set", "unset", "source", ".", "eval", "exec", "alias", "read",
        "shift", "trap", "ulimit", "umask", "wait", "local", "return", "break", "continue",
        "readonly", "type", "hash", "command", "getopts", "times", "if", "then", "else", "fi",
        "for", "while", "until", "do", "done", "case", "esac", "function", "time", "echo",
        "printf",
    ];
    if command.contains(|c: char| SPECIAL.contains(c)) {
        return None;
    }
    let mut words = command.split_whitespace();
    let first = words.next()?;
    if BUILTINS.contains(&first) {
        return None;
    }
    let program = trellis_executor::find_program(first, env)?;
    Some((
        program.display().to_string(),
        words.map(String::from).collect(),
    ))
}

/// The step's working dir (its own, else the DAG's), expanded.
pub(crate) fn working_dir<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Option<PathBuf> {
    step.working_dir
        .clone()
        .or_else(|| env.dag.working_dir.clone())
        .map(|d| PathBuf::from(env.scope.expand(&d, true)))
}

/// How long a step may run and how it is stopped.
pub(crate) struct Limits {
    pub timeout: Option<Duration>,
    pub stop_signal: Signal,
    /// Between the stop signal and the kill.
    pub grace: Duration,
}

impl Limits {
    pub(crate) fn of<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Limits {
        Limits {
            timeout: step.timeout_sec.filter(|t| *t > 0).map(Duration::from_secs),
            stop_signal: step
                .signal_on_stop
                .as_deref()
                .and_then(trellis_executor::parse_signal)
                .unwrap_or(Signal::SIGTERM),
            grace: Duration::from_secs(env.dag.max_clean_up_time_sec),
        }
    }
}

/// The variables a step sets for itself: the run's (params, `env:`, secrets), the
/// step's own `env:` and its name — not this host's environment.
pub(crate) fn step_env<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
) -> indexmap::IndexMap<String, String> {
    let mut vars: indexmap::IndexMap<String, String> = env.scope.all_vars().into_iter().collect();
    let mut scope = env.scope.clone();
    for (k, v) in &step.env {
        let value = scope.expand(v, true);
        scope.set_local(k, value.clone());
        vars.insert(k.clone(), value);
    }
    vars.insert("DAG_RUN_STEP_NAME".into(), step.name.clone());
    vars
}

/// A local process's environment: this host's (without `SECRET_VARS`), then the step's
/// own variables and its log files.
fn process_env<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    stdout: &Path,
    stderr: &Path,
) -> Vec<(String, String)> {
    let mut vars: indexmap::IndexMap<String, String> =
        env.engine.opts.base_env.iter().cloned().collect();
    vars.extend(step_env(env, step));
    vars.insert(
        "DAG_RUN_STEP_STDOUT_FILE".into(),
        stdout.display().to_string(),
    );
    vars.insert(
        "DAG_RUN_STEP_STDERR_FILE".into(),
        stderr.display().to_string(),
    );
    vars.into_iter().collect()
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
        check_condition(env, c).await?;
    }
    Ok(())
}

/// With `expected`, compares the expanded condition; without, runs it as a command.
async fn check_condition<S: Store + ?Sized + 'static, E: Executor + 'static>(
    env: &StepEnv<S, E>,
    c: &Condition,
) -> Result<(), Error> {
    let held = match &c.expected {
        Some(expected) => {
            let subst = crate::subst::Subst {
                exec: &*env.engine.exec,
                base_env: &env.engine.opts.base_env,
                scope: &env.scope,
                dir: &env.attempt.dir,
                cancel: &env.cancel,
            };
            let got = subst.apply(&env.scope.expand(&c.condition, true)).await;
            // As Dagu: a variable may supply the `re:` itself (`expected: ${WANT}`).
            let want = match expected {
                Pattern::Literal(t) => Pattern::parse(&env.scope.expand(t, true)),
                regex => regex.map(|t| env.scope.expand(t, true)),
            };
            want.matches_exactly(&got)
        }
        None => {
            let dir = env.attempt.dir.join("conditions");
            let _ = std::fs::create_dir_all(&dir);
            let (out, err) = (dir.join("out"), dir.join("err"));
            let probe = Step::command("precondition", c.condition.clone());
            let specs = process_specs(env, &probe, &out, &err).unwrap_or_default();
            let mut ok = true;
            for spec in specs {
                ok &= env.engine.exec.run(spec, env.cancel.clone()).await == Outcome::Exited(0);
            }
            ok
        }
    };
    if held != c.negate {
        Ok(())
    } else {
        Err(Error::ConditionNotMet {
            condition: c.condition.clone(),
        })
    }
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
