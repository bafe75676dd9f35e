//! Runs, attempts and their event log in SQL.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use trellis_core::Dag;
use trellis_core::status::RunRecord;

use super::db::{Arg, K, Rows, Val};
use super::{Inner, SqlStore, json_err};
use crate::{Attempt, Entry, Error, Keep, Page, Result, Store, safe_name};

/// The record of one attempt with the step changes after its last snapshot, selected as
/// `(key, record, entry)` rows ordered by key then event: `FOLD_FROM` is joined to a
/// derived table `r(key, attempt)` of the attempts wanted.
const FOLD_SELECT: &str = "SELECT r.k, a.record, e.entry FROM ";
const FOLD_JOIN: &str = " JOIN attempts a ON a.id = r.attempt \
     LEFT JOIN events e ON e.attempt = a.id AND e.id > a.snapshot_event \
     ORDER BY r.k DESC, e.id";

/// Folds `(key, record, entry)` rows into records, in the order the keys came.
fn fold(rows: Rows) -> Result<Vec<RunRecord>> {
    let mut out: Vec<(i64, Option<RunRecord>)> = Vec::new();
    for row in rows {
        let mut row = row.into_iter();
        let key = row.next().map_or(0, |v| v.int());
        let record = row.next().and_then(Val::into_text);
        let entry = row.next().and_then(Val::into_text);
        if out.last().is_none_or(|(k, _)| *k != key) {
            let record = match record {
                Some(json) => Some(serde_json::from_str(&json).map_err(json_err)?),
                None => None,
            };
            out.push((key, record));
        }
        if let (Some(json), Some((_, state))) = (entry, out.last_mut()) {
            // A line that does not parse is skipped, as a torn line is in the file store.
            if let Ok(entry) = serde_json::from_str::<Entry>(&json) {
                entry.apply(state);
            }
        }
    }
    Ok(out.into_iter().filter_map(|(_, r)| r).collect())
}

/// One `(attempt_id, entry)` row of a run's history. An entry that does not parse is
/// left out, as [`fold`] skips it when reading the run's record.
fn history_entry(row: Vec<Val>) -> Option<(String, Entry)> {
    let mut row = row.into_iter();
    let attempt_id = row.next().and_then(Val::into_text)?;
    let json = row.next().and_then(Val::into_text)?;
    let entry = serde_json::from_str::<Entry>(&json).ok()?;
    Some((attempt_id, entry))
}

fn not_found(dag: &str, run_id: &str) -> Error {
    Error::Io {
        path: PathBuf::from(format!("{dag}/{run_id}")),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such run"),
    }
}

/// Where a new attempt's files go, on this machine.
struct Places {
    dir: PathBuf,
    log_dir: PathBuf,
}

impl SqlStore {
    fn places(&self, dag: &str, run_id: &str, id: &str, parent: Option<&Attempt>) -> Places {
        match parent {
            Some(p) => Places {
                dir: p.dir.join("children").join(format!("child_{run_id}")),
                log_dir: p.log_dir.join(format!("child_{run_id}")),
            },
            None => Places {
                dir: self
                    .inner
                    .data
                    .join("runs")
                    .join(safe_name(dag))
                    .join(run_id),
                log_dir: self.inner.logs.join(safe_name(dag)).join(run_id),
            },
        }
        .attempt(id)
    }

