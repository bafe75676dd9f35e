//! Cluster security and shared-nothing mode with real processes. Certificates are made
//! here with rcgen. Shared-nothing tests give the coordinator and each worker a home of its
//! own (no common directory) and put the coordinator on 127.0.0.2, the workers dialling it
//! over TLS with a signing key.

mod support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use support::{Env, Proc, Server, client, free_port, wait_for};

const KEY: &str = "a-signing-key-of-32-characters!!";

/// PEM files of a CA, a server certificate for 127.0.0.1/127.0.0.2/localhost, and client
/// certificates: valid, expired, and one from another CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (root, root_key) = ca("Trellis test CA");
        let (other, other_key) = ca("Some other CA");
        let issuer = Issuer::from_params(&root, &root_key);
        let other_issuer = Issuer::from_params(&other, &other_key);
        write(dir, "ca", &root.self_signed(&root_key).unwrap().pem(), None);
        write(
            dir,
            "other-ca",
            &other.self_signed(&other_key).unwrap().pem(),
            None,
        );
        let names = vec!["localhost".into(), "127.0.0.1".into(), "127.0.0.2".into()];
        leaf(dir, "server", names, &issuer, false);
        leaf(dir, "client", vec!["worker".into()], &issuer, false);
        leaf(dir, "expired", vec!["worker".into()], &issuer, true);
        leaf(dir, "stranger", vec!["worker".into()], &other_issuer, false);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params, KeyPair::generate().unwrap())
}

fn leaf(dir: &Path, name: &str, sans: Vec<String>, issuer: &Issuer<'_, &KeyPair>, expired: bool) {
    let mut params = CertificateParams::new(sans).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    write(dir, name, &cert.pem(), Some(&key.serialize_pem()));
}

fn write(dir: &Path, name: &str, cert: &str, key: Option<&str>) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    if let Some(key) = key {
        std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
    }
}

/// A coordinator on `host` with TLS (mTLS when `mtls`) and the signing key.
fn coordinator(env: &Env, pki: &Pki, host: &str, port: u16, mtls: bool, extra: &[&str]) -> Proc {
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let port = port.to_string();
    let mut args = vec![
        "coordinator",
        "--coordinator.host",
        host,
        "--coordinator.port",
        &port,
        "--coordinator.tls-cert",
        &cert,
        "--coordinator.tls-key",
        &key,
        "--coordinator.signing-key",
        KEY,
    ];
    if mtls {
        args.extend(["--coordinator.tls-ca", &ca]);
    }
    args.extend(extra);
    Proc::spawn(env, &args, "coordinator listening on")
}

/// Worker arguments: id, labels, how to reach the coordinator, TLS files and key.
fn worker_args(
    id: &str,
    labels: &str,
    addr: &str,
    tls: &[(&str, String)],
    key: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "worker",
        "--worker.id",
        id,
        "--worker.labels",
        labels,
        "--worker.coordinators",
        addr,
        "--coordinator.signing-key",
        key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in tls {
        args.push(flag.to_string());
        args.push(value.clone());
    }
    args
}

fn good_tls(pki: &Pki) -> Vec<(&'static str, String)> {
    vec![
        ("--worker.tls-ca", pki.path("ca.pem")),
        ("--worker.tls-cert", pki.path("client.pem")),
        ("--worker.tls-key", pki.path("client.key")),
    ]
}

/// Starts a worker that must fail to join; returns what it printed once it says `expect`.
fn refused_worker(env: &Env, args: &[String], expect: &str) -> Proc {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(env, &refs, expect)
}

