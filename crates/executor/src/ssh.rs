//! `ssh` steps (`action: ssh.run`, `type: ssh`): the step's commands run on a remote host
//! through the system `ssh` ([`crate::ssh_conn`] says why). The remote shell (`shell`,
//! default `/bin/sh`) reads the script from stdin, wrapped in a function so that it is
//! read whole before it runs (a command reading stdin cannot eat the rest of the script).
//! Only the step's own `working_dir` applies remotely (Dagu's rule: the DAG's is local).
//!
//! The script first reports its process group (sshd makes each session its own group);
//! a stop or timeout sends the stop signal to that whole group over a second connection,
//! then SIGKILL after the grace period, so nothing is left running on the host.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest, Work};
use crate::ssh_conn::Conn;

/// Marks the line that reports the remote process group (on stderr, never logged).
const MARK: &str = "\u{1e}trellis-pgid ";

/// The keys of an `ssh` step's `with:`: the connection's, then the step's own.
pub(crate) const CONN_KEYS: &[&str] = &[
    "host",
    "ip",
    "port",
    "user",
    "key",
    "password",
    "strict_host_key",
    "strictHostKey",
    "strictHostKeyChecking",
    "known_host_file",
    "knownHostFile",
    "known_hosts_file",
    "timeout",
    "bastion",
];
const KEYS: &[&str] = &[
    "shell",
    "shell_args",
    "shellArgs",
    "command",
    "working_dir",
    "env",
];

/// The step's `with:`.
#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(skip)]
    conn: Conn,
    /// The remote shell: `/bin/bash`, or with arguments (`bash -e`, `[bash, -e]`).
    shell: Option<serde_json::Value>,
    #[serde(default, alias = "shellArgs")]
    shell_args: Vec<String>,
    /// The command, when not given as the step's `command`.
    command: Option<String>,
    /// The remote working directory: the step's own `working_dir` (the DAG's is local).
    working_dir: Option<String>,
    /// Variables exported on the host: the step's own `env` (never the rest of the run's,
    /// which may hold secrets the host should not see).
    #[serde(default)]
    env: serde_json::Map<String, serde_json::Value>,
}

fn parse(value: &serde_json::Value) -> Result<Config, String> {
    if value.is_null() {
        return Ok(Config::default());
    }
    crate::ssh_conn::known_keys(value, &[CONN_KEYS, KEYS])?;
    let mut config: Config = crate::ssh_conn::from_map(value)?;
    config.conn = Conn::parse(value)?;
    shell(&config)?;
    Ok(config)
}

/// The DAG-level `ssh:` section: defaults under every ssh and sftp step's `with:`.
pub(crate) fn check_defaults(value: &serde_json::Value) -> Result<(), String> {
    parse(value).map(|_| ())
}

/// The remote shell's words.
fn shell(config: &Config) -> Result<Vec<String>, String> {
    let mut words = match &config.shell {
        None => vec!["/bin/sh".to_string()],
        Some(serde_json::Value::String(s)) => {
            shlex::split(s).ok_or_else(|| format!("shell: cannot split `{s}` into words"))?
        }
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or("shell: give a string or a list of strings")?,
        Some(other) => return Err(format!("shell: {other} is not a shell")),
    };
    words.extend(config.shell_args.iter().cloned());
    if words.is_empty() {
        return Err("shell: empty".into());
    }
    Ok(words)
}

pub(crate) struct Ssh;

impl Action for Ssh {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn cleans_up(&self) -> bool {
        true
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            match session(&req, &mut out, cancel).await {
                Ok(outcome) => outcome,
                Err(why) => out.fail(why),
            }
        })
    }
}

