//! The executor seam for steps that run somewhere other than a local process group: a
//! container, a Kubernetes Job, a Slurm job, a remote host. Two phases, so a step outlives
//! the process that started it: [`StepExecutor::start`] returns a durable [`Handle`] (the
//! engine records it with the step), and [`StepExecutor::wait`] attaches to a handle —
//! just started, or read back after the runner died — streams its logs from where the
//! step's log files end, and stops it on cancel or timeout.
//!
//! A new executor is one module: implement the trait and add it to [`Registry::builtin`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::{Mask, Outcome};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a started step lives, durable across restarts of whoever started it; kept in
/// the step's record.
pub use trellis_core::status::Handle;

/// What the step runs, as intent: the executor decides how (a container's command, a
/// batch script, a remote shell).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Whatever the target's default is (an image's own command).
    Default,
    /// A command line as written: the executor runs it through the shell its options
    /// name, or else splits it into words and runs them with no shell (as Dagu does).
    Line(String),
    /// A command line for a shell.
    Shell { shell: Vec<String>, command: String },
    /// A program and its arguments, no shell.
    Argv(Vec<String>),
    /// A script's text, run by `program` (a shell when `None`).
    Script {
        program: Option<String>,
        text: String,
    },
}

/// One try of one step, for an executor.
#[derive(Clone)]
pub struct StepRequest {
    /// A deterministic name for what the executor creates (run, attempt, step, try), so
    /// that a crash between starting and recording the handle is recovered by name.
    pub name: String,
    pub work: Work,
    /// Variables the step sets for itself (its `env:` and the run's), not the host's.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The step's `with:` (or v1 `executor.config`), checked by [`StepExecutor::check`].
    pub config: serde_json::Value,
    /// Log files, appended to; a reattached step continues after what they hold.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub timeout: Option<Duration>,
    pub stop_signal: Signal,
    pub grace: Duration,
    pub mask: Option<Arc<Mask>>,
    /// Labels the executor puts on what it creates (run id, step), for people and lookups.
    pub labels: BTreeMap<String, String>,
    /// Records a handle durably: an executor that can create its work before starting it
    /// calls this in between, so a runner that dies at any moment leaves a handle of work
    /// that either never started (and is started on resume) or runs (and is followed).
    pub record: Option<Recorder>,
}

impl std::fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("name", &self.name)
            .field("work", &self.work)
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .field("records_early", &self.record.is_some())
            .finish_non_exhaustive()
    }
}

/// See [`StepRequest::record`].
pub type Recorder = Arc<dyn Fn(Handle) -> BoxFuture<'static, ()> + Send + Sync>;

/// `path` against `base` when it is relative (and there is a base), else as given.
pub(crate) fn under(base: Option<&std::path::Path>, path: &str) -> PathBuf {
    let path = std::path::Path::new(path);
    match base {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

impl StepRequest {
    /// A path the step names, relative paths against its working dir.
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        under(self.working_dir.as_deref(), path)
    }

    /// Records `handle` through [`StepRequest::record`], when there is a recorder.
    pub async fn record(&self, handle: &Handle) {
        if let Some(record) = &self.record {
            record(handle.clone()).await;
        }
    }
}

/// The place every step of a run shares (Dagu's DAG-level `container:`), asked for once
/// before the run's first step.
#[derive(Clone, Debug)]
pub struct SharedRequest {
    /// A deterministic name (per run), so that a resumed run finds its place again.
    pub name: String,
    /// The DAG-level options, checked by [`StepExecutor::check_shared`].
    pub config: serde_json::Value,
    /// The DAG's working dir (relative volumes resolve against it).
    pub working_dir: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
}

/// A shared place, ready: steps run there with `step_config` as their `with:`.
#[derive(Clone, Debug)]
pub struct Shared {
    pub handle: Handle,
    pub step_config: serde_json::Value,
    /// Removed when the run ends (else kept, or not this run's to remove).
    pub remove: bool,
}

/// Why a step could not start; the message is shown to the user as the step's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// A place steps run that is not this machine's process table.
pub trait StepExecutor: Send + Sync {
    /// The step type this executor serves (`docker`).
    fn kind(&self) -> &'static str;

    /// Checks a step's `with:` before any run: an error names the key and what is wrong.
    fn check(&self, config: &serde_json::Value) -> Result<(), String>;

    /// Creates and starts the step's work; returns once it is running.
    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>>;

    /// Finds a step's work by the deterministic name of `req` (after a crash between
    /// start and recording its handle). `None` when nothing by that name exists.
    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>>;

    /// Follows a started step to its end: logs into the step's files (after what they
    /// already hold), the stop signal and then a kill on cancel or timeout.
    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome>;

    /// Finishes the clean-up of ended steps left to the background (removing their
    /// containers); a run calls it before it ends, so a process that exits then leaves
    /// nothing behind.
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Whether what the options name can be reached now (the Docker API answers), for
    /// `trellis validate --check-runtime`.
    fn probe<'a>(&'a self, _config: &'a serde_json::Value) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Checks DAG-level options for a place every step of a run shares.
    fn check_shared(&self, _config: &serde_json::Value) -> Result<(), String> {
        Err(format!("`{}` cannot hold a whole run", self.kind()))
    }

    /// Makes (or, for a resumed run, finds) the place every step of a run shares.
    fn open_shared<'a>(
        &'a self,
        _req: &'a SharedRequest,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Shared, StartError>> {
        let kind = self.kind();
        Box::pin(async move { Err(StartError(format!("`{kind}` cannot hold a whole run"))) })
    }

    /// Ends a run's shared place (unless it is kept).
    fn close_shared<'a>(&'a self, _shared: &'a Shared) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// A poller's wait between two reads of a step's state: `None` after `pause`, or how the
/// step ends when its deadline passes or it is cancelled first.
pub(crate) async fn pause(
    pause: Duration,
    deadline: Option<tokio::time::Instant>,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(pause) => None,
        _ = until_deadline => Some(Outcome::TimedOut),
        _ = cancel.cancelled() => Some(Outcome::Cancelled),
    }
}

