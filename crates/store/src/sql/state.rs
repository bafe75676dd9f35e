//! The lead, ticks and named values in SQL. The lease is timed by the database's clock;
//! every leader write checks the fencing token in the same transaction, so a leader that
//! stalled past its lease cannot write after another has taken over. A swap of a named
//! value is one conditional statement whose count of rows says whether it happened.

use std::sync::Arc;

use super::db::{Arg, Dialect, K, Tx, Val};
use super::{Inner, SqlStore};
use crate::state::{Lead, LeaseInfo, State};
use crate::{Error, Result};

/// A leader that stops renewing loses the lead after this long.
const LEASE_MS: i64 = 5_000;

/// Fails with [`Error::Fenced`] unless `token` still leads.
pub(super) async fn check_fence(tx: &mut Tx, d: Dialect, token: u64) -> Result<()> {
    // Ticks and queue takes are the scheduler's writes.
    let sql = "SELECT token FROM leases WHERE name = 'scheduler' AND token = ? \
               AND expires_ms > {now}";
    let rows = tx
        .fetch(d, sql, &[Arg::Int(token as i64)], &[K::Int])
        .await?;
    if rows.is_empty() {
        return Err(Error::Fenced(token));
    }
    Ok(())
}

fn info(row: Vec<Val>) -> LeaseInfo {
    let mut row = row.into_iter();
    let mut next = || row.next().unwrap_or(Val::Null);
    LeaseInfo {
        holder: next().into_text().unwrap_or_default(),
        token: next().int() as u64,
        pid: next().int() as u32,
        since: next().into_text().unwrap_or_default(),
        host: next().into_text().unwrap_or_default(),
    }
}

async fn acquire(db: &Inner, name: &str, holder: &str, pid: u32) -> Result<Option<Lead>> {
    let d = db.dialect;
    let seed = db.pick(
        "INSERT INTO leases (name, holder, token, since, expires_ms) VALUES (?, '', 0, '', 0) \
         ON CONFLICT (name) DO NOTHING",
        "INSERT IGNORE INTO leases (name, holder, token, since, expires_ms) VALUES (?, '', 0, '', 0)",
    );
    db.exec(seed, &[name.into()]).await?;
    let mut tx = db.pool.begin().await?;
    let sql = "SELECT holder, token, pid, since, host, expires_ms - {now} FROM leases \
               WHERE name = ? FOR UPDATE";
    let kinds = [K::Text, K::Int, K::Int, K::Text, K::Text, K::Int];
    let mut rows = tx.fetch(d, sql, &[name.into()], &kinds).await?;
    let Some(mut row) = rows.pop() else {
        return Err(Error::Db {
            transient: false,
            message: format!("the leases table has no `{name}` row"),
        });
    };
    let left = row.pop().map_or(0, |v| v.int());
    let current = info(row);
    let host = crate::hostname();
    let mine = current.holder == holder && current.pid == pid && current.host == host;
    if left > 0 && !mine {
        return Ok(None);
    }
    // Ours already (a retried call whose reply was lost): keep the token.
    let token = if mine && left > 0 {
        current.token
    } else {
        current.token + 1
    };
    let since = jiff::Timestamp::now().to_string();
    let sql = "UPDATE leases SET holder = ?, token = ?, pid = ?, since = ?, host = ?, \
               expires_ms = {now} + ? WHERE name = ?";
    let args = [
        holder.into(),
        Arg::Int(token as i64),
        Arg::Int(i64::from(pid)),
        since.as_str().into(),
        host.into(),
        LEASE_MS.into(),
        name.into(),
    ];
    tx.exec(d, sql, &args).await?;
    tx.commit().await?;
    let previous = (current.token > 0 && !mine).then_some(current);
    Ok(Some(Lead {
        name: name.to_string(),
        info: LeaseInfo {
            token,
            holder: holder.to_string(),
            pid,
            since,
            host: host.to_string(),
        },
        previous,
        guard: None,
    }))
}

async fn renew(db: &Inner, name: &str, token: u64) -> Result<bool> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let sql = "SELECT token FROM leases WHERE name = ? AND token = ? FOR UPDATE";
    let args = [name.into(), Arg::Int(token as i64)];
    if tx.fetch(d, sql, &args, &[K::Int]).await?.is_empty() {
        return Ok(false);
    }
    let sql = "UPDATE leases SET expires_ms = {now} + ? WHERE name = ?";
    tx.exec(d, sql, &[LEASE_MS.into(), name.into()]).await?;
    tx.commit().await?;
    Ok(true)
}

