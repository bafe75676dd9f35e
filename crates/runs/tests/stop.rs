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

/// Records a running run of `dag` by process `pid` on `host`; `queued`: started from a
/// queue (by a scheduler).
fn running(runs: &Runs, dag: &str, host: &str, pid: u32) -> RunRecord {
    running_as(runs, dag, host, pid, false)
}

fn running_as(runs: &Runs, dag: &str, host: &str, pid: u32, queued: bool) -> RunRecord {
    let store = runs.store();
    let attempt = store.create_attempt(dag, "r1", None).unwrap();
    let dag = Dag {
        name: dag.into(),
        ..Default::default()
    };
    let record = RunRecord {
        pid: Some(pid),
        host: Some(host.into()),
        queued,
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

/// A scheduler executes queued runs in its own process, with others: it gets a stop
/// request (a signal would stop the scheduler). The same goes for a run of this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_a_scheduler_executes_gets_a_stop_request() {
    let (_dir, runs) = service();
    let me = std::process::id();
    let run = running_as(&runs, "etl", trellis_store::hostname(), me, true);
    let key = trellis_cluster::tasks::cancel_name("etl", "r1");
    let stopping = {
        let runs = runs.clone();
        tokio::spawn(async move { runs.stop(&run, Duration::from_secs(5)).await })
    };
    // The request appears; the scheduler (played here) takes it and records the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while runs.store().get(scope::STOP, &key).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no stop request");
        tokio::task::yield_now().await;
    }
    runs.store().put(scope::STOP, &key, None).unwrap();
    let store = runs.store();
    let attempt = store.latest_attempt("etl", "r1").unwrap().unwrap();
    let mut ended = store.find("etl", "r1").unwrap().unwrap();
    ended.status = Status::Cancelled;
    store
        .append(&attempt, &Entry::Snapshot(Box::new(ended)))
        .unwrap();
    assert_eq!(stopping.await.unwrap().unwrap(), Status::Cancelled);
}

/// Nobody takes the request: the deadline passes, and the request is not left behind for
/// a later attempt of the same run id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_stop_request_is_withdrawn() {
    let (_dir, runs) = service();
    let run = running_as(&runs, "etl", "far-away", std::process::id(), true);
    let err = runs
        .stop(&run, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Deadline { .. }) && err.is_retryable(),
        "{err}"
    );
    let key = trellis_cluster::tasks::cancel_name("etl", "r1");
    assert!(runs.store().get(scope::STOP, &key).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_run_is_left_as_it_is() {
    let (_dir, runs) = service();
    let mut run = running_as(&runs, "etl", "far-away", std::process::id(), true);
    run.status = Status::Succeeded;
    let status = runs.stop(&run, Duration::from_millis(10)).await.unwrap();
    assert_eq!(status, Status::Succeeded);
    let key = trellis_cluster::tasks::cancel_name("etl", "r1");
    assert!(runs.store().get(scope::STOP, &key).unwrap().is_none());
}
