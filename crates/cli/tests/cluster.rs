//! Distributed execution with real processes on loopback and one shared temp dir (shared-
//! filesystem mode): a coordinator, labelled workers and a scheduler, each a `trellis`
//! process. Runs are enqueued with the CLI and checked through `trellis status --json`.
//!
//! Steps that must still be running at some moment wait (bounded) for a file the test
//! creates, so nothing depends on timing. Lease timeouts are shortened with
//! `--coordinator.lease-timeout`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;
use support::{Env, Proc, free_port, status, wait_for};

/// A step that waits (at most 30 s) until `$DIR/<file>` exists.
fn wait_step(file: &str) -> String {
    format!("for i in $(seq 1 300); do [ -f \"$DIR/{file}\" ] && break; sleep 0.1; done")
}

struct Cluster {
    env: Env,
    port: u16,
    coordinator: Option<Proc>,
    workers: HashMap<String, Proc>,
    _scheduler: Proc,
}

impl Cluster {
    /// A coordinator, a scheduler and the given workers (id, labels, slots).
    fn start(workers: &[(&str, &str, u32)], config: &str, coordinator_args: &[&str]) -> Cluster {
        let env = Env::new();
        env.config(config);
        let port = free_port();
        let coordinator = Some(start_coordinator(&env, port, coordinator_args));
        let scheduler = Proc::spawn(&env, &["scheduler", "-c", &cfg(&env)], "leading");
        let mut cluster = Cluster {
            env,
            port,
            coordinator,
            workers: HashMap::new(),
            _scheduler: scheduler,
        };
        for (id, labels, slots) in workers {
            cluster.add_worker(id, labels, *slots);
        }
        cluster
    }

    fn add_worker(&mut self, id: &str, labels: &str, slots: u32) {
        self.add_worker_with(id, labels, slots, &[]);
    }

    fn add_worker_with(&mut self, id: &str, labels: &str, slots: u32, vars: &[(&str, &str)]) {
        let slots = slots.to_string();
        let dir = self.env.work.path().display().to_string();
        let mut vars = vars.to_vec();
        vars.push(("DIR", &dir));
        let worker = Proc::spawn_with(
            &self.env,
            &[
                "worker",
                "-c",
                &cfg(&self.env),
                "--worker.id",
                id,
                "--worker.labels",
                labels,
                "--worker.max-active-runs",
                &slots,
                "--worker.drain-grace",
                "30",
            ],
            "registered with the coordinator",
            &vars,
        );
        self.workers.insert(id.to_string(), worker);
    }

    fn dag(&self, name: &str, yaml: &str) {
        self.env.dag(name, yaml);
    }

    /// Enqueues a run and returns its id.
    fn enqueue(&self, dag: &str) -> String {
        let file = self.env.dags().join(format!("{dag}.yaml"));
        let out = self
            .env
            .trellis()
            .arg("enqueue")
            .arg(&file)
            .output()
            .expect("enqueue");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("run id")
            .to_string()
    }

    /// Enqueues a run and waits until its first step runs.
    fn enqueue_running(&self, dag: &str) -> String {
        let run = self.enqueue(dag);
        self.wait_run(dag, &run, 30, "the step to start", |s| {
            s["steps"][0]["status"] == "running"
        });
        run
    }

    fn touch(&self, file: &str) {
        std::fs::write(self.env.path(file), "").expect("touch");
    }

    /// Waits until the run's status satisfies `done`; returns its JSON.
    fn wait_run(
        &self,
        dag: &str,
        run: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = None;
        let what = format!("{what} (run {run} of {dag})");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(secs, &what, || {
                last = status(&self.env, dag, run);
                last.clone().filter(|s| done(s))
            })
        }));
        match found {
            Ok(v) => v,
            Err(_) => panic!(
                "timed out waiting for {what}; last status: {last:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Everything the cluster's processes printed, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.coordinator {
            out.push_str(&format!("--- coordinator\n{}\n", c.output()));
        }
        out.push_str(&format!("--- scheduler\n{}\n", self._scheduler.output()));
        for (id, w) in &self.workers {
            out.push_str(&format!("--- worker {id}\n{}\n", w.output()));
        }
        out
    }

    fn finished(&self, dag: &str, run: &str, secs: u64) -> Value {
        self.wait_run(dag, run, secs, "the run to finish", |s| {
            !matches!(
                s["status"].as_str(),
                Some("running" | "queued" | "not_started")
            )
        })
    }
}

