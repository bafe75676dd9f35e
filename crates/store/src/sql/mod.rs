//! The SQL backend: runs, attempts and their event log, queues, ticks, the leader lease and
//! small state in PostgreSQL or MariaDB/MySQL, so several servers and schedulers on
//! different machines share one history with no shared filesystem.
//!
//! Step logs and an attempt's working files stay on the machine that runs it (under the
//! local data and log dirs); the `log_index` table records where they are.

mod db;
mod import;
mod queue;
mod runs;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use db::Dialect;
use db::{Arg, Bridge, K, Pool, Rows};
use sqlx::AssertSqlSafe;

use crate::{Error, Result};

/// How long an operation keeps retrying while the database is away before it fails.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(600);

/// A store in a PostgreSQL or MariaDB/MySQL database.
pub struct SqlStore {
    inner: Arc<Inner>,
    bridge: Bridge,
}

struct Inner {
    pool: Pool,
    dialect: Dialect,
    /// Local directories for attempts' working files and logs.
    data: PathBuf,
    logs: PathBuf,
    /// This process's claims on queue items carry this prefix.
    nonce: String,
    /// As given: what a child process needs to open the same database (a secret).
    url: String,
    /// Queue items read so far, by seq, with the priority they were read at.
    items: std::sync::Mutex<std::collections::HashMap<i64, (i64, crate::QueueItem)>>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlStore({:?})", self.inner.dialect)
    }
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    // Parameters may carry a password (`?password=…`): leave them out.
    let rest = rest.split('?').next().unwrap_or_default();
    // The host follows the last `@`: a password may contain `@` itself.
    match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

impl SqlStore {
    /// Connects to `url` (`postgres://…` or `mysql://…`/`mariadb://…`) and applies the
    /// embedded migrations. Fails at once, with [`Error::Unreachable`], when the
    /// database cannot be reached: a process should not start against a database it
    /// cannot see.
    pub fn connect(url: &str, home: &Path) -> Result<SqlStore> {
        SqlStore::connect_with(url, home, GIVE_UP)
    }

    /// [`SqlStore::connect`], retrying each operation for up to `patience` while the
    /// database is away.
    pub fn connect_with(url: &str, home: &Path, patience: Duration) -> Result<SqlStore> {
        let bridge = Bridge::new(patience)?;
        let unreachable = |e: Error| Error::Unreachable {
            url: redact(url),
            message: e.to_string(),
        };
        let given = url.to_string();
        let (dialect, url) = match url.split_once("://") {
            Some(("postgres" | "postgresql", _)) => (Dialect::Postgres, url.to_string()),
            Some(("mysql", _)) => (Dialect::Mysql, url.to_string()),
            Some(("mariadb", rest)) => (Dialect::Mysql, format!("mysql://{rest}")),
            _ => {
                return Err(Error::Db {
                    transient: false,
                    message: format!(
                        "storage URL `{}`: use postgres://… or mysql://…",
                        redact(url)
                    ),
                });
            }
        };
        let pool = bridge
            .once(async move { connect_pool(dialect, &url).await })
            .map_err(unreachable)?;
        let migrate = pool.clone();
        // Reached, but the schema could not be brought up to date: not "unreachable".
        bridge.once(async move { migrations(dialect, &migrate).await })?;
        let nonce = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        Ok(SqlStore {
            inner: Arc::new(Inner {
                pool,
                dialect,
                data: crate::data_dir(home),
                logs: crate::log_dir(home),
                nonce,
                items: Default::default(),
                url: given,
            }),
            bridge,
        })
    }

    /// The URL this store was opened with (holds the password: never log it).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Operations failing right now because the database is away.
    pub fn failing(&self) -> u64 {
        self.bridge.failing()
    }

    /// One round trip to the database, not retried: for health checks.
    pub fn ping(&self) -> Result<()> {
        let inner = self.inner.clone();
        self.bridge.once(async move {
            inner
                .fetch("SELECT COUNT(*) FROM leases", &[], &[K::Int])
                .await
                .map(drop)
        })
    }

    /// Runs `op` on the database with retries (see [`Bridge::run`]).
    fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.bridge.run(move || op(inner.clone()))
    }
}

