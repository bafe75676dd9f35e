//! A throwaway OpenSSH server for tests of SSH steps: Debian's `/usr/sbin/sshd` in the
//! foreground on 127.0.0.1 and a free port, with a fresh ed25519 host key and a fresh client
//! key pair (no passphrase) in a temp dir; public-key logins only, sftp built in. Clients
//! reach it through [`Sshd::ssh_config`] (`ssh -F <it> trellis-sshd`), or with
//! [`Sshd::key_path`], [`Sshd::known_hosts`], [`Sshd::user`] and [`Sshd::port`] and
//! `StrictHostKeyChecking yes`. Dropped, it stops sshd and deletes the dir.
//!
//! As root, the login user is a dedicated, clean `trellis-ssh` (created when missing, home
//! `/home/trellis-ssh`, shell `/bin/sh`), never root: root's shell start-up files on CI
//! machines print to stderr and cost time on every command. Not root, it is yourself.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{failure, is_root, run};

const SSHD: &str = "/usr/sbin/sshd";
/// The login user when the tests run as root.
const ROOT_USER: &str = "trellis-ssh";
/// The `Host` in [`Sshd::ssh_config`].
const HOST: &str = "trellis-sshd";

pub struct Sshd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    user: String,
}

impl Sshd {
    /// The `Host` name [`Sshd::ssh_config`] defines.
    pub const HOST: &'static str = HOST;

    /// sshd and ssh-keygen are installed (`openssh-server`, `openssh-client`).
    pub fn available() -> bool {
        Path::new(SSHD).is_file() && crate::tool("ssh-keygen").is_ok()
    }

    /// Starts sshd; returns once a real login (`ssh ... true`) succeeds.
    pub fn start() -> io::Result<Sshd> {
        if !Path::new(SSHD).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{SSHD} not found: apt-get install openssh-server openssh-client (scripts/test does)"
                ),
            ));
        }
        let dir = tempfile::Builder::new().prefix("trellis-sshd-").tempdir()?;
        // The login user reads authorized_keys (sshd opens it with the user's uid).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let user = if is_root() {
            fs::create_dir_all("/run/sshd")?;
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))?;
            login_user()?;
            ROOT_USER.to_string()
        } else {
            current_user()?
        };
        let mut sshd = Sshd {
            dir,
            child: None,
            port: 0,
            user,
        };
        sshd.keygen("ssh_host_ed25519_key")?;
        sshd.keygen("id_ed25519")?;
        fs::copy(sshd.path("id_ed25519.pub"), sshd.path("authorized_keys"))?;
        fs::set_permissions(
            sshd.path("authorized_keys"),
            fs::Permissions::from_mode(0o644),
        )?;
        // The port is free when we look; another process may take it before sshd binds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match sshd.launch(free_port()?) {
                Err(e) if attempts < 3 && e.to_string().contains("Address already in use") => {
                    continue;
                }
                other => return other.map(|()| sshd),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user: `trellis-ssh` as root, else yourself.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's private key (ed25519, no passphrase, mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.path("id_ed25519")
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 ...`: the one host key, for `StrictHostKeyChecking yes`.
    pub fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }

    /// An ssh config defining `Host trellis-sshd` with everything above: `ssh -F <it> trellis-sshd`.
    pub fn ssh_config(&self) -> PathBuf {
        self.path("ssh_config")
    }

    /// `ssh -F <ssh_config> trellis-sshd`; add the remote command.
    pub fn ssh(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(self.ssh_config()).arg(HOST);
        cmd
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's log (LogLevel VERBOSE), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn keygen(&self, name: &str) -> io::Result<()> {
        let mut cmd = Command::new(crate::tool("ssh-keygen")?);
        cmd.args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "trellis-testdb",
            "-f",
        ])
        .arg(self.path(name))
        .stdin(Stdio::null());
        run(&mut cmd, "ssh-keygen", None)
    }

    /// Writes the configs for `port`, starts sshd and waits until a login works.
    fn launch(&mut self, port: u16) -> io::Result<()> {
        self.port = port;
        let host_key = fs::read_to_string(self.path("ssh_host_ed25519_key.pub"))?;
        let mut fields = host_key.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        fs::write(
            self.known_hosts(),
            format!("[127.0.0.1]:{port} {kind} {key}\n"),
        )?;
        fs::write(self.path("sshd_config"), self.sshd_config())?;
        fs::write(self.ssh_config(), self.client_config())?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(self.path("sshd_config"))
            .arg("-E")
            .arg(self.path("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let log = self.path("sshd.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ssh().arg("true").stdin(Stdio::null()).output()?;
            if out.status.success() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(failure(&format!("sshd exited with {status}"), Some(&log)));
            }
            if Instant::now() > deadline {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(failure(
                    &format!("no ssh login to sshd in 10 s: {}", stderr.trim()),
                    Some(&log),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sshd_config(&self) -> String {
        let d = self.dir.path().display();
        let (port, user) = (self.port, &self.user);
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/ssh_host_ed25519_key\n\
             PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             AllowUsers {user}\nMaxStartups 200\nMaxSessions 100\n\
             Subsystem sftp internal-sftp\nPrintMotd no\nLogLevel VERBOSE\n"
        )
    }

    fn client_config(&self) -> String {
        let d = self.dir.path().display();
        let (port, user) = (self.port, &self.user);
        format!(
            "Host {HOST}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n\
             \x20 IdentityFile {d}/id_ed25519\n  IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n\
             \x20 StrictHostKeyChecking yes\n  UpdateHostKeys no\n  BatchMode yes\n\
             \x20 ConnectTimeout 5\n  LogLevel ERROR\n"
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Creates `trellis-ssh` when missing, with a password field of `*` (no password, but not
/// locked: without PAM, sshd refuses every login to a `!` account, keys included).
fn login_user() -> io::Result<()> {
    // Tests of one binary start servers in parallel; useradd and usermod lock /etc/passwd.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exists = |user: &str| {
        Command::new("id")
            .args(["-u", user])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !exists(ROOT_USER) {
        let mut cmd = Command::new("useradd");
        cmd.args(["-m", "-s", "/bin/sh", ROOT_USER]);
        // Another test binary may have created it meanwhile.
        if let Err(e) = run(&mut cmd, "useradd", None)
            && !exists(ROOT_USER)
        {
            return Err(e);
        }
    }
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    let locked = shadow
        .lines()
        .filter_map(|l| l.strip_prefix(ROOT_USER)?.strip_prefix(':'))
        .any(|rest| rest.starts_with('!'));
    if locked {
        run(
            Command::new("usermod").args(["-p", "*", ROOT_USER]),
            "usermod",
            None,
        )?;
    }
    Ok(())
}

fn current_user() -> io::Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    if !out.status.success() {
        return Err(io::Error::other("id -un failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
