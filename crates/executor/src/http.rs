//! `http` steps, in-process with reqwest: Dagu 2.15's `action: http.request` (`with:
//! {method, url, headers, query, body, timeout, silent, json, skip_tls_verify}`) and the
//! older `type: http` (the command is `METHOD URL`, the same keys in `config:`). The
//! response is the step's stdout as Dagu prints it: the status line (`200 OK`) and the
//! headers unless `silent` (which hides them only for a 2xx answer), then the body;
//! `json` (or `format: json`) prints one JSON object instead; `output` streams the body to
//! a file. A status outside 2xx fails the step after its output is written, as in Dagu.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest, Work};

/// The step's `with:` (Dagu's v1 camelCase spellings too).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    method: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default, alias = "queryParams", alias = "query_params")]
    query: serde_json::Map<String, serde_json::Value>,
    body: Option<serde_json::Value>,
    /// Seconds (Dagu's unit); the step's own `timeout_sec` also applies.
    timeout: Option<f64>,
    #[serde(default)]
    silent: bool,
    #[serde(default)]
    json: bool,
    #[serde(default)]
    debug: bool,
    /// `json` is the only format (`format: json` = `json: true`).
    format: Option<String>,
    /// A file the body is written to instead of stdout.
    output: Option<String>,
    /// Multipart fields.
    #[serde(default)]
    form: serde_json::Map<String, serde_json::Value>,
    /// Multipart files: field → path (relative to the step's working dir).
    #[serde(default)]
    files: serde_json::Map<String, serde_json::Value>,
    #[serde(default, alias = "skipTLSVerify", alias = "skipTlsVerify")]
    skip_tls_verify: bool,
}

fn parse(config: &serde_json::Value) -> Result<Config, String> {
    if config.is_null() {
        return Ok(Config::default());
    }
    let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
    if let Some(method) = &config.method
        && !method.contains("${")
    {
        reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method: `{method}` is not an HTTP method"))?;
    }
    if let Some(format) = config.format.as_deref().filter(|f| *f != "json") {
        return Err(format!("format: `{format}` is not known (only `json`)"));
    }
    if config.body.is_some() && !(config.form.is_empty() && config.files.is_empty()) {
        return Err("`body` and `form`/`files` both give the body: keep one".into());
    }
    if let Some(t) = config.timeout
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(format!("timeout: {t} is not a number of seconds"));
    }
    let maps = [&config.headers, &config.query, &config.form, &config.files];
    for (key, value) in maps.into_iter().flatten() {
        if value.is_object() || value.is_array() {
            return Err(format!("`{key}`: give a string, not {value}"));
        }
    }
    Ok(config)
}

pub(crate) struct Http;

impl Action for Http {
    fn kind(&self) -> &'static str {
        "http"
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
            let done = request(&req, &mut out).await;
            out.end(done)
        })
    }
}

/// Clients are made once per process (connection pools, TLS set-up), one that checks
/// certificates and one that does not.
fn client(skip_tls_verify: bool) -> Result<reqwest::Client, String> {
    static CHECKED: OnceLock<reqwest::Client> = OnceLock::new();
    static UNCHECKED: OnceLock<reqwest::Client> = OnceLock::new();
    let cell = if skip_tls_verify {
        &UNCHECKED
    } else {
        &CHECKED
    };
    if let Some(client) = cell.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(skip_tls_verify)
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    Ok(cell.get_or_init(|| client).clone())
}

/// Method and URL: `with:` first, else the command line (`GET https://...`).
fn target(req: &StepRequest, config: &Config) -> Result<(reqwest::Method, String), String> {
    let line = match &req.work {
        Work::Line(line) => line.trim().to_string(),
        Work::Argv(argv) => argv.join(" "),
        Work::Script {
            program: Some(line),
            ..
        } => line.trim().to_string(),
        _ => String::new(),
    };
    let mut words = line.split_whitespace();
    // The command line wins over `with:`, as in Dagu.
    let (method, url) = match (words.next(), words.next()) {
        (Some(m), Some(u)) => (Some(m.to_string()), Some(u.to_string())),
        _ => (None, None),
    };
    let method = method
        .or(config.method.clone())
        .unwrap_or_else(|| "GET".into());
    let url = url
        .or(config.url.clone())
        .ok_or("no URL: give `with: {url: ...}` (or `METHOD URL` as the command)")?;
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    Ok((method, url))
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The options: `with:`, or the older form's JSON in `script:` (which Dagu reads instead).
fn options(req: &StepRequest) -> Result<Config, String> {
    match &req.work {
        Work::Script { text, .. } if !text.trim().is_empty() => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("the script is not the JSON options of an http step: {e}"))?;
            parse(&value)
        }
        _ => parse(&req.config),
    }
}