    /// Creates an attempt. A top-level attempt becomes its run's latest; with
    /// `must_exist` the run must be there already (a retry).
    fn new_attempt(
        &self,
        dag: &str,
        run_id: &str,
        parent: Option<&Attempt>,
        must_exist: bool,
    ) -> Result<Attempt> {
        crate::check_name(run_id)?;
        let attempt_id = uuid::Uuid::now_v7().simple().to_string();
        let places = self.places(dag, run_id, &attempt_id, parent);
        for dir in [&places.dir, &places.log_dir] {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let root_run_id = parent.map_or_else(|| run_id.to_string(), |p| p.root_run_id.to_string());
        let row = AttemptRow {
            attempt_id: attempt_id.clone(),
            dag: dag.to_string(),
            run_id: run_id.to_string(),
            root_run_id: root_run_id.clone(),
            parent: parent.map(|p| p.attempt_id.to_string()),
            dir: places.dir.display().to_string(),
            log_dir: places.log_dir.display().to_string(),
        };
        let row = Arc::new(row);
        let created = self.run(move |db| {
            let row = row.clone();
            async move { insert_attempt(&db, &row, must_exist).await }
        })?;
        if !created {
            return Err(not_found(dag, run_id));
        }
        Ok(Attempt {
            dir: places.dir,
            log_dir: places.log_dir,
            run_id: run_id.to_string().into(),
            attempt_id: attempt_id.into(),
            root_run_id: root_run_id.into(),
        })
    }

    /// Records of the attempts picked by `from`, a derived table `r(k, attempt)`.
    fn records(&self, from: &str, args: Vec<Arg>) -> Result<Vec<RunRecord>> {
        let (args, sql) = (
            Arc::new(args),
            Arc::new(format!("{FOLD_SELECT}{from}{FOLD_JOIN}")),
        );
        let rows = self.run(move |db| {
            let (args, sql) = (args.clone(), sql.clone());
            async move { db.fetch(&sql, &args, &[K::Int, K::Text, K::Text]).await }
        })?;
        fold(rows)
    }

    /// Runs whose recorded status is not final (the `runs_by_status` index), newest first.
    pub fn unfinished(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let from = "(SELECT id AS k, attempt FROM runs WHERE status IN \
                    ('not_started', 'queued', 'running', 'retrying', 'waiting') \
                    ORDER BY id DESC LIMIT ?) r";
        self.records(from, vec![Arg::Int(limit.min(i64::MAX as usize) as i64)])
    }

    fn page_all(&self, dag: Option<&str>, offset: usize, limit: usize) -> Result<Page> {
        let (count, from, mut args): (&str, &str, Vec<Arg>) = match dag {
            Some(d) => (
                "SELECT COUNT(*) FROM runs WHERE dag = ?",
                "(SELECT id AS k, attempt FROM runs WHERE dag = ? \
                 ORDER BY id DESC LIMIT ? OFFSET ?) r",
                vec![d.into()],
            ),
            None => (
                "SELECT COUNT(*) FROM runs",
                "(SELECT id AS k, attempt FROM runs ORDER BY id DESC LIMIT ? OFFSET ?) r",
                vec![],
            ),
        };
        let count_args = Arc::new(args.clone());
        let total = self.run(move |db| {
            let args = count_args.clone();
            async move { db.fetch(count, &args, &[K::Int]).await }
        })?;
        let total = total.first().and_then(|r| r.first()).map_or(0, Val::int) as usize;
        args.push(Arg::Int(limit.min(i64::MAX as usize) as i64));
        args.push(Arg::Int(offset.min(i64::MAX as usize) as i64));
        let runs = self.records(from, args)?;
        Ok(Page {
            runs,
            total: Some(total),
            has_more: total > offset.saturating_add(limit),
        })
    }

    /// A filtered page: runs read newest first in batches until the page is full.
    fn page_filtered(
        &self,
        dag: Option<&str>,
        keep: &dyn Fn(&RunRecord) -> bool,
        offset: usize,
        limit: usize,
    ) -> Result<Page> {
        const BATCH: usize = 500;
        let mut page = crate::Filtered::new(keep, offset, offset.saturating_add(limit));
        let mut at = 0;
        loop {
            let batch = self.page_all(dag, at, BATCH)?;
            at += BATCH;
            for run in batch.runs {
                if page.offer(run) {
                    return Ok(page.page(true));
                }
            }
            if !batch.has_more {
                return Ok(page.page(false));
            }
        }
    }
}

impl Places {
    fn attempt(self, id: &str) -> Places {
        Places {
            dir: self.dir.join(format!("attempt_{id}")),
            log_dir: self.log_dir.join(format!("attempt_{id}")),
        }
    }
}

struct AttemptRow {
    attempt_id: String,
    dag: String,
    run_id: String,
    root_run_id: String,
    parent: Option<String>,
    dir: String,
    log_dir: String,
}

/// Inserts an attempt (once: a repeat after a lost reply finds it there). `Ok(false)`
/// when `must_exist` and the run is not there.
async fn insert_attempt(db: &Inner, row: &AttemptRow, must_exist: bool) -> Result<bool> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let id_of = "SELECT id FROM attempts WHERE attempt_id = ?";
    let had = tx
        .fetch(d, id_of, &[row.attempt_id.as_str().into()], &[K::Int])
        .await?;
    if !had.is_empty() {
        return Ok(true);
    }
    if must_exist {
        let sql = "SELECT id FROM runs WHERE dag = ? AND run_id = ? FOR UPDATE";
        let args = [row.dag.as_str().into(), row.run_id.as_str().into()];
        if tx.fetch(d, sql, &args, &[K::Int]).await?.is_empty() {
            return Ok(false);
        }
    }
    // A child's root DAG is its parent's.
    let root_dag = match &row.parent {
        Some(parent) => {
            let sql = "SELECT root_dag FROM attempts WHERE attempt_id = ?";
            let rows = tx
                .fetch(d, sql, &[parent.as_str().into()], &[K::Text])
                .await?;
            let root = rows.into_iter().next().and_then(|r| r.into_iter().next());
            root.and_then(Val::into_text)
                .unwrap_or_else(|| row.dag.clone())
        }
        None => row.dag.clone(),
    };
    let insert = "INSERT INTO attempts (attempt_id, dag, run_id, root_dag, root_run_id, \
                  parent_attempt, dir, log_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    let args = [
        row.attempt_id.as_str().into(),
        row.dag.as_str().into(),
        row.run_id.as_str().into(),
        root_dag.into(),
        row.root_run_id.as_str().into(),
        row.parent.clone().into(),
        row.dir.as_str().into(),
        row.log_dir.as_str().into(),
    ];
    tx.exec(d, insert, &args).await?;
    if row.parent.is_none() {
        let pk = tx
            .fetch(d, id_of, &[row.attempt_id.as_str().into()], &[K::Int])
            .await?;
        let pk = pk.first().and_then(|r| r.first()).map_or(0, Val::int);
        // A new run points at its first attempt; a run that has one keeps pointing at the
        // attempt it shows until the new one writes its first snapshot (see `append`), so
        // an attempt whose process dies before writing anything does not hide the run.
        let upsert = db.pick(
            "INSERT INTO runs (dag, run_id, attempt) VALUES (?, ?, ?) \
             ON CONFLICT (dag, run_id) DO NOTHING",
            "INSERT IGNORE INTO runs (dag, run_id, attempt) VALUES (?, ?, ?)",
        );
        let args = [
            row.dag.as_str().into(),
            row.run_id.as_str().into(),
            pk.into(),
        ];
        tx.exec(d, upsert, &args).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Appends one entry to an attempt's event log; a snapshot (`status`, `record`) also
/// becomes the attempt's record and its status the run's. A step entry is one statement,
/// and so is a snapshot on PostgreSQL: a run writes several per step.
async fn append(
    db: &Inner,
    attempt_id: &str,
    entry: &str,
    snapshot: Option<(&str, &str)>,
) -> Result<()> {
    let insert =
        "INSERT INTO events (attempt, entry) SELECT id, ? FROM attempts WHERE attempt_id = ?";
    let Some((status, record)) = snapshot else {
        if db.exec(insert, &[entry.into(), attempt_id.into()]).await? == 0 {
            return Err(Error::Db {
                transient: false,
                message: format!("no attempt {attempt_id}"),
            });
        }
        return Ok(());
    };
    let d = db.dialect;
    if d == super::Dialect::Postgres {
        let sql = "WITH e AS (INSERT INTO events (attempt, entry) \
                     SELECT id, ? FROM attempts WHERE attempt_id = ? RETURNING id, attempt), \
                   u AS (UPDATE attempts SET record = ?, snapshot_event = e.id FROM e \
                     WHERE attempts.id = e.attempt \
                     RETURNING attempts.id, attempts.dag, attempts.run_id, attempts.parent_attempt) \
                   UPDATE runs SET status = ?, attempt = u.id FROM u \
                   WHERE u.parent_attempt IS NULL AND runs.dag = u.dag \
                     AND runs.run_id = u.run_id AND runs.attempt <= u.id";
        let args = [
            entry.into(),
            attempt_id.into(),
            record.into(),
            status.into(),
        ];
        return db.exec(sql, &args).await.map(drop);
    }
    let mut tx = db.pool.begin().await?;
    tx.exec(d, insert, &[entry.into(), attempt_id.into()])
        .await?;
    let last = "SELECT CAST(LAST_INSERT_ID() AS SIGNED)";
    let event = tx.fetch(d, last, &[], &[K::Int]).await?;
    let event = event.first().and_then(|r| r.first()).map_or(0, Val::int);
    let update = "UPDATE attempts SET record = ?, snapshot_event = ? WHERE attempt_id = ?";
    tx.exec(d, update, &[record.into(), event.into(), attempt_id.into()])
        .await?;
    let runs = "UPDATE runs r JOIN attempts a ON r.dag = a.dag AND r.run_id = a.run_id \
                AND a.parent_attempt IS NULL AND r.attempt <= a.id \
                SET r.status = ?, r.attempt = a.id WHERE a.attempt_id = ?";
    tx.exec(d, runs, &[status.into(), attempt_id.into()])
        .await?;
    tx.commit().await
}

impl SqlStore {
    fn append_entry(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        let json = serde_json::to_string(entry).map_err(json_err)?;
        let snapshot = match entry {
            Entry::Snapshot(r) => {
                let record = serde_json::to_string(r).map_err(json_err)?;
                Some((r.status.to_string(), record))
            }
            _ => None,
        };
        let (id, json, snapshot) = (
            Arc::new(attempt.attempt_id.clone()),
            Arc::new(json),
            Arc::new(snapshot),
        );
        self.run(move |db| {
            let (id, json, snapshot) = (id.clone(), json.clone(), snapshot.clone());
            async move {
                let snapshot = snapshot.as_ref().as_ref();
                let snapshot = snapshot.map(|(s, r)| (s.as_str(), r.as_str()));
                append(&db, &id, &json, snapshot).await
            }
        })
    }
}

impl Store for SqlStore {
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt> {
        self.new_attempt(dag, run_id, parent, false)
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        self.append_entry(attempt, entry)?;
        if let Entry::Step { step, .. } | Entry::Handler { step, .. } = entry
            && step.status.is_final()
        {
            self.index_logs(&attempt.attempt_id, step);
        }
        Ok(())
    }

    fn latest(&self, dag: &str) -> Result<Option<RunRecord>> {
        Ok(self.page_all(Some(dag), 0, 1)?.runs.into_iter().next())
    }

    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>> {
        crate::check_name(run_id)?;
        let from = "(SELECT id AS k, attempt FROM runs WHERE dag = ? AND run_id = ?) r";
        let runs = self.records(from, vec![dag.into(), run_id.into()])?;
        Ok(runs.into_iter().next())
    }

    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt> {
        self.new_attempt(dag, run_id, None, true)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>> {
        crate::check_name(run_id)?;
        let args = Arc::new(vec![Arg::from(dag), Arg::from(run_id)]);
        let rows = self.run(move |db| {
            let args = args.clone();
            async move {
                // The newest attempt, even one that has not written its first snapshot.
                let sql = "SELECT attempt_id, dir, log_dir, root_run_id FROM attempts \
                           WHERE dag = ? AND run_id = ? AND parent_attempt IS NULL \
                           ORDER BY id DESC LIMIT 1";
                db.fetch(sql, &args, &[K::Text; 4]).await
            }
        })?;
        Ok(rows.into_iter().next().map(|row| {
            let mut row = row.into_iter().map(|v| v.into_text().unwrap_or_default());
            let mut next = || row.next().unwrap_or_default();
            Attempt {
                attempt_id: next().into(),
                dir: PathBuf::from(next()),
                log_dir: PathBuf::from(next()),
                root_run_id: next().into(),
                run_id: run_id.to_string().into(),
            }
        }))
    }

    /// The events of the run's top-level attempts, in the order the rows were inserted:
    /// attempts by id (creation order, as `latest_attempt` takes the last), each one's
    /// events by id (append order).
    fn history(&self, dag: &str, run_id: &str) -> Result<Vec<(String, Entry)>> {
        crate::check_name(run_id)?;
        let args = Arc::new(vec![Arg::from(dag), Arg::from(run_id)]);
        let rows = self.run(move |db| {
            let args = args.clone();
            async move {
                let sql = "SELECT a.attempt_id, e.entry FROM attempts a \
                           JOIN events e ON e.attempt = a.id \
                           WHERE a.dag = ? AND a.run_id = ? AND a.parent_attempt IS NULL \
                           ORDER BY a.id, e.id";
                db.fetch(sql, &args, &[K::Text, K::Text]).await
            }
        })?;
        Ok(rows.into_iter().filter_map(history_entry).collect())
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        let json = serde_json::to_string(dag).map_err(json_err)?;
        let args = Arc::new(vec![
            Arg::from(json),
            Arg::from(attempt.attempt_id.as_str()),
        ]);
        self.run(move |db| {
            let args = args.clone();
            async move {
                let sql = "UPDATE attempts SET definition = ? WHERE attempt_id = ?";
                db.exec(sql, &args).await.map(drop)
            }
        })
    }

    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>> {
        crate::check_name(run_id)?;
        let from = "(SELECT MAX(id) AS k, MAX(id) AS attempt FROM attempts \
                    WHERE parent_attempt = ? AND run_id = ?) r";
        let args = vec![parent.attempt_id.as_str().into(), run_id.into()];
        Ok(self.records(from, args)?.into_iter().next())
    }

    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>> {
        let args = Arc::new(vec![Arg::from(dag), Arg::from(run_id)]);
        let rows = self.run(move |db| {
            let args = args.clone();
            async move {
                let sql = "SELECT definition FROM attempts WHERE dag = ? AND run_id = ? \
                           AND parent_attempt IS NULL AND definition IS NOT NULL \
                           ORDER BY id DESC LIMIT 1";
                db.fetch(sql, &args, &[K::Text]).await
            }
        })?;
        let json = rows.into_iter().next().and_then(|r| r.into_iter().next());
        Ok(json
            .and_then(Val::into_text)
            .and_then(|j| serde_json::from_str(&j).ok()))
    }

    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>> {
        Ok(self.page_all(Some(dag), 0, limit)?.runs)
    }

    fn dag_names(&self) -> Result<Vec<String>> {
        let rows = self.run(|db| async move {
            let sql = "SELECT DISTINCT dag FROM runs ORDER BY dag";
            db.fetch(sql, &[], &[K::Text]).await
        })?;
        Ok(super::db::texts(rows))
    }

    fn remove(&self, dag: &str, run_id: &str) -> Result<()> {
        crate::check_name(run_id)?;
        let args = Arc::new(vec![Arg::from(dag), Arg::from(run_id)]);
        let removed = self.run(move |db| {
            let args = args.clone();
            async move { remove(&db, &args).await }
        })?;
        if !removed {
            return Err(not_found(dag, run_id));
        }
        for root in [&self.inner.data.join("runs"), &self.inner.logs] {
            let dir = root.join(safe_name(dag)).join(run_id);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(|source| Error::Io { path: dir, source })?;
            }
        }
        Ok(())
    }

    fn page(&self, dag: Option<&str>, keep: Keep<'_>, offset: usize, limit: usize) -> Result<Page> {
        match keep {
            None => self.page_all(dag, offset, limit),
            Some(keep) => self.page_filtered(dag, keep, offset, limit),
        }
    }
}

/// Deletes a run, its attempts (children too) and their events. `false`: no such run.
async fn remove(db: &Inner, args: &[Arg]) -> Result<bool> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let events = "DELETE FROM events WHERE attempt IN \
                  (SELECT id FROM attempts WHERE root_dag = ? AND root_run_id = ?)";
    tx.exec(d, events, args).await?;
    let logs = "DELETE FROM log_index WHERE attempt IN \
                (SELECT attempt_id FROM attempts WHERE root_dag = ? AND root_run_id = ?)";
    tx.exec(d, logs, args).await?;
    let attempts = "DELETE FROM attempts WHERE root_dag = ? AND root_run_id = ?";
    tx.exec(d, attempts, args).await?;
    let runs = "DELETE FROM runs WHERE dag = ? AND run_id = ?";
    let n = tx.exec(d, runs, args).await?;
    tx.commit().await?;
    Ok(n > 0)
}
