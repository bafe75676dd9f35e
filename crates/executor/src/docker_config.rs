//! A docker step's `with:` (Dagu 2.x snake_case, its camelCase spellings, and v1's
//! `executor.config`), checked key by key: an unknown key is an error naming the known
//! ones, never ignored.

use serde_json::Value;

/// When to pull the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Every time; a failed pull fails the step.
    Always,
    /// Only when it is not present (the default).
    Missing,
    Never,
    /// Try a pull, and use the local image when it fails.
    Fallback,
}

/// What the container of a step is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new container of this image.
    Image(String),
    /// An existing, running container (name or id) the step is exec'd into.
    Exec(String),
}

/// Where the options were written: a step's `with:` / `container:`, or the DAG-level
/// `container:` every step of a run shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Step,
    Run,
}

/// How the DAG-level container starts (Dagu's `startup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// A command that only waits, so steps can be exec'd in (the default).
    Keepalive,
    /// The image's own entrypoint and command.
    Entrypoint,
    /// This command.
    Command(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
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
    /// The container's name instead of the run's deterministic one.
    pub name: Option<String>,
    /// `host:container` or `container` port publications.
    pub ports: Vec<String>,
    pub restart_policy: Option<String>,
    pub startup: Startup,
    /// Steps wait for a line of the container's log to match this.
    pub log_pattern: Option<regex::Regex>,
    /// Credentials by registry host (the DAG's `registry_auths`).
    pub registry_auths: crate::docker_auth::Auths,
    /// What a step's command line is run with (`["bash", "-c"]`); without it the line is
    /// split into words and run with no shell.
    pub shell: Option<Vec<String>>,
    /// Limits: memory in bytes, CPU quota and period (microseconds), relative shares.
    pub mem_limit: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_shares: Option<i64>,
}

/// Every key, with its other spellings and where it may be written.
const KEYS: &[(&str, &[&str], Where)] = &[
    ("image", &[], Where::Image),
    ("exec", &[], Where::Any),
    ("container_name", &["containerName"], Where::Any),
    ("name", &[], Where::Image),
    ("pull", &["pull_policy", "pullPolicy"], Where::Image),
    ("auto_remove", &["autoRemove"], Where::Image),
    ("keep_container", &["keepContainer"], Where::Image),
    ("volumes", &[], Where::Image),
    ("env", &[], Where::Any),
    ("working_dir", &["workingDir", "workdir"], Where::Any),
    ("user", &[], Where::Any),
    ("network", &[], Where::Image),
    ("platform", &[], Where::Image),
    ("entrypoint", &[], Where::Image),
    ("host", &[], Where::Any),
    ("ports", &[], Where::Image),
    ("restart_policy", &["restartPolicy"], Where::RunImage),
    ("startup", &[], Where::RunImage),
    ("command", &[], Where::RunImage),
    ("wait_for", &["waitFor"], Where::RunImage),
    ("log_pattern", &["logPattern"], Where::RunImage),
    ("registry_auths", &[], Where::Any),
    ("shell", &[], Where::Any),
    ("mem_limit", &["memory"], Where::Image),
    ("cpu_quota", &[], Where::Image),
    ("cpu_period", &[], Where::Image),
    ("cpu_shares", &[], Where::Image),
];

/// Where a key applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Any,
    /// Only when a new container is made (not when exec'ing into one).
    Image,
    /// Only for the DAG-level container, when a new one is made.
    RunImage,
}

type Map = serde_json::Map<String, Value>;

impl Config {
    /// A step's `with:` (or its own `container:`).
    pub fn parse(value: &Value) -> Result<Config, String> {
        Config::parse_at(value, Level::Step)
    }

