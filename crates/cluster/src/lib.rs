//! Distributed execution: the gRPC protocol (`proto/trellis/cluster/v1/cluster.proto`), the
//! coordinator that hands runs to workers, the worker that runs them with the same engine
//! in-process, and the file service registry of shared-filesystem mode.
//!
//! The scheduler stays the one place that decides a run starts; for a run that belongs on a
//! worker it writes a task file ([`tasks`]). The coordinator claims each task for a worker
//! whose labels match, holds a lease on it that the worker's heartbeats renew, and re-queues
//! or fails it when the lease expires. Task state lives in files, so a coordinator restart
//! loses nothing and kills nothing.

pub mod client;
pub mod config;
pub mod coordinator;
mod error;
pub mod handoff;
pub mod registry;
pub mod security;
pub mod table;
pub mod tasks;
pub mod worker;

/// Generated protocol types and gRPC stubs.
pub use error::Error;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("trellis.cluster.v1");
}

/// Milliseconds since the epoch, the unit of the task table.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// `hostname@pid`, the default id of workers and coordinators.
pub fn default_id() -> String {
    format!("{}@{}", hostname(), std::process::id())
}

/// This machine's name ([`trellis_store::hostname`], the one definition).
pub fn hostname() -> String {
    trellis_store::hostname().to_string()
}
