//! The run driver: executes one DAG run over an [`Executor`] and reports every change to a
//! [`Store`]. It never writes run files itself, so the same driver runs inside `trellis
//! start` today and inside a remote worker later.
//!
//! Semantics follow Dagu: a failed dependency aborts its dependents, a skipped one skips
//! them (unless `continue_on`), handlers run at the end with `DAG_RUN_STATUS`, sub-DAG calls
//! are runs of their own nested under the parent.

mod call;
mod elsewhere;
mod error;
mod expand;
mod journal;
mod links;
mod notify;
mod output;
mod process;
mod remote;
mod run_container;
mod setup;
mod step;
mod subst;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_core::params::ParamValue;
use trellis_core::status::{RunRecord, Status, StepRecord, final_status};
use trellis_core::{Dag, Output, Step};
use trellis_executor::Executor;
use trellis_store::{Attempt, Entry, Store};

pub use error::Error;
pub use expand::{Scope, StepVars};
pub use journal::{blocking_section, failed_writes};
pub use remote::{EnqueueHandle, Enqueuer, Remote, RemoteChild, RemoteError, RemoteHandle};

use crate::journal::Journal;
use crate::links::{Links, step_limit};
use crate::setup::{initial_scope, keep_settled, resolve_env, resolve_secrets};

/// Settings shared by every run the engine drives.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directory of the DAG file, where `call:` looks for `<name>.yaml`.
    pub dags_dir: Option<PathBuf>,
    /// Environment inherited by every step (typically the caller's).
    pub base_env: Vec<(String, String)>,
    /// The worker running the engine (recorded on the run and each step), when not local.
    pub worker_id: Option<String>,
    /// Where `call` steps with a label `worker_selector` send their child runs.
    pub remote: Option<RemoteHandle>,
    /// Where `dag.enqueue` steps put their runs (a store with queues); without it they
    /// fail with the reason.
    pub enqueue: Option<EnqueueHandle>,
    /// Executors of step types other than the local shell (`docker`), by type.
    pub executors: trellis_executor::Registry,
}

/// Credentials Trellis reads from its environment that steps must not see (an operator's
/// step could read the admin token or the cluster signing key).
pub const SECRET_VARS: &[&str] = &[
    "TRELLIS_AUTH_TOKEN",
    "TRELLIS_AUTH_BASIC_USERNAME",
    "TRELLIS_AUTH_BASIC_PASSWORD",
    "TRELLIS_COORDINATOR_SIGNING_KEY",
    // Holds the database password; `trellis` processes get it back explicitly.
    "TRELLIS_DATABASE_URL",
];

/// This process's environment without [`SECRET_VARS`]: what steps inherit.
pub fn inherited_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| !SECRET_VARS.contains(&k.as_str()))
        .collect()
}

/// Drives runs. Cheap to clone.
pub struct Engine<S: ?Sized, E> {
    store: Arc<S>,
    exec: Arc<E>,
    opts: Arc<Options>,
}

impl<S: ?Sized, E> Clone for Engine<S, E> {
    fn clone(&self) -> Self {
        Engine {
            store: self.store.clone(),
            exec: self.exec.clone(),
            opts: self.opts.clone(),
        }
    }
}

/// A run to start.
/// Owned, so that a run can be spawned as a task of its own.
pub struct RunRequest {
    pub dag: Arc<Dag>,
    /// Local sub-DAGs visible to `call:` (the root file's later documents).
    pub locals: Arc<Vec<Dag>>,
    pub params: Vec<ParamValue>,
    pub run_id: trellis_core::ids::RunId,
    pub parent: Option<Attempt>,
    /// Set for `retry`: the same run id, a new attempt that keeps what already succeeded.
    pub retry: Option<Retry>,
    /// Extra variables for every step (a parallel child's `ITEM`).
    pub env: Vec<(String, String)>,
    /// The run was enqueued, so its run directory exists: add an attempt to it.
    pub queued: bool,
}

/// What a retry starts from.
pub struct Retry {
    pub previous: RunRecord,
    /// Re-run this step and everything after it; `None` re-runs what did not succeed.
    pub from_step: Option<String>,
}

/// One step's settled result, sent back to the run loop.
pub(crate) struct Done {
    index: usize,
    record: StepRecord,
    vars: StepVars,
    /// Router decisions: steps to skip.
    skip: Vec<String>,
    /// Steps a Daggy generator produced.
    generated: Vec<Step>,
}

