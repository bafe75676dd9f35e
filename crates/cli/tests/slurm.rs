//! `type: slurm` steps against a real single-node Slurm (munged, slurmctld, slurmd) that the
//! tests start once in a temp dir (`trellis_testdb::slurm`): the executor conformance
//! suite, a DAG of slurm steps (resources, env, exit codes, logs, Slurm's own refusals), a
//! `kill -9` of the runner mid-job, reattached by job id, and a Daggy spec's Slurm task. Skipped only where Slurm is not
//! installed; CI installs it (scripts/test), so nothing skips there.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use support::{Env, step};
use trellis_executor::conformance::{self, Programs, Suite};
use trellis_executor::{StepExecutor, Work};
use trellis_testdb::slurm::Slurm;

/// One cluster for the whole file, stopped at the end: the scenarios run in turn in one
/// test, since a static's cluster would never be stopped.
#[test]
fn slurm_steps_end_to_end() {
    if !Slurm::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "slurmctld, slurmd, munge and slurm-client must be installed in CI"
        );
        eprintln!("skipped: Slurm (root) is needed");
        return;
    }
    let slurm = Slurm::start().expect("start slurm");
    // The conformance suite runs the executor in this process.
    for (k, v) in slurm.env() {
        // SAFETY: set before this test starts any thread that reads the environment.
        unsafe { std::env::set_var(k, v) };
    }
    the_slurm_executor_passes_the_suite(&slurm);
    slurm_steps_run_as_jobs_with_logs_exit_codes_and_slurms_refusals(&slurm);
    a_killed_runner_leaves_its_job_and_the_next_one_reattaches(&slurm);
    a_local_dag_runs_on_slurm_by_configuration_alone(&slurm);
    a_daggy_task_with_slurm_details_runs_as_a_job_and_keeps_its_logdir(&slurm);
    daggyd_with_the_slurm_executor_reattaches_its_jobs_after_a_kill_9(&slurm);
}

struct SlurmPrograms<'a> {
    dir: PathBuf,
    slurm: &'a Slurm,
}

impl Programs for SlurmPrograms<'_> {
    fn print(&self, out: &str, err: &str, code: i32) -> Work {
        conformance::sh::print(out, err, code)
    }
    fn await_flag(&self, flag: &str, before: &str, after: &str) -> Work {
        conformance::sh::await_flag(&self.dir, flag, before, after)
    }
    fn sleep(&self) -> Work {
        conformance::sh::sleep()
    }
    fn config(&self) -> Value {
        json!({"partition": "debug"})
    }
    fn flag_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn leftovers(&self) -> Vec<String> {
        let out = self
            .slurm
            .command("squeue")
            .args(["-h", "-o", "%j %T"])
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("slurm-"))
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn the_slurm_executor_passes_the_suite(slurm: &Slurm) {
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = SlurmPrograms {
        dir: dir.path().to_path_buf(),
        slurm,
    };
    let make = || Arc::new(trellis_executor::Slurm) as Arc<dyn StepExecutor>;
    let suite = Suite {
        make: &make,
        programs: &programs,
        logs: dir.path(),
        prefix: "slurm",
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(conformance::run(&suite))
        .expect("conformance");
}

const JOBS: &str = r#"
name: jobs
type: graph
env:
  - RUN_WIDE: everywhere
steps:
  - name: compute
    type: slurm
    with:
      partition: debug
      cpus_per_task: 1
      time: "00:05:00"
      env: {GREETING: hello}
    command: echo "$GREETING $RUN_WIDE job=$SLURM_JOB_ID"; echo oops >&2
    output: SAID
  - name: script
    type: slurm
    script: |
      for word in one two; do echo "$word"; done
    output: WORDS
  - name: exits-four
    type: slurm
    command: exit 4
    continue_on:
      exit_code: [4]
  - name: nowhere
    type: slurm
    with: {partition: no-such-partition}
    command: "true"
    continue_on:
      failure: true
"#;

fn slurm_steps_run_as_jobs_with_logs_exit_codes_and_slurms_refusals(slurm: &Slurm) {
    let env = Env::new();
    let file = env.dag("jobs", JOBS);
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .envs(slurm.env())
        .output()
        .expect("run");
    let run = support::status(&env, "jobs", "").expect("status");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(run["status"], "partially_succeeded", "{run:#}\n{said}");
    let line = run["outputs"]["SAID"].as_str().unwrap_or_default();
    assert!(line.starts_with("hello everywhere job="), "{run:#}");
    assert!(
        line.len() > "hello everywhere job=".len(),
        "a job id: {line}"
    );
    assert_eq!(run["outputs"]["WORDS"], "one\ntwo");
    let stderr = env
        .trellis()
        .args(["logs", "jobs", "--step", "compute", "--stderr"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&stderr.stdout).trim(), "oops");
    assert_eq!(step(&run, "exits-four")["exit_code"], 4, "{run:#}");
    let nowhere = step(&run, "nowhere");
    let error = nowhere["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid partition"),
        "Slurm's own words: {nowhere:#}"
    );
}