fn cfg(env: &Env) -> String {
    env.path("config.yaml").display().to_string()
}

fn start_coordinator(env: &Env, port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["coordinator", "-c"];
    let config = cfg(env);
    args.push(&config);
    args.extend(["--coordinator.port", &port]);
    args.extend(extra);
    Proc::spawn(env, &args, "coordinator listening on")
}

fn step_workers(run: &Value) -> Vec<Option<String>> {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["worker_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn routes_each_dag_to_a_worker_whose_labels_all_match() {
    let cluster = Cluster::start(
        &[
            ("w-gpu", "gpu=true,region=eu", 4),
            ("w-us", "cpu=true,region=us", 4),
            ("w-eu", "cpu=true,region=eu", 4),
        ],
        "",
        &[],
    );
    let cases = [
        ("gpu", "worker_selector: {gpu: \"true\"}", Some("w-gpu")),
        (
            "cpu-eu",
            "worker_selector: {cpu: \"true\", region: eu}",
            Some("w-eu"),
        ),
        ("us", "workerSelector: {region: us}", Some("w-us")),
        ("local", "worker_selector: local", None),
        ("plain", "", None),
    ];
    let mut runs = Vec::new();
    for (name, selector, _) in &cases {
        cluster.dag(
            name,
            &format!("{selector}\nsteps:\n  - name: a\n    command: echo {name}\n"),
        );
        runs.push(cluster.enqueue(name));
    }
    for ((name, _, want), run) in cases.iter().zip(&runs) {
        let got = cluster.finished(name, run, 30);
        assert_eq!(got["status"], "succeeded", "{name}: {got}");
        assert_eq!(
            step_workers(&got),
            vec![want.map(str::to_string)],
            "{name} ran on the wrong worker"
        );
    }
}

#[test]
fn a_selector_nobody_matches_waits_visibly_then_fails() {
    let cluster = Cluster::start(
        &[("w1", "gpu=false", 2)],
        "",
        &["--coordinator.dispatch-timeout", "3"],
    );
    cluster.dag(
        "mars",
        "worker_selector: {zone: mars}\nsteps:\n  - name: a\n    command: echo never\n",
    );
    let run = cluster.enqueue("mars");
    let waiting = cluster.wait_run("mars", &run, 20, "the reason to show", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("no live worker matches zone=mars"))
    });
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let failed = cluster.finished("mars", &run, 30);
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no live worker matches zone=mars"),
        "{error}"
    );
    assert!(error.contains("waited 3 s"), "{error}");
}

#[test]
fn a_killed_worker_loses_its_lease_and_the_run_moves_to_another_worker() {
    let mut cluster = Cluster::start(
        &[("w-a", "pool=x", 2)],
        "",
        &["--coordinator.lease-timeout", "3"],
    );
    let yaml = format!(
        "worker_selector: {{pool: x}}\nretry_policy: {{limit: 1, interval_sec: 0}}\nsteps:\n  - name: wait\n    command: '{}'\n",
        wait_step("go")
    );
    cluster.dag("moves", &yaml);
    let run = cluster.enqueue("moves");
    cluster.wait_run("moves", &run, 30, "the step to start on w-a", |s| {
        s["steps"][0]["status"] == "running" && s["steps"][0]["worker_id"] == "w-a"
    });
    cluster.workers.get_mut("w-a").expect("w-a").kill9();
    cluster.add_worker("w-b", "pool=x", 2);
    cluster.touch("go");
    let done = cluster.finished("moves", &run, 60);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step_workers(&done), vec![Some("w-b".to_string())]);
    let coordinator = cluster.coordinator.as_ref().expect("coordinator");
    assert!(coordinator.said("worker lost"), "{}", coordinator.output());
}

