//! The database under the SQL backend: one pool of PostgreSQL or MariaDB/MySQL connections,
//! SQL written once with `?` placeholders, and a bridge from the sync store traits to sqlx's
//! async API on a runtime of our own.
//!
//! Both dialects are spoken through the native drivers (not sqlx's `Any` driver, whose
//! MySQL text/blob mapping has changed between releases); values are only integers and
//! text, so one row type serves both.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Row as _};

use crate::{Error, Result};

/// Which SQL the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    /// Our SQL in this dialect: `?` becomes `$n` for PostgreSQL, and `{now}` becomes the
    /// server's clock in milliseconds (leases are timed by the database, so schedulers on
    /// machines whose clocks disagree still agree on who leads).
    pub fn sql(self, text: &str) -> String {
        let now = match self {
            Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
            Dialect::Mysql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        };
        let text = text.replace("{now}", now);
        if self == Dialect::Mysql {
            return text;
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// A bound value.
#[derive(Clone, Debug)]
pub enum Arg {
    Int(i64),
    Text(String),
    Null,
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Text(s.to_string())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Text(s)
    }
}
impl From<i64> for Arg {
    fn from(i: i64) -> Arg {
        Arg::Int(i)
    }
}
impl From<Option<String>> for Arg {
    fn from(s: Option<String>) -> Arg {
        s.map_or(Arg::Null, Arg::Text)
    }
}

/// The type of a column read back.
#[derive(Clone, Copy, Debug)]
pub enum K {
    Int,
    Text,
}

/// A value read back.
#[derive(Clone, Debug)]
pub enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl Val {
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            _ => 0,
        }
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn into_text(self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
}

pub type Rows = Vec<Vec<Val>>;

/// The first column of each row, as text (rows where it is not text are left out).
pub fn texts(rows: Rows) -> Vec<String> {
    rows.into_iter()
        .filter_map(|r| r.into_iter().next().and_then(Val::into_text))
        .collect()
}

#[derive(Clone, Debug)]
pub enum Pool {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
}

/// A transaction in either dialect.
pub enum Tx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    My(sqlx::Transaction<'static, sqlx::MySql>),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Int(i) => q.bind(*i),
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Null => q.bind(None::<String>),
            };
        }
        q
    }};
}

macro_rules! decode_rows {
    ($rows:expr, $kinds:expr) => {{
        let mut out = Vec::with_capacity($rows.len());
        for row in &$rows {
            let mut vals = Vec::with_capacity($kinds.len());
            for (i, k) in $kinds.iter().enumerate() {
                vals.push(match k {
                    K::Int => row
                        .try_get::<Option<i64>, _>(i)
                        .map_err(db)?
                        .map_or(Val::Null, Val::Int),
                    K::Text => row
                        .try_get::<Option<String>, _>(i)
                        .map_err(db)?
                        .map_or(Val::Null, Val::Text),
                });
            }
            out.push(vals);
        }
        out
    }};
}

pub fn db(e: sqlx::Error) -> Error {
    Error::Db {
        transient: transient(&e),
        message: e.to_string(),
    }
}

/// A failure that may pass if the operation is tried again: the connection or the server
/// went away, or the server is starting or shutting down.
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            // MySQL's `code()` is the SQLSTATE; the error number tells these apart.
            if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return [1053, 1205, 1213, 1927, 2006, 2013].contains(&my.number());
            }
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL: connection exceptions (08xxx), shutdown and startup (57Pxx),
            // serialization failures and deadlocks (40001, 40P01). (MySQL above: shutdown,
            // lock wait timeout, deadlock, connection killed, server gone, lost connection.)
            code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
        }
        _ => false,
    }
}

