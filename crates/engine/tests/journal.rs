//! How the engine records a run when the store refuses writes: the steps still run, the
//! run ends as it would have, and every lost write is listed in the run's warnings — both
//! for a store written inline (files) and one written by the journal's task (a database).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};
use trellis_engine::{Engine, Options, RunRequest};
use trellis_executor::Local;
use trellis_store::{Attempt, Entry, Error, MemStore, Result, Store};

/// A real in-memory store whose step writes fail, and that says whether it may wait.
struct Refusing {
    inner: MemStore,
    may_wait: bool,
}

impl Store for Refusing {
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt> {
        self.inner.create_attempt(dag, run_id, parent)
    }
    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        if let Entry::Step { .. } = entry {
            return Err(Error::Db {
                transient: false,
                message: "the disk is full".into(),
            });
        }
        self.inner.append(attempt, entry)
    }
    fn may_wait(&self) -> bool {
        self.may_wait
    }
    fn latest(&self, dag: &str) -> Result<Option<RunRecord>> {
        self.inner.latest(dag)
    }
    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>> {
        self.inner.find(dag, run_id)
    }
    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt> {
        self.inner.retry_attempt(dag, run_id)
    }
    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>> {
        self.inner.latest_attempt(dag, run_id)
    }
    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        self.inner.save_definition(attempt, dag)
    }
    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>> {
        self.inner.find_child(parent, run_id)
    }
    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>> {
        self.inner.definition(dag, run_id)
    }
    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.inner.list(dag, limit)
    }
    fn dag_names(&self) -> Result<Vec<String>> {
        self.inner.dag_names()
    }
    fn remove(&self, dag: &str, run_id: &str) -> Result<()> {
        self.inner.remove(dag, run_id)
    }
    fn history(&self, dag: &str, run_id: &str) -> Result<Vec<(String, Entry)>> {
        self.inner.history(dag, run_id)
    }
}

async fn run_on(may_wait: bool) -> (RunRecord, Option<RunRecord>, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("ran");
    let yaml = format!(
        "name: refused\nsteps:\n  - name: a\n    command: echo a >> {0}\n  - name: b\n    command: echo b >> {0}\n",
        out.display()
    );
    let dag = trellis_spec::load_str("refused.yaml", &yaml).unwrap().dag;
    let store = Arc::new(Refusing {
        inner: MemStore::new(scratch.path()),
        may_wait,
    });
    let opts = Options {
        dags_dir: None,
        base_env: trellis_engine::inherited_env(),
        worker_id: None,
        remote: None,
        enqueue: None,
        ..Options::default()
    };
    let engine = Engine::new(store.clone(), Arc::new(Local), opts);
    let req = RunRequest {
        locals: Arc::new(Vec::new()),
        dag: Arc::new(dag),
        params: Vec::new(),
        run_id: "r1".into(),
        parent: None,
        retry: None,
        env: Vec::new(),
        queued: false,
    };
    let record = engine.run(req, CancellationToken::new()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "a\nb\n",
        "both steps ran"
    );
    let stored = store.find("refused", "r1").unwrap();
    (record, stored, scratch)
}

fn check(record: &RunRecord, stored: Option<RunRecord>) {
    assert_eq!(record.status, Status::Succeeded, "{record:#?}");
    // Each step's start and end were refused: four warnings, naming the steps.
    assert_eq!(record.warnings.len(), 4, "{:?}", record.warnings);
    assert!(
        record.warnings[0].contains("cannot record step a")
            && record.warnings[0].contains("the disk is full"),
        "{:?}",
        record.warnings
    );
    // The final snapshot still landed, with the warnings in it.
    let stored = stored.expect("the run is stored");
    assert_eq!(stored.status, Status::Succeeded);
    assert_eq!(stored.warnings, record.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_through_the_journal_task_are_warnings() {
    let (record, stored, _scratch) = run_on(true).await;
    check(&record, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_inline_writes_are_warnings() {
    let (record, stored, _scratch) = run_on(false).await;
    check(&record, stored);
}