#[test]
fn a_killed_worker_without_retries_fails_the_run_with_worker_lost() {
    let mut cluster = Cluster::start(
        &[("w-a", "pool=y", 2)],
        "",
        &["--coordinator.lease-timeout", "2"],
    );
    // The step records its process id, so the test can see it die with its worker.
    let yaml = format!(
        "worker_selector: {{pool: y}}\nsteps:\n  - name: wait\n    command: 'echo $$ > \"$DIR/step.pid\"; {}'\n",
        wait_step("never")
    );
    cluster.dag("lost", &yaml);
    let run = cluster.enqueue_running("lost");
    // "running" is recorded just before the process starts: wait for the process itself.
    let pid = wait_for(10, "the step's pid", || {
        std::fs::read_to_string(cluster.env.path("step.pid"))
            .ok()
            .filter(|p| p.ends_with('\n'))
    });
    cluster.workers.get_mut("w-a").expect("w-a").kill9();
    let proc_dir = format!("/proc/{}", pid.trim());
    wait_for(10, "the step to die with its worker", || {
        let state = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting to be reaped by init.
        (state.is_empty() || state.split_whitespace().nth(2) == Some("Z")).then_some(())
    });
    let done = cluster.finished("lost", &run, 30);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(error.contains("worker lost: w-a"), "{error}");
}

#[test]
fn a_coordinator_restart_does_not_kill_or_repeat_running_tasks() {
    let mut cluster = Cluster::start(&[("w-a", "pool=z", 2)], "", &[]);
    let marker = cluster.env.path("attempts");
    let yaml = format!(
        "worker_selector: {{pool: z}}\nsteps:\n  - name: wait\n    command: 'echo x >> \"$DIR/attempts\"; {}'\n",
        wait_step("go")
    );
    cluster.dag("survives", &yaml);
    let run = cluster.enqueue_running("survives");
    cluster.coordinator.as_mut().expect("coordinator").kill9();
    cluster.coordinator = None;
    let worker = cluster.workers.get("w-a").expect("w-a");
    wait_for(20, "the worker to notice", || {
        worker.said("retrying").then_some(())
    });
    cluster.coordinator = Some(start_coordinator(&cluster.env, cluster.port, &[]));
    wait_for(30, "the worker to reconnect", || {
        worker.said("coordinator reachable again").then_some(())
    });
    cluster.touch("go");
    let done = cluster.finished("survives", &run, 30);
    assert_eq!(done["status"], "succeeded", "{done}");
    let attempts = std::fs::read_to_string(&marker).expect("attempts file");
    assert_eq!(attempts.lines().count(), 1, "the step ran more than once");
    // The task is released: the task dir empties once the worker reports.
    let tasks = cluster.env.home.path().join("data/distributed/tasks");
    wait_for(20, "the task file to go", || {
        let n = std::fs::read_dir(&tasks)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
                })
                .count()
            })
            .unwrap_or(0);
        (n == 0).then_some(())
    });
}

#[test]
fn two_hundred_runs_spread_over_workers_within_their_slots() {
    let cluster = Cluster::start(
        &[
            ("w1", "pool=p", 2),
            ("w2", "pool=p", 2),
            ("w3", "pool=p", 3),
        ],
        "default_execution_mode: distributed\n",
        &[],
    );
    // Each step's start and end times, grouped by worker, replay its concurrency.
    let yaml = "max_active_runs: -1\nsteps:\n  - name: s\n    command: sleep 0.05\n";
    cluster.dag("many", yaml);
    let runs: Vec<String> = (0..200).map(|_| cluster.enqueue("many")).collect();
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut intervals: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for run in &runs {
        let done = cluster.finished("many", run, 120);
        assert_eq!(done["status"], "succeeded", "{done}");
        let step = &done["steps"][0];
        let worker = step["worker_id"]
            .as_str()
            .expect("ran on a worker")
            .to_string();
        *per_worker.entry(worker.clone()).or_default() += 1;
        intervals.entry(worker).or_default().push((
            step["started_at"].as_str().unwrap_or_default().to_string(),
            step["finished_at"].as_str().unwrap_or_default().to_string(),
        ));
    }
    assert_eq!(per_worker.values().sum::<usize>(), 200);
    assert_eq!(
        per_worker.len(),
        3,
        "every worker took runs: {per_worker:?}"
    );
    let limits = HashMap::from([("w1", 2), ("w2", 2), ("w3", 3)]);
    for (worker, spans) in &intervals {
        let peak = peak_overlap(spans);
        assert!(
            peak <= limits[worker.as_str()],
            "{worker} ran {peak} at once"
        );
    }
}

