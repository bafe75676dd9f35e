//! A slurm step's `with:`: the job's resources and extra `sbatch` arguments, checked key
//! by key (an unknown key is an error naming the known ones).

use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `--partition`, `--nodes`, ... in the order of [`RESOURCES`].
    pub resources: Vec<(&'static str, String)>,
    /// More `sbatch` arguments, as written.
    pub sbatch_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where the job starts, on the cluster (default: the step's working dir).
    pub working_dir: Option<String>,
    /// The interpreter of a command line (default `/bin/sh`).
    pub shell: Option<String>,
    /// Where the job writes its output files (`<job name>.stdout` / `.stderr`), for whom
    /// wants them kept (Daggy's `logdir`); default: spool files beside the step's logs.
    /// Absolute: the job's node and trellis must both find it, and on the same filesystem.
    pub log_dir: Option<String>,
}

/// `with:` key → `sbatch` option.
const RESOURCES: &[(&str, &str)] = &[
    ("partition", "--partition"),
    ("nodes", "--nodes"),
    ("ntasks", "--ntasks"),
    ("cpus_per_task", "--cpus-per-task"),
    ("mem", "--mem"),
    ("mem_per_cpu", "--mem-per-cpu"),
    ("time", "--time"),
    ("gres", "--gres"),
    ("account", "--account"),
    ("qos", "--qos"),
    ("constraint", "--constraint"),
    ("reservation", "--reservation"),
];

const OTHER: &[&str] = &["sbatch_args", "env", "working_dir", "shell", "log_dir"];

impl Config {
    pub fn parse(value: &Value) -> Result<Config, String> {
        let empty = serde_json::Map::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => return Err("slurm: `with:` must be a mapping of options".into()),
        };
        let mut config = Config::default();
        for (key, value) in map {
            let key = key.replace('-', "_");
            if let Some((_, flag)) = RESOURCES.iter().find(|(k, _)| *k == key) {
                config.resources.push((flag, scalar(value, &key)?));
                continue;
            }
            match key.as_str() {
                "sbatch_args" | "extra_args" => config.sbatch_args = args(value)?,
                "env" => config.env = env(value)?,
                "working_dir" => config.working_dir = Some(scalar(value, &key)?),
                "shell" => config.shell = Some(scalar(value, &key)?),
                "log_dir" => config.log_dir = Some(log_dir(value)?),
                other => {
                    let known: Vec<&str> = RESOURCES
                        .iter()
                        .map(|(k, _)| *k)
                        .chain(OTHER.iter().copied())
                        .collect();
                    return Err(format!(
                        "slurm: unknown option `{other}`; the options are: {}",
                        known.join(", ")
                    ));
                }
            }
        }
        config
            .resources
            .sort_by_key(|(flag, _)| RESOURCES.iter().position(|(_, f)| f == flag));
        for arg in &config.sbatch_args {
            for owned in [
                "--job-name",
                "-J",
                "--output",
                "-o",
                "--error",
                "-e",
                "--parsable",
                "--wait",
                "-W",
                "--chdir",
                "-D",
            ] {
                if arg == owned || arg.starts_with(&format!("{owned}=")) {
                    return Err(format!(
                        "slurm: `{arg}` in sbatch_args is set by trellis (job name, logs, working dir)"
                    ));
                }
            }
        }
        Ok(config)
    }
}

fn scalar(value: &Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("slurm: `{key}` must be a string or a number")),
    }
}

/// An absolute directory: a relative one would be read against the job's working dir on
/// the node, and against trellis's own elsewhere.
fn log_dir(value: &Value) -> Result<String, String> {
    let dir = scalar(value, "log_dir")?;
    if !dir.starts_with('/') {
        return Err(format!(
            "slurm: `log_dir: {dir}` must be an absolute path (on a filesystem the job's node shares)"
        ));
    }
    Ok(dir)
}

fn args(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => shlex::split(s)
            .ok_or_else(|| format!("slurm: `sbatch_args: {s}` has unbalanced quotes")),
        Value::Array(items) => items.iter().map(|i| scalar(i, "sbatch_args")).collect(),
        _ => Err("slurm: `sbatch_args` must be a list or a string".into()),
    }
}

fn env(value: &Value) -> Result<Vec<(String, String)>, String> {
    let pair = |k: &str, v: &Value| -> Result<(String, String), String> {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("slurm: `{k}` is not a variable name"));
        }
        Ok((k.to_string(), scalar(v, "env")?))
    };
    match value {
        Value::Object(map) => map.iter().map(|(k, v)| pair(k, v)).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i.as_str().and_then(|s| s.split_once('=')) {
                Some((k, v)) => pair(k, &Value::String(v.to_string())),
                None => Err("slurm: env items must be KEY=VALUE".into()),
            })
            .collect(),
        _ => Err("slurm: `env` must be a mapping or a list of KEY=VALUE".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_become_sbatch_options_and_unknown_keys_are_refused() {
        let c = Config::parse(
            &json!({"partition": "debug", "cpus-per-task": 2, "mem": "1G",
            "sbatch_args": "--exclusive --comment 'a b'", "env": {"A": 1}}),
        )
        .expect("valid");
        assert_eq!(
            c.resources,
            [
                ("--partition", "debug".to_string()),
                ("--cpus-per-task", "2".into()),
                ("--mem", "1G".into())
            ]
        );
        assert_eq!(c.sbatch_args, ["--exclusive", "--comment", "a b"]);
        assert_eq!(c.env, [("A".to_string(), "1".to_string())]);
        assert!(
            Config::parse(&json!({"colour": 1}))
                .unwrap_err()
                .contains("`colour`")
        );
        assert!(Config::parse(&json!({"sbatch_args": ["--output=x"]})).is_err());
    }

    #[test]
    fn log_dir_must_be_absolute() {
        let c = Config::parse(&json!({"log_dir": "/shared/logs"})).expect("valid");
        assert_eq!(c.log_dir.as_deref(), Some("/shared/logs"));
        let err = Config::parse(&json!({"log-dir": "logs"})).unwrap_err();
        assert!(err.contains("absolute"), "{err}");
        assert!(
            Config::parse(&json!({"colour": 1}))
                .unwrap_err()
                .contains("log_dir")
        );
    }
}
