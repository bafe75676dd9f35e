//! A throwaway Redis for tests of the Redis logger: Debian's `/usr/bin/redis-server`
//! (package `redis-server`) in the foreground on 127.0.0.1 and a free port, its data and log
//! in a temp dir of its own. Ready means it answered `PING` with `+PONG` over TCP.
//!
//! Durability: the append-only file is on (`appendfsync no`): Redis writes each command to
//! the file before it replies, so whatever a client saw acknowledged survives
//! [`Redis::stop`] (SIGKILL, like a crash) and is there again after [`Redis::start_again`].
//! No RDB snapshots. Dropped, the server is killed and its dir deleted.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::failure;

const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long a start may take before it is an error.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// `/usr/bin/redis-server` is installed (`apt-get install redis-server`).
    pub fn available() -> bool {
        Path::new(REDIS_SERVER).is_file()
    }

    /// Starts a fresh, empty server; returns once it answers `PING`.
    pub fn start() -> io::Result<Redis> {
        if !Redis::available() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{REDIS_SERVER} not found: apt-get install redis-server (scripts/test does)"
                ),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("trellis-redis-")
            .tempdir()?;
        let mut redis = Redis {
            dir,
            child: None,
            port: 0,
        };
        // The port is free when we look; another process may take it before Redis binds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            redis.port = free_port()?;
            match redis.launch() {
                Err(e) if attempts < 3 && e.to_string().contains("Address already in use") => {
                    continue;
                }
                other => return other.map(|()| redis),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL), like a crash; the data dir is kept for
    /// [`Redis::start_again`]. Clients lose their connections.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts the server again on the same port and dir: it reloads its append-only file.
    pub fn start_again(&mut self) -> io::Result<()> {
        self.stop()?;
        self.launch()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn launch(&mut self) -> io::Result<()> {
        let log = self.path("redis.log");
        // Redis appends to its log; a file of our own also catches what it prints before that.
        let out = File::options().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        self.child = Some(cmd.spawn()?);
        self.wait_ready(&log)
    }

    /// Polls with `PING` over TCP; a server still loading its data answers `-LOADING`.
    fn wait_ready(&mut self, log: &Path) -> io::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let answer = ping(self.port);
            if matches!(&answer, Ok(a) if a.starts_with("+PONG")) {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let message = format!("redis-server exited with {status}");
                return Err(failure(&message, Some(log)));
            }
            if Instant::now() > deadline {
                let message = format!(
                    "redis-server on port {} not ready after {} s: {answer:?}",
                    self.port,
                    READY_WITHIN.as_secs()
                );
                return Err(failure(&message, Some(log)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.stop(); // the TempDir field then removes the data
    }
}

/// Sends `PING` and returns the first line of the answer.
fn ping(port: u16) -> io::Result<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
