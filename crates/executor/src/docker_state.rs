//! A container's state read straight from the Engine API's JSON, over the unix socket.
//! The typed client refuses Podman's passing `stopped` state (not in Docker's schema),
//! which is the first state that already holds the exit code: reading it as plain JSON
//! ends a step as soon as its container has, not after the runtime's cleanup.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `finished` needs of a container's state.
pub(crate) struct State {
    pub running: bool,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// Created and never started.
    pub created: bool,
    /// The container's first process, as this machine numbers it (0 when not running).
    pub pid: i64,
}

/// `None` when no such container exists.
pub(crate) async fn inspect(socket: &str, id: &str) -> io::Result<Option<State>> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    // HTTP/1.0: the answer is not chunked and ends when the connection closes.
    let request = format!("GET /v1.41/containers/{id}/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "404" {
        return Ok(None);
    }
    if status != "200" {
        return Err(io::Error::other(format!(
            "inspect answered {status}: {body}"
        )));
    }
    let json: serde_json::Value = serde_json::from_str(body).map_err(io::Error::other)?;
    let state = &json["State"];
    let status = state["Status"].as_str().unwrap_or("");
    Ok(Some(State {
        running: state["Running"].as_bool().unwrap_or(false)
            && !matches!(status, "stopped" | "exited" | "dead"),
        exit_code: state["ExitCode"].as_i64().unwrap_or(-1),
        oom_killed: state["OOMKilled"].as_bool().unwrap_or(false),
        created: status == "created" || status == "configured",
        pid: state["Pid"].as_i64().unwrap_or(0),
    }))
}
