//! A throwaway single-node Slurm for tests of the slurm executor: munged with its own key
//! and socket, slurmctld and slurmd as root on free ports, every file in a temp dir, no
//! slurmdbd, `batch_sched_delay=0` so a job starts at once. Clients find it through
//! `SLURM_CONF` ([`Slurm::env`]). Dropped, it cancels every job and stops the daemons.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::podman::run;

pub struct Slurm {
    dir: tempfile::TempDir,
}

impl Slurm {
    /// The daemons and clients are installed and we are root.
    pub fn available() -> bool {
        let root = fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        root && ["slurmctld", "slurmd", "munged", "sbatch"]
            .iter()
            .all(|p| which(p).is_some())
    }

    pub fn start() -> io::Result<Slurm> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-slurm-")
            .tempdir()?;
        let base = dir.path().to_path_buf();
        let base = base.as_path();
        for sub in ["state", "spool", "log", "run"] {
            fs::create_dir_all(base.join(sub))?;
        }
        let key: Vec<u8> = (0..1024)
            .map(|i| (i * 7 + std::process::id() as usize) as u8)
            .collect();
        fs::write(base.join("munge.key"), key)?;
        fs::set_permissions(
            base.join("munge.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let slurm = Slurm { dir };
        run(
            Command::new(which("munged").unwrap_or_else(|| "munged".into()))
                .arg("--force")
                .arg(format!(
                    "--socket={}",
                    base.join("run/munge.sock").display()
                ))
                .arg(format!("--key-file={}", base.join("munge.key").display()))
                .arg(format!(
                    "--pid-file={}",
                    base.join("run/munged.pid").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    base.join("log/munged.log").display()
                ))
                .arg(format!(
                    "--seed-file={}",
                    base.join("run/munged.seed").display()
                )),
        )?;
        fs::write(slurm.conf(), conf(base, free_port()?, free_port()?))?;
        run(Command::new("slurmctld")
            .args(["-c", "-f"])
            .arg(slurm.conf()))?;
        run(Command::new("slurmd").arg("-f").arg(slurm.conf()))?;
        slurm.wait_idle()?;
        Ok(slurm)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// The variables that point Slurm's commands at this cluster.
    pub fn env(&self) -> [(&'static str, PathBuf); 1] {
        [("SLURM_CONF", self.conf())]
    }

    /// A Slurm command against this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env());
        cmd
    }

    fn wait_idle(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .command("sinfo")
                .args(["-h", "-N", "-o", "%T"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.path().join("log/slurmctld.log"))
                    .unwrap_or_default();
                return Err(io::Error::other(format!(
                    "slurm node not idle in 30 s: {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_daemon(&self, pid_file: &str) {
        let pid =
            fs::read_to_string(self.dir.path().join("run").join(pid_file)).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<u32>() {
            let _ = Command::new("kill").arg(pid.to_string()).output();
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = self
            .command("scancel")
            .args(["--full", "--user=root"])
            .output();
        for pid_file in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            self.stop_daemon(pid_file);
        }
    }
}

fn conf(base: &Path, ctld: u16, slurmd: u16) -> String {
    let node = node_name();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let b = base.display();
    format!(
        "ClusterName=trellis\nSlurmctldHost={node}(127.0.0.1)\nSlurmctldPort={ctld}\nSlurmdPort={slurmd}\n\
         SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nCredType=cred/munge\n\
         AuthInfo=socket={b}/run/munge.sock\nStateSaveLocation={b}/state\nSlurmdSpoolDir={b}/spool\n\
         SlurmctldPidFile={b}/run/slurmctld.pid\nSlurmdPidFile={b}/run/slurmd.pid\n\
         SlurmctldLogFile={b}/log/slurmctld.log\nSlurmdLogFile={b}/log/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n\
         SchedulerType=sched/builtin\nSchedulerParameters=batch_sched_delay=0\n\
         SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nMinJobAge=3600\n\
         SlurmctldTimeout=30\nSlurmdTimeout=30\nMpiDefault=none\nMailProg=/bin/true\n\
         NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
         PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    )
}

fn node_name() -> String {
    let host =
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    host.trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}
