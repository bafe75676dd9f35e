//! One suite every [`StepExecutor`] passes: start and follow work to its exit code and
//! logs; find it by its name; a new executor (a restarted runner) reattaches to work
//! started by an old one and completes its log without repeating or losing a byte; cancel
//! and timeout stop the work; a handle whose work is gone ends as lost; nothing is left
//! behind. Run with the fake executor in this crate's tests and with Docker against
//! Podman; a new executor adds one [`Programs`] for itself and calls [`run`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::seam::{Handle, StepExecutor, StepRequest, Work};

/// How an executor under test expresses the suite's work.
pub trait Programs: Send + Sync {
    /// Writes `out` and `err`, then exits with `code`.
    fn print(&self, out: &str, err: &str, code: i32) -> Work;
    /// Writes `before`, waits until the file `flag` exists in [`Programs::flag_dir`],
    /// writes `after` and exits 0.
    fn await_flag(&self, flag: &str, before: &str, after: &str) -> Work;
    /// Runs until stopped.
    fn sleep(&self) -> Work;
    /// The `with:` of every step.
    fn config(&self) -> serde_json::Value;
    /// A directory of this machine the work sees too.
    fn flag_dir(&self) -> PathBuf;
    /// What is still there after the suite's work ended and `settle` ran.
    fn leftovers(&self) -> Vec<String>;
    /// Whether the target keeps one stream of output (a Kubernetes pod's log): stderr
    /// then lands in the step's stdout log, in order.
    fn merged_output(&self) -> bool {
        false
    }
}

/// The suite's work as `sh -c` scripts, for executors that run commands in a shell's
/// world (a batch job, a pod): arguments pass as `$1`...
pub mod sh {
    use std::path::Path;

    use crate::seam::Work;

    fn sh(script: &str, args: &[&str]) -> Work {
        let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Work::Argv(argv)
    }

    /// See [`super::Programs::print`].
    pub fn print(out: &str, err: &str, code: i32) -> Work {
        sh(
            r#"printf %s "$1"; printf %s "$2" >&2; exit "$3""#,
            &[out, err, &code.to_string()],
        )
    }

    /// See [`super::Programs::await_flag`].
    pub fn await_flag(dir: &Path, flag: &str, before: &str, after: &str) -> Work {
        let path = dir.join(flag).display().to_string();
        sh(
            r#"printf %s "$2"; while [ ! -f "$1" ]; do sleep 0.05; done; printf %s "$3""#,
            &[&path, before, after],
        )
    }

    /// See [`super::Programs::sleep`].
    pub fn sleep() -> Work {
        sh("sleep 600", &[])
    }
}

/// The executor under test: `make` gives a new instance each call (what a restarted
/// runner has), all of them reaching the same work.
pub struct Suite<'a> {
    pub make: &'a (dyn Fn() -> Arc<dyn StepExecutor> + Sync),
    pub programs: &'a dyn Programs,
    /// Where the step logs go.
    pub logs: &'a Path,
    /// Makes the suite's names unique to this run of it.
    pub prefix: &'a str,
}

type Check = for<'a> fn(&'a Suite<'a>) -> crate::BoxFuture<'a, Result<(), String>>;

