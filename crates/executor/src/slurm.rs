//! `type: slurm`: each try of a step is one batch job, submitted with `sbatch --parsable`
//! (the step as a batch script; its variables in `sbatch`'s environment, which the job
//! inherits, never in a file). The job id is the handle and the job name the request's
//! deterministic name, so a runner that died before recording the id finds the job by name
//! (`squeue --states=all`). The job writes its output into spool files beside the step's
//! logs (`<step>.slurm.out`/`.err`), or with `log_dir` into `<log_dir>/<job name>.stdout`/
//! `.stderr` (kept: never removed), copied into the logs while it runs; state and exit
//! code come from `scontrol show job` (a cluster without `slurmdbd` has no plain `sacct`).
//! Stop and timeout send the stop signal to the whole job (`scancel --signal --full`),
//! then `scancel` once the grace period is over.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::seam::{BoxFuture, Handle, StartError, StepExecutor, StepRequest, Work};
use crate::slurm_config::Config;

/// How often a job's state is read: soon after the start, then less often.
const POLL_FIRST: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Default)]
pub struct Slurm;

impl StepExecutor for Slurm {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        Config::parse(config).map(|_| ())
    }

    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).map_err(StartError)?;
            let spool = Spool::fresh(req, &config);
            let script = script(req, &config)?;
            spool
                .reset(&script)
                .map_err(|e| StartError(format!("cannot write the job script: {e}")))?;
            let mut cmd = Command::new("sbatch");
            cmd.arg("--parsable")
                .arg(format!("--job-name={}", req.name))
                .arg(format!("--output={}", spool.out.display()))
                .arg(format!("--error={}", spool.err.display()));
            if let Some(dir) = config
                .working_dir
                .clone()
                .map(PathBuf::from)
                .or_else(|| working_dir(req))
            {
                cmd.arg(format!("--chdir={}", dir.display()));
            }
            for (flag, value) in &config.resources {
                cmd.arg(format!("{flag}={value}"));
            }
            cmd.args(&config.sbatch_args).arg(&spool.script);
            // The job inherits sbatch's environment (`--export=ALL`, Slurm's default).
            cmd.envs(req.env.iter().cloned())
                .envs(config.env.iter().cloned());
            let out = run(&mut cmd).await.map_err(StartError)?;
            let id = out.split(';').next().unwrap_or("").trim().to_string();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(StartError(format!(
                    "sbatch answered `{}`, not a job id",
                    out.trim()
                )));
            }
            Ok(Handle::new("slurm", id))
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        Box::pin(async move {
            let id = if req.name.bytes().all(|b| b.is_ascii_digit()) {
                job(&req.name).await.ok()?.map(|_| req.name.clone())?
            } else {
                let mut cmd = Command::new("squeue");
                cmd.args(["-h", "--states=all", "-o", "%i", "-n", &req.name]);
                let out = run(&mut cmd).await.ok()?;
                out.lines()
                    .map(str::trim)
                    .rfind(|l| !l.is_empty())?
                    .to_string()
            };
            Some(Handle::new("slurm", id))
        })
    }

    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(follow(&handle.id, req, cancel))
    }

    fn probe<'a>(&'a self, _config: &'a serde_json::Value) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            run(Command::new("sinfo").args(["-h", "-o", "%P"]))
                .await
                .map(|_| ())
        })
    }
}

