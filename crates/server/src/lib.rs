//! The Trellis web server: the REST API under `/api/v2` (described by an OpenAPI document
//! generated from the handlers), Server-Sent Events for live updates, health checks,
//! Prometheus metrics, authentication with roles, webhooks, and the server-rendered UI.
//!
//! The server keeps no state of its own beyond the store and the dags dir, so several may
//! serve the same data side by side. Runs are started by launching the `trellis` binary
//! (`Options::launcher`) as a detached process: a run outlives the server that started it.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod state;
pub mod ui;
pub mod views;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use state::App;

/// Everything `trellis server` needs, resolved from flags, env and the config file.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// Serve under this prefix (e.g. `/trellis`), for a reverse proxy; empty for `/`.
    pub path_prefix: String,
    pub home: PathBuf,
    pub dags_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub auth: auth::Settings,
    pub tls: Option<Tls>,
    /// The `trellis` binary that runs, retries and stops runs.
    pub launcher: PathBuf,
    /// Allows listening on a non-loopback address with authentication off.
    pub insecure_no_auth: bool,
    /// How to reach the coordinator for the workers view (TLS, signing key).
    pub dial: trellis_cluster::worker::link::Dial,
    /// The coordinator serving in this same process (`start-all`): its workers are read
    /// directly, never dialled.
    pub local_coordinator: Option<trellis_cluster::coordinator::LocalView>,
    /// Where runs live (opened by the caller, which decides what an unreachable database
    /// means).
    pub store: trellis_store::Shared,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// All routes, with authentication and the path prefix applied.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .merge(api::routes())
        .merge(events::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(webhook::routes())
        .merge(ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::middleware,
        ))
        // Outermost, so refused requests (401, 403) are counted too.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::track,
        ))
        .with_state(app.clone());
    if app.path_prefix.is_empty() {
        routes
    } else {
        Router::new().nest(&app.path_prefix, routes)
    }
}

/// Refuses settings that would expose runs without authentication.
pub fn check(opts: &Options) -> Result<(), ServeError> {
    if !opts.addr.ip().is_loopback() && !opts.auth.enabled() && !opts.insecure_no_auth {
        return Err(ServeError::NoAuth { addr: opts.addr });
    }
    if !opts.path_prefix.is_empty()
        && (!opts.path_prefix.starts_with('/') || opts.path_prefix.ends_with('/'))
    {
        let prefix = opts.path_prefix.clone();
        return Err(ServeError::PathPrefix { prefix });
    }
    Ok(())
}

/// Serves until `shutdown`; `bound` receives the address actually bound (useful with port 0).
pub async fn serve(
    opts: Options,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    check(&opts)?;
    let app = Arc::new(App::new(&opts)?);
    let refresher = app.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            refresher.refresh_workers().await;
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    let streams = app.clone();
    let router = router(app).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let watcher = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        // Live-update streams never finish on their own; end them so shutdown is prompt.
        streams.live.close();
        watcher.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let notify = handle.clone();
    tokio::spawn(async move {
        if let (Some(addr), Some(tx)) = (notify.listening().await, bound) {
            let _ = tx.send(addr);
        }
    });
    match &opts.tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(ServeError::Tls)?;
            axum_server::bind_rustls(opts.addr, config)
                .handle(handle)
                .serve(router)
                .await?
        }
        None => {
            axum_server::bind(opts.addr)
                .handle(handle)
                .serve(router)
                .await?
        }
    }
    Ok(())
}

/// Errors of `serve` and of the settings it is given ([`check`], [`App::new`],
/// [`auth::Settings::resolve`]): bad settings (exit 2) or I/O such as a port in use (exit
/// 1). Inner errors are part of the message, so only `Io` has a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without authentication: configure auth (see docs/CONFIG.md) or pass --insecure-no-auth"
    )]
    NoAuth { addr: SocketAddr },
    #[error("path prefix `{prefix}` must start with `/` and not end with one")]
    PathPrefix { prefix: String },
    /// The config file does not load.
    #[error("{0}")]
    Config(trellis_scheduler::Error),
    #[error("server.webhook_secret must be at least 32 characters")]
    ShortWebhookSecret,
    /// The session secret in the data dir cannot be read or made.
    #[error("server secret: {0}")]
    Secret(std::io::Error),
    /// A configured API token whose `hash` is not `sha256:<64 hex digits>`.
    #[error("auth.tokens `{name}`: hash must be `sha256:` and 64 hex digits")]
    TokenHash { name: String },
    #[error("auth.mode `{mode}`: expected none, basic or token")]
    AuthMode { mode: String },
    #[error(
        "auth is on but no users or tokens exist: set auth.basic, auth.users, TRELLIS_AUTH_TOKEN, or run `trellis token create`"
    )]
    NoCredentials,
    /// The certificate or key does not load.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