/// For the loader (`trellis_spec::set_executor_check`): `None` when no built-in
/// executor serves `kind`, else its check of the step's `with:`.
pub fn check_step(kind: &str, config: &serde_json::Value) -> Option<Result<(), String>> {
    static BUILTIN: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(Registry::builtin);
    BUILTIN.get(kind).map(|e| e.check(config))
}

/// For the loader (`trellis_spec::set_dag_option_check`): the DAG-level options the
/// executors read (`container:`, `registry_auths:`, and `kubernetes:` / `slurm:` / `ssh:`, laid
/// under each such step's `with:`); `None` for any other key.
pub fn check_dag_option(key: &str, value: &serde_json::Value) -> Option<Result<(), String>> {
    match key {
        "container" => Some(crate::docker::Docker::default().check_shared(value)),
        "registry_auths" => Some(crate::docker_auth::parse(Some(value)).map(|_| ())),
        "kubernetes" => Some(crate::kube_config::Config::parse_defaults(value).map(|_| ())),
        "slurm" => Some(crate::slurm_config::Config::parse(value).map(|_| ())),
        "ssh" => Some(crate::ssh::check_defaults(value)),
        "smtp" => Some(crate::mail::Smtp::parse(value).map(|_| ())),
        "mail_on" | "error_mail" | "info_mail" => Some(crate::mail::check_notice(key, value)),
        _ => None,
    }
}

/// A name Docker (and Kubernetes, Slurm) accept: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most
/// 128 characters; a long one keeps a hash of the whole so that it stays unique.
pub fn external_name(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 128 {
        return clean;
    }
    let hash = clean.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{hash:016x}", &clean[..110])
}

/// What the config file says about executors (`executors:`): the executor of command
/// steps that name none, and options under every step's `with:` by step type.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub default: Option<String>,
    pub with: BTreeMap<String, serde_json::Value>,
}

static DEFAULTS: std::sync::OnceLock<Defaults> = std::sync::OnceLock::new();

/// Sets [`Defaults`] for every [`Registry::builtin`] of this process (from `main`, once).
pub fn set_defaults(defaults: Defaults) {
    let _ = DEFAULTS.set(defaults);
}

/// `with:` over `defaults` (a mapping), key by key.
pub fn lay_over(defaults: &serde_json::Value, with: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(defaults) = defaults else {
        return with;
    };
    let mut merged = defaults.clone();
    match with {
        serde_json::Value::Object(own) => merged.extend(own),
        serde_json::Value::Null => {}
        other => return other,
    }
    serde_json::Value::Object(merged)
}

/// The step executors built into this binary, by step type.
#[derive(Clone)]
pub struct Registry {
    by_kind: BTreeMap<&'static str, Arc<dyn StepExecutor>>,
    defaults: Defaults,
}

/// The built-in executors.
impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_kind.keys()).finish()
    }
}

impl Registry {
    /// Every executor this build has. `container` is Dagu's other name for `docker`.
    pub fn builtin() -> Registry {
        let mut registry = Registry::empty();
        let docker: Arc<dyn StepExecutor> = Arc::new(crate::docker::Docker::from_env());
        registry.add_as("docker", docker.clone());
        registry.add_as("container", docker);
        registry.add_as("slurm", Arc::new(crate::slurm::Slurm));
        let kubernetes: Arc<dyn StepExecutor> = Arc::new(crate::kubernetes::Kubernetes::default());
        registry.add_as("kubernetes", kubernetes.clone());
        registry.add_as("k8s", kubernetes);
        // In-process actions, each under its step type.
        registry.add_action(crate::http::Http);
        registry.add_action(crate::jq::Jq);
        registry.add_action(crate::state::State);
        registry.add_action(crate::ssh::Ssh);
        registry.add_action(crate::sftp::Sftp);
        registry.add_action(crate::mail::MailStep);
        registry.add_action(crate::wait::Wait);
        registry.add_action(crate::wait::Log);
        registry.defaults = DEFAULTS.get().cloned().unwrap_or_default();
        registry
    }

    pub fn empty() -> Registry {
        Registry {
            by_kind: BTreeMap::new(),
            defaults: Defaults::default(),
        }
    }

    /// The executor of command steps that name none (`executors.default`), if any.
    pub fn default_kind(&self) -> Option<&str> {
        self.defaults.default.as_deref()
    }

    /// A step's `with:` over the config's defaults for its type.
    pub fn with_defaults(&self, kind: &str, with: serde_json::Value) -> serde_json::Value {
        let canonical = self.get(kind).map_or(kind, |e| e.kind());
        let defaults = self.defaults.with.get(kind);
        match defaults.or_else(|| self.defaults.with.get(canonical)) {
            Some(defaults) => lay_over(defaults, with),
            None => with,
        }
    }

    fn add_action<A: crate::inproc::Action>(&mut self, action: A) {
        let kind = action.kind();
        self.add_as(kind, Arc::new(crate::inproc::InProcess::new(action)));
    }

    pub fn add_as(&mut self, kind: &'static str, executor: Arc<dyn StepExecutor>) {
        self.by_kind.insert(kind, executor);
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn StepExecutor>> {
        self.by_kind.get(kind)
    }

    /// Waits for every executor's background clean-up ([`StepExecutor::settle`]).
    pub async fn settle(&self) {
        for executor in self.by_kind.values() {
            executor.settle().await;
        }
    }

    /// The step types served, for messages.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }
}