#[test]
fn bad_credentials_are_refused_with_a_clear_log_line() {
    let env = Env::new();
    let pki = Pki::new(&env.path("pki"));
    let port = free_port();
    let coord = coordinator(&env, &pki, "127.0.0.1", port, true, &[]);
    let addr = format!("127.0.0.1:{port}");
    let tls = |ca: &str, cert: Option<&str>| {
        let mut v = vec![("--worker.tls-ca", pki.path(&format!("{ca}.pem")))];
        if let Some(c) = cert {
            v.push(("--worker.tls-cert", pki.path(&format!("{c}.pem"))));
            v.push(("--worker.tls-key", pki.path(&format!("{c}.key"))));
        }
        v
    };
    // (worker, TLS files, key, what the worker says, what the coordinator logs)
    let cases = vec![
        (
            "w-wrong-ca",
            tls("other-ca", Some("client")),
            KEY,
            "UnknownIssuer",
            "alert: UnknownCA",
        ),
        (
            "w-no-cert",
            tls("ca", None),
            KEY,
            "; retrying",
            "peer sent no certificates",
        ),
        (
            "w-expired",
            tls("ca", Some("expired")),
            KEY,
            "; retrying",
            "certificate expired",
        ),
        // How the worker sees a refused client certificate depends on timing (an alert or
        // a closed stream); the coordinator's log always says why.
        (
            "w-stranger",
            tls("ca", Some("stranger")),
            KEY,
            "; retrying",
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "w-wrong-key",
            good_tls(&pki),
            "another-key-of-enough-length",
            "bad signature on the token",
            "refused a call: bad signature on the token of worker w-wrong-key",
        ),
    ];
    for (id, tls, key, worker_says, coordinator_says) in cases {
        let args = worker_args(id, "pool=x", &addr, &tls, key);
        let worker = refused_worker(&env, &args, worker_says);
        assert!(
            !worker.said("registered with the coordinator"),
            "{id}: {}",
            worker.output()
        );
        wait_for(10, coordinator_says, || {
            coord.said(coordinator_says).then_some(())
        });
        assert!(
            !coord.said(&format!("worker {id} registered")),
            "{id} got in"
        );
    }
    // And a worker with good credentials joins.
    let args = worker_args("w-good", "pool=x", &addr, &good_tls(&pki), KEY);
    let good = refused_worker(&env, &args, "registered with the coordinator");
    assert!(good.said("shared-nothing"));
}

#[test]
fn a_tampered_task_is_refused_and_never_runs() {
    let env = Env::new();
    let pki = Pki::new(&env.path("pki"));
    let port = free_port();
    let coord = coordinator(&env, &pki, "127.0.0.1", port, true, &[]);
    let addr = format!("127.0.0.1:{port}");
    let worker_home = env.path("worker-home");
    let args = worker_args("w-1", "pool=t", &addr, &good_tls(&pki), KEY);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let home = worker_home.display().to_string();
    let worker = Proc::spawn_with(
        &env,
        &refs,
        "registered with the coordinator",
        &[("TRELLIS_HOME", &home)],
    );
    // A queued run, and a task for it signed with the key, then altered on disk.
    let file = env.dag(
        "victim",
        "worker_selector: {pool: t}\nsteps:\n  - name: a\n    command: echo honest\n",
    );
    let out = env
        .trellis()
        .arg("enqueue")
        .arg(&file)
        .output()
        .expect("enqueue");
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let loaded =
        trellis_spec::load_str("victim.yaml", &std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut spec = trellis_cluster::table::TaskSpec {
        task_id: "t-1".into(),
        dag_name: "victim".into(),
        run_id: run_id.clone(),
        attempt: 1,
        max_attempts: 1,
        definition_json: serde_json::to_string(&loaded.dag).unwrap(),
        params: String::new(),
        selector: trellis_core::worker::parse_labels("pool=t").unwrap(),
        queued_at: String::new(),
        queued_ms: 0,
        env: Default::default(),
        existing_run: true,
        queue: "victim".into(),
        tags: Default::default(),
        signature: String::new(),
        parent: None,
    };
    spec.signature = trellis_cluster::security::sign_task(KEY.as_bytes(), &spec);
    let marker = env.path("pwned");
    spec.definition_json = spec
        .definition_json
        .replace("echo honest", &format!("touch {}", marker.display()));
    let task = trellis_cluster::table::Task {
        spec,
        phase: trellis_cluster::table::Phase::pending(),
    };
    let data = env.home.path().join("data");
    trellis_cluster::tasks::write(&data, &task).unwrap();
    wait_for(20, "the worker to refuse", || {
        worker.said("refusing task t-1").then_some(())
    });
    assert!(
        worker.said("signature does not verify"),
        "{}",
        worker.output()
    );
    let done = wait_for(20, "the run to fail", || {
        let out = env
            .trellis()
            .args(["status", "--json", "victim", "-r", &run_id])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "failed").then_some(v)
    });
    assert!(
        done["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused by worker w-1"),
        "{done}"
    );
    assert!(!marker.exists(), "the altered command ran");
    assert!(coord.said("refused by worker w-1"));
}

/// A shared-nothing cluster: the coordinator and scheduler share one home; each worker has
/// its own, and reaches the coordinator on 127.0.0.2 over mTLS with the signing key.
struct Nothing {
    env: Env,
    pki: Pki,
    port: u16,
    coordinator: Option<Proc>,
    _scheduler: Proc,
    workers: Vec<Proc>,
}

