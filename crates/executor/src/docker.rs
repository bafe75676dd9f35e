//! `type: docker` (and `container`): each try of a step is one container, created through
//! the Docker Engine API on a unix socket (`DOCKER_HOST`, the step's `host`, or
//! `/var/run/docker.sock`) — Docker itself or Podman's compatible service. The container's
//! id is the step's handle; its name is the request's deterministic name, so a runner
//! that died between creating and recording it finds it again instead of starting a
//! second one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, InspectContainerOptions,
    KillContainerOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::docker_config::{Config, Pull};
use crate::seam::{BoxFuture, Handle, StartError, StepExecutor, StepRequest, Work};

/// Calls that answer at once (create, start, inspect, kill) get this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's own timeout covers a whole streamed response (logs of a long step), so it
/// is effectively off; [`CALL_TIMEOUT`] bounds the short calls.
const CLIENT_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// Podman 4 speaks API 1.41; Docker accepts older versions too.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// A container's output as the API streams it.
type Output = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

/// The Docker executor. Holds no connection: each step connects to its host.
#[derive(Clone, Default)]
pub struct Docker {
    /// `DOCKER_HOST` when the executor was built.
    host: Option<String>,
    /// Output streams attached before their containers started, by container id, until
    /// `wait` takes them: attaching first misses nothing, and the stream ends the moment
    /// the container does (following the logs instead ends up to a poll interval later).
    attached: Arc<Mutex<HashMap<String, Output>>>,
    /// Removals of finished containers still under way.
    removals: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker").field("host", &self.host).finish()
    }
}

impl Docker {
    pub fn from_env() -> Docker {
        Docker {
            host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
            attached: Arc::default(),
            removals: Arc::default(),
        }
    }

    fn removals(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Output>> {
        self.attached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host a step talks to, and a client for it.
    fn client(&self, config: &Config) -> Result<(String, bollard::Docker), StartError> {
        let host = config
            .host
            .clone()
            .or_else(|| self.host.clone())
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        let client = if let Some(path) = host
            .strip_prefix("unix://")
            .or(host.starts_with('/').then_some(host.as_str()))
        {
            bollard::Docker::connect_with_unix(path, CLIENT_TIMEOUT_SECS, &API_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            bollard::Docker::connect_with_http(&host, CLIENT_TIMEOUT_SECS, &API_VERSION)
        } else {
            return Err(StartError(format!(
                "docker host `{host}`: only unix:// sockets and tcp:// (plain) are supported"
            )));
        };
        let client = client
            .map_err(|e| StartError(format!("cannot reach the Docker API at {host}: {e}")))?;
        Ok((host, client))
    }
}

impl StepExecutor for Docker {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        Config::parse(config).map(|_| ())
    }

    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).map_err(StartError)?;
            let (host, client) = self.client(&config)?;
            ensure_image(&client, &host, &config).await?;
            let body = container_body(req, &config);
            let options = CreateContainerOptions {
                name: Some(req.name.clone()),
                platform: config.platform.clone().unwrap_or_default(),
            };
            let create = || client.create_container(Some(options.clone()), body.clone());
            let mut created = call(&host, create()).await;
            if matches!(&created, Err(e) if is_status(e, 409)) {
                // A kept container of an earlier attempt of this try: starting means new
                // work (a runner that died is resumed through `find`, not here).
                let _ = remove(&client, &req.name).await;
                created = call(&host, create()).await;
            }
            let id = match created {
                Ok(created) => created.id,
                Err(e) => {
                    return Err(StartError(format!(
                        "cannot create a container of `{}`: {e}",
                        config.image
                    )));
                }
            };
            let attach = AttachContainerOptions {
                stream: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            match call(&host, client.attach_container(&id, Some(attach))).await {
                Ok(attached) => {
                    self.attached().insert(id.clone(), attached.output);
                }
                Err(e) => {
                    tracing::debug!(container = %id, "attach failed, logs will be followed: {e}")
                }
            }
            let started = call(
                &host,
                client.start_container(&id, None::<StartContainerOptions>),
            )
            .await;
            if let Err(e) = started {
                self.attached().remove(&id);
                let _ = remove(&client, &id).await;
                return Err(StartError(format!(
                    "cannot start the container of `{}`: {e}",
                    config.image
                )));
            }
            Ok(Handle {
                executor: "docker".into(),
                id,
            })
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).ok()?;
            let (host, client) = self.client(&config).ok()?;
            let found = call(
                &host,
                client.inspect_container(&req.name, None::<InspectContainerOptions>),
            )
            .await
            .ok()?;
            Some(Handle {
                executor: "docker".into(),
                id: found.id?,
            })
        })
    }

    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let config = match Config::parse(&req.config) {
                Ok(c) => c,
                Err(e) => return Outcome::SpawnFailed(e),
            };
            let (host, client) = match self.client(&config) {
                Ok(c) => c,
                Err(e) => return Outcome::SpawnFailed(e.0),
            };
            let attached = self.attached().remove(&handle.id);
            let follow = async {
                match attached {
                    Some(output) => copy_output(output, req, (0, 0)).await,
                    None => follow_logs(&client, &handle.id, req).await,
                }
            };
            let timeout = async {
                match req.timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let stopped = tokio::select! {
                r = follow => {
                    if let Err(e) = r {
                        tracing::warn!(container = %handle.id, "log stream of a step ended early: {e}");
                    }
                    None
                }
                _ = timeout => Some(Outcome::TimedOut),
                _ = cancel.cancelled() => Some(Outcome::Cancelled),
            };
            if let Some(stopped) = &stopped {
                stop(&client, &handle.id, req.stop_signal, req.grace).await;
                tracing::debug!(container = %handle.id, "stopped: {stopped:?}");
            }
            let outcome = finished(&client, &host, &handle.id).await;
            if config.auto_remove {
                // Off the step's path: Podman holds a removal until its cleanup process
                // is done (about 150 ms); `settle` waits for what is still going.
                let id = handle.id.clone();
                let removal = tokio::spawn(async move {
                    if let Err(e) = remove(&client, &id).await {
                        tracing::warn!(container = %id, "cannot remove a finished step's container: {e}");
                    }
                });
                self.removals().push(removal);
            }
            stopped.unwrap_or(outcome)
        })
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let pending: Vec<_> = self.removals().drain(..).collect();
            for removal in pending {
                let _ = removal.await;
            }
        })
    }
}

