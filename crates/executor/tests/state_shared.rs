//! `state.*` steps over a shared store's named values ([`trellis_executor::set_state_store`],
//! which `main` calls when the store is a database), here the in-memory backend of the
//! storage seam: the same answers as over files, the entries are the files' JSON under
//! `dag_state`, nothing is written to the state dir, and racing writers lose no update.
//! (The same over PostgreSQL, across processes: `crates/cli/tests/state_database.rs`.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_executor::{Outcome, Registry, StepRequest, Work};
use trellis_storage_api::state::scope::DAG_STATE;
use trellis_storage_api::{MemStore, State};

/// The store every state step of this test binary uses (process-wide, as in `main`),
/// and the state dir that must stay empty.
fn shared() -> &'static (Arc<MemStore>, tempfile::TempDir) {
    static SHARED: OnceLock<(Arc<MemStore>, tempfile::TempDir)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: set once, before any state step of this test binary reads it.
        unsafe { std::env::set_var("TRELLIS_DAG_STATE_DIR", dir.path()) };
        let store = Arc::new(MemStore::new(dir.path().join("scratch")));
        trellis_executor::set_state_store(store.clone());
        (store, dir)
    })
}

fn request(dir: &Path, dag: &str, op: &str, with: Value) -> StepRequest {
    let mut config = with;
    config["operation"] = op.into();
    StepRequest {
        name: format!("state-{op}"),
        work: Work::Default,
        env: Vec::new(),
        working_dir: Some(dir.to_path_buf()),
        config,
        stdout: dir.join("out"),
        stderr: dir.join("err"),
        timeout: Some(Duration::from_secs(30)),
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(1),
        mask: None,
        labels: BTreeMap::from([
            ("trellis.dag".to_string(), dag.to_string()),
            ("trellis.run_id".to_string(), "r1".to_string()),
            ("trellis.step".to_string(), op.to_string()),
        ]),
        record: None,
    }
}

