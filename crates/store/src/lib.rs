//! The storage backends behind the seam of `trellis-storage-api` (re-exported here):
//! [`FileStore`], embedded under `TRELLIS_HOME` in Dagu's layout
//! (`data/dag-runs/<dag>/dag-runs/YYYY/MM/DD/dag-run_<ts>_<id>/attempt_<ts>_<id>/status.jsonl`),
//! [`SqlStore`] on PostgreSQL or MariaDB, and [`LocalLogs`] for step logs; [`open_with`]
//! and [`open_logs`] pick them from what the caller passes in.
//!
//! On files, a run is an append-only log: a full snapshot when the attempt starts and ends,
//! and one line per step change in between, so an update costs one short append, not a
//! rewrite. Each line is written whole with one `write` call; a torn last line (a kill
//! mid-write) is ignored on read, so a stored run is always readable.

mod file;
pub mod logs;
mod sql;

pub use file::{FileStore, read_log};
pub use logs::LocalLogs;
pub use sql::{Dialect, SqlStore, redact};
pub use trellis_storage_api::*;

use std::path::PathBuf;

use trellis_core::status::RunRecord;

/// The environment variable that names a database (`postgres://…`, `mysql://…`): read by
/// the CLI (it wins over the config's `storage` section), and how the `trellis` processes
/// Trellis starts itself are told which database to use ([`Backend::child_env`]).
pub const DATABASE_URL_ENV: &str = "TRELLIS_DATABASE_URL";

/// The log store step output goes to. Local files today (each machine keeps the logs of
/// the steps it ran; the run records where); object storage plugs in here.
pub fn open_logs() -> std::sync::Arc<dyn LogStore> {
    std::sync::Arc::new(LocalLogs)
}

/// The database named by `TRELLIS_DATABASE_URL`, if it is set (and not blank).
pub fn database_url_from_env() -> Option<String> {
    std::env::var(DATABASE_URL_ENV)
        .ok()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// Opens the store of `home`: the database at `database_url` when given, else the file
/// store. The caller decides where the URL comes from (configuration, environment); this
/// never reads the environment itself. `patience` is how long a database operation keeps
/// retrying while the database is away: long for what must not be lost (runs recording
/// their steps), short where a caller waits (a web request, which then gets a 503).
pub fn open_with(
    home: &std::path::Path,
    database_url: Option<&str>,
    patience: std::time::Duration,
) -> Result<Shared> {
    match database_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => Ok(std::sync::Arc::new(SqlStore::connect_with(
            url, home, patience,
        )?)),
        None => Ok(std::sync::Arc::new(FileStore::new(home))),
    }
}

impl Backend for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn probe(&self) -> Result<()> {
        self.probe_dir()
    }
    fn status_counts(&self) -> Option<Result<Vec<(String, i64)>>> {
        Some(FileStore::status_counts(self))
    }
    fn unfinished(&self, limit: usize) -> Option<Result<Vec<RunRecord>>> {
        Some(FileStore::unfinished(self, limit))
    }
    fn newly_finished(&self, since: jiff::Timestamp) -> Option<Result<Vec<RunRecord>>> {
        Some(FileStore::newly_finished(self, since))
    }
    fn latest_tick(&self) -> Option<Result<Option<TickClaim>>> {
        Some(self.latest_tick_claim())
    }
    fn run_watch(&self, dag: &str, run_id: &str) -> Option<Result<Option<Box<dyn RunWatch>>>> {
        Some(FileStore::run_watch(self, dag, run_id))
    }
    fn run_feed(&self, per_dag: usize) -> Option<Box<dyn RunFeed>> {
        Some(FileStore::run_feed(self, per_dag))
    }
}

impl Backend for SqlStore {
    fn spans_machines(&self) -> bool {
        true
    }
    fn child_env(&self) -> Vec<(String, String)> {
        vec![(DATABASE_URL_ENV.to_string(), self.url().to_string())]
    }
    fn kind(&self) -> &'static str {
        match self.dialect() {
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
        }
    }
    fn probe(&self) -> Result<()> {
        self.ping()
    }
    fn failing(&self) -> u64 {
        SqlStore::failing(self)
    }
    fn status_counts(&self) -> Option<Result<Vec<(String, i64)>>> {
        Some(SqlStore::status_counts(self))
    }
    fn log_location(&self, attempt_id: &str, step: &str, stream: &str) -> Option<LogLocation> {
        SqlStore::log_location(self, attempt_id, step, stream)
    }
    fn unfinished(&self, limit: usize) -> Option<Result<Vec<RunRecord>>> {
        Some(SqlStore::unfinished(self, limit))
    }
}

/// Where run data lives: `TRELLIS_DATA_DIR` (the CLI sets it from the config's
/// `paths.data_dir`, so child processes agree), else `<home>/data`.
pub fn data_dir(home: &std::path::Path) -> PathBuf {
    std::env::var_os("TRELLIS_DATA_DIR").map_or_else(|| home.join("data"), PathBuf::from)
}

/// Where step logs live: `TRELLIS_LOG_DIR` (from `paths.log_dir`), else `<home>/logs`.
pub fn log_dir(home: &std::path::Path) -> PathBuf {
    std::env::var_os("TRELLIS_LOG_DIR").map_or_else(|| home.join("logs"), PathBuf::from)
}
