//! What loading the scheduler's inputs can fail with: the config file and DAG files (each
//! error names the file, and the line and column where there is one), the config's
//! storage section, and schedules.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML (or JSON) at all.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    /// YAML whose shape the config does not accept.
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A config file whose settings cannot be acted on.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// A DAG file with problems: the first, and how many more.
    #[error("{}:{line}:{col}: {message}{}", path.display(), more_text(*more))]
    InvalidDag {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
        more: usize,
    },
    #[error("{0}")]
    Cron(trellis_core::cron::Error),
    #[error("unknown timezone `{name}`: {message}")]
    Timezone { name: String, message: String },
    /// `storage.url` with the file backend.
    #[error("storage: `url` is only for a database backend")]
    UrlWithoutDatabase,
    #[error("storage: backend `{backend}` needs a `url`")]
    MissingUrl { backend: String },
    #[error("storage: unknown backend `{backend}` (use file, postgres, mysql or mariadb)")]
    UnknownBackend { backend: String },
}

fn more_text(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    }
}
