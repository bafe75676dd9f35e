//! Runs that must outlive the process asking for them. A front end with no scheduler of
//! its own (the server alone, a webhook) cannot drive a run in-process: a restart of the
//! server would take the run with it. So the service starts `trellis start|retry|restart`
//! detached — its own process group, output discarded, reaped in the background — and
//! waits until the run is visible in the store. The child records the run itself, on the
//! same store, so every replica of the server sees it the same way.

use std::path::PathBuf;
use std::process::Stdio;

use trellis_core::status::RunRecord;

use crate::{Error, Result, Runs, VISIBLE_WITHIN};

/// How to start a detached `trellis` process.
#[derive(Clone)]
pub struct Launcher {
    /// The `trellis` binary.
    pub program: PathBuf,
    pub home: PathBuf,
    /// Steps without a working dir run here (as they would next to the file).
    pub dags_dir: PathBuf,
    /// Variables the child gets back although steps never see them (the database URL,
    /// so the run records itself where the caller reads).
    pub pass_env: Vec<(String, String)>,
    /// Variables removed from the child's environment (credentials of the caller).
    pub remove_env: Vec<String>,
}

/// A detached run to start.
pub enum Launch {
    /// `trellis start FILE` as a new run `run_id`.
    Start {
        file: PathBuf,
        dag: String,
        run_id: String,
        params: Option<String>,
        env: Vec<(String, String)>,
    },
    /// A new attempt of an ended run (same id); `step` and what follows, or what failed.
    Retry {
        previous: RunRecord,
        step: Option<String>,
    },
    /// A new run `new_run_id` with the params of `previous` (stopped first if needed).
    Restart {
        previous: RunRecord,
        new_run_id: String,
    },
}

impl Launch {
    fn args(&self) -> Vec<String> {
        match self {
            Launch::Start {
                file,
                run_id,
                params,
                ..
            } => {
                let mut args = vec![
                    "start".into(),
                    "--quiet".into(),
                    format!("--run-id={run_id}"),
                ];
                if let Some(params) = params {
                    args.push(format!("--params={params}"));
                }
                // An absolute path cannot be mistaken for an option.
                let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                args.push(file.display().to_string());
                args
            }
            Launch::Retry { previous, step } => {
                let mut args = vec![
                    "retry".into(),
                    format!("--run-id={}", previous.run_id),
                    "--quiet".into(),
                ];
                if let Some(step) = step {
                    args.push(format!("--step={step}"));
                }
                // Options first, then `--`: a DAG name may start with `-`.
                args.extend(["--".into(), previous.name.clone()]);
                args
            }
            Launch::Restart {
                previous,
                new_run_id,
            } => vec![
                "restart".into(),
                format!("--run-id={}", previous.run_id),
                format!("--new-run-id={new_run_id}"),
                "--".into(),
                previous.name.clone(),
            ],
        }
    }

    /// Variables for the launched process (a webhook's payload).
    fn env(&self) -> &[(String, String)] {
        match self {
            Launch::Start { env, .. } => env,
            _ => &[],
        }
    }

    /// Whether the stored run shows the launch took effect: a retry, by a new attempt or
    /// one not ended yet; anything else, by the run being there at all.
    fn shows(&self, run: &RunRecord) -> bool {
        match self {
            Launch::Retry { previous, .. } => {
                run.attempt_id != previous.attempt_id || !run.status.is_final()
            }
            _ => true,
        }
    }

    /// The run the launch makes visible: (DAG, run id).
    fn target(&self) -> (&str, &str) {
        match self {
            Launch::Start { dag, run_id, .. } => (dag, run_id),
            Launch::Retry { previous, .. } => (&previous.name, &previous.run_id),
            Launch::Restart {
                previous,
                new_run_id,
            } => (&previous.name, new_run_id),
        }
    }
}

impl std::fmt::Debug for Launcher {
    // By hand: `pass_env` holds the database URL with its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let passed: Vec<&str> = self.pass_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Launcher")
            .field("program", &self.program)
            .field("home", &self.home)
            .field("dags_dir", &self.dags_dir)
            .field("pass_env", &passed)
            .field("remove_env", &self.remove_env)
            .finish()
    }
}

impl Launcher {
    fn spawn(&self, args: &[String], env: &[(String, String)]) -> Result<()> {
        let mut command = std::process::Command::new(&self.program);
        command
            .args(args)
            .current_dir(&self.dags_dir)
            .env("TRELLIS_HOME", &self.home)
            .env("TRELLIS_DAGS_DIR", &self.dags_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for var in &self.remove_env {
            command.env_remove(var);
        }
        command.envs(self.pass_env.iter().map(|(k, v)| (k, v)));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .map_err(|e| Error::io(format!("start {}", self.program.display()), e))?;
        // Reap it in the background so it does not linger as a zombie.
        std::thread::spawn(move || child.wait());
        Ok(())
    }
}

impl Runs {
    /// Starts a run that outlives this process and waits until the store shows it (a
    /// retry: its new attempt). Returns the run as first seen.
    pub async fn launch(&self, launch: Launch) -> Result<RunRecord> {
        let launcher = self.launcher.as_ref().ok_or(Error::NoLauncher)?;
        if let Launch::Restart { previous, .. } = &launch {
            self.stop(previous, crate::STOP_WITHIN).await?;
        }
        // Two retries of one run at once would run it twice at once: one at a time, and
        // only of a run that has ended (as read now, not when the request came in).
        let _claim = match &launch {
            Launch::Retry { previous, .. } => Some(self.claim_retry(previous).await?),
            _ => None,
        };
        launcher.spawn(&launch.args(), launch.env())?;
        let (dag, run_id) = launch.target();
        let seen = self
            .watch(dag, run_id, VISIBLE_WITHIN, |r| launch.shows(r))
            .await?;
        seen.ok_or_else(|| Error::Deadline {
            run_id: run_id.to_string(),
            what: "start",
            within: VISIBLE_WITHIN,
        })
    }

    /// Marks `run` as being retried by this process, once it is known to have ended.
    async fn claim_retry(&self, run: &RunRecord) -> Result<Claim> {
        let key = (run.name.clone(), run.run_id.to_string());
        let fresh = {
            let mut busy = self.relaunching.lock().unwrap_or_else(|e| e.into_inner());
            busy.insert(key.clone())
        };
        if !fresh {
            return Err(Error::Busy {
                run_id: key.1.clone(),
            });
        }
        let claim = Claim(self.relaunching.clone(), key);
        let now = self.find(&run.name, Some(run.run_id.as_str())).await?;
        if !now.status.is_final() {
            return Err(Error::NotFinal {
                run_id: now.run_id.to_string(),
                status: now.status.as_str().to_string(),
            });
        }
        Ok(claim)
    }
}

/// A run being retried by this process; released when the launch is done.
struct Claim(
    std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    (String, String),
);

impl Drop for Claim {
    fn drop(&mut self) {
        let mut busy = self.0.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.1);
    }
}
