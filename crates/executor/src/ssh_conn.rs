//! How `ssh` and `sftp` steps reach a host: Dagu's connection keys (`host`, `port`,
//! `user`, `key`, `password`, `strict_host_key`, `known_host_file`, `timeout`, `bastion`)
//! turned into options of the system's OpenSSH client. The system client is used, not a
//! library, because users' hosts are set up for it: `~/.ssh/config`, agents, hashed and
//! `@cert-authority` known_hosts lines and every key type work as they do in a terminal,
//! and no second TLS/crypto stack enters the binary.
//!
//! Host keys are checked by default (`strict_host_key: true`), against `known_host_file`
//! or the user's own known_hosts. A password is handed to ssh through `SSH_ASKPASS` (a
//! script that prints an environment variable of the ssh process), never on a command
//! line or in a file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A jump host (`bastion:`), reached first.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bastion {
    #[serde(alias = "ip")]
    pub host: String,
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    pub user: Option<String>,
    pub key: Option<String>,
    pub password: Option<String>,
}

/// The connection part of an `ssh`/`sftp` step's `with:` (v1 camelCase spellings too).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Conn {
    #[serde(alias = "ip")]
    pub host: Option<String>,
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    pub user: Option<String>,
    pub key: Option<String>,
    pub password: Option<String>,
    #[serde(alias = "strictHostKey", alias = "strictHostKeyChecking")]
    pub strict_host_key: Option<bool>,
    #[serde(alias = "knownHostFile", alias = "known_hosts_file")]
    pub known_host_file: Option<String>,
    /// Connection timeout: a duration (`30s`) or seconds.
    pub timeout: Option<serde_json::Value>,
    pub bastion: Option<Bastion>,
}

/// `22`, `"22"` or `"${PORT}"` (checked once expanded).
fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(|p| (p != 0).then_some(p))
            .ok_or_else(|| D::Error::custom(format!("port: {n} is not a port"))),
        serde_json::Value::String(s) if s.contains("${") => Ok(None),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<u16>()
            .map(|p| (p != 0).then_some(p))
            .map_err(|_| D::Error::custom(format!("port: `{s}` is not a port"))),
        other => Err(D::Error::custom(format!("port: {other} is not a port"))),
    }
}

/// Refuses a key of `with:` that none of `known` lists.
pub(crate) fn known_keys(value: &serde_json::Value, known: &[&[&str]]) -> Result<(), String> {
    let Some(map) = value.as_object() else {
        return Err(format!("expected a mapping of options, found {value}"));
    };
    for key in map.keys() {
        if !known.iter().any(|list| list.contains(&key.as_str())) {
            let all: Vec<&str> = known.iter().flat_map(|l| l.iter().copied()).collect();
            return Err(format!("unknown key `{key}` (known: {})", all.join(", ")));
        }
    }
    Ok(())
}

/// `value` (a mapping) as `T`. serde's errors do not say which key they are about
/// ("expected a boolean"), so on an error each key is tried alone to name the culprit.
pub(crate) fn from_map<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| {
        let e = e.to_string();
        let culprit = value.as_object().and_then(|map| {
            map.iter().map(|(k, _)| k).find(|k| {
                let alone = serde_json::json!({ k.as_str(): map[k.as_str()] });
                serde_json::from_value::<T>(alone).is_err()
            })
        });
        match culprit {
            Some(k) if !e.starts_with(&format!("{k}:")) && !e.contains(&format!("`{k}`")) => {
                format!("{k}: {e}")
            }
            _ => e,
        }
    })
}

impl Conn {
    /// The connection keys of `with:` (others are the step's), checked as far as they can
    /// be before `${...}` is expanded.
    pub(crate) fn parse(value: &serde_json::Value) -> Result<Conn, String> {
        let conn: Conn = from_map(value)?;
        if let Some(t) = &conn.timeout {
            timeout(t)?;
        }
        Ok(conn)
    }

