//! `daggyd`: the Daggy daemon's name for Trellis, installed with the `trellis` binary. It
//! runs `trellis daggyd` with the same arguments: the `trellis` beside this file, else the
//! one on `PATH`. (A symlink named `daggyd` to `trellis` works too, without this hop.)

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("trellis")))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| PathBuf::from("trellis"));
    // Only returns when the exec failed.
    let err = Command::new(&program)
        .arg("daggyd")
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("daggyd: cannot run {}: {err}", program.display());
    ExitCode::from(127)
}
