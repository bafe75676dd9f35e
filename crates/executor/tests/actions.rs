//! The in-process actions through the executor seam: `http` against local servers
//! (plain and self-signed TLS), `jq` against the real `jq` program, `state.*` against
//! a state dir written by several writers at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use trellis_executor::{Outcome, Registry, StepRequest, Work};

fn request(dir: &Path, work: Work, config: Value) -> StepRequest {
    StepRequest {
        name: format!("test-{}", uuid_like()),
        work,
        env: Vec::new(),
        working_dir: Some(dir.to_path_buf()),
        config,
        stdout: dir.join("out"),
        stderr: dir.join("err"),
        timeout: Some(Duration::from_secs(30)),
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(1),
        mask: None,
        labels: BTreeMap::from([("trellis.dag".to_string(), "demo".to_string())]),
        record: None,
    }
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs one step of `kind`; its outcome, stdout and stderr.
async fn run(kind: &str, req: &StepRequest) -> (Outcome, String, String) {
    let _ = std::fs::remove_file(&req.stdout);
    let _ = std::fs::remove_file(&req.stderr);
    let registry = Registry::builtin();
    let executor = registry.get(kind).expect("a built-in executor");
    executor.check(&req.config).expect("the config checks");
    let outcome = match executor.start(req).await {
        Ok(handle) => executor.wait(&handle, req, CancellationToken::new()).await,
        Err(e) => Outcome::SpawnFailed(e.0),
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (outcome, read(&req.stdout), read(&req.stderr))
}

/// A one-shot-per-connection HTTP/1.1 server answering `status` and `body`; each
/// request's head and body are sent on the channel.
async fn serve(
    status: &'static str,
    body: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, status, body, tx.clone()));
        }
    });
    (url, rx)
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    status: &str,
    body: &str,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The head, then as many body bytes as Content-Length says.
    loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                let _ = tx.send(text);
                break;
            }
        }
    }
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Test: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[tokio::test]
async fn http_prints_status_headers_and_body_and_sends_what_the_step_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, mut seen) = serve("200 OK", r#"{"ok":true}"#).await;
    let req = request(
        dir.path(),
        Work::Default,
        json!({"method": "post", "url": format!("{url}/hook"), "headers": {"X-Token": "abc"},
               "query": {"page": "2", "q": "a b"}, "body": "{\"n\":1}"}),
    );
    let (outcome, out, _) = run("http", &req).await;
    assert_eq!(outcome, Outcome::Exited(0));
    let head = seen.recv().await.expect("a request");
    assert!(
        head.starts_with("POST /hook?page=2&q=a+b HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("x-token: abc"), "{head}");
    assert!(head.ends_with("{\"n\":1}"), "{head}");
    // Dagu's text form: the status, the headers sorted (Go's wire form), then the body.
    assert!(
        out.starts_with(
            "200 OK\nConnection: close\r\nContent-Length: 11\r\nContent-Type: application/json\r\n"
        ),
        "{out:?}"
    );
    assert!(out.ends_with("X-Test: yes\r\n{\"ok\":true}"), "{out:?}");

    let silent = request(
        dir.path(),
        Work::Line(format!("GET {url}/x")),
        json!({"silent": true}),
    );
    let (outcome, out, _) = run("http", &silent).await;
    assert_eq!(
        (outcome, out.as_str()),
        (Outcome::Exited(0), r#"{"ok":true}"#)
    );
}

#[tokio::test]
async fn http_json_output_is_the_dagu_object_and_a_4xx_fails_after_printing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _seen) = serve("200 OK", r#"{"id":7}"#).await;
    let req = request(
        dir.path(),
        Work::Default,
        json!({"method": "GET", "url": url, "json": true, "silent": true}),
    );
    let (outcome, out, _) = run("http", &req).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(
        out,
        "{\n \"status_code\": 0,\n \"headers\": null,\n \"body\": {\n  \"id\": 7\n }\n}"
    );

    let (url, _seen) = serve("404 Not Found", r#"{"error":"nope"}"#).await;
    let req = request(
        dir.path(),
        Work::Line(format!("GET {url}")),
        json!({"silent": true}),
    );
    let (outcome, out, err) = run("http", &req).await;
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason == "http status code not 2xx: 404"),
        "{outcome:?}"
    );
    // Silent hides the head only for a 2xx answer.
    assert!(
        out.starts_with("404 Not Found\n") && out.ends_with(r#"{"error":"nope"}"#),
        "{out:?}"
    );
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn http_connection_errors_and_timeouts_fail_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let req = request(
        dir.path(),
        Work::Line(format!("GET http://127.0.0.1:{port}/")),
        Value::Null,
    );
    let (outcome, _, _) = run("http", &req).await;
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("Connection refused")),
        "{outcome:?}"
    );

    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/slow", listener.local_addr().expect("addr"));
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = held_tx.send(stream);
        }
    });
    let req = request(
        dir.path(),
        Work::Default,
        json!({"method": "GET", "url": url, "timeout": 1}),
    );
    let (outcome, _, _) = run("http", &req).await;
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("timed out")),
        "{outcome:?}"
    );
    assert!(held.recv().await.is_some());
}

