//! What the cluster can fail with: talking to a coordinator (as a worker or a client),
//! checking a worker's token, handing a sub-DAG run to the coordinator, and starting a
//! task's run on a worker. Inner errors added here are part of the message (as the text
//! always was), so they are not also given as `source()`: a chain would say them twice.

use std::path::PathBuf;

use trellis_core::params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad coordinator address {addr}: {message}")]
    Address { addr: String, message: String },
    #[error("TLS settings: {0}")]
    Tls(String),
    /// No connection (down, unreachable, or the TLS handshake failed).
    #[error("cannot reach the coordinator at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    /// Connected, but the call was refused or failed.
    #[error("coordinator at {addr}: {message}")]
    Call { addr: String, message: String },
    /// No coordinator address was given and none is in the registry.
    #[error("no live coordinator in the registry {}", registry.display())]
    NoLiveCoordinator { registry: PathBuf },
    /// The coordinator answered the worker's registration with an error status.
    #[error("the coordinator at {addr} refused to register us: {message}")]
    RegisterRefused { addr: String, message: String },
    /// A heartbeat call failed; `message` is the status's.
    #[error("{message}")]
    Heartbeat { message: String },
    /// A worker token that is not `<worker id>.<expiry>.<HMAC>`.
    #[error("malformed worker token")]
    MalformedToken,
    #[error("bad signature on the token of worker {worker}")]
    BadTokenSignature { worker: String },
    #[error("the token of worker {worker} expired")]
    TokenExpired { worker: String },
    /// In shared-filesystem mode no coordinator is registered to take a sub-DAG run;
    /// `selector` is the step's labels as `k=v,...`.
    #[error("no coordinator is running to hand sub-DAG `{dag}` to a worker matching {selector}")]
    NoCoordinatorForChild { dag: String, selector: String },
    /// A sub-DAG's definition could not be written as JSON for its task.
    #[error("{0}")]
    EncodeDag(serde_json::Error),
    /// The sub-DAG's task could not be written (task files or the database).
    #[error("cannot hand the sub-DAG to a worker: {0}")]
    Handoff(std::io::Error),
    /// A task's DAG definition (JSON made by the scheduler) does not parse.
    #[error("the task's DAG definition does not parse: {0}")]
    TaskDefinition(serde_json::Error),
    /// A task's params do not fit its DAG's declaration.
    #[error("{}", joined(.0))]
    TaskParams(Vec<ParamError>),
    /// The engine could not begin the task's run (its store failed).
    #[error("the run could not start: {0}")]
    RunStart(trellis_store::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Call { .. })
    }
}

/// Every param problem, as one line.
fn joined(errors: &[ParamError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    all.join("; ")
}
