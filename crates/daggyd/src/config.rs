//! daggyd's JSON config file, as Daggy documents it: `web-threads`, `dag-threads`, `port`,
//! `ip`, `logger: {name, config}`, `executor: {name, config}`. Raw JSON → [`Config`];
//! unknown keys are warnings (ignoring them cannot change what runs), unknown logger or
//! executor names and wrong types are errors.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// What the daemon was told, with Daggy's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Requests handled at once (Daggy's HTTP worker threads).
    pub web_threads: usize,
    /// Runs executing at once; more wait, queued.
    pub dag_threads: usize,
    pub ip: IpAddr,
    pub port: u16,
    pub logger: Logger,
    pub executor: Executor,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Logger {
    /// One event line per state change; `None` is stdout (`"file": "-"`).
    OStream { file: Option<PathBuf> },
    Redis {
        prefix: String,
        host: String,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Executor {
    /// Tasks as local process groups, at most `threads` at once across all runs.
    Forking { threads: usize },
    /// Each task a Slurm batch job; `defaults` lie under every task's job options.
    Slurm { defaults: Map<String, Value> },
    /// Every task succeeds without running (dry runs).
    Noop,
}

pub const LOGGERS: &[&str] = &["OStreamLogger", "RedisLogger"];
pub const EXECUTORS: &[&str] = &[
    "ForkingTaskExecutor",
    "SlurmTaskExecutor",
    "NoopTaskExecutor",
];
const KEYS: &[&str] = &[
    "web-threads",
    "dag-threads",
    "port",
    "ip",
    "logger",
    "executor",
];

impl Default for Config {
    fn default() -> Config {
        Config {
            web_threads: 50,
            dag_threads: 50,
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 2503,
            logger: Logger::OStream { file: None },
            executor: Executor::Forking { threads: 10 },
        }
    }
}

/// A config that cannot be used; the message names the key and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl Config {
    /// Reads a config file's text; the warnings list what was ignored.
    pub fn parse(text: &str) -> Result<(Config, Vec<String>), Error> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error(format!(
                "line {} column {}: not JSON: {e}",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(map) = value else {
            return Err(Error("a daggyd config is a JSON object".into()));
        };
        let mut warnings = Vec::new();
        for key in map.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            warnings.push(format!(
                "unknown key `{key}` ignored; the keys are: {}",
                KEYS.join(", ")
            ));
        }
        let mut config = Config::default();
        if let Some(v) = map.get("web-threads") {
            config.web_threads = count(v, "web-threads")?;
        }
        if let Some(v) = map.get("dag-threads") {
            config.dag_threads = count(v, "dag-threads")?;
        }
        if let Some(v) = map.get("port") {
            config.port = u16::try_from(number(v, "port")?)
                .map_err(|_| Error("`port` must be at most 65535".into()))?;
        }
        if let Some(v) = map.get("ip") {
            config.ip = ip(v)?;
        }
        if let Some(v) = map.get("logger") {
            config.logger = logger(v, &mut warnings)?;
        }
        if let Some(v) = map.get("executor") {
            config.executor = executor(v, &mut warnings)?;
        }
        Ok((config, warnings))
    }
}

fn number(v: &Value, key: &str) -> Result<u64, Error> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| Error(format!("`{key}` must be a whole number, found {v}")))
}