/// A TLS server with a self-signed certificate for 127.0.0.1.
async fn serve_tls() -> String {
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let der = cert.cert.der().clone();
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                    answer(tls, "200 OK", "secure", tx).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn http_refuses_a_self_signed_server_unless_told_to_skip_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = serve_tls().await;
    let req = request(
        dir.path(),
        Work::Line(format!("GET {url}")),
        json!({"silent": true}),
    );
    let (outcome, _, _) = run("http", &req).await;
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.to_lowercase().contains("certificate")),
        "{outcome:?}"
    );
    let req = request(
        dir.path(),
        Work::Line(format!("GET {url}")),
        json!({"silent": true, "skip_tls_verify": true}),
    );
    let (outcome, out, _) = run("http", &req).await;
    assert_eq!((outcome, out.as_str()), (Outcome::Exited(0), "secure"));
}

const PEOPLE: &str = r#"{"team":"core","items":[{"name":"ada","age":36,"tags":["x","y"]},{"name":"bob","age":29,"tags":[]},{"name":"cy","age":41.5,"tags":["z"]}],"meta":{"count":3,"ok":true,"note":null}}"#;

/// The filters Dagu's docs use for jq steps, and a few more of the same kind.
const FILTERS: &[&str] = &[
    ".",
    ".team",
    ".items[0]",
    ".items[] | .name",
    ".items | map(.name)",
    ".items | map(select(.age > 30)) | length",
    "{team: .team, names: [.items[].name]}",
    ".items[] | {name, age}",
    ".meta | keys",
    ".meta | to_entries",
    "[.items[].age] | add",
    ".items | sort_by(.age) | reverse | .[0].name",
    ".items[1].tags",
];

fn real_jq(filter: &str, raw: bool) -> Option<String> {
    let mut cmd = std::process::Command::new("jq");
    if raw {
        cmd.arg("-r");
    }
    let mut child = cmd
        .arg(filter)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take()?.write_all(PEOPLE.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn jq_prints_what_the_real_jq_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        real_jq(".", false).is_some(),
        "the real jq is installed (scripts/test installs it)"
    );
    for raw in [false, true] {
        for filter in FILTERS {
            let expected = real_jq(filter, raw).expect("jq runs");
            let req = request(
                dir.path(),
                Work::Default,
                json!({"filter": filter, "data": PEOPLE, "raw": raw}),
            );
            let (outcome, out, err) = run("jq", &req).await;
            assert_eq!(outcome, Outcome::Exited(0), "{filter}: {err}");
            assert_eq!(out, expected, "filter {filter} (raw: {raw})");
        }
    }
    // The older form: the filter as the command, the data as the script.
    let req = request(
        dir.path(),
        Work::Script {
            program: Some(".items[0].name".into()),
            text: PEOPLE.into(),
        },
        json!({"raw": true}),
    );
    assert_eq!(run("jq", &req).await.1, "ada\n");
    // Arguments, and input from a file.
    std::fs::write(dir.path().join("in.json"), PEOPLE).expect("write");
    let req = request(
        dir.path(),
        Work::Default,
        json!({"filter": "[.items[] | select(.age > $min) | .name]", "input": "in.json", "args": {"min": 30}}),
    );
    assert_eq!(run("jq", &req).await.1, "[\n  \"ada\",\n  \"cy\"\n]\n");
}