/// Runs one state step: its JSON line, or why it failed.
async fn state(dir: &Path, dag: &str, op: &str, with: Value) -> Result<Value, String> {
    let _ = shared();
    let req = request(dir, dag, op, with);
    let _ = std::fs::remove_file(&req.stdout);
    let registry = Registry::builtin();
    let executor = registry.get("state").expect("state");
    executor.check(&req.config).expect("the config checks");
    let outcome = match executor.start(&req).await {
        Ok(handle) => executor.wait(&handle, &req, CancellationToken::new()).await,
        Err(e) => Outcome::SpawnFailed(e.0),
    };
    match outcome {
        Outcome::Exited(0) => {
            let out = std::fs::read_to_string(&req.stdout).expect("stdout");
            Ok(serde_json::from_str(out.trim()).expect("one JSON line"))
        }
        Outcome::Failed { reason, .. } => Err(reason),
        other => Err(format!("{other:?}")),
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn state_steps_keep_their_entries_in_the_shared_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (store, state_dir) = shared();
    let set = state(
        d,
        "shop",
        "set",
        json!({"key": "orders/last", "value": {"b": 2, "a": 1}}),
    )
    .await
    .expect("set");
    assert_eq!(
        (set["version"].clone(), set["created"].clone()),
        (json!(1), json!(true))
    );
    // Another DAG naming the same namespace sees it (two processes sharing the store).
    let got = state(
        d,
        "report",
        "get",
        json!({"key": "orders/last", "scope": "custom", "namespace": "shop", "required": true}),
    )
    .await;
    assert!(got.is_err(), "custom/shop is not dag/shop: {got:?}");
    let got = state(
        d,
        "shop",
        "get",
        json!({"key": "orders/last", "required": true}),
    )
    .await
    .expect("get");
    assert_eq!(
        (got["version"].clone(), got["value"].clone()),
        (json!(1), json!({"a": 1, "b": 2}))
    );

    // The entry is the files' JSON, named `<scope>/<namespace>/<key>`.
    let text = store
        .get(DAG_STATE, "dag/shop/orders/last")
        .expect("get")
        .expect("kept under dag_state");
    let entry: Value = serde_json::from_str(&text).expect("JSON");
    let mut fields: Vec<&str> = entry
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_at",
            "hash",
            "updated_at",
            "updated_by",
            "value",
            "version"
        ]
    );
    assert_eq!(entry["updated_by"]["dag_name"], "shop");

    let err = state(
        d,
        "shop",
        "set",
        json!({"key": "orders/last", "value": 3, "expected_version": 0}),
    )
    .await
    .expect_err("stale");
    assert!(
        err.contains("expected version 0") && err.contains("found version 1"),
        "{err}"
    );
    let err = state(
        d,
        "shop",
        "set",
        json!({"key": "orders/last", "value": 3, "create_only": true}),
    )
    .await
    .expect_err("exists");
    assert!(err.contains("already exists (version 1)"), "{err}");
    let set = state(
        d,
        "shop",
        "set",
        json!({"key": "orders/last", "value": 3, "expected_version": "1"}),
    )
    .await
    .expect("set with the current version");
    assert_eq!(set["version"], json!(2));

    let diff = state(
        d,
        "shop",
        "diff",
        json!({"key": "orders/next", "value": [1]}),
    )
    .await
    .expect("diff");
    assert_eq!(
        (diff["changed"].clone(), diff["version"].clone()),
        (json!(true), json!(1))
    );
    state(d, "shop", "set", json!({"key": "ordersX", "value": 0}))
        .await
        .expect("set");
    state(
        d,
        "shop",
        "set",
        json!({"key": "orders/x", "value": 0, "scope": "global"}),
    )
    .await
    .expect("global");
    let list = state(
        d,
        "shop",
        "list",
        json!({"prefix": "orders/", "include_values": true}),
    )
    .await
    .expect("list");
    let entries: Vec<(String, Value)> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or("").to_string(),
                e["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("orders/last".to_string(), json!(3)),
            ("orders/next".to_string(), json!([1]))
        ]
    );

    let del = state(d, "shop", "delete", json!({"key": "orders/last"}))
        .await
        .expect("delete");
    assert_eq!(del["deleted"], json!(true));
    let del = state(d, "shop", "delete", json!({"key": "orders/last"}))
        .await
        .expect("delete");
    assert_eq!(del["deleted"], json!(false));
    assert!(
        store
            .get(DAG_STATE, "dag/shop/orders/last")
            .expect("get")
            .is_none()
    );
    assert!(
        files_under(state_dir.path()).is_empty(),
        "nothing in the state dir: {:?}",
        files_under(state_dir.path())
    );
}

#[tokio::test]
async fn state_writers_racing_through_the_shared_store_never_lose_an_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writers, each) = (6, 10);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let d = dir.path().join(format!("w{w}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        tasks.push(tokio::spawn(async move {
            let (mut done, mut plain) = (0, 0);
            while done < each {
                // Without `expected_version`: every set reads, then swaps, again on a miss.
                let got = state(&d, "race", "get", json!({"key": "n", "default": 0}))
                    .await
                    .expect("get");
                let n = got["value"].as_i64().unwrap_or(0);
                let v = got["version"].as_i64().unwrap_or(0);
                let with = json!({"key": "n", "value": n + 1, "expected_version": v});
                match state(&d, "race", "set", with).await {
                    Ok(_) => done += 1,
                    Err(e) => assert!(e.contains("conflict"), "writer {w}: {e}"),
                }
                let with = json!({"key": "plain", "value": w});
                state(&d, "race", "set", with)
                    .await
                    .expect("a plain set never conflicts");
                plain += 1;
            }
            plain
        }));
    }
    let mut plain = 0;
    for t in tasks {
        plain += t.await.expect("a writer");
    }
    let got = state(dir.path(), "race", "get", json!({"key": "n"}))
        .await
        .expect("get");
    assert_eq!(got["value"], json!(writers * each));
    assert_eq!(got["version"], json!(writers * each));
    let got = state(dir.path(), "race", "get", json!({"key": "plain"}))
        .await
        .expect("get");
    assert_eq!(
        got["version"],
        json!(plain),
        "each plain set made a version"
    );
}
