//! Health checks and server information, for load balancers and operators.
//!
//! `/health` answers 200 whenever the server serves (liveness). `/health/deep` checks what
//! runs depend on (readiness): the store takes a write, read and delete; the scheduler's
//! leader wrote its heartbeat (every 5 s) less than 30 s ago; the coordinator in the
//! service registry answers (no coordinator registered means no cluster, which is fine).
//! Any failing check makes it 503 with the details. `/server_info` says what is running, since when, and how it is set up.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::App;

/// A scheduler heartbeat older than this means no scheduler is running.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(30);

/// The OpenAPI description of this module's routes (merged into `/api/v2/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(health, deep, server_info),
    components(schemas(
        Health,
        DeepHealth,
        Checks,
        Check,
        SchedulerCheck,
        ServerInfo,
        Build,
        SchedulerInfo
    ))
)]
pub struct Doc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/health", get(health))
        .route("/health/deep", get(deep))
        .route("/server_info", get(server_info))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: the server is up and serving.
#[utoipa::path(
    get,
    path = "/health",
    tag = "ops",
    security(()),
    responses((status = 200, body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct DeepHealth {
    /// `ok` when every check passed, else `degraded`.
    pub status: String,
    pub checks: Checks,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    pub store: Check,
    pub scheduler: SchedulerCheck,
    pub coordinator: Check,
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
pub struct SchedulerCheck {
    pub ok: bool,
    pub detail: String,
    /// Seconds since the leading scheduler's last heartbeat; absent when none was ever
    /// written.
    pub heartbeat_age_sec: Option<f64>,
    /// Who wrote it (the scheduler's id).
    pub holder: Option<String>,
}

/// Readiness: the store works and a scheduler is alive; 503 with details otherwise.
#[utoipa::path(
    get,
    path = "/health/deep",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "Every check passed", body = DeepHealth),
        (status = 503, description = "A check failed", body = DeepHealth),
    )
)]
async fn deep(State(app): State<Arc<App>>) -> Response {
    let (data, backend) = (app.data.clone(), app.store.clone());
    let store = tokio::task::spawn_blocking(move || probe_backend(&data, &*backend))
        .await
        .unwrap_or_else(|e| Err(Error::Panicked(e)));
    // The heartbeat is in the store: with the store away, reading it would wait for it.
    let scheduler = match &store {
        Ok(_) => {
            let app = app.clone();
            tokio::task::spawn_blocking(move || scheduler_check(&app))
                .await
                .unwrap_or_else(|e| unknown_scheduler(e.to_string()))
        }
        Err(_) => unknown_scheduler("unknown: the store is unavailable".into()),
    };
    let checks = Checks {
        store: match store {
            Ok(detail) => Check { ok: true, detail },
            Err(e) => Check {
                ok: false,
                detail: e.to_string(),
            },
        },
        scheduler,
        coordinator: coordinator_check(&app).await,
    };
    let ok = checks.store.ok && checks.scheduler.ok && checks.coordinator.ok;
    let body = DeepHealth {
        status: if ok { "ok" } else { "degraded" }.into(),
        checks,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Why the store check failed; the message is the check's `detail`.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The probe file (or its directory) in the data dir could not be written, read or
    /// removed.
    #[error("{}: {error}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{}: read back different bytes", path.display())]
    ReadBack { path: std::path::PathBuf },
    #[error("{kind} store: {error}")]
    Store {
        kind: &'static str,
        error: trellis_store::Error,
    },
    /// The store answers, but operations that failed earlier are still being retried.
    #[error("the {kind} store answers again, but {count} operation(s) are still retrying")]
    Retrying { kind: &'static str, count: u64 },
    /// The probe itself panicked.
    #[error("{0}")]
    Panicked(tokio::task::JoinError),
}

/// The data dir (logs and work files live there), one untried round trip to the store,
/// whether operations are waiting for it to come back, and whether runs this process
/// executes lost a record write (said, without failing the check: the store works now, and
/// a restart in a loop would not help; the runs' warnings say which record lacks what).
fn probe_backend(
    data: &std::path::Path,
    store: &dyn trellis_store::Backend,
) -> Result<String, Error> {
    probe_store(data)?;
    let kind = store.kind();
    store
        .probe()
        .map_err(|error| Error::Store { kind, error })?;
    if let count @ 1.. = store.failing() {
        return Err(Error::Retrying { kind, count });
    }
    if let n @ 1.. = trellis_engine::failed_writes() {
        return Ok(format!(
            "the {kind} store answers, but {n} run record write(s) failed for good since \
             this process started (see the runs' warnings)"
        ));
    }
    Ok(format!("the data dir and the {kind} store answer"))
}

/// Creates, reads back and deletes a probe file in the data dir.
fn probe_store(data: &std::path::Path) -> Result<(), Error> {
    let dir = data.join("health");
    std::fs::create_dir_all(&dir).map_err(|error| Error::DataDir {
        path: dir.clone(),
        error,
    })?;
    // Unique per process and call, so replicas and concurrent checks do not collide.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("probe-{}-{n}", std::process::id()));
    let text = format!("trellis health probe {}", jiff::Timestamp::now());
    let failed = |error: std::io::Error| Error::DataDir {
        path: path.clone(),
        error,
    };
    let result = std::fs::write(&path, &text)
        .and_then(|()| std::fs::read_to_string(&path))
        .map_err(failed)
        .and_then(|back| {
            (back == text)
                .then_some(())
                .ok_or_else(|| Error::ReadBack { path: path.clone() })
        });
    let removed = std::fs::remove_file(&path).map_err(failed);
    result.and(removed)
}

/// Seconds since the scheduler's heartbeat and who wrote it, if one was ever written.
pub fn heartbeat_age(app: &App) -> Option<(f64, String)> {
    let beat = trellis_scheduler::heartbeat::read(&*app.store)?;
    let at: jiff::Timestamp = beat.at.parse().ok()?;
    let age = jiff::Timestamp::now().duration_since(at).as_secs_f64();
    Some((age.max(0.0), beat.holder))
}

fn unknown_scheduler(detail: String) -> SchedulerCheck {
    SchedulerCheck {
        ok: false,
        detail,
        heartbeat_age_sec: None,
        holder: None,
    }
}

fn scheduler_check(app: &App) -> SchedulerCheck {
    match heartbeat_age(app) {
        None => SchedulerCheck {
            ok: false,
            detail: "no scheduler heartbeat: is `trellis scheduler` (or start-all) running?".into(),
            heartbeat_age_sec: None,
            holder: None,
        },
        Some((age, holder)) => {
            let ok = age < HEARTBEAT_STALE.as_secs_f64();
            SchedulerCheck {
                ok,
                detail: if ok {
                    format!("leader {holder} beat {age:.1}s ago")
                } else {
                    format!(
                        "last heartbeat {age:.0}s ago (from {holder}), over {}s: no live scheduler",
                        HEARTBEAT_STALE.as_secs()
                    )
                },
                heartbeat_age_sec: Some(age),
                holder: Some(holder),
            }
        }
    }
}

/// How long the coordinator has to answer the health check.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(3);

/// The coordinator in the service registry answers a request for its workers. No entry
/// at all means no cluster is configured, which is fine; only stale entries (a
/// coordinator that died without removing its file) or no answer fail.
async fn coordinator_check(app: &App) -> Check {
    use trellis_cluster::{client, registry};
    // The coordinator of `start-all` is in this process: asked directly, not dialled.
    let local = app.local_coordinator.as_ref().and_then(|c| c.workers());
    if let Some(workers) = local {
        return Check {
            ok: true,
            detail: format!(
                "the coordinator in this process answered ({} workers)",
                workers.len()
            ),
        };
    }
    let dir = registry::default_dir(&app.data);
    let registered = registry::list(&dir, registry::Kind::Coordinator);
    if registered.is_empty() {
        return Check {
            ok: true,
            detail: "not configured".into(),
        };
    }
    let Some(addr) = client::discover(&dir) else {
        return Check {
            ok: false,
            detail: format!(
                "no live coordinator: the entries in {} are over {} s old",
                dir.join("coordinator").display(),
                registry::STALE_MS / 1000
            ),
        };
    };
    match tokio::time::timeout(COORDINATOR_TIMEOUT, client::workers(&addr, &app.dial)).await {
        Ok(Ok(workers)) => Check {
            ok: true,
            detail: format!("coordinator at {addr} answered ({} workers)", workers.len()),
        },
        Ok(Err(e)) => Check {
            ok: false,
            detail: e.to_string(),
        },
        Err(_) => Check {
            ok: false,
            detail: format!(
                "coordinator at {addr} did not answer within {} s",
                COORDINATOR_TIMEOUT.as_secs()
            ),
        },
    }
}

#[derive(Serialize, ToSchema)]
pub struct ServerInfo {
    pub trellis_version: String,
    /// The REST API's version: `v2` (paths under `/api/v2`).
    pub api_version: String,
    pub build: Build,
    /// When this server started (RFC 3339).
    pub started_at: String,
    pub uptime_sec: u64,
    /// Authentication is on.
    pub auth: bool,
    /// Served over HTTPS.
    pub tls: bool,
    /// The path prefix the server is served under (empty for `/`).
    pub path_prefix: String,
    pub scheduler: SchedulerInfo,
}

#[derive(Serialize, ToSchema)]
pub struct Build {
    /// `release` or `debug`.
    pub profile: String,
    /// Target CPU architecture and OS, e.g. `x86_64-linux`.
    pub target: String,
    /// The minimum Rust version the workspace builds with.
    pub rust_version: String,
}

#[derive(Serialize, ToSchema)]
pub struct SchedulerInfo {
    /// The leader recorded in the lease file (it may have died since; see the heartbeat).
    pub leader: Option<String>,
    pub leader_pid: Option<u32>,
    /// The lease's fencing token: it grows with every new leader.
    pub lease_token: Option<u64>,
    pub leader_since: Option<String>,
    pub heartbeat_age_sec: Option<f64>,
}

/// What is running and how it is set up.
#[utoipa::path(get, path = "/server_info", tag = "ops", responses((status = 200, body = ServerInfo)))]
async fn server_info(State(app): State<Arc<App>>) -> Json<ServerInfo> {
    // Both are in the store, which may be a database that is away.
    let reader = app.clone();
    let (lease, beat) = tokio::task::spawn_blocking(move || {
        let lease = reader.store.leader().ok().flatten();
        (lease, heartbeat_age(&reader).map(|(age, _)| age))
    })
    .await
    .unwrap_or_default();
    Json(ServerInfo {
        trellis_version: env!("CARGO_PKG_VERSION").into(),
        api_version: "v2".into(),
        build: Build {
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            rust_version: env!("CARGO_PKG_RUST_VERSION").into(),
        },
        started_at: app.started_at.to_string(),
        uptime_sec: app.started.elapsed().as_secs(),
        auth: app.auth.enabled(),
        tls: app.tls,
        path_prefix: app.path_prefix.clone(),
        scheduler: SchedulerInfo {
            leader: lease.as_ref().map(|l| l.holder.clone()),
            leader_pid: lease.as_ref().map(|l| l.pid),
            lease_token: lease.as_ref().map(|l| l.token),
            leader_since: lease.map(|l| l.since),
            heartbeat_age_sec: beat,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_probe_leaves_nothing_behind() {
        let data = tempfile::tempdir().unwrap();
        probe_store(data.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(data.path().join("health"))
            .unwrap()
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn an_unwritable_store_fails_the_probe() {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(probe_store(&file).is_err());
    }
}