async fn request(req: &StepRequest, out: &mut Output) -> Result<(), String> {
    let config = options(req)?;
    let (method, url) = target(req, &config)?;
    let mut url = reqwest::Url::parse(&url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !config.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in &config.query {
            pairs.append_pair(key, &text(value));
        }
    }
    let mut builder = client(config.skip_tls_verify)?.request(method.clone(), url.clone());
    for (key, value) in &config.headers {
        builder = builder.header(key.as_str(), text(value));
    }
    if let Some(body) = &config.body {
        builder = builder.body(text(body));
    }
    if !(config.form.is_empty() && config.files.is_empty()) {
        builder = builder.multipart(multipart(req, &config).await?);
    }
    if let Some(secs) = config.timeout.filter(|t| *t > 0.0) {
        builder = builder.timeout(Duration::from_secs_f64(secs));
    }
    if config.debug {
        let _ = out.err(format!("{method} {url}\n").as_bytes());
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {}", describe(&e)))?;
    let status = response.status();
    let ok = status.is_success();
    let show_head = !ok || !config.silent;
    let head = head(&response);
    let headers = headers_json(&response);
    let mut body = response
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: reading the body: {}", describe(&e)))?;
    let mut saved = None;
    if let (Some(path), true) = (&config.output, ok) {
        saved = Some(save(req, path, &body)?);
        body = Default::default();
    }
    let written = if config.json || config.format.is_some() {
        let mut doc = serde_json::json!({
            "status_code": if show_head { status.as_u16() } else { 0 },
            "headers": if show_head { headers } else { serde_json::Value::Null },
        });
        if let Some(path) = saved {
            doc["output"] = path.into();
        } else if !body.is_empty() {
            doc["body"] = serde_json::from_slice::<serde_json::Value>(&body)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into());
        }
        out.out(one_space(&doc).as_bytes())
    } else {
        let shown = if show_head {
            out.out(head.as_bytes())
        } else {
            Ok(())
        };
        shown.and_then(|()| out.out(&body))
    };
    written.map_err(|e| format!("cannot write the step's output: {e}"))?;
    if !ok {
        return Err(format!("http status code not 2xx: {}", status.as_u16()));
    }
    Ok(())
}

/// JSON with a one-space indent (Go's `MarshalIndent(v, "", " ")`, which Dagu prints).
fn one_space(doc: &serde_json::Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    let _ = serde::Serialize::serialize(doc, &mut ser);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Writes the body to `path` (replaced whole, by rename); the path written.
fn save(req: &StepRequest, path: &str, body: &[u8]) -> Result<String, String> {
    let path = req.resolve(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.trellis-tmp.{}", std::process::id()));
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

async fn multipart(req: &StepRequest, config: &Config) -> Result<reqwest::multipart::Form, String> {
    let mut form = reqwest::multipart::Form::new();
    for (key, value) in &config.form {
        form = form.text(key.clone(), text(value));
    }
    for (field, path) in &config.files {
        let path = req.resolve(&text(path));
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("files: cannot read {}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        form = form.part(
            field.clone(),
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
    }
    Ok(form)
}

/// The status line (`200 OK`) and the headers, sorted (Go's `Header.Write`), as Dagu
/// prints them before the body.
fn head(response: &reqwest::Response) -> String {
    let status = response.status();
    let mut head = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut lines: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (canonical(name.as_str()), value)
        })
        .collect();
    lines.sort();
    for (name, value) in lines {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head
}

/// `content-type` → `Content-Type`, as Go spells header names.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn headers_json(response: &reqwest::Response) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in response.headers() {
        let entry = map
            .entry(canonical(name.as_str()))
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    serde_json::Value::Object(map)
}

/// The cause of a failed request, down to the bottom (refused, timed out, bad certificate).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
