//! Small shared state beside the runs: the scheduler's lead (a lease with a fencing token
//! that grows with every holder), schedule ticks claimed once, and named values (suspended
//! DAGs, the leader's heartbeat). Every backend keeps it where it keeps runs, so processes
//! that share a store share this too. Named values can be compared and swapped
//! ([`State::swap`]), so writers on several machines can update one without losing an
//! update.

use serde::{Deserialize, Serialize};

use crate::Result;

/// What the store says about the scheduler's leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub token: u64,
    pub holder: String,
    pub pid: u32,
    pub since: String,
    /// The machine `pid` is on.
    #[serde(default)]
    pub host: String,
}

/// Held while this process leads; give it back with [`State::release_lease`] (a killed
/// process loses it when its lock is freed or its lease expires).
#[derive(Debug)]
pub struct Lead {
    /// Which lease: [`SCHEDULER`] or [`COORDINATOR`].
    pub name: String,
    pub info: LeaseInfo,
    /// The leader before this one, whose in-flight runs may need recovering.
    pub previous: Option<LeaseInfo>,
    /// What holds the lease while this value lives, for a backend whose lease is a
    /// lock (the file backend's locked file); dropped with the lead.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The scheduler's lease: one scheduler acts.
pub const SCHEDULER: &str = "scheduler";
/// The coordinator's lease: one coordinator hands out tasks.
pub const COORDINATOR: &str = "coordinator";

/// Scopes of named values.
pub mod scope {
    /// `name` = DAG name; present = its schedules are suspended.
    pub const SUSPEND: &str = "suspend";
    /// `name` = `heartbeat`: the leading scheduler's last beat (JSON).
    pub const SCHEDULER: &str = "scheduler";
    /// `name` = task id: a run handed to workers (JSON), while it is not finished.
    pub const TASK: &str = "task";
    /// `name` = `<dag>~<run id>`: a request to cancel a run on a worker.
    pub const CANCEL: &str = "cancel";
    /// `name` = `<dag>~<run id>`: a request to stop a run a scheduler on another machine
    /// executes (a database store).
    pub const STOP: &str = "stop";
    /// `name` = `<scope>/<namespace>/<key>`: a value of a `state.*` step (its JSON entry:
    /// value, version, hash, times, writer), kept here when the store is shared by
    /// machines; neither scope nor namespace holds a `/`.
    pub const DAG_STATE: &str = "dag_state";
}

pub trait State: Send + Sync {
    /// Takes lease `name` ([`SCHEDULER`], [`COORDINATOR`]) if nobody holds it.
    /// `Ok(None)`: another process holds it.
    fn acquire_lease(&self, name: &str, holder: &str) -> Result<Option<Lead>>;
    /// Keeps a lease; `Ok(false)` when it has been lost (then stop acting at once).
    fn renew_lease(&self, lead: &Lead) -> Result<bool>;
    fn release_lease(&self, lead: Lead);
    /// The last holder of lease `name` recorded (it may have died since).
    fn lease(&self, name: &str) -> Result<Option<LeaseInfo>>;
    /// Takes the scheduler's lead if nobody holds it. `Ok(None)`: another process leads.
    fn acquire_lead(&self, holder: &str) -> Result<Option<Lead>> {
        self.acquire_lease(SCHEDULER, holder)
    }
    /// Keeps the lead; `Ok(false)` when it has been lost (then stop leading at once).
    fn renew_lead(&self, lead: &Lead) -> Result<bool> {
        self.renew_lease(lead)
    }
    fn release_lead(&self, lead: Lead) {
        self.release_lease(lead)
    }
    /// The last leader recorded (it may have died since).
    fn leader(&self) -> Result<Option<LeaseInfo>> {
        self.lease(SCHEDULER)
    }
    /// Every value of a scope, by name.
    fn values(&self, scope: &str) -> Result<Vec<(String, String)>>;
    /// Records a worker as a coordinator sees it (`info` is JSON), stamped now.
    fn put_worker(&self, id: &str, info: &str) -> Result<()>;
    /// The workers recorded within the last 10 minutes.
    fn workers(&self) -> Result<Vec<String>>;
    /// Claims a schedule tick (`at` in the form `20261122T160000Z`) for the leader holding
    /// `lead`. `Ok(false)`: already claimed. A lead that has passed on is
    /// [`crate::Error::Fenced`].
    fn claim_tick(&self, lead: u64, dag: &str, at: &str) -> Result<bool>;
    /// Notes that a claimed tick deliberately started no run.
    fn mark_tick_skipped(&self, dag: &str, at: &str) -> Result<()>;
    fn tick_skipped(&self, dag: &str, at: &str) -> Result<bool>;
    /// The latest tick claimed for a DAG.
    fn last_tick(&self, dag: &str) -> Result<Option<String>>;
    fn get(&self, scope: &str, name: &str) -> Result<Option<String>>;
    /// Sets a value; `None` removes it.
    fn put(&self, scope: &str, name: &str, value: Option<&str>) -> Result<()>;
    /// Compare-and-swap: sets the value to `new` (`None` removes it) only if it is
    /// `expected` now, byte for byte (`None`: there is none); `Ok(true)` when it did.
    /// Atomic against every other swap on the store, from this process or another
    /// machine sharing it, so a read-then-swap loop never loses an update. A call
    /// retried after its answer was lost (a connection that broke) may say `false`
    /// though its write took effect: a caller that must know reads the value again.
    fn swap(
        &self,
        scope: &str,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool>;
    /// The values of a scope whose names start with `prefix`, by name. Backends that can
    /// should find them without reading the rest of the scope.
    fn values_with_prefix(&self, scope: &str, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut values = self.values(scope)?;
        values.retain(|(name, _)| name.starts_with(prefix));
        Ok(values)
    }
}
