//! Reading a step's log through the API: a byte range, or the last lines, without
//! loading the whole file.

use serde::{Deserialize, Serialize};
use trellis_store::LogStore;
use trellis_store::logs::tail_start;
use utoipa::ToSchema;

use super::find_run;
use crate::error::{Error, Result};
use crate::state::App;

/// Which of a step's logs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Which part of a log to read: from `offset` (bytes), at most `limit` bytes, or the last
/// `tail` lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogRange {
    pub offset: u64,
    pub limit: Option<u64>,
    pub tail: Option<usize>,
}

/// A piece of a step's log.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LogChunk {
    pub step: String,
    pub stream: LogStream,
    /// The bytes read, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Where `text` starts in the file.
    pub offset: u64,
    /// Where to read on from.
    pub next_offset: u64,
    /// The file's size now.
    pub size: u64,
    /// The step has ended, so the log will not grow.
    pub complete: bool,
}

/// Largest piece of a log one read returns.
pub const MAX_LOG_CHUNK: u64 = 1024 * 1024;

/// Reads part of a step's (or handler's) log; 404 when the run has no such step.
pub fn read_log(
    app: &App,
    name: &str,
    run_id: &str,
    step: &str,
    stream: LogStream,
    range: LogRange,
) -> Result<LogChunk> {
    let run = find_run(app, name, run_id)?;
    let record = run
        .steps
        .iter()
        .chain(run.handlers.values())
        .find(|s| s.name == step)
        .ok_or_else(|| Error::not_found(format!("run {run_id} has no step named `{step}`")))?;
    let path = match stream {
        LogStream::Stdout => record.stdout.as_deref(),
        LogStream::Stderr => record.stderr.as_deref(),
    };
    // No path or no file yet: the step has not written anything.
    let piece = match path {
        Some(path) => read_range(&**app.runs.logs(), path, range)?,
        None => None,
    };
    if piece.is_none()
        && let Some(host) = run
            .host
            .as_deref()
            .filter(|h| *h != trellis_store::hostname())
    {
        return Err(elsewhere(app, &run, step, stream, host));
    }
    let (text, offset, next_offset, size) = piece.unwrap_or_default();
    Ok(LogChunk {
        step: step.to_string(),
        stream,
        text,
        offset,
        next_offset,
        size,
        complete: record.status.is_final() || run.status.is_final(),
    })
}

/// The step ran on another machine (a database store): its log is there, and the log
/// index says where.
fn elsewhere(
    app: &App,
    run: &trellis_core::status::RunRecord,
    step: &str,
    stream: LogStream,
    host: &str,
) -> Error {
    Error::new(
        axum::http::StatusCode::NOT_FOUND,
        "log_on_other_host",
        log_elsewhere(app, run, step, stream, host),
    )
}

/// Where a log kept on another machine is, in words.
pub fn log_elsewhere(
    app: &App,
    run: &trellis_core::status::RunRecord,
    step: &str,
    stream: LogStream,
    host: &str,
) -> String {
    let stream = match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    let at = app
        .store
        .log_location(&run.attempt_id, step, stream)
        .map(|l| format!(" at {} ({} bytes)", l.path, l.bytes))
        .unwrap_or_default();
    format!("the {stream} log of step `{step}` is on {host}{at}, where the step ran")
}

/// `(text, start, end, size)` of a range of a log; `None` when the log does not exist.
/// The range ends on a whole UTF-8 character, so consecutive chunks join up cleanly.
fn read_range(
    logs: &dyn LogStore,
    log: &str,
    range: LogRange,
) -> Result<Option<(String, u64, u64, u64)>> {
    let failed = |e: std::io::Error| Error::internal(format!("reading the log {log}: {e}"));
    let Some(size) = logs.len(log).map_err(failed)? else {
        return Ok(None);
    };
    let limit = range.limit.unwrap_or(MAX_LOG_CHUNK).min(MAX_LOG_CHUNK);
    let start = match range.tail {
        Some(lines) => tail_start(logs, log, size, lines).map_err(failed)?,
        None => range.offset.min(size),
    };
    let end = size.min(start.saturating_add(limit));
    let mut buf = logs
        .read(log, start, (end - start) as usize)
        .map_err(failed)?;
    if let Err(e) = std::str::from_utf8(&buf)
        && e.error_len().is_none()
    {
        buf.truncate(e.valid_up_to());
    }
    let end = start + buf.len() as u64;
    Ok(Some((
        String::from_utf8_lossy(&buf).into_owned(),
        start,
        end,
        size,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_store::LocalLogs;

    fn tail_of(text: &str, lines: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let start = tail_start(&LocalLogs, &path, text.len() as u64, lines).unwrap();
        text[start as usize..].to_string()
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        let long: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&long, 2), "line 99998\nline 99999\n");
    }

    #[test]
    fn a_chunk_ends_on_a_whole_character() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "hé!").unwrap();
        let path = path.display().to_string();
        let range = |offset, limit| LogRange {
            offset,
            limit: Some(limit),
            tail: None,
        };
        let (text, start, end, size) = read_range(&LocalLogs, &path, range(0, 2)).unwrap().unwrap();
        assert_eq!((text.as_str(), start, end, size), ("h", 0, 1, 4));
        let (text, _, end, _) = read_range(&LocalLogs, &path, range(end, 10))
            .unwrap()
            .unwrap();
        assert_eq!((text.as_str(), end), ("é!", 4));
        assert!(
            read_range(&LocalLogs, "/nonexistent/log", range(0, 1))
                .unwrap()
                .is_none()
        );
    }
}
