//! `registry_auths` on the wire: no registry is reachable here, so the pull is made
//! against a listener that speaks just enough of the Docker Engine API to receive it, and
//! the test reads the credentials header the pull carried (Docker's `X-Registry-Auth`,
//! base64url JSON) for the image's registry, and none for another registry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_executor::{Docker, StepExecutor, StepRequest, Work};

/// Each pull's request line and auth header.
type Pulls = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Answers image inspects with 404 and pulls with 500, keeping each pull's auth header.
async fn serve(listener: tokio::net::UnixListener, pulls: Pulls) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let pulls = pulls.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let line = text.lines().next().unwrap_or_default().to_string();
            let auth = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("x-registry-auth: ")
                        .or(l.strip_prefix("X-Registry-Auth: "))
                })
                .map(String::from);
            let (status, body) = if line.starts_with("POST") && line.contains("/images/create") {
                pulls.lock().unwrap().push((line, auth));
                (
                    "500 Internal Server Error",
                    r#"{"message":"no registry is reachable"}"#,
                )
            } else {
                ("404 Not Found", r#"{"message":"no such image"}"#)
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
    }
}

fn request(dir: &std::path::Path, host: &str, image: &str) -> StepRequest {
    StepRequest {
        name: "auth-test".into(),
        work: Work::Default,
        env: Vec::new(),
        working_dir: None,
        config: json!({
            "image": image,
            "host": host,
            "registry_auths": {
                "ghcr.io": {"username": "me", "password": "s3cret"},
                "registry.example.com": base64::engine::general_purpose::STANDARD.encode("other:pw"),
            },
        }),
        stdout: dir.join("out"),
        stderr: dir.join("err"),
        timeout: None,
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(1),
        mask: None,
        labels: BTreeMap::new(),
        record: None,
    }
}

#[tokio::test]
async fn a_pull_carries_the_credentials_of_the_images_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let pulls = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(listener, pulls.clone()));
    let host = format!("unix://{}", socket.display());
    let docker = Docker::from_env();

    let err = docker
        .start(&request(dir.path(), &host, "ghcr.io/org/app:1"))
        .await
        .expect_err("nothing can be pulled here");
    assert!(
        err.0.contains("ghcr.io/org/app:1") && err.0.contains("cannot be pulled"),
        "{}",
        err.0
    );
    docker
        .start(&request(dir.path(), &host, "docker.io/library/alpine:3"))
        .await
        .expect_err("nor here");

    let pulls = pulls.lock().unwrap().clone();
    assert_eq!(pulls.len(), 2, "{pulls:?}");
    assert!(pulls[0].0.contains("fromImage=ghcr.io"), "{pulls:?}");
    let header = pulls[0].1.as_deref().expect("an auth header for ghcr.io");
    let decoded = base64::engine::general_purpose::URL_SAFE
        .decode(header)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header))
        .expect("base64url");
    let creds: Value = serde_json::from_slice(&decoded).expect("JSON");
    assert_eq!(creds["username"], "me");
    assert_eq!(creds["password"], "s3cret");
    assert_eq!(creds["serveraddress"], "ghcr.io");
    // Docker Hub has no entry: its pull carries no one's credentials.
    let hub = pulls[1].1.as_deref().unwrap_or("");
    let hub = base64::engine::general_purpose::URL_SAFE
        .decode(hub)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    assert!(hub.get("username").is_none_or(Value::is_null), "{hub}");
}