    pub fn parse_at(value: &Value, level: Level) -> Result<Config, String> {
        let empty = Map::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => &empty,
            Value::String(name) if !name.trim().is_empty() => {
                return Config::parse_at(&serde_json::json!({"exec": name}), level);
            }
            _ => return Err("docker: the options must be a mapping".into()),
        };
        let target = target(map)?;
        check_keys(map, level, &target)?;
        let get = |key: &str| lookup(map, key);
        let mut env = env(get("env"))?;
        let mut working_dir = text(get("working_dir"), "working_dir")?;
        let mut user = text(get("user"), "user")?;
        if let Some(Value::Object(options)) = get("exec") {
            exec_options(options, &mut env, &mut working_dir, &mut user)?;
        }
        let keep = flag(get("keep_container"), "keep_container")?;
        let auto_remove = flag(get("auto_remove"), "auto_remove")?;
        if let (Some(keep), Some(remove)) = (keep, auto_remove)
            && keep == remove
        {
            return Err("docker: `keep_container` and `auto_remove` disagree".into());
        }
        let startup = startup(get("startup"), get("command"))?;
        if level == Level::Run && startup == Startup::Keepalive && get("entrypoint").is_some() {
            return Err("docker: `entrypoint` goes with `startup: entrypoint` or `startup: command` (the default, keepalive, runs its own)".into());
        }
        Ok(Config {
            target,
            pull: pull(get("pull"))?,
            auto_remove: auto_remove.or(keep.map(|k| !k)).unwrap_or(true),
            volumes: strings(get("volumes"), "volumes")?,
            env,
            working_dir,
            user,
            network: text(get("network"), "network")?,
            platform: text(get("platform"), "platform")?,
            entrypoint: entrypoint(get("entrypoint"))?,
            host: host(get("host"))?,
            name: text(get("name"), "name")?,
            ports: strings(get("ports"), "ports")?,
            restart_policy: restart_policy(get("restart_policy"))?,
            startup,
            log_pattern: log_pattern(get("log_pattern"))?,
            registry_auths: crate::docker_auth::parse(get("registry_auths"))?,
            shell: shell(get("shell"))?,
            mem_limit: bytes(get("mem_limit"))?,
            cpu_quota: number(get("cpu_quota"), "cpu_quota")?,
            cpu_period: number(get("cpu_period"), "cpu_period")?,
            cpu_shares: number(get("cpu_shares"), "cpu_shares")?,
        })
    }

    /// The image, for messages; the container's name when exec'ing.
    pub fn what(&self) -> &str {
        match &self.target {
            Target::Image(image) | Target::Exec(image) => image,
        }
    }
}

fn lookup<'a>(map: &'a Map, key: &str) -> Option<&'a Value> {
    let alts = KEYS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or(&[][..], |(_, a, _)| a);
    map.get(key)
        .or_else(|| alts.iter().find_map(|a| map.get(*a)))
}

/// A new container of `image`, or an existing one named by `exec` (a string, or v1's
/// exec options beside `container_name`).
fn target(map: &Map) -> Result<Target, String> {
    let image = match lookup(map, "image") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(_) => return Err("docker: `image` must be a non-empty string".into()),
        None => None,
    };
    let name = |v: Option<&Value>, key: &str| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(Value::Object(_)) if key == "exec" => Ok(None),
        Some(_) => Err(format!("docker: `{key}` must name a container")),
        None => Ok(None),
    };
    let exec = name(lookup(map, "exec"), "exec")?;
    let container = name(lookup(map, "container_name"), "container_name")?;
    if matches!(lookup(map, "exec"), Some(Value::Object(_))) && container.is_none() {
        return Err(
            "docker: exec options need `container_name` (the container to exec into)".into(),
        );
    }
    match (image, exec.or(container)) {
        (Some(image), None) => Ok(Target::Image(image)),
        (None, Some(name)) => Ok(Target::Exec(name)),
        (Some(_), Some(_)) => Err(
            "docker: `image` makes a new container and `exec`/`container_name` use an existing one: give one of them"
                .into(),
        ),
        (None, None) => Err(
            "docker: `image` is required (the image the step runs in), or `exec`/`container_name` for a running container"
                .into(),
        ),
    }
}

