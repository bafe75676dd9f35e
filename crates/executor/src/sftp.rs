//! `sftp` steps (`action: sftp.upload` / `sftp.download`, `type: sftp`): files and
//! directories (recursively) copied with the system `sftp` in batch mode, over the same
//! connection keys as `ssh` steps ([`crate::ssh_conn`]). An upload puts each file under a
//! temporary name beside its destination and renames it into place, so a reader on the
//! host never sees half a file; the destination's parent directories are made, and a
//! directory's tree is merged into the destination. A download makes its local parents.
//! Each copy prints Dagu's line: `Uploaded <src> (<n> bytes) to <dst>`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest};
use crate::ssh_conn::Conn;

const KEYS: &[&str] = &["source", "destination", "direction"];

#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(skip)]
    conn: Conn,
    source: Option<String>,
    destination: Option<String>,
    direction: Option<String>,
}

fn parse(value: &serde_json::Value) -> Result<Config, String> {
    if value.is_null() {
        return Err("sftp needs `source` and `destination`".into());
    }
    crate::ssh_conn::known_keys(value, &[crate::ssh::CONN_KEYS, KEYS])?;
    let mut config: Config = crate::ssh_conn::from_map(value)?;
    config.conn = Conn::parse(value)?;
    if config.source.is_none() || config.destination.is_none() {
        return Err("sftp needs `source` and `destination`".into());
    }
    match config.direction.as_deref() {
        None | Some("upload" | "download") => Ok(config),
        Some(other) => Err(format!("direction: `{other}` is not upload or download")),
    }
}

pub(crate) struct Sftp;

impl Action for Sftp {
    fn kind(&self) -> &'static str {
        "sftp"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let done = copy(&req, &mut out).await;
            out.end(done)
        })
    }
}

/// Bytes under a local path (a file's size, or a directory's files added up).
fn size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// sftp's batch-file quoting: double quotes, with `\\` and `"` escaped. Glob characters
/// need nothing more: sftp takes them literally inside quotes (`put`, `get` and `rm` glob).
/// Refuses a path with a control character: a newline would end the batch line, and the
/// next one would be sftp's own command (`!cmd` runs a local shell).
fn plain(path: &str) -> Result<(), String> {
    match path.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "the path {path:?} holds a control character ({c:?})"
        )),
        None => Ok(()),
    }
}

fn q(path: &str) -> String {
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `-mkdir` for each parent of the remote `dst` (`-` lets an existing one pass).
fn parents(dst: &str) -> String {
    let mut text = String::new();
    let mut parent = String::new();
    let parts: Vec<&str> = dst.split('/').collect();
    for (i, part) in parts[..parts.len().saturating_sub(1)].iter().enumerate() {
        if i > 0 {
            parent.push('/');
        }
        parent.push_str(part);
        if !part.is_empty() && *part != "." {
            text.push_str(&format!("-mkdir {}\n", q(&parent)));
        }
    }
    text
}

/// The batch of an upload: the parents made, then each file put under a temporary name
/// beside its destination and renamed into place (the old one removed first, for servers
/// without POSIX rename). A directory is walked: its tree is merged into `dst`.
fn upload_batch(src: &Path, dst: &str) -> Result<String, String> {
    let mut text = parents(dst);
    let mut todo = vec![(src.to_path_buf(), dst.to_string())];
    while let Some((local, remote)) = todo.pop() {
        plain(&local.display().to_string())?;
        plain(&remote)?;
        // A symlink is copied as what it points to, but a linked directory is not walked
        // (a link to a parent would make the walk endless).
        let meta = std::fs::metadata(&local).map_err(|e| format!("{}: {e}", local.display()))?;
        let linked = std::fs::symlink_metadata(&local).is_ok_and(|m| m.file_type().is_symlink());
        if meta.is_dir() && linked {
            return Err(format!(
                "{} is a link to a directory: give the directory itself",
                local.display()
            ));
        }
        if meta.is_dir() {
            text.push_str(&format!("-mkdir {}\n", q(&remote)));
            let entries =
                std::fs::read_dir(&local).map_err(|e| format!("{}: {e}", local.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", local.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                todo.push((entry.path(), format!("{remote}/{name}")));
            }
            continue;
        }
        let local = local.display().to_string();
        let tmp = format!("{remote}.trellis-tmp-{}", std::process::id());
        text.push_str(&format!("put {} {}\n", q(&local), q(&tmp)));
        text.push_str(&format!("-rm {}\n", q(&remote)));
        text.push_str(&format!("rename {} {}\n", q(&tmp), q(&remote)));
    }
    Ok(text)
}

async fn copy(req: &StepRequest, out: &mut Output) -> Result<(), String> {
    let config = parse(&req.config)?;
    let upload = config.direction.as_deref() != Some("download");
    let (src, dst) = (
        config.source.clone().unwrap_or_default(),
        config.destination.clone().unwrap_or_default(),
    );
    plain(&src)?;
    plain(&dst)?;
    let line = if upload {
        let path = req.resolve(&src);
        if !path.exists() {
            return Err(format!("source {} does not exist", path.display()));
        }
        let dst = into_dir(&dst, &path);
        run_batch(&config.conn, &upload_batch(&path, &dst)?).await?;
        format!(
            "Uploaded {} ({} bytes) to {dst}\n",
            path.display(),
            size(&path)
        )
    } else {
        let path = req.resolve(&dst);
        // sftp makes no local directories; Dagu's download makes the parents.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        }
        let text = format!("get -r {} {}\n", q(&src), q(&path.display().to_string()));
        run_batch(&config.conn, &text).await?;
        format!(
            "Downloaded {src} ({} bytes) to {}\n",
            size(&path),
            path.display()
        )
    };
    out.out(line.as_bytes())
        .map_err(|e| format!("cannot write the step's output: {e}"))
}

/// A destination ending in `/` is a directory: the source goes in it, under its own name.
fn into_dir(dst: &str, src: &Path) -> String {
    match (dst.ends_with('/'), src.file_name()) {
        (true, Some(name)) => format!("{dst}{}", name.to_string_lossy()),
        _ => dst.to_string(),
    }
}

/// Runs `sftp -b -` with the batch on stdin; the error is what sftp said.
async fn run_batch(conn: &Conn, text: &str) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sftp");
    cmd.args(conn.options("-P")?)
        .args(["-q", "-b", "-", "--"])
        .arg(conn.destination()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let askpass = conn.askpass()?;
    if let Some(a) = &askpass {
        a.apply(&mut cmd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run sftp: {e} (is the OpenSSH client installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("sftp: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    Err(format!(
        "sftp failed: {}",
        if said.is_empty() {
            "no reason given"
        } else {
            said
        }
    ))
}
