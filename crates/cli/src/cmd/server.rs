//! `trellis server`, `trellis start-all`, `trellis token` and `trellis webhook`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use trellis_scheduler::clock::SystemClock;
use trellis_scheduler::daemon;
use trellis_server::auth::{self, Role, TokenEntry};
use trellis_server::config::FileConfig;

use super::run::home;
use super::schedule::{config, dags_dir, runtime, scheduler_options, until_signal};
use crate::cli::{ServeFlags, ServerArgs, Setup, StartAllArgs, TokenCommand, WebhookArgs};

pub fn config_file(setup: &Setup) -> Option<PathBuf> {
    setup
        .config
        .clone()
        .or_else(|| std::env::var_os("TRELLIS_CONFIG").map(PathBuf::from))
}

/// The server's settings from flags, env and the config file (flags win).
fn server_options(setup: &Setup, flags: &ServeFlags) -> anyhow::Result<trellis_server::Options> {
    let config_path = config_file(setup);
    let file = match &config_path {
        Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    let host = flags
        .host
        .clone()
        .or(file.server.host.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let ip: IpAddr = match host.as_str() {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .with_context(|| format!("--host `{h}` is not an IP address"))?,
    };
    let port = flags.port.or(file.server.port).unwrap_or(8080);
    let tls = match (&flags.tls_cert, &flags.tls_key, &file.server.tls) {
        (Some(cert), Some(key), _) => Some((cert.clone(), key.clone())),
        (_, _, Some(t)) => Some((t.cert_file.clone(), t.key_file.clone())),
        _ => None,
    };
    let home = home();
    let auth = auth::Settings::resolve(&file.auth, &home).map_err(anyhow::Error::msg)?;
    Ok(trellis_server::Options {
        addr: SocketAddr::new(ip, port),
        path_prefix: flags
            .path_prefix
            .clone()
            .or(file.server.path_prefix.clone())
            .unwrap_or_default(),
        dags_dir: dags_dir(setup, &config(setup)?),
        home,
        config_file: config_path,
        auth,
        tls: tls.map(|(cert, key)| trellis_server::Tls { cert, key }),
        launcher: std::env::current_exe().context("cannot find the trellis binary")?,
        insecure_no_auth: flags.insecure_no_auth,
        dial: super::cluster::client_dial(setup)?,
        local_coordinator: None,
        store: super::open_store()?,
    })
}

/// Serves until `shutdown`, printing the URL once listening.
async fn serve(opts: trellis_server::Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let prefix = opts.path_prefix.clone();
    let auth = if opts.auth.enabled() { "on" } else { "off" };
    tokio::spawn(async move {
        if let Ok(addr) = rx.await {
            eprintln!("server listening on {scheme}://{addr}{prefix}/ (auth {auth})");
        }
    });
    trellis_server::serve(opts, shutdown, Some(tx)).await?;
    Ok(())
}

/// How long a web request waits for an absent database before its 503.
const SERVER_PATIENCE_SECS: u64 = 15;

pub fn server(args: &ServerArgs) -> anyhow::Result<ExitCode> {
    // A request waits for an absent database 15 s at most, then gets a 503.
    super::PATIENCE.store(SERVER_PATIENCE_SECS, std::sync::atomic::Ordering::Relaxed);
    let opts = server_options(&args.setup, &args.serve)?;
    trellis_server::check(&opts).map_err(anyhow::Error::msg)?;
    until_signal(|shutdown| serve(opts, shutdown))
}

/// The scheduler, the server and the coordinator in one process; any failing stops all.
pub fn start_all(args: &StartAllArgs) -> anyhow::Result<ExitCode> {
    let mut server_opts = server_options(&args.setup, &args.serve)?;
    // Requests wait 15 s at most for an absent database, while the scheduler and the
    // coordinator keep retrying theirs (a pool of their own).
    if server_opts.store.spans_machines() {
        let patience = std::time::Duration::from_secs(SERVER_PATIENCE_SECS);
        let url = super::database_url();
        server_opts.store = trellis_store::open_with(&home(), url.as_deref(), patience)?;
    }
    trellis_server::check(&server_opts).map_err(anyhow::Error::msg)?;
    let coordinator_opts = super::cluster::coordinator_options(&args.setup, &args.coordinator)?;
    // The scheduler signs tasks, and the server asks for workers, with the key the
    // coordinator was given, however it was given.
    let key = coordinator_opts.signing_key.clone();
    let scheduler_opts = scheduler_options(&args.setup, args.id.as_deref(), key)?;
    server_opts.dial.key = coordinator_opts.signing_key.clone();
    // The server lists the workers of the coordinator beside it without dialling it, so
    // whatever TLS the coordinator demands of workers does not apply to it.
    server_opts.local_coordinator = Some(coordinator_opts.view.clone());
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        super::cancel_on_signals(shutdown.clone());
        let scheduler = daemon::run(scheduler_opts, Arc::new(SystemClock), shutdown.clone());
        let scheduler = service(&shutdown, async move { Ok(scheduler.await?) });
        let server = service(&shutdown, serve(server_opts, shutdown.clone()));
        let coordinator = super::cluster::serve(coordinator_opts, shutdown.clone());
        let coordinator = service(&shutdown, coordinator);
        let (a, b, c) = tokio::join!(scheduler, server, coordinator);
        a.and(b).and(c)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one service of `start-all` as a task of its own on the runtime's workers (a
/// scheduler pass waiting for an absent database, a blocking section, must not hold the
/// others' accept loops, as it would if all shared one future); when it ends, well or
/// not, the others are told to stop.
async fn service(
    shutdown: &CancellationToken,
    run: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    let ended = tokio::spawn(run).await;
    shutdown.cancel();
    ended?
}

pub fn token(command: &TokenCommand) -> anyhow::Result<ExitCode> {
    let path = auth::tokens_path(&home());
    let mut tokens = auth::read_tokens(&path);
    match command {
        TokenCommand::Create { name, role } => {
            let role: Role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .map_err(|_| {
                    anyhow::anyhow!("--role `{role}`: expected viewer, operator or admin")
                })?;
            if tokens.iter().any(|t| &t.name == name) {
                bail!("a token named `{name}` exists; revoke it first");
            }
            let token = auth::new_token();
            tokens.push(TokenEntry {
                name: name.clone(),
                hash: auth::hash_token(&token),
                role,
                created_at: Some(jiff::Timestamp::now().to_string()),
            });
            write_tokens(&path, &tokens)?;
            println!("{token}");
            eprintln!(
                "token `{name}` ({}) created; it is not shown again",
                role.as_str()
            );
        }
        TokenCommand::List => {
            println!("{:<24} {:<10} CREATED", "NAME", "ROLE");
            for t in &tokens {
                let created = t.created_at.as_deref().unwrap_or("-");
                println!("{:<24} {:<10} {created}", t.name, t.role.as_str());
            }
        }
        TokenCommand::Revoke { name } => {
            let before = tokens.len();
            tokens.retain(|t| &t.name != name);
            if tokens.len() == before {
                bail!("no token named `{name}`");
            }
            write_tokens(&path, &tokens)?;
            eprintln!("token `{name}` revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the token file atomically, readable by its owner only.
fn write_tokens(path: &std::path::Path, tokens: &[TokenEntry]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("token file has no parent dir")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tokens.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(serde_json::to_string_pretty(tokens)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn webhook(args: &WebhookArgs) -> anyhow::Result<ExitCode> {
    let opts = server_options(&args.setup, &ServeFlags::default())?;
    let app = trellis_server::App::new(&opts).map_err(anyhow::Error::msg)?;
    app.dag_file(&args.dag)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    println!("{}", trellis_server::webhook::token(&app, &args.dag));
    Ok(ExitCode::SUCCESS)
}
