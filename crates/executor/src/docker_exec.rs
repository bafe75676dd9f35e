//! Steps exec'd into a running container: one named by the step (`exec:` or
//! `container_name`, Dagu's string `container:`), or the run's shared container. The
//! handle is `exec:<exec id>`.
//!
//! Docker keeps an exec going when its client goes, but cannot attach to it again: a
//! step reattached after its runner died is followed to its exit code, and its log says
//! that the output written while nobody listened is not there.

use std::io::Write;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::docker::Docker;
use crate::docker_api::{argv, call, copy_output, state, timer};
use crate::docker_config::Config;
use crate::seam::{Handle, StartError, StepRequest};

const PREFIX: &str = "exec:";
/// How long a step waits for its container to be running (Dagu's 120 s).
const RUNNING_WAIT: Duration = Duration::from_secs(120);

/// The exec id in a handle id, when it is an exec's.
pub(crate) fn exec_id(handle_id: &str) -> Option<&str> {
    handle_id.strip_prefix(PREFIX)
}

/// Starts the step's command in `container`, attached, once the container runs.
pub(crate) async fn start(
    docker: &Docker,
    client: &bollard::Docker,
    host: &str,
    config: &Config,
    container: &str,
    req: &StepRequest,
) -> Result<String, StartError> {
    wait_running(client, host, container).await?;
    let mut env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(config.env.iter().map(|(k, v)| format!("{k}={v}")));
    let options = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        // Nothing given: the shell, as `docker exec` has no image command to fall back on.
        cmd: Some(argv(&req.work, config.shell.as_deref())?.unwrap_or_else(|| vec!["sh".into()])),
        env: Some(env),
        user: config.user.clone(),
        working_dir: config.working_dir.clone(),
        ..Default::default()
    };
    let created = call(host, client.create_exec(container, options))
        .await
        .map_err(|e| StartError(format!("cannot exec into container `{container}`: {e}")))?;
    let id = format!("{PREFIX}{}", created.id);
    // Recorded before it starts: an exec has no name to be found by after a crash.
    req.record(&Handle::new("docker", id.clone())).await;
    start_created(docker, client, host, &created.id)
        .await
        .map_err(|e| StartError(format!("cannot exec into container `{container}`: {e}")))?;
    Ok(id)
}

/// Starts a created exec, attached.
async fn start_created(
    docker: &Docker,
    client: &bollard::Docker,
    host: &str,
    exec: &str,
) -> Result<(), bollard::errors::Error> {
    let started = call(host, client.start_exec(exec, None::<StartExecOptions>)).await?;
    if let StartExecResults::Attached { output, .. } = started {
        docker.attached().insert(format!("{PREFIX}{exec}"), output);
    }
    Ok(())
}

/// Whether an exec was created and never started (its runner died in between).
async fn never_started(client: &bollard::Docker, host: &str, exec: &str) -> bool {
    matches!(
        call(host, client.inspect_exec(exec)).await,
        Ok(e) if e.running != Some(true) && e.pid.unwrap_or(0) == 0
    )
}

/// Podman reports an exec that has ended with pid 0, as one never started: starting it
/// then fails with "can only start created exec sessions". It ran (its runner died while
/// it did): it is followed to its exit code, never started again.
fn already_ran(e: &bollard::errors::Error) -> bool {
    e.to_string()
        .contains("can only start created exec sessions")
}

/// Waits up to [`RUNNING_WAIT`] for `container` to be running; one that does not exist
/// fails at once.
async fn wait_running(
    client: &bollard::Docker,
    host: &str,
    container: &str,
) -> Result<(), StartError> {
    let deadline = tokio::time::Instant::now() + RUNNING_WAIT;
    loop {
        match state(client, host, container).await {
            Ok(Some(s)) if s.running => return Ok(()),
            Ok(None) => {
                return Err(StartError(format!(
                    "no container named `{container}` on {host} to exec into"
                )));
            }
            Ok(Some(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Some(_)) => {
                return Err(StartError(format!(
                    "container `{container}` is not running (waited {} s)",
                    RUNNING_WAIT.as_secs()
                )));
            }
            Err(e) => {
                return Err(StartError(format!(
                    "cannot read container `{container}` on {host}: {e}"
                )));
            }
        }
    }
}

pub(crate) async fn find(client: &bollard::Docker, host: &str, exec: &str) -> Option<Handle> {
    call(host, client.inspect_exec(exec)).await.ok()?;
    Some(Handle::new("docker", format!("{PREFIX}{exec}")))
}

/// Follows an exec to its end: its output while attached, then its exit code.
pub(crate) async fn wait(
    docker: &Docker,
    client: &bollard::Docker,
    host: &str,
    exec: &str,
    req: &StepRequest,
    cancel: CancellationToken,
) -> Outcome {
    let key = format!("{PREFIX}{exec}");
    let held = docker.attached().contains_key(&key);
    if !held
        && never_started(client, host, exec).await
        && let Err(e) = start_created(docker, client, host, exec).await
        && !already_ran(&e)
    {
        return Outcome::SpawnFailed(format!("cannot start exec {exec}: {e}"));
    }
    let attached = docker.attached().remove(&key);
    let follow = async {
        match attached {
            Some(output) => copy_output(output, req, (0, 0)).await,
            None => {
                note_lost_output(req);
                ended(client, host, exec).await;
                Ok(())
            }
        }
    };
    let stopped = tokio::select! {
        r = follow => {
            if let Err(e) = r {
                tracing::warn!(exec, "output stream of a step ended early: {e}");
            }
            None
        }
        _ = timer(req.timeout) => Some(Outcome::TimedOut),
        _ = cancel.cancelled() => Some(Outcome::Cancelled),
    };
    if stopped.is_some() {
        stop(client, host, exec, req.stop_signal, req.grace).await;
    }
    let outcome = ended(client, host, exec).await;
    stopped.unwrap_or(outcome)
}

fn note_lost_output(req: &StepRequest) {
    if let Ok(mut err) = crate::append(&req.stderr) {
        let _ = writeln!(
            err,
            "trellis: the runner of this step restarted while it ran; what the step wrote since is not kept (an exec cannot be re-attached)"
        );
    }
}

/// Polls the exec until it has ended; its exit code.
async fn ended(client: &bollard::Docker, host: &str, exec: &str) -> Outcome {
    for polls in 0u32.. {
        match call(host, client.inspect_exec(exec)).await {
            Ok(e) if e.running != Some(true) => {
                return Outcome::Exited(e.exit_code.unwrap_or(-1) as i32);
            }
            Ok(_) => {}
            Err(e) if polls > 20 => return Outcome::Lost(format!("exec {exec}: {e}")),
            Err(_) => {}
        }
        let pause = if polls < 100 { 5 } else { 250 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    unreachable!("the loop above returns")
}

/// The stop signal to the exec'd process, then SIGKILL after the grace period. The
/// API has no call for this: the process is signalled by its host pid, which works
/// when the API's host is this machine (a unix socket).
async fn stop(client: &bollard::Docker, host: &str, exec: &str, signal: Signal, grace: Duration) {
    let pid = match call(host, client.inspect_exec(exec)).await {
        Ok(e) if e.running == Some(true) => e.pid.unwrap_or(0),
        _ => return,
    };
    let local = host.starts_with("unix://") || host.starts_with('/');
    if pid <= 0 || !local {
        tracing::warn!(
            exec,
            host,
            "cannot stop an exec on a remote Docker host; it runs on"
        );
        return;
    }
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, signal);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        match call(host, client.inspect_exec(exec)).await {
            Ok(e) if e.running == Some(true) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
}