pub(crate) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The text the remote shell reads.
fn script(req: &StepRequest, config: &Config) -> Result<String, String> {
    let body = match (&req.work, &config.command) {
        (Work::Line(line), _) => line.clone(),
        (Work::Shell { command, .. }, _) => command.clone(),
        (Work::Argv(argv), _) => argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
        (
            Work::Script {
                program: None,
                text,
            },
            _,
        ) => text.clone(),
        (
            Work::Script {
                program: Some(program),
                text,
            },
            _,
        ) => format!("{program} <<'__TRELLIS_SCRIPT__'\n{text}\n__TRELLIS_SCRIPT__"),
        (Work::Default, Some(command)) => command.clone(),
        (Work::Default, None) => return Err("nothing to run: give the step a `command`".into()),
    };
    let mut text = format!(
        "__trellis_step() {{\nprintf '{MARK}%s\\n' \"$(cut -d' ' -f5 /proc/$$/stat 2>/dev/null || ps -o pgid= -p $$)\" >&2\n"
    );
    if let Some(dir) = &config.working_dir {
        text.push_str(&format!("cd {} || exit 1\n", quote(dir)));
    }
    for (key, value) in &config.env {
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("env: `{key}` is not a variable name"));
        }
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), String::from);
        text.push_str(&format!("export {key}={}\n", quote(&value)));
    }
    // As Dagu's remote script: the first failing command ends it.
    text.push_str("set -e\n");
    text.push_str(&format!("{body}\n}}\n__trellis_step\n"));
    Ok(text)
}

fn command(config: &Config) -> Result<(Command, Option<crate::ssh_conn::Askpass>), String> {
    let mut cmd = Command::new("ssh");
    cmd.args(config.conn.options("-p")?)
        .arg("-T")
        .arg("--")
        .arg(config.conn.destination()?)
        .arg(
            shell(config)?
                .iter()
                .map(|w| quote(w))
                .collect::<Vec<_>>()
                .join(" "),
        );
    let askpass = config.conn.askpass()?;
    if let Some(a) = &askpass {
        a.apply(&mut cmd);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok((cmd, askpass))
}

async fn session(
    req: &StepRequest,
    out: &mut Output,
    cancel: CancellationToken,
) -> Result<Outcome, String> {
    let config = parse(&req.config)?;
    let text = script(req, &config)?;
    let (mut cmd, _askpass) = command(&config)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e} (is the OpenSSH client installed?)"))?;
    let mut stdin = child.stdin.take();
    let mut streams = Streams::new(&mut child)?;
    // The script is written while the output is read: a long script fills the pipe until
    // ssh has connected, and a stop must not wait for that.
    let feed = async {
        if let Some(mut stdin) = stdin.take() {
            // The remote shell may exit before it reads everything (`exit` early): not an error.
            let _ = stdin.write_all(text.as_bytes()).await;
        } // Dropped here: the remote shell sees the end of its script.
    };
    let copied = tokio::select! {
        (_, copied) = async { tokio::join!(feed, streams.copy(out)) } => copied,
        _ = cancel.cancelled() => {
            stop(req, &config, &mut streams, out, &mut child).await;
            return Ok(Outcome::Cancelled);
        }
    };
    copied.map_err(|e| format!("cannot write the step's log: {e}"))?;
    let status = child.wait().await.map_err(|e| format!("ssh: {e}"))?;
    Ok(judge(status, &streams))
}

/// ssh's own failures exit 255 and say why on stderr; anything else is the remote's.
fn judge(status: std::process::ExitStatus, streams: &Streams) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let last = streams.last_err.trim();
    match status.code() {
        Some(255) if streams.pgid.is_none() => Outcome::Failed {
            code: Some(255),
            reason: format!("ssh: {}", last.strip_prefix("ssh: ").unwrap_or(last)),
        },
        Some(code) => Outcome::Exited(code),
        None => Outcome::Signaled(status.signal().unwrap_or(9)),
    }
}

/// How long a stop waits for the remote's process-group report still on its way.
const REPORT_WAIT: Duration = Duration::from_secs(5);

