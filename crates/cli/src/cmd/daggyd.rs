//! `daggyd` / `trellis daggyd`: the Daggy daemon. `-d` starts a detached copy of this
//! process (its own session, stdin closed, output to the log file) and returns once it
//! listens, or with the reason it could not start; the copy holds the pid file locked, so
//! a second daemon on the same pid file refuses to start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use trellis_server::config::FileConfig;

use super::run::home;
use crate::cli::{DaggydArgs, Setup};

/// The fd on which a detached daemon says it listens.
const READY_FD: i32 = 3;
const READY_ENV: &str = "TRELLIS_DAGGYD_READY_FD";

pub fn run(args: &DaggydArgs) -> anyhow::Result<ExitCode> {
    let setup = Setup {
        dags: None,
        config: args.trellis_config.clone(),
    };
    super::apply_paths(Some(&setup))?;
    let data = trellis_store::data_dir(&home());
    if args.daemonize {
        return detach(args, &data);
    }
    let config = daggy_config(args.config.as_deref())?;
    let _pid = match &args.pid_file {
        Some(path) => Some(hold_pid_file(path)?),
        None => None,
    };
    let trellis = super::server::config_file(&setup);
    let file = match &trellis {
        Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    let opts = trellis_daggyd::Options {
        config,
        data,
        store: super::open_store()?,
        auth: trellis_server::auth::Settings::resolve(&file.auth, &home())
            .map_err(anyhow::Error::msg)?,
        insecure_no_auth: args.insecure_no_auth,
    };
    trellis_daggyd::check(&opts)?;
    super::schedule::until_signal(|shutdown| async move {
        let (tx, rx) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
        tokio::spawn(async move {
            if let Ok(addr) = rx.await {
                eprintln!("daggyd listening on http://{addr}/");
                tell_ready(&addr.to_string());
            }
        });
        trellis_daggyd::serve(opts, shutdown, Some(tx)).await
    })
}

/// The daemon config: the file's, or Daggy's defaults; warnings go to stderr.
fn daggy_config(path: Option<&Path>) -> anyhow::Result<trellis_daggyd::config::Config> {
    let Some(path) = path else {
        return Ok(trellis_daggyd::config::Config::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (config, warnings) = trellis_daggyd::config::Config::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(config)
}

/// Locks the pid file for the life of the returned guard and writes our pid in it.
fn hold_pid_file(path: &Path) -> anyhow::Result<Flock<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the pid file {}", path.display()))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "daggyd is already running (pid {}, pid file {})",
                pid.trim(),
                path.display()
            );
        }
    };
    held.set_len(0)?;
    writeln!(held, "{}", std::process::id())?;
    Ok(held)
}

/// A detached daemon tells its starter where it listens, then closes the pipe.
fn tell_ready(addr: &str) {
    if std::env::var(READY_ENV).is_err() {
        return;
    }
    // SAFETY: the starter handed us this fd for this one message; nothing else uses it.
    let mut pipe = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(READY_FD) };
    let _ = writeln!(pipe, "{addr}");
}

/// Starts the detached copy and waits for its word.
fn detach(args: &DaggydArgs, data: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| data.join("daggyd.pid"));
    let log_file = args
        .log_file
        .clone()
        .unwrap_or_else(|| data.join("daggyd.log"));
    // Refuse before starting anything when another daemon holds it.
    drop(hold_pid_file(&pid_file)?);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let (mut reader, writer) = std::io::pipe()?;
    let writer: OwnedFd = writer.into();
    let mut cmd = Command::new(std::env::current_exe().context("cannot find this binary")?);
    cmd.arg("daggyd").args(forwarded(args, &pid_file));
    cmd.env(READY_ENV, READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let fd = writer.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if nix::libc::dup2(fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    drop(writer);
    let mut said = String::new();
    let _ = reader.read_to_string(&mut said);
    if said.trim().is_empty() {
        let status = child.try_wait().ok().flatten();
        bail!(
            "daggyd did not start ({}); see {}",
            status.map_or("still starting".into(), |s| s.to_string()),
            log_file.display()
        );
    }
    println!(
        "daggyd started (pid {}), listening on http://{}/, logging to {}",
        child.id(),
        said.trim(),
        log_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags the detached copy gets: ours without `-d`, with the pid file made explicit.
fn forwarded(args: &DaggydArgs, pid_file: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut flag = |name: &str, value: Option<&PathBuf>| {
        if let Some(v) = value {
            out.push(name.into());
            out.push(std::path::absolute(v).unwrap_or_else(|_| v.clone()));
        }
    };
    flag("--config", args.config.as_ref());
    flag("--trellis-config", args.trellis_config.as_ref());
    flag("--pid-file", Some(&pid_file.to_path_buf()));
    if args.insecure_no_auth {
        out.push("--insecure-no-auth".into());
    }
    out
}
