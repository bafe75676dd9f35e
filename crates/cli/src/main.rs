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
    init_logging(args.log_format);
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

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (default: Trellis's own at
/// `info`, other crates' at `warn`, so a database driver's chatter stays out). Colours
/// only on a terminal, so logs written to files stay plain text.
fn init_logging(format: cli::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,trellis=info"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    // Only fails when a subscriber is set already, which then keeps doing the job.
    let _ = match format {
        cli::LogFormat::Text => builder.with_ansi(ansi).try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    };
}
