//! Importing runs recorded elsewhere (`trellis migrate` from the file store).

use std::sync::Arc;

use trellis_core::Dag;
use trellis_core::status::RunRecord;

use super::db::{Arg, K, Val};
use super::{Inner, SqlStore, json_err};
use crate::{Entry, Result};

struct Import {
    dag: String,
    run_id: String,
    attempt_id: String,
    record: String,
    entry: String,
    status: String,
    definition: Option<String>,
}

impl SqlStore {
    /// Stores a finished or queued run as it was recorded elsewhere, in one transaction:
    /// `Ok(false)` when a run with its id is here already, so importing twice adds
    /// nothing and an interrupted import leaves no half run.
    pub fn import_run(&self, dag: &str, run: &RunRecord, definition: Option<&Dag>) -> Result<bool> {
        crate::check_name(&run.run_id)?;
        let attempt_id = match run.attempt_id.as_str() {
            "" => uuid::Uuid::now_v7().simple().to_string(),
            id => format!("imported-{id}-{}", uuid::Uuid::now_v7().simple()),
        };
        let import = Arc::new(Import {
            dag: dag.to_string(),
            run_id: run.run_id.to_string(),
            attempt_id,
            record: serde_json::to_string(run).map_err(json_err)?,
            entry: serde_json::to_string(&Entry::Snapshot(Box::new(run.clone())))
                .map_err(json_err)?,
            status: run.status.to_string(),
            definition: definition
                .map(serde_json::to_string)
                .transpose()
                .map_err(json_err)?,
        });
        self.run(move |db| {
            let import = import.clone();
            async move { import_run(&db, &import).await }
        })
    }
}

async fn import_run(db: &Inner, run: &Import) -> Result<bool> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let key = [Arg::from(run.dag.as_str()), Arg::from(run.run_id.as_str())];
    let sql = "SELECT id FROM runs WHERE dag = ? AND run_id = ? FOR UPDATE";
    if !tx.fetch(d, sql, &key, &[K::Int]).await?.is_empty() {
        return Ok(false);
    }
    let sql = "INSERT INTO attempts (attempt_id, dag, run_id, root_dag, root_run_id, dir, \
               log_dir, record, definition) VALUES (?, ?, ?, ?, ?, '', '', ?, ?)";
    let args = [
        run.attempt_id.as_str().into(),
        run.dag.as_str().into(),
        run.run_id.as_str().into(),
        run.dag.as_str().into(),
        run.run_id.as_str().into(),
        run.record.as_str().into(),
        run.definition.clone().into(),
    ];
    tx.exec(d, sql, &args).await?;
    let sql = "SELECT id FROM attempts WHERE attempt_id = ?";
    let rows = tx
        .fetch(d, sql, &[run.attempt_id.as_str().into()], &[K::Int])
        .await?;
    let pk = rows.first().and_then(|r| r.first()).map_or(0, Val::int);
    let sql = "INSERT INTO events (attempt, entry) VALUES (?, ?)";
    tx.exec(d, sql, &[pk.into(), run.entry.as_str().into()])
        .await?;
    let last = db.pick(
        "SELECT lastval()",
        "SELECT CAST(LAST_INSERT_ID() AS SIGNED)",
    );
    let event = tx.fetch(d, last, &[], &[K::Int]).await?;
    let event = event.first().and_then(|r| r.first()).map_or(0, Val::int);
    let sql = "UPDATE attempts SET snapshot_event = ? WHERE id = ?";
    tx.exec(d, sql, &[event.into(), pk.into()]).await?;
    let sql = "INSERT INTO runs (dag, run_id, attempt, status) VALUES (?, ?, ?, ?)";
    let args = [
        key[0].clone(),
        key[1].clone(),
        pk.into(),
        run.status.as_str().into(),
    ];
    tx.exec(d, sql, &args).await?;
    tx.commit().await?;
    Ok(true)
}
