//! A stand-in Kubernetes for tests of the kubernetes executor and run launcher: kmock's
//! in-memory API emulator with the test's own controllers and kubelet (`kube/cluster.py`:
//! pods run as local processes, objects validated against the Kubernetes OpenAPI schema).
//! NOT a real API server; no real cluster can run on the machines the tests run on.
//! Clients find it through the kubeconfig [`Cluster::kubeconfig`] writes (plain HTTP to
//! 127.0.0.1, no credentials). Dropped, it stops the emulator and every pod's process.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PyPI packages the stand-in needs, installed into [`python_path`] when missing.
const PACKAGES: &[&str] = &["kmock==0.8", "kubernetes-validate==1.37.0"];

pub struct Cluster {
    dir: tempfile::TempDir,
    child: Child,
    url: String,
}

/// Where the stand-in's Python packages live: `$HOME/.cache/trellis-ci/py-kube`.
pub fn python_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/trellis-ci/py-kube")
}

impl Cluster {
    /// Python 3.11+ is there (the packages are installed on first use).
    pub fn available() -> bool {
        Command::new("python3")
            .args(["-c", "import sys; sys.exit(sys.version_info < (3, 11))"])
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn start() -> io::Result<Cluster> {
        install()?;
        let dir = tempfile::Builder::new().prefix("trellis-kube-").tempdir()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/cluster.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .env("PYTHONPATH", python_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("cluster.log"))?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(url) = std::fs::read_to_string(dir.path().join("url")) {
                break url;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("cluster.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "the stand-in did not start: {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let url = url.trim_end_matches('/').to_string();
        let cluster = Cluster { dir, child, url };
        std::fs::write(cluster.kubeconfig(), kubeconfig(&cluster.url))?;
        Ok(cluster)
    }

    /// A kubeconfig for the stand-in (context `stand-in`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// GET of an API path, as JSON (`None` on 404).
    pub fn get(&self, path: &str) -> io::Result<Option<serde_json::Value>> {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .arg(format!("{}{path}", self.url))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
        match code {
            "200" => serde_json::from_str(body)
                .map(Some)
                .map_err(io::Error::other),
            "404" => Ok(None),
            other => Err(io::Error::other(format!("GET {path}: {other} {body}"))),
        }
    }

    /// POST of an object to an API path (a namespace, a config map, a secret).
    pub fn create(&self, path: &str, object: &serde_json::Value) -> io::Result<()> {
        let out = Command::new("curl")
            .args(["-s", "-f", "-H", "Content-Type: application/json", "-d"])
            .arg(object.to_string())
            .arg(format!("{}{path}", self.url))
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("POST {path} failed: {out:?}")))
        }
    }

    /// Every object clients created, as the stand-in validated it against the Kubernetes
    /// OpenAPI schema: `(kind, name, error)`.
    pub fn validated(&self) -> Vec<(String, String, Option<String>)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("validated.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (s("kind"), s("name"), v["error"].as_str().map(String::from))
            })
            .collect()
    }

    /// The stand-in's own log (controller errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: the stand-in kills its pods' processes (sessions of their own) first.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn install() -> io::Result<()> {
    let target = python_path();
    let ok = Command::new("python3")
        .args(["-c", "import kmock, kubernetes_validate"])
        .env("PYTHONPATH", &target)
        .status()?
        .success();
    if ok {
        return Ok(());
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&target)
        .args(PACKAGES)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("pip install {PACKAGES:?} failed")))
    }
}

fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: tester\n    namespace: default\ncurrent-context: stand-in\nusers:\n- name: tester\n  user: {{}}\n"
    )
}