impl<S: Store + ?Sized + 'static, E: Executor + 'static> Engine<S, E> {
    pub fn new(store: Arc<S>, exec: Arc<E>, opts: Options) -> Self {
        Engine {
            store,
            exec,
            opts: Arc::new(opts),
        }
    }

    /// [`Engine::run`] as a boxed `Send` future, for sub-DAG runs (async recursion).
    pub fn run_boxed<'a>(
        &'a self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<RunRecord, trellis_store::Error>> + Send + 'a>,
    > {
        Box::pin(self.run(req, cancel))
    }

    /// Runs a DAG to the end (or until `cancel`) and returns its final record.
    pub async fn run(
        &self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> Result<RunRecord, trellis_store::Error> {
        let (attempt, mut run) = self.begin(&req).await?;
        let scope = initial_scope(&req, &run, &attempt, self.opts.dags_dir.as_deref());
        let base = &self.opts.base_env;
        resolve_env(&req, &scope, &*self.exec, base, &attempt, &cancel).await;
        // After `env:`, so no backtick command there can read a secret.
        let (mask, secret_error) = match resolve_secrets(&req.dag, &scope) {
            Ok(mask) => (mask, None),
            Err(e) => (None, Some(e)),
        };
        if let Some(retry) = &req.retry {
            keep_settled(&req.dag, retry, &mut run, &scope);
        }
        let journal = Journal::start(self.store.clone(), attempt.clone());
        let mut ctx = RunCtx {
            engine: self.clone(),
            dag: req.dag.clone(),
            locals: req.locals.clone(),
            attempt,
            scope,
            cancel,
            generated: Vec::new(),
            journal,
            unmet_precondition: false,
            mask,
            secret_error,
            started: mpsc::unbounded_channel(),
            container: None,
            run_container: None,
        };
        let outcome = ctx.drive(&mut run).await;
        run.status = outcome;
        ctx.handlers(&mut run).await;
        notify::run_ended(&ctx, &mut run).await;
        if let Some(container) = ctx.container.take() {
            container.close().await;
        }
        // Containers of finished steps, removed in the background, are gone before the
        // run's last record (and before a `trellis start` exits).
        self.opts.executors.settle().await;
        run.finished_at = Some(now());
        run.warnings.extend(ctx.journal.flush().await);
        let RunCtx { attempt, .. } = ctx;
        let (_, run) = self.write_snapshot(attempt, run).await?;
        Ok(run)
    }
}

/// A step's log file name in its attempt's log dir: `<safe name>.out` or `.err`.
pub(crate) fn log_file_name(step: &str, ext: &str) -> String {
    format!("{}.{ext}", trellis_store::safe_name(step))
}

pub(crate) fn now() -> trellis_core::ids::Stamp {
    jiff::Timestamp::now().into()
}

/// The state of one run while it is driven.
pub(crate) struct RunCtx<S: ?Sized, E> {
    engine: Engine<S, E>,
    /// Shared with running step tasks: a snapshot per step must not copy every step.
    dag: Arc<Dag>,
    locals: Arc<Vec<Dag>>,
    attempt: Attempt,
    scope: Scope,
    cancel: CancellationToken,
    /// Steps produced by the generator that settled last, waiting to join the DAG.
    generated: Vec<Step>,
    /// Where the run's entries go (written by a task of their own).
    journal: Journal,
    /// The DAG's preconditions did not hold, so the run never started.
    unmet_precondition: bool,
    /// The run's secret values, masked in what its steps leave behind.
    mask: Option<Arc<trellis_executor::Mask>>,
    /// Why a secret could not be resolved: the run fails before any step.
    secret_error: Option<String>,
    /// The DAG-level `container:`, once open (after the DAG's preconditions hold).
    container: Option<run_container::RunContainer>,
    /// The `type`/`with:` of steps that run in it.
    run_container: Option<Arc<trellis_core::ExecutorConfig>>,
    /// Handles of started steps, from their tasks (see [`StepEnv::started`]).
    started: (StartedTx, mpsc::UnboundedReceiver<Started>),
}

impl<S: Store + ?Sized + 'static, E: Executor + 'static> RunCtx<S, E> {
    fn save_step(&self, run: &RunRecord, index: usize) {
        let entry = Entry::Step {
            index,
            step: run.steps[index].clone(),
        };
        self.journal.push(entry);
    }

