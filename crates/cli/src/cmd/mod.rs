//! One module per command; each returns the process exit code.

mod dry;
mod manage;
mod queue;
mod run;
mod schedule;
mod server;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Args, Command};

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Validate(a) => validate::run(&a),
        Command::Dry(a) => dry::run(&a),
        Command::Start(a) => run::start(&a),
        Command::Status(a) => run::status(&a),
        Command::Stop(a) => manage::stop(&a),
        Command::Retry(a) => manage::retry(&a),
        Command::Restart(a) => manage::restart(&a),
        Command::History(a) => manage::history(&a),
        Command::Logs(a) => manage::logs(&a),
        Command::Enqueue(a) => queue::enqueue(&a),
        Command::Dequeue(a) => queue::dequeue(&a),
        Command::Cleanup(a) => manage::cleanup(&a),
        Command::Scheduler(a) => schedule::scheduler(&a),
        Command::Server(a) => server::server(&a),
        Command::StartAll(a) => server::start_all(&a),
        Command::Token(c) => server::token(&c),
        Command::Webhook(a) => server::webhook(&a),
        Command::Dags(a) => schedule::dags(&a),
        Command::Backfill(a) => schedule::backfill(&a),
        Command::Schema => {
            let schema = trellis_spec::schema::dag_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads a workflow file, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Cancels `token` on SIGINT (Ctrl-C) or SIGTERM, so that runs stop cleanly.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}
