//! `trellis`: the one binary. Parses arguments, dispatches to a command, and maps the
//! outcome to an exit code: 0 success, 1 a run that did not succeed, 2 invalid input,
//! 3 the database cannot be reached.

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
            // A database that cannot be reached is not bad input: say so with its own code.
            let unreachable = err.chain().any(|e| {
                matches!(
                    e.downcast_ref::<trellis_store::Error>(),
                    Some(trellis_store::Error::Unreachable { .. })
                )
            });
            if unreachable {
                return ExitCode::from(report::EXIT_UNAVAILABLE);
            }
            ExitCode::from(report::EXIT_INVALID)
        }
    }
}