async fn connect_pool(dialect: Dialect, url: &str) -> Result<Pool> {
    use sqlx::Connection;
    let acquire = Duration::from_secs(5);
    // One plain connection first: a pool would only say it timed out, where this gives
    // the real reason (refused, unknown host, bad password, no such database).
    let probe = async {
        match dialect {
            Dialect::Postgres => sqlx::PgConnection::connect(url).await?.close().await,
            Dialect::Mysql => sqlx::MySqlConnection::connect(url).await?.close().await,
        }
    };
    match tokio::time::timeout(acquire, probe).await {
        Ok(result) => result.map_err(db::db)?,
        Err(_) => {
            return Err(Error::Db {
                transient: true,
                message: format!("no answer within {} s", acquire.as_secs()),
            });
        }
    }
    Ok(match dialect {
        Dialect::Postgres => Pool::Pg(pool_options(acquire).connect(url).await.map_err(db::db)?),
        Dialect::Mysql => Pool::My(pool_options(acquire).connect(url).await.map_err(db::db)?),
    })
}

fn pool_options<DB: sqlx::Database>(acquire: Duration) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(8)
        .acquire_timeout(acquire)
        // A dead connection shows as an I/O error, which is retried; a ping before every
        // query would double the round trips.
        .test_before_acquire(false)
}

/// The schema, one embedded SQL file per version and dialect.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/mysql/0001_init.sql"),
)];

/// Applies the embedded migrations not applied yet, under a database lock held on the
/// migrating connection, so processes starting together apply each one once. On
/// PostgreSQL a migration and its version row go in one implicit transaction.
async fn migrations(dialect: Dialect, pool: &Pool) -> Result<()> {
    let (lock, unlock) = match dialect {
        Dialect::Postgres => (
            "SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_lock(7215870412)) AS l",
            "SELECT pg_advisory_unlock(7215870412)",
        ),
        Dialect::Mysql => (
            "SELECT CAST(GET_LOCK('trellis_migrate', 60) AS SIGNED)",
            "SELECT RELEASE_LOCK('trellis_migrate')",
        ),
    };
    macro_rules! migrate_on {
        ($pool:expr) => {{
            let mut conn = $pool.acquire().await.map_err(db::db)?;
            let locked: Option<i64> = sqlx::query_scalar(lock)
                .fetch_one(&mut *conn)
                .await
                .map_err(db::db)?;
            if locked != Some(1) {
                return Err(Error::Db {
                    transient: false,
                    message: "another process held the migration lock for 60 s".into(),
                });
            }
            let done = async {
                sqlx::raw_sql(SCHEMA_TABLE).execute(&mut *conn).await?;
                let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM trellis_schema")
                    .fetch_all(&mut *conn)
                    .await?;
                for sql in pending(dialect, &applied) {
                    sqlx::raw_sql(AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok::<(), sqlx::Error>(())
            }
            .await;
            let _ = sqlx::query(unlock).execute(&mut *conn).await;
            done.map_err(|e| Error::Db {
                transient: false,
                message: format!("migrating the database: {e}"),
            })
        }};
    }
    match pool {
        Pool::Pg(p) => migrate_on!(p),
        Pool::My(p) => migrate_on!(p),
    }
}

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS trellis_schema \
                            (version BIGINT PRIMARY KEY, applied_at VARCHAR(64) NOT NULL)";

/// The migrations not in `applied`, each with the row that records it (one text, so on
/// PostgreSQL both happen in one implicit transaction).
fn pending(dialect: Dialect, applied: &[i64]) -> Vec<String> {
    let now = jiff::Timestamp::now();
    MIGRATIONS
        .iter()
        .filter(|(version, _, _)| !applied.contains(version))
        .map(|(version, pg, my)| {
            let body = if dialect == Dialect::Postgres { pg } else { my };
            let body = body.trim_end().trim_end_matches(';');
            format!(
                "{body};\nINSERT INTO trellis_schema (version, applied_at) VALUES ({version}, '{now}')"
            )
        })
        .collect()
}

impl Inner {
    async fn exec(&self, sql: &str, args: &[Arg]) -> Result<u64> {
        self.pool.exec(self.dialect, sql, args).await
    }

    async fn fetch(&self, sql: &str, args: &[Arg], kinds: &[K]) -> Result<Rows> {
        self.pool.fetch(self.dialect, sql, args, kinds).await
    }

    /// `pg` on PostgreSQL, `my` on MariaDB/MySQL: for the few statements (upserts) whose
    /// syntax differs.
    fn pick(&self, pg: &'static str, my: &'static str) -> &'static str {
        match self.dialect {
            Dialect::Postgres => pg,
            Dialect::Mysql => my,
        }
    }
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Db {
        transient: false,
        message: format!("stored JSON: {e}"),
    }
}
