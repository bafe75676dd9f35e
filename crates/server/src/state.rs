//! What every handler shares: the store, the dags dir, the settings and the launcher.
//! Nothing here is state that another server replica would not see: runs, queues, tokens
//! and the session secret all live in the data dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use hmac::{KeyInit, Mac};
use trellis_scheduler::config::Config;
use trellis_store::Shared;

use crate::auth::{self, Principal, Role, Settings, TokenEntry};
use crate::error::{Error, Result};
use crate::{Options, ServeError};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub struct App {
    pub store: Shared,
    pub home: PathBuf,
    pub data: PathBuf,
    pub dags_dir: PathBuf,
    pub config: Config,
    pub auth: Settings,
    /// Run control: every start, stop, retry and restart goes through it.
    pub runs: trellis_runs::Runs,
    pub path_prefix: String,
    pub started: Instant,
    pub started_at: jiff::Timestamp,
    pub tls: bool,
    secret: Vec<u8>,
    tokens: Mutex<(Option<SystemTime>, Vec<TokenEntry>)>,
    pub metrics: crate::metrics::Metrics,
    /// Open live-update streams and the shared scan behind them.
    pub live: crate::events::Live,
    /// The cluster's workers as last fetched (every second) from the coordinator, else
    /// read from the service registry.
    workers: Mutex<Vec<trellis_cluster::proto::WorkerInfo>>,
    /// How to reach the coordinator (TLS, signing key).
    pub dial: trellis_cluster::worker::link::Dial,
    /// The coordinator in this process, read directly (`start-all`).
    pub(crate) local_coordinator: Option<trellis_cluster::coordinator::LocalView>,
    /// Bound to loopback with auth off: only localhost names are served.
    pub loopback_only: bool,
}

impl App {
    pub fn new(opts: &Options) -> std::result::Result<App, ServeError> {
        let config = match &opts.config_file {
            Some(path) => Config::load(path).map_err(ServeError::Config)?,
            None => Config::default(),
        };
        let file = match &opts.config_file {
            Some(path) => crate::config::FileConfig::load(path).map_err(ServeError::Config)?,
            None => crate::config::FileConfig::default(),
        };
        let data = trellis_store::data_dir(&opts.home);
        let secret = match &file.server.webhook_secret {
            Some(s) if s.len() < 32 => return Err(ServeError::ShortWebhookSecret),
            Some(s) => s.as_bytes().to_vec(),
            None => load_secret(&data).map_err(ServeError::Secret)?,
        };
        let runs = runs(opts, &data);
        Ok(App {
            store: opts.store.clone(),
            // Absolute, as launched commands run in the dags dir.
            home: std::path::absolute(&opts.home).unwrap_or_else(|_| opts.home.clone()),
            data,
            dags_dir: std::path::absolute(&opts.dags_dir).unwrap_or_else(|_| opts.dags_dir.clone()),
            config,
            auth: opts.auth.clone(),
            runs,
            path_prefix: opts.path_prefix.clone(),
            started: Instant::now(),
            started_at: jiff::Timestamp::now(),
            tls: opts.tls.is_some(),
            secret,
            tokens: Mutex::new((None, Vec::new())),
            metrics: crate::metrics::Metrics::default(),
            live: crate::events::Live::default(),
            workers: Mutex::new(Vec::new()),
            dial: opts.dial.clone(),
            local_coordinator: opts.local_coordinator.clone(),
            loopback_only: opts.addr.ip().is_loopback(),
        })
    }