/// Runs every check; the first failure names its check.
pub async fn run(suite: &Suite<'_>) -> Result<(), String> {
    let checks: [(&str, Check); 7] = [
        ("exit code and logs", |s| Box::pin(exit_code_and_logs(s))),
        ("find by name", |s| Box::pin(find_by_name(s))),
        ("reattach after a restart", |s| Box::pin(reattach(s))),
        ("recorded, then the runner died", |s| {
            Box::pin(recorded_not_started(s))
        }),
        ("cancel and timeout stop", |s| Box::pin(stops(s))),
        ("a handle whose work is gone", |s| Box::pin(gone(s))),
        ("nothing left behind", |s| Box::pin(nothing_left(s))),
    ];
    for (name, check) in checks {
        check(suite).await.map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

impl Suite<'_> {
    fn request(&self, check: &str, work: Work) -> StepRequest {
        let name = format!("{}-{check}", self.prefix);
        StepRequest {
            name: name.clone(),
            work,
            env: Vec::new(),
            working_dir: None,
            config: self.programs.config(),
            stdout: self.logs.join(format!("{name}.out")),
            stderr: self.logs.join(format!("{name}.err")),
            timeout: None,
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_secs(2),
            mask: None,
            labels: BTreeMap::from([("trellis.conformance".into(), self.prefix.into())]),
            record: None,
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn expect(what: &str, got: impl std::fmt::Debug, want: impl std::fmt::Debug) -> Result<(), String> {
    let (got, want) = (format!("{got:?}"), format!("{want:?}"));
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}"))
    }
}

async fn start(executor: &dyn StepExecutor, req: &StepRequest) -> Result<Handle, String> {
    executor
        .start(req)
        .await
        .map_err(|e| format!("start: {}", e.0))
}

async fn exit_code_and_logs(s: &Suite<'_>) -> Result<(), String> {
    let exec = (s.make)();
    let req = s.request("exit", s.programs.print("out\n", "err\n", 3));
    let handle = start(&*exec, &req).await?;
    expect("the handle's executor", &handle.executor, exec.kind())?;
    let outcome = exec.wait(&handle, &req, CancellationToken::new()).await;
    expect("outcome", outcome, Outcome::Exited(3))?;
    exec.settle().await;
    if s.programs.merged_output() {
        return expect("one stream", read(&req.stdout), "out\nerr\n");
    }
    expect("stdout", read(&req.stdout), "out\n")?;
    expect("stderr", read(&req.stderr), "err\n")
}

async fn find_by_name(s: &Suite<'_>) -> Result<(), String> {
    let exec = (s.make)();
    let req = s.request("find", s.programs.await_flag("find.flag", "", ""));
    let handle = start(&*exec, &req).await?;
    let found = (s.make)().find(&req).await;
    expect(
        "found by name",
        found.map(|h| h.id),
        Some(handle.id.clone()),
    )?;
    let missing = s.request("never-started", Work::Default);
    expect("an unknown name", exec.find(&missing).await, None::<Handle>)?;
    std::fs::write(s.programs.flag_dir().join("find.flag"), "").map_err(|e| e.to_string())?;
    let outcome = exec.wait(&handle, &req, CancellationToken::new()).await;
    exec.settle().await;
    expect("outcome", outcome, Outcome::Exited(0))
}

/// The old runner follows until the first half is logged, then dies (its wait is
/// dropped); a new one finds the work by name and follows it to the end.
async fn reattach(s: &Suite<'_>) -> Result<(), String> {
    let old = (s.make)();
    let req = s.request(
        "reattach",
        s.programs.await_flag("reattach.flag", "one\n", "two\n"),
    );
    let handle = start(&*old, &req).await?;
    {
        let waiting = old.wait(&handle, &req, CancellationToken::new());
        let logged = async {
            while read(&req.stdout) != "one\n" {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            outcome = waiting => return Err(format!("ended before its flag: {outcome:?}")),
            _ = logged => {}
        }
    }
    drop(old);
    std::fs::write(s.programs.flag_dir().join("reattach.flag"), "").map_err(|e| e.to_string())?;
    let new = (s.make)();
    let found = new
        .find(&req)
        .await
        .ok_or("the new runner cannot find the work")?;
    expect("found", &found.id, &handle.id)?;
    let outcome = new.wait(&found, &req, CancellationToken::new()).await;
    new.settle().await;
    expect("outcome", outcome, Outcome::Exited(0))?;
    expect("the whole log, once", read(&req.stdout), "one\ntwo\n")
}

/// The runner records the handle of created work and dies before starting it: a new
/// runner waiting on that handle starts the work, once. (An executor that creates and
/// starts in one call never records early, and passes.)
async fn recorded_not_started(s: &Suite<'_>) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut req = s.request("recorded", s.programs.print("once\n", "", 0));
    req.record = Some(Arc::new(move |handle| {
        let _ = tx.send(handle);
        // The runner dies here: nothing after the record happens.
        Box::pin(std::future::pending())
    }));
    let old = (s.make)();
    let recorded = tokio::select! {
        started = old.start(&req) => {
            started.map_err(|e| format!("start: {}", e.0))?;
            return Ok(());
        }
        handle = rx.recv() => handle.ok_or("no handle recorded")?,
    };
    drop(old);
    req.record = None;
    let new = (s.make)();
    let outcome = new.wait(&recorded, &req, CancellationToken::new()).await;
    new.settle().await;
    expect("outcome", outcome, Outcome::Exited(0))?;
    expect("stdout, once", read(&req.stdout), "once\n")
}

async fn stops(s: &Suite<'_>) -> Result<(), String> {
    let exec = (s.make)();
    let req = s.request("cancel", s.programs.sleep());
    let handle = start(&*exec, &req).await?;
    let cancel = CancellationToken::new();
    cancel.cancel();
    expect(
        "cancelled",
        exec.wait(&handle, &req, cancel).await,
        Outcome::Cancelled,
    )?;
    let mut req = s.request("timeout", s.programs.sleep());
    req.timeout = Some(Duration::from_millis(300));
    let handle = start(&*exec, &req).await?;
    let outcome = exec.wait(&handle, &req, CancellationToken::new()).await;
    exec.settle().await;
    expect("timed out", outcome, Outcome::TimedOut)
}

async fn gone(s: &Suite<'_>) -> Result<(), String> {
    let exec = (s.make)();
    let req = s.request("gone", s.programs.print("", "", 0));
    let handle = Handle {
        executor: exec.kind().into(),
        id: format!("{}-no-such-work", s.prefix),
    };
    match exec.wait(&handle, &req, CancellationToken::new()).await {
        Outcome::Lost(_) => Ok(()),
        other => Err(format!("got {other:?}, want Lost")),
    }
}

async fn nothing_left(s: &Suite<'_>) -> Result<(), String> {
    (s.make)().settle().await;
    expect("left behind", s.programs.leftovers(), Vec::<String>::new())
}
