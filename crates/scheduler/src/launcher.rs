//! The container run launcher (Dagster's `DockerRunLauncher`): with `run_launcher:
//! {type: docker, config: {...}}` in the config file, each run the scheduler starts runs
//! as `trellis run-queued` in a container of its own, against the same store. The data
//! and dags dirs are mounted at the same paths, so the records, logs and file paths the
//! run writes mean the same inside and out. The container is made through the docker
//! executor, so it has a deterministic name per run: a scheduler that died while it ran
//! is followed by one that finds it and waits for it, never starting a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_executor::{StepRequest, Work};

/// `run_launcher:` in the config file: `type: docker | k8s`, or Dagster's `module:` and
/// `class:` lines (`DockerRunLauncher`, `K8sRunLauncher`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLauncher {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub config: LauncherConfig,
}

/// The launchers this build has, as the executor each runs its runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Docker,
    Kubernetes,
}

impl Launcher {
    /// The step executor that starts and follows a run's container or Job.
    pub fn executor(self) -> &'static str {
        match self {
            Launcher::Docker => "docker",
            Launcher::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LauncherConfig {
    /// An image with `trellis` on its PATH (`job_image` for Kubernetes, as Dagster).
    #[serde(default, alias = "job_image")]
    pub image: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    /// Variables passed from the scheduler's environment (`NAME`) or set (`NAME=value`).
    #[serde(default)]
    pub env_vars: Vec<String>,
    /// Options of the container: volumes, mem_limit, cpu_quota, cpu_period, cpu_shares,
    /// user, working_dir, environment.
    #[serde(default)]
    pub container_kwargs: IndexMap<String, Value>,
    /// The Docker API (default: `DOCKER_HOST`, else /var/run/docker.sock).
    #[serde(default)]
    pub host: Option<String>,
    /// When to pull the image: always, missing (the default), never.
    #[serde(default)]
    pub pull: Option<String>,
    // Kubernetes: seed 003's `K8sRunLauncher` keys, see [`crate::launcher_k8s`].
    #[serde(default)]
    pub job_namespace: Option<String>,
    /// Use the pod's service account (a scheduler running in the cluster).
    #[serde(default)]
    pub load_incluster_config: Option<bool>,
    #[serde(default)]
    pub kubeconfig_file: Option<String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub image_pull_secrets: Option<Value>,
    /// Config maps and secrets whose keys become the run's variables.
    #[serde(default)]
    pub env_config_maps: Vec<String>,
    #[serde(default)]
    pub env_secrets: Vec<String>,
    #[serde(default)]
    pub resources: Option<Value>,
    #[serde(default)]
    pub labels: IndexMap<String, Value>,
    #[serde(default)]
    pub annotations: IndexMap<String, Value>,
    #[serde(default)]
    pub volumes: Option<Value>,
    #[serde(default)]
    pub volume_mounts: Option<Value>,
    #[serde(default)]
    pub node_selector: Option<Value>,
    #[serde(default)]
    pub tolerations: Option<Value>,
}

/// Where the run's container gets its store and files from.
pub struct Mounts<'a> {
    pub home: &'a Path,
    pub dags_dir: &'a Path,
    /// Variables of the scheduler the run needs for the same store (`TRELLIS_HOME`,
    /// `TRELLIS_DATA_DIR`, `TRELLIS_LOG_DIR`, `TRELLIS_DATABASE_URL`).
    pub store_env: Vec<(String, String)>,
}

/// One run to launch.
pub struct Launch<'a> {
    pub dag: &'a str,
    pub run_id: &'a str,
    pub file: &'a str,
    pub params: Option<&'a str>,
    pub scheduled_time: Option<&'a str>,
}

