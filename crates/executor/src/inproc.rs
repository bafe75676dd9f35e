//! Actions that run inside the runner's own process (`http`, `jq`, `state.*`, `mail`,
//! `ssh`): an [`Action`] is a future that writes the step's output, and [`InProcess`]
//! puts it on the executor seam. Its handle names a task of this process, so a runner
//! that died took the action with it: `find` then answers `None` and the resumed run
//! starts the try again, as it does a local process that died with its runner.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::seam::{BoxFuture, Handle, StartError, StepExecutor, StepRequest};

/// One kind of in-process step.
pub(crate) trait Action: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Checks the step's `with:` at load time.
    fn check(&self, config: &serde_json::Value) -> Result<(), String>;

    /// Whether a stopped action undoes something elsewhere (a remote process) and so is
    /// given its grace period (and time to reach the host) before it is dropped; others
    /// are dropped at once.
    fn cleans_up(&self) -> bool {
        false
    }

    /// Does the work. `cancel` fires on stop or timeout: an action with something to
    /// undo elsewhere (a remote process) does it and returns; others are dropped after
    /// the grace period.
    fn run(
        self: Arc<Self>,
        req: StepRequest,
        out: Output,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome>;
}

/// A step's stdout and stderr log files, written through the run's secret mask. With a
/// mask, what could be the start of a secret is held back until the next write (or the
/// end) shows it is not, so a secret written in pieces — a PEM key a remote command prints
/// line by line — is still hidden whole, as the local executor's copier does.
pub(crate) struct Output {
    files: [std::fs::File; 2],
    mask: Option<Arc<crate::Mask>>,
    pending: [Vec<u8>; 2],
}

const OUT: usize = 0;
const ERR: usize = 1;

impl Output {
    fn open(req: &StepRequest) -> std::io::Result<Output> {
        let open = |p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        Ok(Output {
            files: [open(&req.stdout)?, open(&req.stderr)?],
            mask: req.mask.clone().filter(|m| !m.is_empty()),
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn write(&mut self, stream: usize, data: &[u8]) -> std::io::Result<()> {
        let Some(mask) = &self.mask else {
            return self.files[stream].write_all(data);
        };
        let pending = &mut self.pending[stream];
        pending.extend_from_slice(data);
        let (masked, used) = mask.redact(pending, false);
        pending.drain(..used);
        self.files[stream].write_all(&masked)
    }

    /// Appends to the step's stdout (its output, when the step has `output:`).
    pub(crate) fn out(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write(OUT, data)
    }

    /// Appends to the step's stderr (what the step's error shows).
    pub(crate) fn err(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write(ERR, data)
    }

    /// The outcome of an action that either did its work or says why not.
    pub(crate) fn end(&mut self, done: Result<(), String>) -> Outcome {
        match done {
            Ok(()) => Outcome::Exited(0),
            Err(why) => self.fail(why),
        }
    }

    /// Writes `why` to stderr and returns the failed outcome carrying it.
    pub(crate) fn fail(&mut self, why: impl Into<String>) -> Outcome {
        let why = why.into();
        let _ = self.err(format!("{why}\n").as_bytes());
        let reason = match &self.mask {
            Some(mask) => mask.apply(&why),
            None => why,
        };
        Outcome::Failed {
            code: Some(1),
            reason,
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let Some(mask) = &self.mask else { return };
        for stream in [OUT, ERR] {
            if !self.pending[stream].is_empty() {
                let (masked, _) = mask.redact(&self.pending[stream], true);
                let _ = self.files[stream].write_all(&masked);
            }
        }
    }
}

struct Task {
    join: JoinHandle<Outcome>,
    cancel: CancellationToken,
}

/// An [`Action`] on the executor seam.
pub(crate) struct InProcess<A> {
    action: Arc<A>,
    tasks: Mutex<HashMap<String, Task>>,
}

impl<A: Action> InProcess<A> {
    pub(crate) fn new(action: A) -> InProcess<A> {
        InProcess {
            action: Arc::new(action),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<A: Action> StepExecutor for InProcess<A> {
    fn kind(&self) -> &'static str {
        self.action.kind()
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        self.action.check(config)
    }

    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>> {
        Box::pin(async move {
            self.action.check(&req.config).map_err(StartError)?;
            let out = Output::open(req)
                .map_err(|e| StartError(format!("cannot open the step's log: {e}")))?;
            let cancel = CancellationToken::new();
            let work = self.action.clone().run(req.clone(), out, cancel.clone());
            let join = tokio::spawn(work);
            self.tasks().insert(req.name.clone(), Task { join, cancel });
            Ok(Handle::new(self.action.kind(), req.name.clone()))
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        let found = self.tasks().contains_key(&req.name);
        Box::pin(async move { found.then(|| Handle::new(self.action.kind(), req.name.clone())) })
    }

    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(task) = self.tasks().remove(&handle.id) else {
                return Outcome::Lost("the runner that ran this step is gone".into());
            };
            let grace = if self.action.cleans_up() {
                // The grace period on the host, plus a connection to say so.
                req.grace + std::time::Duration::from_secs(30)
            } else {
                std::time::Duration::ZERO
            };
            follow(task, req, cancel, grace).await
        })
    }
}

/// Awaits a task to its end, its timeout or a stop; a stopped action has the grace
/// period to undo what it started, then it is dropped.
async fn follow(
    mut task: Task,
    req: &StepRequest,
    cancel: CancellationToken,
    grace: std::time::Duration,
) -> Outcome {
    let deadline = async {
        match req.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        done = &mut task.join => return joined(done),
        _ = deadline => Outcome::TimedOut,
        _ = cancel.cancelled() => Outcome::Cancelled,
    };
    task.cancel.cancel();
    if tokio::time::timeout(grace, &mut task.join).await.is_err() {
        task.join.abort();
    }
    ended
}

fn joined(done: Result<Outcome, tokio::task::JoinError>) -> Outcome {
    done.unwrap_or_else(|e| Outcome::Failed {
        code: None,
        reason: format!("the step's task failed: {e}"),
    })
}
