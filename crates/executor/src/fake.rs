//! An executor that runs nothing outside this process, for engine tests and as the
//! reference case of the executor conformance suite ([`crate::conformance`]). Its work
//! lives in a [`World`] that outlives any one `Fake`, as a container outlives its runner:
//! a new `Fake` on the same world (a restarted runner) finds and follows it.
//!
//! The work is `Work::Argv` of one program: `["print", out, err, code]` writes its
//! arguments and exits with `code`; `["await", path, before, after]` writes `before`,
//! waits until `path` exists, writes `after` and exits 0; `["sleep"]` waits until stopped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::seam::{BoxFuture, Handle, StartError, StepExecutor, StepRequest, Work};

/// Where fake work lives: shared by every [`Fake`] made with it. Work runs on the
/// runtime the world was made on, so a runner's runtime can be dropped (its process
/// dies) while its work goes on.
#[derive(Clone)]
pub struct World {
    jobs: Arc<Mutex<HashMap<String, Job>>>,
    /// Starts by request name.
    started: Arc<Mutex<HashMap<String, usize>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for World {
    fn default() -> World {
        World {
            jobs: Arc::default(),
            started: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

#[derive(Clone)]
struct Job {
    id: String,
    /// Everything written so far (stdout, stderr), as a container's log keeps it.
    out: Vec<u8>,
    err: Vec<u8>,
    /// Set when the work ends; watched by waiters.
    exit: watch::Sender<Option<i32>>,
    stop: CancellationToken,
}

impl World {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times work of this name was started.
    pub fn starts(&self, name: &str) -> usize {
        let started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        started.get(name).copied().unwrap_or(0)
    }

    /// How many times any work was started.
    pub fn all_starts(&self) -> usize {
        let started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        started.values().sum()
    }

    fn count_start(&self, name: &str) -> usize {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        let n = started.entry(name.to_string()).or_default();
        *n += 1;
        *n - 1
    }

    /// Work that was started and not yet removed (a finished one is removed by `wait`).
    pub fn leftovers(&self) -> Vec<String> {
        self.jobs()
            .iter()
            .filter(|(_, j)| j.exit.borrow().is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The fake executor, serving the step type `fake`.
#[derive(Clone, Default)]
pub struct Fake {
    pub world: World,
}

impl Fake {
    pub fn new(world: World) -> Fake {
        Fake { world }
    }
}

impl StepExecutor for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        match config {
            serde_json::Value::Null => Ok(()),
            serde_json::Value::Object(m) if m.is_empty() => Ok(()),
            _ => Err("fake: takes no options".into()),
        }
    }

    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>> {
        Box::pin(async move {
            let program = program(&req.work)?;
            let id = format!("{}#{}", req.name, self.world.count_start(&req.name));
            let (exit, _) = watch::channel(None);
            let job = Job {
                id: id.clone(),
                out: Vec::new(),
                err: Vec::new(),
                exit,
                stop: CancellationToken::new(),
            };
            self.world.jobs().insert(id.clone(), job.clone());
            let work = run(self.world.clone(), id.clone(), program, job.stop);
            match &self.world.runtime {
                Some(runtime) => drop(runtime.spawn(work)),
                None => drop(tokio::spawn(work)),
            }
            Ok(Handle::new("fake", id))
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        Box::pin(async move {
            let starts = self.world.starts(&req.name);
            let jobs = self.world.jobs();
            let latest = (0..starts)
                .rev()
                .find_map(|n| jobs.get(&format!("{}#{n}", req.name)))
                .or_else(|| jobs.get(&req.name))?;
            Some(Handle::new("fake", latest.id.clone()))
        })
    }

    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(job) = self.world.jobs().get(&handle.id).cloned() else {
                return Outcome::Lost(format!("fake work {} is gone", handle.id));
            };
            let mut exit = job.exit.subscribe();
            // Streams what the work writes into the log files while it runs.
            let follow = async {
                loop {
                    let job = self.world.jobs().get(&handle.id).cloned();
                    let Some(job) = job else { return Ok(()) };
                    copy(&job, req)?;
                    if job.exit.borrow().is_some() {
                        return Ok::<(), std::io::Error>(());
                    }
                    tokio::select! {
                        _ = exit.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            };
            let stopped = tokio::select! {
                r = follow => match r {
                    Ok(()) => None,
                    Err(e) => Some(Outcome::SpawnFailed(format!("cannot write the step's log: {e}"))),
                },
                _ = crate::docker_api::timer(req.timeout) => Some(Outcome::TimedOut),
                _ = cancel.cancelled() => Some(Outcome::Cancelled),
            };
            if stopped.is_some() {
                job.stop.cancel();
                let mut exit = job.exit.subscribe();
                let _ = exit.wait_for(Option::is_some).await;
            }
            let Some(job) = self.world.jobs().remove(&handle.id) else {
                return Outcome::Lost(format!("fake work {} is gone", handle.id));
            };
            if let Err(e) = copy(&job, req) {
                return Outcome::SpawnFailed(format!("cannot write the step's log: {e}"));
            }
            let code = (*job.exit.borrow()).unwrap_or(-1);
            stopped.unwrap_or(Outcome::Exited(code))
        })
    }
}

/// The log files get what the work wrote beyond what they hold (a reattached step).
fn copy(job: &Job, req: &StepRequest) -> std::io::Result<()> {
    for (bytes, path) in [(&job.out, &req.stdout), (&job.err, &req.stderr)] {
        let held = std::fs::metadata(path).map_or(0, |m| m.len()) as usize;
        let fresh = bytes.get(held..).unwrap_or_default();
        crate::append(path)?.write_all(fresh)?;
    }
    Ok(())
}

enum Program {
    Print(String, String, i32),
    Await(PathBuf, String, String),
    Sleep,
}

fn program(work: &Work) -> Result<Program, StartError> {
    let bad = || StartError(format!("fake: cannot run {work:?}"));
    let Work::Argv(argv) = work else {
        return Err(bad());
    };
    let arg = |i: usize| argv.get(i).cloned().unwrap_or_default();
    match argv.first().map(String::as_str) {
        Some("print") => Ok(Program::Print(
            arg(1),
            arg(2),
            arg(3).parse().map_err(|_| bad())?,
        )),
        Some("await") => Ok(Program::Await(PathBuf::from(arg(1)), arg(2), arg(3))),
        Some("sleep") => Ok(Program::Sleep),
        _ => Err(bad()),
    }
}

async fn run(world: World, id: String, program: Program, stop: CancellationToken) {
    let write = |out: &str, err: &str| {
        if let Some(job) = world.jobs().get_mut(&id) {
            job.out.extend_from_slice(out.as_bytes());
            job.err.extend_from_slice(err.as_bytes());
        }
    };
    let code = match program {
        Program::Print(out, err, code) => {
            write(&out, &err);
            code
        }
        Program::Await(path, before, after) => {
            write(&before, "");
            tokio::select! {
                _ = appears(&path) => { write(&after, ""); 0 }
                _ = stop.cancelled() => 143,
            }
        }
        Program::Sleep => {
            stop.cancelled().await;
            143
        }
    };
    if let Some(job) = world.jobs().get(&id) {
        job.exit.send_replace(Some(code));
    }
}

/// Polls for a file: the fake's stand-in for work waiting on the world.
async fn appears(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
