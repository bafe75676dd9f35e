//! `type: docker` steps against a real Docker Engine API: a throwaway Podman service
//! (`podman system service`) with a local busybox image, started per test. Skipped only
//! where Podman is not installed; CI installs it (scripts/test), so nothing skips there.

mod support;

use std::process::Output;

use serde_json::Value;
use support::{Env, step};
use trellis_testdb::podman::Podman;

fn podman() -> Option<Podman> {
    support::podman()
}

fn start(env: &Env, podman: &Podman, file: &std::path::Path) -> Output {
    env.trellis()
        .args(["start", "-q"])
        .arg(file)
        .current_dir(env.work.path())
        .env("DOCKER_HOST", podman.docker_host())
        .output()
        .expect("run trellis")
}

fn status(env: &Env, dag: &str) -> Value {
    support::status(env, dag, "").expect("status --json")
}

const BOXED: &str = r#"
name: boxed
type: graph
env:
  - RUN_WIDE: everywhere
steps:
  - name: inside
    type: docker
    with:
      image: localhost/trellis-test:latest
      pull: never
      env:
        GREETING: hello
      volumes: ["./shared:/shared"]
      working_dir: /shared
    command: sh -c 'echo "$GREETING $RUN_WIDE $(head -c 9 /etc/passwd)"; echo data > out.txt; echo oops >&2'
    output: SAID
  - name: exits-seven
    type: docker
    with: {image: "localhost/trellis-test:latest", pull: never}
    command: sh -c 'echo about to fail; exit 7'
    continue_on:
      exit_code: [7]
  - name: script
    type: docker
    with: {image: "localhost/trellis-test:latest", pull: never}
    script: |
      for word in one two; do echo "$word"; done
    output: WORDS
  - name: no-such-image
    type: docker
    with: {image: "localhost/no-such-image:1", pull: never}
    command: "true"
    continue_on:
      failure: true
"#;

#[test]
fn docker_steps_run_in_containers_with_logs_exit_codes_and_volumes() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    std::fs::create_dir_all(env.path("shared")).expect("shared dir");
    let file = env.dag("boxed", BOXED);
    let out = start(&env, &podman, &file);
    let run = status(&env, "boxed");
    // Two steps failed under continue_on, as Dagu counts it.
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(run["status"], "partially_succeeded", "{run:#}\n{said}");
    assert_eq!(step(&run, "inside")["status"], "succeeded");
    // The image's /etc/passwd, not the host's: the step ran in the container.
    assert_eq!(run["outputs"]["SAID"], "hello everywhere root:x:0:");
    assert_eq!(run["outputs"]["WORDS"], "one\ntwo");
    assert_eq!(
        std::fs::read_to_string(env.path("shared/out.txt"))
            .ok()
            .as_deref(),
        Some("data\n"),
        "./shared resolves against the DAG's dir"
    );
    let stderr = env
        .trellis()
        .args(["logs", "boxed", "--step", "inside", "--stderr"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&stderr.stdout).trim(), "oops");
    let seven = step(&run, "exits-seven");
    assert_eq!(seven["exit_code"], 7, "{seven:#}");
    assert_eq!(seven["error"], "exit status 7", "{seven:#}");
    let missing = step(&run, "no-such-image");
    let error = missing["error"].as_str().unwrap_or_default();
    assert!(error.contains("localhost/no-such-image:1"), "{missing:#}");
    assert!(
        podman.containers().is_empty(),
        "left behind: {:?}",
        podman.containers()
    );
}

#[test]
fn a_timed_out_or_unreachable_docker_step_fails_clearly() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    let file = env.dag(
        "slow",
        "steps:\n  - name: wait\n    type: docker\n    timeout_sec: 1\n    with: {image: \"localhost/trellis-test:latest\", pull: never}\n    command: sleep 60\n",
    );
    start(&env, &podman, &file);
    let run = status(&env, "slow");
    let wait = step(&run, "wait");
    assert_eq!(wait["status"], "failed", "{run:#}");
    assert!(
        wait["error"].as_str().unwrap_or("").contains("timed out"),
        "{wait:#}"
    );
    assert!(
        podman.containers().is_empty(),
        "left behind: {:?}",
        podman.containers()
    );

    let gone = env.work.path().join("no-docker.sock");
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .env("DOCKER_HOST", format!("unix://{}", gone.display()))
        .output()
        .expect("run trellis");
    assert_eq!(out.status.code(), Some(1));
    let run = status(&env, "slow");
    let error = step(&run, "wait")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(&gone.display().to_string()), "{error}");

    // `validate --check-runtime` says so before any run; with the API up it says nothing.
    let check = |host: &str| {
        let out = env
            .trellis()
            .args(["validate", "--check-runtime"])
            .arg(&file)
            .env("DOCKER_HOST", host)
            .output()
            .expect("validate");
        assert_eq!(out.status.code(), Some(0), "a warning, not an error");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = check(&format!("unix://{}", gone.display()));
    assert!(
        said.contains("step `wait` needs docker") && said.contains(&gone.display().to_string()),
        "{said}"
    );
    let said = check(&podman.docker_host());
    assert!(!said.contains("warning"), "{said}");
}

