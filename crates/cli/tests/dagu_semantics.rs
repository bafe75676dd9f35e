//! Dagu's run-time semantics, checked end to end with the real `trellis` binary: each test
//! writes a workflow as a Dagu user would and asserts what Dagu documents for it — the
//! files a step leaves, its status and error, its output — never timings.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// A fresh `TRELLIS_HOME` and a work directory holding the workflow files.
struct Env {
    home: TempDir,
    work: TempDir,
}

impl Env {
    fn new(files: &[(&str, &str)]) -> Env {
        let env = Env {
            home: tempfile::tempdir().expect("home dir"),
            work: tempfile::tempdir().expect("work dir"),
        };
        for (name, text) in files {
            env.write(name, text);
        }
        env
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(path, text).expect("write file");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    }

    fn command(&self) -> Command {
        let mut c = Command::cargo_bin("trellis").expect("trellis binary");
        c.current_dir(self.work.path())
            .env("TRELLIS_HOME", self.home.path())
            .timeout(Duration::from_secs(60));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run trellis")
    }

    /// `trellis start -q FILE`; returns the exit code.
    fn start(&self, file: &str) -> i32 {
        code(&self.run(&["start", "-q", file]))
    }

    /// `trellis status NAME --json`, which must succeed.
    fn status(&self, name: &str) -> Value {
        let out = self.run(&["status", name, "--json"]);
        assert_eq!(code(&out), 0, "status {name}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// What `trellis logs NAME --step STEP` prints (the step's stdout log).
    fn log(&self, name: &str, step: &str) -> String {
        let out = self.run(&["logs", name, "--step", step]);
        assert_eq!(code(&out), 0, "logs: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run:#}"))
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

// ---------------------------------------------------------------------------------------
// 1. `stdout:` / `stderr:` copy the streams, the log keeps them too

#[test]
fn stdout_and_stderr_fields_copy_the_streams_beside_the_log() {
    let env = Env::new(&[(
        "redirect.yaml",
        "name: redirect\nenv:\n  - ERRS: errors.txt\nsteps:\n  - name: talk\n    \
         working_dir: w\n    env:\n      - NAME: copy\n    stdout: ${NAME}.out\n    \
         stderr: ../${ERRS}\n    command: echo to-out; echo to-err >&2\n",
    )]);
    std::fs::create_dir(env.path("w")).expect("mkdir w");
    assert_eq!(env.start("redirect.yaml"), 0);
    // Relative paths are taken against the step's working dir; the step's env expands.
    assert_eq!(env.read("w/copy.out"), "to-out\n");
    assert_eq!(env.read("errors.txt"), "to-err\n");
    assert_eq!(
        env.log("redirect", "talk"),
        "to-out\n",
        "the log has it too"
    );
    // Dagu opens these files for appending: a second run adds to them.
    assert_eq!(env.start("redirect.yaml"), 0);
    assert_eq!(env.read("w/copy.out"), "to-out\nto-out\n");
    assert_eq!(env.read("errors.txt"), "to-err\nto-err\n");
}

// ---------------------------------------------------------------------------------------
// 2. the default shell: `$SHELL -e -c`, else `sh`

/// A shell that records its arguments, then behaves as `/bin/sh`; kept as `rec/sh`, since
/// Dagu gives `-e` only to shells it knows by name.
const RECORDING_SHELL: &str =
    "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$RECORD\"\nexec /bin/sh \"$@\"\n";

#[test]
fn the_default_shell_is_the_callers_shell_with_errexit() {
    let env = Env::new(&[
        ("rec/sh", RECORDING_SHELL),
        (
            "errexit.yaml",
            "name: errexit\nenv:\n  - RECORD: args.txt\nsteps:\n  \
             - name: stops\n    command: false; echo after > after.txt\n",
        ),
        (
            "own.yaml",
            "name: own\nsteps:\n  - name: own\n    shell: /bin/sh\n    \
             command: false; echo went-on > own.txt\n",
        ),
    ]);
    make_executable(&env.path("rec/sh"));
    let shell = env.path("rec/sh").display().to_string();
    let out = env
        .command()
        .env("SHELL", &shell)
        .args(["start", "-q", "errexit.yaml"])
        .output()
        .expect("run");
    assert_eq!(code(&out), 1, "`-e` stops at `false`");
    assert_eq!(
        env.read("args.txt"),
        "-e\n-c\nfalse; echo after > after.txt\n"
    );
    assert!(!env.path("after.txt").exists());
    // A step that names its own shell gets no `-e` (Dagu).
    assert_eq!(env.start("own.yaml"), 0);
    assert_eq!(env.read("own.txt"), "went-on\n");
}

#[test]
fn without_shell_set_the_default_shell_is_sh() {
    let env = Env::new(&[(
        "zero.yaml",
        "name: zero\nsteps:\n  - name: which\n    command: echo \"$0\" > zero.txt\n",
    )]);
    let out = env
        .command()
        .env_remove("SHELL")
        .args(["start", "-q", "zero.yaml"])
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // `sh` found on PATH (Dagu's `exec.LookPath("sh")`), so `$0` is its path.
    let zero = env.read("zero.txt");
    let name = Path::new(zero.trim()).file_name();
    assert_eq!(name.and_then(|n| n.to_str()), Some("sh"), "{zero}");
}

#[test]
fn a_dag_level_shell_still_gets_errexit() {
    let env = Env::new(&[
        ("rec/sh", RECORDING_SHELL),
        (
            "dagshell.yaml",
            "name: dagshell\nshell: ./rec/sh\nenv:\n  - RECORD: args.txt\nsteps:\n  \
             - name: stops\n    command: false; echo after > after.txt\n",
        ),
    ]);
    make_executable(&env.path("rec/sh"));
    assert_eq!(env.start("dagshell.yaml"), 1);
    assert_eq!(
        env.read("args.txt"),
        "-e\n-c\nfalse; echo after > after.txt\n"
    );
}

// ---------------------------------------------------------------------------------------
// 3. working directories

#[test]
fn working_dirs_resolve_against_the_dag_file_and_are_created() {
    let env = Env::new(&[(
        "dags/wd.yaml",
        "name: wd\nworking_dir: out\nsteps:\n  - name: top\n    command: pwd > here.txt\n  \
         - name: nested\n    working_dir: sub/deeper\n    command: pwd > here.txt\n  \
         - name: onfile\n    working_dir: afile\n    command: pwd\n",
    )]);
    // Run from the work dir: `out` is taken against the file's directory, not this one.
    env.write("dags/out/afile", "not a directory\n");
    assert_eq!(env.start("dags/wd.yaml"), 1);
    let out = env.path("dags/out").canonicalize().expect("out created");
    assert_eq!(
        env.read("dags/out/here.txt").trim(),
        out.display().to_string()
    );
    assert_eq!(
        env.read("dags/out/sub/deeper/here.txt").trim(),
        out.join("sub/deeper").display().to_string()
    );
    let run = env.status("wd");
    let onfile = step(&run, "onfile");
    assert_eq!(onfile["status"], "failed");
    let error = error_of(onfile);
    assert!(
        error.contains("working directory") && error.contains("afile"),
        "the error names the directory: {error}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. a step's own env wins over the DAG's

#[test]
fn a_steps_env_wins_over_the_dags_except_in_its_working_dir() {
    let env = Env::new(&[(
        "who.yaml",
        "name: who\nenv:\n  - WHO: dag\nsteps:\n  - name: cmd\n    env:\n      - WHO: step\n    \
         working_dir: ${WHO}-dir\n    stdout: ${WHO}.log\n    \
         command: echo \"${WHO} $WHO\" > who.txt\n  \
         - name: scr\n    env:\n      - WHO: step\n    script: |\n      echo \"${WHO}\" > who-script.txt\n",
    )]);
    assert_eq!(env.start("who.yaml"), 0);
    // Dagu expands a step's working_dir with the DAG's variables only.
    assert_eq!(env.read("dag-dir/who.txt"), "step step\n");
    assert!(env.path("dag-dir/step.log").exists());
    assert_eq!(env.read("who-script.txt"), "step\n");
}

// ---------------------------------------------------------------------------------------
// 5. repeat_policy sees the output the step has just captured

const COUNTER: &str = "n=$(cat $F 2>/dev/null || echo 0); n=$((n+1)); echo $n > $F; echo $n";

#[test]
fn repeat_until_and_while_read_the_output_just_captured() {
    let yaml = format!(
        "name: rep\ntype: graph\nsteps:\n  - name: until\n    env:\n      - F: u.txt\n    \
         command: {COUNTER}\n    output: UOUT\n    repeat_policy:\n      repeat: until\n      \
         condition: \"${{UOUT}}\"\n      expected: \"3\"\n      limit: 10\n      interval_sec: 0\n  \
         - name: while\n    env:\n      - F: w.txt\n    command: {COUNTER}\n    output: WOUT\n    \
         repeat_policy:\n      repeat: while\n      condition: \"${{WOUT}}\"\n      \
         expected: \"re:^[12]$\"\n      limit: 10\n      interval_sec: 0\n"
    );
    let env = Env::new(&[("rep.yaml", &yaml)]);
    assert_eq!(env.start("rep.yaml"), 0);
    assert_eq!(env.read("u.txt"), "3\n", "until stops once the output is 3");
    assert_eq!(
        env.read("w.txt"),
        "3\n",
        "while stops once the output is not 1 or 2"
    );
    let run = env.status("rep");
    assert_eq!(run["outputs"]["UOUT"], "3");
    assert_eq!(run["outputs"]["WOUT"], "3");
}

// ---------------------------------------------------------------------------------------
// 6. output beyond max_output_size fails the step

#[test]
fn output_beyond_max_output_size_fails_the_step_and_the_log_keeps_it() {
    let env = Env::new(&[(
        "big.yaml",
        "name: big\ntype: graph\nmax_output_size: 1000\nsteps:\n  - name: flood\n    \
         command: head -c 1500 /dev/zero | tr '\\0' x\n    output: FLOOD\n  \
         - name: exact\n    command: head -c 999 /dev/zero | tr '\\0' y; echo\n    output: EXACT\n  \
         - name: uncaptured\n    command: head -c 1500 /dev/zero | tr '\\0' z\n",
    )]);
    assert_eq!(env.start("big.yaml"), 1);
    let run = env.status("big");
    let flood = step(&run, "flood");
    assert_eq!(flood["status"], "failed");
    assert_eq!(
        error_of(flood),
        "failed to capture output: output exceeded maximum size limit of 1000 bytes"
    );
    assert_eq!(flood["exit_code"], 0, "the process itself succeeded");
    assert!(run["outputs"].get("FLOOD").is_none(), "{run:#}");
    assert_eq!(
        env.log("big", "flood").len(),
        1500,
        "the log keeps everything"
    );
    // Exactly the limit (newline included) passes; without `output:` nothing is capped.
    assert_eq!(step(&run, "exact")["status"], "succeeded");
    assert_eq!(run["outputs"]["EXACT"].as_str().map(str::len), Some(999));
    assert_eq!(step(&run, "uncaptured")["status"], "succeeded");
}

// ---------------------------------------------------------------------------------------
// 7. a parallel call's aggregate output

#[test]
fn a_parallel_call_publishes_dagus_aggregate_json() {
    let env = Env::new(&[(
        "fan.yaml",
        r#"name: fan
steps:
  - name: fan-out
    call: child-with-output
    parallel:
      items: [A, B]
    params: "ITEM=${ITEM}"
    output: RESULTS
  - name: use
    command: echo "${RESULTS.summary.total} ${RESULTS.summary.succeeded} ${RESULTS.summary.failed} ${RESULTS.outputs[1].TASK_OUTPUT}" > used.txt
---
name: child-with-output
params:
  - ITEM: none
steps:
  - name: work
    command: echo "Processing task ${ITEM}"
    output: TASK_OUTPUT
"#,
    )]);
    assert_eq!(env.start("fan.yaml"), 0);
    assert_eq!(env.read("used.txt"), "2 2 0 Processing task B\n");
    let run = env.status("fan");
    let logged = env.log("fan", "fan-out");
    assert!(
        logged.starts_with("{\n  \"summary\": {\n    \"total\": 2,"),
        "{logged}"
    );
    let aggregate: Value = serde_json::from_str(&logged).expect("the log is the JSON");
    assert_eq!(
        run["outputs"]["RESULTS"],
        logged.trim(),
        "the output is the log, trimmed"
    );
    let keys =
        |v: &Value| -> Vec<String> { v.as_object().expect("object").keys().cloned().collect() };
    assert_eq!(keys(&aggregate), ["summary", "results", "outputs"]);
    let results = aggregate["results"].as_array().expect("results");
    assert_eq!(
        keys(&results[0]),
        ["name", "dagRunId", "params", "outputs", "status"]
    );
    assert_eq!(results[0]["name"], "child-with-output");
    assert_eq!(results[0]["params"], "ITEM=A");
    assert_eq!(results[1]["status"], "succeeded");
    assert_eq!(results[1]["outputs"]["TASK_OUTPUT"], "Processing task B");
    assert_eq!(
        aggregate["outputs"],
        serde_json::json!([
            {"TASK_OUTPUT": "Processing task A"},
            {"TASK_OUTPUT": "Processing task B"}
        ])
    );
}
