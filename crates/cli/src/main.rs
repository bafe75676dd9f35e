//! `trellis`: the one binary. Parses arguments, dispatches to a command, and maps the
//! outcome to an exit code: 0 success, 1 a run that did not succeed, 2 invalid input.

mod cli;
mod cmd;
mod progress;
mod report;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cmd::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(report::EXIT_INVALID)
        }
    }
}
