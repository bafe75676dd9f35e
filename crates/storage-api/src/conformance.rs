//! The conformance suite of the storage seam: every backend (memory, files, PostgreSQL,
//! MariaDB) must pass each of these checks. A backend's tests call them with fresh stores;
//! checks taking two handles expect two views of one store, as two processes have.
//! Behind the `test-util` feature: it panics on failure, like any test.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use trellis_core::status::{RunRecord, Status, StepRecord};

use crate::{Backend, Entry, Error, QueueItem, Shared};

pub fn record(dag: &str, run_id: &str, attempt: &str, status: Status) -> RunRecord {
    RunRecord {
        name: dag.into(),
        run_id: run_id.into(),
        attempt_id: attempt.into(),
        status,
        steps: vec![
            StepRecord {
                name: "a".into(),
                ..Default::default()
            },
            StepRecord {
                name: "b".into(),
                ..Default::default()
            },
        ],
        handlers: Default::default(),
        outputs: Default::default(),
        params: vec![],
        error: None,
        started_at: "2026-11-22T10:00:00Z".parse().ok(),
        finished_at: None,
        pid: None,
        root: None,
        parent: None,
        warnings: vec![],
        log_file: None,
        queued: false,
        queued_at: None,
        worker_id: None,
        host: None,
    }
}

/// Starts a run: a new attempt with a snapshot.
pub fn start(store: &dyn Backend, dag: &str, run_id: &str, status: Status) -> crate::Attempt {
    let attempt = store.create_attempt(dag, run_id, None).unwrap();
    let rec = record(dag, run_id, &attempt.attempt_id, status);
    store
        .append(&attempt, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    attempt
}

pub fn item(queue: &str, run_id: &str, priority: i32) -> QueueItem {
    QueueItem {
        queue: queue.into(),
        dag_name: "etl".into(),
        run_id: run_id.into(),
        file: "/dags/etl.yaml".into(),
        params: None,
        priority,
        queued_at: "2026-11-22T10:00:00Z".parse().unwrap(),
        tags: Default::default(),
        scheduled_time: None,
        queue_limit: None,
    }
}

pub fn runs_fold_their_events(store: &dyn Backend) {
    let attempt = start(store, "etl", "r1", Status::Running);
    let mut step = StepRecord {
        name: "a".into(),
        ..Default::default()
    };
    step.status = Status::Succeeded;
    store
        .append(&attempt, &Entry::Step { index: 0, step })
        .unwrap();
    // A finished step's log is indexed by a database store: where it is, and its size.
    let log = attempt.log_dir.join("b.out");
    std::fs::write(&log, "12345").unwrap();
    let step = StepRecord {
        name: "b".into(),
        status: Status::Failed,
        stdout: Some(log.display().to_string()),
        ..Default::default()
    };
    store
        .append(&attempt, &Entry::Step { index: 1, step })
        .unwrap();
    let at = store.log_location(&attempt.attempt_id, "b", "stdout");
    if !store.spans_machines() {
        assert_eq!(at, None, "the file store keeps logs beside the run");
    } else {
        let at = at.expect("indexed");
        assert_eq!((at.host.as_str(), at.bytes), (crate::hostname(), 5));
        assert_eq!(at.path, log.display().to_string());
    }
    let mut step = StepRecord {
        name: "b".into(),
        ..Default::default()
    };
    step.status = Status::NotStarted;
    store
        .append(&attempt, &Entry::Step { index: 1, step })
        .unwrap();
    let run = store.find("etl", "r1").unwrap().expect("the run is stored");
    assert_eq!(run.status, Status::Running);
    assert_eq!(run.steps[0].status, Status::Succeeded);
    assert_eq!(run.steps[1].status, Status::NotStarted);
    assert!(store.find("etl", "nope").unwrap().is_none());

    let mut done = run.clone();
    done.status = Status::Succeeded;
    store
        .append(&attempt, &Entry::Snapshot(Box::new(done)))
        .unwrap();
    assert_eq!(
        store.find("etl", "r1").unwrap().unwrap().status,
        Status::Succeeded
    );
    assert!(matches!(
        store.find("etl", "../x"),
        Err(Error::InvalidName(_))
    ));
}

pub fn newest_first_and_pages(store: &dyn Backend) {
    for i in 0..12 {
        let dag = if i % 3 == 0 { "b" } else { "a" };
        let status = if i % 2 == 0 {
            Status::Succeeded
        } else {
            Status::Failed
        };
        start(store, dag, &format!("r{i:02}"), status);
    }
    assert_eq!(store.dag_names().unwrap(), ["a", "b"]);
    assert_eq!(store.latest("a").unwrap().unwrap().run_id, "r11");
    let ids = |runs: &[RunRecord]| runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&store.list("b", 10).unwrap()),
        ["r09", "r06", "r03", "r00"]
    );

    let page = store.page(None, None, 2, 3).unwrap();
    assert_eq!(ids(&page.runs), ["r09", "r08", "r07"]);
    assert_eq!(page.total, Some(12));
    assert!(page.has_more);
    let last = store.page(Some("a"), None, 6, 5).unwrap();
    assert_eq!(ids(&last.runs), ["r02", "r01"]);
    assert!(!last.has_more);

    let failed = |r: &RunRecord| r.status == Status::Failed;
    let page = store.page(None, Some(&failed), 1, 2).unwrap();
    assert_eq!(ids(&page.runs), ["r09", "r07"]);
    assert!(page.has_more);
}

