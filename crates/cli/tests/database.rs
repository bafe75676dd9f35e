//! Trellis on a database, with real processes and a throwaway PostgreSQL (and MariaDB):
//! stateless servers and schedulers that share nothing but the database, surviving a
//! `kill -9` of the leader and of a server; `trellis migrate`; and the exit code when the
//! database cannot be reached.

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::{Env, Proc, client, free_port, wait_for};
use trellis_testdb::{Kind, Server as Db};

const DB_URL: &str = "TRELLIS_DATABASE_URL";

/// A DAG whose one step appends the run id to `done.log` once it has finished its work.
fn work_dag(env: &Env, done: &std::path::Path) {
    env.dag(
        "work",
        &format!(
            "max_active_runs: -1\nsteps:\n  - name: work\n    command: sh -c 'sleep 0.2; echo \"$DAG_RUN_ID\" >> {}'\n",
            done.display()
        ),
    );
}

/// `trellis server` on port 0 with this database; its URL.
fn server(env: &Env, url: &str) -> (Proc, String) {
    let p = Proc::spawn_with(
        env,
        &["server", "--port", "0"],
        "server listening on",
        &[(DB_URL, url)],
    );
    let at = p
        .ready_line
        .split("server listening on ")
        .nth(1)
        .unwrap_or_default();
    let base = at
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    (p, base)
}

fn enqueue_dag(base: &str, dag: &str, run_id: &str) {
    let resp = client()
        .post(format!("{base}/api/v2/dags/{dag}/enqueue"))
        .json(&json!({ "run_id": run_id }))
        .send()
        .expect("enqueue");
    assert!(
        resp.status().is_success(),
        "enqueue {run_id}: {}",
        resp.text().unwrap_or_default()
    );
}

