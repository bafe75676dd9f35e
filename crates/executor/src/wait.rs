//! `wait.*` steps (`wait.duration`, `wait.until`, `wait.file`, `wait.http`) and
//! `log.write`, in-process. A wait ends when its condition holds; the step's
//! `timeout_sec` caps it, as in Dagu. `wait.http` takes network errors for "not yet".

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest, Work};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    operation: Option<String>,
    duration: Option<String>,
    until: Option<String>,
    path: Option<String>,
    /// `exists` (default) or `missing`.
    state: Option<String>,
    url: Option<String>,
    method: Option<String>,
    status: Option<u16>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    body: Option<String>,
    poll_interval: Option<String>,
    request_timeout: Option<String>,
}

fn duration(text: &str, what: &str) -> Result<Duration, String> {
    trellis_core::duration::parse_millis(text.trim())
        .map(Duration::from_millis)
        .map_err(|e| format!("{what}: `{text}` is not a duration: {e}"))
}

/// A value known at load time (not `${...}`, which is checked once expanded).
fn fixed(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.contains("${"))
}

fn parse(value: &serde_json::Value) -> Result<Config, String> {
    let config: Config = if value.is_null() {
        Config::default()
    } else {
        serde_json::from_value(value.clone()).map_err(|e| e.to_string())?
    };
    if let Some(d) = fixed(&config.duration) {
        duration(d, "duration")?;
    }
    if let Some(u) = fixed(&config.until) {
        u.parse::<jiff::Timestamp>()
            .map_err(|e| format!("until: `{u}` is not an RFC 3339 time: {e}"))?;
    }
    for (what, d) in [
        ("poll_interval", &config.poll_interval),
        ("request_timeout", &config.request_timeout),
    ] {
        if let Some(d) = fixed(d) {
            duration(d, what)?;
        }
    }
    if let Some(s) = fixed(&config.state).filter(|s| !matches!(*s, "exists" | "missing")) {
        return Err(format!("state: `{s}` is not exists or missing"));
    }
    if let Some(op) = &config.operation {
        let need = match op.as_str() {
            "duration" => config.duration.is_some(),
            "until" => config.until.is_some(),
            "file" => config.path.is_some(),
            "http" => config.url.is_some(),
            other => {
                return Err(format!(
                    "unknown wait `{other}`: duration, until, file or http"
                ));
            }
        };
        if !need {
            let key = match op.as_str() {
                "file" => "path",
                "http" => "url",
                other => other,
            };
            return Err(format!("wait.{op} needs `{key}`"));
        }
    }
    Ok(config)
}

pub(crate) struct Wait;

impl Action for Wait {
    fn kind(&self) -> &'static str {
        "wait"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let done = wait(&req).await;
            out.end(done)
        })
    }
}

async fn wait(req: &StepRequest) -> Result<(), String> {
    let config = parse(&req.config)?;
    let op = match (&config.operation, &req.work) {
        (Some(op), _) => op.clone(),
        (None, Work::Line(line)) => line.trim().to_string(),
        _ => {
            return Err("no wait given: use `action: wait.duration` (or until, file, http)".into());
        }
    };
    let poll = match &config.poll_interval {
        Some(p) => duration(p, "poll_interval")?,
        None => Duration::from_secs(1),
    };
    match op.as_str() {
        "duration" => {
            let d = duration(config.duration.as_deref().unwrap_or(""), "duration")?;
            tokio::time::sleep(d).await;
            Ok(())
        }
        "until" => until(config.until.as_deref().unwrap_or("")).await,
        "file" => file(req, &config, poll).await,
        "http" => http(&config, poll).await,
        other => Err(format!("unknown wait `{other}`")),
    }
}

async fn until(text: &str) -> Result<(), String> {
    let at: jiff::Timestamp = text
        .parse()
        .map_err(|e| format!("until: `{text}` is not an RFC 3339 time: {e}"))?;
    let left = at.duration_since(jiff::Timestamp::now());
    if let Ok(left) = Duration::try_from(left) {
        tokio::time::sleep(left).await;
    }
    Ok(())
}

async fn file(req: &StepRequest, config: &Config, poll: Duration) -> Result<(), String> {
    let path = config.path.as_deref().unwrap_or("");
    let path = req.resolve(path);
    let want = config.state.as_deref() != Some("missing");
    while tokio::fs::try_exists(&path).await.unwrap_or(false) != want {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

async fn http(config: &Config, poll: Duration) -> Result<(), String> {
    let url = config.url.as_deref().unwrap_or("");
    let url = reqwest::Url::parse(url).map_err(|e| format!("url: `{url}` is not a URL: {e}"))?;
    let method = config
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("method: `{method}` is not an HTTP method"))?;
    let want = config.status.unwrap_or(200);
    let each = match &config.request_timeout {
        Some(t) => duration(t, "request_timeout")?,
        None => Duration::from_secs(10),
    };
    let client = reqwest::Client::new();
    loop {
        let mut request = client.request(method.clone(), url.clone()).timeout(each);
        for (k, v) in &config.headers {
            request = request.header(
                k.as_str(),
                v.as_str().map_or_else(|| v.to_string(), String::from),
            );
        }
        if let Some(body) = &config.body {
            request = request.body(body.clone());
        }
        // Not reachable yet, or not the status wanted yet: try again.
        if let Ok(response) = request.send().await
            && response.status().as_u16() == want
        {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

/// `log.write`: the message on stdout, with a newline unless it ends with one.
pub(crate) struct Log;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    message: String,
}

impl Action for Log {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<LogConfig>(config.clone())
            .map(|_| ())
            .map_err(|e| format!("log.write: {e}"))
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let message = match serde_json::from_value::<LogConfig>(req.config.clone()) {
                Ok(c) => c.message,
                Err(e) => return out.fail(format!("log.write: {e}")),
            };
            let mut text = message;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            match out.out(text.as_bytes()) {
                Ok(()) => Outcome::Exited(0),
                Err(e) => out.fail(format!("cannot write the step's output: {e}")),
            }
        })
    }
}