/// `kill -9` of the scheduler while a job runs: the job goes on; the next scheduler resumes
/// the run, finds the job by its id and follows it to its exit code and whole log.
fn a_killed_runner_leaves_its_job_and_the_next_one_reattaches(slurm: &Slurm) {
    let env = Env::new();
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let file = env.dag(
        "crash-job",
        &format!(
            "steps:\n  - name: long\n    type: slurm\n    \
             command: echo started >> {0}/starts; echo one; while [ ! -f {0}/go ]; do sleep 0.1; done; echo two; exit 3\n",
            shared.display()
        ),
    );
    let conf = slurm.conf().display().to_string();
    let vars = [("SLURM_CONF", conf.as_str())];
    let mut first = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    support::enqueue(&env, &file);
    support::wait_for(60, "the job to start", || {
        std::fs::read_to_string(shared.join("starts"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    first.kill9();
    let _second = support::Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    std::fs::write(shared.join("go"), "").expect("go");
    let run = support::wait_for(60, "the resumed run to end", || {
        support::status(&env, "crash-job", "")
            .filter(|r| r["status"] == "failed")
            .filter(|r| {
                !r["error"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("process died")
            })
    });
    let long = step(&run, "long");
    assert_eq!(long["exit_code"], 3, "{run:#}");
    let handle = long["handle"].as_str().unwrap_or_default();
    assert!(
        handle.starts_with("slurm:"),
        "the job id is shown: {long:#}"
    );
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "one job, never a second");
    let log = env
        .trellis()
        .args(["logs", "crash-job", "--step", "long"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&log.stdout), "one\ntwo\n");
}

/// A DAG written for this machine runs on Slurm when the config file says so
/// (`executors.default: slurm`), with the config's defaults under each job; nothing in the
/// file changes. A bad default is refused when the config loads.
fn a_local_dag_runs_on_slurm_by_configuration_alone(slurm: &Slurm) {
    let env = Env::new();
    let config = env.config(
        "executors:\n  default: slurm\n  slurm:\n    partition: debug\n    time: \"00:05:00\"\n",
    );
    let file = env.dag(
        "plain",
        "steps:\n  - name: where\n    command: echo \"job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION\"\n    output: WHERE\n",
    );
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .env("TRELLIS_CONFIG", &config)
        .envs(slurm.env())
        .output()
        .expect("run");
    let run = support::status(&env, "plain", "").expect("status");
    assert_eq!(
        run["status"],
        "succeeded",
        "{run:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = run["outputs"]["WHERE"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("job=") && said.ends_with("partition=debug"),
        "{said}"
    );
    assert!(
        said.len() > "job= partition=debug".len(),
        "a job id: {said}"
    );

    let bad = env.config("executors:\n  default: slurm\n  slurm:\n    colour: red\n");
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .env("TRELLIS_CONFIG", &bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("executors.") && said.contains("`colour`"),
        "{said}"
    );
}

/// daggyr's Slurm task details (its executor test's, the token included): the task runs as
/// a Slurm job with the resources asked, its output files stay in `logdir` (and reach the
/// step's logs), and the token is in no record of the run.
fn a_daggy_task_with_slurm_details_runs_as_a_job_and_keeps_its_logdir(slurm: &Slurm) {
    let env = Env::new();
    let logdir = env.path("joblogs");
    let spec = json!({"tasks": {"test_task": {"details": {
        "command": ["/bin/sh", "-c", "echo hello $MYVAR cpus=$SLURM_CPUS_PER_TASK; echo oops >&2"],
        "user": "USERNAME",
        "jwt_token": "TOKEN_FROM_scontrol_token",
        "environment": {"MYVAR": "fancy_pants"},
        "logdir": logdir.display().to_string(),
        "min_cpus": 1, "min_memory_mb": 200, "min_tmp_disk_mb": 0, "priority": 1,
        "time_limit_seconds": 3600
    }}}});
    let file = env.dags().join("daggy-slurm.json");
    std::fs::write(&file, spec.to_string()).expect("spec");
    let out = env
        .trellis()
        .arg("start")
        .arg(&file)
        .envs(slurm.env())
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    let run = support::status(&env, "daggy-slurm", "").expect("status");
    assert_eq!(run["status"], "succeeded", "{run:#}\n{said}");
    let task = step(&run, "test_task");
    assert!(
        task["handle"]
            .as_str()
            .unwrap_or_default()
            .starts_with("slurm:"),
        "{task:#}"
    );
    let files = |ext: &str| -> Vec<String> {
        let entries = std::fs::read_dir(&logdir).expect("logdir");
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    };
    assert_eq!(
        files("stdout"),
        ["hello fancy_pants cpus=1\n"],
        "kept in logdir"
    );
    assert_eq!(files("stderr"), ["oops\n"]);
    let log = env
        .trellis()
        .args(["logs", "daggy-slurm", "--step", "test_task"])
        .output()
        .expect("logs");
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "hello fancy_pants cpus=1\n"
    );
    let records = support::files_holding(env.home.path(), "TOKEN_FROM_scontrol_token");
    assert!(records.is_empty(), "the token is kept in {records:?}");
}

/// `trellis daggyd` with `SlurmTaskExecutor`: every task is a job; a `kill -9` of the
/// daemon leaves the running job alone, and the restarted daemon reattaches to it by its
/// recorded job id (the job runs once) and finishes the run.
fn daggyd_with_the_slurm_executor_reattaches_its_jobs_after_a_kill_9(slurm: &Slurm) {
    let env = Env::new();
    let w = env.work.path().display().to_string();
    let config = json!({"port": 0, "executor": {"name": "SlurmTaskExecutor", "config": {"partition": "debug"}}});
    std::fs::write(env.path("daggyd.json"), config.to_string()).expect("config");
    let conf = slurm.env()[0].1.display().to_string();
    let start = || {
        let args = ["daggyd", "--config", &format!("{w}/daggyd.json")];
        support::Proc::spawn_with(
            &env,
            &args,
            "daggyd listening on ",
            &[("SLURM_CONF", &conf)],
        )
    };
    let mut daemon = start();
    let url = |p: &support::Proc| {
        p.ready_line
            .split("on ")
            .nth(1)
            .expect("addr")
            .trim()
            .trim_end_matches('/')
            .to_string()
    };
    let spec = json!({"tasks": {
        "first": {"details": {"command": ["/bin/sh", "-c", "echo job $SLURM_JOB_ID"]}, "children": ["wait"]},
        "wait": {"details": {"command": ["/bin/sh", "-c", format!("echo ran >> {w}/wait.count; while [ ! -e {w}/go ]; do sleep 0.2; done")], "min_cpus": 1}},
    }});
    let base = url(&daemon);
    let client = support::client();
    let posted: Value = client
        .post(format!("{base}/v1/dagrun"))
        .body(spec.to_string())
        .send()
        .expect("post")
        .json()
        .expect("json");
    let run = posted["runID"].as_u64().expect("runID");
    let state = |base: &str, task: &str| -> Value {
        client
            .get(format!("{base}/v1/dagrun/{run}/task/{task}"))
            .send()
            .expect("get")
            .json()
            .expect("json")
    };
    support::wait_for(60, "the wait job to run", || {
        (state(&base, "wait")["state"] == "Running").then_some(())
    });
    // The job id is on the record before the job is let go.
    support::wait_for(30, "the job's handle", || {
        let run = support::status(&env, "daggy", &format!("daggy-{run}"))?;
        step(&run, "wait")["handle"]
            .as_str()
            .filter(|h| h.starts_with("slurm:"))
            .map(str::to_string)
    });
    daemon.kill9();
    std::fs::write(env.path("go"), "").expect("flag");
    let daemon = start();
    let base = url(&daemon);
    let full: Value = support::wait_for(120, "the run to end", || {
        let full: Value = client
            .get(format!("{base}/v1/dagrun/{run}"))
            .send()
            .ok()?
            .json()
            .ok()?;
        ["Completed", "Errored", "Killed"]
            .contains(&full["state"].as_str()?)
            .then_some(full)
    });
    assert_eq!(full["state"], "Completed", "{full:#}");
    assert!(
        full["taskAttempts"]["first"][0]["output"]
            .as_str()
            .unwrap_or("")
            .starts_with("job "),
        "{full:#}"
    );
    let count = std::fs::read_to_string(env.path("wait.count")).expect("count");
    assert_eq!(
        count, "ran\n",
        "the job was reattached, not submitted again"
    );
}