#[tokio::test]
async fn jq_bad_filters_and_inputs_are_refused_clearly() {
    let registry = Registry::builtin();
    let jq = registry.get("jq").expect("jq");
    let err = jq
        .check(&json!({"filter": ".items | map("}))
        .expect_err("a broken filter");
    assert!(
        err.starts_with("invalid jq filter `.items | map(`"),
        "{err}"
    );
    let err = jq
        .check(&json!({"filter": ".", "data": "{}", "input": "x.json"}))
        .expect_err("two inputs");
    assert!(err.contains("`data` and `input`"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(
        dir.path(),
        Work::Default,
        json!({"filter": ".", "data": "{not json"}),
    );
    let (outcome, _, err) = run("jq", &req).await;
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert!(err.contains("not JSON"), "{err}");
}

fn state(dir: &Path, op: &str, with: Value) -> StepRequest {
    let mut config = with;
    config["operation"] = op.into();
    request(dir, Work::Default, config)
}

async fn state_json(req: &StepRequest) -> Result<Value, String> {
    match run("state", req).await {
        (Outcome::Exited(0), out, _) => {
            Ok(serde_json::from_str(out.trim()).expect("one JSON line"))
        }
        (Outcome::Failed { reason, .. }, _, _) => Err(reason),
        (other, _, err) => Err(format!("{other:?}: {err}")),
    }
}

/// `TRELLIS_DAG_STATE_DIR` is process-wide: every state test shares one dir and keeps
/// to its own keys.
fn state_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: set once, before any state step of this test binary reads it.
        unsafe { std::env::set_var("TRELLIS_DAG_STATE_DIR", dir.path()) };
        dir
    });
    dir.path()
}