/// Watchers see a run change, the feed announces new runs and status changes (nothing on
/// its first look), and counting capabilities, where a backend has them, agree.
pub fn watchers_and_counts_follow_runs(store: &Shared) {
    let attempt = start(&**store, "w", "r1", Status::Running);
    assert!(crate::watch_run(store, "w", "nope").unwrap().is_none());
    let mut watch = crate::watch_run(store, "w", "r1").unwrap().unwrap();
    let mut feed = crate::run_feed(store, 8);
    assert!(feed.changes().is_empty(), "the first look only learns");
    assert!(watch.stale());
    let seen = watch.read().unwrap().unwrap();
    assert_eq!((seen.run_id.as_str(), seen.status), ("r1", Status::Running));

    let mut done = record("w", "r1", &attempt.attempt_id, Status::Succeeded);
    done.finished_at = "2026-11-22T10:00:05Z".parse().ok();
    store
        .append(&attempt, &Entry::Snapshot(Box::new(done)))
        .unwrap();
    start(&**store, "w", "r2", Status::Failed);
    assert!(watch.stale(), "an appended entry is a change");
    assert_eq!(watch.read().unwrap().unwrap().status, Status::Succeeded);
    let mut changed: Vec<_> = feed
        .changes()
        .into_iter()
        .map(|r| (r.run_id, r.status))
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [
        ("r1".into(), Status::Succeeded),
        ("r2".into(), Status::Failed),
    ];
    assert_eq!(changed, expected);
    assert!(feed.changes().is_empty(), "each change once");

    if let Some(counts) = store.status_counts() {
        let mut counts = counts.unwrap();
        counts.sort();
        assert_eq!(counts, [("failed".into(), 1), ("succeeded".into(), 1)]);
    }
    if let Some(going) = store.unfinished(10) {
        assert!(going.unwrap().is_empty());
    }
    let since = "2026-11-22T10:00:00Z".parse().unwrap();
    if let Some(finished) = store.newly_finished(since) {
        let ids: Vec<_> = finished.unwrap().into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, ["r1"], "finished_at is set on r1 only");
        assert!(store.newly_finished(since).unwrap().unwrap().is_empty());
    }
}