/// The most intervals open at one instant (RFC 3339 strings of one format sort by time).
fn peak_overlap(spans: &[(String, String)]) -> usize {
    let mut edges: Vec<(String, i32)> = Vec::new();
    for (a, b) in spans {
        edges.push((a.clone(), 1));
        edges.push((b.clone(), -1));
    }
    let parse = |t: &str| t.parse::<jiff::Timestamp>().expect("timestamp");
    edges.sort_by(|x, y| parse(&x.0).cmp(&parse(&y.0)).then(x.1.cmp(&y.1)));
    let (mut now, mut peak) = (0, 0);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[test]
fn sigterm_drains_running_tasks_and_deregisters() {
    let mut cluster = Cluster::start(&[("w-d", "pool=d", 2)], "", &[]);
    let yaml = format!(
        "worker_selector: {{pool: d}}\nsteps:\n  - name: wait\n    command: '{}'\n",
        wait_step("go")
    );
    cluster.dag("drain", &yaml);
    let run = cluster.enqueue_running("drain");
    let registry = cluster
        .env
        .home
        .path()
        .join("data/service-registry/worker/w-d.json");
    assert!(
        registry.exists(),
        "the worker registered itself in the registry"
    );
    let worker = cluster.workers.get_mut("w-d").expect("w-d");
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    wait_for(10, "the drain message", || {
        worker.said("draining 1 running task").then_some(())
    });
    cluster.touch("go");
    let worker = cluster.workers.get_mut("w-d").expect("w-d");
    let exit = wait_for(30, "the worker to exit", || {
        worker.child.try_wait().ok().flatten()
    });
    assert!(exit.success(), "{}", worker.output());
    let done = cluster.finished("drain", &run, 10);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        !registry.exists(),
        "the registry entry is removed on shutdown"
    );
    let _ = Duration::ZERO;
}

/// Seed 000's config, as a Dagu user has it (env prefix renamed): separate data, log and
/// registry dirs, a worker id and labels in the file, no coordinator address for the worker.
#[test]
fn a_dagu_shaped_shared_filesystem_config_works() {
    let env = Env::new();
    let shared = env.path("shared");
    let port = free_port();
    let config = env.config(&format!(
        "paths:\n  data_dir: {s}/data\n  log_dir: {s}/logs\n  service_registry_dir: {s}/service-registry\n  dag_state_dir: {s}/data/dag-state\nworker:\n  id: worker-gpu-01\n  labels:\n    gpu: \"true\"\n    memory: \"64G\"\ncoordinator:\n  host: 127.0.0.1\n  port: {port}\n",
        s = shared.display()
    ));
    let cfg = config.display().to_string();
    let vars = [("TRELLIS_CONFIG", cfg.as_str())];
    let _coordinator = Proc::spawn_with(&env, &["coordinator"], "coordinator listening on", &vars);
    let worker = Proc::spawn_with(&env, &["worker"], "registered with the coordinator", &vars);
    let _scheduler = Proc::spawn_with(&env, &["scheduler"], "leading", &vars);
    assert!(
        worker.said(&format!("127.0.0.1:{port}")),
        "found through the registry"
    );
    assert!(
        shared
            .join("service-registry/worker/worker-gpu-01.json")
            .exists()
    );
    let file = env.dag(
        "train",
        "workerSelector:\n  gpu: \"true\"\nsteps:\n  - name: fit\n    command: echo fitted\n",
    );
    let out = env
        .trellis()
        .env("TRELLIS_CONFIG", &cfg)
        .arg("enqueue")
        .arg(&file)
        .output()
        .expect("enqueue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let done = wait_for(30, "the run to finish", || {
        let out = env
            .trellis()
            .env("TRELLIS_CONFIG", &cfg)
            .args(["status", "--json", "train", "-r", &run])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "succeeded").then_some(v)
    });
    assert_eq!(done["steps"][0]["worker_id"], "worker-gpu-01");
    assert!(
        shared.join("data/dag-runs/train").is_dir(),
        "status in the shared data dir"
    );
    let logs = env
        .trellis()
        .env("TRELLIS_CONFIG", &cfg)
        .args(["logs", "train", "--step", "fit"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&logs.stdout).trim(), "fitted");
    assert!(
        shared.join("logs/train").is_dir(),
        "logs in the shared log dir"
    );
    assert!(
        !env.home.path().join("data/dag-runs").exists(),
        "nothing under the default home"
    );
}