async fn follow(id: &str, req: &StepRequest, cancel: CancellationToken) -> Outcome {
    // The job's own output paths: a job started by an earlier attempt writes where that
    // attempt said.
    let spool = match job(id).await {
        Ok(Some(job)) if !job.stdout.is_empty() => Spool {
            script: PathBuf::new(),
            out: PathBuf::from(&job.stdout),
            err: PathBuf::from(if job.stderr.is_empty() {
                &job.stdout
            } else {
                &job.stderr
            }),
            kept: true,
        },
        _ => Spool::of(req, &Config::parse(&req.config).unwrap_or_default()),
    };
    let mut copier = Copier::new(req, &spool);
    let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut pause = POLL_FIRST;
    let mut last_state = String::from("PENDING");
    loop {
        copier.copy();
        match job(id).await {
            Ok(Some(job)) if job.ended() => {
                copier.copy();
                return job.outcome();
            }
            Ok(Some(job)) => last_state = job.state,
            Ok(None) => {
                copier.copy();
                return Outcome::Lost(format!(
                    "job {id} is no longer known to Slurm (last seen {last_state})"
                ));
            }
            Err(e) => tracing::debug!(job = id, "scontrol failed, trying again: {e}"),
        }
        let stopped = crate::seam::pause(pause, deadline, &cancel).await;
        if let Some(stopped) = stopped {
            stop(id, req).await;
            copier.copy();
            return stopped;
        }
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// The stop signal to every process of the job, then `scancel` after the grace period.
async fn stop(id: &str, req: &StepRequest) {
    let signal = format!(
        "--signal={}",
        req.stop_signal.as_str().trim_start_matches("SIG")
    );
    let _ = run(Command::new("scancel").args([signal.as_str(), "--full", id])).await;
    if ended_within(id, req.grace).await {
        return;
    }
    let _ = run(Command::new("scancel").arg(id)).await;
    // Until Slurm has the job ended (out of COMPLETING), bounded: nothing of a stopped
    // step is left running when its stop returns.
    ended_within(id, Duration::from_secs(10)).await;
}

/// Whether the job ends (or Slurm forgets it) within `limit`.
async fn ended_within(id: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        match job(id).await {
            Ok(Some(j)) if !j.ended() => {}
            Ok(_) => return true,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What `scontrol show job` says of a job.
#[derive(Debug)]
struct Job {
    state: String,
    exit_code: i32,
    signal: i32,
    reason: String,
    stdout: String,
    stderr: String,
}

impl Job {
    fn ended(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
        )
    }

    fn outcome(&self) -> Outcome {
        let code = Some(self.exit_code);
        match self.state.as_str() {
            "COMPLETED" => Outcome::Exited(self.exit_code),
            "FAILED" if self.signal > 0 => Outcome::Signaled(self.signal),
            "FAILED" => Outcome::Exited(self.exit_code),
            "OUT_OF_MEMORY" => Outcome::Failed {
                code,
                reason: "out of memory: the job went over its Slurm memory limit".into(),
            },
            "TIMEOUT" => Outcome::Failed {
                code,
                reason: "the job reached its Slurm time limit".into(),
            },
            "CANCELLED" => Outcome::Failed {
                code,
                reason: "the job was cancelled in Slurm".into(),
            },
            other => Outcome::Failed {
                code,
                reason: format!("the job ended {other} in Slurm ({})", self.reason),
            },
        }
    }
}

/// `Ok(None)` when Slurm no longer knows the job.
async fn job(id: &str) -> Result<Option<Job>, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| program_error("scontrol", &e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid job id") {
            return Ok(None);
        }
        return Err(err.trim().to_string());
    }
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let exit = field("ExitCode");
    let (code, signal) = exit.split_once(':').unwrap_or((&exit, "0"));
    Ok(Some(Job {
        state: field("JobState"),
        exit_code: code.parse().unwrap_or(-1),
        signal: signal.parse().unwrap_or(0),
        reason: field("Reason"),
        stdout: field("StdOut"),
        stderr: field("StdErr"),
    }))
}

/// Runs a Slurm command; its stdout, or Slurm's own message.
async fn run(cmd: &mut Command) -> Result<String, String> {
    let program = cmd.as_std().get_program().to_string_lossy().to_string();
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| program_error(&program, &e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!("{program}: {}", err.trim()))
}

fn program_error(program: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "`{program}` is not on the PATH: the slurm step type needs Slurm's client commands (Debian: slurm-client)"
        )
    } else {
        format!("cannot run `{program}`: {e}")
    }
}