/// Every run the server lists, by id, with its status.
fn history(base: &str) -> Vec<(String, String)> {
    let page: Value = client()
        .get(format!("{base}/api/v2/dag-runs?per_page=500"))
        .send()
        .and_then(|r| r.json())
        .expect("list runs");
    page["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|r| {
                    (
                        r["run_id"].as_str().unwrap_or_default().to_string(),
                        r["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn leader_pid(base: &str) -> Option<(u64, u64)> {
    let info: Value = client()
        .get(format!("{base}/server_info"))
        .send()
        .ok()?
        .json()
        .ok()?;
    let pid = info["scheduler"]["leader_pid"]
        .as_u64()
        .or_else(|| info["leader_pid"].as_u64())?;
    let token = info["scheduler"]["lease_token"]
        .as_u64()
        .or_else(|| info["lease_token"].as_u64())?;
    Some((pid, token))
}

/// A DAG for the workers labelled `pool=ha`: its step appends the run id to `file`.
fn remote_dag(env: &Env, file: &std::path::Path) {
    env.dag(
        "remote",
        &format!(
            "max_active_runs: -1\nworker_selector:\n  pool: ha\nsteps:\n  - name: work\n    command: sh -c 'sleep 0.1; echo \"$DAG_RUN_ID\" >> {}'\n",
            file.display()
        ),
    );
}

/// Two coordinators (one stands by) and three shared-nothing workers, each with a home of
/// its own, on the database.
fn cluster(url: &str) -> (Vec<Env>, Vec<Proc>) {
    let envs: Vec<Env> = (0..5).map(|_| Env::new()).collect();
    let db = [(DB_URL, url)];
    let ports = [free_port(), free_port()];
    let mut procs = Vec::new();
    for (i, ready) in ["coordinator listening on", "standing by"]
        .into_iter()
        .enumerate()
    {
        let port = ports[i].to_string();
        let args = ["coordinator", "--coordinator.port", &port];
        procs.push(Proc::spawn_with(&envs[i], &args, ready, &db));
    }
    let list = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    for (i, env) in envs[2..].iter().enumerate() {
        let id = format!("w{i}");
        let args = [
            "worker",
            "--worker.id",
            &id,
            "--worker.labels",
            "pool=ha",
            "--worker.coordinators",
            &list,
        ];
        procs.push(Proc::spawn_with(
            env,
            &args,
            "registered with the coordinator",
            &db,
        ));
    }
    (envs, procs)
}

/// Each id's count of lines in a log of completed steps.
fn completions(log: &str) -> HashMap<&str, usize> {
    let mut out: HashMap<&str, usize> = HashMap::new();
    for line in log.lines() {
        *out.entry(line).or_default() += 1;
    }
    out
}

#[test]
fn servers_and_schedulers_share_only_postgres_and_survive_kill_9() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("ha").expect("database");
    let shared = tempfile::tempdir().unwrap();
    let (done, done_remote) = (
        shared.path().join("done.log"),
        shared.path().join("remote.log"),
    );
    // Every process has a home of its own: nothing is shared but the database (and the
    // DAG files, which each machine would have in its own dags dir).
    let envs: Vec<Env> = (0..5).map(|_| Env::new()).collect();
    for env in &envs {
        work_dag(env, &done);
        remote_dag(env, &done_remote);
    }
    let (_cluster_envs, _cluster) = cluster(&url);
    let mut schedulers: Vec<Proc> = envs[..3]
        .iter()
        .map(|env| Proc::spawn_with(env, &["scheduler"], "scheduler", &[(DB_URL, url.as_str())]))
        .collect();
    let (mut server_a, a) = server(&envs[3], &url);
    let (_server_b, b) = server(&envs[4], &url);
    let (first_leader, first_token) = wait_for(30, "a scheduler to lead", || leader_pid(&b));

    // 60 runs on the schedulers and 30 on the workers, through both servers.
    let ids: Vec<String> = (0..60).map(|i| format!("r{i:02}")).collect();
    let remote: Vec<String> = (0..30).map(|i| format!("w{i:02}")).collect();
    for i in 0..30 {
        let via = if i % 2 == 0 { &a } else { &b };
        enqueue_dag(via, "work", &ids[i]);
        if i % 2 == 0 {
            enqueue_dag(via, "remote", &remote[i / 2]);
        }
    }
    // Under load: some runs done, some running, some queued.
    wait_for(30, "some runs to finish", || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|d| d.lines().count() >= 5)
    });
    let leader = schedulers
        .iter()
        .position(|p| u64::from(p.child.id()) == first_leader)
        .expect("the leader is one of ours");
    schedulers[leader].kill9();
    server_a.kill9();
    for i in 30..60 {
        enqueue_dag(&b, "work", &ids[i]);
        if i % 2 == 0 {
            enqueue_dag(&b, "remote", &remote[i / 2]);
        }
    }
    let (_, token) = wait_for(30, "another scheduler to lead", || {
        leader_pid(&b).filter(|(pid, _)| *pid != first_leader)
    });
    assert!(
        token > first_token,
        "the fencing token grows with the new leader"
    );

    let all = ids.len() + remote.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let runs = history(&b);
        let going: Vec<_> = runs
            .iter()
            .filter(|(_, s)| s == "queued" || s == "running")
            .collect();
        if runs.len() == all && going.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let said: String = schedulers
                .iter()
                .map(Proc::output)
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} of {all} runs recorded; still going: {going:?}\n{said}",
                runs.len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let runs: HashMap<String, String> = history(&b).into_iter().collect();
    for id in ids.iter().chain(&remote) {
        assert_eq!(
            runs.get(id).map(String::as_str),
            Some("succeeded"),
            "run {id}"
        );
    }
    // A step that finished just before its scheduler was killed, but whose end was not
    // recorded yet, runs again in the new attempt the new leader queues: at least once.
    // Every other run's step ran exactly once.
    let log = std::fs::read_to_string(&done).unwrap();
    let counts = completions(&log);
    let requeued: String = schedulers.iter().map(Proc::output).collect();
    for id in &ids {
        let n = counts.get(id.as_str()).copied().unwrap_or(0);
        let orphaned = requeued.contains(&format!("run {id} of work was orphaned"));
        assert!(
            n == 1 || (n == 2 && orphaned),
            "run {id} ran {n} times:\n{log}\n{requeued}"
        );
    }
    // The workers' runs did not depend on the dead leader: each ran exactly once.
    let log = std::fs::read_to_string(&done_remote).unwrap();
    let counts = completions(&log);
    for id in &remote {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "run {id} on a worker:\n{log}"
        );
    }
    // Every server sees the workers the coordinator published in the database.
    let workers: Value = client()
        .get(format!("{b}/api/v2/workers"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut seen: Vec<&str> = workers["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["id"].as_str()).collect())
        .unwrap_or_default();
    seen.sort();
    assert_eq!(seen, ["w0", "w1", "w2"], "{workers}");
    // A new server with an empty home shows the same history as the one that stayed.
    let (_server_c, c) = server(&Env::new(), &url);
    assert_eq!(history(&c), history(&b));
    drop(db);
}

/// Some runs in a file store, copied into a database twice: the second copy adds
/// nothing, and the database then serves the runs.
#[test]
fn migrate_copies_the_file_store_once() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("migrate").expect("database");
    let env = Env::new();
    let dag = env.dag("hello", "steps:\n  - name: a\n    command: echo hi\n");
    for i in 0..3 {
        let ok = env
            .trellis()
            .args(["start", "-r", &format!("m{i}")])
            .arg(&dag)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let bad = env.dag("broken", "steps:\n  - name: a\n    command: exit 4\n");
    assert!(
        !env.trellis()
            .args(["start", "-r", "b0"])
            .arg(&bad)
            .status()
            .unwrap()
            .success()
    );
    let out = env
        .trellis()
        .args(["enqueue", "-r", "q0"])
        .arg(&dag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let migrate = |env: &Env| {
        let out = env
            .trellis()
            .args(["migrate", "--to", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let first = migrate(&env);
    assert!(
        first.contains("5 in the file store, 5 copied, 0 already there"),
        "{first}"
    );
    assert!(first.contains("queued items: 1"), "{first}");
    assert!(first.contains("verified: all 5 runs"), "{first}");
    let again = migrate(&env);
    assert!(
        again.contains("5 in the file store, 0 copied, 5 already there"),
        "{again}"
    );

    let on_db = |args: &[&str]| {
        let out = env.trellis().env(DB_URL, &url).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let history = on_db(&["history", "hello"]);
    for id in ["m0", "m1", "m2", "q0"] {
        assert!(history.contains(id), "{id} in\n{history}");
    }
    assert!(on_db(&["status", "broken"]).contains("failed"));
    // The queued item came along: taking it out of the database's queue works once.
    let dequeue = |env: &Env| {
        env.trellis()
            .env(DB_URL, &url)
            .args(["dequeue", "-r", "q0", "hello"])
            .status()
            .unwrap()
    };
    assert!(dequeue(&env).success());
    assert!(!dequeue(&env).success());
}

#[test]
fn an_unreachable_database_exits_3_with_the_reason() {
    let env = Env::new();
    env.dag("hello", "steps:\n  - command: echo hi\n");
    let url = format!(
        "postgres://trellis:hunter2@127.0.0.1:{}/trellis",
        free_port()
    );
    for args in [
        &["status", "hello"][..],
        &["scheduler"][..],
        &["server", "--port", "0"][..],
    ] {
        let out = env.trellis().env(DB_URL, &url).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "trellis {args:?}: {err}");
        assert!(err.contains("cannot reach the database"), "{err}");
        assert!(err.contains("refused"), "the reason is given: {err}");
        assert!(!err.contains("hunter2"), "no password in messages: {err}");
    }
}

/// The same cluster on MariaDB, smaller: two schedulers, one server.
#[test]
fn schedulers_on_mariadb_run_every_run_once() {
    let db = Db::start(Kind::Mariadb).expect("throwaway MariaDB");
    let url = db.create_database("ha").expect("database");
    let shared = tempfile::tempdir().unwrap();
    let done = shared.path().join("done.log");
    let envs: Vec<Env> = (0..3).map(|_| Env::new()).collect();
    for env in &envs {
        work_dag(env, &done);
    }
    let _schedulers: Vec<Proc> = envs[..2]
        .iter()
        .map(|env| Proc::spawn_with(env, &["scheduler"], "scheduler", &[(DB_URL, url.as_str())]))
        .collect();
    let (_server, base) = server(&envs[2], &url);
    let ids: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    for id in &ids {
        enqueue_dag(&base, "work", id);
    }
    wait_for(60, "every run to finish", || {
        let runs = history(&base);
        (runs.len() == ids.len() && runs.iter().all(|(_, s)| s == "succeeded")).then_some(())
    });
    let log = std::fs::read_to_string(&done).unwrap();
    assert_eq!(log.lines().count(), ids.len(), "each run once:\n{log}");
}

/// PostgreSQL goes away in the middle of a drain and comes back: the deep health check
/// says so meanwhile, and afterwards every run has finished once.
#[test]
fn a_database_outage_loses_and_duplicates_nothing() {
    let mut db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("outage").expect("database");
    let shared = tempfile::tempdir().unwrap();
    let done = shared.path().join("done.log");
    let env = Env::new();
    work_dag(&env, &done);
    // Two at a time, so the outage falls in the middle of the drain.
    let config = env.config("run_queue:\n  max_concurrent_runs: 2\n");
    let config = config.to_str().unwrap();
    let args = ["scheduler", "--config", config];
    let _scheduler = Proc::spawn_with(&env, &args, "leading", &[(DB_URL, url.as_str())]);
    let server_env = Env::new();
    work_dag(&server_env, &done);
    let (_server, base) = server(&server_env, &url);
    let ids: Vec<String> = (0..20).map(|i| format!("o{i:02}")).collect();
    for id in &ids {
        enqueue_dag(&base, "work", id);
    }
    wait_for(30, "some runs to finish", || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|d| d.lines().count() >= 3)
    });
    db.stop().expect("stop PostgreSQL");
    let before = std::fs::read_to_string(&done).unwrap().lines().count();
    assert!(
        before < ids.len(),
        "the drain was still going when the database went"
    );
    let health = |want: u16| {
        let resp = client().get(format!("{base}/health/deep")).send().ok()?;
        (resp.status().as_u16() == want)
            .then(|| resp.json::<Value>().ok())
            .flatten()
    };
    let down = wait_for(30, "the deep health check to see the database gone", || {
        health(503)
    });
    assert_eq!(down["checks"]["store"]["ok"], false, "{down}");
    // A request that needs the store waits a little, then gets a 503 that says why.
    let resp = client()
        .get(format!("{base}/api/v2/dag-runs"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    db.restart().expect("restart PostgreSQL");
    wait_for(60, "every run to finish", || {
        let runs = history(&base);
        (runs.len() == ids.len() && runs.iter().all(|(_, s)| s == "succeeded")).then_some(())
    });
    let log = std::fs::read_to_string(&done).unwrap();
    let counts = completions(&log);
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "run {id}:\n{log}");
    }
    let store = wait_for(30, "the store check to pass again", || {
        let resp = client().get(format!("{base}/health/deep")).send().ok()?;
        let body: Value = resp.json().ok()?;
        (body["checks"]["store"]["ok"] == true).then_some(body)
    });
    assert!(
        store["checks"]["store"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("postgres")
    );
}

/// The live run feed on a database announces the end of a run that started long before
/// the newest runs (it is not among the latest pages any more).
#[test]
fn the_run_feed_announces_an_old_run_ending() {
    use std::io::BufRead;
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("feed").expect("database");
    let env = Env::new();
    let gate = env.path("gate");
    let long = format!(
        "steps:\n  - name: wait\n    command: sh -c 'while [ ! -f {} ]; do sleep 0.05; done'\n",
        gate.display()
    );
    env.dag("long", &long);
    env.dag(
        "quick",
        "max_active_runs: -1\nsteps:\n  - name: one\n    command: \"true\"\n",
    );
    let _scheduler = Proc::spawn_with(&env, &["scheduler"], "leading", &[(DB_URL, url.as_str())]);
    let (_server, base) = server(&env, &url);
    enqueue_dag(&base, "long", "old");
    wait_for(30, "the long run to start", || {
        history(&base)
            .iter()
            .any(|(id, s)| id == "old" && s == "running")
            .then_some(())
    });
    let response = client()
        .get(format!("{base}/api/v2/events"))
        .send()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(response)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(data) = line.strip_prefix("data:")
                && tx.send(data.to_string()).is_err()
            {
                return;
            }
        }
    });
    for i in 0..80 {
        enqueue_dag(&base, "quick", &format!("q{i:02}"));
    }
    wait_for(60, "the quick runs to finish", || {
        let runs = history(&base);
        (runs.iter().filter(|(_, s)| s == "succeeded").count() == 80).then_some(())
    });
    std::fs::write(&gate, "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let data = rx
            .recv_timeout(left)
            .expect("the feed to announce the old run's end");
        let event: Value = serde_json::from_str(data.trim()).unwrap_or_default();
        if event["run_id"] == "old" && event["status"] == "succeeded" {
            break;
        }
    }
}

/// `/metrics` on a database counts a run whose process was killed as failed, as it does on
/// the file store, not as running for ever.
#[test]
fn metrics_count_a_killed_run_as_failed() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("metrics").expect("database");
    let env = Env::new();
    let file = env.dag("sleepy", "steps:\n  - name: nap\n    command: sleep 30\n");
    let file = file.to_str().unwrap();
    let mut run = env
        .trellis()
        .env(DB_URL, &url)
        .args(["start", file])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (_server, base) = server(&env, &url);
    let count = |status: &str| -> Option<f64> {
        let text = client()
            .get(format!("{base}/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let key = format!("trellis_dag_runs{{status=\"{status}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&key))?;
        line[key.len()..].trim().parse().ok()
    };
    wait_for(30, "the run to count as running", || {
        (count("running") == Some(1.0)).then_some(())
    });
    run.kill().unwrap(); // SIGKILL: the run cannot record its end
    run.wait().unwrap();
    // The store still says running: the server sees the process is gone.
    wait_for(30, "the killed run to count as failed", || {
        (count("failed") == Some(1.0) && count("running").unwrap_or(0.0) == 0.0).then_some(())
    });
}

/// Rewrites the stored runs as if the machine `far-away` had run them.
fn run_elsewhere(url: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let moved = format!(
        "UPDATE attempts SET record = replace(record, '\"host\":\"{}\"', '\"host\":\"far-away\"')",
        host.trim()
    );
    let psql = std::process::Command::new("psql")
        .args(["-X", "-q", url, "-c", &moved])
        .status();
    assert!(psql.unwrap().success());
}

/// A step's log kept on another machine: the API and the live log stream say where it
/// is (from the log index) instead of showing nothing.
#[test]
fn a_log_on_another_machine_is_named_not_blank() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("logs").expect("database");
    let env = Env::new();
    let file = env.dag("hello", "steps:\n  - name: a\n    command: echo hi\n");
    let out = env
        .trellis()
        .env(DB_URL, &url)
        .args(["start", "-r", "h1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // As if another machine had run it: its name in the record, and no log file here.
    run_elsewhere(&url);
    std::fs::remove_dir_all(env.home.path().join("logs")).unwrap();
    let (_server, base) = server(&Env::new(), &url);

    let resp = client()
        .get(format!("{base}/api/v2/dag-runs/hello/h1/steps/a/log"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "log_on_other_host", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("far-away") && message.contains("(3 bytes)"),
        "{message}"
    );

    let stream = client()
        .get(format!(
            "{base}/api/v2/dag-runs/hello/h1/steps/a/log/stream"
        ))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        stream.contains("event: error") && stream.contains("far-away"),
        "{stream}"
    );
}

/// `trellis stop` of a run that another machine executes leaves a stop request in the
/// database, and that machine's `trellis start` stops the run.
#[test]
fn a_run_on_another_machine_is_stopped_through_the_database() {
    let db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("stops").expect("database");
    let env = Env::new();
    let file = env.dag("sleepy", "steps:\n  - name: nap\n    command: sleep 60\n");
    let mut run = env
        .trellis()
        .env(DB_URL, &url)
        .args(["start", "-r", "s1"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = |env: &Env| -> String {
        let out = env
            .trellis()
            .env(DB_URL, &url)
            .args(["status", "--json", "sleepy"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["status"].as_str().unwrap_or_default().to_string()
    };
    wait_for(30, "the run to start", || {
        (status(&env) == "running").then_some(())
    });
    // As seen from another machine: the record names a host that is not this one.
    run_elsewhere(&url);
    let out = env
        .trellis()
        .env(DB_URL, &url)
        .args(["stop", "sleepy"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("stopped"), "{said}");
    let exit = run.wait().unwrap();
    assert!(!exit.success(), "the run ended stopped, not succeeded");
    assert_ne!(status(&env), "succeeded");
}

/// PostgreSQL restarts in the middle of a 200-step run in `trellis start`: the steps keep
/// running while it is away (only the record waits), no write is lost, and the run ends
/// succeeded with every step recorded once and no warning.
#[test]
fn a_postgres_restart_mid_run_holds_no_step_and_loses_no_write() {
    let mut db = Db::start(Kind::Postgres).expect("throwaway PostgreSQL");
    let url = db.create_database("midrun").expect("database");
    let env = Env::new();
    let marks = env.path("marks.log");
    let mut yaml = String::from("name: long\nsteps:\n");
    for i in 1..=200 {
        yaml.push_str(&format!(
            "  - name: s{i}\n    command: sh -c 'echo s{i} >> {}; sleep 0.02'\n",
            marks.display()
        ));
    }
    let file = env.dag("long", &yaml);
    let run = env
        .trellis()
        .env(DB_URL, &url)
        .args(["start", "-q", "-r", "r1"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = || {
        std::fs::read_to_string(&marks)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_for(60, "the run to be under way", || {
        (lines() >= 30).then_some(())
    });
    db.stop().expect("stop PostgreSQL");
    let at_stop = lines();
    assert!(
        at_stop < 160,
        "the run was nearly over when the database went"
    );
    // The database is still away: steps go on without it.
    wait_for(
        60,
        "steps to keep running while the database is away",
        || (lines() >= at_stop + 40).then_some(()),
    );
    db.restart().expect("restart PostgreSQL");
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status = env
        .trellis()
        .env(DB_URL, &url)
        .args(["status", "--json", "-r", "r1", "long"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let run: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 200);
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{run:#}");
    assert_eq!(run["warnings"], json!([]), "{run:#}");
    assert_eq!(lines(), 200, "each step ran once");
}
