//! The container run launcher (`run_launcher: {type: docker}`) against a throwaway Podman
//! service: the image is built by `scripts/build-image` from this build's binary (no
//! registry), each run the scheduler starts runs inside a container of its own against
//! the same data dir, and a scheduler killed while a run's container works is followed by
//! one that waits for that container instead of starting another.

mod support;

use std::path::Path;

use support::{Env, Proc, step};
use trellis_testdb::podman::Podman;

const IMAGE: &str = "localhost/trellis-run:test";

fn podman_with_image() -> Option<Podman> {
    let podman = support::podman()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image");
    let out = std::process::Command::new(script)
        .arg(support::TRELLIS)
        .arg(IMAGE)
        .envs(podman.env())
        .output()
        .expect("build the image");
    assert!(
        out.status.success(),
        "scripts/build-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(podman)
}

/// A home with a `shared` dir the runs' containers mount, and the variables a scheduler
/// needs to launch them: the Docker API and the config file with `run_launcher`.
fn setup(podman: &Podman) -> (Env, std::path::PathBuf, Vec<(&'static str, String)>) {
    let env = Env::new();
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    let config = config(&env, &shared).display().to_string();
    let vars = vec![
        ("DOCKER_HOST", podman.docker_host()),
        ("TRELLIS_CONFIG", config),
    ];
    (env, shared, vars)
}

fn config(env: &Env, shared: &Path) -> std::path::PathBuf {
    env.config(&format!(
        "run_launcher:\n  type: docker\n  config:\n    image: {IMAGE}\n    pull: never\n    \
         network: host\n    env_vars: [LAUNCH_MARK, \"FIXED=set-here\"]\n    container_kwargs:\n      \
         mem_limit: 256m\n      volumes: [\"{}:/shared\"]\n",
        shared.display()
    ))
}

/// A queued run goes to a container of its own, with the listed variables and limits,
/// records itself in the same store (history, logs) and leaves no container behind.
#[test]
fn each_run_runs_in_a_container_of_its_own() {
    let Some(podman) = podman_with_image() else {
        return;
    };
    let (env, _shared, mut vars) = setup(&podman);
    vars.push(("LAUNCH_MARK", "from-the-scheduler".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = env.dag(
        "launched",
        "steps:\n  - name: where\n    command: sh -c 'echo \"$LAUNCH_MARK $FIXED\"; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; test -d /shared'\n    output: SAID\n",
    );
    let _scheduler = Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    let run_id = support::enqueue(&env, &file);
    let run = support::wait_for(120, "the launched run to end", || {
        support::status(&env, "launched", &run_id)
            .filter(|r| r["status"] != "running" && r["status"] != "queued")
    });
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["outputs"]["SAID"], "from-the-scheduler set-here\n268435456",
        "variables passed and the memory limit applied: {run:#}"
    );
    let history = env
        .trellis()
        .args(["history", "launched"])
        .output()
        .expect("history");
    assert!(String::from_utf8_lossy(&history.stdout).contains(&run_id));
    let logs = env
        .trellis()
        .args(["logs", "launched", "--step", "where"])
        .output()
        .expect("logs");
    assert!(String::from_utf8_lossy(&logs.stdout).contains("from-the-scheduler"));
    assert_eq!(step(&run, "where")["status"], "succeeded");
    support::wait_for(30, "the container to be removed", || {
        podman.containers().is_empty().then_some(())
    });
}

/// `kill -9` of the scheduler while a run's container works: the container goes on, the
/// next scheduler follows it (one container, the step run once) and the run ends there.
#[test]
fn a_killed_scheduler_leaves_the_runs_container_to_the_next() {
    let Some(podman) = podman_with_image() else {
        return;
    };
    let (env, shared, vars) = setup(&podman);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = env.dag(
        "outlives",
        "steps:\n  - name: long\n    command: sh -c 'echo started >> /shared/starts; while [ ! -f /shared/go ]; do sleep 0.1; done; echo done'\n  - name: after\n    command: echo after\n",
    );
    let mut first = Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    let run_id = support::enqueue(&env, &file);
    support::wait_for(120, "the step to start", || {
        std::fs::read_to_string(shared.join("starts"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    first.kill9();
    assert_eq!(podman.containers().len(), 1, "{:?}", podman.containers());

    let _second = Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    std::fs::write(shared.join("go"), "").expect("go");
    let run = support::wait_for(120, "the run to end", || {
        support::status(&env, "outlives", &run_id).filter(|r| r["status"] == "succeeded")
    });
    assert_eq!(step(&run, "after")["status"], "succeeded", "{run:#}");
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(
        starts.lines().count(),
        1,
        "one container, the step run once"
    );
    support::wait_for(30, "the container to be removed", || {
        podman.containers().is_empty().then_some(())
    });
}
