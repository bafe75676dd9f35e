//! `state.*` steps on a database store: two `trellis` processes with homes of their own
//! (machines that share only a throwaway PostgreSQL) see each other's writes, a write
//! with a stale `expected_version` fails naming both versions, and the entries live in
//! the database, not in either state dir.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{Env, step, wait_for};
use trellis_store::State;
use trellis_testdb::{Kind, Server as Db};

const DB_URL: &str = "TRELLIS_DATABASE_URL";

/// Reads the counter, adds one, writes it back if nobody wrote in between; `pause` holds
/// the run between reading and writing (until the file `go` exists, after `ready`).
fn counter_dag(env: &Env, file: &str, pause: Option<(&Path, &Path)>) -> String {
    let hold = pause.map_or(String::new(), |(ready, go)| {
        format!(
            "  - id: hold\n    command: sh -c 'touch {}; while [ ! -e {} ]; do sleep 0.05; done'\n",
            ready.display(),
            go.display()
        )
    });
    let yaml = format!(
        "name: counter\nsteps:\n  - id: read\n    action: state.get\n    with: {{key: counters/n, default: 0}}\n    output: SEEN\n{hold}  - id: bump\n    command: sh -c 'echo $(( ${{SEEN.value}} + 1 ))'\n    output: NEXT\n  - id: write\n    action: state.set\n    with:\n      key: counters/n\n      value: ${{NEXT}}\n      expected_version: ${{SEEN.version}}\n"
    );
    env.dag(file, &yaml).display().to_string()
}

fn start(env: &Env, url: &str, file: &str, run_id: &str) -> Command {
    let mut cmd = env.trellis();
    cmd.env(DB_URL, url)
        .args(["start", "-r", run_id, file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn status(env: &Env, url: &str, run_id: &str) -> Value {
    let out = env
        .trellis()
        .env(DB_URL, url)
        .args(["status", "--json", "counter", "-r", run_id])
        .output()
        .expect("status");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status of {run_id}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
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

#[test]
fn processes_sharing_only_the_database_share_state_values() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("state").expect("database");
    let (a, b) = (Env::new(), Env::new());
    let (ready, go) = (a.path("ready"), a.path("go"));
    let bump_a = counter_dag(&a, "counter", None);
    let slow_a = counter_dag(&a, "slow", Some((&ready, &go)));
    let bump_b = counter_dag(&b, "counter", None);

    let out = start(&a, &url, &bump_a, "a1").output().expect("start a1");
    assert!(
        out.status.success(),
        "a1: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reads version 1 and waits; B, elsewhere, reads A's write and writes version 2.
    let mut slow = start(&a, &url, &slow_a, "a2").spawn().expect("start a2");
    wait_for(60, "a2 to read the counter", || {
        ready.exists().then_some(())
    });
    let out = start(&b, &url, &bump_b, "b1").output().expect("start b1");
    assert!(
        out.status.success(),
        "b1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b1 = status(&b, &url, "b1");
    assert_eq!(step(&b1, "read")["status"], "succeeded", "{b1:#}");

    // A's write now carries a stale version: it fails and names both.
    std::fs::write(&go, "").expect("go");
    let done = slow.wait().expect("a2 ends");
    assert!(!done.success(), "a2 must fail");
    let a2 = status(&a, &url, "a2");
    let error = step(&a2, "write")["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expected version 1") && error.contains("found version 2"),
        "{a2:#}"
    );

    // The entry is in the database (B's write), and neither state dir holds a file.
    let store = trellis_store::SqlStore::connect(&url, a.path("probe").as_path()).expect("connect");
    let text = store
        .get(
            trellis_store::state::scope::DAG_STATE,
            "dag/counter/counters/n",
        )
        .expect("get")
        .expect("the entry is in the database");
    let entry: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(entry["version"], 2, "{entry}");
    assert_eq!(entry["updated_by"]["dag_run_id"], "b1", "{entry}");
    assert!(entry["value"] == 2 || entry["value"] == "2", "{entry}");
    for env in [&a, &b] {
        let dir = trellis_store::data_dir(env.home.path()).join("dag-state");
        assert!(files_under(&dir).is_empty(), "{:?}", files_under(&dir));
    }
}