/// Refuses keys this build does not know, and keys that do not apply where they are.
fn check_keys(map: &Map, level: Level, target: &Target) -> Result<(), String> {
    for key in map.keys() {
        let Some((canonical, _, place)) = KEYS
            .iter()
            .find(|(k, alts, _)| k == key || alts.contains(&key.as_str()))
        else {
            return Err(unknown(key));
        };
        let exec = matches!(target, Target::Exec(_));
        if exec && *place != Where::Any {
            return Err(format!(
                "docker: `{key}` does not apply when exec'ing into an existing container (only user, working_dir and env do)"
            ));
        }
        if *place == Where::RunImage && level == Level::Step {
            return Err(format!(
                "docker: `{key}` applies only to the DAG-level `container:` (the one every step shares)"
            ));
        }
        if *canonical == "wait_for" {
            match lookup(map, "wait_for") {
                Some(Value::String(w)) if w == "running" => {}
                Some(Value::String(w)) if w == "healthy" => {
                    return Err("docker: `wait_for: healthy` is not acted on: health checks do not run on the API services this is tested on; use `wait_for: running` with `log_pattern`".into());
                }
                _ => return Err("docker: `wait_for` must be `running`".into()),
            }
        }
    }
    Ok(())
}

/// v1's `exec:` options (Docker's ExecOptions): user, working dir and env only.
fn exec_options(
    options: &Map,
    env_out: &mut Vec<(String, String)>,
    working_dir: &mut Option<String>,
    user: &mut Option<String>,
) -> Result<(), String> {
    for (key, value) in options {
        match key.as_str() {
            "user" | "User" => *user = text(Some(value), "exec.user")?,
            "working_dir" | "workingDir" | "WorkingDir" => {
                *working_dir = text(Some(value), "exec.working_dir")?
            }
            "env" | "Env" => env_out.extend(env(Some(value))?),
            other => {
                return Err(format!(
                    "docker: exec option `{other}` is not read; the exec options are user, working_dir and env"
                ));
            }
        }
    }
    Ok(())
}

fn unknown(key: &str) -> String {
    let known: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
    let hint = match key {
        "container" => " (v1's raw `container:` object is not read: use env, working_dir, user)",
        "healthcheck" => {
            " (health checks are not acted on: the API services this is tested on run none, so `wait_for: healthy` could never be met; use `log_pattern`)"
        }
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
            "fallback" => Pull::Fallback,
            other => {
                return Err(format!(
                    "docker: `pull: {other}`: use always, missing, never or fallback"
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
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::Object(_) => out.extend(env(Some(item))?),
                    Value::String(kv) => match kv.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), v.to_string())),
                        None => return Err(format!("docker: env item `{kv}` is not KEY=VALUE")),
                    },
                    _ => {
                        return Err(
                            "docker: every item of `env` must be KEY=VALUE or a mapping".into()
                        );
                    }
                }
            }
            Ok(out)
        }
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

fn restart_policy(v: Option<&Value>) -> Result<Option<String>, String> {
    match text(v, "restart_policy")? {
        None => Ok(None),
        Some(p)
            if matches!(
                p.as_str(),
                "no" | "always" | "unless-stopped" | "on-failure"
            ) =>
        {
            Ok(Some(p))
        }
        Some(p) => Err(format!(
            "docker: `restart_policy: {p}`: use no, always, unless-stopped or on-failure"
        )),
    }
}

/// `startup` (keepalive, entrypoint, command) with `command` for the last, and
/// `wait_for` (only `running`: see [`unknown`] on health checks).
fn startup(mode: Option<&Value>, command: Option<&Value>) -> Result<Startup, String> {
    let command = match command {
        None => None,
        Some(Value::String(s)) => Some(
            shlex::split(s)
                .ok_or_else(|| format!("docker: `command: {s}` has unbalanced quotes"))?,
        ),
        Some(v) => Some(strings(Some(v), "command")?),
    };
    match (text(mode, "startup")?.as_deref(), command) {
        (None | Some("command"), Some(c)) if !c.is_empty() => Ok(Startup::Command(c)),
        (Some("command"), _) => {
            Err("docker: `startup: command` needs a non-empty `command`".into())
        }
        (None | Some("keepalive"), None) => Ok(Startup::Keepalive),
        (Some("entrypoint"), None) => Ok(Startup::Entrypoint),
        (Some("keepalive" | "entrypoint"), Some(_)) => {
            Err("docker: `command` goes with `startup: command`".into())
        }
        (None, Some(_)) => Err("docker: `command` must not be empty".into()),
        (Some(other), _) => Err(format!(
            "docker: `startup: {other}`: use keepalive, entrypoint or command"
        )),
    }
}