/// A step type no executor serves, or a DAG-level `container:` option not acted on, is
/// refused when the file loads — never run on the local shell — and a docker step's options are checked then.
#[test]
fn unsupported_types_and_options_not_acted_on_are_refused_at_load() {
    let env = Env::new();
    let file = env.dag(
        "refused",
        "container:\n  image: alpine\n  wait_for: healthy\nsteps:\n  - name: remote\n    type: s3\n    with: {bucket: b}\n    \
         command: upload\n  - name: boxed\n    type: docker\n    with:\n      image: alpine\n      \
         colour: red\n    command: \"true\"\n",
    );
    let out = env
        .trellis()
        .arg("validate")
        .arg(&file)
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(2));
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for expected in [
        "`wait_for: healthy` is not acted on",
        "refused.yaml:2:3",
        "step type `s3` cannot run in this version of trellis",
        "refused.yaml:6:11",
        "docker: unknown option `colour`",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .output()
        .expect("start");
    assert_eq!(out.status.code(), Some(2), "nothing runs");
    assert!(
        support::status(&env, "refused", "").is_none(),
        "no run was recorded"
    );
}

/// `kill -9` of the scheduler running a docker step leaves the container running; the
/// next scheduler resumes the run, reattaches to that container and ends the step with
/// its real exit code and whole log. The step's command counts its starts: one.
#[test]
fn a_killed_runner_leaves_its_container_and_the_next_one_reattaches() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    let file = env.dag(
        "crash",
        &format!(
            "steps:\n  - name: first\n    command: echo before\n  - name: long\n    type: docker\n    \
             with:\n      image: localhost/trellis-test:latest\n      pull: never\n      \
             volumes: [\"{}:/shared\"]\n    \
             command: sh -c 'echo started >> /shared/starts; echo one; while [ ! -f /shared/go ]; do sleep 0.1; done; echo two; exit 3'\n",
            shared.display()
        ),
    );
    let host = podman.docker_host();
    let vars = [("DOCKER_HOST", host.as_str())];
    let mut first = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    support::enqueue(&env, &file);
    support::wait_for(60, "the container to start", || {
        std::fs::read_to_string(shared.join("starts"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    first.kill9();
    assert_eq!(
        podman.containers().len(),
        1,
        "the container outlives its runner"
    );

    let _second = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    std::fs::write(shared.join("go"), "").expect("go");
    // Final, and by the resumed attempt: recovery first records the orphan as failed.
    let run = support::wait_for(60, "the resumed run to end", || {
        support::status(&env, "crash", "")
            .filter(|r| r["status"] == "failed" && step(r, "long")["status"] == "failed")
            .filter(|r| step(r, "long")["error"] != "process died")
    });
    let long = step(&run, "long");
    assert_eq!(long["exit_code"], 3, "{run:#}");
    assert_eq!(long["error"], "exit status 3", "{run:#}");
    assert_eq!(step(&run, "first")["status"], "succeeded");
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "one container, never a second");
    let log = env
        .trellis()
        .args(["logs", "crash", "--step", "long"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&log.stdout), "one\ntwo\n");
    assert!(
        podman.containers().is_empty(),
        "left behind: {:?}",
        podman.containers()
    );
}

const SHARED: &str = r#"
name: shared
container:
  name: kept-box
  image: localhost/trellis-test:latest
  pull_policy: never
  keep_container: true
  env: [BOX=inside]
  working_dir: /tmp
steps:
  - name: mark
    command: sh -c 'echo $BOX $STEP_VAR > marker-5b1e; hostname'
    env: [STEP_VAR=mine]
    output: HOST1
  - name: read
    command: cat /tmp/marker-5b1e
    output: MARK
  - name: script
    script: |
      hostname
    output: HOST2
  - name: fails
    command: sh -c 'exit 4'
    continue_on:
      exit_code: [4]
handler_on:
  exit:
    command: test -f /tmp/marker-5b1e
"#;

const INTO: &str = r#"
name: into
container: kept-box
steps:
  - name: again
    command: cat marker-5b1e
    output: AGAIN
  - name: own
    container:
      image: localhost/trellis-test:latest
      pull_policy: never
    command: sh -c 'test -f /tmp/marker-5b1e || echo fresh'
    output: OWN
  - name: named
    container: kept-box
    command: cat /tmp/marker-5b1e
    output: NAMED
"#;

/// A DAG-level `container:` runs every command step (and handler) of a run in one
/// container, exec'd into it; kept, a later DAG execs into it by name, a step with its own
/// `container:` gets a fresh one, and nothing of a finished run is left but what was kept.
#[test]
fn a_dag_level_container_holds_every_step_of_the_run() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    let file = env.dag("shared", SHARED);
    let out = start(&env, &podman, &file);
    let run = status(&env, "shared");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(run["status"], "partially_succeeded", "{run:#}\n{said}");
    assert_eq!(run["outputs"]["MARK"], "inside mine", "{run:#}");
    let host = run["outputs"]["HOST1"].as_str().unwrap_or_default();
    assert!(!host.is_empty(), "{run:#}");
    assert_eq!(run["outputs"]["HOST2"], host, "one container for the run");
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_ne!(host, here.trim(), "not this machine");
    assert_eq!(step(&run, "fails")["exit_code"], 4, "{run:#}");
    assert_eq!(run["handlers"]["on_exit"]["status"], "succeeded", "{run:#}");
    assert_eq!(
        podman.containers().len(),
        1,
        "kept: {:?}",
        podman.containers()
    );

    let file = env.dag("into", INTO);
    let out = start(&env, &podman, &file);
    let said = String::from_utf8_lossy(&out.stderr);
    let run = support::status(&env, "into", "").unwrap_or_else(|| panic!("no run: {said}"));
    assert_eq!(run["status"], "succeeded", "{run:#}\n{said}");
    assert_eq!(run["outputs"]["AGAIN"], "inside mine");
    assert_eq!(run["outputs"]["OWN"], "fresh");
    assert_eq!(run["outputs"]["NAMED"], "inside mine");
    assert_eq!(
        podman.containers().len(),
        1,
        "someone else's container stays, the step's own is gone: {:?}",
        podman.containers()
    );
    let rm = podman.command().args(["rm", "-f", "kept-box"]).output();
    assert!(rm.is_ok_and(|o| o.status.success()));

    // Not kept: removed with the run.
    let file = env.dag(
        "gone",
        &SHARED
            .replace("keep_container: true", "keep_container: false")
            .replace("name: shared", "name: gone"),
    );
    start(&env, &podman, &file);
    assert_eq!(status(&env, "gone")["status"], "partially_succeeded");
    assert!(
        podman.containers().is_empty(),
        "left behind: {:?}",
        podman.containers()
    );
}

/// `kill -9` of the runner while a step runs in the run's container: the container and
/// the exec'd step go on; the next scheduler finds the container by the run's name,
/// follows the same exec to its exit code, and runs the rest of the run in it.
#[test]
fn a_killed_runner_leaves_the_run_container_and_the_next_one_carries_on_in_it() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    let file = env.dag(
        "crash-box",
        &format!(
            "container:\n  image: localhost/trellis-test:latest\n  pull_policy: never\n  \
             volumes: [\"{}:/shared\"]\nsteps:\n  - name: long\n    \
             command: sh -c 'echo started >> /shared/starts; hostname > /shared/host; while [ ! -f /shared/go ]; do sleep 0.1; done; exit 3'\n    \
             continue_on:\n      exit_code: [3]\n  - name: after\n    command: hostname\n    output: AFTER\n",
            shared.display()
        ),
    );
    let host = podman.docker_host();
    let vars = [("DOCKER_HOST", host.as_str())];
    let mut first = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    support::enqueue(&env, &file);
    support::wait_for(60, "the step to start", || {
        std::fs::read_to_string(shared.join("host"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    first.kill9();
    assert_eq!(
        podman.containers().len(),
        1,
        "the run's container outlives its runner"
    );

    let second = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    std::fs::write(shared.join("go"), "").expect("go");
    let mut last = None;
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        support::wait_for(60, "the resumed run to end", || {
            last = support::status(&env, "crash-box", "");
            // Final, and by the resumed attempt: recovery first records the orphan failed.
            last.clone()
                .filter(|r| !matches!(r["status"].as_str(), Some("running" | "queued")))
                .filter(|r| {
                    !r["error"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("process died")
                })
        })
    }));
    let run = ended.unwrap_or_else(|_| {
        panic!(
            "the resumed run did not end: {last:#?}\nscheduler: {}\ncontainers: {:?}",
            second.output(),
            podman.containers()
        )
    });
    assert_eq!(
        run["status"],
        "partially_succeeded",
        "{run:#}\nscheduler: {}",
        second.output()
    );
    let long = step(&run, "long");
    assert_eq!(long["exit_code"], 3, "{run:#}");
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "the step ran once: {run:#}");
    let first_host = std::fs::read_to_string(shared.join("host")).unwrap_or_default();
    assert_eq!(
        run["outputs"]["AFTER"],
        first_host.trim(),
        "the same container"
    );
    assert!(
        podman.containers().is_empty(),
        "left behind: {:?}",
        podman.containers()
    );
}

/// A container the OOM killer ends fails its step with "out of memory", not a bare code.
#[test]
fn a_container_killed_for_memory_fails_with_out_of_memory() {
    let Some(podman) = podman() else { return };
    let env = Env::new();
    let file = env.dag(
        "hungry",
        "steps:\n  - name: eat\n    type: docker\n    with:\n      image: localhost/trellis-test:latest\n      \
         pull: never\n      mem_limit: 16m\n    \
         command: sh -c 'x=$(head -c 200000000 /dev/zero | tr \"\\\\0\" a); echo ${#x}'\n",
    );
    start(&env, &podman, &file);
    let run = status(&env, "hungry");
    let eat = step(&run, "eat");
    assert_eq!(eat["status"], "failed", "{run:#}");
    let error = eat["error"].as_str().unwrap_or_default();
    assert!(error.contains("out of memory"), "{eat:#}");
}
