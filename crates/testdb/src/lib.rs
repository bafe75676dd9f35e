//! Throwaway PostgreSQL and MariaDB servers for tests: each [`Server`] gets its own temp dir and a
//! free 127.0.0.1 port, holds an empty database `trellis`, and is stopped and wiped on drop.
//! Tests should skip (not fail) when [`Server::available`] is false; SETUP.md lists the packages.
//!
//! Running as root (CI containers): neither server agrees to run as root. PostgreSQL's `initdb`
//! and `pg_ctl` run through `runuser -u postgres --`; `mariadbd` and `mariadb-install-db` get
//! `--user=mysql` and drop privileges themselves. The user is created when missing, and the temp
//! dir is chowned to it and made 0755 (tempfile makes it 0700), because the server must reach it.
//! When not root, everything runs as yourself.
//!
//! Durability: fsync is off (fast), but each commit still reaches the OS at commit time, so a
//! committed row survives [`Server::stop`] (SIGKILL), as it would survive a real server crash.

pub mod kube;
pub mod podman;
pub mod redis;
pub mod slurm;
pub mod smtp;
pub mod sshd;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

/// A running (or [`Server::stop`]ped) throwaway server; dropping it stops it and deletes its data.
pub struct Server {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    /// `mariadbd` is our child; `postgres` is daemonized by `pg_ctl` (found via postmaster.pid).
    child: Option<Child>,
    running: bool,
}

// synchronous_commit stays on: with fsync=off it costs a write(), and "off" loses commits on SIGKILL.
const PG_OPTS: &str = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off";
const PG_INITDB: &str = "-U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync --no-instructions";
// innodb_flush_log_at_trx_commit=2: log written at commit, never fsynced; 0 loses commits on SIGKILL.
const MARIA_OPTS: &str = "--skip-name-resolve --innodb-buffer-pool-size=64M \
    --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0";

