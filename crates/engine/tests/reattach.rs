//! The engine over the executor seam, with the fake executor: a step started where it
//! outlives its runner is recorded with its handle while it runs, and a run resumed
//! after its runner died reattaches to that work instead of starting it again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_core::status::{RunRecord, Status};
use trellis_core::{Action, Dag, ExecutorConfig, Step};
use trellis_engine::{Engine, Options, Retry, RunRequest};
use trellis_executor::fake::{Fake, World};
use trellis_executor::{Local, Registry};
use trellis_store::{MemStore, Store};

fn dag(flag: &std::path::Path) -> Dag {
    let mut dag = Dag::empty("fakes");
    let mut step = Step::command("long", "");
    step.executor = Some(Box::new(ExecutorConfig {
        kind: "fake".into(),
        config: serde_json::Value::Null,
    }));
    step.action = Action::Exec {
        program: "await".into(),
        args: vec![flag.display().to_string(), "one\n".into(), "two\n".into()],
    };
    let mut after = Step::command("after", "echo after");
    after.depends = vec!["long".into()];
    dag.steps = vec![step, after];
    dag
}

fn engine(store: Arc<MemStore>, world: &World) -> Engine<MemStore, Local> {
    let mut executors = Registry::empty();
    executors.add_as("fake", Arc::new(Fake::new(world.clone())));
    let opts = Options {
        executors,
        ..Options::default()
    };
    Engine::new(store, Arc::new(Local), opts)
}

fn request(dag: &Dag, retry: Option<Retry>) -> RunRequest {
    RunRequest {
        locals: Arc::new(Vec::new()),
        dag: Arc::new(dag.clone()),
        params: Vec::new(),
        run_id: "r1".into(),
        parent: None,
        retry,
        env: Vec::new(),
        queued: false,
    }
}

/// Polls the store until the step's handle is recorded (the runner may die from then on).
async fn handle_recorded(store: &MemStore) -> RunRecord {
    loop {
        if let Ok(Some(run)) = store.find("fakes", "r1")
            && run.steps[0].handle.is_some()
        {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_reattaches_to_its_running_step() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let flag = scratch.path().join("go");
    let dag = dag(&flag);
    let store = Arc::new(MemStore::new(scratch.path()));
    let world = World::default();

    // The first runner has a runtime of its own, dropped to kill it: its run and step
    // tasks go, as with a process killed, while the work (on this runtime) goes on.
    let runner = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let first = engine(store.clone(), &world);
    let req = request(&dag, None);
    runner.spawn(async move { first.run(req, CancellationToken::new()).await });
    let seen = handle_recorded(&store).await;
    assert_eq!(seen.steps[0].status, Status::Running);
    runner.shutdown_background();
    assert_eq!(world.all_starts(), 1);

    std::fs::write(&flag, "").expect("flag");
    let previous = store.find("fakes", "r1").expect("read").expect("stored");
    let second = engine(store.clone(), &world);
    let retry = Retry {
        previous,
        from_step: None,
    };
    let run = second
        .run(request(&dag, Some(retry)), CancellationToken::new())
        .await
        .expect("resumed run");
    assert_eq!(run.status, Status::Succeeded, "{run:#?}");
    assert_eq!(world.all_starts(), 1, "reattached, never started twice");
    let out = run.steps[0].stdout.as_deref().expect("a log");
    assert_eq!(
        std::fs::read_to_string(out).unwrap_or_default(),
        "one\ntwo\n"
    );
    assert_eq!(run.steps[1].status, Status::Succeeded);
}
