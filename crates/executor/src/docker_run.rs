//! The DAG-level `container:`: one container a whole run's command steps are exec'd
//! into. It is started before the first step (from `image`, by `startup`: a keepalive
//! command, the image's entrypoint, or a given command), waited for (running, and a log
//! line matching `log_pattern`), and removed when the run ends unless kept. Its name is
//! per run, so a run resumed after its runner died finds it again and carries on in it.
//! With `exec:` (or a bare name) the run uses a container someone else runs.

use std::time::Duration;

use bollard::query_parameters::{LogsOptions, StartContainerOptions};
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::docker::Docker;
use crate::docker_api::{call, container_body, ensure_image, remove, state};
use crate::docker_config::{Config, Level, Startup, Target};
use crate::seam::{Handle, Shared, SharedRequest, StartError};

/// Waits and loops on `sleep`, so the container stays up for execs and SIGTERM ends it.
const KEEPALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";
/// How long the container may take to run and to print `log_pattern`.
const READY_WAIT: Duration = Duration::from_secs(120);

pub(crate) async fn open(
    docker: &Docker,
    req: &SharedRequest,
    cancel: CancellationToken,
) -> Result<Shared, StartError> {
    let config = Config::parse_at(&req.config, Level::Run).map_err(StartError)?;
    let (host, client) = docker.client(&config)?;
    let mut step_config = json!({"host": host});
    for (key, value) in [("user", &config.user), ("working_dir", &config.working_dir)] {
        if let Some(value) = value {
            step_config[key] = json!(value);
        }
    }
    let (id, remove) = match &config.target {
        Target::Exec(name) => (name.clone(), false),
        Target::Image(image) => {
            let name = config.name.clone().unwrap_or_else(|| req.name.clone());
            let id = match resumed(&client, &host, &name, req).await {
                Some(id) => id,
                None => start(docker, &client, &host, &config, image, &name, req).await?,
            };
            ready(&client, &host, &config, &id, cancel).await?;
            (id, config.auto_remove)
        }
    };
    step_config["exec"] = json!(id);
    Ok(Shared {
        handle: Handle::new("docker", id),
        step_config,
        remove,
    })
}

pub(crate) async fn close(docker: &Docker, shared: &Shared) {
    if !shared.remove {
        return;
    }
    let Ok(config) = Config::parse(&shared.step_config) else {
        return;
    };
    if let Ok((_, client)) = docker.client(&config)
        && let Err(e) = remove(&client, &shared.handle.id).await
    {
        tracing::warn!(container = %shared.handle.id, "cannot remove the run's container: {e}");
    }
}

/// The container a resumed run left running, when this is the same run's.
async fn resumed(
    client: &bollard::Docker,
    host: &str,
    name: &str,
    req: &SharedRequest,
) -> Option<String> {
    let found = crate::docker_api::inspect(client, host, name)
        .await
        .ok()??;
    let labels = found.config.as_ref()?.labels.as_ref()?;
    let ours = labels.get("trellis.run_id") == req.labels.get("trellis.run_id");
    let running = found.state.as_ref()?.running == Some(true);
    (ours && running).then_some(found.id?)
}

async fn start(
    docker: &Docker,
    client: &bollard::Docker,
    host: &str,
    config: &Config,
    image: &str,
    name: &str,
    req: &SharedRequest,
) -> Result<String, StartError> {
    ensure_image(client, host, config, image).await?;
    let mut config = config.clone();
    let cmd = match &config.startup {
        Startup::Keepalive => {
            config.entrypoint = Some(vec!["sh".into(), "-c".into(), KEEPALIVE.into()]);
            Some(Vec::new())
        }
        Startup::Entrypoint => None,
        Startup::Command(command) => Some(command.clone()),
    };
    let body = container_body(&config, cmd, &[], req.working_dir.as_deref(), &req.labels);
    let id = docker
        .create(client, host, name, &config, body, &req.labels)
        .await?;
    call(
        host,
        client.start_container(&id, None::<StartContainerOptions>),
    )
    .await
    .map_err(|e| {
        StartError(format!(
            "cannot start the run's container of `{image}`: {e}"
        ))
    })?;
    Ok(id)
}

/// Waits for the container to run and, with `log_pattern`, for a matching log line.
async fn ready(
    client: &bollard::Docker,
    host: &str,
    config: &Config,
    id: &str,
    cancel: CancellationToken,
) -> Result<(), StartError> {
    let wait = async {
        loop {
            match state(client, host, id).await {
                Ok(Some(s)) if s.running => break,
                Ok(Some(s)) => {
                    return Err(StartError(format!(
                        "the run's container exited (code {}) before any step ran",
                        s.exit_code
                    )));
                }
                Ok(None) => return Err(StartError("the run's container vanished".into())),
                Err(e) => tracing::debug!(container = id, "inspect failed, trying again: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match &config.log_pattern {
            Some(pattern) => log_match(client, id, pattern).await,
            None => Ok(()),
        }
    };
    tokio::select! {
        r = tokio::time::timeout(READY_WAIT, wait) => r.unwrap_or_else(|_| Err(StartError(format!(
            "the run's container was not ready within {} s", READY_WAIT.as_secs()
        )))),
        _ = cancel.cancelled() => Err(StartError("cancelled while the run's container started".into())),
    }
}

async fn log_match(
    client: &bollard::Docker,
    id: &str,
    pattern: &regex::Regex,
) -> Result<(), StartError> {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut logs = client.logs(id, Some(options));
    let mut line = String::new();
    while let Some(chunk) = logs.next().await {
        let Ok(chunk) = chunk else { break };
        line.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        while let Some(end) = line.find('\n') {
            if pattern.is_match(&line[..end]) {
                return Ok(());
            }
            line.drain(..=end);
        }
        if pattern.is_match(&line) {
            return Ok(());
        }
    }
    Err(StartError(format!(
        "the run's container ended its output before a line matched `{pattern}`"
    )))
}

/// Whether the container called `name` was made by the run the labels name.
pub(crate) async fn same_run(
    client: &bollard::Docker,
    host: &str,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let Ok(Some(found)) = crate::docker_api::inspect(client, host, name).await else {
        return false;
    };
    let theirs = found
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get("trellis.run_id").cloned());
    theirs.is_some() && theirs.as_ref() == labels.get("trellis.run_id")
}