#[tokio::test]
async fn state_set_get_diff_list_delete_follow_the_dagu_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ = state_dir();
    let d = dir.path();
    let got = state_json(&state(
        d,
        "get",
        json!({"key": "rules/cursor", "default": {"n": 0}}),
    ))
    .await
    .expect("get");
    assert_eq!(
        got,
        json!({"operation":"get","scope":"dag","namespace":"demo","key":"rules/cursor","found":false,"version":0,"value":{"n":0}})
    );
    let set = state_json(&state(
        d,
        "set",
        json!({"key": "rules/cursor", "value": {"b": 2, "a": 1}}),
    ))
    .await
    .expect("set");
    assert_eq!(
        (set["version"].clone(), set["created"].clone()),
        (json!(1), json!(true))
    );
    let got = state_json(&state(
        d,
        "get",
        json!({"key": "rules/cursor", "required": true}),
    ))
    .await
    .expect("get");
    assert_eq!(
        (got["version"].clone(), got["value"].clone()),
        (json!(1), json!({"a": 1, "b": 2}))
    );
    // Same value in another key order: unchanged, nothing written.
    let diff = state_json(&state(
        d,
        "diff",
        json!({"key": "rules/cursor", "value": {"a": 1, "b": 2}}),
    ))
    .await
    .expect("diff");
    assert_eq!(
        (diff["changed"].clone(), diff["version"].clone()),
        (json!(false), json!(1))
    );
    let diff = state_json(&state(
        d,
        "diff",
        json!({"key": "rules/cursor", "value": {"a": 2}}),
    ))
    .await
    .expect("diff");
    assert_eq!(
        (
            diff["changed"].clone(),
            diff["previousVersion"].clone(),
            diff["version"].clone()
        ),
        (json!(true), json!(1), json!(2))
    );
    let err = state_json(&state(
        d,
        "set",
        json!({"key": "rules/cursor", "value": 3, "expected_version": 1}),
    ))
    .await
    .expect_err("stale");
    assert!(
        err.contains("expected version 1") && err.contains("found version 2"),
        "{err}"
    );
    let err = state_json(&state(
        d,
        "set",
        json!({"key": "rules/cursor", "value": 3, "create_only": true}),
    ))
    .await
    .expect_err("exists");
    assert!(err.contains("already exists (version 2)"), "{err}");
    state_json(&state(
        d,
        "set",
        json!({"key": "rules/other", "value": "x", "scope": "global"}),
    ))
    .await
    .expect("global");
    let list = state_json(&state(
        d,
        "list",
        json!({"prefix": "rules/", "include_values": true}),
    ))
    .await
    .expect("list");
    let keys: Vec<&str> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["rules/cursor"],
        "the global entry lives in another scope"
    );
    let del = state_json(&state(d, "delete", json!({"key": "rules/cursor"})))
        .await
        .expect("delete");
    assert_eq!(del["deleted"], json!(true));
    let err = state_json(&state(
        d,
        "get",
        json!({"key": "rules/cursor", "required": true}),
    ))
    .await
    .expect_err("gone");
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn state_checks_keys_and_operations_at_load() {
    let registry = Registry::builtin();
    let st = registry.get("state").expect("state");
    for (config, says) in [
        (json!({"operation": "set", "key": "a"}), "needs `value`"),
        (
            json!({"operation": "get", "key": "a//b"}),
            "not a state key",
        ),
        (
            json!({"operation": "get", "key": "../x"}),
            "not a state key",
        ),
        (
            json!({"operation": "get", "key": "a", "scope": "custom"}),
            "needs `namespace`",
        ),
        (
            json!({"operation": "get", "key": "a", "scope": "team"}),
            "not one of",
        ),
        (
            json!({"operation": "get", "key": "a", "colour": 1}),
            "unknown field",
        ),
        (
            json!({"operation": "set", "key": "a", "value": 1, "expected_version": "x"}),
            "whole number",
        ),
    ] {
        let err = st.check(&config).expect_err("refused");
        assert!(err.contains(says), "{config}: {err}");
    }
}

#[tokio::test]
async fn state_writers_racing_on_one_key_never_lose_an_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ = state_dir();
    let (writers, each) = (6, 10);
    let mut tasks = Vec::new();
    for w in 0..writers {
        // Each writer is a step of its own, with its own log files.
        let d = dir.path().join(format!("w{w}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < each {
                let got = state_json(&state(
                    &d,
                    "get",
                    json!({"key": "race/counter", "default": 0}),
                ))
                .await
                .expect("get");
                let (n, v) = (
                    got["value"].as_i64().unwrap_or(0),
                    got["version"].as_i64().unwrap_or(0),
                );
                let set = state(
                    &d,
                    "set",
                    json!({"key": "race/counter", "value": n + 1, "expected_version": v}),
                );
                match state_json(&set).await {
                    Ok(_) => done += 1,
                    Err(e) => assert!(e.contains("conflict"), "writer {w}: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a writer");
    }
    let got = state_json(&state(dir.path(), "get", json!({"key": "race/counter"})))
        .await
        .expect("get");
    assert_eq!(got["value"], json!(writers * each));
    assert_eq!(got["version"], json!(writers * each));
}

/// A filter that never ends is stopped by the step's timeout.
#[tokio::test]
async fn jq_a_filter_that_never_ends_is_stopped_by_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut req = request(
        dir.path(),
        Work::Default,
        json!({"filter": "repeat(1)", "data": "0"}),
    );
    req.timeout = Some(Duration::from_millis(300));
    let (outcome, _, _) = run("jq", &req).await;
    assert_eq!(outcome, Outcome::TimedOut);
}
