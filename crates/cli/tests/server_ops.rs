//! The server's live and operational routes as a client meets them, against a real
//! `trellis server`: Server-Sent Events of a run and of a step's log, health checks,
//! server info, Prometheus metrics and webhooks.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use serde_json::{Value, json};
use support::{Env, Server, client, wait_for};

/// A step that prints `first`, waits for the file `gate` in the work dir, prints `second`.
fn gated_dag(env: &Env) -> std::path::PathBuf {
    let gate = env.path("gate");
    env.dag(
        "gated",
        &format!(
            "steps:\n  - name: wait\n    script: |\n      echo first\n      \
             while [ ! -f \"{}\" ]; do sleep 0.05; done\n      echo second\n",
            gate.display()
        ),
    )
}

/// Starts `trellis start -q -r ID FILE` in the background.
fn start_detached(env: &Env, file: &std::path::Path, run_id: &str) -> Child {
    env.trellis()
        .args(["start", "-q", "-r", run_id])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start trellis")
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
struct Message {
    event: String,
    data: String,
    id: Option<String>,
}

impl Message {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads an event stream message by message (parsed on a thread, so a silent stream
/// fails the test instead of hanging it).
struct Events(std::sync::mpsc::Receiver<Message>);

impl Events {
    fn open(url: &str) -> Events {
        let response = client().get(url).send().expect("open event stream");
        assert_eq!(response.status(), 200, "{url}");
        let kind = response.headers()["content-type"].to_str().unwrap_or("");
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(response);
            while let Some(m) = read_message(&mut reader) {
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
        Events(rx)
    }

    /// The next message, or `None` when the server ended the stream.
    fn next(&mut self) -> Option<Message> {
        match self.0.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(m) => Some(m),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no event for 30 s"),
        }
    }

    /// Every message until the stream ends.
    fn rest(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn read_message(reader: &mut impl BufRead) -> Option<Message> {
    let mut message = Message::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !message.event.is_empty() || !message.data.is_empty() {
                return Some(message);
            }
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_string(),
            "data" if message.data.is_empty() => message.data = value.to_string(),
            "data" => message.data = format!("{}\n{value}", message.data),
            "id" => message.id = Some(value.to_string()),
            _ => {} // a comment (keep-alive)
        }
    }
}

#[test]
fn run_stream_shows_running_then_succeeded_and_ends() {
    let env = Env::new();
    let file = gated_dag(&env);
    let server = Server::start(&env, &[]);
    let mut run = start_detached(&env, &file, "r1");
    let mut events = Events::open(&format!("{}/api/v2/dag-runs/gated/r1/events", server.url));
    // The first event is the current state; the step is held at the gate.
    let running = wait_for(20, "a running state", || {
        let m = events.next().expect("stream ended early");
        assert_eq!(m.event, "run");
        (m.json()["status"] == "running").then(|| m.json())
    });
    assert_eq!(running["run_id"], "r1");
    assert_eq!(running["name"], "gated");
    std::fs::write(env.path("gate"), "").expect("open the gate");
    let rest = events.rest();
    let (end, runs) = rest.split_last().expect("an end event");
    assert_eq!(end.event, "end", "{rest:?}");
    assert_eq!(end.json()["status"], "succeeded");
    let last = runs.last().expect("a final run event").json();
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["steps"][0]["status"], "succeeded");
    assert!(run.wait().expect("run exits").success());
}

#[test]
fn run_stream_of_an_unknown_run_is_404() {
    let env = Env::new();
    gated_dag(&env);
    let server = Server::start(&env, &[]);
    let response = client()
        .get(format!("{}/api/v2/dag-runs/gated/nope/events", server.url))
        .send()
        .expect("request");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().expect("json error");
    assert_eq!(body["error"]["code"], "not_found");
}

#[test]
fn log_stream_delivers_lines_while_the_step_runs() {
    let env = Env::new();
    let file = gated_dag(&env);
    let server = Server::start(&env, &[]);
    let mut run = start_detached(&env, &file, "r1");
    let url = format!(
        "{}/api/v2/dag-runs/gated/r1/steps/wait/log/stream?stream=stdout",
        server.url
    );
    let mut events = Events::open(&url);
    let mut text = String::new();
    // `first` arrives while the step still waits at the gate.
    wait_for(20, "the first line", || {
        let m = events.next().expect("stream ended before the first line");
        assert_eq!(m.event, "log", "{m:?}");
        let chunk = m.json();
        assert_eq!(chunk["offset"].as_u64(), Some(text.len() as u64));
        text.push_str(chunk["text"].as_str().unwrap_or(""));
        assert_eq!(m.id, chunk["next_offset"].as_u64().map(|n| n.to_string()));
        text.contains("first\n").then_some(())
    });
    assert!(!text.contains("second"), "{text}");
    std::fs::write(env.path("gate"), "").expect("open the gate");
    let rest = events.rest();
    let (end, logs) = rest.split_last().expect("an end event");
    assert_eq!(end.event, "end", "{rest:?}");
    for m in logs {
        text.push_str(m.json()["text"].as_str().unwrap_or(""));
    }
    assert_eq!(text, "first\nsecond\n");
    assert!(run.wait().expect("run exits").success());

    // Once the run is over, `tail` gives the last lines and the stream ends at once.
    let mut events = Events::open(&format!("{url}&tail=1"));
    let rest = events.rest();
    let kinds: Vec<&str> = rest.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(kinds, ["log", "end"]);
    assert_eq!(rest[0].json()["text"], "second\n");
}

#[test]
fn health_needs_a_scheduler_only_when_deep() {
    let env = Env::new();
    let server = Server::start(&env, &[]);
    let http = client();
    let health = http.get(format!("{}/health", server.url)).send().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().unwrap(), json!({"status": "ok"}));
    let deep = http
        .get(format!("{}/health/deep", server.url))
        .send()
        .unwrap();
    assert_eq!(deep.status(), 503);
    let body: Value = deep.json().unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["store"]["ok"], true);
    assert_eq!(body["checks"]["scheduler"]["ok"], false);
    assert_eq!(body["checks"]["coordinator"]["ok"], true);
    drop(server);

    let all = Server::spawn(&env, "start-all", &["--coordinator.port", "0"]);
    // The coordinator joins the checks once it has written its registry entry.
    let body = wait_for(30, "deep health to pass under start-all", || {
        let r = http.get(format!("{}/health/deep", all.url)).send().ok()?;
        let body = (r.status() == 200)
            .then(|| r.json::<Value>().ok())
            .flatten()?;
        let answered = body["checks"]["coordinator"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("answered"));
        answered.then_some(body)
    });
    assert_eq!(body["status"], "ok");
    let scheduler = &body["checks"]["scheduler"];
    assert!(
        scheduler["heartbeat_age_sec"]
            .as_f64()
            .is_some_and(|a| a < 30.0),
        "{body}"
    );
    assert!(scheduler["holder"].is_string(), "{body}");
    let coordinator = &body["checks"]["coordinator"];
    assert!(
        coordinator["detail"]
            .as_str()
            .is_some_and(|d| d.contains("answered")),
        "{body}"
    );
    let info: Value = http
        .get(format!("{}/server_info", all.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(info["scheduler"]["leader"].is_string(), "{info}");
}

#[test]
fn server_info_says_what_runs() {
    let env = Env::new();
    let server = Server::start(&env, &[]);
    let info: Value = client()
        .get(format!("{}/server_info", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["trellis_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["api_version"], "v2");
    assert!(
        info["started_at"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "{info}"
    );
    assert!(info["uptime_sec"].is_u64(), "{info}");
    assert_eq!(info["auth"], false);
    assert_eq!(info["tls"], false);
    assert!(info["build"]["target"].is_string(), "{info}");
}

/// Checks the OpenMetrics text line by line; returns the samples as `name{labels}` → value.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut words = meta.splitn(3, ' ');
            let kind = words.next().unwrap_or("");
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            let name = words.next().unwrap_or("");
            assert!(name.starts_with("trellis"), "{line}");
            if kind == "TYPE" {
                let t = words.next().unwrap_or("");
                assert!(
                    ["gauge", "counter", "histogram", "info"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_count_runs_by_status() {
    let env = Env::new();
    let file = env.dag("quick", "steps:\n  - name: one\n    command: echo hi\n");
    let server = Server::start(&env, &[]);
    let http = client();
    assert_eq!(
        http.get(format!("{}/health", server.url))
            .send()
            .unwrap()
            .status(),
        200
    );
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let response = http.get(format!("{}/metrics", server.url)).send().unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().unwrap();
    let m = parse_metrics(&text);
    let version = format!("trellis_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m.get(&version), Some(&1.0), "{text}");
    assert_eq!(
        m.get("trellis_dag_runs{status=\"succeeded\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(m.get("trellis_dag_runs_running"), Some(&0.0), "{text}");
    assert!(m.contains_key("trellis_uptime_seconds"), "{text}");
    assert_eq!(
        m.get("trellis_step_duration_seconds_count"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        m.get("trellis_workers{health=\"HEALTHY\"}"),
        Some(&0.0),
        "{text}"
    );
    let health = "trellis_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}";
    assert_eq!(m.get(health), Some(&1.0), "{text}");
    assert!(
        !m.contains_key("trellis_scheduler_heartbeat_age_seconds"),
        "{text}"
    );
}

fn webhook_env() -> (Env, String) {
    let env = Env::new();
    env.dag(
        "hook",
        &format!(
            "params:\n  - WHO: nobody\nsteps:\n  - name: keep\n    script: |\n      \
             printf '%s' \"$WEBHOOK_PAYLOAD\" > \"{dir}/payload\"\n      \
             printf '%s' \"$WHO\" > \"{dir}/who\"\n",
            dir = env.work.path().display()
        ),
    );
    let out = env.trellis().args(["webhook", "hook"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (env, token)
}

/// The run's status as `trellis status --json` reports it, once final.
fn final_status(env: &Env, run_id: &str) -> String {
    wait_for(30, "the webhook's run to finish", || {
        let out = env
            .trellis()
            .args(["status", "--json", "hook", "-r", run_id])
            .output()
            .ok()?;
        let run: Value = serde_json::from_slice(&out.stdout).ok()?;
        let status = run["status"].as_str()?.to_string();
        (!["running", "queued", "not_started"].contains(&status.as_str())).then_some(status)
    })
}

fn no_runs(env: &Env) -> bool {
    !env.home.path().join("data/dag-runs/hook").exists()
}

#[test]
fn webhook_with_a_bearer_token_starts_the_dag() {
    let (env, token) = webhook_env();
    let server = Server::start(&env, &[]);
    let body = r#"{"params": "WHO=ci", "ref": "main"}"#;
    let response = client()
        .post(format!("{}/api/v2/webhooks/hook", server.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    let started: Value = response.json().unwrap();
    assert_eq!(started["name"], "hook");
    let run_id = started["run_id"].as_str().expect("run id").to_string();
    assert_eq!(final_status(&env, &run_id), "succeeded");
    assert_eq!(std::fs::read_to_string(env.path("payload")).unwrap(), body);
    assert_eq!(std::fs::read_to_string(env.path("who")).unwrap(), "ci");
}

#[test]
fn webhook_with_a_signature_starts_the_dag_even_with_auth_on() {
    let (env, token) = webhook_env();
    let config = env.config("auth:\n  basic:\n    username: admin\n    password: pw\n");
    let server = Server::start(&env, &["--config", config.to_str().unwrap()]);
    let body = r#"{"run_id": "signed-1"}"#;
    let signature = trellis_server::webhook::signature_of(&token, body.as_bytes());
    let response = client()
        .post(format!("{}/api/v2/webhooks/hook", server.url))
        .header("x-trellis-signature", format!("sha256={signature}"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text());
    assert_eq!(final_status(&env, "signed-1"), "succeeded");
    assert_eq!(std::fs::read_to_string(env.path("who")).unwrap(), "nobody");
}

#[test]
fn webhook_refuses_wrong_tokens_and_tampered_bodies() {
    let (env, token) = webhook_env();
    let server = Server::start(&env, &[]);
    let http = client();
    let url = format!("{}/api/v2/webhooks/hook", server.url);
    let post = |req: reqwest::blocking::RequestBuilder| {
        let response = req.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().unwrap_or(Value::Null))
    };
    let (status, body) = post(http.post(&url).bearer_auth("not-the-token"));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(post(http.post(&url)).0, 401, "no credential at all");
    let signed = signature_of_body(&token, r#"{"params": "WHO=a"}"#);
    let tampered = http
        .post(&url)
        .header("x-trellis-signature", format!("sha256={signed}"))
        .body(r#"{"params": "WHO=b"}"#);
    assert_eq!(post(tampered).0, 401);
    // Without the right token an unknown DAG looks like any other; with it, it is a 404.
    let unknown = format!("{}/api/v2/webhooks/nope", server.url);
    assert_eq!(post(http.post(&unknown).bearer_auth(&token)).0, 401);
    let nope_token = token_of_a_removed_dag(&env);
    assert_eq!(post(http.post(&unknown).bearer_auth(nope_token)).0, 404);
    let (status, body) = post(
        http.post(&url)
            .bearer_auth(&token)
            .body(r#"{"params": "WHO='unclosed"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(no_runs(&env), "a refused webhook started a run");
}

fn signature_of_body(token: &str, body: &str) -> String {
    trellis_server::webhook::signature_of(token, body.as_bytes())
}

/// The webhook token of `nope`, whose file is then removed.
fn token_of_a_removed_dag(env: &Env) -> String {
    let file = env.dag("nope", "steps:\n  - command: true\n");
    let out = env.trellis().args(["webhook", "nope"]).output().unwrap();
    std::fs::remove_file(file).unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `trellis_live_streams` from `/metrics`.
fn open_streams(server: &Server) -> f64 {
    let text = client()
        .get(format!("{}/metrics", server.url))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    parse_metrics(&text)
        .get("trellis_live_streams")
        .copied()
        .unwrap_or(f64::NAN)
}

/// A raw HTTP/1.1 GET of an event stream, read up to its first event; dropping it closes
/// the connection.
fn raw_stream(server: &Server, path: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let addr = server.url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("event: run") {
        socket.read_exact(&mut byte).expect("read the first event");
        seen.push(byte[0]);
    }
    socket
}

#[test]
fn streams_end_when_their_clients_leave_and_when_the_server_stops() {
    let env = Env::new();
    let file = gated_dag(&env);
    let server = Server::start(&env, &[]);
    let mut run = start_detached(&env, &file, "r1");
    let path = "/api/v2/dag-runs/gated/r1/events";
    let first = raw_stream(&server, path);
    let second = raw_stream(&server, path);
    assert_eq!(open_streams(&server), 2.0);
    drop((first, second));
    wait_for(30, "closed streams to be dropped", || {
        (open_streams(&server) == 0.0).then_some(())
    });

    let mut events = Events::open(&format!("{}{path}", server.url));
    let mut feed = Events::open(&format!("{}/api/v2/events", server.url));
    assert_eq!(events.next().map(|m| m.event), Some("run".into()));
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(events.rest().iter().all(|m| m.event == "run"));
    assert!(feed.rest().is_empty());
    wait_for(30, "the server to exit", || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid()));
        stat.map_or(true, |s| s.contains(") Z")).then_some(())
    });
    std::fs::write(env.path("gate"), "").expect("open the gate");
    assert!(run.wait().expect("run exits").success());
}