impl Server {
    /// Starts a fresh server; Err with a clear message (including the server's log tail) if it cannot.
    pub fn start(kind: Kind) -> io::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-testdb-")
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        if is_root() {
            give_to(os_user(kind), dir.path())?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Built before the server runs, so that Drop cleans up after any failed step below.
        let mut server = Server {
            kind,
            port,
            dir,
            child: None,
            running: false,
        };
        server.init()?;
        server.launch()?;
        server.sql("CREATE DATABASE trellis")?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/trellis", self.port),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{}/trellis", self.port),
        }
    }

    /// The URL of database `name` on this server (see [`Server::create_database`]).
    pub fn database_url(&self, name: &str) -> String {
        let url = self.url();
        format!("{}/{name}", url.trim_end_matches("/trellis"))
    }

    /// Creates database `name` (letters, digits and `_`) and returns its URL: one server
    /// can give each test a database of its own.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(io::Error::other(format!("bad database name `{name}`")));
        }
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.database_url(name))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when the server binaries exist on this machine.
    pub fn available(kind: Kind) -> bool {
        let tools = match kind {
            Kind::Postgres => ["initdb", "pg_ctl", "psql"].map(pg_tool),
            Kind::Mariadb => ["mariadbd", "mariadb-install-db", "mariadb"].map(tool),
        };
        tools.iter().all(Result::is_ok)
    }

    /// Kills the server abruptly (SIGKILL of all its processes), like a crash: clients lose their
    /// connections and uncommitted work; the data dir is kept for [`Server::restart`].
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.running {
            return Ok(());
        }
        match self.child.take() {
            Some(mut mariadbd) => {
                mariadbd.kill()?;
                mariadbd.wait()?;
            }
            None => self.pg_kill()?,
        }
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port and data dir (it recovers like after a crash).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.launch()
    }

    fn init(&self) -> io::Result<()> {
        let log = self.path("init.log");
        let mut cmd = match self.kind {
            Kind::Postgres => self.as_server_user(&pg_tool("initdb")?),
            Kind::Mariadb => Command::new(tool("mariadb-install-db")?),
        };
        match self.kind {
            Kind::Postgres => cmd.arg("-D").arg(self.path("data")).args(words(PG_INITDB)),
            Kind::Mariadb => cmd
                .args(self.maria_args())
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
        };
        let file = File::create(&log)?; // one open file: two would overwrite each other
        cmd.stdout(file.try_clone()?).stderr(file);
        run(&mut cmd, "initializing the data dir", Some(&log))
    }

    fn launch(&mut self) -> io::Result<()> {
        match self.kind {
            Kind::Postgres => self.launch_pg(),
            Kind::Mariadb => self.launch_mariadb(),
        }
    }

    fn launch_pg(&mut self) -> io::Result<()> {
        let (dir, log) = (self.dir.path().display(), self.path("server.log"));
        // -w: pg_ctl returns once the server accepts connections (or fails after -t seconds).
        let opts = format!("{PG_OPTS} -p {} -k '{dir}'", self.port);
        let mut cmd = self.as_server_user(&pg_tool("pg_ctl")?);
        cmd.arg("-D").arg(self.path("data")).arg("-l").arg(&log);
        cmd.args(["-w", "-t", "30", "-o", &opts, "start"]);
        self.running = true; // a timed-out start may still leave a server to stop
        run(&mut cmd, "pg_ctl start", Some(&log))
    }

    fn launch_mariadb(&mut self) -> io::Result<()> {
        let log = self.path("server.log");
        let mut cmd = Command::new(tool("mariadbd")?);
        cmd.args(self.maria_args())
            .arg(format!("--port={}", self.port));
        cmd.arg(format!("--socket={}", self.path("mysqld.sock").display()));
        cmd.arg(format!("--pid-file={}", self.path("mysqld.pid").display()));
        cmd.args(["--bind-address=127.0.0.1", "--skip-log-bin"]);
        // No --log-error: the log goes to stderr, a file we opened, whatever user mariadbd becomes.
        let stderr = File::options().create(true).append(true).open(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        self.child = Some(cmd.spawn()?);
        self.running = true;
        self.wait_mariadb(&log)
    }

    /// Polls with a real client login over TCP, so "ready" also means the URL's credentials work.
    fn wait_mariadb(&mut self, log: &Path) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.sql("SELECT 1").is_err() {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                self.running = false;
                return Err(failure(
                    &format!("mariadbd exited with {status}"),
                    Some(log),
                ));
            }
            if Instant::now() > deadline {
                return Err(failure("mariadbd not ready after 30 s", Some(log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Runs one SQL statement over TCP as the URL's user (explicitly TCP: a client that falls back
    /// to the default socket would reach the machine's own server, not ours).
    fn sql(&self, statement: &str) -> io::Result<()> {
        let p = self.port;
        let (program, args) = match self.kind {
            Kind::Postgres => (
                pg_tool("psql")?,
                format!("-X -q -h 127.0.0.1 -p {p} -U postgres -d postgres -c"),
            ),
            Kind::Mariadb => (
                tool("mariadb")?,
                format!("--no-defaults --protocol=tcp -h 127.0.0.1 -P {p} -u root -e"),
            ),
        };
        let mut cmd = Command::new(program);
        cmd.args(words(&args)).arg(statement).stdin(Stdio::null());
        run(&mut cmd, statement, None)
    }

    /// SIGKILLs the postmaster and its children, then clears what a killed postmaster leaves behind.
    fn pg_kill(&mut self) -> io::Result<()> {
        let pidfile = self.path("data/postmaster.pid");
        let text = match fs::read_to_string(&pidfile) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()), // it never started
            other => other?,
        };
        let lines: Vec<&str> = text.lines().collect();
        let Some(postmaster) = lines.first().and_then(|l| l.trim().parse::<u32>().ok()) else {
            return Err(io::Error::other(format!("no pid in {}", pidfile.display())));
        };
        // Freeze it first, so that it cannot fork or respawn children while we collect them.
        signal("STOP", &[postmaster])?;
        let mut pids = children(postmaster)?;
        pids.push(postmaster);
        signal("KILL", &pids)?;
        wait_dead(&pids)?;
        // Line 7 is "<shm key> <shm id>": a killed postmaster leaks its SysV segment.
        if let Some(id) = lines.get(6).and_then(|l| l.split_whitespace().nth(1)) {
            let _ = run(Command::new("ipcrm").args(["-m", id]), "ipcrm", None);
        }
        // The dead stay zombies until init reaps them (~2 s seen), and postgres refuses to start
        // while a lock file names a pid that kill(pid, 0) still finds.
        let socket_lock = self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [pidfile, socket_lock] {
            fs::remove_file(lock).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
        }
        Ok(())
    }

    fn as_server_user(&self, program: &Path) -> Command {
        if !is_root() {
            return Command::new(program);
        }
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", os_user(self.kind), "--"]).arg(program);
        cmd
    }

    /// Shared by mariadb-install-db and mariadbd. Own --tmpdir: concurrent bootstraps sharing /tmp
    /// failed about one time in ten here ("Unknown table 'mysql.tmp_user_sys'", vanished temp tables).
    fn maria_args(&self) -> Vec<String> {
        let dir = self.dir.path().display();
        let mut args = vec!["--no-defaults".to_string()]; // must come first
        args.extend([format!("--datadir={dir}/data"), format!("--tmpdir={dir}")]);
        args.extend(words(MARIA_OPTS).map(String::from));
        if is_root() {
            args.push(format!("--user={}", os_user(self.kind)));
        }
        args
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.kind == Kind::Postgres && self.running {
            // A clean immediate stop also removes the shared memory segment and the lock files.
            if let Ok(pg_ctl) = pg_tool("pg_ctl") {
                let mut cmd = self.as_server_user(&pg_ctl);
                cmd.arg("-D")
                    .arg(self.path("data"))
                    .args(["-m", "immediate", "-w", "stop"]);
                self.running = run(&mut cmd, "pg_ctl stop", None).is_err();
            }
        }
        let _ = self.stop(); // SIGKILL whatever is left; the TempDir field then removes the data
    }
}

fn os_user(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::Mariadb => "mysql",
    }
}

/// /proc/self belongs to the effective uid.
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Creates the system user if missing, and makes it the owner of `dir`.
fn give_to(user: &str, dir: &Path) -> io::Result<()> {
    let exists = Command::new("id")
        .args(["-u", user])
        .output()?
        .status
        .success();
    if !exists {
        let mut cmd = Command::new("useradd");
        cmd.args(words("--system --no-create-home --shell /usr/sbin/nologin"))
            .arg(user);
        run(&mut cmd, "useradd", None)?;
    }
    run(
        Command::new("chown").arg(format!("{user}:")).arg(dir),
        "chown",
        None,
    )
}

/// In the highest installed version's bin dir, e.g. /usr/lib/postgresql/15/bin (Debian layout).
fn pg_tool(name: &str) -> io::Result<PathBuf> {
    let versions = fs::read_dir("/usr/lib/postgresql").map_err(|_| missing(name))?;
    let names = versions.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    let newest = names.max().ok_or_else(|| missing(name))?;
    let path = PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin/{name}"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(name))
    }
}

