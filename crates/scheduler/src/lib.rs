//! Decides which runs start when: cron schedules in each DAG's timezone, the queue with its
//! concurrency limits, and the leader lease that lets several schedulers run while only one
//! acts.

pub mod catalog;
pub mod clock;
pub mod config;
pub mod heartbeat;
pub mod launcher;
mod launcher_k8s;

pub mod daemon;
pub mod dispatch;
mod error;

pub use error::Error;
pub use trellis_runs::queueing;
