//! The scheduler driven by a hand-stepped clock: ticks fire for exactly the scheduled times
//! the clock passes, once each, with the catch-up window honoured.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use trellis_scheduler::clock::Clock;
use trellis_scheduler::config::Config;
use trellis_scheduler::daemon::{self, Options};

/// A clock that moves only when the test says so.
struct Manual(AtomicI64);

impl Manual {
    fn set(&self, t: &str) {
        self.0.store(
            t.parse::<Timestamp>().unwrap().as_second(),
            Ordering::SeqCst,
        );
    }
}

impl Clock for Manual {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap()
    }
}

fn ticks(home: &std::path::Path, dag: &str) -> Vec<String> {
    let dir = home.join("data/scheduler/ticks").join(dag);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits (with a deadline) until `cond` holds; the daemon loops at least once a second.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_follow_the_injected_clock() {
    let home = tempfile::tempdir().unwrap();
    let dags = home.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("every_minute.yaml"), "schedule: \"* * * * *\"\nmax_active_runs: -1\ncatchup_window: 3m\noverlap_policy: all\nsteps:\n  - command: \"true\"\n").unwrap();
    let clock = Arc::new(Manual(AtomicI64::new(0)));
    clock.set("2026-11-22T10:00:30Z");
    let store: trellis_store::Shared =
        std::sync::Arc::new(trellis_store::FileStore::new(home.path()));
    let opts = Options {
        home: home.path().to_path_buf(),
        dags_dir: dags,
        config: Config::default(),
        id: "test".into(),
        handoff: std::sync::Arc::new(trellis_cluster::handoff::TaskHandoff::new(
            &home.path().join("data"),
            &store,
            None,
        )),
        store,
    };
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(daemon::run(opts, clock.clone(), shutdown.clone()));
    // Nothing is due yet: the first tick is 10:01.
    until("the scheduler to lead", || {
        home.path().join("data/scheduler/lease.json").exists()
    })
    .await;
    assert!(ticks(home.path(), "every_minute").is_empty());
    clock.set("2026-11-22T10:02:10Z");
    until("two ticks", || {
        ticks(home.path(), "every_minute").len() == 2
    })
    .await;
    assert_eq!(
        ticks(home.path(), "every_minute"),
        ["20261122T100100Z", "20261122T100200Z"]
    );
    // A jump of ten minutes: only the catch-up window (3 minutes) is replayed.
    clock.set("2026-11-22T10:12:00Z");
    until("catch-up ticks", || {
        ticks(home.path(), "every_minute").len() == 5
    })
    .await;
    assert_eq!(
        &ticks(home.path(), "every_minute")[2..],
        ["20261122T101000Z", "20261122T101100Z", "20261122T101200Z"]
    );
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
