//! The conformance suite against the in-memory backend.

#![cfg(feature = "test-util")]

use std::sync::Arc;

use trellis_core::Dag;
use trellis_core::status::RunRecord;
use trellis_storage_api::{Attempt, Entry, MemStore, Result, Shared};

trellis_storage_api::conformance_tests!(|home: &std::path::Path| {
    let store: Shared = Arc::new(MemStore::new(home));
    (store.clone(), store, ())
});

/// A store that keeps no log of its own (only what the required methods give):
/// `Store::history`'s default.
struct Folded(MemStore);

impl trellis_storage_api::Store for Folded {
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt> {
        self.0.create_attempt(dag, run_id, parent)
    }
    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        self.0.append(attempt, entry)
    }
    fn latest(&self, dag: &str) -> Result<Option<RunRecord>> {
        self.0.latest(dag)
    }
    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>> {
        self.0.find(dag, run_id)
    }
    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt> {
        self.0.retry_attempt(dag, run_id)
    }
    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>> {
        self.0.latest_attempt(dag, run_id)
    }
    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        self.0.save_definition(attempt, dag)
    }
    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>> {
        self.0.find_child(parent, run_id)
    }
    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>> {
        self.0.definition(dag, run_id)
    }
    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.0.list(dag, limit)
    }
    fn dag_names(&self) -> Result<Vec<String>> {
        self.0.dag_names()
    }
    fn remove(&self, dag: &str, run_id: &str) -> Result<()> {
        self.0.remove(dag, run_id)
    }
}

/// Without a log, the history is what can be known: the latest record, as one snapshot.
#[test]
fn history_without_a_log_is_the_folded_record() {
    use trellis_core::status::Status;
    use trellis_storage_api::Store;
    let scratch = tempfile::tempdir().unwrap();
    let store = Folded(MemStore::new(scratch.path()));
    let attempt = store.create_attempt("etl", "r1", None).unwrap();
    let rec =
        trellis_storage_api::conformance::record("etl", "r1", &attempt.attempt_id, Status::Running);
    store
        .append(&attempt, &Entry::Snapshot(Box::new(rec)))
        .unwrap();
    let step = trellis_core::status::StepRecord {
        name: "a".into(),
        status: Status::Succeeded,
        ..Default::default()
    };
    store
        .append(&attempt, &Entry::Step { index: 0, step })
        .unwrap();
    let history = store.history("etl", "r1").unwrap();
    let [(id, Entry::Snapshot(run))] = history.as_slice() else {
        panic!("one snapshot: {history:?}");
    };
    assert_eq!(*id, attempt.attempt_id);
    assert_eq!(
        run.steps[0].status,
        Status::Succeeded,
        "the step is folded in"
    );
    assert!(store.history("etl", "nope").unwrap().is_empty());
}
