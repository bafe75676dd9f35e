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
    limit_malloc_arenas();
    // Loading refuses step types this build has no executor for.
    trellis_spec::set_executor_check(trellis_executor::check_step);
    trellis_spec::set_dag_option_check(trellis_executor::check_dag_option);
    // Dagu 1.x's `run: <dag>` calls a DAG of the dags dir.
    trellis_spec::set_dag_exists(cmd::dag_in_dags_dir);
    // Installed (or linked) as `daggyd`, the binary is the Daggy daemon.
    let name = std::env::args_os().next().map(std::path::PathBuf::from);
    if name.as_deref().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("daggyd")) {
        let daggyd = cli::DaggydCommand::parse();
        init_logging(daggyd.log_format);
        return finish(cmd::daggyd(&daggyd.args));
    }
    let args = cli::Args::parse();
    init_logging(args.log_format);
    finish(cmd::run(args))
}

/// The exit code of a command's outcome; an error is printed first.
fn finish(outcome: anyhow::Result<ExitCode>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report::chain(&err));
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

/// Caps glibc's malloc at one arena unless `MALLOC_ARENA_MAX` says otherwise. By default
/// glibc gives each new thread its own arena (up to 8 per core), and each keeps the memory
/// its thread freed: a 10 000-step run peaked at 40 MiB RSS over 17 MiB of live heap, 32
/// MiB with one arena, at the same speed (threads allocate mostly from their own caches,
/// and the engine's few threads rarely meet in `malloc`). `docs/PERFORMANCE.md` has the
/// figures. Called first in `main`, before any thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets an allocator parameter; nothing else runs yet.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
    }
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (default: Trellis's own at
/// `info`, other crates' at `warn`, so a database driver's chatter stays out). Colours
/// only on a terminal, so logs written to files stay plain text.
///
/// The default filter is a plain target list: `EnvFilter` compiles regexes that cost every
/// process (and so every step's fork) over a megabyte, so it is built only for `RUST_LOG`.
fn init_logging(format: cli::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::Filter;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, Layer, Registry, fmt};

    let filter: Box<dyn Filter<Registry> + Send + Sync> = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => Box::new(EnvFilter::new(spec)),
        _ => Box::new(
            Targets::new()
                .with_default(LevelFilter::WARN)
                .with_target("trellis", LevelFilter::INFO),
        ),
    };
    let ansi = std::io::stderr().is_terminal();
    let layer = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let layer = match format {
        cli::LogFormat::Text => layer.with_ansi(ansi).boxed(),
        cli::LogFormat::Json => layer.json().boxed(),
    };
    // Only fails when a subscriber is set already, which then keeps doing the job.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}