/// On PATH, or in the sbin dirs that a non-root PATH often lacks (mariadbd is in /usr/sbin).
fn tool(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from);
    let mut candidates = std::env::split_paths(&path)
        .chain(sbin)
        .map(|d| d.join(name));
    candidates
        .find(|p| p.is_file())
        .ok_or_else(|| missing(name))
}

fn missing(name: &str) -> io::Error {
    let hint = "install the packages listed in crates/testdb/SETUP.md";
    io::Error::new(io::ErrorKind::NotFound, format!("{name} not found: {hint}"))
}

fn words(args: &str) -> std::str::SplitWhitespace<'_> {
    args.split_whitespace()
}

/// Runs a command to completion; on failure the error carries its output and the log tail.
fn run(cmd: &mut Command, what: &str, log: Option<&Path>) -> io::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {program}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let output = format!("{stdout}{stderr}");
    Err(failure(
        &format!("{what} failed ({}): {}", out.status, output.trim()),
        log,
    ))
}

/// 40 lines: a failed mariadb-install-db prints ~30 lines of generic advice after its real error.
fn failure(message: &str, log: Option<&Path>) -> io::Error {
    let Some((path, text)) = log.and_then(|p| Some((p, fs::read_to_string(p).ok()?))) else {
        return io::Error::other(message.to_string());
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    io::Error::other(format!(
        "{message}\n--- tail of {} ---\n{tail}",
        path.display()
    ))
}

fn signal(name: &str, pids: &[u32]) -> io::Result<()> {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string));
    run(&mut cmd, "kill", None)
}

/// Direct children of `parent`, from the ppid field of /proc/<pid>/stat.
fn children(parent: u32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// (state, ppid): the fields after the ")" that closes the command name.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    Some((fields.next()?.chars().next()?, fields.next()?.parse().ok()?))
}

/// Waits until every pid is gone or a zombie (dead; only its exit status waits to be reaped).
fn wait_dead(pids: &[u32]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|&p| proc_stat(p).is_some_and(|(state, _)| state != 'Z'))
    {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "pids {pids:?} alive 10 s after SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
