//! End-to-end tests of running workflows with the real `trellis` binary: each test gets its
//! own `TRELLIS_HOME` and work directory, writes its YAML inline, and checks what a user
//! sees — exit codes and the `trellis status --json` contract. Background runs are awaited
//! by polling `status --json` against a deadline, never by a fixed sleep.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

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
        std::fs::write(self.path(name), text).expect("write file");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("trellis")
            .expect("trellis binary")
            .args(args)
            .current_dir(self.work.path())
            .env("TRELLIS_HOME", self.home.path())
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run trellis")
    }

    /// `trellis start -q FILE ARGS...`; returns the exit code.
    fn start(&self, file: &str, args: &[&str]) -> i32 {
        let out = self.run(&[&["start", "-q", file], args].concat());
        code(&out)
    }

    /// `trellis status NAME --json`, which must succeed.
    fn status(&self, name: &str) -> Value {
        let out = self.run(&["status", name, "--json"]);
        assert_eq!(code(&out), 0, "status {name}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Starts `trellis start FILE` in the background.
    fn spawn(&self, file: &str) -> Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("trellis"))
            .args(["start", "-q", file])
            .current_dir(self.work.path())
            .env("TRELLIS_HOME", self.home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn trellis start")
    }

    /// Polls `status --json` until `ready` holds (a run may not be recorded yet).
    fn wait_for(&self, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["status", name, "--json"]);
            if code(&out) == 0 {
                let run: Value = serde_json::from_slice(&out.stdout).expect("JSON");
                if ready(&run) {
                    return run;
                }
            }
            assert!(Instant::now() < deadline, "{name} never got ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the long-running test DAG's first step runs and wrote its child's pid.
    fn wait_running(&self, name: &str) -> i32 {
        self.wait_for(name, |r| {
            r["status"] == "running" && step(r, "sleeper")["status"] == "running"
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(pid) = self.read("child.pid").trim().parse() {
                return pid;
            }
            assert!(Instant::now() < deadline, "the step never wrote its pid");
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// `name=status` of every step, in order.
fn statuses(run: &Value) -> Vec<String> {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["name"].as_str().unwrap(),
                s["status"].as_str().unwrap()
            )
        })
        .collect()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or_default().trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// Signal delivery is asynchronous: give the kernel until a deadline.
fn assert_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "process {pid} survived");
}

/// Waits for a background `trellis` to exit, with a deadline.
fn exit_code_of(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("trellis did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A run that blocks in its first step; its child `sleep` writes its pid.
const LONG: &str = "\
name: long
steps:
  - name: sleeper
    command: sleep 30 & echo $! > child.pid; wait
  - name: next
    command: echo next
";

// ---------------------------------------------------------------------------------------
// order and dependencies

#[test]
fn chain_runs_steps_in_file_order() {
    let env = Env::new(&[(
        "chain.yaml",
        "name: chain\nsteps:\n  - name: a\n    command: sleep 0.2; echo a >> order.txt\n  \
         - name: b\n    command: echo b >> order.txt\n  - echo c >> order.txt\n",
    )]);
    assert_eq!(env.start("chain.yaml", &[]), 0);
    assert_eq!(env.read("order.txt"), "a\nb\nc\n");
    let run = env.status("chain");
    assert_eq!(run["name"], "chain");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps"].as_array().unwrap().len(), 3);
    assert!(
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded")
    );
}

#[test]
fn depends_without_type_is_a_graph() {
    // As a chain, `b` would wait for `a`; as a graph it starts at once and finishes first.
    let env = Env::new(&[(
        "g.yaml",
        "name: g\nsteps:\n  - name: a\n    command: sleep 0.5; echo a >> order.txt\n  \
         - name: b\n    command: echo b >> order.txt\n  \
         - name: c\n    depends: [a, b]\n    command: echo c >> order.txt\n",
    )]);
    assert_eq!(env.start("g.yaml", &[]), 0);
    assert_eq!(env.read("order.txt"), "b\na\nc\n");
    assert_eq!(env.status("g")["status"], "succeeded");
}

#[test]
fn a_failed_dependency_aborts_its_dependents() {
    let env = Env::new(&[(
        "f.yaml",
        "name: f\ntype: graph\nsteps:\n  - name: a\n    command: exit 3\n  \
         - name: b\n    command: echo b\n  - name: c\n    depends: [a, b]\n    command: echo c\n  \
         - name: d\n    depends: c\n    command: echo d\n",
    )]);
    assert_eq!(env.start("f.yaml", &[]), 1);
    let run = env.status("f");
    assert_eq!(run["status"], "failed");
    assert_eq!(
        statuses(&run),
        ["a=failed", "b=succeeded", "c=aborted", "d=aborted"]
    );
    assert_eq!(step(&run, "a")["exit_code"], 3);
    assert!(error_of(&run).contains("step a"), "{run:#}");
}

#[test]
fn a_skipped_step_skips_dependents_unless_continue_on_skipped() {
    let env = Env::new(&[(
        "sk.yaml",
        "name: sk\ntype: graph\nsteps:\n  - name: a\n    command: echo a\n    preconditions:\n      \
         - condition: \"no\"\n        expected: \"yes\"\n  - name: b\n    depends: a\n    command: echo b\n  \
         - name: c\n    command: echo c\n    preconditions:\n      - condition: \"false\"\n    \
         continue_on:\n      skipped: true\n  - name: d\n    depends: c\n    command: echo d\n",
    )]);
    assert_eq!(env.start("sk.yaml", &[]), 0);
    let run = env.status("sk");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        statuses(&run),
        ["a=skipped", "b=skipped", "c=skipped", "d=succeeded"]
    );
}

#[test]
fn partial_success_needs_a_succeeded_step() {
    let bad = "  - name: bad\n    command: exit 1\n    continue_on:\n      failure: true\n";
    let env = Env::new(&[
        (
            "p1.yaml",
            &format!("name: p1\nsteps:\n{bad}  - name: good\n    command: \"true\"\n"),
        ),
        ("p2.yaml", &format!("name: p2\nsteps:\n{bad}")),
    ]);
    assert_eq!(env.start("p1.yaml", &[]), 0);
    let run = env.status("p1");
    assert_eq!(run["status"], "partially_succeeded");
    assert_eq!(statuses(&run), ["bad=failed", "good=succeeded"]);
    assert_eq!(env.start("p2.yaml", &[]), 1);
    assert_eq!(env.status("p2")["status"], "failed");
}

#[test]
fn mark_success_and_continue_on_exit_code() {
    let env = Env::new(&[
        (
            "ok.yaml",
            "name: ok\nsteps:\n  - name: ms\n    command: exit 4\n    continue_on:\n      \
             failure: true\n      mark_success: true\n  - name: ec\n    command: exit 7\n    \
             continue_on:\n      exit_code: [7]\n  - name: after\n    command: echo after\n",
        ),
        (
            "strict.yaml",
            "name: strict\nsteps:\n  - name: ec\n    command: exit 8\n    continue_on:\n      \
             exit_code: [7]\n  - name: after\n    command: echo after\n",
        ),
    ]);
    assert_eq!(env.start("ok.yaml", &[]), 0);
    let run = env.status("ok");
    assert_eq!(run["status"], "partially_succeeded");
    assert_eq!(
        statuses(&run),
        ["ms=succeeded", "ec=failed", "after=succeeded"]
    );
    assert_eq!(step(&run, "ec")["exit_code"], 7);
    assert_eq!(env.start("strict.yaml", &[]), 1);
    let run = env.status("strict");
    assert_eq!(statuses(&run), ["ec=failed", "after=aborted"]);
}

// ---------------------------------------------------------------------------------------
// retries, repeats, timeouts

#[test]
fn retry_policy_counts_and_filters_by_exit_code_and_repeat_stops_at_limit() {
    let env = Env::new(&[(
        "r.yaml",
        "name: r\ntype: graph\nsteps:\n  - name: flaky\n    \
         command: n=$(cat cnt 2>/dev/null || echo 0); n=$((n+1)); echo $n > cnt; [ $n -ge 3 ]\n    \
         retry_policy:\n      limit: 5\n      interval_sec: 0\n  \
         - name: other-code\n    command: echo x >> nm; exit 2\n    retry_policy:\n      \
         limit: 3\n      interval_sec: 0\n      exit_code: [75]\n  \
         - name: rep\n    command: echo r >> rp\n    repeat_policy:\n      repeat: while\n      \
         exit_code: [0]\n      limit: 3\n      interval_sec: 0\n",
    )]);
    assert_eq!(env.start("r.yaml", &[]), 1);
    let run = env.status("r");
    let flaky = step(&run, "flaky");
    assert_eq!(
        (flaky["status"].as_str(), flaky["retry_count"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    assert_eq!(env.read("cnt").trim(), "3");
    let other = step(&run, "other-code");
    assert_eq!(other["status"], "failed");
    assert_eq!(other["retry_count"], 0);
    assert_eq!(other["exit_code"], 2);
    assert_eq!(
        env.read("nm").lines().count(),
        1,
        "exit 2 is not in exit_code [75]"
    );
    assert_eq!(step(&run, "rep")["status"], "succeeded");
    assert_eq!(env.read("rp").lines().count(), 3);
}

#[test]
fn step_timeout_fails_the_step_and_kills_its_children() {
    let env = Env::new(&[(
        "t.yaml",
        "name: t\nsteps:\n  - name: slow\n    command: sleep 30 & echo $! > child.pid; wait\n    \
         timeout_sec: 1\n",
    )]);
    let began = Instant::now();
    assert_eq!(env.start("t.yaml", &[]), 1);
    assert!(began.elapsed() < Duration::from_secs(20));
    let run = env.status("t");
    assert_eq!(run["status"], "failed");
    let slow = step(&run, "slow");
    assert_eq!(slow["status"], "failed");
    assert!(error_of(slow).contains("timed out"), "{slow:#}");
    assert!(error_of(&run).contains("timed out"), "{run:#}");
    assert_gone(env.read("child.pid").trim().parse().expect("pid"));
}

// ---------------------------------------------------------------------------------------
// handlers

#[test]
fn a_failed_init_handler_aborts_the_run_and_on_exit_still_runs() {
    let env = Env::new(&[(
        "h.yaml",
        "name: h\nhandler_on:\n  init:\n    command: exit 1\n  exit:\n    \
         command: echo exit-ran $DAG_RUN_STATUS\n    output: EX\nsteps:\n  - name: a\n    command: echo a\n",
    )]);
    assert_eq!(env.start("h.yaml", &[]), 1);
    let run = env.status("h");
    assert_eq!(run["status"], "aborted");
    assert_eq!(statuses(&run), ["a=not_started"]);
    assert_eq!(run["handlers"]["on_init"]["status"], "failed");
    assert_eq!(run["handlers"]["on_exit"]["name"], "onExit");
    assert_eq!(run["handlers"]["on_exit"]["status"], "succeeded");
    assert_eq!(run["handlers"]["on_exit"]["output"], "exit-ran aborted");
}

#[test]
fn success_and_failure_handlers_see_the_run_status() {
    let env = Env::new(&[(
        "h2.yaml",
        "name: h2\nparams:\n  - FAIL: \"0\"\nhandler_on:\n  success:\n    command: echo \"ok:$DAG_RUN_STATUS\"\n    \
         output: S\n  failure:\n    command: echo \"bad:${DAG_RUN_STATUS}\"\n    output: F\n  exit:\n    \
         command: echo \"exit:$DAG_RUN_STATUS\"\n    output: E\nsteps:\n  - name: a\n    command: exit ${FAIL}\n",
    )]);
    assert_eq!(env.start("h2.yaml", &[]), 0);
    let run = env.status("h2");
    let h = &run["handlers"];
    assert_eq!(
        (
            h["on_success"]["status"].as_str(),
            h["on_success"]["output"].as_str()
        ),
        (Some("succeeded"), Some("ok:succeeded"))
    );
    assert_eq!(h["on_exit"]["output"], "exit:succeeded");
    assert!(h.get("on_failure").is_none(), "{h:#}");

    assert_eq!(env.start("h2.yaml", &["--params", "FAIL=1"]), 1);
    let run = env.status("h2");
    let h = &run["handlers"];
    assert_eq!(h["on_failure"]["output"], "bad:failed");
    assert_eq!(h["on_exit"]["output"], "exit:failed");
    assert!(h.get("on_success").is_none(), "{h:#}");
    let log = env.run(&["logs", "h2", "--step", "onExit"]);
    assert_eq!(text(&log.stdout), "exit:failed\n");
}

// ---------------------------------------------------------------------------------------
// outputs and variables

#[test]
fn outputs_flow_between_steps() {
    let env = Env::new(&[(
        "outputs.yaml",
        r#"name: outputs
type: graph
steps:
  - name: config
    id: cfg
    command: echo '{"db":{"host":"dbhost","port":5432}}'
    output: CONFIG
  - name: word
    command: echo abcdefghij
    output: WORD
  - name: code
    command: exit 3
    continue_on:
      exit_code: [3]
      mark_success: true
  - name: shaped
    command: echo '{"svc":{"name":"cache","tags":["a","b"]}}'
    output:
      svc_name: {from: stdout, decode: json, select: .svc.name}
      tag: {from: stdout, decode: json, select: .svc.tags.1}
  - name: use
    depends: [config, word, code, shaped]
    command: echo "host=${CONFIG.db.host} port=${CONFIG.db.port} code=${code.exitCode} head=${WORD:0:5} svc=${shaped.output.svc_name} tag=${shaped.output.tag}"
    output: RESULT
  - name: raw
    depends: config
    command: printf '%s\n' '${cfg.output}'
    output: RAW
  - name: special
    command: echo "$DAG_NAME|$DAG_RUN_ID|$DAG_RUN_STEP_NAME|$DAG_RUN_STEP_STDOUT_FILE"
    output: SPECIAL
"#,
    )]);
    assert_eq!(env.start("outputs.yaml", &[]), 0);
    let run = env.status("outputs");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &run["outputs"];
    assert_eq!(
        out["RESULT"],
        "host=dbhost port=5432 code=3 head=abcde svc=cache tag=b"
    );
    assert_eq!(step(&run, "use")["output"], out["RESULT"]);
    assert_eq!(out["RAW"], r#"{"db":{"host":"dbhost","port":5432}}"#);
    let special: Vec<&str> = out["SPECIAL"].as_str().unwrap().split('|').collect();
    assert_eq!(special.len(), 4, "{special:?}");
    assert_eq!(special[0], "outputs");
    assert_eq!(special[1], run["run_id"].as_str().unwrap());
    assert_eq!(special[2], "special");
    assert!(
        !special[3].is_empty() && Path::new(special[3]).is_file(),
        "{special:?}"
    );
}

#[test]
fn params_from_the_command_line_and_positional_args() {
    let env = Env::new(&[
        (
            "p.yaml",
            "name: p\nparams:\n  - NAME: world\nsteps:\n  - name: greet\n    \
             command: echo hello ${NAME} $1 $2\n    output: G\n",
        ),
        (
            "req.yaml",
            "name: req\nparams:\n  - name: TARGET\n    required: true\nsteps:\n  - name: a\n    command: echo ${TARGET}\n",
        ),
    ]);
    assert_eq!(env.start("p.yaml", &[]), 0);
    assert_eq!(env.status("p")["outputs"]["G"], "hello world");
    assert_eq!(
        env.start("p.yaml", &["--params", "NAME=bob", "--", "x", "y"]),
        0
    );
    let run = env.status("p");
    assert_eq!(run["outputs"]["G"], "hello bob x y");

    let out = env.run(&["start", "req.yaml"]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("TARGET"),
        "{}",
        text(&out.stderr)
    );
    let status = env.run(&["status", "req", "--json"]);
    assert_ne!(code(&status), 0, "no run was recorded");
    assert!(status.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------
// sub-DAGs, approval, router

#[test]
fn call_passes_params_and_returns_outputs() {
    let env = Env::new(&[(
        "sub.yaml",
        r#"name: sub
steps:
  - name: child
    call: worker
    params:
      WHO: alice
    output: OUT
  - name: use
    command: echo "got ${OUT.outputs.GREETING}"
    output: USED
  - name: fan
    call: worker
    parallel:
      items: [a, b, c, d]
      max_concurrent: 2
    params: WHO=${ITEM}
---
name: worker
params:
  - WHO: nobody
steps:
  - name: greet
    command: echo "start ${WHO}" >> spans.txt; sleep 0.3; echo "end ${WHO}" >> spans.txt; echo "hi ${WHO}"
    output: GREETING
"#,
    )]);
    assert_eq!(env.start("sub.yaml", &[]), 0);
    let run = env.status("sub");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["USED"], "got hi alice");
    let fan: Value =
        serde_json::from_str(step(&run, "fan")["output"].as_str().unwrap_or("{}")).unwrap();
    let mut greetings: Vec<&str> = fan["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["GREETING"].as_str().unwrap())
        .collect();
    greetings.sort();
    assert_eq!(greetings, ["hi a", "hi b", "hi c", "hi d"]);
    // Replay the start/end lines of the fan-out children: never more than 2 at once.
    let (mut now, mut most, mut seen) = (0i32, 0, 0);
    for line in env
        .read("spans.txt")
        .lines()
        .filter(|l| !l.ends_with("alice"))
    {
        now += if line.starts_with("start") { 1 } else { -1 };
        most = most.max(now);
        seen += 1;
    }
    assert_eq!(seen, 8);
    assert!(most <= 2, "{most} children ran at once");
}

#[test]
fn calling_a_missing_sub_dag_fails_naming_it() {
    let env = Env::new(&[(
        "ms.yaml",
        "name: ms\nsteps:\n  - name: c\n    call: nowhere-to-be-found\n",
    )]);
    assert_eq!(env.start("ms.yaml", &[]), 1);
    let run = env.status("ms");
    assert_eq!(run["status"], "failed");
    assert_eq!(step(&run, "c")["status"], "failed");
    assert!(error_of(&run).contains("nowhere-to-be-found"), "{run:#}");
}

#[test]
fn an_approval_step_leaves_the_run_waiting() {
    let env = Env::new(&[(
        "ap.yaml",
        "name: ap\nsteps:\n  - name: gate\n    command: echo asking\n    approval:\n      prompt: ok?\n  \
         - name: after\n    command: echo after\n",
    )]);
    assert_eq!(env.start("ap.yaml", &[]), 1);
    let run = env.status("ap");
    assert_eq!(run["status"], "waiting");
    assert_eq!(statuses(&run), ["gate=waiting", "after=not_started"]);
}

#[test]
fn a_router_runs_only_the_matching_route() {
    let env = Env::new(&[(
        "rt.yaml",
        "name: rt\nparams:\n  - LEVEL: high\nsteps:\n  - name: route\n    type: router\n    value: ${LEVEL}\n    \
         routes:\n      low: [cheap]\n      \"re:^hi\": [pricey]\n  - name: cheap\n    command: echo cheap\n  \
         - name: pricey\n    command: echo pricey\n",
    )]);
    assert_eq!(env.start("rt.yaml", &[]), 0);
    assert_eq!(
        statuses(&env.status("rt")),
        ["route=succeeded", "cheap=skipped", "pricey=succeeded"]
    );
    assert_eq!(env.start("rt.yaml", &["-p", "LEVEL=low"]), 0);
    assert_eq!(
        statuses(&env.status("rt")),
        ["route=succeeded", "cheap=succeeded", "pricey=skipped"]
    );
}

// ---------------------------------------------------------------------------------------
// bad input and scale

#[test]
fn missing_commands_and_programs_fail_with_the_reason() {
    let env = Env::new(&[(
        "bad.yaml",
        "name: bad\ntype: graph\nsteps:\n  - name: nf\n    command: definitely-not-a-command-xyz --flag\n  \
         - name: ex\n    exec:\n      command: /nonexistent/program-xyz\n",
    )]);
    assert_eq!(env.start("bad.yaml", &[]), 1);
    let run = env.status("bad");
    assert_eq!(run["status"], "failed");
    assert_eq!(step(&run, "nf")["status"], "failed");
    assert_eq!(step(&run, "nf")["exit_code"], 127);
    assert!(error_of(&run).contains("not found"), "{run:#}");
    let ex = step(&run, "ex");
    assert_eq!(ex["status"], "failed");
    assert!(error_of(ex).contains("No such file"), "{ex:#}");
}

#[test]
fn huge_stdout_completes_and_fails_a_step_capturing_it() {
    let env = Env::new(&[(
        "big.yaml",
        "name: big\nmax_output_size: 1000\nsteps:\n  - name: flood\n    \
         command: head -c 2000000 /dev/zero | tr '\\0' x\n    output: FLOOD\n",
    )]);
    assert_eq!(env.start("big.yaml", &[]), 1);
    let run = env.status("big");
    let flood = step(&run, "flood");
    assert_eq!(flood["status"], "failed");
    assert_eq!(
        error_of(flood),
        "failed to capture output: output exceeded maximum size limit of 1000 bytes"
    );
    assert!(run["outputs"].get("FLOOD").is_none(), "{run:#}");
    // The log keeps everything.
    let log = env.run(&["logs", "big", "--step", "flood"]);
    assert_eq!(log.stdout.len(), 2_000_000);
}

#[test]
fn a_5000_wide_fan_out_succeeds() {
    let mut yaml = String::from("name: wide\ntype: graph\nsteps:\n");
    for i in 0..5000 {
        yaml.push_str(&format!("  - name: s{i}\n    command: \"true\"\n"));
    }
    let deps: Vec<String> = (0..5000).map(|i| format!("s{i}")).collect();
    yaml.push_str(&format!(
        "  - name: join\n    depends: [{}]\n    command: echo joined\n    output: J\n",
        deps.join(", ")
    ));
    let env = Env::new(&[("wide.yaml", &yaml)]);
    assert_eq!(env.start("wide.yaml", &[]), 0);
    let run = env.status("wide");
    assert_eq!(run["status"], "succeeded");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5001);
    assert!(steps.iter().all(|s| s["status"] == "succeeded"));
    assert_eq!(run["outputs"]["J"], "joined");
}

// ---------------------------------------------------------------------------------------
// signals and crashes

#[test]
fn sigint_cancels_the_run_and_kills_its_children() {
    let env = Env::new(&[("long.yaml", LONG)]);
    let mut child = env.spawn("long.yaml");
    let pid = env.wait_running("long");
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(sent.expect("kill").success());
    assert_eq!(exit_code_of(&mut child), Some(1));
    let run = env.status("long");
    assert_eq!(run["status"], "cancelled");
    assert_eq!(step(&run, "sleeper")["status"], "cancelled");
    assert_eq!(step(&run, "next")["status"], "cancelled");
    assert_gone(pid);
}

#[test]
fn stop_cancels_a_running_run() {
    let env = Env::new(&[("long.yaml", LONG)]);
    let mut child = env.spawn("long.yaml");
    let pid = env.wait_running("long");
    let out = env.run(&["stop", "long"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cancelled"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(exit_code_of(&mut child), Some(1));
    assert_eq!(env.status("long")["status"], "cancelled");
    assert_gone(pid);
}

#[test]
fn a_killed_run_is_reported_as_died_not_running() {
    let env = Env::new(&[("long.yaml", LONG)]);
    let mut child = env.spawn("long.yaml");
    let pid = env.wait_running("long");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let run = env.status("long");
    // The orphaned `sleep` has its own process group; clean it up before asserting.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"], "process died");
    assert!(!run.to_string().contains("\"running\""), "{run:#}");
}

// ---------------------------------------------------------------------------------------
// retry, restart, history, logs

#[test]
fn retry_keeps_the_run_id_and_reruns_only_what_failed() {
    let env = Env::new(&[(
        "rty.yaml",
        "name: rty\nsteps:\n  - name: count\n    command: echo run >> counter.txt\n  \
         - name: check\n    command: test -f flag.txt\n  - name: last\n    command: echo last >> last.txt\n",
    )]);
    assert_eq!(env.start("rty.yaml", &[]), 1);
    let first = env.status("rty");
    assert_eq!(
        statuses(&first),
        ["count=succeeded", "check=failed", "last=aborted"]
    );
    let id = first["run_id"].as_str().unwrap().to_string();

    env.write("flag.txt", "");
    let out = env.run(&["retry", "rty", "--run-id", &id, "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let run = env.status("rty");
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        env.read("counter.txt").lines().count(),
        1,
        "count ran again"
    );
    assert_eq!(env.read("last.txt").lines().count(), 1);

    let out = env.run(&["retry", "rty", "--run-id", &id, "--step", "check", "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(env.status("rty")["run_id"], id.as_str());
    assert_eq!(env.read("counter.txt").lines().count(), 1);
    assert_eq!(
        env.read("last.txt").lines().count(),
        2,
        "steps after --step run again"
    );

    let out = env.run(&["restart", "rty"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let restarted = env.status("rty");
    assert_ne!(restarted["run_id"], id.as_str());
    assert_eq!(restarted["status"], "succeeded");
    assert_eq!(env.read("counter.txt").lines().count(), 2);

    let out = env.run(&["history", "rty", "--json"]);
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("history JSON");
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [restarted["run_id"].as_str().unwrap(), id.as_str()],
        "newest first"
    );
}

/// `${step.stdout}` and `${step.stderr}` name the step's log files, by id or by name;
/// after a retry, a step carried over from the first attempt still names its own files.
#[test]
fn step_log_paths_by_id_and_name_survive_a_retry() {
    let env = Env::new(&[(
        "logs.yaml",
        "name: logs\nsteps:\n  - name: speak\n    id: sp\n    command: sh -c 'echo said-out; echo said-err >&2'\n  \
         - name: paths\n    command: echo ${sp.stdout} ${speak.stderr}\n    output: PATHS\n  \
         - name: show\n    command: cat ${sp.stdout} ${speak.stderr}\n    output: SHOWN\n  \
         - name: gate\n    command: test -f flag.txt\n",
    )]);
    assert_eq!(env.start("logs.yaml", &[]), 1);
    let first = env.status("logs");
    assert_eq!(first["outputs"]["SHOWN"], "said-out\nsaid-err", "{first:#}");
    let paths = first["outputs"]["PATHS"].as_str().unwrap().to_string();
    let files: Vec<&str> = paths.split(' ').collect();
    assert!(
        files[0].ends_with("speak.out") && files[1].ends_with("speak.err"),
        "{paths}"
    );
    let id = first["run_id"].as_str().unwrap().to_string();
    env.write("flag.txt", "");
    let out = env.run(&["retry", "logs", "--run-id", &id, "--step", "paths", "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let run = env.status("logs");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["SHOWN"], "said-out\nsaid-err");
    assert_eq!(
        run["outputs"]["PATHS"],
        paths.as_str(),
        "speak's files, not this attempt's"
    );
}

/// A condition's `expected` may get its `re:` from a variable, as in Dagu.
#[test]
fn an_expected_pattern_may_come_from_a_variable() {
    let env = Env::new(&[(
        "pre.yaml",
        r#"name: pre
params: [WANT=re:^ab, EXACT=abc]
steps:
  - name: regex
    command: echo ran
    preconditions:
      - condition: "abcd"
        expected: "${WANT}"
  - name: literal
    command: echo ran
    preconditions:
      - condition: "abcd"
        expected: "${EXACT}"
"#,
    )]);
    env.start("pre.yaml", &[]);
    let run = env.status("pre");
    assert_eq!(step(&run, "regex")["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "literal")["status"], "skipped", "{run:#}");
}

/// Backtick commands in env values see what steps see and run like steps: a secret
/// Trellis was started with (the admin token, the database URL) cannot be read through
/// one, while ordinary variables, earlier env values and params can.
#[test]
fn env_command_substitution_cannot_read_secrets() {
    let env = Env::new(&[(
        "subst.yaml",
        r#"name: subst
params: [WHO=param]
env:
  - FIRST: first
  - TOKEN: "`echo tok=$TRELLIS_AUTH_TOKEN`"
  - DB: "`printf 'db=%s' \"$TRELLIS_DATABASE_URL\"`"
  - SEEN: "`echo $FIRST-$WHO-$SUBST_PLAIN`"
  - KEPT: "x`exit 3`y"
steps:
  - name: show
    command: echo "$TOKEN|$DB|$SEEN|$KEPT"
    output: SHOWN
"#,
    )]);
    let out = Command::cargo_bin("trellis")
        .expect("trellis binary")
        .args(["start", "-q", "subst.yaml"])
        .current_dir(env.work.path())
        .env("TRELLIS_HOME", env.home.path())
        .env("TRELLIS_AUTH_TOKEN", "s3cret-token")
        .env("SUBST_PLAIN", "plain")
        .timeout(Duration::from_secs(60))
        .output()
        .expect("run trellis");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let run = env.status("subst");
    assert_eq!(
        run["outputs"]["SHOWN"], "tok=|db=|first-param-plain|x`exit 3`y",
        "{run:#}"
    );
    let logs = text(&env.run(&["logs", "subst", "--step", "show"]).stdout);
    assert!(!logs.contains("s3cret"), "{logs}");
}

#[test]
fn logs_print_a_steps_stdout_or_stderr() {
    let env = Env::new(&[(
        "q.yaml",
        "name: q\nsteps:\n  - name: a\n    command: echo out-a; echo err-a >&2\n",
    )]);
    assert_eq!(env.start("q.yaml", &[]), 0);
    let out = env.run(&["logs", "q", "--step", "a"]);
    assert_eq!((code(&out), text(&out.stdout)), (0, "out-a\n".to_string()));
    let err = env.run(&["logs", "q", "--step", "a", "--stderr"]);
    assert_eq!(text(&err.stdout), "err-a\n");
}

/// `logs --follow` prints what a running step writes, as it writes it, and ends with
/// the step.
#[test]
fn logs_follow_a_running_step_until_it_ends() {
    use std::io::{BufRead, BufReader, Read};
    let env = Env::new(&[(
        "f.yaml",
        "name: f\nsteps:\n  - name: a\n    command: sh -c 'echo one; while [ ! -e go ]; do sleep 0.05; done; echo two'\n",
    )]);
    let mut run = env.spawn("f.yaml");
    env.wait_for("f", |r| step(r, "a")["status"] == "running");
    let mut follower = std::process::Command::new(assert_cmd::cargo::cargo_bin("trellis"))
        .args(["logs", "f", "--step", "a", "--follow"])
        .current_dir(env.work.path())
        .env("TRELLIS_HOME", env.home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn trellis logs");
    let mut out = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("a first line");
    assert_eq!(first, "one\n");
    // Only now may the step go on: what follows was written after the follower started.
    env.write("go", "");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest");
    assert_eq!(rest, "two\n");
    assert!(follower.wait().expect("wait").success());
    assert_eq!(exit_code_of(&mut run), Some(0));
}

// ---------------------------------------------------------------------------------------
// queue and cleanup

#[test]
fn enqueue_then_dequeue() {
    let env = Env::new(&[(
        "q.yaml",
        "name: q\nsteps:\n  - name: a\n    command: echo a\n",
    )]);
    let out = env.run(&["enqueue", "q.yaml"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(!id.is_empty());
    let run = env.status("q");
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["status"], "queued", "{run:#}");
    let out = env.run(&["dequeue", "q", "--run-id", &id]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let run = env.status("q");
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["status"], "aborted");
}

#[test]
fn cleanup_dry_run_keeps_runs_and_cleanup_removes_them() {
    let env = Env::new(&[(
        "c.yaml",
        "name: c\nsteps:\n  - name: a\n    command: echo a\n",
    )]);
    assert_eq!(env.start("c.yaml", &[]), 0);
    assert_eq!(env.start("c.yaml", &[]), 0);
    let history = |env: &Env| -> Vec<Value> {
        serde_json::from_slice(&env.run(&["history", "c", "--json"]).stdout).expect("JSON")
    };
    let runs = history(&env);
    assert_eq!(runs.len(), 2);
    let out = env.run(&["cleanup", "--retention-days", "0", "--dry-run"]);
    assert_eq!(code(&out), 0);
    for run in &runs {
        assert!(text(&out.stdout).contains(run["run_id"].as_str().unwrap()));
    }
    assert_eq!(history(&env).len(), 2, "a dry run removes nothing");
    let out = env.run(&["cleanup", "--retention-days", "0"]);
    assert_eq!(code(&out), 0);
    assert!(history(&env).is_empty());
    assert_ne!(code(&env.run(&["status", "c"])), 0);
}

// ---------------------------------------------------------------------------------------
// Daggy

#[test]
fn a_daggy_spec_expands_parameters_and_runs_generated_tasks() {
    let env = Env::new(&[(
        "gen.json",
        r#"{
  "parameters": {"SHARD": ["1", "2", "3"]},
  "tasks": {
    "work": {
      "job": {"command": ["/bin/sh", "-c", "echo shard SHARD >> shards.txt"]},
      "children": ["discover"]
    },
    "discover": {
      "job": {"command": ["/bin/sh", "-c", "printf '%s' '{\"extra\": {\"job\": {\"command\": [\"/bin/sh\", \"-c\", \"echo extra >> order.log\"]}}}'"]},
      "is_generator": true,
      "children": ["finish"]
    },
    "finish": {
      "job": {"command": ["/bin/sh", "-c", "echo finish >> order.log"]}
    }
  }
}"#,
    )]);
    assert_eq!(env.start("gen.json", &[]), 0);
    let run = env.status("gen");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let instances: Vec<&Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().contains("SHARD"))
        .collect();
    assert_eq!(instances.len(), 3, "{run:#}");
    assert!(instances.iter().all(|s| s["status"] == "succeeded"));
    let mut shards: Vec<String> = env.read("shards.txt").lines().map(String::from).collect();
    shards.sort();
    assert_eq!(shards, ["shard 1", "shard 2", "shard 3"]);
    assert_eq!(step(&run, "extra")["status"], "succeeded");
    assert_eq!(
        env.read("order.log"),
        "extra\nfinish\n",
        "the generated task runs before the generator's children"
    );
}