/// The same workers, with the same health, in `trellis workers`, `GET /api/v2/workers`
/// (the shape of seed 001) and the UI's workers page; running tasks included.
#[test]
fn workers_show_in_the_cli_the_api_and_the_ui() {
    let cluster = Cluster::start(
        &[("w-gpu", "gpu=true", 2), ("w-cpu", "cpu=true", 2)],
        "",
        &[],
    );
    let server = support::Server::start(&cluster.env, &["-c", &cfg(&cluster.env)]);
    cluster.dag(
        "busy",
        &format!(
            "worker_selector: {{gpu: \"true\"}}\nsteps:\n  - name: s\n    command: '{}'\n",
            wait_step("go")
        ),
    );
    let run = cluster.enqueue_running("busy");
    let client = support::client();
    let api = wait_for(20, "the API to list the busy worker", || {
        let v: Value = client
            .get(format!("{}/api/v2/workers", server.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        let gpu = v["workers"]
            .as_array()?
            .iter()
            .find(|w| w["id"] == "w-gpu")?
            .clone();
        (gpu["running_tasks"].as_array()?.len() == 1).then_some(v)
    });
    let workers = api["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{api}");
    let gpu = workers.iter().find(|w| w["id"] == "w-gpu").expect("w-gpu");
    assert_eq!(gpu["health_status"], "HEALTHY");
    assert_eq!(gpu["labels"]["gpu"], "true");
    assert!(gpu["last_heartbeat"].as_str().is_some());
    let task = &gpu["running_tasks"][0];
    assert_eq!(task["dag_name"], "busy");
    assert_eq!(task["dag_run_id"], run.as_str());
    assert_eq!(task["root_dag_run_name"], "busy");
    assert!(task["started_at"].as_str().is_some());
    let out = cluster
        .env
        .trellis()
        .args(["workers", "-c", &cfg(&cluster.env)])
        .output()
        .expect("workers");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("w-gpu") && table.contains("HEALTHY") && table.contains("gpu=true"),
        "{table}"
    );
    let page = client
        .get(format!("{}/workers", server.url))
        .send()
        .expect("page")
        .text()
        .expect("html");
    assert!(
        page.contains("w-cpu") && page.contains("w-gpu") && page.contains("busy"),
        "workers page"
    );
    cluster.touch("go");
    cluster.finished("busy", &run, 30);
}

/// A `call` step with a `worker_selector` sends its sub-DAG to a matching worker; the
/// parent (here in the scheduler's process) waits for it and gets its outputs. A selector
/// nobody matches fails the step with the reason once the dispatch timeout passes.
#[test]
fn a_call_step_with_a_selector_runs_its_sub_dag_on_a_matching_worker() {
    let cluster = Cluster::start(
        &[("w-gpu", "gpu=true", 2), ("w-cpu", "cpu=true", 2)],
        "",
        &["--coordinator.dispatch-timeout", "2"],
    );
    cluster.dag(
        "parent",
        "worker_selector: local\nsteps:\n  - name: prep\n    command: echo prep\n  - name: train\n    call: train\n    params: \"EPOCHS=3\"\n    worker_selector: {gpu: \"true\"}\n  - name: nowhere\n    call: train\n    worker_selector: {zone: mars}\n    continue_on: {failure: true}\n---\nname: train\nparams: [EPOCHS=1]\nsteps:\n  - name: fit\n    command: echo \"fitting $EPOCHS\"\n    output: RESULT\n",
    );
    let run = cluster.enqueue("parent");
    let done = cluster.finished("parent", &run, 60);
    let steps = done["steps"].as_array().expect("steps");
    assert_eq!(
        steps[0]["worker_id"],
        Value::Null,
        "the parent runs locally"
    );
    assert_eq!(steps[1]["status"], "succeeded", "{done}");
    let output: Value = serde_json::from_str(steps[1]["output"].as_str().expect("output")).unwrap();
    assert_eq!(output["outputs"]["RESULT"], "fitting 3");
    assert_eq!(steps[2]["status"], "failed", "{done}");
    let error = steps[2]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no live worker matches zone=mars"),
        "{error}"
    );
    // The child ran on the GPU worker, stored under the parent's attempt.
    let child_id = steps[1]["children"][0]
        .as_str()
        .expect("child id")
        .to_string();
    let child = walk(cluster.env.home.path(), &format!("child_{child_id}"));
    let status = std::fs::read_dir(&child)
        .unwrap()
        .flatten()
        .map(|a| std::fs::read_to_string(a.path().join("status.jsonl")).unwrap_or_default())
        .collect::<String>();
    assert!(status.contains("\"worker_id\":\"w-gpu\""), "{status}");
}

