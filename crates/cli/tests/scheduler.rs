//! End-to-end tests of `trellis scheduler` with real processes: each test gets its own
//! `TRELLIS_HOME`, dags dir and work dir (`$TRELLIS_TEST_DIR` in the steps), starts real
//! schedulers and checks what they did through files the steps write, the queue and lease
//! files, and `status --json` / `history --json`.
//!
//! Events are awaited by polling against deadlines, never by a fixed sleep alone. Every
//! scheduler started is held by a [`Schedulers`] guard that SIGKILLs it (and the process
//! groups of its steps) when the test ends, panicking or not.
//!
//! The 500-run variant of the queue test is `#[ignore]`d (about a minute):
//! `cargo test -p trellis-cli --test scheduler -- --ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");

// ---------------------------------------------------------------------------------------
// harness

/// A fresh `TRELLIS_HOME`, and a work dir holding `dags/`, config files and whatever the
/// steps write.
struct Env {
    home: TempDir,
    work: TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            home: tempfile::tempdir().expect("home dir"),
            work: tempfile::tempdir().expect("work dir"),
        };
        fs::create_dir_all(env.dags()).expect("dags dir");
        env
    }

    fn dags(&self) -> PathBuf {
        self.work.path().join("dags")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn data(&self) -> PathBuf {
        self.home.path().join("data")
    }

    /// Writes a workflow file whole (temporary name, then rename), as the scheduler may be
    /// reading the directory.
    fn write_dag(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dags().join(file);
        let tmp = self.dags().join(format!(".{file}.tmp"));
        fs::write(&tmp, text).expect("write dag");
        fs::rename(&tmp, &path).expect("rename dag");
        path
    }

    fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("config.yaml");
        fs::write(&path, text).expect("write config");
        path
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(TRELLIS);
        cmd.current_dir(self.work.path())
            .env("TRELLIS_HOME", self.home.path())
            .env("TRELLIS_TEST_DIR", self.work.path())
            .env_remove("TRELLIS_CONFIG")
            .env_remove("TRELLIS_DAGS_DIR")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        assert_cmd::Command::from_std(self.command())
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run trellis")
    }

    /// Runs trellis, which must exit 0; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "trellis {args:?} failed ({:?}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `trellis enqueue FILE ARGS...`; returns the run id it prints.
    fn enqueue(&self, file: &Path, args: &[&str]) -> String {
        let file = file.to_str().expect("utf-8 path");
        let id = self.ok(&[&["enqueue", file], args].concat());
        id.trim().to_string()
    }

    fn history(&self, dag: &str) -> Vec<Value> {
        let out = self.ok(&["history", "--json", dag, "--limit", "10000"]);
        serde_json::from_str::<Value>(&out)
            .expect("history --json is JSON")
            .as_array()
            .expect("an array")
            .clone()
    }

    /// `status --json NAME -r ID`, or `None` while the run is not recorded.
    fn status(&self, dag: &str, run_id: &str) -> Option<Value> {
        let out = self.run(&["status", "--json", dag, "-r", run_id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("status --json is JSON"))
    }

    /// Waits until the run has a final status; returns its record.
    fn wait_final(&self, dag: &str, run_id: &str, s: &Schedulers, timeout: Duration) -> Value {
        poll(timeout, || self.status(dag, run_id).filter(is_final))
            .unwrap_or_else(|| panic!("run {run_id} of {dag} never ended\n{}", s.logs()))
    }

    /// Items waiting in every queue.
    fn queued_items(&self) -> Vec<PathBuf> {
        let Ok(queues) = fs::read_dir(self.data().join("queue")) else {
            return Vec::new();
        };
        queues
            .filter_map(|q| fs::read_dir(q.ok()?.path()).ok())
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    }

    /// The leader lease file: (fencing token, pid).
    fn lease(&self) -> Option<(u64, u32)> {
        let text = fs::read_to_string(self.data().join("scheduler/lease.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((
            v["token"].as_u64()?,
            u32::try_from(v["pid"].as_u64()?).ok()?,
        ))
    }

    /// Non-empty lines of a file in the work dir (none while it does not exist).
    fn lines(&self, rel: &str) -> Vec<String> {
        fs::read_to_string(self.path(rel))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// Names in a directory of the work dir.
    fn names(&self, rel: &str) -> BTreeSet<String> {
        fs::read_dir(self.path(rel))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The schedulers a test started. Dropping it SIGKILLs every one still alive, with the
/// process groups of the steps it runs, so no test leaks a process however it ends.
struct Schedulers {
    procs: Vec<(Child, PathBuf)>,
    work: PathBuf,
    home: PathBuf,
}

impl Schedulers {
    fn new(env: &Env) -> Schedulers {
        Schedulers {
            procs: Vec::new(),
            work: env.work.path().to_path_buf(),
            home: env.home.path().to_path_buf(),
        }
    }

    /// Starts `trellis scheduler --dags DIR [--config FILE] --id sN`; its output goes to
    /// `sched-N.log` in the work dir. Returns its pid.
    fn start(&mut self, config: Option<&Path>) -> u32 {
        let n = self.procs.len();
        let log = self.work.join(format!("sched-{n}.log"));
        let out = fs::File::create(&log).expect("scheduler log");
        let mut cmd = std::process::Command::new(TRELLIS);
        cmd.arg("scheduler")
            .arg("--dags")
            .arg(self.work.join("dags"))
            .args(["--id", &format!("s{n}")])
            .current_dir(&self.work)
            .env("TRELLIS_HOME", &self.home)
            .env("TRELLIS_TEST_DIR", &self.work)
            .env_remove("TRELLIS_CONFIG")
            .env_remove("TRELLIS_DAGS_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd.spawn().expect("spawn trellis scheduler");
        let pid = child.id();
        self.procs.push((child, log));
        pid
    }

    /// Every scheduler's output, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for (i, (_, log)) in self.procs.iter().enumerate() {
            let text = fs::read_to_string(log).unwrap_or_default();
            all.push_str(&format!("--- scheduler s{i} ---\n{text}"));
        }
        all
    }

    fn child(&mut self, pid: u32) -> &mut Child {
        let found = self.procs.iter_mut().find(|(c, _)| c.id() == pid);
        &mut found
            .unwrap_or_else(|| panic!("pid {pid} is not a scheduler of this test"))
            .0
    }

    /// Freezes a scheduler and the steps it runs (SIGSTOP to it and to each step's
    /// process group) and waits until /proc shows every one of them stopped, so nothing
    /// of theirs moves until [`Frozen::thaw`] or [`Frozen::kill_steps`].
    fn freeze(&mut self, pid: u32) -> Frozen {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
        poll(Duration::from_secs(10), || stopped(pid).then_some(()))
            .unwrap_or_else(|| panic!("scheduler {pid} did not stop"));
        let groups = children_of(pid);
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g as i32), Signal::SIGSTOP);
        }
        poll(Duration::from_secs(10), || {
            let members = groups.iter().flat_map(|&g| group_of(g));
            members.into_iter().all(stopped).then_some(())
        })
        .unwrap_or_else(|| panic!("the steps of {pid} did not stop"));
        Frozen { pid, groups }
    }

    /// `kill -9`, then reaps it.
    fn kill(&mut self, pid: u32) {
        let child = self.child(pid);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    fn alive(&mut self, pid: u32) -> bool {
        self.child(pid).try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM to every live scheduler, then waits for each to exit 0.
    fn stop_all(&mut self) {
        let mut live = Vec::new();
        for (child, _) in &mut self.procs {
            if child.try_wait().expect("try_wait").is_none() {
                kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
                live.push(child.id());
            }
        }
        for pid in live {
            let status = poll(Duration::from_secs(20), || {
                self.child(pid).try_wait().expect("try_wait")
            })
            .unwrap_or_else(|| panic!("scheduler {pid} ignored SIGTERM\n{}", self.logs()));
            assert!(
                status.success(),
                "scheduler {pid}: {status}\n{}",
                self.logs()
            );
        }
    }
}

impl Drop for Schedulers {
    fn drop(&mut self) {
        for (child, _) in &mut self.procs {
            if let Ok(None) = child.try_wait() {
                // Stopped first, so it starts no step after the ones killed here.
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
                let _ = poll(Duration::from_secs(2), || stopped(child.id()).then_some(()));
                kill_step_groups(child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Kills the process group of every child of `parent` (each step runs in its own group).
fn kill_step_groups(parent: u32) {
    for pid in children_of(parent) {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// A scheduler and its step groups, stopped by [`Schedulers::freeze`].
struct Frozen {
    pid: u32,
    groups: Vec<u32>,
}

impl Frozen {
    fn thaw(self) {
        for &g in &self.groups {
            let _ = killpg(Pid::from_raw(g as i32), Signal::SIGCONT);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
    }

    /// The steps die with their host (they would finish their work otherwise).
    fn kill_steps(&self) {
        for &g in &self.groups {
            let _ = killpg(Pid::from_raw(g as i32), Signal::SIGKILL);
        }
    }
}

/// State letter, parent and process group of a process (or thread) from its stat file.
fn stat(path: &str) -> Option<(char, u32, u32)> {
    let text = fs::read_to_string(path).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Processes matching `keep` on (ppid, pgid).
fn processes(keep: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
        .filter(|pid| stat(&format!("/proc/{pid}/stat")).is_some_and(|(_, pp, pg)| keep(pp, pg)))
        .collect()
}

fn children_of(parent: u32) -> Vec<u32> {
    processes(|ppid, _| ppid == parent)
}

fn group_of(pgid: u32) -> Vec<u32> {
    processes(|_, pg| pg == pgid)
}

/// Every thread of the process is stopped (or gone).
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().into_string().ok())
        .all(|tid| {
            let state = stat(&format!("/proc/{pid}/task/{tid}/stat")).map(|s| s.0);
            matches!(state, None | Some('T' | 't' | 'Z' | 'X'))
        })
}

/// Calls `f` every 10 ms until it returns `Some`, or `None` at the deadline.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status_of(run: &Value) -> &str {
    run["status"].as_str().unwrap_or_default()
}

fn is_final(run: &Value) -> bool {
    !matches!(
        status_of(run),
        "queued" | "running" | "retrying" | "not_started" | ""
    )
}

fn ts(v: &Value) -> Timestamp {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

/// Highest number of runs whose `[started_at, finished_at]` overlap, counting only the
/// runs `counts` accepts. A run ending at the instant another starts does not overlap.
fn max_overlap(runs: &[Value], counts: impl Fn(&Value) -> bool) -> usize {
    let mut events: Vec<(Timestamp, i32)> = Vec::new();
    for run in runs.iter().filter(|r| counts(r)) {
        events.push((ts(&run["started_at"]), 1));
        events.push((ts(&run["finished_at"]), -1));
    }
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

// ---------------------------------------------------------------------------------------
// exactly-once ticks across leader changes

/// Fires every second. The step marks the tick as started, works for 0.6 s, then records
/// it: a tick whose step was killed has a mark and no line until it runs again.
const TICK: &str = r#"name: tick
schedule: "* * * * * *"
max_active_runs: -1
overlap_policy: all
steps:
  - name: record
    command: mkdir -p "$TRELLIS_TEST_DIR/started/$DAG_RUN_SCHEDULED_TIME" && sleep 0.6 && echo "$DAG_RUN_SCHEDULED_TIME" >> "$TRELLIS_TEST_DIR/ticks.txt"
"#;

/// The same DAG without its schedule: nothing new fires, queued runs still run.
const TICK_UNSCHEDULED: &str = r#"name: tick
max_active_runs: -1
steps:
  - name: record
    command: mkdir -p "$TRELLIS_TEST_DIR/started/$DAG_RUN_SCHEDULED_TIME" && sleep 0.6 && echo "$DAG_RUN_SCHEDULED_TIME" >> "$TRELLIS_TEST_DIR/ticks.txt"
"#;

/// `2026-11-22T16:00:00Z` → `sched-20261122T160000Z`.
fn sched_id(time: &str) -> String {
    format!("sched-{}", time.replace(['-', ':'], ""))
}

#[test]
fn three_schedulers_fire_every_tick_exactly_once_across_leader_kills() {
    let env = Env::new();
    env.write_dag("tick.yaml", TICK);
    let mut s = Schedulers::new(&env);
    for _ in 0..3 {
        s.start(None);
    }
    poll(Duration::from_secs(15), || {
        (env.lease().is_some() && env.lines("ticks.txt").len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("no leader fired two ticks\n{}", s.logs()));

    let mut orphaned = Vec::new();
    for round in 0..3 {
        let (token, pid) = env.lease().expect("lease");
        // Wait for a tick whose step has just started and is the only one in flight, then
        // freeze the leader with its steps. The records must agree (a run that wrote its
        // line but not yet its end would be re-run: recovery is at-least-once); if they do
        // not, let it go on and try the next tick.
        let mut tries = 0;
        let (pending, frozen) = loop {
            tries += 1;
            assert!(
                tries <= 10,
                "round {round}: never caught one run alone in flight"
            );
            let pending = poll(Duration::from_secs(10), || {
                let started = env.names("started");
                let done: BTreeSet<String> = env.lines("ticks.txt").into_iter().collect();
                let pending: Vec<&String> = started.difference(&done).collect();
                match pending[..] {
                    [only] if Some(only) == started.last() => Some(only.clone()),
                    _ => None,
                }
            })
            .unwrap_or_else(|| panic!("round {round}: no run in flight\n{}", s.logs()));
            let frozen = s.freeze(pid);
            let id = sched_id(&pending);
            let runs = env.history("tick");
            let this = |r: &&Value| r["run_id"] == id.as_str();
            let alone = runs.iter().any(|r| this(&r) && status_of(r) == "running")
                && runs.iter().filter(|r| !this(r)).all(is_final);
            if alone && !env.lines("ticks.txt").contains(&pending) {
                break (pending, frozen);
            }
            frozen.thaw();
        };
        frozen.kill_steps();
        orphaned.push(pending);
        if round > 0 {
            // A hung leader holds the lock: the ticks of this while are missed, and the
            // next leader must catch them up.
            std::thread::sleep(Duration::from_millis(1500));
        }
        s.kill(pid);
        let (new_token, new_pid) = poll(Duration::from_secs(10), || {
            env.lease().filter(|&(t, _)| t > token)
        })
        .unwrap_or_else(|| panic!("round {round}: nobody took over\n{}", s.logs()));
        assert_ne!(new_pid, pid);
        assert!(s.alive(new_pid), "the lease names a live scheduler");
        assert_eq!(new_token, token + 1, "one leader change, one token");
        let base = env.lines("ticks.txt").len();
        poll(Duration::from_secs(10), || {
            (env.lines("ticks.txt").len() >= base + 2).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: the new leader fires nothing\n{}", s.logs()));
        s.start(None);
    }

    // Stop the ticks, let everything claimed run, then stop the schedulers.
    env.write_dag("tick.yaml", TICK_UNSCHEDULED);
    let unscheduled = Instant::now();
    let ticks_dir = env.data().join("scheduler/ticks/tick");
    let claimed = || -> BTreeSet<String> {
        fs::read_dir(&ticks_dir)
            .expect("ticks dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    };
    poll(Duration::from_secs(20), || {
        let lines: BTreeSet<String> = env.lines("ticks.txt").iter().map(|t| sched_id(t)).collect();
        let all_ran = claimed()
            .iter()
            .all(|c| lines.contains(&format!("sched-{c}")));
        let settled = unscheduled.elapsed() > Duration::from_secs(2);
        (settled && all_ran && env.queued_items().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("claimed ticks never all ran\n{}", s.logs()));
    s.stop_all();

    let lines = env.lines("ticks.txt");
    let mut seen = BTreeMap::<Timestamp, usize>::new();
    for line in &lines {
        let t: Timestamp = line.parse().expect("a timestamp per line");
        *seen.entry(t).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks ran twice: {twice:?}\n{}", s.logs());
    let times: Vec<Timestamp> = seen.keys().copied().collect();
    assert!(times.len() >= 8, "too few ticks: {times:?}");
    for pair in times.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]).as_secs(),
            1,
            "missing ticks between {} and {}\n{}",
            pair[0],
            pair[1],
            s.logs()
        );
    }
    let ran: BTreeSet<String> = lines.iter().map(|t| sched_id(t)).collect();
    let claimed: BTreeSet<String> = claimed().iter().map(|c| format!("sched-{c}")).collect();
    assert_eq!(ran, claimed, "every claimed tick ran, and nothing else");

    let runs = env.history("tick");
    let sched: Vec<&Value> = runs
        .iter()
        .filter(|r| {
            r["run_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("sched-"))
        })
        .collect();
    assert_eq!(sched.len(), ran.len(), "one run per tick");
    for run in &sched {
        assert_eq!(status_of(run), "succeeded", "{run:#}\n{}", s.logs());
        assert!(ran.contains(run["run_id"].as_str().unwrap_or_default()));
    }
    let logs = s.logs();
    for time in &orphaned {
        let line = format!(
            "run {} of tick was orphaned by a dead scheduler",
            sched_id(time)
        );
        assert!(logs.contains(&line), "{time} was not recovered\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------
// queue limits and order

/// Marks itself running for 0.2 s under `running/<run id>`.
const WORK: &str = r#"name: work
max_active_runs: -1
steps:
  - name: hold
    command: mkdir "$TRELLIS_TEST_DIR/running/$DAG_RUN_ID" && sleep 0.2 && rmdir "$TRELLIS_TEST_DIR/running/$DAG_RUN_ID"
"#;

const LIMITS: &str = "run_queue:
  max_concurrent_runs: 3
  tag_concurrency_limits:
    - key: team
      limit: 2
    - key: db
      value: pg
      limit: 1
";

/// Counts of the runs in `running` against each limit: (total, any team, db=pg).
fn counts(running: &[&str], tags: &BTreeMap<String, String>) -> (usize, usize, usize) {
    let tags_of = |id: &str| tags.get(id).cloned().unwrap_or_default();
    let team = running
        .iter()
        .filter(|id| tags_of(id).contains("team="))
        .count();
    let pg = running
        .iter()
        .filter(|id| tags_of(id).contains("db=pg"))
        .count();
    (running.len(), team, pg)
}

fn queue_respects_limits(n: usize) {
    let env = Env::new();
    let file = env.write_dag("work.yaml", WORK);
    let config = env.write_config(LIMITS);
    fs::create_dir_all(env.path("running")).expect("running dir");
    let mixes = [
        "team=a,db=pg",
        "team=b,db=mysql",
        "db=pg",
        "",
        "team=a",
        "db=mysql",
        "team=b,db=pg",
    ];
    let mut tags = BTreeMap::new();
    for i in 0..n {
        let mix = mixes[i % mixes.len()];
        let id = if mix.is_empty() {
            env.enqueue(&file, &[])
        } else {
            env.enqueue(&file, &["--tags", mix])
        };
        tags.insert(id, mix.to_string());
    }
    let mut s = Schedulers::new(&env);
    s.start(Some(&config));

    // Sample the running marks until every run has ended.
    let (mut max, mut samples, mut last_check) = ((0, 0, 0), 0usize, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(30 + n as u64 / 4);
    loop {
        let names = env.names("running");
        let running: Vec<&str> = names.iter().map(String::as_str).collect();
        let (total, team, pg) = counts(&running, &tags);
        assert!(
            total <= 3 && team <= 2 && pg <= 1,
            "over a limit: {:?}\n{}",
            running
                .iter()
                .map(|id| format!("{id} [{}]", tags[*id]))
                .collect::<Vec<_>>(),
            s.logs()
        );
        max = (max.0.max(total), max.1.max(team), max.2.max(pg));
        samples += 1;
        if running.is_empty() && last_check.elapsed() > Duration::from_millis(250) {
            last_check = Instant::now();
            let done = env.history("work").iter().filter(|r| is_final(r)).count();
            if done == n && env.queued_items().is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "runs never all ended\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(samples > 100, "too few samples ({samples})");

    let runs = env.history("work");
    assert_eq!(runs.len(), n);
    for run in &runs {
        assert_eq!(status_of(run), "succeeded", "{run:#}\n{}", s.logs());
    }
    // The records' own intervals lie inside the scheduler's slots: they never overlap more.
    let tag = |r: &Value| tags[r["run_id"].as_str().unwrap_or_default()].clone();
    let total = max_overlap(&runs, |_| true);
    let team = max_overlap(&runs, |r| tag(r).contains("team="));
    let pg = max_overlap(&runs, |r| tag(r).contains("db=pg"));
    assert!(
        total <= 3 && team <= 2 && pg <= 1,
        "records overlap over a limit: total {total}, team {team}, db=pg {pg}"
    );
    // And the limits were reached, so the test exercised them.
    assert_eq!((total, team, pg), (3, 2, 1), "sampled max {max:?}");
    s.stop_all();
}

#[test]
fn queue_respects_global_and_tag_limits() {
    queue_respects_limits(60);
}

/// The full-size run of the queue test: 500 runs. About a minute; run it with
/// `cargo test -p trellis-cli --test scheduler -- --ignored`.
#[test]
#[ignore = "500 runs take about a minute"]
fn queue_respects_global_and_tag_limits_500() {
    queue_respects_limits(500);
}

#[test]
fn priority_then_fifo() {
    let env = Env::new();
    let file = env.write_dag(
        "prio.yaml",
        r#"name: prio
max_active_runs: -1
steps:
  - name: wait
    command: while [ -e "$TRELLIS_TEST_DIR/hold" ]; do sleep 0.02; done
"#,
    );
    let config = env.write_config("run_queue:\n  max_concurrent_runs: 1\n");
    fs::write(env.path("hold"), "").expect("hold file");
    let mut s = Schedulers::new(&env);
    s.start(Some(&config));
    let first = env.enqueue(&file, &[]);
    poll(Duration::from_secs(15), || {
        env.status("prio", &first)
            .filter(|r| status_of(r) == "running")
    })
    .unwrap_or_else(|| panic!("the first run never started\n{}", s.logs()));
    let low: Vec<String> = (0..3).map(|_| env.enqueue(&file, &[])).collect();
    let high = env.enqueue(&file, &["--priority", "10"]);
    let late_low = env.enqueue(&file, &[]);
    fs::remove_file(env.path("hold")).expect("release");

    let mut order: Vec<String> = vec![first.clone(), high.clone()];
    order.extend(low.iter().cloned());
    order.push(late_low);
    let mut started = Vec::new();
    for id in &order {
        let run = env.wait_final("prio", id, &s, Duration::from_secs(20));
        assert_eq!(status_of(&run), "succeeded", "{run:#}");
        started.push((ts(&run["started_at"]), id.clone()));
    }
    started.sort();
    let got: Vec<String> = started.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        got, order,
        "expected the running one, then the high-priority one, then the rest FIFO"
    );
    s.stop_all();
}

#[test]
fn queue_timeout_fails_blocked_runs() {
    let env = Env::new();
    let file = env.write_dag("gated.yaml", "name: gated\nsteps:\n  - echo ok\n");
    let config = env.write_config(
        "run_queue:
  tag_concurrency_limits:
    - key: env
      value: prod
      limit: 0
scheduler:
  queue_timeout_sec: 1
",
    );
    let blocked = env.enqueue(&file, &["--tags", "env=prod"]);
    let free = env.enqueue(&file, &["--tags", "env=dev"]);
    let mut s = Schedulers::new(&env);
    s.start(Some(&config));
    let run = env.wait_final("gated", &free, &s, Duration::from_secs(15));
    assert_eq!(status_of(&run), "succeeded", "{run:#}");
    let run = env.wait_final("gated", &blocked, &s, Duration::from_secs(15));
    assert_eq!(status_of(&run), "failed", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("queued for more than 1 s") && error.contains("tag limit env=prod 0"),
        "the error names the limit: {error}"
    );
    assert!(
        env.queued_items().is_empty(),
        "the failed run left the queue"
    );
    s.stop_all();
}

/// `trellis stop` of a run the scheduler executes stops that run only: the scheduler, and
/// the other run it executes, go on (a signal to the run's recorded process, which is the
/// scheduler's, would stop them all).
#[test]
fn stopping_a_scheduled_run_leaves_the_scheduler_running() {
    let env = Env::new();
    let file = env.write_dag(
        "nap.yaml",
        "name: nap
max_active_runs: -1
steps:
  - name: nap
    command: sleep 30
",
    );
    let first = env.enqueue(&file, &[]);
    let second = env.enqueue(&file, &[]);
    let mut s = Schedulers::new(&env);
    s.start(None);
    let running = |id: &str| {
        env.status("nap", id)
            .filter(|r| r["steps"][0]["status"] == "running")
    };
    poll(Duration::from_secs(30), || {
        running(&first).and(running(&second))
    })
    .unwrap_or_else(|| panic!("both runs to start\n{}", s.logs()));
    let out = env.ok(&["stop", "nap", "-r", &first]);
    assert!(out.contains("stopped: cancelled"), "{out}");
    let run = env.status("nap", &second).expect("the other run");
    assert_eq!(status_of(&run), "running", "{run:#}\n{}", s.logs());
    let out = env.ok(&["stop", "nap", "-r", &second]);
    assert!(out.contains("stopped: cancelled"), "{out}");
    s.stop_all();
}

// ---------------------------------------------------------------------------------------
// the dags dir

const BAD_CRON: &str = "name: bad\nschedule: \"61 * * * *\"\nsteps:\n  - echo never\n";

#[test]
fn invalid_dag_does_not_stop_others() {
    let env = Env::new();
    env.write_dag("bad.yaml", BAD_CRON);
    env.write_dag(
        "good.yaml",
        r#"name: good
schedule: "* * * * * *"
steps:
  - echo "$DAG_RUN_SCHEDULED_TIME" >> "$TRELLIS_TEST_DIR/good.txt"
"#,
    );
    let mut s = Schedulers::new(&env);
    let pid = s.start(None);
    poll(Duration::from_secs(15), || {
        let ok = env
            .history("good")
            .iter()
            .any(|r| status_of(r) == "succeeded");
        (ok && env.lines("good.txt").len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the valid DAG never fired\n{}", s.logs()));
    assert!(s.alive(pid));
    let logs = s.logs();
    assert!(
        logs.contains("invalid DAG, not scheduled: ") && logs.contains("bad.yaml:2:11: "),
        "the scheduler reports the invalid file with its position\n{logs}"
    );
    s.stop_all();
}

#[test]
fn dags_lists_validity_and_next_run() {
    let env = Env::new();
    env.write_dag("bad.yaml", BAD_CRON);
    env.write_dag(
        "good.yaml",
        "name: good\nschedule: \"0 * * * *\"\ntimezone: UTC\nsteps:\n  - echo hi\n",
    );
    let before = Timestamp::now();
    let out = env.ok(&["dags", "--dags", env.dags().to_str().unwrap()]);
    let after = Timestamp::now();
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .to_string()
    };
    let bad = row("bad");
    let cols: Vec<&str> = bad.split_whitespace().collect();
    assert_eq!(cols[1], "no", "{bad}");
    assert!(
        bad.contains("bad.yaml:2:11: invalid cron expression `61 * * * *`"),
        "{bad}"
    );
    let good = row("good");
    let cols: Vec<&str> = good.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["yes", "-"], "valid, never run: {good}");
    let next: Timestamp = cols[3].parse().expect("next run time");
    assert!(next > before && next <= after + jiff::SignedDuration::from_hours(1));
    assert_eq!(next.as_second() % 3600, 0, "on the hour: {next}");
}

// ---------------------------------------------------------------------------------------
// backfill

#[test]
fn backfill_enqueues_each_time_once() {
    let env = Env::new();
    env.write_dag(
        "hourly.yaml",
        r#"name: hourly
schedule: "0 * * * *"
timezone: UTC
max_active_runs: -1
steps:
  - name: work
    command: mkdir "$TRELLIS_TEST_DIR/running/$DAG_RUN_ID" && echo "$DAG_RUN_SCHEDULED_TIME" >> "$TRELLIS_TEST_DIR/times.txt" && sleep 0.3 && rmdir "$TRELLIS_TEST_DIR/running/$DAG_RUN_ID"
"#,
    );
    fs::create_dir_all(env.path("running")).expect("running dir");
    let dags = env.dags();
    let backfill = [
        "backfill",
        "hourly",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-01T03:00:00Z",
        "--max-concurrent",
        "2",
        "--dags",
        dags.to_str().unwrap(),
    ];
    let out = env.ok(&backfill);
    assert!(out.contains("4 run(s) queued, 0 already present"), "{out}");

    let mut s = Schedulers::new(&env);
    s.start(None);
    let hours: Vec<String> = (0..4).map(|h| format!("2026-01-01T0{h}:00:00Z")).collect();
    let ids: Vec<String> = hours.iter().map(|h| sched_id(h)).collect();
    let mut max = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_check = Instant::now();
    loop {
        max = max.max(env.names("running").len());
        if last_check.elapsed() > Duration::from_millis(100) {
            last_check = Instant::now();
            let runs = env.history("hourly");
            let done = ids.iter().all(|id| {
                runs.iter()
                    .any(|r| r["run_id"] == id.as_str() && is_final(r))
            });
            if done {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "backfill never ran\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    let runs = env.history("hourly");
    let backfilled: Vec<&Value> = runs
        .iter()
        .filter(|r| ids.iter().any(|id| r["run_id"] == id.as_str()))
        .collect();
    assert_eq!(backfilled.len(), 4);
    for run in &backfilled {
        assert_eq!(status_of(run), "succeeded", "{run:#}");
    }
    assert!(max <= 2, "{max} backfill runs at once, --max-concurrent 2");
    let overlap = max_overlap(&runs, |r| ids.iter().any(|id| r["run_id"] == id.as_str()));
    assert!(
        overlap <= 2,
        "records overlap {overlap} > --max-concurrent 2"
    );
    let mut times: Vec<String> = env
        .lines("times.txt")
        .into_iter()
        .filter(|t| t.starts_with("2026-01-01"))
        .collect();
    times.sort();
    assert_eq!(times, hours, "DAG_RUN_SCHEDULED_TIME is each hour, once");

    let again = env.ok(&backfill);
    assert!(
        again.contains("0 run(s) queued, 4 already present"),
        "{again}"
    );
    assert!(env.queued_items().is_empty());
    s.stop_all();
}

// ---------------------------------------------------------------------------------------
// damaged queue

#[test]
fn a_corrupt_queue_file_is_set_aside() {
    let env = Env::new();
    let file = env.write_dag("work.yaml", "name: work\nsteps:\n  - echo ok\n");
    let queue = env.data().join("queue").join("work");
    fs::create_dir_all(&queue).expect("queue dir");
    let garbage = queue.join("item_00000000000_00000000000000000000_garbage.json");
    fs::write(&garbage, b"{\"queue\": \"work\", \"dag_na\x00\xff").expect("garbage");
    let mut s = Schedulers::new(&env);
    let pid = s.start(None);
    let id = env.enqueue(&file, &[]);
    let run = env.wait_final("work", &id, &s, Duration::from_secs(15));
    assert_eq!(status_of(&run), "succeeded", "{run:#}");
    assert!(s.alive(pid), "the scheduler survives a corrupt queue file");
    let aside = queue.join("item_00000000000_00000000000000000000_garbage.json.corrupt");
    poll(Duration::from_secs(5), || {
        (aside.exists() && !garbage.exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("the corrupt file was not set aside\n{}", s.logs()));
    let logs = s.logs();
    assert!(
        logs.contains("garbage.json") && logs.contains(".corrupt"),
        "the scheduler says what it set aside\n{logs}"
    );
    s.stop_all();
}

#[test]
fn dag_retry_policy_reruns_a_failed_run() {
    let env = Env::new();
    let file = env.write_dag(
        "flaky.yaml",
        r#"name: flaky
retry_policy:
  limit: 2
  interval_sec: 0
steps:
  - command: echo x >> "$TRELLIS_TEST_DIR/count"; test "$(wc -l < "$TRELLIS_TEST_DIR/count")" -ge 3
"#,
    );
    let mut s = Schedulers::new(&env);
    s.start(None);
    let id = env.enqueue(&file, &[]);
    // Attempts 1 and 2 fail (each briefly final), the second automatic re-run succeeds.
    let run = poll(Duration::from_secs(20), || {
        env.status("flaky", &id)
            .filter(|r| status_of(r) == "succeeded")
    })
    .unwrap_or_else(|| panic!("the run never succeeded\n{}", s.logs()));
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(
        fs::read_to_string(env.path("count"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    s.stop_all();
}

/// `action: dag.enqueue` queues a run of a sub-DAG of the same file (with its params, in
/// the named queue) without waiting for it; a scheduler then starts it from the
/// definition stored with the run.
#[test]
fn a_dag_enqueue_step_queues_a_run_a_scheduler_then_starts() {
    let env = Env::new();
    let file = env.write_dag(
        "parent.yaml",
        "name: parent\nsteps:\n  - id: later\n    action: dag.enqueue\n    with: {dag: nightly-child, params: {WHO: ada}, queue: batch}\n    output: QUEUED\n---\nname: nightly-child\nparams:\n  - WHO: nobody\nsteps:\n  - run: echo \"child greets ${WHO}\"\n",
    );
    env.ok(&["start", "-q", file.to_str().expect("utf-8")]);
    let parent = env.history("parent");
    let output: Value = serde_json::from_str(
        parent[0]["outputs"]["QUEUED"]
            .as_str()
            .expect("the step's output"),
    )
    .expect("JSON");
    let id = output["run_ids"][0].as_str().expect("a run id").to_string();
    let queued = env.status("nightly-child", &id).expect("the queued run");
    assert_eq!(
        status_of(&queued),
        "queued",
        "not run by the step: {queued:#}"
    );
    assert!(
        env.queued_items()
            .iter()
            .any(|p| p.to_string_lossy().contains("/batch/")),
        "in the named queue: {:?}",
        env.queued_items()
    );
    let mut s = Schedulers::new(&env);
    s.start(None);
    let run = env.wait_final("nightly-child", &id, &s, Duration::from_secs(20));
    assert_eq!(status_of(&run), "succeeded", "{run:#}");
    assert_eq!(run["params"], serde_json::json!(["WHO=ada"]));
}