impl RunLauncher {
    /// Refuses what would not be acted on: another launcher type, unknown container
    /// options, an option the docker executor rejects.
    pub fn check(&self) -> Result<(), String> {
        let mounts = Mounts {
            home: Path::new("/home"),
            dags_dir: Path::new("/dags"),
            store_env: Vec::new(),
        };
        let launcher = self.launcher()?;
        let config = self.executor_config(launcher, &mounts)?;
        match trellis_executor::check_step(launcher.executor(), &config) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("run_launcher: {e}")),
            None => Err(format!(
                "run_launcher: this build has no {} executor",
                launcher.executor()
            )),
        }
    }

    /// Which launcher `type:` (or Dagster's `class:`) names.
    pub fn launcher(&self) -> Result<Launcher, String> {
        let named = match (&self.kind, &self.class) {
            (Some(kind), _) => kind.as_str(),
            (None, Some(class)) => class.as_str(),
            (None, None) => return Err("run_launcher: `type:` is required (docker or k8s)".into()),
        };
        match named {
            "docker" | "DockerRunLauncher" => Ok(Launcher::Docker),
            "k8s" | "kubernetes" | "K8sRunLauncher" => Ok(Launcher::Kubernetes),
            other => Err(format!(
                "run_launcher: `{other}` is not built; the launchers are: docker (DockerRunLauncher), k8s (K8sRunLauncher)"
            )),
        }
    }

    /// The `with:` of the executor that starts a run's container or Job.
    pub fn executor_config(&self, launcher: Launcher, mounts: &Mounts) -> Result<Value, String> {
        match launcher {
            Launcher::Docker => {
                self.config.refuse_k8s_keys("docker")?;
                self.docker_config(mounts)
            }
            Launcher::Kubernetes => {
                let c = &self.config;
                let docker_only = [
                    ("network", c.network.is_some()),
                    ("container_kwargs", !c.container_kwargs.is_empty()),
                    ("host", c.host.is_some()),
                    ("pull", c.pull.is_some()),
                ];
                if let Some((key, _)) = docker_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "run_launcher: `{key}` is a docker launcher option; for k8s see image_pull_policy, resources, volumes"
                    ));
                }
                c.k8s_with()
            }
        }
    }

    /// The docker executor's `with:` for a run's container.
    fn docker_config(&self, mounts: &Mounts) -> Result<Value, String> {
        let c = &self.config;
        let image = c
            .image
            .as_deref()
            .ok_or("run_launcher: config.image is required")?;
        let mut volumes = vec![
            format!("{0}:{0}", mounts.home.display()),
            format!("{0}:{0}:ro", mounts.dags_dir.display()),
        ];
        let mut with = json!({
            "image": image,
            "pull": c.pull.clone().unwrap_or_else(|| "missing".into()),
            // Only `trellis` on the PATH is needed, whatever the image's entrypoint.
            "entrypoint": ["trellis"],
        });
        for (key, value) in [("network", &c.network), ("host", &c.host)] {
            if let Some(value) = value {
                with[key] = json!(value);
            }
        }
        let mut env = Vec::new();
        for (key, value) in &c.container_kwargs {
            match key.as_str() {
                "volumes" => volumes.extend(kwarg_volumes(value)?),
                "environment" => env.extend(kwarg_env(value)?),
                "mem_limit" | "cpu_quota" | "cpu_period" | "cpu_shares" | "user"
                | "working_dir" => {
                    with[key.as_str()] = value.clone();
                }
                other => {
                    return Err(format!(
                        "run_launcher: container_kwargs.{other} is not acted on; the options are: volumes, environment, mem_limit, cpu_quota, cpu_period, cpu_shares, user, working_dir"
                    ));
                }
            }
        }
        with["volumes"] = json!(volumes);
        with["env"] = json!(env);
        Ok(with)
    }

    /// The request that starts (or finds again) a run's container.
    pub fn request(
        &self,
        launch: &Launch,
        mounts: &Mounts,
        logs: &Path,
    ) -> Result<StepRequest, String> {
        let launcher = self.launcher()?;
        let mut argv = vec![
            "run-queued".to_string(),
            format!("--run-id={}", launch.run_id),
            format!("--file={}", launch.file),
        ];
        if let Some(params) = launch.params {
            argv.push(format!("--params={params}"));
        }
        if let Some(at) = launch.scheduled_time {
            argv.push(format!("--scheduled-time={at}"));
        }
        argv.push(launch.dag.to_string());
        let name = trellis_executor::external_name(&format!(
            "trellis-run-{}-{}",
            launch.dag, launch.run_id
        ));
        let mut env = mounts.store_env.clone();
        env.push((
            trellis_store::HOST_NAME_VAR.to_string(),
            match launcher {
                Launcher::Docker => format!("container/{name}"),
                Launcher::Kubernetes => format!("job/{name}"),
            },
        ));
        env.extend(self.passed_env());
        if launcher == Launcher::Kubernetes {
            // A Job's command replaces the image's entrypoint.
            argv.insert(0, "trellis".into());
        }
        Ok(StepRequest {
            name,
            work: Work::Argv(argv),
            env,
            working_dir: None,
            config: self.executor_config(launcher, mounts)?,
            stdout: logs.join(format!("{}.out", launch.run_id)),
            stderr: logs.join(format!("{}.err", launch.run_id)),
            timeout: None,
            stop_signal: Signal::SIGTERM,
            // The run inside stops its steps on SIGTERM, which may take their own grace.
            grace: Duration::from_secs(60),
            mask: None,
            labels: BTreeMap::from([
                ("trellis.launcher".to_string(), "run".to_string()),
                ("trellis.dag".to_string(), launch.dag.to_string()),
                ("trellis.run_id".to_string(), launch.run_id.to_string()),
            ]),
            record: None,
        })
    }

    fn passed_env(&self) -> Vec<(String, String)> {
        self.config
            .env_vars
            .iter()
            .filter_map(|var| match var.split_once('=') {
                Some((k, v)) => Some((k.to_string(), v.to_string())),
                None => std::env::var(var).ok().map(|v| (var.clone(), v)),
            })
            .collect()
    }
}

/// docker-py's `volumes`: a list of `host:container[:mode]`, or a mapping of host path to
/// `{bind, mode}`.
fn kwarg_volumes(value: &Value) -> Result<Vec<String>, String> {
    let bad = || {
        "run_launcher: container_kwargs.volumes must be a list of host:container[:mode] or a mapping of host path to {bind, mode}".to_string()
    };
    match value {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(String::from).ok_or_else(bad))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(host, spec)| {
                let bind = spec.get("bind").and_then(Value::as_str).ok_or_else(bad)?;
                let mode = spec.get("mode").and_then(Value::as_str).unwrap_or("rw");
                Ok(format!("{host}:{bind}:{mode}"))
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// docker-py's `environment`: a mapping or a list of `K=V`.
fn kwarg_env(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .filter(|s| s.contains('='))
                    .map(String::from)
                    .ok_or_else(|| {
                        "run_launcher: container_kwargs.environment items must be K=V".into()
                    })
            })
            .collect(),
        _ => Err("run_launcher: container_kwargs.environment must be a mapping or a list".into()),
    }
}

/// Where the launched containers' own output (trellis's, not the steps') goes.
pub fn log_dir(data: &Path) -> PathBuf {
    data.join("launcher")
}