fn number(v: Option<&Value>, key: &str) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n > 0) => Ok(n.as_i64()),
        Some(_) => Err(format!("docker: `{key}` must be a positive whole number")),
    }
}

/// `512m`, `1g`, `100k`, `1024b` or a number of bytes (docker-py's `mem_limit`).
fn bytes(v: Option<&Value>) -> Result<Option<i64>, String> {
    let bad = |s: &str| format!("docker: `mem_limit: {s}`: use bytes or a size like 512m or 1g");
    let text = match v {
        None => return Ok(None),
        Some(Value::Number(_)) => return number(v, "mem_limit"),
        Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
        Some(other) => return Err(bad(&other.to_string())),
    };
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let scale: i64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad(&text)),
    };
    match digits.parse::<i64>() {
        Ok(n) if n > 0 => n.checked_mul(scale).map(Some).ok_or_else(|| bad(&text)),
        _ => Err(bad(&text)),
    }
}

fn shell(v: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let words = match v {
        None => return Ok(None),
        Some(Value::String(s)) => {
            shlex::split(s).ok_or_else(|| format!("docker: `shell: {s}` has unbalanced quotes"))?
        }
        Some(v) => strings(Some(v), "shell")?,
    };
    if words.is_empty() {
        return Err("docker: `shell` must name a program".into());
    }
    Ok(Some(words))
}

fn log_pattern(v: Option<&Value>) -> Result<Option<regex::Regex>, String> {
    match text(v, "log_pattern")? {
        None => Ok(None),
        Some(p) => regex::Regex::new(&p)
            .map(Some)
            .map_err(|e| format!("docker: `log_pattern` is not a valid pattern: {e}")),
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
        assert!(e.contains("`colour`") && e.contains("image, exec"), "{e}");
        assert!(
            Config::parse(&json!({"pull": "never"}))
                .unwrap_err()
                .contains("`image` is required")
        );
        assert!(Config::parse(&json!({"image": "x", "pull": "sometimes"})).is_err());
    }

    #[test]
    fn exec_targets_and_levels() {
        let c = Config::parse(&json!("db")).expect("a bare name execs");
        assert_eq!(c.target, Target::Exec("db".into()));
        let c = Config::parse(&json!({"container_name": "db",
            "exec": {"User": "1000", "WorkingDir": "/app", "Env": ["A=1"]}}))
        .expect("v1 exec options");
        assert_eq!(
            (c.user.as_deref(), c.working_dir.as_deref()),
            (Some("1000"), Some("/app"))
        );
        assert_eq!(c.env, [("A".to_string(), "1".to_string())]);
        let e = Config::parse(&json!({"exec": "db", "volumes": ["/a:/a"]})).unwrap_err();
        assert!(e.contains("does not apply when exec'ing"), "{e}");
        assert!(Config::parse(&json!({"exec": "db", "image": "x"})).is_err());
        let e = Config::parse(&json!({"image": "x", "startup": "entrypoint"})).unwrap_err();
        assert!(e.contains("only to the DAG-level"), "{e}");
        let c = Config::parse_at(
            &json!({"image": "x", "startup": "command",
            "command": ["sleep", "9"], "keep_container": true, "log_pattern": "ready"}),
            Level::Run,
        )
        .expect("run level");
        assert_eq!(
            c.startup,
            Startup::Command(vec!["sleep".into(), "9".into()])
        );
        assert!(!c.auto_remove);
        let e = Config::parse_at(&json!({"image": "x", "wait_for": "healthy"}), Level::Run)
            .unwrap_err();
        assert!(e.contains("not acted on"), "{e}");
        assert!(Config::parse_at(&json!({"image": "x", "healthcheck": {}}), Level::Run).is_err());
        assert!(
            Config::parse_at(&json!({"image": "x", "startup": "command"}), Level::Run).is_err()
        );
    }
}