/// The first directory named `name` under `root`.
fn walk(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                if e.file_name().to_string_lossy() == name {
                    return path;
                }
                stack.push(path);
            }
        }
    }
    panic!("no {name} under {}", root.display())
}

/// SIGTERM of a worker whose run is in a docker step: the worker leaves at once without
/// stopping the container and hands the run back; the next worker resumes the run and
/// reattaches to that container (one container, the step run once).
#[test]
fn a_drained_worker_leaves_its_containers_to_the_next_worker() {
    let Some(podman) = support::podman() else {
        return;
    };
    let host = podman.docker_host();
    let mut cluster = Cluster::start(&[], "", &[]);
    cluster.add_worker_with("w-c", "pool=c", 1, &[("DOCKER_HOST", &host)]);
    let shared = cluster.env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let yaml = format!(
        "worker_selector: {{pool: c}}\nsteps:\n  - name: boxed\n    type: docker\n    with:\n      \
         image: {}\n      pull: never\n      volumes: [\"{}:/shared\"]\n    \
         command: sh -c 'echo started >> /shared/starts; while [ ! -f /shared/go ]; do sleep 0.1; done; echo done'\n",
        trellis_testdb::podman::Podman::IMAGE,
        shared.display()
    );
    cluster.dag("boxed", &yaml);
    let run = cluster.enqueue("boxed");
    wait_for(60, "the container to start", || {
        std::fs::read_to_string(shared.join("starts"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    cluster.wait_run("boxed", &run, 30, "the handle to be recorded", |s| {
        s["steps"][0]["status"] == "running"
    });
    let worker = cluster.workers.get_mut("w-c").expect("w-c");
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = wait_for(
        20,
        "the worker to leave without waiting for its run",
        || worker.child.try_wait().ok().flatten(),
    );
    assert!(exit.success(), "{}", worker.output());
    assert!(worker.said("leaving 1 run(s)"), "{}", worker.output());
    assert_eq!(podman.containers().len(), 1, "the container runs on");

    cluster.add_worker_with("w-e", "pool=c", 1, &[("DOCKER_HOST", &host)]);
    std::fs::write(shared.join("go"), "").expect("go");
    let done = cluster.finished("boxed", &run, 60);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", cluster.logs());
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "the step ran once");
    assert_eq!(step_workers(&done), vec![Some("w-e".to_string())]);
    let log = cluster
        .env
        .trellis()
        .args(["logs", "boxed", "--step", "boxed"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&log.stdout), "done\n");
    wait_for(30, "the container to be removed", || {
        podman.containers().is_empty().then_some(())
    });
}