async fn claim_tick(db: &Inner, token: u64, dag: &str, at: &str) -> Result<bool> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    check_fence(&mut tx, d, token).await?;
    let sql = db.pick(
        "INSERT INTO ticks (dag, at, token) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        "INSERT IGNORE INTO ticks (dag, at, token) VALUES (?, ?, ?)",
    );
    let n = tx
        .exec(d, sql, &[dag.into(), at.into(), Arg::Int(token as i64)])
        .await?;
    if n == 0 {
        // Claimed already: by this lead too when this is a retry whose commit went
        // through but whose reply was lost; the tick must still fire then.
        let sql = "SELECT token FROM ticks WHERE dag = ? AND at = ?";
        let rows = tx
            .fetch(d, sql, &[dag.into(), at.into()], &[K::Int])
            .await?;
        return Ok(first(rows).is_some_and(|t| t.int() == token as i64));
    }
    tx.commit().await?;
    Ok(true)
}

impl SqlStore {
    /// Runs one statement with owned arguments and returns its rows.
    fn query(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
        kinds: &'static [K],
    ) -> Result<Vec<Vec<Val>>> {
        let args = Arc::new(args);
        self.run(move |db| {
            let args = args.clone();
            async move { db.fetch(sql, &args, kinds).await }
        })
    }

    fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64> {
        let args = Arc::new(args);
        self.run(move |db| {
            let args = args.clone();
            async move { db.exec(sql, &args).await }
        })
    }
}

impl SqlStore {
    /// Records where a finished step's logs are (this machine, their paths and sizes).
    pub(crate) fn index_logs(&self, attempt_id: &str, step: &trellis_core::status::StepRecord) {
        let streams: Vec<(&str, &String)> = [("stdout", &step.stdout), ("stderr", &step.stderr)]
            .into_iter()
            .filter_map(|(stream, path)| path.as_ref().map(|p| (stream, p)))
            .collect();
        if streams.is_empty() {
            return;
        }
        // Both streams in one statement: this runs once per finished step.
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; streams.len()].join(", ");
        let upsert = match self.dialect() {
            Dialect::Postgres => {
                " ON CONFLICT (attempt, step, stream) DO UPDATE SET host = EXCLUDED.host, \
                 path = EXCLUDED.path, bytes = EXCLUDED.bytes"
            }
            Dialect::Mysql => {
                " ON DUPLICATE KEY UPDATE host = VALUES(host), path = VALUES(path), \
                 bytes = VALUES(bytes)"
            }
        };
        let sql = format!(
            "INSERT INTO log_index (attempt, step, stream, host, path, bytes) VALUES {rows}{upsert}"
        );
        let mut args = Vec::new();
        for (stream, path) in streams {
            let bytes = std::fs::metadata(path).map_or(0, |m| m.len() as i64);
            args.extend([
                attempt_id.into(),
                step.name.as_str().into(),
                stream.into(),
                crate::hostname().into(),
                path.as_str().into(),
                Arg::Int(bytes),
            ]);
        }
        let (sql, args) = (Arc::new(sql), Arc::new(args));
        let done = self.run(move |db| {
            let (sql, args) = (sql.clone(), args.clone());
            async move { db.exec(&sql, &args).await }
        });
        if let Err(e) = done {
            tracing::error!("store: cannot index the logs of step {}: {e}", step.name);
        }
    }

    pub fn log_location(
        &self,
        attempt_id: &str,
        step: &str,
        stream: &str,
    ) -> Option<crate::LogLocation> {
        let sql =
            "SELECT host, path, bytes FROM log_index WHERE attempt = ? AND step = ? AND stream = ?";
        let args = vec![attempt_id.into(), step.into(), stream.into()];
        let rows = self.query(sql, args, &[K::Text, K::Text, K::Int]).ok()?;
        let mut row = rows.into_iter().next()?.into_iter();
        Some(crate::LogLocation {
            host: row.next()?.into_text()?,
            path: row.next()?.into_text()?,
            bytes: row.next()?.int(),
        })
    }

    /// Top-level runs by status, from the runs table's summary column.
    pub fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        let sql = "SELECT status, COUNT(*) FROM runs GROUP BY status";
        let rows = self.query(sql, vec![], &[K::Text, K::Int])?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut r = r.into_iter();
                let status = r.next().and_then(Val::into_text).unwrap_or_default();
                (status, r.next().map_or(0, |v| v.int()))
            })
            .collect())
    }
}

