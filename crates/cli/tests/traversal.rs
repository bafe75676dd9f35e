//! Every path-taking route against path traversal: each `{parameter}` of every route the
//! server documents (read from its live OpenAPI document, so a new route is covered the
//! day it lands) and of the UI, with every method, gets `..`, `../` spelled with encoded
//! separators, absolute paths, backslashes, double encoding and a NUL. Each answer must be
//! a 4xx, none may show a canary file's contents, and no file may appear or change.
//!
//! Requests go over a raw socket: an HTTP client library normalises `..` and `%2e%2e`
//! segments away before they leave, which would test the client, not the server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Env, Server};

const HELLO: &str = "steps:\n  - name: greet\n    command: echo hi\n";
const MARKER: &str = "canary-7f3a";

/// UI routes (not in the API document) that take path parameters.
const UI_ROUTES: [&str; 3] = [
    "/dags/{name}",
    "/dags/{name}/runs/{run_id}",
    "/static/{file}",
];

/// One raw request; returns the status code and as much of the body as came in 5 s.
fn raw(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {text:?}"));
    (code, text)
}

/// Percent-encodes every byte that is not unreserved, `/` included.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Hostile spellings of one path segment, as they go on the wire.
fn hostile(outside: &Path) -> Vec<String> {
    let canary = outside.join("canary.yaml").display().to_string();
    vec![
        "..".into(),
        ".".into(),
        "..%2F..%2Fcanary".into(),
        "..%2fcanary".into(),
        "%2e%2e%2fcanary".into(),
        "%2E%2E".into(),
        "..%5C..%5Ccanary".into(),
        "%252e%252e%252fcanary".into(),
        "%2Fetc%2Fpasswd".into(),
        encode(&canary),
        encode(canary.trim_end_matches(".yaml")),
        "canary%00.yaml".into(),
        "../canary".into(),
        "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd".into(),
    ]
}

/// Every (method, route template) pair: the live API document's, then the UI's.
fn routes(addr: &str) -> Vec<(String, String)> {
    let (code, text) = raw(addr, "GET", "/api/v2/openapi.json", "");
    assert_eq!(code, 200, "openapi.json: {text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let doc: Value = serde_json::from_str(body).expect("openapi.json is JSON");
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out.extend(UI_ROUTES.iter().map(|r| ("GET".to_string(), r.to_string())));
    out.retain(|(_, path)| path.contains('{'));
    out
}

/// A valid value for each parameter, so that only one segment at a time is hostile.
fn valid(param: &str, run_id: &str) -> String {
    match param {
        "run_id" => run_id.to_string(),
        "step" => "greet".into(),
        "file" => "app.css".into(),
        _ => "hello".into(),
    }
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push((path.display().to_string(), len));
        if path.is_dir() {
            out.extend(listing(&path));
        }
    }
    out.sort();
    out
}

#[test]
fn every_path_parameter_of_every_route_refuses_traversal() {
    let env = Env::new();
    env.dag("hello", HELLO);
    // The dags dir's parent holds a DAG file that `../canary` would reach.
    let outside = env.work.path();
    let canary = format!("steps:\n  - name: leak\n    command: echo {MARKER}\n");
    std::fs::write(outside.join("canary.yaml"), &canary).expect("canary");
    std::fs::write(env.home.path().join("canary.yaml"), &canary).expect("canary");
    let server = Server::start(&env, &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let (code, text) = raw(&addr, "POST", "/api/v2/dags/hello/start-sync", "{}");
    assert_eq!(code, 200, "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let run: Value = serde_json::from_str(body).expect("run JSON");
    let run_id = run["run_id"].as_str().expect("run_id").to_string();
    let before = (listing(outside), listing(env.home.path()));

    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for (method, template) in routes(&addr) {
        let params: Vec<&str> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for target in &params {
            for bad in hostile(outside) {
                let mut path = template.clone();
                for p in &params {
                    let value = if p == target {
                        bad.clone()
                    } else {
                        valid(p, &run_id)
                    };
                    path = path.replace(&format!("{{{p}}}"), &value);
                }
                let body = if path.ends_with("/spec") {
                    HELLO_BODY
                } else {
                    "{}"
                };
                let (code, text) = raw(&addr, &method, &path, body);
                assert!(
                    (400..500).contains(&code),
                    "{method} {path}: {code}\n{text}"
                );
                assert!(!text.contains(MARKER), "{method} {path} leaked the canary");
                assert!(
                    !text.contains("root:x:0:0"),
                    "{method} {path} leaked /etc/passwd"
                );
                *codes.entry(code).or_default() += 1;
            }
        }
    }
    let tried: usize = codes.values().sum();
    eprintln!("{tried} hostile requests, answers by status: {codes:?}");
    assert!(
        tried > 300,
        "only {tried} requests: the route list is too short"
    );
    // Handlers saw them (400: a name refused), not only the router (404).
    assert!(codes.get(&400).copied().unwrap_or(0) > 100, "{codes:?}");
    let after = (listing(outside), listing(env.home.path()));
    assert_eq!(before.0, after.0, "files outside the home changed");
    let runs = |l: &Vec<(String, u64)>| l.iter().filter(|(p, _)| p.contains("dag-runs")).count();
    assert_eq!(
        runs(&before.1),
        runs(&after.1),
        "a hostile request started a run"
    );
}

const HELLO_BODY: &str = r#"{"spec": "steps:\n  - name: x\n    command: echo x\n"}"#;
