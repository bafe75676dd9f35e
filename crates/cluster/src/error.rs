//! What talking to a coordinator can fail with.

use std::path::PathBuf;

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
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Call { .. })
    }
}
