//! A docker step's `with:` (Dagu 2.x snake_case, its camelCase spellings, and v1's
//! `executor.config`), checked key by key: an unknown key is an error naming the known
//! ones, never ignored.

use serde_json::Value;

/// When to pull the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    Always,
    /// Only when it is not present (the default).
    Missing,
    Never,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub image: String,
    pub pull: Pull,
    pub auto_remove: bool,
    pub volumes: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Inside the container.
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub network: Option<String>,
    pub platform: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    /// The Docker API to use instead of `DOCKER_HOST`.
    pub host: Option<String>,
    pub registry_auth: Option<bollard::auth::DockerCredentials>,
}

/// Every key, with its other spellings.
const KEYS: &[(&str, &[&str])] = &[
    ("image", &[]),
    ("pull", &[]),
    ("auto_remove", &["autoRemove"]),
    ("volumes", &[]),
    ("env", &[]),
    ("working_dir", &["workingDir", "workdir"]),
    ("user", &[]),
    ("network", &[]),
    ("platform", &[]),
    ("entrypoint", &[]),
    ("host", &[]),
];

impl Config {
    pub fn parse(value: &Value) -> Result<Config, String> {
        let empty = serde_json::Map::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => return Err("docker: `with:` must be a mapping of options".into()),
        };
        for key in map.keys() {
            if !KEYS
                .iter()
                .any(|(k, alts)| k == key || alts.contains(&key.as_str()))
            {
                return Err(unknown(key));
            }
        }
        let get = |key: &str| {
            let alts = KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(&[][..], |(_, a)| a);
            map.get(key)
                .or_else(|| alts.iter().find_map(|a| map.get(*a)))
        };
        let image = match get("image") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(_) => return Err("docker: `image` must be a non-empty string".into()),
            None => return Err("docker: `image` is required (the image the step runs in)".into()),
        };
        Ok(Config {
            image,
            pull: pull(get("pull"))?,
            auto_remove: flag(get("auto_remove"), "auto_remove")?.unwrap_or(true),
            volumes: strings(get("volumes"), "volumes")?,
            env: env(get("env"))?,
            working_dir: text(get("working_dir"), "working_dir")?,
            user: text(get("user"), "user")?,
            network: text(get("network"), "network")?,
            platform: text(get("platform"), "platform")?,
            entrypoint: entrypoint(get("entrypoint"))?,
            host: host(get("host"))?,
            registry_auth: None,
        })
    }
}

fn unknown(key: &str) -> String {
    let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let hint = match key {
        "container_name" | "containerName" | "exec" => {
            " (running a step inside an existing container is not built yet)"
        }
        "container" => " (v1's raw `container:` object is not read: use env, working_dir, user)",
        _ => "",
    };
    format!(
        "docker: unknown option `{key}`{hint}; the options are: {}",
        known.join(", ")
    )
}

fn pull(v: Option<&Value>) -> Result<Pull, String> {
    Ok(match v {
        None => Pull::Missing,
        Some(Value::Bool(true)) => Pull::Always,
        Some(Value::Bool(false)) => Pull::Never,
        Some(Value::String(s)) => match s.as_str() {
            "always" => Pull::Always,
            "missing" => Pull::Missing,
            "never" => Pull::Never,
            other => {
                return Err(format!(
                    "docker: `pull: {other}`: use always, missing or never"
                ));
            }
        },
        Some(_) => return Err("docker: `pull` must be always, missing or never".into()),
    })
}

fn flag(v: Option<&Value>, key: &str) -> Result<Option<bool>, String> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("docker: `{key}` must be true or false")),
    }
}

fn text(v: Option<&Value>, key: &str) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("docker: `{key}` must be a string")),
    }
}

fn strings(v: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("docker: every item of `{key}` must be a string")),
            })
            .collect(),
        Some(_) => Err(format!("docker: `{key}` must be a list of strings")),
    }
}

/// `env:` as a list of `K=V` strings or a mapping.
fn env(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                scalar(v)
                    .map(|v| (k.clone(), v))
                    .ok_or_else(|| format!("docker: `env.{k}` must be a scalar"))
            })
            .collect(),
        Some(Value::Array(_)) => strings(v, "env")?
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(format!("docker: env item `{kv}` is not KEY=VALUE")),
            })
            .collect(),
        Some(_) => Err("docker: `env` must be a list of KEY=VALUE or a mapping".into()),
    }
}

fn entrypoint(v: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => shlex::split(s)
            .map(Some)
            .ok_or_else(|| format!("docker: `entrypoint: {s}` has unbalanced quotes")),
        Some(Value::Array(_)) => strings(v, "entrypoint").map(Some),
        Some(_) => Err("docker: `entrypoint` must be a string or a list".into()),
    }
}

fn host(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(_)) => Err(
            "docker: v1's raw `host:` object (HostConfig) is not read: use volumes, network and \
             auto_remove; `host:` as a string names the Docker API (unix:///path or tcp://)"
                .into(),
        ),
        Some(_) => Err("docker: `host` must be a socket address string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_spellings_and_refuses_unknown_keys() {
        let c = Config::parse(&json!({"image": "busybox", "autoRemove": false,
            "env": {"A": 1}, "workingDir": "/w", "pull": "never", "entrypoint": "sh -c"}))
        .expect("valid");
        assert!(!c.auto_remove);
        assert_eq!(c.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.pull, Pull::Never);
        assert_eq!(c.entrypoint, Some(vec!["sh".into(), "-c".into()]));
        let e = Config::parse(&json!({"image": "x", "colour": 1})).unwrap_err();
        assert!(e.contains("`colour`") && e.contains("image, pull"), "{e}");
        assert!(
            Config::parse(&json!({"pull": "never"}))
                .unwrap_err()
                .contains("`image` is required")
        );
        assert!(Config::parse(&json!({"image": "x", "pull": "sometimes"})).is_err());
    }
}
