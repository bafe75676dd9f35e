//! `type: docker` (and `container`): each try of a step is one container, created through
//! the Docker Engine API on a unix socket (`DOCKER_HOST`, the step's `host`, or
//! `/var/run/docker.sock`) — Docker itself or Podman's compatible service. The container's
//! id is the step's handle; its name is the request's deterministic name, so a runner
//! that died between creating and recording it finds it again instead of starting a
//! second one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, StartContainerOptions,
};
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::docker_api::{call, copy_output, finished, follow_logs, remove, stop};
use crate::docker_config::{Config, Level, Target};
use crate::seam::{
    BoxFuture, Handle, Shared, SharedRequest, StartError, StepExecutor, StepRequest,
};

/// Calls that answer at once (create, start, inspect, kill) get this long.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
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
pub(crate) type Output = std::pin::Pin<
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

    pub(crate) fn removals(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn attached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Output>> {
        self.attached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host a step talks to, and a client for it.
    pub(crate) fn client(&self, config: &Config) -> Result<(String, bollard::Docker), StartError> {
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
            let id = match &config.target {
                Target::Image(image) => {
                    self.start_container(&client, &host, &config, image, req)
                        .await?
                }
                Target::Exec(container) => {
                    crate::docker_exec::start(self, &client, &host, &config, container, req).await?
                }
            };
            Ok(Handle::new("docker", id))
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).ok()?;
            let (host, client) = self.client(&config).ok()?;
            if let Some(exec) = crate::docker_exec::exec_id(&req.name) {
                return crate::docker_exec::find(&client, &host, exec).await;
            }
            let found = match crate::docker_api::inspect(&client, &host, &req.name).await {
                Ok(found) => found?,
                Err(e) => {
                    // Neither found nor known absent: starting anew could run the step
                    // twice, so the step fails instead (and can be retried).
                    tracing::error!(container = %req.name, "cannot tell whether the step's container exists: {e}");
                    return Some(Handle::new("docker", req.name.clone()));
                }
            };
            Some(Handle::new("docker", found.id?))
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
            if let Some(exec) = crate::docker_exec::exec_id(&handle.id) {
                return crate::docker_exec::wait(self, &client, &host, exec, req, cancel).await;
            }
            self.wait_container(client, &host, &config, &handle.id, req, cancel)
                .await
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

    fn probe<'a>(&'a self, config: &'a serde_json::Value) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let config = Config::parse_at(config, Level::Run)?;
            let (host, client) = self.client(&config).map_err(|e| e.0)?;
            match tokio::time::timeout(Duration::from_secs(5), client.ping()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("the Docker API at {host} does not answer: {e}")),
                Err(_) => Err(format!(
                    "the Docker API at {host} did not answer within 5 s"
                )),
            }
        })
    }

    fn check_shared(&self, config: &serde_json::Value) -> Result<(), String> {
        Config::parse_at(config, Level::Run).map(|_| ())
    }

    fn open_shared<'a>(
        &'a self,
        req: &'a SharedRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Shared, StartError>> {
        Box::pin(crate::docker_run::open(self, req, cancel))
    }

    fn close_shared<'a>(&'a self, shared: &'a Shared) -> BoxFuture<'a, ()> {
        Box::pin(crate::docker_run::close(self, shared))
    }
}

impl Docker {
    /// A new container for one try of a step, attached to before it starts.
    async fn start_container(
        &self,
        client: &bollard::Docker,
        host: &str,
        config: &Config,
        image: &str,
        req: &StepRequest,
    ) -> Result<String, StartError> {
        crate::docker_api::ensure_image(client, host, config, image).await?;
        let cmd = crate::docker_api::argv(&req.work, config.shell.as_deref())?;
        let body = crate::docker_api::container_body(
            config,
            cmd,
            &req.env,
            req.working_dir.as_deref(),
            &req.labels,
        );
        let name = config.name.clone().unwrap_or_else(|| req.name.clone());
        let id = self
            .create(client, host, &name, config, body, &req.labels)
            .await?;
        req.record(&Handle::new("docker", id.clone())).await;
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        match call(host, client.attach_container(&id, Some(attach))).await {
            Ok(attached) => {
                self.attached().insert(id.clone(), attached.output);
            }
            Err(e) => {
                tracing::debug!(container = %id, "attach failed, logs will be followed: {e}")
            }
        }
        let started = call(
            host,
            client.start_container(&id, None::<StartContainerOptions>),
        )
        .await;
        if let Err(e) = started {
            self.attached().remove(&id);
            let _ = remove(client, &id).await;
            return Err(StartError(format!(
                "cannot start the container of `{image}`: {e}"
            )));
        }
        Ok(id)
    }