pub fn attempts_children_and_definitions(store: &dyn Backend) {
    let first = start(store, "etl", "r1", Status::Failed);
    let dag = trellis_core::Dag {
        name: "etl".into(),
        ..Default::default()
    };
    store.save_definition(&first, &dag).unwrap();
    let child = store.create_attempt("sub", "c1", Some(&first)).unwrap();
    assert_eq!(child.root_run_id, "r1");
    let rec = record("sub", "c1", &child.attempt_id, Status::Succeeded);
    store
        .append(&child, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    assert_eq!(
        store.find_child(&first, "c1").unwrap().unwrap().status,
        Status::Succeeded
    );
    assert!(store.find_child(&first, "c2").unwrap().is_none());
    assert_eq!(
        store.dag_names().unwrap(),
        ["etl"],
        "a child run is not a top-level run"
    );

    let second = store.retry_attempt("etl", "r1").unwrap();
    assert_ne!(second.attempt_id, first.attempt_id);
    let latest = store.latest_attempt("etl", "r1").unwrap().unwrap();
    assert_eq!(latest.attempt_id, second.attempt_id);
    assert_eq!(latest.log_dir, second.log_dir);
    assert!(store.retry_attempt("etl", "missing").is_err());
    // The retry has no record yet (its process may have died before writing one): the
    // run still shows the attempt before it, in `find` and in lists.
    let shown = store
        .find("etl", "r1")
        .unwrap()
        .expect("the run stays visible");
    assert_eq!(shown.attempt_id, first.attempt_id);
    assert_eq!(store.list("etl", 10).unwrap().len(), 1);
    let rec = record("etl", "r1", &second.attempt_id, Status::Running);
    store
        .append(&second, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    assert_eq!(
        store.find("etl", "r1").unwrap().unwrap().attempt_id,
        second.attempt_id
    );
    assert_eq!(store.definition("etl", "r1").unwrap().unwrap().name, "etl");

    store.remove("etl", "r1").unwrap();
    assert!(store.find("etl", "r1").unwrap().is_none());
    assert!(store.list("etl", 10).unwrap().is_empty());
    assert!(store.remove("etl", "r1").is_err());
}

/// An entry in a few words, for comparing histories (entries have no `PartialEq`).
fn summary(entry: &Entry) -> String {
    match entry {
        Entry::Snapshot(run) => format!("snapshot {}", run.status),
        Entry::Step { index, step } => format!("step {index} {} {}", step.name, step.status),
        Entry::Handler { name, step } => format!("handler {name} {}", step.status),
    }
}

/// Appends a step entry: step `index` of [`record`]'s steps now has `status`.
fn step(store: &dyn Backend, attempt: &crate::Attempt, index: usize, status: Status) {
    let name = ["a", "b"][index];
    let step = StepRecord {
        name: name.into(),
        status,
        ..Default::default()
    };
    store.append(attempt, &Entry::Step { index, step }).unwrap();
}

/// A run's history is every entry of every attempt, oldest attempt first, each as
/// written and tagged with its attempt; other runs and child runs stay out of it.
pub fn history_keeps_every_entry_of_every_attempt(store: &dyn Backend) {
    let first = start(store, "etl", "r1", Status::Running);
    step(store, &first, 0, Status::Running);
    step(store, &first, 0, Status::Failed);
    let rec = record("etl", "r1", &first.attempt_id, Status::Failed);
    store
        .append(&first, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    let child = store.create_attempt("sub", "c1", Some(&first)).unwrap();
    let rec = record("sub", "c1", &child.attempt_id, Status::Succeeded);
    store
        .append(&child, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    start(store, "etl", "other", Status::Queued);
    // The file store orders a run's attempts by their names, which start with the
    // millisecond each was made in: two made within one millisecond may sort either way.
    // A real retry comes long after the attempt before it; this one must not come sooner.
    std::thread::sleep(std::time::Duration::from_millis(5));

    let second = store.retry_attempt("etl", "r1").unwrap();
    let rec = record("etl", "r1", &second.attempt_id, Status::Running);
    store
        .append(&second, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    step(store, &second, 0, Status::Succeeded);
    let handler = StepRecord {
        name: "on_exit".into(),
        status: Status::Succeeded,
        ..Default::default()
    };
    let entry = Entry::Handler {
        name: "on_exit".into(),
        step: handler,
    };
    store.append(&second, &entry).unwrap();
    step(store, &second, 1, Status::Succeeded);

    let got: Vec<(String, String)> = store
        .history("etl", "r1")
        .unwrap()
        .iter()
        .map(|(attempt, entry)| (attempt.clone(), summary(entry)))
        .collect();
    let (a, b) = (first.attempt_id.to_string(), second.attempt_id.to_string());
    let expected = [
        (&a, "snapshot running"),
        (&a, "step 0 a running"),
        (&a, "step 0 a failed"),
        (&a, "snapshot failed"),
        (&b, "snapshot running"),
        (&b, "step 0 a succeeded"),
        (&b, "handler on_exit succeeded"),
        (&b, "step 1 b succeeded"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(id, s)| (id.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert!(store.history("etl", "nope").unwrap().is_empty());
    assert!(store.history("none", "r1").unwrap().is_empty());
}

pub fn queues_keep_order_and_give_each_item_once(store: &dyn Backend) {
    store.enqueue(&item("q", "low", 0)).unwrap();
    store.enqueue(&item("q", "high", 5)).unwrap();
    store.enqueue(&item("q", "low2", 0)).unwrap();
    store.enqueue(&item("other", "x", 0)).unwrap();
    let order = |s: &dyn Backend| -> Vec<String> {
        s.items("q")
            .unwrap()
            .into_iter()
            .map(|i| i.run_id.into())
            .collect()
    };
    assert_eq!(order(store), ["high", "low", "low2"]);
    assert_eq!(store.queues().unwrap(), ["other", "q"]);
    let moved = store.set_priority("q", "low2", 5).unwrap().unwrap();
    assert_eq!(moved.priority, 5);
    assert_eq!(
        order(store),
        ["high", "low2", "low"],
        "equal priorities stay FIFO"
    );
    assert!(store.set_priority("q", "nope", 1).unwrap().is_none());
    assert!(store.remove_item("q", "high").unwrap());
    assert!(
        !store.remove_item("q", "high").unwrap(),
        "an item is taken once"
    );
    assert_eq!(order(store), ["low2", "low"]);
}

pub fn concurrent_takers_take_each_item_once(store: Shared) {
    for i in 0..40 {
        store.enqueue(&item("race", &format!("r{i}"), 0)).unwrap();
    }
    let taken = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, taken) = (store.clone(), taken.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    let id = format!("r{i}");
                    if store.remove_item("race", &id).unwrap() {
                        taken.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut taken = taken.lock().unwrap().clone();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 40, "every item taken exactly once");
    assert!(store.items("race").unwrap().is_empty());
}

pub fn one_leader_and_fenced_writes(store: &dyn Backend, other: &dyn Backend) {
    let a = store.acquire_lead("a").unwrap().expect("a leads");
    assert!(other.acquire_lead("b").unwrap().is_none(), "b must wait");
    assert!(store.renew_lead(&a).unwrap());
    assert_eq!(other.leader().unwrap().unwrap().holder, "a");
    assert!(
        store
            .claim_tick(a.info.token, "etl", "20261122T100000Z")
            .unwrap()
    );
    assert!(
        other
            .claim_tick(a.info.token, "etl", "20261122T100000Z")
            .unwrap(),
        "a repeated claim by the same lead (a retry) still fires"
    );
    let old = a.info.token;
    store.release_lead(a);
    let b = other.acquire_lead("b").unwrap().expect("b leads after a");
    assert!(b.info.token > old, "fencing tokens grow");
    assert_eq!(b.previous.as_ref().map(|p| p.holder.as_str()), Some("a"));
    assert!(matches!(
        store.claim_tick(old, "etl", "20261122T110000Z"),
        Err(Error::Fenced(_))
    ));
    assert!(matches!(
        store.take(old, "q", "x"),
        Err(Error::Fenced(_)) | Ok(false)
    ));
    assert!(
        !other
            .claim_tick(b.info.token, "etl", "20261122T100000Z")
            .unwrap(),
        "a tick an earlier leader claimed does not fire again"
    );
    assert!(
        other
            .claim_tick(b.info.token, "etl", "20261122T110000Z")
            .unwrap()
    );
    assert_eq!(
        store.last_tick("etl").unwrap().as_deref(),
        Some("20261122T110000Z")
    );
    other.mark_tick_skipped("etl", "20261122T110000Z").unwrap();
    assert!(store.tick_skipped("etl", "20261122T110000Z").unwrap());
    assert!(!store.tick_skipped("etl", "20261122T100000Z").unwrap());
}

pub fn named_values(store: &dyn Backend, other: &dyn Backend) {
    use crate::state::scope;
    assert_eq!(store.get(scope::SUSPEND, "etl").unwrap(), None);
    store.put(scope::SUSPEND, "etl", Some("yes")).unwrap();
    store.put(scope::SUSPEND, "etl", Some("still")).unwrap();
    assert_eq!(
        other.get(scope::SUSPEND, "etl").unwrap().as_deref(),
        Some("still")
    );
    other.put(scope::SUSPEND, "etl", None).unwrap();
    other.put(scope::SUSPEND, "etl", None).unwrap();
    assert_eq!(store.get(scope::SUSPEND, "etl").unwrap(), None);
    // Names come back as they were given (a stop request is `<dag>~<run id>`).
    for name in ["etl.v2~run 1", "host@42", "..", "a/b", "x%y"] {
        store.put(scope::STOP, name, Some("at")).unwrap();
        assert_eq!(other.get(scope::STOP, name).unwrap().as_deref(), Some("at"));
    }
    let names: Vec<String> = other
        .values(scope::STOP)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["..", "a/b", "etl.v2~run 1", "host@42", "x%y"]);
    for name in names {
        store.put(scope::STOP, &name, None).unwrap();
    }
    assert!(other.values(scope::STOP).unwrap().is_empty());
}

/// Compare-and-swap on named values: a swap happens only when the value is exactly the
/// one expected (trailing spaces count), creates only what is absent, deletes only what
/// it expects, and carries large values; names list by prefix, taken literally.
pub fn swapped_values(store: &dyn Backend, other: &dyn Backend) {
    use crate::state::scope::DAG_STATE as S;
    let name = "dag/etl.v2/rules/cursor~1";
    assert!(store.swap(S, name, None, Some("v1")).unwrap(), "creates");
    assert!(
        !other.swap(S, name, None, Some("other")).unwrap(),
        "creates only what is absent"
    );
    assert_eq!(other.get(S, name).unwrap().as_deref(), Some("v1"));
    assert!(!other.swap(S, name, Some("v0"), Some("v2")).unwrap());
    assert!(
        !other.swap(S, name, Some("v1 "), Some("v2")).unwrap(),
        "a trailing space is another value"
    );
    assert!(other.swap(S, name, Some("v1"), Some("v2")).unwrap());
    assert!(
        !store.swap(S, name, Some("v1"), Some("v3")).unwrap(),
        "a stale expectation"
    );
    assert!(
        store.swap(S, name, Some("v2"), Some("v2")).unwrap(),
        "the same value again"
    );
    assert_eq!(store.get(S, name).unwrap().as_deref(), Some("v2"));
    store.put(S, "spaced", Some("x ")).unwrap();
    assert!(!store.swap(S, "spaced", Some("x"), None).unwrap());
    assert!(store.swap(S, "spaced", Some("x "), None).unwrap());
    assert!(!other.swap(S, name, Some("v1"), None).unwrap());
    assert!(!other.swap(S, name, None, None).unwrap(), "present");
    assert!(other.swap(S, name, Some("v2"), None).unwrap(), "deletes");
    assert_eq!(store.get(S, name).unwrap(), None);
    assert!(!store.swap(S, name, Some("v2"), None).unwrap(), "gone");
    assert!(
        store.swap(S, name, None, None).unwrap(),
        "absent as expected"
    );

    // A value as large as a `state.*` entry may be (1 MiB of JSON and its fields).
    let big = format!("{{\"value\":\"{}\"}}", "x".repeat(1 << 20));
    let bigger = big.replace('x', "y");
    assert!(store.swap(S, "big", None, Some(&big)).unwrap());
    assert!(other.swap(S, "big", Some(&big), Some(&bigger)).unwrap());
    assert!(!store.swap(S, "big", Some(&big), None).unwrap());
    assert_eq!(
        store.get(S, "big").unwrap().as_deref(),
        Some(bigger.as_str())
    );
    assert!(store.swap(S, "big", Some(&bigger), None).unwrap());

    for name in ["a/1", "a/2", "ab", "a_b", "axb", "a%c", "b/a/1", "a/"] {
        assert!(store.swap(S, name, None, Some(name)).unwrap());
    }
    let listed = |prefix: &str| -> Vec<String> {
        let values = other.values_with_prefix(S, prefix).unwrap();
        for (name, value) in &values {
            assert_eq!(name, value);
        }
        values.into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(listed("a/"), ["a/", "a/1", "a/2"]);
    assert_eq!(listed("a_"), ["a_b"], "`_` is no wildcard");
    assert_eq!(listed("a%"), ["a%c"], "`%` is no wildcard");
    assert_eq!(listed("b"), ["b/a/1"]);
    assert!(listed("c").is_empty());
    assert_eq!(listed("").len(), 8);
    assert!(
        other
            .values_with_prefix(crate::state::scope::STOP, "a")
            .unwrap()
            .is_empty(),
        "another scope"
    );
}

/// Writers on two handles (two processes) increment one counter by read-then-swap: no
/// update is lost.
pub fn racing_swaps_lose_no_update(store: Shared, other: Shared) {
    use crate::state::scope::DAG_STATE as S;
    let (writers, each) = (4, 25);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let store = if w % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            std::thread::spawn(move || {
                let mut done = 0;
                while done < each {
                    let old = store.get(S, "counter").unwrap();
                    let n: u64 = old.as_deref().map_or(0, |v| v.parse().unwrap());
                    let new = (n + 1).to_string();
                    if store
                        .swap(S, "counter", old.as_deref(), Some(&new))
                        .unwrap()
                    {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = (writers * each).to_string();
    assert_eq!(store.get(S, "counter").unwrap(), Some(total));
}

pub fn coordinators_lease_and_shared_values(store: &dyn Backend, other: &dyn Backend) {
    use crate::state::{COORDINATOR, scope};
    let first = store
        .acquire_lease(COORDINATOR, "c1")
        .unwrap()
        .expect("c1 serves");
    assert!(
        other.acquire_lease(COORDINATOR, "c2").unwrap().is_none(),
        "c2 stands by"
    );
    assert!(
        other.acquire_lead("s1").unwrap().is_some(),
        "the scheduler's lease is another one"
    );
    assert!(store.renew_lease(&first).unwrap());
    assert_eq!(other.lease(COORDINATOR).unwrap().unwrap().holder, "c1");
    let token = first.info.token;
    store.release_lease(first);
    let second = other
        .acquire_lease(COORDINATOR, "c2")
        .unwrap()
        .expect("c2 takes over");
    assert!(second.info.token > token);

    for (id, task) in [("t2", "{\"b\":2}"), ("t1", "{\"a\":1}")] {
        store.put(scope::TASK, id, Some(task)).unwrap();
    }
    let values = other.values(scope::TASK).unwrap();
    let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["t1", "t2"]);
    other.put(scope::TASK, "t1", None).unwrap();
    assert_eq!(store.values(scope::TASK).unwrap().len(), 1);

    store.put_worker("w1", "{\"id\":\"w1\"}").unwrap();
    store.put_worker("w1", "{\"id\":\"w1\",\"n\":2}").unwrap();
    assert_eq!(other.workers().unwrap(), ["{\"id\":\"w1\",\"n\":2}"]);
}

/// A log store: appends report the new length, resends skip what is held, a gap is
/// refused, ranges read back, and a run's logs are listed and deleted together. `dir` is
/// a fresh directory-like prefix for this check.
/// One `#[test]` per check above, in the calling module. `$open` turns a fresh scratch
/// directory into two handles on one new store (as two processes would have) and whatever
/// must live as long as the test (a throwaway database server): `(Shared, Shared, G)`.
/// Every backend's tests call this, so a new check runs against all of them.
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@each $open,
            runs_fold: |s, o| runs_fold_their_events(&*s);
            pages: |s, o| newest_first_and_pages(&*s);
            watchers: |s, o| watchers_and_counts_follow_runs(&s);
            attempts: |s, o| attempts_children_and_definitions(&*s);
            history: |s, o| history_keeps_every_entry_of_every_attempt(&*s);
            queues: |s, o| queues_keep_order_and_give_each_item_once(&*s);
            racing_takers: |s, o| concurrent_takers_take_each_item_once(s);
            leader: |s, o| one_leader_and_fenced_writes(&*s, &*o);
            values: |s, o| named_values(&*s, &*o);
            coordinator_lease: |s, o| coordinators_lease_and_shared_values(&*s, &*o);
            swaps: |s, o| swapped_values(&*s, &*o);
            racing_swaps: |s, o| racing_swaps_lose_no_update(s, o);
        );
    };
    (@each $open:expr, $($name:ident: |$s:ident, $o:ident| $body:expr;)*) => {
        $(#[test]
        fn $name() {
            #[allow(unused_imports)]
            use $crate::conformance::*;
            let scratch = tempfile::tempdir().unwrap();
            let ($s, $o, _guard) = ($open)(scratch.path());
            let _ = &$o;
            $body
        })*
    };
}

pub fn logs_append_read_and_resend(logs: &dyn crate::LogStore, dir: &str) {
    let run = format!("{dir}/run");
    let (a, b) = (format!("{run}/a.out"), format!("{run}/b.err"));
    assert_eq!(logs.len(&a).unwrap(), None);
    assert!(
        logs.read(&a, 0, 10).unwrap().is_empty(),
        "a missing log reads empty"
    );
    assert_eq!(logs.append(&a, b"hello ").unwrap(), 6);
    assert_eq!(logs.append(&a, b"world\n").unwrap(), 12);
    assert_eq!(logs.read(&a, 6, 100).unwrap(), b"world\n");
    assert_eq!(logs.read(&a, 0, 5).unwrap(), b"hello");
    assert!(logs.read(&a, 50, 5).unwrap().is_empty());
    assert_eq!(
        logs.append_at(&a, 6, b"world\nmore\n").unwrap(),
        5,
        "a resend writes only the new bytes"
    );
    assert_eq!(logs.len(&a).unwrap(), Some(17));
    assert_eq!(logs.append_at(&a, 0, b"hello").unwrap(), 0);
    let gap = logs.append_at(&a, 40, b"x").unwrap_err();
    assert_eq!(gap.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(logs.append_at(&b, 0, b"e").unwrap(), 1);
    assert_eq!(logs.list(&run).unwrap(), [a.clone(), b.clone()]);
    assert_eq!(crate::logs::tail_start(logs, &a, 17, 1).unwrap(), 12);
    assert_eq!(crate::logs::tail_start(logs, &a, 17, 9).unwrap(), 0);
    logs.delete(&run).unwrap();
    assert!(logs.list(&run).unwrap().is_empty());
    assert_eq!(logs.len(&a).unwrap(), None);
}
