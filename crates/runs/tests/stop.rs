//! `Runs::stop` picks how to reach a run from where it is, on a real in-memory store and
//! real processes: a queued run is taken out of its queue, a run of this machine gets
//! SIGTERM, a run of another machine gets a stop request in the store; and the call
//! returns the final status, or says the deadline passed.

use std::sync::Arc;
use std::time::Duration;

use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_runs::queueing::{Enqueue, Outcome};
use trellis_runs::{Error, Runs};
use trellis_store::state::scope;
use trellis_store::{Entry, MemStore, Shared};

fn service() -> (tempfile::TempDir, Runs) {
    let dir = tempfile::tempdir().unwrap();
    let store: Shared = Arc::new(MemStore::new(dir.path().join("scratch")));
    let runs = Runs::new(store, dir.path().join("data"));
    (dir, runs)
}

/// Records a running run of `dag` as `host` (this machine by default) and `pid`.
fn running(runs: &Runs, dag: &str, host: &str, pid: u32) -> RunRecord {
    let store = runs.store();
    let attempt = store.create_attempt(dag, "r1", None).unwrap();
    let dag = Dag {
        name: dag.into(),
        ..Default::default()
    };
    let record = RunRecord {
        pid: Some(pid),
        host: Some(host.into()),
        ..RunRecord::new(&dag, "r1", &attempt.attempt_id, Status::Running)
    };
    store
        .append(&attempt, &Entry::Snapshot(Box::new(record.clone())))
        .unwrap();
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_is_taken_out_of_its_queue() {
    let (dir, runs) = service();
    let dag = Dag {
        name: "etl".into(),
        ..Default::default()
    };
    let file = dir.path().join("etl.yaml");
    let queued = runs
        .enqueue(Enqueue::new(&dag, &file, "q1".into()))
        .unwrap();
    assert_eq!(queued, Outcome::Queued);
    let run = runs.find("etl", Some("q1")).await.unwrap();
    assert_eq!(run.status, Status::Queued);
    let status = runs.stop(&run, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, Status::Aborted);
    assert!(runs.store().items("etl").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_this_machine_gets_sigterm() {
    let (_dir, runs) = service();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let run = running(&runs, "etl", trellis_store::hostname(), child.id());
    // A bare `sleep` records no end: once it is gone (a zombie until reaped counts as
    // gone), the run reads as died, which is final.
    let status = runs.stop(&run, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status, Status::Failed);
    let found = runs.find("etl", Some("r1")).await.unwrap();
    assert_eq!(found.error.as_deref(), Some("process died"));
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc_sigterm()), "{status:?}");
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_another_machine_gets_a_stop_request() {
    let (_dir, runs) = service();
    let run = running(&runs, "etl", "far-away", 1);
    let err = runs
        .stop(&run, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline { .. }), "{err}");
    let key = trellis_cluster::tasks::cancel_name("etl", "r1");
    assert!(runs.store().get(scope::STOP, &key).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_run_is_left_as_it_is() {
    let (_dir, runs) = service();
    let mut run = running(&runs, "etl", "far-away", 1);
    run.status = Status::Succeeded;
    let status = runs.stop(&run, Duration::from_millis(10)).await.unwrap();
    assert_eq!(status, Status::Succeeded);
    let key = trellis_cluster::tasks::cancel_name("etl", "r1");
    assert!(runs.store().get(scope::STOP, &key).unwrap().is_none());
}
