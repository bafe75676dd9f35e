//! The validated workflow model. Loaders in `trellis-spec` build these types; the engine,
//! scheduler and cluster read them. Values that are expanded at run time (`${VAR}`,
//! backticks) are kept verbatim here.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::params::ParamSpec;

/// Ordered `KEY=value` pairs; order matters because later values may refer to earlier ones.
pub type EnvList = Vec<(String, String)>;

/// How steps are ordered when they do not say so themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DagType {
    /// Each step depends on the one before it (Dagu's default).
    #[default]
    Chain,
    /// Steps run as soon as their `depends` are done.
    Graph,
}

/// A workflow: its steps plus everything that shapes a run of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dag {
    pub name: String,
    pub description: Option<String>,
    pub group: Option<String>,
    #[serde(rename = "type")]
    pub dag_type: DagType,
    /// Labels (Dagu `labels`, legacy `tags`); a bare label has an empty value.
    pub labels: IndexMap<String, String>,
    pub env: EnvList,
    pub dotenv: Vec<String>,
    pub params: ParamSpec,
    pub handlers: Handlers,
    pub schedule: Schedules,
    pub skip_if_successful: bool,
    pub catchup_window_ms: Option<u64>,
    pub overlap_policy: OverlapPolicy,
    pub max_active_runs: Option<i64>,
    pub max_active_steps: Option<u32>,
    pub queue: Option<String>,
    pub worker_selector: WorkerSelector,
    pub timeout_sec: Option<u64>,
    pub delay_sec: Option<u64>,
    pub restart_wait_sec: Option<u64>,
    pub max_clean_up_time_sec: u64,
    pub max_output_size: u64,
    pub hist_retention_days: Option<u64>,
    pub hist_retention_runs: Option<u64>,
    pub log_dir: Option<String>,
    pub log_output: LogOutput,
    pub working_dir: Option<String>,
    pub shell: Option<Shell>,
    pub preconditions: Vec<Condition>,
    pub retry_policy: Option<RetryPolicy>,
    /// Executor defaults that apply to every step (`container`, `ssh`, `smtp`, ...), kept as
    /// given so that executors can read them.
    pub executor_defaults: IndexMap<String, Value>,
    /// Values resolved when a run starts, given to its steps as variables and masked
    /// wherever output is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    pub steps: Vec<Step>,
    /// Local sub-DAGs: the later documents of a multi-document file.
    pub local_dags: Vec<Dag>,
}

/// One entry of `secrets:`: the variable `name` gets the value `provider` finds under `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub provider: SecretProvider,
    pub key: String,
}

/// Where a secret's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretProvider {
    /// An environment variable of the process running the DAG.
    Env,
    /// A file's contents (one trailing newline dropped), e.g. a mounted secret.
    File,
}

/// The key of [`Dag::executor_defaults`] holding the DAG-level `container:`.
pub const RUN_CONTAINER_KEY: &str = "container";

/// Default values from Dagu's `internal/core/dag.go`.
pub const DEFAULT_MAX_OUTPUT_SIZE: u64 = 1024 * 1024;
pub const DEFAULT_MAX_CLEAN_UP_TIME_SEC: u64 = 5;
pub const DEFAULT_PARALLEL_MAX_CONCURRENT: u32 = 10;
pub const MAX_PARALLEL_MAX_CONCURRENT: u32 = 1000;

impl Dag {
    /// A DAG with Dagu's defaults and nothing else.
    pub fn empty(name: impl Into<String>) -> Dag {
        Dag {
            name: name.into(),
            max_output_size: DEFAULT_MAX_OUTPUT_SIZE,
            max_clean_up_time_sec: DEFAULT_MAX_CLEAN_UP_TIME_SEC,
            ..Dag::default()
        }
    }

    /// The most stdout a step may capture for `output:`; 0 means Dagu's default.
    pub fn output_limit(&self) -> u64 {
        match self.max_output_size {
            0 => DEFAULT_MAX_OUTPUT_SIZE,
            n => n,
        }
    }

    /// Finds a step by name, or by id when no name matches.
    pub fn step(&self, key: &str) -> Option<&Step> {
        let by_name = self.steps.iter().find(|s| s.name == key);
        by_name.or_else(|| self.steps.iter().find(|s| s.id.as_deref() == Some(key)))
    }

