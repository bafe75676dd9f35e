//! The log stream: a step's stdout or stderr as it grows, from an offset or the last
//! lines, in pieces that never split a UTF-8 character, until the run is final and the
//! file is drained.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use serde::Deserialize;
use trellis_core::status::RunRecord;
use trellis_store::logs::{LogStore, complete_utf8_len, tail_start};

use super::{Events, RUN_POLL, blocking, end_event, json_event, locate, pause, sse};
use crate::App;
use crate::error::{Error, ErrorBody, Result};
use crate::views::LogStream;
use trellis_store::Followed as Tracked;

/// Largest piece of log one event carries.
const LOG_CHUNK: u64 = 256 * 1024;

/// Data of a `log` event: new bytes of the log from `offset` (the event id is
/// `next_offset`, so a reconnecting `EventSource` resumes where it stopped).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogEvent {
    pub offset: u64,
    pub next_offset: u64,
    pub text: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// `stdout` (default) or `stderr`.
    pub stream: Option<LogStream>,
    /// Start with the last N lines instead of the whole log.
    pub tail: Option<usize>,
    /// Start at this byte offset (a reconnecting `EventSource` sends `Last-Event-ID`).
    pub offset: Option<u64>,
}

/// A step's log as it grows.
///
/// Event `log` carries `{offset, next_offset, text}` for new bytes (waiting while the step
/// has not started); event `end` follows once the run is final and the log is drained.
#[utoipa::path(
    get,
    path = "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log/stream",
    tag = "live",
    params(
        ("name" = String, Path, description = "DAG name"),
        ("run_id" = String, Path),
        ("step" = String, Path),
        LogQuery,
    ),
    responses(
        (status = 200, description = "`log` events (LogEvent), then `end`", content_type = "text/event-stream", body = super::SseEvent),
        (status = 404, description = "No such run or step", body = ErrorBody),
    )
)]
pub(super) async fn log_events(
    State(app): State<Arc<App>>,
    UrlPath((name, run_id, step)): UrlPath<(String, String, String)>,
    query: std::result::Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Events> {
    let Query(query) = query?;
    let run = locate(&app, &name, &run_id).await?;
    let wanted = step.clone();
    let (run, known) = blocking(run, move |run| {
        run.refresh();
        run.settled_status();
        // A handler appears only once it runs, so an unknown name is accepted while the
        // run goes on.
        run.view()
            .is_none_or(|v| !v.status.is_final() || step_of(&v, &wanted).is_some())
    })
    .await
    .ok_or_else(|| Error::internal("log stream setup failed"))?;
    if !known {
        return Err(Error::not_found(format!(
            "run {run_id} has no step named `{step}`"
        )));
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let start = match (resume.or(query.offset), query.tail) {
        (Some(offset), _) => Start::Offset(offset),
        (None, Some(lines)) => Start::Tail(lines),
        (None, None) => Start::Offset(0),
    };
    let state = LogFeed {
        app,
        run,
        step,
        stream: query.stream.unwrap_or_default(),
        start,
        path: None,
        looked: false,
        offset: 0,
        pending: VecDeque::new(),
        done: false,
    };
    let live = state.app.clone();
    Ok(sse(
        &live.live,
        futures_util::stream::unfold(state, next_log_event),
    ))
}

fn step_of<'a>(run: &'a RunRecord, step: &str) -> Option<&'a trellis_core::status::StepRecord> {
    run.steps
        .iter()
        .chain(run.handlers.values())
        .find(|s| s.name == step)
}

#[derive(Clone, Copy)]
enum Start {
    Offset(u64),
    Tail(usize),
}

struct LogFeed {
    app: Arc<App>,
    run: Tracked,
    step: String,
    stream: LogStream,
    start: Start,
    /// The log file followed; a retry's new attempt writes another one.
    path: Option<PathBuf>,
    /// A tick has looked at the record: `path` is up to date with it.
    looked: bool,
    offset: u64,
    pending: VecDeque<Event>,
    done: bool,
}

async fn next_log_event(mut feed: LogFeed) -> Option<(Event, LogFeed)> {
    loop {
        if let Some(event) = feed.pending.pop_front() {
            return Some((event, feed));
        }
        if feed.done {
            return None;
        }
        let app = feed.app.clone();
        let idle = if feed.quiet() {
            true
        } else {
            let (state, idle) = blocking(feed, |feed| feed.tick()).await?;
            feed = state;
            idle
        };
        if idle && !pause(&app.live, RUN_POLL).await {
            return None;
        }
    }
}