/// Pulls the image when the pull policy says so; a missing image names itself.
async fn ensure_image(
    client: &bollard::Docker,
    host: &str,
    config: &Config,
) -> Result<(), StartError> {
    let present = call(host, client.inspect_image(&config.image))
        .await
        .is_ok();
    let pull = match config.pull {
        Pull::Always => true,
        Pull::Missing => !present,
        Pull::Never => false,
    };
    if !pull {
        return if present {
            Ok(())
        } else {
            Err(StartError(format!(
                "image `{}` is not present on {host} and `pull: never` forbids pulling it",
                config.image
            )))
        };
    }
    let options = CreateImageOptions {
        from_image: Some(config.image.clone()),
        platform: config.platform.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut progress = client.create_image(Some(options), None, config.registry_auth.clone());
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            if present {
                tracing::warn!(image = %config.image, "pull failed, using the local image: {e}");
                return Ok(());
            }
            return Err(StartError(format!(
                "image `{}` cannot be pulled: {e}",
                config.image
            )));
        }
    }
    Ok(())
}

fn container_body(req: &StepRequest, config: &Config) -> ContainerCreateBody {
    let mut env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(config.env.iter().map(|(k, v)| format!("{k}={v}")));
    let cmd = match &req.work {
        Work::Default => None,
        Work::Argv(argv) => Some(argv.clone()),
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
    };
    // Where a local step would run: its working dir, else this process's.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let base = req
        .working_dir
        .as_ref()
        .map_or(cwd.clone(), |d| cwd.join(d));
    let binds = config
        .volumes
        .iter()
        .map(|v| resolve_volume(v, &base))
        .collect();
    ContainerCreateBody {
        image: Some(config.image.clone()),
        cmd,
        entrypoint: config.entrypoint.clone(),
        env: Some(env),
        working_dir: config.working_dir.clone(),
        user: config.user.clone(),
        labels: Some(req.labels.clone().into_iter().collect::<HashMap<_, _>>()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: config.network.clone(),
            // Removed by us after the exit code is read, not by the engine at exit.
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `./data:/data` and `../x:/x` bind the step's working dir's paths; absolute paths and
/// named volumes (`cache:/cache`) stay as written.
fn resolve_volume(volume: &str, base: &Path) -> String {
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
async fn follow_logs(client: &bollard::Docker, id: &str, req: &StepRequest) -> std::io::Result<()> {
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
async fn copy_output(mut logs: Output, req: &StepRequest, skip: (u64, u64)) -> std::io::Result<()> {
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

/// The stop signal, then a kill once the grace period is over.
async fn stop(client: &bollard::Docker, id: &str, signal: Signal, grace: Duration) {
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

async fn running(client: &bollard::Docker, id: &str) -> bool {
    client
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state?.running)
        .unwrap_or(false)
}

/// How the container ended, once it has: its exit code, or "out of memory". Polled, not
/// `/wait`: Podman answers a wait up to its poll interval (250 ms) after the exit.
async fn finished(client: &bollard::Docker, host: &str, id: &str) -> Outcome {
    let socket = host
        .strip_prefix("unix://")
        .or(host.starts_with('/').then_some(host));
    for waits in 0u32.. {
        let state = match socket {
            Some(socket) => crate::docker_state::inspect(socket, id).await,
            None => typed_state(client, host, id).await,
        };
        let state = match state {
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
            if state.oom_killed {
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

/// [`crate::docker_state::inspect`] through the typed client, for TCP hosts.
async fn typed_state(
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
            }))
        }
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

async fn remove(client: &bollard::Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    client.remove_container(id, Some(options)).await
}

async fn call<T>(
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

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}