    /// The workers last seen; see [`App::refresh_workers`].
    pub fn workers(&self) -> Vec<trellis_cluster::proto::WorkerInfo> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the coordinator (found in the service registry) for its workers; with none
    /// reachable, reads the workers' registry entries, whose age gives a coarser health.
    pub async fn refresh_workers(&self) {
        use trellis_cluster::{client, registry};
        if self.store.spans_machines() {
            let store = self.store.clone();
            let list = tokio::task::spawn_blocking(move || client::stored_workers(&*store))
                .await
                .unwrap_or_default();
            *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = list;
            return;
        }
        let local = self.local_coordinator.as_ref().and_then(|c| c.workers());
        if let Some(list) = local {
            *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = list;
            return;
        }
        let dir = registry::default_dir(&self.data);
        let fetched = match client::discover(&dir) {
            Some(addr) => client::workers(&addr, &self.dial).await.ok(),
            None => None,
        };
        let list = fetched.unwrap_or_else(|| client::registry_workers(&dir));
        *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The principal an API token belongs to (config tokens, then `trellis token` ones).
    pub fn check_token(&self, token: &str) -> Option<Principal> {
        if let Some(p) = auth::match_token(&self.auth.tokens, token) {
            return Some(p);
        }
        let path = self.auth.tokens_file.as_ref()?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            *cache = (mtime, auth::read_tokens(path));
        }
        auth::match_token(&cache.1, token)
    }

    /// HMAC-SHA256 with the server secret, hex-encoded.
    pub fn sign(&self, message: &str) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(message.as_bytes());
        auth::hex(&mac.finalize().into_bytes())
    }

    /// Checks a signature made by [`App::sign`], in constant time.
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.sign(message).as_bytes().ct_eq(signature.as_bytes()))
    }

    /// A session cookie value for the UI: `name|role|expiry|signature`.
    pub fn make_session(&self, who: &Principal, ttl: std::time::Duration) -> String {
        let expiry = jiff::Timestamp::now().as_second() + ttl.as_secs() as i64;
        let body = format!("{}|{}|{expiry}", who.name, who.role.as_str());
        let signature = self.sign(&format!("session|{body}"));
        format!("{body}|{signature}")
    }

    pub fn check_session(&self, value: &str) -> Option<Principal> {
        let (body, signature) = value.rsplit_once('|')?;
        if !self.verify(&format!("session|{body}"), signature) {
            return None;
        }
        let mut parts = body.split('|');
        let (name, role, expiry) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        if expiry.parse::<i64>().ok()? < jiff::Timestamp::now().as_second() {
            return None;
        }
        let role: Role = serde_json::from_value(serde_json::Value::String(role.into())).ok()?;
        Some(Principal {
            name: name.to_string(),
            role,
        })
    }

    /// The file of a DAG in the dags dir, after checking the name is one safe component.
    pub fn dag_file(&self, name: &str) -> Result<PathBuf> {
        trellis_store::check_name(name)?;
        if name.contains(' ') || name.starts_with('.') {
            return Err(Error::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_name",
                format!("invalid DAG name `{name}`: use letters, digits, `-`, `_` and `.`"),
            ));
        }
        for ext in ["yaml", "yml", "json"] {
            let path = self.dags_dir.join(format!("{name}.{ext}"));
            if path.is_file() {
                return Ok(path);
            }
        }
        Err(Error::not_found(format!("no DAG named `{name}`")))
    }
}

/// The run-control service, starting detached runs with `opts.launcher` in the dags dir:
/// they outlive the server, and record themselves in the store this server reads.
fn runs(opts: &Options, data: &Path) -> trellis_runs::Runs {
    let home = std::path::absolute(&opts.home).unwrap_or_else(|_| opts.home.clone());
    let dags_dir = std::path::absolute(&opts.dags_dir).unwrap_or_else(|_| opts.dags_dir.clone());
    // The run must record itself where this server reads.
    let pass_env = opts.store.child_env();
    let launcher = trellis_runs::Launcher {
        program: opts.launcher.clone(),
        home,
        dags_dir,
        pass_env,
        remove_env: trellis_engine::SECRET_VARS
            .iter()
            .map(|v| v.to_string())
            .collect(),
    };
    trellis_runs::Runs::new(opts.store.clone(), data.to_path_buf()).with_launcher(launcher)
}

/// The server secret in the data dir, made on first use (mode 0600); shared by every
/// replica on the same data dir so sessions and webhook tokens work on all of them.
fn load_secret(data: &Path) -> std::io::Result<Vec<u8>> {
    let path = data.join("auth").join("secret.key");
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() >= 32
    {
        return Ok(bytes);
    }
    std::fs::create_dir_all(path.parent().unwrap_or(data))?;
    let mut bytes = vec![0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    // Another replica may have made one first: keep theirs.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let _ = std::fs::remove_file(&tmp);
    std::fs::read(&path)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}