impl LogFeed {
    /// A cheap look (`stat` calls only): true when neither the run nor the log changed,
    /// so there is nothing to read.
    fn quiet(&mut self) -> bool {
        let Some(recorded) = self.run.record.as_ref().map(|r| r.status) else {
            return false;
        };
        if !self.looked {
            return false; // the log's path is not taken from the record yet
        }
        if self.run.stale() || self.run.status() != Some(recorded) {
            return false;
        }
        // Only a log the log store keeps in a local file can be looked at this cheaply;
        // any other is looked at on the blocking pool.
        let logs = self.app.runs.logs();
        let file = match self.path.as_deref().and_then(Path::to_str) {
            Some(log) => match logs.local_file(log) {
                Some(file) => Some(file),
                None => return false,
            },
            None => None,
        };
        let size = file.and_then(|f| std::fs::metadata(f).ok());
        !recorded.is_final() && size.is_none_or(|m| m.len() == self.offset)
    }

    /// Looks at the run, then the log; queues what is new. True when nothing was.
    fn tick(&mut self) -> bool {
        self.looked = true;
        self.run.refresh();
        // The run's state is read before the log, so a final run's log is complete.
        self.run.settled_status();
        let Some(view) = self.run.view() else {
            return true;
        };
        let path = step_of(&view, &self.step).and_then(|s| match self.stream {
            LogStream::Stdout => s.stdout.clone(),
            LogStream::Stderr => s.stderr.clone(),
        });
        let path = path.map(PathBuf::from);
        if path != self.path && path.is_some() {
            self.offset = match (&self.path, self.start) {
                (None, Start::Offset(o)) => o,
                (None, Start::Tail(lines)) => path
                    .as_deref()
                    .and_then(|p| tail_offset(&**self.app.runs.logs(), p, lines).ok())
                    .unwrap_or(0),
                (Some(_), _) => 0,
            };
            self.path = path;
        }
        let finished = view.status.is_final();
        // Written on another machine (a database store): say where, and end.
        if let Some(host) = view
            .host
            .as_deref()
            .filter(|h| *h != trellis_store::hostname())
            && self.path.as_deref().is_some_and(|p| !self.kept_here(p))
        {
            let message =
                crate::views::log::log_elsewhere(&self.app, &view, &self.step, self.stream, host);
            let body = serde_json::json!({ "code": "log_on_other_host", "message": message });
            self.pending.push_back(super::json_event("error", &body));
            self.done = true;
            return false;
        }
        let chunk = self.path.clone().and_then(|p| self.read(&p, finished));
        if let Some(chunk) = chunk {
            self.pending.push_back(chunk);
            return false;
        }
        if finished {
            self.pending.push_back(end_event(&view));
            self.done = true;
            return false;
        }
        true
    }

    /// Whether the log store has this log (a log written on another machine, with local
    /// files, is not here).
    fn kept_here(&self, log: &Path) -> bool {
        let logs = self.app.runs.logs();
        log.to_str()
            .is_some_and(|log| logs.len(log).is_ok_and(|len| len.is_some()))
    }

    /// The next piece of the log, if it grew; an incomplete UTF-8 character at the end
    /// waits for its remaining bytes unless the run is over.
    fn read(&mut self, log: &Path, finished: bool) -> Option<Event> {
        let logs = &**self.app.runs.logs();
        let log = log.to_str()?;
        let size = logs.len(log).ok()??;
        if size < self.offset {
            self.offset = 0; // truncated or replaced: start over
        }
        if size == self.offset {
            return None;
        }
        let want = (size - self.offset).min(LOG_CHUNK);
        let buf = logs.read(log, self.offset, want as usize).ok()?;
        let keep = if finished && buf.len() as u64 == size - self.offset {
            buf.len()
        } else {
            complete_utf8_len(&buf)
        };
        if keep == 0 {
            return None;
        }
        let start = self.offset;
        self.offset += keep as u64;
        let event = LogEvent {
            offset: start,
            next_offset: self.offset,
            text: String::from_utf8_lossy(&buf[..keep]).into_owned(),
        };
        Some(json_event("log", &event).id(self.offset.to_string()))
    }
}

/// Where the last `lines` lines of a log start.
fn tail_offset(logs: &dyn LogStore, log: &Path, lines: usize) -> std::io::Result<u64> {
    let log = log.to_str().unwrap_or_default();
    let size = logs.len(log)?.unwrap_or(0);
    tail_start(logs, log, size, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_utf8_waits_for_its_last_bytes() {
        let text = "añ€😀".as_bytes();
        assert_eq!(complete_utf8_len(text), text.len());
        assert_eq!(complete_utf8_len(&text[..text.len() - 1]), text.len() - 4);
        assert_eq!(complete_utf8_len(&text[..text.len() - 3]), text.len() - 4);
        assert_eq!(complete_utf8_len(&text[..2]), 1);
        assert_eq!(complete_utf8_len(b""), 0);
        assert_eq!(complete_utf8_len(&[0x80, 0x80, 0x80, 0x80, 0x80]), 5);
    }

    #[test]
    fn tail_finds_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let tail = |text: &str, n| {
            std::fs::write(&path, text).unwrap();
            text[tail_offset(&trellis_store::LocalLogs, &path, n).unwrap() as usize..].to_string()
        };
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 9), "a\nb\n");
        assert_eq!(tail("a\nb\n", 0), "");
        let long: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(&long, 1), "line 49999\n");
    }
}