/// Stops the remote group: the stop signal, then SIGKILL once the grace period is over.
/// The output is still copied meanwhile: the step's last words reach its log, and ssh
/// never blocks on a full pipe.
async fn stop(
    req: &StepRequest,
    config: &Config,
    streams: &mut Streams,
    out: &mut Output,
    child: &mut Child,
) {
    // A step stopped at once may not have had its report read yet; it is in the pipe.
    let _ = tokio::time::timeout(REPORT_WAIT, streams.until_pgid(out)).await;
    let pgid = streams.pgid;
    let kill = async {
        if let Some(pgid) = pgid {
            let signal = req
                .stop_signal
                .as_str()
                .trim_start_matches("SIG")
                .to_string();
            remote_kill(config, &signal, pgid).await;
            if tokio::time::timeout(req.grace, child.wait()).await.is_err() {
                remote_kill(config, "KILL", pgid).await;
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    };
    // Bounded: a process that left the group may hold the remote's output open.
    let drain = tokio::time::timeout(req.grace + REPORT_WAIT, streams.copy(out));
    let _ = tokio::join!(kill, drain);
}

/// Signals the remote process group over a second connection. `kill -SIG -PGID`, not
/// `kill -SIG -- -PGID`: dash (Debian's /bin/sh) takes no `--`.
async fn remote_kill(config: &Config, signal: &str, pgid: u32) {
    let Ok((mut cmd, _askpass)) = command(config) else {
        return;
    };
    let Ok(mut child) = cmd.spawn() else {
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let line = format!("kill -{signal} -{pgid} 2>/dev/null\n");
        let _ = stdin.write_all(line.as_bytes()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await;
}

/// The session's output, copied line by line into the step's logs (whole lines, so that
/// a secret is never cut in two before it is masked), minus the process-group report.
/// What was read is kept here, not in a future: a copy interrupted by a stop goes on.
struct Streams {
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    out_open: bool,
    err_open: bool,
    pgid: Option<u32>,
    last_err: String,
}

impl Streams {
    fn new(child: &mut Child) -> Result<Streams, String> {
        Ok(Streams {
            stdout: child.stdout.take().ok_or("ssh has no stdout")?,
            stderr: child.stderr.take().ok_or("ssh has no stderr")?,
            out_buf: Vec::new(),
            err_buf: Vec::new(),
            out_open: true,
            err_open: true,
            pgid: None,
            last_err: String::new(),
        })
    }

    fn open(&self) -> bool {
        self.out_open || self.err_open
    }

    /// Copies until both streams end.
    async fn copy(&mut self, out: &mut Output) -> std::io::Result<()> {
        while self.open() {
            self.step(out).await?;
        }
        Ok(())
    }

    /// Copies until the remote reports its process group (or the streams end).
    async fn until_pgid(&mut self, out: &mut Output) -> std::io::Result<()> {
        while self.pgid.is_none() && self.open() {
            self.step(out).await?;
        }
        Ok(())
    }

    /// One read of either stream, its whole lines written. Cancel-safe: the only await
    /// is the reads, and what they return is handled before the next.
    async fn step(&mut self, out: &mut Output) -> std::io::Result<()> {
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        tokio::select! {
            n = self.stdout.read(&mut a), if self.out_open => {
                let n = n?;
                self.out_open = n > 0;
                self.out_buf.extend_from_slice(&a[..n]);
                flush(&mut self.out_buf, !self.out_open, |line| out.out(line))
            }
            n = self.stderr.read(&mut b), if self.err_open => {
                let n = n?;
                self.err_open = n > 0;
                self.err_buf.extend_from_slice(&b[..n]);
                let (pgid, last) = (&mut self.pgid, &mut self.last_err);
                flush(&mut self.err_buf, !self.err_open, |line| stderr_line(line, pgid, last, out))
            }
        }
    }
}

/// One line of ssh's stderr: the process-group report (kept), or the step's (logged).
fn stderr_line(
    line: &[u8],
    pgid: &mut Option<u32>,
    last: &mut String,
    out: &mut Output,
) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(line);
    if let (Some(id), None) = (text.strip_prefix(MARK), &pgid) {
        *pgid = id.trim().parse().ok();
        return Ok(());
    }
    if !text.trim().is_empty() {
        *last = text.into_owned();
    }
    out.err(line)
}

/// Hands every whole line of `buf` (all of it at the end) to `write`.
fn flush(
    buf: &mut Vec<u8>,
    end: bool,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        write(&line)?;
    }
    if end && !buf.is_empty() {
        write(buf)?;
        buf.clear();
    }
    Ok(())
}
