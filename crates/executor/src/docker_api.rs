//! Calls on the Docker Engine API shared by the container kinds (a step's own container,
//! an exec into a running one, the run's shared container): pulling, creating, following
//! output, stopping, reading how a container ended.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateImageOptions, InspectContainerOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions,
};
use futures_util::StreamExt;
use nix::sys::signal::Signal;

use crate::Outcome;
use crate::docker::{CALL_TIMEOUT, Output};
use crate::docker_config::{Config, Pull, Target};
use crate::seam::{StartError, StepRequest, Work};

/// Pulls the image when the pull policy says so (with the credentials given for its
/// registry); a missing image names itself.
pub(crate) async fn ensure_image(
    client: &bollard::Docker,
    host: &str,
    config: &Config,
    image: &str,
) -> Result<(), StartError> {
    let present = call(host, client.inspect_image(image)).await.is_ok();
    let pull = match config.pull {
        Pull::Always | Pull::Fallback => true,
        Pull::Missing => !present,
        Pull::Never => false,
    };
    if !pull {
        return if present {
            Ok(())
        } else {
            Err(StartError(format!(
                "image `{image}` is not present on {host} and `pull: never` forbids pulling it"
            )))
        };
    }
    let options = CreateImageOptions {
        from_image: Some(image.to_string()),
        platform: config.platform.clone().unwrap_or_default(),
        ..Default::default()
    };
    let auth = crate::docker_auth::for_image(&config.registry_auths, image);
    let mut progress = client.create_image(Some(options), None, auth);
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            if present && config.pull != Pull::Always {
                tracing::warn!(image, "pull failed, using the local image: {e}");
                return Ok(());
            }
            return Err(StartError(format!("image `{image}` cannot be pulled: {e}")));
        }
    }
    Ok(())
}

/// The command a step's work becomes in a container (`None`: the image's own).
pub(crate) fn argv(
    work: &Work,
    shell: Option<&[String]>,
) -> Result<Option<Vec<String>>, StartError> {
    Ok(match work {
        Work::Default => None,
        Work::Argv(argv) => Some(argv.clone()),
        Work::Line(line) => match shell {
            Some(shell) => Some(shell.iter().cloned().chain([line.clone()]).collect()),
            None => Some(crate::split_command(line).ok_or_else(|| {
                StartError(format!(
                    "cannot split `{line}` into words (unbalanced quotes)"
                ))
            })?),
        },
        Work::Shell { shell, command } => {
            let mut argv = shell.clone();
            argv.push(command.clone());
            Some(argv)
        }
        Work::Script { program, text } => {
            let program = program.clone().unwrap_or_else(|| "sh".into());
            let mut argv: Vec<String> = program.split_whitespace().map(String::from).collect();
            argv.extend(["-c".to_string(), text.clone()]);
            Some(argv)
        }
    })
}

