//! Shared harness for the server tests: a fresh `TRELLIS_HOME` and dags dir, a real
//! `trellis server` (or `start-all`) on port 0, and a blocking HTTP client.
//!
//! The server prints `server listening on http://ADDR/` once bound; [`Server::start`]
//! waits for that line, so no test sleeps to synchronise. The guard kills the server's
//! process group when the test ends, panicking or not.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");

/// A fresh home and dags dir.
pub struct Env {
    pub home: TempDir,
    pub work: TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            home: tempfile::tempdir().expect("home dir"),
            work: tempfile::tempdir().expect("work dir"),
        };
        std::fs::create_dir_all(env.dags()).expect("dags dir");
        env
    }

    pub fn dags(&self) -> PathBuf {
        self.work.path().join("dags")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    /// Writes `dags/<name>.yaml`.
    pub fn dag(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dags().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write dag");
        path
    }

    /// A `trellis` command with this env's home and dags dir.
    pub fn trellis(&self) -> Command {
        let mut c = Command::new(TRELLIS);
        c.env("TRELLIS_HOME", self.home.path())
            .env("TRELLIS_DAGS_DIR", self.dags())
            .env_remove("TRELLIS_CONFIG")
            .env_remove("TRELLIS_AUTH_TOKEN")
            .env_remove("TRELLIS_AUTH_BASIC_USERNAME")
            .env_remove("TRELLIS_AUTH_BASIC_PASSWORD");
        c
    }

    /// Writes `config.yaml` in the work dir and returns its path.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let path = self.path("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        path
    }
}

/// A running `trellis server` (or `start-all`); killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` plus any path prefix, without a trailing slash.
    pub url: String,
}

impl Server {
    /// Starts `trellis server --port 0 <args>` and waits until it listens.
    pub fn start(env: &Env, args: &[&str]) -> Server {
        Server::spawn(env, "server", args)
    }

    pub fn spawn(env: &Env, command: &str, args: &[&str]) -> Server {
        let mut cmd = env.trellis();
        cmd.arg(command)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start trellis server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.strip_prefix("server listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(Ok(url.trim_end_matches('/').to_string()));
                    sent = true;
                } else if !sent {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(url)) => return Server { child, url },
                Ok(Err(line)) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start; it said:\n{}", lines.join("\n"));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn home_of(env: &Env) -> &Path {
    env.home.path()
}

/// Any long-running `trellis` process, waited for until it prints a line containing
/// `ready`; its process group is killed on drop. All it printed is kept for messages.
pub struct Proc {
    pub child: Child,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The rest of the ready line (e.g. the address after "listening on ").
    pub ready_line: String,
}

impl Proc {
    pub fn spawn(env: &Env, args: &[&str], ready: &str) -> Proc {
        Proc::spawn_with(env, args, ready, &[])
    }

    pub fn spawn_with(env: &Env, args: &[&str], ready: &str, vars: &[(&str, &str)]) -> Proc {
        let mut cmd = env.trellis();
        cmd.args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start trellis");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (wanted, sink) = (ready.to_string(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&wanted) {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => Proc {
                child,
                log,
                ready_line: line,
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "`trellis {}` did not print {ready:?}; it said:\n{}",
                    args.join(" "),
                    log.lock().unwrap().join("\n")
                );
            }
        }
    }

    pub fn said(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILLs the process alone (not its group): a machine that vanished.
    pub fn kill9(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `trellis status --json` of a run, or of the latest run when `run_id` is empty.
pub fn status(env: &Env, dag: &str, run_id: &str) -> Option<serde_json::Value> {
    let mut cmd = env.trellis();
    cmd.args(["status", "--json", dag]);
    if !run_id.is_empty() {
        cmd.args(["-r", run_id]);
    }
    let out = cmd.output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// `trellis enqueue FILE`, which must succeed; returns the run id it printed.
pub fn enqueue(env: &Env, file: &Path) -> String {
    let out = env
        .trellis()
        .arg("enqueue")
        .arg(file)
        .output()
        .expect("enqueue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A throwaway Podman service for a test, or `None` (the test is skipped) where Podman
/// is not installed; CI installs it, so nothing skips there.
pub fn podman() -> Option<trellis_testdb::podman::Podman> {
    use trellis_testdb::podman::Podman;
    if !Podman::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "podman and busybox-static must be installed in CI"
        );
        eprintln!("skipped: podman (root) and busybox-static are needed");
        return None;
    }
    Some(Podman::start().expect("start podman"))
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The step `name` of a run as `status --json` shows it.
pub fn step<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {run:#}"))
}
