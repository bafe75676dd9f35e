//! One module per command; each returns the process exit code.

mod cluster;
mod daggyd;
mod dry;
mod manage;
mod migrate;
mod queue;
mod run;
mod schedule;
mod server;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Args, Command};

pub use daggyd::run as daggyd;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    apply_paths(args.command.setup())?;
    match args.command {
        Command::Validate(a) => validate::run(&a),
        Command::Dry(a) => dry::run(&a),
        Command::Start(a) => run::start(&a),
        Command::RunQueued(a) => run::run_queued(&a),
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
        Command::Coordinator(a) => cluster::coordinator(&a),
        Command::Worker(a) => cluster::worker(&a),
        Command::Workers(a) => cluster::workers(&a),
        Command::Webhook(a) => server::webhook(&a),
        Command::Dags(a) => schedule::dags(&a),
        Command::Backfill(a) => schedule::backfill(&a),
        Command::Migrate(a) => migrate::migrate(&a),
        Command::Daggyd(a) => daggyd::run(&a),
        Command::Schema => {
            let schema = trellis_spec::schema::dag_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Exports the config's `paths.data_dir`, `paths.log_dir` and `paths.service_registry_dir`
/// as `TRELLIS_DATA_DIR`, `TRELLIS_LOG_DIR` and `TRELLIS_SERVICE_REGISTRY_DIR` (unless
/// already set), so every crate and every child process (runs started by the server)
/// agrees on where state lives.
pub(crate) fn apply_paths(setup: Option<&crate::cli::Setup>) -> anyhow::Result<()> {
    let path = setup
        .and_then(|s| s.config.clone())
        .or_else(|| std::env::var_os("TRELLIS_CONFIG").map(std::path::PathBuf::from));
    let Some(path) = path else {
        export_state_dir();
        return Ok(());
    };
    let config = trellis_scheduler::config::Config::load(&path).map_err(anyhow::Error::msg)?;
    trellis_executor::set_defaults(config.executors.defaults());
    let database = config
        .storage
        .database_url()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let paths = config.paths;
    // Kept for `open_store`, not exported: the backend is chosen by what is passed in.
    let _ = CONFIGURED_DATABASE.set(database);
    for (var, value) in [
        ("TRELLIS_DATA_DIR", paths.data_dir),
        ("TRELLIS_LOG_DIR", paths.log_dir),
        ("TRELLIS_SERVICE_REGISTRY_DIR", paths.service_registry_dir),
        ("TRELLIS_DAG_STATE_DIR", paths.dag_state_dir),
        ("TRELLIS_DAGS_DIR", paths.dags_dir),
    ] {
        if let Some(value) = value
            && std::env::var_os(var).is_none()
        {
            // Absolute, so children started in another directory agree.
            let value = std::path::absolute(&value).unwrap_or(value);
            // SAFETY: called from `main` before any runtime or thread starts, so no other
            // thread can be reading the environment.
            unsafe { std::env::set_var(var, value) };
        }
    }
    export_state_dir();
    Ok(())
}

/// Whether the dags dir (`TRELLIS_DAGS_DIR`, set from the config, else
/// `$TRELLIS_HOME/dags`) holds a DAG file named `name`.
pub fn dag_in_dags_dir(name: &str) -> bool {
    let dir = std::env::var_os("TRELLIS_DAGS_DIR")
        .map_or_else(|| run::home().join("dags"), std::path::PathBuf::from);
    ["yaml", "yml"]
        .iter()
        .any(|ext| dir.join(format!("{name}.{ext}")).is_file())
}

/// `TRELLIS_DAG_STATE_DIR` for the `state.*` steps: `paths.dag_state_dir` (exported
/// above), else `<data dir>/dag-state`, absolute so that children agree.
fn export_state_dir() {
    if std::env::var_os("TRELLIS_DAG_STATE_DIR").is_some() {
        return;
    }
    let dir = trellis_store::data_dir(&run::home()).join("dag-state");
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    // SAFETY: called from `main` before any runtime or thread starts.
    unsafe { std::env::set_var("TRELLIS_DAG_STATE_DIR", dir) };
}

/// Opens the store every command shares: the database named by the config's `storage`
/// section or `TRELLIS_DATABASE_URL`, else the file store under the home.
/// Opened once per process: `start-all` runs several services on one connection pool.
pub fn open_store() -> anyhow::Result<trellis_store::Shared> {
    static STORE: std::sync::OnceLock<trellis_store::Shared> = std::sync::OnceLock::new();
    if let Some(store) = STORE.get() {
        return Ok(store.clone());
    }
    let patience =
        std::time::Duration::from_secs(PATIENCE.load(std::sync::atomic::Ordering::Relaxed));
    let store = trellis_store::open_with(&run::home(), database_url().as_deref(), patience)?;
    let store = STORE.get_or_init(|| store).clone();
    // Processes sharing a database may share nothing else: `state.*` values live there
    // too. A file store keeps them in the state dir (Dagu's layout).
    if store.spans_machines() {
        trellis_executor::set_state_store(store.clone());
    }
    Ok(store)
}

/// The config file's `storage` database, once read.
static CONFIGURED_DATABASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The database this process uses: `TRELLIS_DATABASE_URL` wins over the config's
/// `storage` section; `None` is the file store.
pub fn database_url() -> Option<String> {
    trellis_store::database_url_from_env().or_else(|| CONFIGURED_DATABASE.get().cloned().flatten())
}

/// Runs `f` to its end on a small runtime of its own: for commands that make one call to
/// the run-control service and exit.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(f))
}

/// The run-control service over this process's store.
pub fn runs() -> anyhow::Result<trellis_runs::Runs> {
    let data = trellis_store::data_dir(&run::home());
    Ok(trellis_runs::Runs::new(open_store()?, data))
}

/// How long database operations retry while the database is away (see
/// [`trellis_store::open_with`]): 10 minutes, so a run loses nothing; `trellis server`
/// sets 15 s before opening, so a request waits that long at most, then gets a 503.
pub static PATIENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(600);

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