    /// Starts a container that was created but never started (attached first, as in
    /// `start_container`); `None` when it had started.
    async fn start_created(
        &self,
        client: &bollard::Docker,
        host: &str,
        id: &str,
    ) -> Result<Option<crate::docker::Output>, StartError> {
        match crate::docker_api::state(client, host, id).await {
            Ok(Some(state)) if state.created => {}
            _ => return Ok(None),
        }
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let output = call(host, client.attach_container(id, Some(attach)))
            .await
            .ok()
            .map(|a| a.output);
        call(
            host,
            client.start_container(id, None::<StartContainerOptions>),
        )
        .await
        .map_err(|e| StartError(format!("cannot start container {id}: {e}")))?;
        Ok(output)
    }

    /// Creates a container named `name`. One of this run's that is in the way (a kept
    /// container of an earlier attempt of this try) is replaced: starting means new work,
    /// as a runner that died is resumed through `find`, not here. Anyone else's is not.
    pub(crate) async fn create(
        &self,
        client: &bollard::Docker,
        host: &str,
        name: &str,
        config: &Config,
        body: bollard::models::ContainerCreateBody,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, StartError> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            platform: config.platform.clone().unwrap_or_default(),
        };
        let create = || client.create_container(Some(options.clone()), body.clone());
        let mut created = call(host, create()).await;
        if matches!(&created, Err(e) if crate::docker_api::is_name_conflict(e)) {
            if !crate::docker_run::same_run(client, host, name, labels).await {
                return Err(StartError(format!(
                    "a container named `{name}` already exists and is not this run's: remove it, or change `name`"
                )));
            }
            let _ = remove(client, name).await;
            created = call(host, create()).await;
        }
        created.map(|c| c.id).map_err(|e| {
            StartError(format!(
                "cannot create a container of `{}`: {e}",
                config.what()
            ))
        })
    }

    /// Follows a step's own container to its end, stopping it on cancel or timeout.
    async fn wait_container(
        &self,
        client: bollard::Docker,
        host: &str,
        config: &Config,
        id: &str,
        req: &StepRequest,
        cancel: CancellationToken,
    ) -> Outcome {
        let mut attached = self.attached().remove(id);
        if attached.is_none() {
            // Created and recorded by a runner that died before starting it.
            match self.start_created(&client, host, id).await {
                Ok(output) => attached = output,
                Err(e) => return Outcome::SpawnFailed(e.0),
            }
        }
        // A limit the step set is the one the OOM killer may enforce: watched on this
        // machine (see `OomWatch`), at the cost of one more call.
        let local = host.starts_with("unix://") || host.starts_with('/');
        let pid = match config.mem_limit.is_some() && local {
            true => match crate::docker_api::state(&client, host, id).await {
                Ok(Some(state)) => state.pid,
                _ => 0,
            },
            false => 0,
        };
        let mut oom = crate::docker_api::OomWatch::open(pid);
        let follow = async {
            match attached {
                Some(output) => copy_output(output, req, (0, 0)).await,
                None => follow_logs(&client, id, req).await,
            }
        };
        let stopped = tokio::select! {
            r = follow => {
                if let Err(e) = r {
                    tracing::warn!(container = %id, "log stream of a step ended early: {e}");
                }
                None
            }
            _ = crate::docker_api::timer(req.timeout) => Some(Outcome::TimedOut),
            _ = cancel.cancelled() => Some(Outcome::Cancelled),
        };
        if let Some(stopped) = &stopped {
            stop(&client, id, req.stop_signal, req.grace).await;
            tracing::debug!(container = %id, "stopped: {stopped:?}");
        }
        let outcome = finished(&client, host, id, &mut oom).await;
        if config.auto_remove {
            // Off the step's path: Podman holds a removal until its cleanup process
            // is done (about 150 ms); `settle` waits for what is still going.
            let id = id.to_string();
            let removal = tokio::spawn(async move {
                if let Err(e) = remove(&client, &id).await {
                    tracing::warn!(container = %id, "cannot remove a finished step's container: {e}");
                }
            });
            self.removals().push(removal);
        }
        stopped.unwrap_or(outcome)
    }
}
