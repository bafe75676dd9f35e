//! A throwaway Podman service speaking the Docker Engine API on a unix socket, for tests of
//! container steps: its own storage and runtime dirs in a temp dir, runc and cgroupfs (what
//! works in CI containers and VMs without systemd), no registry, and one local image,
//! [`Podman::IMAGE`], built from the host's static busybox. Dropped, it stops the service,
//! removes every container and image it made and deletes its dirs.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Podman {
    dir: tempfile::TempDir,
    service: Child,
    socket: PathBuf,
}

const BUSYBOX: &str = "/bin/busybox";

impl Podman {
    /// The image every test container runs: busybox's applets under `/bin`, `sh` as its command.
    pub const IMAGE: &'static str = "localhost/trellis-test:latest";

    /// Podman and a static busybox are installed, and we are root (rootful Podman).
    pub fn available() -> bool {
        let root = fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        root && Path::new(BUSYBOX).exists()
            && Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// Starts the service and builds [`Podman::IMAGE`]; returns once `/_ping` answers.
    pub fn start() -> io::Result<Podman> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-podman-")
            .tempdir()?;
        let base = dir.path();
        // Its own tmp dir: the default, /run/libpod, is shared by every service on the
        // machine, and one test's reset would pull it from under another's.
        fs::write(
            base.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\nnetns = \"host\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 tmp_dir = \"{}/tmp\"\n",
                base.display()
            ),
        )?;
        fs::write(
            base.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/storage\"\n",
                base.display()
            ),
        )?;
        let socket = base.join("podman.sock");
        let mut podman = Podman {
            service: Command::new("true").spawn()?,
            dir,
            socket,
        };
        podman.build_image()?;
        podman.service = podman
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", podman.socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(podman.dir.path().join("service.log"))?)
            .spawn()?;
        podman.wait_ready()?;
        Ok(podman)
    }

    /// `DOCKER_HOST` for this service.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A `podman` command against this service's storage (to inspect what a test left).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.envs(self.env());
        cmd
    }

    /// The variables that point `podman` (or a script running it) at this service's
    /// settings and storage.
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        let base = self.dir.path();
        [
            ("CONTAINERS_CONF", base.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", base.join("storage.conf")),
        ]
    }

    /// Names of the containers that exist (running or not).
    pub fn containers(&self) -> Vec<String> {
        let out = self
            .command()
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    }

    fn build_image(&self) -> io::Result<()> {
        let root = self.dir.path().join("rootfs");
        for sub in ["bin", "tmp", "etc", "proc", "sys", "dev", "root", "work"] {
            fs::create_dir_all(root.join(sub))?;
        }
        fs::copy(BUSYBOX, root.join("bin/busybox"))?;
        let list = Command::new(BUSYBOX).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
            }
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(root.join("etc/group"), "root:x:0:\n")?;
        let tar = self.dir.path().join("rootfs.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        run(self
            .command()
            .args(["import", "-q", "--change", "CMD [\"/bin/sh\"]"])
            .args(["--change", "ENV PATH=/bin"])
            .arg(&tar)
            .arg(Self::IMAGE))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ping(&self.socket).unwrap_or(false) {
                return Ok(());
            }
            if let Some(status) = self.service.try_wait()? {
                let log = fs::read_to_string(self.dir.path().join("service.log"))?;
                return Err(io::Error::other(format!(
                    "podman service exited ({status}): {log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "podman service did not answer /_ping in 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ping(socket: &Path) -> io::Result<bool> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.") && answer.contains(" 200 "))
}

/// Runs a setup command; its stderr is the error when it fails.
pub(crate) fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    )))
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
        // Removes containers, images and the overlay mounts under the temp dir, so that
        // the dir itself can be deleted.
        let _ = self
            .command()
            .args(["system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