    pub(crate) fn host(&self) -> Result<&str, String> {
        self.host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "no host: give `host:` (in `with:` or the DAG's `ssh:`)".to_string())
    }

    /// The destination (`user@host`) for ssh's command line.
    pub(crate) fn destination(&self) -> Result<String, String> {
        let host = self.host()?;
        if host.starts_with('-') || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("host: `{host}` is not a host name"));
        }
        if let Some(user) = self.user.as_deref()
            && (user.starts_with('-')
                || user.contains(['@', ' '])
                || user.chars().any(char::is_control))
        {
            return Err(format!("user: `{user}` is not a user name"));
        }
        Ok(match self.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => format!("{user}@{host}"),
            None => host.to_string(),
        })
    }

    /// Options shared by `ssh` and `sftp` (`-o Key=value` pairs, `-i`, and the port flag
    /// `port_flag`, which is `-p` for ssh and `-P` for sftp).
    pub(crate) fn options(&self, port_flag: &str) -> Result<Vec<String>, String> {
        let secs = self.timeout.as_ref().map(timeout).transpose()?;
        let connect = secs.unwrap_or(Duration::from_secs(30)).as_secs().max(1);
        let mut kvs = vec![
            "LogLevel=ERROR".to_string(),
            "ServerAliveInterval=15".to_string(),
            "ServerAliveCountMax=3".to_string(),
            format!("ConnectTimeout={connect}"),
        ];
        kvs.extend(self.host_key());
        if self.password.is_some() {
            kvs.push("BatchMode=no".into());
            kvs.push("NumberOfPasswordPrompts=1".into());
        } else {
            // Never a prompt nobody can answer: a step without a password fails at once.
            kvs.push("BatchMode=yes".into());
        }
        if let Some(key) = &self.key {
            kvs.push(format!("IdentityFile={}", quoted(key)));
            kvs.push("IdentitiesOnly=yes".into());
        }
        if let Some(bastion) = &self.bastion {
            kvs.push(format!("ProxyCommand={}", self.proxy(bastion)?));
        }
        let mut args: Vec<String> = kvs.into_iter().flat_map(|kv| ["-o".into(), kv]).collect();
        if let Some(port) = self.port {
            args.push(port_flag.to_string());
            args.push(port.to_string());
        }
        Ok(args)
    }

    /// The host-key rule: checked (against `known_host_file`, else the user's own), or
    /// not at all, and then nothing is recorded either.
    fn host_key(&self) -> Vec<String> {
        if !self.strict_host_key.unwrap_or(true) {
            return vec![
                "StrictHostKeyChecking=no".into(),
                "UserKnownHostsFile=/dev/null".into(),
            ];
        }
        let mut kvs = vec!["StrictHostKeyChecking=yes".to_string()];
        if let Some(file) = &self.known_host_file {
            kvs.push(format!("UserKnownHostsFile={}", quoted(file)));
        }
        kvs
    }

    /// The bastion as a `ProxyCommand`: ssh to it with its own key and host-key rule,
    /// forwarding to the target (`-W %h:%p`).
    fn proxy(&self, bastion: &Bastion) -> Result<String, String> {
        if bastion.password.is_some() {
            return Err(
                "bastion: a password for the jump host is not supported; give it a `key`".into(),
            );
        }
        let hop = Conn {
            host: Some(bastion.host.clone()),
            port: bastion.port,
            user: bastion.user.clone(),
            key: bastion.key.clone(),
            password: None,
            strict_host_key: self.strict_host_key,
            known_host_file: self.known_host_file.clone(),
            timeout: self.timeout.clone(),
            bastion: None,
        };
        let mut words = vec!["ssh".to_string()];
        words.extend(hop.options("-p")?);
        words.extend(["-W".to_string(), "%h:%p".to_string(), hop.destination()?]);
        Ok(words
            .iter()
            .map(|w| {
                shlex::try_quote(w)
                    .map(|q| q.into_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Environment for the ssh process: the askpass set-up when a password is given.
    pub(crate) fn askpass(&self) -> Result<Option<Askpass>, String> {
        let Some(password) = &self.password else {
            return Ok(None);
        };
        Askpass::new(password).map(Some)
    }
}

/// `30s`, `1m`, or seconds.
fn timeout(value: &serde_json::Value) -> Result<Duration, String> {
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
        serde_json::Value::String(s) => trellis_core::duration::parse_millis(s.trim())
            .ok()
            .map(Duration::from_millis),
        _ => None,
    }
    .ok_or_else(|| {
        let shown = value
            .as_str()
            .map_or_else(|| value.to_string(), String::from);
        format!("timeout: `{shown}` is not a duration (such as 30s)")
    })
}

/// A path as the value of a `-o` option: ssh splits values at spaces (UserKnownHostsFile
/// takes several files), so it is double-quoted, as ssh_config allows.
fn quoted(path: &str) -> String {
    let path = expand_home(path).display().to_string();
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// An `SSH_ASKPASS` program that prints the password from the ssh process's environment;
/// the script holds no secret, and is removed on drop.
pub(crate) struct Askpass {
    dir: tempfile::TempDir,
    password: String,
}

impl Askpass {
    fn new(password: &str) -> Result<Askpass, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("trellis-askpass-")
            .tempdir()
            .map_err(|e| format!("cannot make the askpass helper: {e}"))?;
        let script = dir.path().join("askpass");
        std::fs::write(
            &script,
            "#!/bin/sh\nprintf '%s\\n' \"$TRELLIS_SSH_PASSWORD\"\n",
        )
        .and_then(|()| std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot make the askpass helper: {e}"))?;
        Ok(Askpass {
            dir,
            password: password.to_string(),
        })
    }

    /// Sets the variables OpenSSH (8.4+) reads to ask the program instead of a terminal.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env("SSH_ASKPASS", self.dir.path().join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("TRELLIS_SSH_PASSWORD", &self.password);
    }
}