/// A new container: the step's command (or the run container's startup command), the
/// step's variables and then the options' `env`, binds resolved against `base_dir`.
pub(crate) fn container_body(
    config: &Config,
    cmd: Option<Vec<String>>,
    env: &[(String, String)],
    base_dir: Option<&Path>,
    labels: &std::collections::BTreeMap<String, String>,
) -> ContainerCreateBody {
    let image = match &config.target {
        Target::Image(image) | Target::Exec(image) => image.clone(),
    };
    let mut env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(config.env.iter().map(|(k, v)| format!("{k}={v}")));
    // Where a local step would run: its working dir, else this process's.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let base = base_dir.map_or(cwd.clone(), |d| cwd.join(d));
    let binds = config
        .volumes
        .iter()
        .map(|v| resolve_volume(v, &base))
        .collect();
    let (exposed, bindings) = ports(&config.ports);
    ContainerCreateBody {
        image: Some(image),
        cmd,
        entrypoint: config.entrypoint.clone(),
        env: Some(env),
        working_dir: config.working_dir.clone(),
        user: config.user.clone(),
        labels: Some(labels.clone().into_iter().collect::<HashMap<_, _>>()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: config.network.clone(),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            restart_policy: config.restart_policy.as_deref().map(restart_policy),
            memory: config.mem_limit,
            cpu_quota: config.cpu_quota,
            cpu_period: config.cpu_period,
            cpu_shares: config.cpu_shares,
            // Removed by us after the exit code is read, not by the engine at exit.
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type PortMap = HashMap<String, Option<Vec<PortBinding>>>;

/// `8080:80`, `127.0.0.1:8080:80/tcp` or `80`: exposed ports and their host bindings.
fn ports(specs: &[String]) -> (Vec<String>, PortMap) {
    let mut exposed = Vec::new();
    let mut bindings = PortMap::new();
    for spec in specs {
        let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
        let container = format!("{}/{proto}", parts[0]);
        let (host_port, host_ip) = match parts.as_slice() {
            [_, port] => (Some(port.to_string()), None),
            [_, port, ip] => (Some(port.to_string()), Some(ip.to_string())),
            _ => (None, None),
        };
        exposed.push(container.clone());
        if host_port.is_some() {
            bindings.insert(container, Some(vec![PortBinding { host_ip, host_port }]));
        }
    }
    (exposed, bindings)
}

fn restart_policy(name: &str) -> RestartPolicy {
    let name = match name {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => RestartPolicyNameEnum::NO,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

/// `./data:/data` and `../x:/x` bind the step's working dir's paths; absolute paths and
/// named volumes (`cache:/cache`) stay as written.
pub(crate) fn resolve_volume(volume: &str, base: &Path) -> String {
    let (host, rest) = volume.split_once(':').unwrap_or((volume, ""));
    let host = if host.starts_with("./") || host.starts_with("../") || host == "." {
        base.join(host.trim_start_matches("./"))
            .display()
            .to_string()
    } else {
        host.to_string()
    };
    if rest.is_empty() {
        host
    } else {
        format!("{host}:{rest}")
    }
}

/// Copies the container's output into the step's log files, skipping what they already
/// hold (a reattached step continues where its log stopped). Ends when the container does.
pub(crate) async fn follow_logs(
    client: &bollard::Docker,
    id: &str,
    req: &StepRequest,
) -> std::io::Result<()> {
    let skip = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let logs = Box::pin(client.logs(id, Some(options)));
    copy_output(logs, req, (skip(&req.stdout), skip(&req.stderr))).await
}

/// Appends a container's output to the step's log files, the first `skip` bytes of each
/// stream left out (already there), secrets masked.
pub(crate) async fn copy_output(
    mut logs: Output,
    req: &StepRequest,
    skip: (u64, u64),
) -> std::io::Result<()> {
    let mut out = crate::append(&req.stdout)?;
    let mut err = crate::append(&req.stderr)?;
    let (mut skip_out, mut skip_err) = skip;
    while let Some(chunk) = logs.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let (file, skip, bytes) = match chunk {
            LogOutput::StdErr { message } => (&mut err, &mut skip_err, message),
            other => (&mut out, &mut skip_out, other.into_bytes()),
        };
        let from = (*skip).min(bytes.len() as u64) as usize;
        *skip -= from as u64;
        let fresh = &bytes[from..];
        match &req.mask {
            Some(mask) if !mask.is_empty() => {
                file.write_all(mask.apply(&String::from_utf8_lossy(fresh)).as_bytes())?
            }
            _ => file.write_all(fresh)?,
        }
    }
    Ok(())
}

/// Ends after `timeout`, or never.
pub(crate) async fn timer(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// The stop signal, then a kill once the grace period is over.
pub(crate) async fn stop(client: &bollard::Docker, id: &str, signal: Signal, grace: Duration) {
    let kill = |signal: &str| KillContainerOptions {
        signal: signal.to_string(),
    };
    let _ = client.kill_container(id, Some(kill(signal.as_str()))).await;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !running(client, id).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = client.kill_container(id, Some(kill("SIGKILL"))).await;
}

pub(crate) async fn running(client: &bollard::Docker, id: &str) -> bool {
    client
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state?.running)
        .unwrap_or(false)
}

/// How the container ended, once it has: its exit code, or "out of memory". Polled, not
/// `/wait`: Podman answers a wait up to its poll interval (250 ms) after the exit.
pub(crate) async fn finished(
    client: &bollard::Docker,
    host: &str,
    id: &str,
    oom: &mut OomWatch,
) -> Outcome {
    for waits in 0u32.. {
        let state = match state(client, host, id).await {
            Ok(Some(state)) => state,
            Ok(None) => return Outcome::Lost(format!("container {id} vanished")),
            Err(e) if waits < 20 => {
                tracing::debug!(container = %id, "inspect failed, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Outcome::Lost(format!("container {id}: {e}")),
        };
        if !state.running {
            let code = state.exit_code as i32;

            if state.oom_killed || (code == 137 && oom.killed()) {
                return Outcome::Failed {
                    code: Some(code),
                    reason: "out of memory: the container was killed by the OOM killer".into(),
                };
            }
            return Outcome::Exited(code);
        }
        // The output stream can end just before the state says so.
        let pause = if waits < 100 { 5 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    unreachable!("the loop above returns")
}

/// Whether the OOM killer struck in a container's memory cgroup, read from the cgroup's
/// own counter (`oom_kill` in cgroup v2's `memory.events`, v1's `memory.oom_control`).
/// Docker reports that as `OOMKilled`; Podman on cgroup v1 does not, so the executor
/// opens the counter while the container runs (on this machine) and reads it at the end.
pub(crate) struct OomWatch(Option<std::fs::File>);

impl OomWatch {
    pub(crate) fn open(pid: i64) -> OomWatch {
        let file = (pid > 0)
            .then(|| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .flatten()
            .and_then(|groups| {
                groups.lines().find_map(|line| {
                    let mut parts = line.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    let file = match controllers {
                        "" => format!("/sys/fs/cgroup{path}/memory.events"),
                        c if c.split(',').any(|c| c == "memory") => {
                            format!("/sys/fs/cgroup/memory{path}/memory.oom_control")
                        }
                        _ => return None,
                    };
                    std::fs::File::open(file).ok()
                })
            });
        OomWatch(file)
    }

    /// Whether the counter shows a kill (false when it cannot be read).
    pub(crate) fn killed(&mut self) -> bool {
        use std::io::{Read, Seek};
        let Some(file) = &mut self.0 else {
            return false;
        };
        let mut text = String::new();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            return false;
        }
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }
}

/// A container's state: `None` when there is no such container.
pub(crate) async fn state(
    client: &bollard::Docker,
    host: &str,
    id: &str,
) -> std::io::Result<Option<crate::docker_state::State>> {
    let socket = host
        .strip_prefix("unix://")
        .or(host.starts_with('/').then_some(host));
    match socket {
        Some(socket) => crate::docker_state::inspect(socket, id).await,
        None => typed_state(client, host, id).await,
    }
}

/// [`crate::docker_state::inspect`] through the typed client, for TCP hosts.
pub(crate) async fn typed_state(
    client: &bollard::Docker,
    host: &str,
    id: &str,
) -> std::io::Result<Option<crate::docker_state::State>> {
    let found = call(
        host,
        client.inspect_container(id, None::<InspectContainerOptions>),
    )
    .await;
    match found {
        Ok(c) => {
            let state = c.state.unwrap_or_default();
            Ok(Some(crate::docker_state::State {
                running: state.running == Some(true),
                exit_code: state.exit_code.unwrap_or(-1),
                oom_killed: state.oom_killed == Some(true),
                created: matches!(
                    state.status,
                    Some(bollard::models::ContainerStateStatusEnum::CREATED)
                ),
                pid: state.pid.unwrap_or(0),
            }))
        }
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

pub(crate) async fn remove(
    client: &bollard::Docker,
    id: &str,
) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    // A busy service can fail a removal (its locks, a cleanup under way): tried again,
    // as a container left behind is a leak nobody sees.
    let mut tries = 0;
    loop {
        match client.remove_container(id, Some(options.clone())).await {
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) if tries < 5 => {
                tracing::debug!(container = id, "removal failed, trying again: {e}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 << tries)).await;
            }
            other => return other,
        }
    }
}

/// Inspects a container by name or id: `Ok(None)` only when there is none (404); other
/// failures (a busy service) are tried again before they are returned, since "not
/// there" leads to starting new work and a wrong "not there" would run a step twice.
pub(crate) async fn inspect(
    client: &bollard::Docker,
    host: &str,
    name: &str,
) -> Result<Option<bollard::models::ContainerInspectResponse>, bollard::errors::Error> {
    let mut tries = 0;
    loop {
        match call(
            host,
            client.inspect_container(name, None::<InspectContainerOptions>),
        )
        .await
        {
            Ok(found) => return Ok(Some(found)),
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) if tries < 5 => {
                tracing::debug!(container = name, "inspect failed, trying again: {e}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 << tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) async fn call<T>(
    host: &str,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, bollard::errors::Error> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(bollard::errors::Error::IOError {
            err: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{host} did not answer in {} s", CALL_TIMEOUT.as_secs()),
            ),
        }),
    }
}

/// Whether creating failed because the name is taken: 409 from Docker, 500 with "already
/// in use" from Podman.
pub(crate) fn is_name_conflict(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 409 || (*status_code == 500 && message.contains("already in use")),
        _ => false,
    }
}

pub(crate) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}