/// The longest scope and name MariaDB/MySQL keep (`VARCHAR(255)`): longer ones are refused
/// rather than cut (`INSERT IGNORE` would cut them, silently).
const MYSQL_NAME_CHARS: usize = 255;

/// `prefix` as a `LIKE` pattern (escape `!`) matching the names that start with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn pairs(rows: Vec<Vec<Val>>) -> Vec<(String, String)> {
    rows.into_iter()
        .map(|r| {
            let mut r = r.into_iter().map(|v| v.into_text().unwrap_or_default());
            (r.next().unwrap_or_default(), r.next().unwrap_or_default())
        })
        .collect()
}

fn first(rows: Vec<Vec<Val>>) -> Option<Val> {
    rows.into_iter().next().and_then(|r| r.into_iter().next())
}

impl State for SqlStore {
    fn acquire_lease(&self, name: &str, holder: &str) -> Result<Option<Lead>> {
        let (name, holder, pid) = (
            Arc::new(name.to_string()),
            Arc::new(holder.to_string()),
            std::process::id(),
        );
        self.run(move |db| {
            let (name, holder) = (name.clone(), holder.clone());
            async move { acquire(&db, &name, &holder, pid).await }
        })
    }

    fn renew_lease(&self, lead: &Lead) -> Result<bool> {
        let (name, token) = (Arc::new(lead.name.clone()), lead.info.token);
        self.run(move |db| {
            let name = name.clone();
            async move { renew(&db, &name, token).await }
        })
    }

    fn release_lease(&self, lead: Lead) {
        let sql = "UPDATE leases SET expires_ms = 0 WHERE name = ? AND token = ?";
        let args = vec![lead.name.as_str().into(), Arg::Int(lead.info.token as i64)];
        if let Err(e) = self.execute(sql, args) {
            tracing::warn!("cannot release the {} lease: {e}", lead.name);
        }
    }