    /// Preconditions, init handler, delay, then the steps. Returns the run's status.
    async fn drive(&mut self, run: &mut RunRecord) -> Status {
        if let Some(error) = self.secret_error.take() {
            run.error = Some(error);
            return Status::Failed;
        }
        let pre = self.dag.preconditions.clone();
        if let Err(reason) = step::check_conditions(self, &pre).await {
            run.error = Some(format!("precondition not met: {reason}"));
            self.unmet_precondition = true;
            return Status::Aborted;
        }
        if let Err(error) = self.open_container().await {
            run.error = Some(error);
            return Status::Failed;
        }
        if let Some(init) = self.dag.handlers.init.clone() {
            let rec = self
                .run_handler(run, "onInit", &init, Status::Running)
                .await;
            if matches!(
                rec.status,
                Status::Failed | Status::Aborted | Status::Cancelled
            ) {
                run.error = Some(format!(
                    "init handler failed: {}",
                    rec.error.unwrap_or_default()
                ));
                return Status::Aborted;
            }
        }
        if let Some(delay) = self.dag.delay_sec.filter(|d| *d > 0) {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(delay)) => {}
                _ = self.cancel.cancelled() => return Status::Cancelled,
            }
        }
        let timeout = self
            .dag
            .timeout_sec
            .filter(|t| *t > 0)
            .map(std::time::Duration::from_secs);
        let cancel = self.cancel.clone();
        let timer = tokio::spawn(async move {
            if let Some(t) = timeout {
                tokio::time::sleep(t).await;
                cancel.cancel();
            }
        });
        self.run_steps(run).await;
        timer.abort();
        let status = final_status(&run.steps);
        if timeout.is_some() && self.cancel.is_cancelled() && status == Status::Cancelled {
            run.error = Some("dag timed out".into());
            return Status::Failed;
        }
        if run.error.is_none() {
            run.error = first_error(run);
        }
        status
    }

    /// Starts steps as their dependencies settle, at most `limit` at a time. Each step's
    /// count of unsettled dependencies is kept, so a settle costs O(dependents), and a
    /// 10 000-step chain is linear rather than a rescan per step.
    async fn run_steps(&mut self, run: &mut RunRecord) {
        let mut graph = Links::new(&self.dag, run);
        let limit = step_limit(self.dag.max_active_steps);
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        let mut running = 0usize;
        let mut skip_by_router: Vec<String> = Vec::new();
        loop {
            // A slow or absent store holds new steps here, never a runtime thread.
            self.journal.room().await;
            while running < limit {
                let Some(i) = graph.ready.pop_front() else {
                    break;
                };
                if run.steps[i].status != Status::NotStarted {
                    continue;
                }
                match self.readiness(run, i, &graph.index, &skip_by_router) {
                    Ready::Wait => {}
                    Ready::Settle(status) => {
                        run.steps[i].status = status;
                        self.save_step(run, i);
                        graph.settled(i);
                    }
                    Ready::Go => {
                        run.steps[i].status = Status::Running;
                        run.steps[i].started_at = Some(now());
                        run.steps[i].worker_id = self.engine.opts.worker_id.clone();
                        // Known now, so `logs --follow` and the UI can tail a running step.
                        let log_dir = &self.attempt.log_dir;
                        let step = &mut run.steps[i];
                        let log = |ext: &str| log_dir.join(log_file_name(&step.name, ext));
                        let (out, err) = (log("out"), log("err"));
                        step.stdout = Some(out.display().to_string());
                        step.stderr = Some(err.display().to_string());
                        let resume = step.handle.clone();
                        self.save_step(run, i);
                        running += 1;
                        step::spawn(self, i, resume, tx.clone());
                    }
                }
            }
            if running == 0 && graph.ready.is_empty() {
                break;
            }
            if running == 0 {
                continue;
            }
            let done = loop {
                tokio::select! {
                    // Before any step's end: a step says where it runs before it ends.
                    biased;
                    Some(said) = self.started.1.recv() => match said {
                        Started::Handle(i, handle, written) => {
                            self.record_handle(run, i, handle);
                            if let Some(written) = written {
                                self.journal.flush_then(written);
                            }
                        }
                        Started::Try(i, record) if i < run.steps.len() => {
                            run.steps[i] = *record;
                            self.save_step(run, i);
                        }
                        Started::Try(..) => {}
                    },
                    done = rx.recv() => break done,
                }
            };
            let Some(done) = done else { break };
            running -= 1;
            let index = done.index;
            let generated = std::mem::take(&mut self.generated);
            self.settle(run, done, &mut skip_by_router);
            let generated = std::mem::replace(&mut self.generated, generated);
            if generated.is_empty() {
                graph.settled(index);
            } else {
                // Rebuilding recounts every dependency, the generator's included.
                self.grow(run, &mut graph, index, generated);
            }
        }
    }

    /// Adds the steps a Daggy generator produced: each runs after the generator, and
    /// the generator's dependents wait for them too.
    fn grow(&mut self, run: &mut RunRecord, graph: &mut Links, generator: usize, steps: Vec<Step>) {
        let dag = Arc::make_mut(&mut self.dag);
        let parent = dag.steps[generator].name.clone();
        let children: Vec<usize> = graph.dependents[generator].clone();
        let first = dag.steps.len();
        for mut step in steps {
            if step.depends.is_empty() {
                step.depends.push(parent.clone());
            }
            run.steps.push(StepRecord {
                name: step.name.clone(),
                ..StepRecord::default()
            });
            dag.steps.push(step);
        }
        let leaves: Vec<String> = dag.steps[first..]
            .iter()
            .filter(|s| {
                !dag.steps[first..]
                    .iter()
                    .any(|o| o.depends.contains(&s.name))
            })
            .map(|s| s.name.clone())
            .collect();
        for &child in &children {
            dag.steps[child].depends.extend(leaves.iter().cloned());
        }
        *graph = Links::rebuild(&self.dag, run, graph);
        self.journal.push(Entry::Snapshot(Box::new(run.clone())));
    }

    /// Records where a step runs (a container id) while it runs, so that a runner that
    /// dies now leaves a record a new runner can reattach from.
    fn record_handle(&self, run: &mut RunRecord, index: usize, handle: trellis_executor::Handle) {
        if let Some(step) = run.steps.get_mut(index) {
            step.handle = Some(handle);
            self.save_step(run, index);
        }
    }

    fn settle(&mut self, run: &mut RunRecord, done: Done, skip: &mut Vec<String>) {
        let step = &self.dag.steps[done.index];
        if let (Some(Output::Variable(var)), Some(value)) =
            (step.output.as_deref(), &done.vars.output)
            && (matches!(
                done.record.status,
                Status::Succeeded | Status::PartiallySucceeded | Status::Waiting
            ) || done.record.continued)
        {
            self.scope.set_var(var, value.clone());
            run.outputs.insert(var.clone(), value.clone());
        }
        if let Some(id) = &step.id {
            self.scope.set_step(id, &step.name, done.vars.clone());
        }
        self.scope.set_step(&step.name, &step.name, done.vars);
        skip.extend(done.skip);
        self.generated = done.generated;
        run.steps[done.index] = done.record;
        self.save_step(run, done.index);
    }

    fn readiness(
        &self,
        run: &RunRecord,
        i: usize,
        index: &HashMap<String, usize>,
        skip: &[String],
    ) -> Ready {
        if self.cancel.is_cancelled() {
            return Ready::Settle(Status::Cancelled);
        }
        let step = &self.dag.steps[i];
        let mut skipped = skip.contains(&step.name);
        for dep in &step.depends {
            let Some(&d) = index.get(dep) else { continue };
            let (rec, dstep) = (&run.steps[d], &self.dag.steps[d]);
            match rec.status {
                Status::Succeeded | Status::PartiallySucceeded => {}
                Status::Failed if rec.continued => {}
                Status::Skipped if dstep.continue_on.skipped => {}
                Status::Skipped => skipped = true,
                Status::Failed | Status::Aborted => return Ready::Settle(Status::Aborted),
                Status::Cancelled => return Ready::Settle(Status::Cancelled),
                _ => return Ready::Wait,
            }
        }
        if skipped {
            Ready::Settle(Status::Skipped)
        } else {
            Ready::Go
        }
    }

    /// success/failure/abort by outcome, then exit; wait when the run is waiting.
    async fn handlers(&mut self, run: &mut RunRecord) {
        let handlers = self.dag.handlers.clone();
        let status = run.status;
        let by_outcome = match status {
            Status::Succeeded | Status::PartiallySucceeded => {
                handlers.success.as_deref().map(|s| ("onSuccess", s))
            }
            Status::Failed => handlers.failure.as_deref().map(|s| ("onFailure", s)),
            Status::Aborted | Status::Cancelled => {
                handlers.abort.as_deref().map(|s| ("onAbort", s))
            }
            Status::Waiting => handlers.wait.as_deref().map(|s| ("onWait", s)),
            _ => None,
        };
        // A run whose preconditions were not met never started: no handler runs (Dagu).
        if self.unmet_precondition {
            return;
        }
        if let Some((name, step)) = by_outcome {
            self.run_handler(run, name, step, status).await;
        }
        if let Some(exit) = handlers.exit.as_deref() {
            self.run_handler(run, "onExit", exit, status).await;
        }
    }

    async fn run_handler(
        &mut self,
        run: &mut RunRecord,
        name: &str,
        step: &Step,
        status: Status,
    ) -> StepRecord {
        let mut step = step.clone();
        step.name = name.to_string();
        self.scope.set_var("DAG_RUN_STATUS", status.as_str().into());
        let waiting: Vec<&str> = run
            .steps
            .iter()
            .filter(|s| s.status == Status::Waiting)
            .map(|s| s.name.as_str())
            .collect();
        self.scope.set_var("DAG_WAITING_STEPS", waiting.join(","));
        let done = step::execute(self.snapshot(), step.clone(), usize::MAX, None).await;
        let mut rec = done.record;
        rec.name = name.to_string();
        if let (Some(Output::Variable(_)), Some(value)) =
            (step.output.as_deref(), &done.vars.output)
        {
            rec.output = Some(value.clone());
        }
        run.handlers.insert(handler_key(name).into(), rec.clone());
        self.journal.push(Entry::Handler {
            name: handler_key(name).into(),
            step: rec.clone(),
        });
        rec
    }

    /// What a step task needs, detached from `self` so tasks can run concurrently.
    fn snapshot(&self) -> Arc<StepEnv<S, E>> {
        Arc::new(StepEnv {
            engine: self.engine.clone(),
            dag: self.dag.clone(),
            locals: self.locals.clone(),
            attempt: self.attempt.clone(),
            scope: self.scope.clone(),
            cancel: self.cancel.clone(),
            mask: self.mask.clone(),
            started: self.started.0.clone(),
            run_container: self.run_container.clone(),
        })
    }
}

