//! The Daggy daemon on Trellis: `daggyd` (or `trellis daggyd`) reads Daggy's JSON config,
//! serves daggyd's REST API (`/ready`, `/v1/...`) and DaggyR's `/api/v1/runs`, keeps
//! Daggy's integer run ids mapped to Trellis runs (`book`), tells a logger every state
//! change (`sink`: OStream lines, or everything into Redis), and runs tasks through the
//! forking (local, bounded by `threads`), Slurm or no-op executor. Runs start, stop and
//! retry through the run-control service (`trellis-runs`), so they are Trellis runs in
//! `trellis history`, the web UI and `/api/v2` too.

pub mod api;
mod api_list;
pub mod book;
pub mod config;
pub mod daemon;
pub mod observe;
pub mod prepare;
pub mod record;
mod recover;
pub mod redis;
pub mod sink;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_server::auth;

/// Why the daemon, or one of its calls, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] trellis_store::Error),
    #[error(transparent)]
    Runs(Box<trellis_runs::Error>),
    #[error("Redis: {0}")]
    Redis(#[from] redis::Error),
    #[error("corrupt daemon state: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A store call on the blocking pool (the file store and the database are synchronous).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(Error::Io(std::io::Error::other(e))),
    }
}

/// Everything the daemon needs, resolved by the command line.
pub struct Options {
    pub config: config::Config,
    /// `TRELLIS_HOME`'s data dir: where the run-control service keeps task and cancel files.
    pub data: PathBuf,
    pub store: trellis_store::Shared,
    pub auth: auth::Settings,
    /// Listen beyond loopback without auth (explicitly asked for).
    pub insecure_no_auth: bool,
}

/// Refuses what must not start: a non-loopback address without auth.
pub fn check(opts: &Options) -> Result<(), Error> {
    if !opts.config.ip.is_loopback() && !opts.auth.enabled() && !opts.insecure_no_auth {
        return Err(Error::Config(format!(
            "daggyd would listen on {} with no authentication; configure `auth:` in the \
             Trellis config file (or TRELLIS_AUTH_TOKEN), or pass --insecure-no-auth",
            opts.config.ip
        )));
    }
    Ok(())
}

/// Serves until `shutdown`: resumes what a dead daemon left, then answers requests.
/// `ready` gets the bound address once listening.
pub async fn serve(
    opts: Options,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), Error> {
    check(&opts)?;
    let config = &opts.config;
    let book = match &config.logger {
        config::Logger::Redis { prefix, host, port } => book::Book::Redis(Arc::new(
            redis::RedisLogger::connect(host, *port, prefix).await?,
        )),
        config::Logger::OStream { .. } => book::Book::in_store(opts.store.clone(), "daggy"),
    };
    let file = match &config.logger {
        config::Logger::OStream { file } => file.clone(),
        config::Logger::Redis { .. } => None,
    };
    let (sink, writer) = sink::start(book.clone(), file)?;
    let runs = trellis_runs::Runs::new(opts.store.clone(), opts.data.clone());
    let daemon = daemon::Daemon::new(
        runs,
        book,
        sink,
        config.executor.clone(),
        config.dag_threads,
    );
    let resumed = daemon.recover().await?;
    if resumed > 0 {
        tracing::info!("daggyd: {resumed} run(s) of a previous daemon started again");
    }
    let listener = tokio::net::TcpListener::bind((config.ip, config.port)).await?;
    let addr = listener.local_addr()?;
    let guard = api::Guard {
        settings: opts.auth,
        loopback_only: config.ip.is_loopback(),
    };
    let app = api::router(daemon.clone(), Arc::new(guard), config.web_threads);
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    // Runs in flight are left as a crash leaves them: the next start resumes them.
    drop(daemon);
    drop(writer);
    Ok(())
}