    fn lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let sql = "SELECT holder, token, pid, since, host FROM leases \
                   WHERE name = ? AND token > 0";
        let kinds = &[K::Text, K::Int, K::Int, K::Text, K::Text];
        let rows = self.query(sql, vec![name.into()], kinds)?;
        Ok(rows.into_iter().next().map(info))
    }

    fn put_worker(&self, id: &str, info: &str) -> Result<()> {
        let sql = match self.dialect() {
            Dialect::Postgres => {
                "INSERT INTO workers (id, info, heartbeat_ms) VALUES (?, ?, {now}) \
                 ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info, \
                 heartbeat_ms = EXCLUDED.heartbeat_ms"
            }
            Dialect::Mysql => {
                "INSERT INTO workers (id, info, heartbeat_ms) VALUES (?, ?, {now}) \
                 ON DUPLICATE KEY UPDATE info = VALUES(info), heartbeat_ms = VALUES(heartbeat_ms)"
            }
        };
        self.execute(sql, vec![id.into(), info.into()]).map(drop)
    }

    fn workers(&self) -> Result<Vec<String>> {
        let sql = "SELECT info FROM workers WHERE heartbeat_ms > {now} - 600000 ORDER BY id";
        let rows = self.query(sql, vec![], &[K::Text])?;
        Ok(rows
            .into_iter()
            .filter_map(|r| first(vec![r]).and_then(Val::into_text))
            .collect())
    }

    fn values(&self, scope: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT name, value FROM kv WHERE scope = ? ORDER BY name";
        let rows = self.query(sql, vec![scope.into()], &[K::Text, K::Text])?;
        Ok(pairs(rows))
    }

    fn values_with_prefix(&self, scope: &str, prefix: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT name, value FROM kv WHERE scope = ? AND name LIKE ? ESCAPE '!'";
        let args = vec![scope.into(), like_prefix(prefix).into()];
        let mut values = pairs(self.query(sql, args, &[K::Text, K::Text])?);
        // By name as Rust orders it (the server's collation may order otherwise), and
        // only what truly starts with the prefix, whatever the collation thinks equal.
        values.retain(|(name, _)| name.starts_with(prefix));
        values.sort();
        Ok(values)
    }

    fn claim_tick(&self, lead: u64, dag: &str, at: &str) -> Result<bool> {
        let (dag, at) = (Arc::new(dag.to_string()), Arc::new(at.to_string()));
        self.run(move |db| {
            let (dag, at) = (dag.clone(), at.clone());
            async move { claim_tick(&db, lead, &dag, &at).await }
        })
    }

    fn mark_tick_skipped(&self, dag: &str, at: &str) -> Result<()> {
        let sql = "UPDATE ticks SET skipped = 1 WHERE dag = ? AND at = ?";
        self.execute(sql, vec![dag.into(), at.into()]).map(drop)
    }

    fn tick_skipped(&self, dag: &str, at: &str) -> Result<bool> {
        let sql = "SELECT skipped FROM ticks WHERE dag = ? AND at = ?";
        let rows = self.query(sql, vec![dag.into(), at.into()], &[K::Int])?;
        Ok(first(rows).is_some_and(|v| v.int() == 1))
    }

    fn last_tick(&self, dag: &str) -> Result<Option<String>> {
        let sql = "SELECT MAX(at) FROM ticks WHERE dag = ?";
        let rows = self.query(sql, vec![dag.into()], &[K::Text])?;
        Ok(first(rows).and_then(Val::into_text))
    }

    fn get(&self, scope: &str, name: &str) -> Result<Option<String>> {
        let sql = "SELECT value FROM kv WHERE scope = ? AND name = ?";
        let rows = self.query(sql, vec![scope.into(), name.into()], &[K::Text])?;
        Ok(first(rows).and_then(Val::into_text))
    }

    fn put(&self, scope: &str, name: &str, value: Option<&str>) -> Result<()> {
        let Some(value) = value else {
            let sql = "DELETE FROM kv WHERE scope = ? AND name = ?";
            return self.execute(sql, vec![scope.into(), name.into()]).map(drop);
        };
        let sql = match self.dialect() {
            Dialect::Postgres => {
                "INSERT INTO kv (scope, name, value, updated_ms) VALUES (?, ?, ?, {now}) \
                 ON CONFLICT (scope, name) DO UPDATE SET value = EXCLUDED.value, \
                 updated_ms = EXCLUDED.updated_ms"
            }
            Dialect::Mysql => {
                "INSERT INTO kv (scope, name, value, updated_ms) VALUES (?, ?, ?, {now}) \
                 ON DUPLICATE KEY UPDATE value = VALUES(value), updated_ms = VALUES(updated_ms)"
            }
        };
        self.execute(sql, vec![scope.into(), name.into(), value.into()])
            .map(drop)
    }

    fn swap(
        &self,
        scope: &str,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        // `value = ?` alone ignores trailing spaces under MariaDB's PAD SPACE collations:
        // equal byte lengths make it exact.
        let (sql, args): (&'static str, Vec<Arg>) = match (expected, new) {
            (None, None) => return Ok(self.get(scope, name)?.is_none()),
            (None, Some(new)) => {
                let too_long = [scope, name]
                    .iter()
                    .any(|n| n.chars().count() > MYSQL_NAME_CHARS);
                if self.dialect() == Dialect::Mysql && too_long {
                    return Err(Error::Db {
                        transient: false,
                        message: format!(
                            "value name `{scope}`/`{name}` is longer than {MYSQL_NAME_CHARS} \
                             characters"
                        ),
                    });
                }
                let sql = match self.dialect() {
                    Dialect::Postgres => {
                        "INSERT INTO kv (scope, name, value, updated_ms) \
                         VALUES (?, ?, ?, {now}) ON CONFLICT (scope, name) DO NOTHING"
                    }
                    Dialect::Mysql => {
                        "INSERT IGNORE INTO kv (scope, name, value, updated_ms) \
                         VALUES (?, ?, ?, {now})"
                    }
                };
                (sql, vec![scope.into(), name.into(), new.into()])
            }
            (Some(old), Some(new)) => (
                "UPDATE kv SET value = ?, updated_ms = {now} WHERE scope = ? AND name = ? \
                 AND value = ? AND OCTET_LENGTH(value) = ?",
                vec![
                    new.into(),
                    scope.into(),
                    name.into(),
                    old.into(),
                    Arg::Int(old.len() as i64),
                ],
            ),
            (Some(old), None) => (
                "DELETE FROM kv WHERE scope = ? AND name = ? AND value = ? \
                 AND OCTET_LENGTH(value) = ?",
                vec![
                    scope.into(),
                    name.into(),
                    old.into(),
                    Arg::Int(old.len() as i64),
                ],
            ),
        };
        // Rows matched, not only changed, on MariaDB too (sqlx asks for FOUND_ROWS), so
        // swapping a value for itself counts.
        Ok(self.execute(sql, args)? == 1)
    }
}