fn working_dir(req: &StepRequest) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    Some(
        req.working_dir
            .as_ref()
            .map_or(cwd.clone(), |d| cwd.join(d)),
    )
}

/// The batch script: a shebang, then the step's command, script or argv.
fn script(req: &StepRequest, config: &Config) -> Result<String, StartError> {
    let shell = config.shell.as_deref().unwrap_or("/bin/sh");
    let quote = |words: &[String]| -> String {
        words
            .iter()
            .map(|w| shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let body = match &req.work {
        Work::Default => {
            return Err(StartError(
                "slurm: the step needs a command or a script".into(),
            ));
        }
        Work::Line(line) => line.clone(),
        Work::Argv(argv) => format!("exec {}", quote(argv)),
        Work::Shell { shell, command } => {
            let mut words = shell.clone();
            words.push(command.clone());
            format!("exec {}", quote(&words))
        }
        Work::Script {
            program: None,
            text,
        } if text.starts_with("#!") => return Ok(text.clone()),
        Work::Script {
            program: None,
            text,
        } => text.clone(),
        Work::Script {
            program: Some(program),
            text,
        } => {
            let words: Vec<String> = program.split_whitespace().map(String::from).collect();
            format!(
                "exec {} -c {}",
                quote(&words),
                quote(std::slice::from_ref(text))
            )
        }
    };
    Ok(format!("#!{shell}\n{body}\n"))
}

/// The job's script (beside the step's logs) and output files (there too, or in the
/// `log_dir` of the step's `with:`).
struct Spool {
    script: PathBuf,
    out: PathBuf,
    err: PathBuf,
    /// The output files are in the user's `log_dir`: theirs to keep, never removed.
    kept: bool,
}

impl Spool {
    /// The `n`-th job of the request's name: in `log_dir`, `<job name>.stdout` for the
    /// first, `<job name>.<n>.stdout` after it.
    fn at(req: &StepRequest, config: &Config, n: u32) -> Spool {
        let with = |path: &Path, ext: &str| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(ext);
            path.with_file_name(name)
        };
        let script = with(&req.stdout, ".slurm.sh");
        let Some(dir) = &config.log_dir else {
            return Spool {
                script,
                out: with(&req.stdout, ".slurm"),
                err: with(&req.stderr, ".slurm"),
                kept: false,
            };
        };
        let stem = match n {
            0 => crate::seam::external_name(&req.name),
            n => format!("{}.{n}", crate::seam::external_name(&req.name)),
        };
        Spool {
            script,
            out: Path::new(dir).join(format!("{stem}.stdout")),
            err: Path::new(dir).join(format!("{stem}.stderr")),
            kept: true,
        }
    }

    /// For a new job. In `log_dir`, the first name no file has yet: the job of a retried
    /// run has the name of the earlier one, whose files must stay as they are.
    fn fresh(req: &StepRequest, config: &Config) -> Spool {
        (0..u32::MAX)
            .map(|n| Spool::at(req, config, n))
            .find(|s| !s.kept || !(s.out.exists() || s.err.exists()))
            .unwrap_or_else(|| Spool::at(req, config, 0))
    }

    /// Where the request's job wrote, when Slurm no longer says: in `log_dir`, the last
    /// of the names [`Spool::fresh`] gives out.
    fn of(req: &StepRequest, config: &Config) -> Spool {
        let used = |s: &Spool| s.out.exists() || s.err.exists();
        let mut n = 0;
        while config.log_dir.is_some() && used(&Spool::at(req, config, n + 1)) {
            n += 1;
        }
        Spool::at(req, config, n)
    }

    /// A new job: its script written, and beside the logs the output of an earlier job
    /// gone (in `log_dir`, [`Spool::fresh`] chose names no file has; the dir is made, as
    /// Slurm does not make it and the job's output would be lost).
    fn reset(&self, script: &str) -> std::io::Result<()> {
        if self.kept {
            if let Some(dir) = self.out.parent() {
                std::fs::create_dir_all(dir)?;
            }
        } else {
            for path in [&self.out, &self.err] {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        std::fs::write(&self.script, script)
    }
}

/// Copies what the job wrote to its spool files into the step's logs, from where the
/// logs end (a reattached step continues there), secrets masked.
struct Copier<'a> {
    req: &'a StepRequest,
    pairs: [(PathBuf, PathBuf, u64); 2],
}

impl<'a> Copier<'a> {
    fn new(req: &'a StepRequest, spool: &Spool) -> Copier<'a> {
        let held = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        Copier {
            req,
            pairs: [
                (spool.out.clone(), req.stdout.clone(), held(&req.stdout)),
                (spool.err.clone(), req.stderr.clone(), held(&req.stderr)),
            ],
        }
    }

    fn copy(&mut self) {
        for (from, to, offset) in &mut self.pairs {
            if let Err(e) = copy_from(from, to, offset, self.req) {
                tracing::debug!(file = %from.display(), "cannot copy a job's output yet: {e}");
            }
        }
    }
}

fn copy_from(from: &Path, to: &Path, offset: &mut u64, req: &StepRequest) -> std::io::Result<()> {
    let mut file = match std::fs::File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(*offset))?;
    let mut fresh = Vec::new();
    file.read_to_end(&mut fresh)?;
    if fresh.is_empty() {
        return Ok(());
    }
    *offset += fresh.len() as u64;
    let mut log = crate::append(to)?;
    match &req.mask {
        Some(mask) if !mask.is_empty() => {
            log.write_all(mask.apply(&String::from_utf8_lossy(&fresh)).as_bytes())
        }
        _ => log.write_all(&fresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(logs: &Path, config: serde_json::Value) -> StepRequest {
        StepRequest {
            name: "trellis-d-1-s-0-0".into(),
            work: Work::Line("true".into()),
            env: Vec::new(),
            working_dir: None,
            config,
            stdout: logs.join("s.out"),
            stderr: logs.join("s.err"),
            timeout: None,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            grace: Duration::from_secs(1),
            mask: None,
            labels: Default::default(),
            record: None,
        }
    }

    #[test]
    fn log_dir_files_are_named_after_the_job_and_never_removed_or_reused() {
        let logs = tempfile::tempdir().expect("tempdir");
        let kept = logs.path().join("kept");
        let req = request(logs.path(), json!({"log_dir": kept.display().to_string()}));
        let config = Config::parse(&req.config).expect("config");
        let first = Spool::fresh(&req, &config);
        assert_eq!(first.out, kept.join("trellis-d-1-s-0-0.stdout"));
        assert_eq!(first.err, kept.join("trellis-d-1-s-0-0.stderr"));
        first.reset("#!/bin/sh\n").expect("reset makes the dir");
        std::fs::write(&first.out, "earlier run").expect("write");
        // A retried run's job has the same name: its files are left as they are.
        let second = Spool::fresh(&req, &config);
        assert_eq!(second.out, kept.join("trellis-d-1-s-0-0.1.stdout"));
        second.reset("#!/bin/sh\n").expect("reset");
        assert_eq!(
            std::fs::read_to_string(&first.out).ok().as_deref(),
            Some("earlier run")
        );
        assert_eq!(
            Spool::of(&req, &config).out,
            first.out,
            "the last one written"
        );
        std::fs::write(&second.err, "").expect("write");
        assert_eq!(Spool::of(&req, &config).out, second.out);
        assert_eq!(second.script, logs.path().join("s.out.slurm.sh"));
    }

    #[test]
    fn without_log_dir_the_spool_is_beside_the_logs_and_reset() {
        let logs = tempfile::tempdir().expect("tempdir");
        let req = request(logs.path(), serde_json::Value::Null);
        let spool = Spool::fresh(&req, &Config::default());
        assert_eq!(spool.out, logs.path().join("s.out.slurm"));
        std::fs::write(&spool.out, "old job").expect("write");
        spool.reset("#!/bin/sh\n").expect("reset");
        assert!(!spool.out.exists(), "an earlier job's spool is removed");
    }
}