    /// The container every shell step of a run runs in (Dagu's DAG-level `container:`),
    /// as the loader normalised it (a mapping; a bare name became `{exec: name}`).
    pub fn run_container(&self) -> Option<&Value> {
        self.executor_defaults.get(RUN_CONTAINER_KEY)
    }

    /// Whether `step` runs in the run's container when the DAG has one: steps that run
    /// a command and name no place of their own.
    pub fn in_run_container(&self, step: &Step) -> bool {
        self.run_container().is_some()
            && step.executor.is_none()
            && matches!(
                step.action,
                Action::Commands { .. } | Action::Script { .. } | Action::Exec { .. }
            )
    }

    /// Finds a local sub-DAG (a later document of the same file) by name.
    pub fn local_dag(&self, name: &str) -> Option<&Dag> {
        self.local_dags.iter().find(|d| d.name == name)
    }
}

/// Lifecycle hooks. Each runs as a step named `onInit`, `onSuccess`, ... like Dagu's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handlers {
    pub init: Option<Box<Step>>,
    pub success: Option<Box<Step>>,
    pub failure: Option<Box<Step>>,
    pub abort: Option<Box<Step>>,
    pub exit: Option<Box<Step>>,
    pub wait: Option<Box<Step>>,
}

impl Handlers {
    /// The handlers that are set, with their Dagu node names.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Step)> {
        [
            ("onInit", &self.init),
            ("onSuccess", &self.success),
            ("onFailure", &self.failure),
            ("onAbort", &self.abort),
            ("onExit", &self.exit),
            ("onWait", &self.wait),
        ]
        .into_iter()
        .filter_map(|(name, step)| step.as_deref().map(|s| (name, s)))
    }
}

/// When the scheduler starts, stops or restarts a DAG.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedules {
    pub start: Vec<Schedule>,
    pub stop: Vec<Schedule>,
    pub restart: Vec<Schedule>,
}

impl Schedules {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.restart.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// A cron expression (5 or 6 fields) with an optional IANA timezone.
    Cron {
        expression: String,
        timezone: Option<String>,
    },
    /// A one-off run at an RFC 3339 instant.
    At { at: String },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    #[default]
    Skip,
    All,
    Latest,
}

/// Where a run (or a sub-DAG call) may execute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerSelector {
    /// Any worker, or the local process when there are none.
    #[default]
    Any,
    /// Always the main process.
    Local,
    /// Only workers that carry every one of these labels, with exactly these values.
    Labels(IndexMap<String, String>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogOutput {
    #[default]
    Separate,
    Merged,
}

/// A shell program and the arguments that come before the command (`bash -e`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shell {
    pub program: String,
    pub args: Vec<String>,
}

/// A guard: run when `condition` (expanded, or run as a command when no `expected` is
/// given) matches `expected` (`re:` for a regex); `negate` flips the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub condition: String,
    pub expected: Option<crate::pattern::Pattern>,
    pub negate: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub limit: u32,
    pub interval_sec: f64,
    /// Multiplier applied to the interval after each attempt; `None` means a fixed interval.
    pub backoff: Option<f64>,
    pub max_interval_sec: Option<f64>,
    /// Exit codes that are retried; empty means any failure.
    pub exit_codes: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatMode {
    /// Repeat while the condition holds (or the exit code matches).
    While,
    /// Repeat until the condition holds (or the exit code matches).
    Until,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepeatPolicy {
    pub mode: RepeatMode,
    pub interval_sec: f64,
    pub limit: Option<u32>,
    pub backoff: Option<f64>,
    pub max_interval_sec: Option<f64>,
    pub condition: Option<Condition>,
    pub exit_codes: Vec<i32>,
}

/// When a failed or skipped step lets the run go on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueOn {
    pub failure: bool,
    pub skipped: bool,
    pub exit_codes: Vec<i32>,
    /// Output patterns that let the run continue when found in the step's output.
    pub output: Vec<crate::pattern::Pattern>,
    pub mark_success: bool,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Shell command lines run one after another; stops at the first failure.
    Commands { commands: Vec<String> },
    /// A script written to a temporary file and run by `program` (or its shebang).
    Script {
        script: String,
        program: Option<String>,
    },
    /// A program run with explicit argv, no shell.
    Exec { program: String, args: Vec<String> },
    /// A sub-DAG run.
    Call(Call),
    /// Picks which downstream steps run by matching `value` against route patterns.
    Router { value: String, routes: Vec<Route> },
    /// Does nothing; used by steps that only publish `output` or wait for approval.
    Noop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub dag: String,
    /// Params as written (`"K=V K2=V2"`, or a map rendered to that form).
    pub params: String,
    pub parallel: Option<Parallel>,
    /// Put the child run in a queue for a scheduler and do not wait for it (Dagu's
    /// `dag.enqueue`), instead of running it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue: Option<Enqueue>,
}

