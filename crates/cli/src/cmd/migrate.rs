//! `trellis migrate`: copies the file store under the home into a database, then checks
//! that every run arrived with the status it had. Runs already in the database are left
//! as they are, so the command can be repeated (after an interruption, or to pick up
//! runs recorded since).

use std::process::ExitCode;

use anyhow::Context;
use trellis_store::state::scope;
use trellis_store::{FileStore, Queue, SqlStore, State, Store};

use super::run::home;
use crate::cli::MigrateArgs;

pub fn migrate(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = args
        .to
        .clone()
        .or_else(super::database_url)
        .filter(|u| !u.trim().is_empty())
        .context("no database to migrate to: give --to URL, the config's storage.url or $TRELLIS_DATABASE_URL")?;
    let home = home();
    let files = FileStore::new(&home);
    let db = SqlStore::connect(url.trim(), &home)?;
    eprintln!(
        "migrating {} into {}",
        trellis_store::data_dir(&home).display(),
        trellis_store::redact(&url)
    );
    let mut runs = Vec::new();
    for dag in files.dag_names()? {
        for run in files.list(&dag, usize::MAX)? {
            runs.push((dag.clone(), run));
        }
    }
    // Oldest first, so the database lists them newest first as the file store did.
    runs.sort_by_key(|r| started(&r.1));
    let (mut added, mut present) = (0usize, 0usize);
    for (dag, run) in &runs {
        let definition = files.definition(dag, &run.run_id)?;
        if db.import_run(dag, run, definition.as_ref())? {
            added += 1;
        } else {
            present += 1;
        }
    }
    let queued = copy_queues(&files, &db)?;
    let suspended = copy_suspended(&files, &db, &runs)?;
    let missing = verify(&db, &runs)?;
    println!(
        "runs: {} in the file store, {added} copied, {present} already there; queued items: {queued}; suspended DAGs: {suspended}",
        runs.len()
    );
    if missing.is_empty() {
        println!(
            "verified: all {} runs are in the database with their status",
            runs.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for line in &missing {
        eprintln!("not verified: {line}");
    }
    anyhow::bail!("{} of {} runs did not verify", missing.len(), runs.len())
}

fn started(run: &trellis_core::status::RunRecord) -> Option<trellis_core::ids::Stamp> {
    run.started_at.or(run.queued_at)
}

/// Queued items of runs still queued in the database: a run that a scheduler on the
/// database has started since an earlier migrate is not queued again.
fn copy_queues(files: &FileStore, db: &SqlStore) -> anyhow::Result<usize> {
    let mut n = 0;
    for queue in files.queues()? {
        for item in files.items(&queue)? {
            let run = db.find(&item.dag_name, &item.run_id)?;
            if run.is_some_and(|r| r.status != trellis_core::status::Status::Queued) {
                continue;
            }
            db.enqueue(&item)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Suspended schedules of the DAGs that have runs or sit in the dags dir.
fn copy_suspended(
    files: &FileStore,
    db: &SqlStore,
    runs: &[(String, trellis_core::status::RunRecord)],
) -> anyhow::Result<usize> {
    let mut names: Vec<String> = runs.iter().map(|(d, _)| d.clone()).collect();
    let dir = trellis_store::data_dir(&home()).join("suspend");
    if let Ok(entries) = std::fs::read_dir(dir) {
        names.extend(entries.filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".suspended").map(str::to_string)
        }));
    }
    names.sort();
    names.dedup();
    let mut n = 0;
    for name in names {
        if let Some(value) = files.get(scope::SUSPEND, &name)? {
            db.put(scope::SUSPEND, &name, Some(&value))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every file-store run must be in the database with the same status.
fn verify(
    db: &SqlStore,
    runs: &[(String, trellis_core::status::RunRecord)],
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for (dag, run) in runs {
        match db.find(dag, &run.run_id)? {
            Some(stored) if stored.status == run.status => {}
            Some(stored) => missing.push(format!(
                "{dag} {}: {} in the file store, {} in the database",
                run.run_id, run.status, stored.status
            )),
            None => missing.push(format!("{dag} {}: not in the database", run.run_id)),
        }
    }
    Ok(missing)
}
