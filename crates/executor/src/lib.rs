//! Runs one step's process. The [`Executor`] trait is the seam between the run driver and
//! where work happens: [`Local`] starts a process group on this machine. Docker (a
//! container per step, reattached by container id), Kubernetes (a Job per step, by job
//! name), Slurm (`sbatch`, by job id), SSH and HTTP implement the same trait later: each
//! turns a [`ProcessSpec`] into an [`Outcome`], streaming output to the given log files.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

pub mod conformance;
mod docker;
mod docker_api;
mod docker_auth;
mod docker_config;
mod docker_exec;
mod docker_run;
mod docker_state;
pub mod fake;
mod http;
mod inproc;
mod jq;
mod kube_config;
mod kube_follow;
mod kubernetes;
pub mod mail;
mod mask;
mod seam;
mod sftp;
mod slurm;
pub mod slurm_config;
mod spawn;
mod ssh;
mod ssh_conn;
mod state;
mod state_store;
mod wait;

pub use docker::Docker;
pub use kubernetes::Kubernetes;
pub use mask::{MASKED, Mask};
pub use seam::{
    BoxFuture, Defaults, Handle, Recorder, Registry, Shared, SharedRequest, StartError,
    StepExecutor, StepRequest, Work, check_dag_option, check_step, external_name, lay_over,
    set_defaults,
};
pub use slurm::Slurm;
pub use state::set_state_store;

/// What to run and where its output goes.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment of the process (nothing is inherited beyond this).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// Log files, appended to (a multi-command step writes several processes into one).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub timeout: Option<Duration>,
    /// Signal sent to the process group on timeout or cancel, before SIGKILL.
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL.
    pub grace: Duration,
    /// Secret values to hide in the output (`None`: written straight to the log files).
    pub mask: Option<std::sync::Arc<Mask>>,
    /// Files that receive a copy of the output as well as the logs (a step's `stdout:`).
    pub tee: Tee,
}

/// Files a process's streams are copied to besides its log files, appended to (created
/// with mode 0600, as Dagu does; their directory must exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tee {
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

impl Tee {
    pub fn is_empty(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }
}

/// A command line split into words as a shell would, without running one (quotes and
/// backslashes; no variables or globs). `None` for unbalanced quotes.
pub fn split_command(command: &str) -> Option<Vec<String>> {
    shlex::split(command)
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Killed by a signal it did not handle.
    Signaled(i32),
    TimedOut,
    Cancelled,
    /// It never started (no such program, bad working dir, ...).
    SpawnFailed(String),
    /// It ran and ended badly for a reason its exit code does not say (out of memory).
    Failed {
        code: Option<i32>,
        reason: String,
    },
    /// What ran it is gone, and with it the step's end (a container removed by hand).
    Lost(String),
}

