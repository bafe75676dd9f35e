//! The Trellis config file (`--config FILE` or `TRELLIS_CONFIG`), the parts the scheduler
//! reads. `docs/CONFIG.md` documents the whole schema.

use crate::Error;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use trellis_core::queue::{Limits, TagLimit};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub run_queue: RunQueue,
    #[serde(default)]
    pub queues: IndexMap<String, QueueConfig>,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Where runs of DAGs without a `worker_selector` go: `local` (this process, the
    /// default) or `distributed` (any worker).
    #[serde(default, alias = "defaultExecutionMode")]
    pub default_execution_mode: ExecutionMode,
    #[serde(default)]
    pub storage: Storage,
    /// Runs each run the scheduler starts in a container of its own (`type: docker`).
    #[serde(default, alias = "runLauncher")]
    pub run_launcher: Option<crate::launcher::RunLauncher>,
    /// Where command steps that name no type run, and defaults of each type's `with:`.
    #[serde(default)]
    pub executors: Executors,
}

/// `executors:` — `default: slurm` sends command steps that name no type to Slurm;
/// `slurm: {...}` (any step type) is laid under every such step's `with:`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Executors {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(flatten)]
    pub with: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Executors {
    /// Refuses a type no executor serves and options its executor rejects.
    pub fn check(&self) -> Result<(), String> {
        if let Some(kind) = &self.default {
            let with = self.with.get(kind).cloned().unwrap_or_default();
            match trellis_executor::check_step(kind, &with) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(format!("executors.default: {kind}: {e}")),
                None => return Err(format!("executors.default: no executor serves `{kind}`")),
            }
        }
        for (kind, with) in &self.with {
            match trellis_executor::check_step(kind, with) {
                Some(Ok(())) => {}
                // Defaults for a type that takes its image from each step are checked with
                // the step.
                Some(Err(e)) if kind != "docker" || !e.contains("`image` is required") => {
                    return Err(format!("executors.{kind}: {e}"));
                }
                Some(Err(_)) => {}
                None => return Err(format!("executors.{kind}: no executor serves `{kind}`")),
            }
        }
        Ok(())
    }

    /// For [`trellis_executor::set_defaults`].
    pub fn defaults(&self) -> trellis_executor::Defaults {
        trellis_executor::Defaults {
            default: self.default.clone(),
            with: self.with.clone(),
        }
    }
}

/// Where runs, queues and shared state live: `backend: file` (the default, under the data
/// dir) or `postgres`/`mysql`/`mariadb` with a `url`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default, alias = "dsn")]
    pub url: Option<String>,
}

impl Storage {
    /// The database URL this section selects; `None` for the file store.
    pub fn database_url(&self) -> Result<Option<String>, Error> {
        match (self.backend.as_deref(), &self.url) {
            (None | Some("file"), None) => Ok(None),
            (Some("file"), Some(_)) => Err(Error::UrlWithoutDatabase),
            (Some("postgres" | "postgresql" | "mysql" | "mariadb") | None, Some(url)) => {
                Ok(Some(url.clone()))
            }
            (Some(b @ ("postgres" | "postgresql" | "mysql" | "mariadb")), None) => {
                Err(Error::MissingUrl {
                    backend: b.to_string(),
                })
            }
            (Some(other), _) => Err(Error::UnknownBackend {
                backend: other.to_string(),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    #[default]
    Local,
    Distributed,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQueue {
    /// -1 or absent: unlimited.
    #[serde(default)]
    pub max_concurrent_runs: Option<i64>,
    #[serde(default)]
    pub tag_concurrency_limits: Vec<TagLimit>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(
        alias = "max_concurrency",
        alias = "maxConcurrency",
        alias = "maxConcurrentRuns"
    )]
    pub max_concurrent_runs: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Paths {
    #[serde(default, alias = "dagsDir")]
    pub dags_dir: Option<PathBuf>,
    #[serde(default, alias = "dataDir")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, alias = "logDir")]
    pub log_dir: Option<PathBuf>,
    #[serde(default, alias = "serviceRegistryDir")]
    pub service_registry_dir: Option<PathBuf>,
    /// Where `state.*` steps keep their values (default `<data dir>/dag-state`).
    #[serde(default, alias = "dagStateDir")]
    pub dag_state_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// A run queued longer than this is failed with the reason it could not start.
    #[serde(default)]
    pub queue_timeout_sec: Option<u64>,
    /// Ticks missed by at most this much (a leader change) fire even without a
    /// `catchup_window`.
    #[serde(default = "default_grace")]
    pub failover_grace_sec: u64,
}

fn default_grace() -> u64 {
    60
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            queue_timeout_sec: None,
            failover_grace_sec: default_grace(),
        }
    }
}

impl Config {
    /// Reads a YAML (or JSON) config file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let json = load_json(path)?;
        if json.is_null() {
            return Ok(Config::default());
        }
        let config: Config = serde_json::from_value(json).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        config.executors.check().map_err(|message| Error::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        if let Some(launcher) = &config.run_launcher {
            launcher.check().map_err(|message| Error::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        }
        Ok(config)
    }

    /// The queue limits this config sets.
    pub fn limits(&self) -> Limits {
        Limits {
            max_concurrent_runs: self
                .run_queue
                .max_concurrent_runs
                .filter(|n| *n >= 0)
                .map(|n| n as usize),
            tag_concurrency_limits: self.run_queue.tag_concurrency_limits.clone(),
            queues: self
                .queues
                .iter()
                .map(|(k, v)| (k.clone(), v.max_concurrent_runs))
                .collect(),
        }
    }
}

/// The config file as JSON, for the sections other crates read (`server`, `auth`).
pub fn load_json(path: &Path) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let docs = trellis_spec::yaml::parse(&text).map_err(|e| {
        let (line, col) = trellis_spec::diag::line_col(&text, e.span.offset);
        Error::Syntax {
            path: path.to_path_buf(),
            line,
            col,
            message: e.message,
        }
    })?;
    Ok(docs
        .first()
        .map_or(serde_json::Value::Null, trellis_spec::yaml::Node::to_json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dagster_style_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "run_queue:\n  max_concurrent_runs: 3\n  tag_concurrency_limits:\n    - key: team\n      limit: 2\n    - key: db\n      value: pg\n      limit: 1\n    - key: user\n      limit: 1\n      per_unique_value: true\nqueues:\n  etl: {max_concurrent_runs: 2}\n").unwrap();
        let limits = Config::load(&path).unwrap().limits();
        assert_eq!(limits.max_concurrent_runs, Some(3));
        assert_eq!(limits.tag_concurrency_limits.len(), 3);
        assert!(limits.tag_concurrency_limits[2].per_unique_value);
        assert_eq!(limits.queues.get("etl"), Some(&2));
        std::fs::write(&path, "run_queue:\n  max_concurent_runs: 3\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("max_concurent_runs")
        );
    }
}