/// The read-only context a step runs in.
pub(crate) struct StepEnv<S: ?Sized, E> {
    engine: Engine<S, E>,
    dag: Arc<Dag>,
    locals: Arc<Vec<Dag>>,
    attempt: Attempt,
    scope: Scope,
    cancel: CancellationToken,
    mask: Option<Arc<trellis_executor::Mask>>,
    /// Tells the run loop a step's handle, to be recorded while the step runs.
    started: StartedTx,
    /// The `type`/`with:` of steps that run in the DAG-level `container:`.
    run_container: Option<Arc<trellis_core::ExecutorConfig>>,
}

/// What a running step tells the run loop before it ends.
pub(crate) enum Started {
    /// The step (by index) started where it runs, and how to find it again; the sender,
    /// when given, hears once the handle is written.
    Handle(
        usize,
        trellis_executor::Handle,
        Option<tokio::sync::oneshot::Sender<()>>,
    ),
    /// A try of the step ended and another follows (`Retrying`), or began (`Running`,
    /// its count raised): recorded, so every try shows in the run's history.
    Try(usize, Box<StepRecord>),
}
type StartedTx = mpsc::UnboundedSender<Started>;

enum Ready {
    Wait,
    Settle(Status),
    Go,
}

fn handler_key(node: &str) -> &'static str {
    match node {
        "onInit" => "on_init",
        "onSuccess" => "on_success",
        "onFailure" => "on_failure",
        "onAbort" => "on_abort",
        "onExit" => "on_exit",
        _ => "on_wait",
    }
}

fn first_error(run: &RunRecord) -> Option<String> {
    run.steps
        .iter()
        .find(|s| s.status == Status::Failed && !s.continued)
        .or_else(|| run.steps.iter().find(|s| s.status == Status::Failed))
        .and_then(|s| s.error.clone().map(|e| format!("step {}: {e}", s.name)))
}

/// Names a run id: UUIDv7, time-ordered.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