fn count(v: &Value, key: &str) -> Result<usize, Error> {
    match number(v, key)? {
        0 => Err(Error(format!("`{key}` must be at least 1"))),
        n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

fn ip(v: &Value) -> Result<IpAddr, Error> {
    let text = v
        .as_str()
        .ok_or_else(|| Error(format!("`ip` must be a string, found {v}")))?;
    match text {
        "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
        t => t
            .parse()
            .map_err(|_| Error(format!("`ip` `{t}` is not an IP address (or `localhost`)"))),
    }
}

/// `{name, config}` of a logger or executor.
fn named<'a>(
    v: &'a Value,
    what: &str,
    valid: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(&'a str, Map<String, Value>), Error> {
    let Value::Object(map) = v else {
        return Err(Error(format!(
            "`{what}` must be an object with `name` and `config`"
        )));
    };
    for key in map.keys().filter(|k| *k != "name" && *k != "config") {
        warnings.push(format!(
            "unknown key `{what}.{key}` ignored; the keys are: name, config"
        ));
    }
    let name = map.get("name").and_then(Value::as_str).ok_or_else(|| {
        Error(format!(
            "`{what}.name` is missing; it is one of: {}",
            valid.join(", ")
        ))
    })?;
    if !valid.contains(&name) {
        return Err(Error(format!(
            "unknown {what} `{name}`; the {what}s are: {}",
            valid.join(", ")
        )));
    }
    let config = match map.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c.clone(),
        Some(other) => {
            return Err(Error(format!(
                "`{what}.config` must be an object, found {other}"
            )));
        }
    };
    Ok((name, config))
}

fn unknown(config: &Map<String, Value>, what: &str, known: &[&str], warnings: &mut Vec<String>) {
    for key in config.keys().filter(|k| !known.contains(&k.as_str())) {
        warnings.push(format!(
            "unknown key `{what}.config.{key}` ignored; the keys are: {}",
            known.join(", ")
        ));
    }
}

fn logger(v: &Value, warnings: &mut Vec<String>) -> Result<Logger, Error> {
    let (name, config) = named(v, "logger", LOGGERS, warnings)?;
    if name == "OStreamLogger" {
        unknown(&config, "logger", &["file"], warnings);
        let file = match config.get("file") {
            None => None,
            Some(Value::String(f)) if f == "-" => None,
            Some(Value::String(f)) if !f.is_empty() => Some(PathBuf::from(f)),
            Some(other) => {
                return Err(Error(format!(
                    "`logger.config.file` must be a path or \"-\", found {other}"
                )));
            }
        };
        return Ok(Logger::OStream { file });
    }
    unknown(&config, "logger", &["prefix", "host", "port"], warnings);
    let text = |key: &str, default: &str| -> Result<String, Error> {
        match config.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(Error(format!(
                "`logger.config.{key}` must be a non-empty string, found {other}"
            ))),
        }
    };
    let prefix = text("prefix", "daggy")?;
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error(format!(
            "`logger.config.prefix` `{prefix}` may hold only letters, digits, `-`, `_` and `.`"
        )));
    }
    let port = match config.get("port") {
        None => 6379,
        Some(v) => u16::try_from(number(v, "logger.config.port")?)
            .map_err(|_| Error("`logger.config.port` must be at most 65535".into()))?,
    };
    Ok(Logger::Redis {
        prefix,
        host: text("host", "localhost")?,
        port,
    })
}

fn executor(v: &Value, warnings: &mut Vec<String>) -> Result<Executor, Error> {
    let (name, config) = named(v, "executor", EXECUTORS, warnings)?;
    match name {
        "ForkingTaskExecutor" => {
            unknown(&config, "executor", &["threads"], warnings);
            let threads = match config.get("threads") {
                None => 10,
                Some(v) => count(v, "executor.config.threads")?,
            };
            Ok(Executor::Forking { threads })
        }
        "SlurmTaskExecutor" => {
            // Any job option of the slurm executor, as a default for every task.
            trellis_executor::slurm_config::Config::parse(&Value::Object(config.clone()))
                .map_err(|e| Error(format!("`executor.config`: {e}")))?;
            Ok(Executor::Slurm { defaults: config })
        }
        _ => {
            unknown(&config, "executor", &[], warnings);
            Ok(Executor::Noop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_config_reads_with_its_defaults() {
        let text = r#"{"web-threads": 50, "dag-threads": 50, "port": 2503, "ip": "localhost",
            "logger": {"name": "RedisLogger", "config": {}},
            "executor": {"name": "ForkingTaskExecutor", "config": {"threads": 4}}}"#;
        let (config, warnings) = Config::parse(text).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.executor, Executor::Forking { threads: 4 });
        assert_eq!(
            config.logger,
            Logger::Redis {
                prefix: "daggy".into(),
                host: "localhost".into(),
                port: 6379
            }
        );
        assert!(config.ip.is_loopback());
    }

    #[test]
    fn unknown_names_are_errors_naming_the_valid_ones() {
        let e = Config::parse(r#"{"logger": {"name": "FileSystemLogger"}}"#).unwrap_err();
        assert!(e.0.contains("OStreamLogger, RedisLogger"), "{e}");
        let e = Config::parse(r#"{"executor": {"name": "Forking"}}"#).unwrap_err();
        assert!(
            e.0.contains("ForkingTaskExecutor, SlurmTaskExecutor"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let (_, warnings) = Config::parse(
            r#"{"colour": 1, "logger": {"name": "OStreamLogger", "config": {"fle": "x"}}}"#,
        )
        .expect("valid");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`colour`"));
        assert!(warnings[1].contains("`logger.config.fle`"));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::parse(r#"{"port": 70000}"#).is_err());
        assert!(Config::parse(r#"{"ip": "my-host"}"#).is_err());
        assert!(
            Config::parse(
                r#"{"executor": {"name": "ForkingTaskExecutor", "config": {"threads": 0}}}"#
            )
            .is_err()
        );
        assert!(
            Config::parse(r#"{"executor": {"name": "SlurmTaskExecutor", "config": {"nodez": 2}}}"#)
                .is_err()
        );
        let e = Config::parse("{\n \"port\": 1,\n}").unwrap_err();
        assert!(e.0.starts_with("line 3 column 1"), "{e}");
    }
}