impl Nothing {
    fn start(lease: &str) -> Nothing {
        let env = Env::new();
        let pki = Pki::new(&env.path("pki"));
        let port = free_port();
        let coordinator = Some(coordinator(
            &env,
            &pki,
            "127.0.0.2",
            port,
            true,
            &["--coordinator.lease-timeout", lease],
        ));
        let scheduler = Proc::spawn_with(
            &env,
            &["scheduler"],
            "leading",
            &[("TRELLIS_COORDINATOR_SIGNING_KEY", KEY)],
        );
        Nothing {
            env,
            pki,
            port,
            coordinator,
            _scheduler: scheduler,
            workers: Vec::new(),
        }
    }

    fn worker(&mut self, id: &str, labels: &str) -> usize {
        let addr = format!("127.0.0.2:{}", self.port);
        let args = worker_args(id, labels, &addr, &good_tls(&self.pki), KEY);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let home = self.env.path(&format!("home-{id}"));
        let (home, dir) = (
            home.display().to_string(),
            self.env.work.path().display().to_string(),
        );
        let w = Proc::spawn_with(
            &self.env,
            &refs,
            "registered with the coordinator",
            &[("TRELLIS_HOME", &home), ("DIR", &dir)],
        );
        self.workers.push(w);
        self.workers.len() - 1
    }

