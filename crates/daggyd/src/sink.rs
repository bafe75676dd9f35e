//! Where events go: the OStream logger writes one JSON line per state change (run and
//! task) to a file or stdout; the Redis logger records everything (see `redis`). Events
//! are sent on a channel and written by one task, in order, so a slow file or Redis never
//! holds a step.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::book::Book;
use crate::record::{Event, StateChange};

/// The sending side handed to every run.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Event>,
}

impl Sink {
    pub fn send(&self, event: Event) {
        // The writer ends only at shutdown, after the runs.
        let _ = self.tx.send(event);
    }
}

/// Starts the writer: OStream lines to `file` (`None`: stdout) when `book` keeps no state,
/// else the Redis logger. The task ends when every [`Sink`] is dropped.
pub fn start(
    book: Book,
    file: Option<PathBuf>,
) -> std::io::Result<(Sink, tokio::task::JoinHandle<()>)> {
    let out: Option<Box<dyn Write + Send>> = match (&book, file) {
        (Book::Redis(_), _) => None,
        (_, Some(path)) => Some(Box::new(open(&path)?)),
        (_, None) => Some(Box::new(std::io::stdout())),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let task = tokio::spawn(async move {
        let mut out = out;
        while let Some(event) = rx.recv().await {
            match out.as_mut() {
                Some(w) => {
                    if let Some(line) = line(&event)
                        && let Err(e) = writeln!(w, "{line}").and_then(|()| w.flush())
                    {
                        tracing::error!("daggyd: OStreamLogger cannot write: {e}");
                    }
                }
                None => {
                    if let Err(e) = book.write(&event).await {
                        tracing::error!("daggyd: RedisLogger: run {}: {e}", event.run());
                    }
                }
            }
        }
    });
    Ok((Sink { tx }, task))
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The OStream line of a state change; other events make none.
pub fn line(event: &Event) -> Option<String> {
    let (run, task, change): (u64, Option<&str>, &StateChange) = match event {
        Event::Run { run, change } => (*run, None, change),
        Event::Task { run, task, change } => (*run, Some(task), change),
        Event::Created { .. } | Event::Attempt { .. } => return None,
    };
    let mut value = serde_json::json!({
        "datetime": change.datetime,
        "run_id": run,
    });
    if let Some(task) = task {
        value["task_id"] = task.into();
    }
    value["state"] = change.state.as_str().into();
    Some(value.to_string())
}