impl Outcome {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(code) => Some(*code),
            Outcome::Signaled(sig) => Some(128 + sig),
            Outcome::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// Something that can run a [`ProcessSpec`] to completion.
pub trait Executor: Send + Sync {
    fn run(
        &self,
        spec: ProcessSpec,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = Outcome> + Send;
}

/// Runs each step as its own process group on this machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Local processes, at most as many at once as `slots` has permits, across every run
/// that shares it (daggyd's `ForkingTaskExecutor` `threads`). A step waits for a permit
/// before it starts; one stopped while it waits never starts.
#[derive(Clone, Debug)]
pub struct Bounded {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Bounded {
    pub fn new(slots: usize) -> Bounded {
        Bounded {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots)),
        }
    }
}

impl Executor for Bounded {
    async fn run(&self, spec: ProcessSpec, cancel: CancellationToken) -> Outcome {
        let permit = tokio::select! {
            permit = self.slots.acquire() => permit,
            () = cancel.cancelled() => return Outcome::Cancelled,
        };
        let Ok(_permit) = permit else {
            return Outcome::SpawnFailed("the executor is shutting down".into());
        };
        Local.run(spec, cancel).await
    }
}

impl Executor for Local {
    async fn run(&self, mut spec: ProcessSpec, cancel: CancellationToken) -> Outcome {
        let (files, copiers) = match outputs(&spec) {
            Ok(opened) => opened,
            Err(e) => return Outcome::SpawnFailed(format!("cannot open output file: {e}")),
        };
        let program = resolve(&spec.program, &spec.env);
        let prepared = spawn::Prepared::new(
            &program,
            &spec.args,
            &spec.env,
            spec.working_dir.as_deref(),
            files,
        );
        // Free the environment while the child runs, or a wide fan-out keeps thousands
        // of copies alive.
        spec.env = Vec::new();
        let spawned = match prepared {
            Ok(prepared) => spawn::spawn(prepared).await,
            Err(e) => Err(e),
        };
        let outcome = match spawned {
            Ok(child) => supervise(child, &spec, cancel).await,
            // A working directory that cannot be entered says so; the program never ran.
            Err(e) if e.get_ref().is_some_and(|i| i.is::<spawn::BadWorkingDir>()) => {
                Outcome::SpawnFailed(e.to_string())
            }
            Err(e) => Outcome::SpawnFailed(format!("{}: {e}", spec.program)),
        };
        if let Some(copiers) = copiers {
            copiers.finish().await;
        }
        outcome
    }
}

/// Waits for the child, stopping its whole group on timeout or cancel.
async fn supervise(
    mut child: spawn::Child,
    spec: &ProcessSpec,
    cancel: CancellationToken,
) -> Outcome {
    let pgid = Pid::from_raw(child.id() as i32);
    let timeout = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        status = child.wait() => return wait_outcome(status),
        _ = timeout => Outcome::TimedOut,
        _ = cancel.cancelled() => Outcome::Cancelled,
    };
    // Stop the whole group: the step's shell and everything it started.
    let _ = killpg(pgid, spec.stop_signal);
    if tokio::time::timeout(spec.grace, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.wait().await;
    let _ = killpg(pgid, Signal::SIGKILL);
    stopped
}

/// Where the child writes: the log files themselves, or, when secrets must be masked or a
/// stream is also copied to a file of the step's, pipes whose copiers write (masked) into
/// the files. Only such steps pay for the copy.
fn outputs(spec: &ProcessSpec) -> std::io::Result<((File, File), Option<Copiers>)> {
    let (stdout, stderr) = (append(&spec.stdout)?, append(&spec.stderr)?);
    let mask = spec.mask.clone().filter(|m| !m.is_empty());
    if mask.is_none() && spec.tee.is_empty() {
        return Ok(((stdout, stderr), None));
    }
    let mask = mask.unwrap_or_default();
    let out_files = [Some(stdout), tee_file(spec.tee.stdout.as_deref())?];
    let err_files = [Some(stderr), tee_file(spec.tee.stderr.as_deref())?];
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let copy = |read, files: [Option<File>; 2]| {
        let mask = mask.clone();
        let from = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let files: Vec<File> = files.into_iter().flatten().collect();
        Ok::<_, std::io::Error>(tokio::spawn(async move { mask.copy(from, files).await }))
    };
    let tasks = vec![copy(out_read, out_files)?, copy(err_read, err_files)?];
    Ok(((out_write.into(), err_write.into()), Some(Copiers(tasks))))
}

/// A `stdout:`/`stderr:` file, opened as Dagu opens it; the error names the file.
fn tee_file(path: Option<&Path>) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = path else { return Ok(None) };
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(Some)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The tasks masking a step's output.
struct Copiers(Vec<tokio::task::JoinHandle<std::io::Result<()>>>);

impl Copiers {
    /// Waits for the copiers to reach the end of their pipes: at once when the step's
    /// processes are gone, or after a grace when a background process it left keeps a
    /// pipe open (its later output is not logged).
    async fn finish(self) {
        for task in self.0 {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors that nothing else owns.
    if unsafe { nix::libc::pipe2(fds.as_mut_ptr(), nix::libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// The program looked up in the step's own `PATH` once, here, rather than in the child
/// per `PATH` entry. Not found, or with a relative `PATH` entry (which means the step's
/// working directory), the name stays as written and the child searches as `execvp`.
fn resolve(program: &str, env: &[(String, String)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let Some((_, dirs)) = env.iter().rev().find(|(k, _)| k == "PATH") else {
        return PathBuf::from(program);
    };
    if program.contains('/') || dirs.split(':').any(|d| !d.starts_with('/')) {
        return PathBuf::from(program);
    }
    let executable = |p: &PathBuf| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    dirs.split(':')
        .map(|d| Path::new(d).join(program))
        .find(executable)
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The absolute path of `program` found in the `PATH` of `env`, if it is there.
pub fn find_program(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    let found = resolve(program, env);
    (found.is_absolute() && !program.contains('/')).then_some(found)
}

fn wait_outcome(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            _ => Outcome::Exited(-1),
        },
        Err(e) => Outcome::SpawnFailed(e.to_string()),
    }
}

/// Parses `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(text: &str) -> Option<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let name = if text.starts_with("SIG") {
        text.to_string()
    } else {
        format!("SIG{text}")
    };
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            working_dir: None,
            stdout: dir.join("out"),
            stderr: dir.join("err"),
            timeout: None,
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_millis(200),
            mask: None,
            tee: Tee::default(),
        }
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let got = Local
            .run(
                spec(dir.path(), "echo hi; echo oops >&2; exit 3"),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(got, Outcome::Exited(3));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("err")).unwrap(),
            "oops\n"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "trap '' TERM; sleep 30 & echo $! > pid; wait");
        s.timeout = Some(Duration::from_millis(300));
        s.working_dir = Some(dir.path().to_path_buf());
        assert_eq!(
            Local.run(s, CancellationToken::new()).await,
            Outcome::TimedOut
        );
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild `sleep` was in the group, so it dies too (a zombie counts as dead).
        // Signal delivery is asynchronous: allow it a moment, checking the kernel's view.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(!alive(), "sleep {pid} survived the timeout");
    }

    #[tokio::test]
    async fn tee_files_get_a_masked_copy_of_each_stream() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("copy.out"), "before\n").unwrap();
        let mut s = spec(d, "echo out hunter2; echo err >&2");
        s.tee = Tee {
            stdout: Some(d.join("copy.out")),
            stderr: Some(d.join("copy.err")),
        };
        s.mask = Some(std::sync::Arc::new(Mask::new(["hunter2".to_string()])));
        assert_eq!(
            Local.run(s, CancellationToken::new()).await,
            Outcome::Exited(0)
        );
        let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap();
        assert_eq!(read("out"), "out *****\n");
        assert_eq!(read("copy.out"), "before\nout *****\n", "appended to");
        assert_eq!(read("err"), "err\n");
        assert_eq!(read("copy.err"), "err\n");
        let mut missing = spec(d, "echo hi");
        missing.tee.stdout = Some(d.join("no/such/dir/copy"));
        match Local.run(missing, CancellationToken::new()).await {
            Outcome::SpawnFailed(m) => assert!(m.contains("no/such/dir/copy"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_program_reports_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "");
        s.program = "/nonexistent/tool".into();
        match Local.run(s, CancellationToken::new()).await {
            Outcome::SpawnFailed(msg) => assert!(msg.contains("No such file"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
