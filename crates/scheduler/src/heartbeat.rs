//! The leader's heartbeat and suspended schedules, kept as named values in the store (see
//! `trellis_store::state`) so that every server sharing the store sees them.

use serde::{Deserialize, Serialize};
use trellis_store::State;
use trellis_store::state::scope;

/// Rewritten every few seconds while a scheduler leads, so a health check can tell a live
/// scheduler from a dead one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub holder: String,
    pub token: u64,
    pub at: String,
}

pub fn write<S: State + ?Sized>(store: &S, beat: &Heartbeat) -> trellis_store::Result<()> {
    let json = serde_json::to_string(beat).unwrap_or_default();
    store.put(scope::SCHEDULER, "heartbeat", Some(&json))
}

pub fn read<S: State + ?Sized>(store: &S) -> Option<Heartbeat> {
    let json = store.get(scope::SCHEDULER, "heartbeat").ok()??;
    serde_json::from_str(&json).ok()
}

/// Whether a DAG's schedules are suspended (manual and queued runs are not affected).
pub fn is_suspended<S: State + ?Sized>(store: &S, dag: &str) -> bool {
    matches!(store.get(scope::SUSPEND, dag), Ok(Some(_)))
}

/// Suspends (`true`) or resumes (`false`) a DAG's schedules. A suspended DAG's ticks are
/// claimed and marked skipped, so resuming it does not fire a burst of missed runs.
pub fn set_suspended<S: State + ?Sized>(
    store: &S,
    dag: &str,
    suspended: bool,
) -> trellis_store::Result<()> {
    let now = jiff::Timestamp::now().to_string();
    store.put(scope::SUSPEND, dag, suspended.then_some(now.as_str()))
}