impl Pool {
    pub async fn exec(&self, d: Dialect, sql: &str, args: &[Arg]) -> Result<u64> {
        let sql = d.sql(sql);
        match self {
            Pool::Pg(p) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                Ok(q.execute(p).await.map_err(db)?.rows_affected())
            }
            Pool::My(p) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                Ok(q.execute(p).await.map_err(db)?.rows_affected())
            }
        }
    }

    pub async fn fetch(&self, d: Dialect, sql: &str, args: &[Arg], kinds: &[K]) -> Result<Rows> {
        let sql = d.sql(sql);
        Ok(match self {
            Pool::Pg(p) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                let rows = q.fetch_all(p).await.map_err(db)?;
                decode_rows!(rows, kinds)
            }
            Pool::My(p) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                let rows = q.fetch_all(p).await.map_err(db)?;
                decode_rows!(rows, kinds)
            }
        })
    }

    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Pool::Pg(p) => Tx::Pg(p.begin().await.map_err(db)?),
            Pool::My(p) => Tx::My(p.begin().await.map_err(db)?),
        })
    }
}

impl Tx {
    pub async fn exec(&mut self, d: Dialect, sql: &str, args: &[Arg]) -> Result<u64> {
        let sql = d.sql(sql);
        match self {
            Tx::Pg(t) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                Ok(q.execute(&mut **t).await.map_err(db)?.rows_affected())
            }
            Tx::My(t) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                Ok(q.execute(&mut **t).await.map_err(db)?.rows_affected())
            }
        }
    }

    pub async fn fetch(
        &mut self,
        d: Dialect,
        sql: &str,
        args: &[Arg],
        kinds: &[K],
    ) -> Result<Rows> {
        let sql = d.sql(sql);
        Ok(match self {
            Tx::Pg(t) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                let rows = q.fetch_all(&mut **t).await.map_err(db)?;
                decode_rows!(rows, kinds)
            }
            Tx::My(t) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql)), args);
                let rows = q.fetch_all(&mut **t).await.map_err(db)?;
                decode_rows!(rows, kinds)
            }
        })
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Pg(t) => t.commit().await.map_err(db),
            Tx::My(t) => t.commit().await.map_err(db),
        }
    }
}

/// How long one try of a database operation may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs async database work for sync callers on a runtime the store owns, so the store
/// works the same from plain threads and from inside tokio tasks (where a nested
/// `block_on` would panic). Transient failures are retried with backoff until
/// `give_up`; meanwhile [`Bridge::failing`] tells health checks the database is away.
pub struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
    /// Operations that have failed transiently and not yet succeeded.
    failing: Arc<AtomicU64>,
    give_up: Duration,
}

impl Bridge {
    pub fn new(give_up: Duration) -> Result<Bridge> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("trellis-store-sql")
            .enable_all()
            .build()
            .map_err(|e| Error::Db {
                transient: false,
                message: format!("cannot start the database runtime: {e}"),
            })?;
        Ok(Bridge {
            rt: Some(rt),
            failing: Arc::default(),
            give_up,
        })
    }

    pub fn failing(&self) -> u64 {
        self.failing.load(Ordering::Relaxed)
    }

    /// Runs `op` once, without retries (connecting at start, health probes).
    pub fn once<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(Error::Db {
                transient: false,
                message: "store closed".into(),
            });
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(op.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(Error::Db {
                transient: true,
                message: "database task ended".into(),
            })
        })
    }

    /// Runs `op`, again and again with backoff while it fails transiently. Every
    /// operation is written to be safe to repeat after an unknown outcome.
    pub fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let op = Arc::new(op);
        let started = std::time::Instant::now();
        let mut delays = trellis_core::backoff::Backoff::doubling(
            Duration::from_millis(50),
            Duration::from_secs(2),
        );
        let mut failed = false;
        loop {
            let op = op.clone();
            // A try that hangs (a half-open connection, a lock held by a dead session)
            // is abandoned and tried again, like a lost connection.
            let bounded = async move {
                match tokio::time::timeout(TRY_TIMEOUT, op()).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Db {
                        transient: true,
                        message: format!("no answer within {} s", TRY_TIMEOUT.as_secs()),
                    }),
                }
            };
            match self.once(bounded) {
                Err(Error::Db {
                    transient: true,
                    message,
                }) if started.elapsed() < self.give_up => {
                    if !failed {
                        failed = true;
                        self.failing.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("store: database unavailable ({message}); retrying");
                    }
                    std::thread::sleep(delays.next_delay());
                }
                other => {
                    if failed {
                        self.failing.fetch_sub(1, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