    fn enqueue(&self, name: &str) -> String {
        let file = self.env.dags().join(format!("{name}.yaml"));
        let out = self
            .env
            .trellis()
            .arg("enqueue")
            .arg(&file)
            .output()
            .expect("enqueue");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn status(&self, name: &str, run: &str) -> Option<Value> {
        support::status(&self.env, name, run)
    }

    fn wait(
        &self,
        name: &str,
        run: &str,
        secs: u64,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(secs, what, || self.status(name, run).filter(|s| f(s)))
    }

    fn logs(&self, name: &str, run: &str, step: &str) -> String {
        let out = self
            .env
            .trellis()
            .args(["logs", name, "-r", run, "--step", step])
            .output()
            .expect("logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn shared_nothing_routes_and_stores_status_and_logs_on_the_coordinator() {
    let mut c = Nothing::start("30");
    c.worker("w-gpu", "gpu=true");
    c.worker("w-cpu", "cpu=true");
    c.env.dag("gpu", "worker_selector: {gpu: \"true\"}\nsteps:\n  - name: a\n    command: echo on gpu; echo err >&2\n  - name: b\n    command: echo second\n    output: OUT\n");
    c.env.dag(
        "cpu",
        "worker_selector: {cpu: \"true\"}\nsteps:\n  - name: a\n    command: echo on cpu\n",
    );
    let (g, p) = (c.enqueue("gpu"), c.enqueue("cpu"));
    let done_g = c.wait("gpu", &g, 30, "gpu run", |s| s["status"] == "succeeded");
    let done_p = c.wait("cpu", &p, 30, "cpu run", |s| s["status"] == "succeeded");
    assert_eq!(done_g["steps"][0]["worker_id"], "w-gpu");
    assert_eq!(done_p["steps"][0]["worker_id"], "w-cpu");
    assert_eq!(done_g["outputs"]["OUT"], "second");
    assert_eq!(c.logs("gpu", &g, "a").trim(), "on gpu");
    assert_eq!(c.logs("cpu", &p, "a").trim(), "on cpu");
    let err = c
        .env
        .trellis()
        .args(["logs", "gpu", "-r", &g, "--step", "a", "--stderr"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&err.stdout).trim(), "err");
    // The workers kept their own copies in their own homes; the coordinator's home holds
    // no worker registry (there is no shared dir to write it to).
    assert!(c.env.path("home-w-gpu/data/dag-runs/gpu").is_dir());
    assert!(
        !c.env
            .home
            .path()
            .join("data/service-registry/worker")
            .exists()
    );
}

#[test]
fn shared_nothing_logs_survive_a_coordinator_restart_without_loss_or_duplicates() {
    let mut c = Nothing::start("30");
    c.worker("w-1", "pool=s");
    // 40 numbered lines, the second half printed while the coordinator is down.
    let script = "for i in $(seq 1 20); do echo line $i; done; for i in $(seq 1 300); do [ -f \"$DIR/go\" ] && break; sleep 0.1; done; for i in $(seq 21 40); do echo line $i; sleep 0.02; done";
    c.env.dag(
        "count",
        &format!(
            "worker_selector: {{pool: s}}\nsteps:\n  - name: lines\n    command: '{script}'\n"
        ),
    );
    let run = c.enqueue("count");
    c.wait("count", &run, 30, "the first lines to arrive", |_| {
        c.logs("count", &run, "lines").lines().count() >= 20
    });
    c.coordinator.as_mut().unwrap().kill9();
    c.coordinator = None;
    std::fs::write(c.env.path("go"), "").unwrap();
    let worker = &c.workers[0];
    wait_for(20, "the worker to notice", || {
        worker.said("retrying").then_some(())
    });
    c.coordinator = Some(coordinator(&c.env, &c.pki, "127.0.0.2", c.port, true, &[]));
    let done = c.wait("count", &run, 60, "the run to succeed", |s| {
        s["status"] == "succeeded"
    });
    assert_eq!(done["steps"][0]["worker_id"], "w-1");
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    let stored: Vec<String> = c
        .logs("count", &run, "lines")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(stored, expected, "lost or duplicated lines");
}

#[test]
fn shared_nothing_killed_worker_is_replaced() {
    let mut c = Nothing::start("3");
    let first = c.worker("w-a", "pool=k");
    let script =
        "for i in $(seq 1 300); do [ -f \"$DIR/go\" ] && break; sleep 0.1; done; echo done";
    c.env.dag("moves", &format!("worker_selector: {{pool: k}}\nretry_policy: {{limit: 1, interval_sec: 0}}\nsteps:\n  - name: w\n    command: '{script}'\n"));
    let run = c.enqueue("moves");
    c.wait("moves", &run, 30, "the step to run on w-a", |s| {
        s["steps"][0]["status"] == "running" && s["steps"][0]["worker_id"] == "w-a"
    });
    c.workers[first].kill9();
    c.worker("w-b", "pool=k");
    std::fs::write(c.env.path("go"), "").unwrap();
    let done = c.wait("moves", &run, 60, "the run to succeed on w-b", |s| {
        s["status"] == "succeeded"
    });
    assert_eq!(done["steps"][0]["worker_id"], "w-b");
    assert_eq!(c.logs("moves", &run, "w").trim(), "done");
}

/// `start-all` with an mTLS coordinator: its server lists the workers (it reads the
/// coordinator beside it, it does not dial it in plaintext), deep health passes, and
/// `trellis workers` reaches the coordinator with the config's client certificate.
#[test]
fn start_all_with_mtls_lists_its_workers() {
    let env = Env::new();
    let pki = Pki::new(&env.path("pki"));
    let port = free_port().to_string();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let flags = [
        "--coordinator.host",
        "127.0.0.2",
        "--coordinator.port",
        &port,
        "--coordinator.tls-cert",
        &cert,
        "--coordinator.tls-key",
        &key,
        "--coordinator.tls-ca",
        &ca,
        "--coordinator.signing-key",
        KEY,
    ];
    let all = Server::spawn(&env, "start-all", &flags);
    let addr = format!("127.0.0.2:{port}");
    let args = worker_args("w-tls", "gpu=true", &addr, &good_tls(&pki), KEY);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let home = env.path("home-w-tls").display().to_string();
    let _worker = Proc::spawn_with(
        &env,
        &refs,
        "registered with the coordinator",
        &[("TRELLIS_HOME", &home)],
    );
    let http = client();
    let get = |path: &str| -> Option<Value> {
        http.get(format!("{}{path}", all.url))
            .send()
            .ok()?
            .json()
            .ok()
    };
    let listed = |body: &Value| {
        body["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["id"] == "w-tls"))
    };
    wait_for(20, "the mTLS worker in GET /api/v2/workers", || {
        get("/api/v2/workers").filter(listed)
    });
    let deep = get("/health/deep").unwrap();
    assert_eq!(deep["checks"]["coordinator"]["ok"], true, "{deep}");

    let config = env.config(&format!(
        "worker:\n  tls:\n    ca_file: {ca}\n    cert_file: {}\n    key_file: {}\n",
        pki.path("client.pem"),
        pki.path("client.key")
    ));
    let out = env
        .trellis()
        .args(["workers", "--json", "--coordinator", &addr, "--config"])
        .arg(&config)
        .env("TRELLIS_COORDINATOR_SIGNING_KEY", KEY)
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed(&body), "{body}");
}