/// Where an enqueued child run goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Enqueue {
    /// The queue; default the child DAG's own `queue`, else its name.
    pub queue: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parallel {
    pub items: ParallelItems,
    pub max_concurrent: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParallelItems {
    /// Items given in the file; each becomes one child run.
    List(Vec<Value>),
    /// A `${VAR}` holding a JSON array, resolved at run time.
    Variable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// An exact value, or a regex.
    pub pattern: crate::pattern::Pattern,
    pub targets: Vec<String>,
}

/// A step type other than the built-in shell (docker, ssh, http, ...), with its `with:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutorConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Value,
}

/// How a step publishes values to later steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// `output: VAR`: trimmed stdout becomes `${VAR}` and a run output.
    Variable(String),
    /// `output: {key: ...}`: step-scoped values read as `${id.output.key}`.
    Fields(IndexMap<String, OutputField>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputField {
    /// A literal JSON value; strings are expanded at run time.
    Literal(Value),
    /// A value taken from the step's stdout, stderr or a file.
    Capture {
        from: OutputSource,
        path: Option<String>,
        decode: OutputDecode,
        select: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSource {
    Stdout,
    Stderr,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputDecode {
    Text,
    Json,
    Yaml,
}

/// A human approval gate: the step runs, then the run waits for a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub prompt: Option<String>,
    pub input: Vec<String>,
    pub required: Vec<String>,
    pub rewind_to: Option<String>,
}

/// One unit of work in a DAG.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub id: Option<String>,
    pub description: Option<String>,
    pub action: Action,
    /// `None` for the built-in shell; the executor type and its `with:` otherwise.
    pub executor: Option<Box<ExecutorConfig>>,
    pub shell: Option<Shell>,
    pub working_dir: Option<String>,
    pub env: EnvList,
    pub output: Option<Box<Output>>,
    pub depends: Vec<String>,
    pub preconditions: Vec<Condition>,
    // Rare fields are boxed: a Step is copied per DAG and a 10 000-step DAG adds up.
    pub retry_policy: Option<Box<RetryPolicy>>,
    pub repeat_policy: Option<Box<RepeatPolicy>>,
    pub continue_on: ContinueOn,
    pub timeout_sec: Option<u64>,
    pub signal_on_stop: Option<String>,
    pub approval: Option<Box<Approval>>,
    pub worker_selector: WorkerSelector,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub log_output: Option<LogOutput>,
    pub mail_on_error: bool,
    /// Daggy generator: on success, stdout is a JSON task set whose tasks join the run.
    pub generator: bool,
}

impl Step {
    /// A shell step with no options, handy for tests and generated DAGs.
    pub fn command(name: impl Into<String>, command: impl Into<String>) -> Step {
        Step {
            name: name.into(),
            id: None,
            description: None,
            action: Action::Commands {
                commands: vec![command.into()],
            },
            executor: None,
            shell: None,
            working_dir: None,
            env: Vec::new(),
            output: None,
            depends: Vec::new(),
            preconditions: Vec::new(),
            retry_policy: None,
            repeat_policy: None,
            continue_on: ContinueOn::default(),
            timeout_sec: None,
            signal_on_stop: None,
            approval: None,
            worker_selector: WorkerSelector::Any,
            stdout: None,
            stderr: None,
            log_output: None,
            mail_on_error: false,
            generator: false,
        }
    }

    /// The executor type name: `command` for shell steps, else the configured type.
    pub fn executor_kind(&self) -> &str {
        match (self.executor.as_deref(), &self.action) {
            (Some(e), _) => &e.kind,
            (None, Action::Call(_)) => "dag",
            (None, Action::Router { .. }) => "router",
            (None, Action::Noop) => "noop",
            (None, _) => "command",
        }
    }
}
