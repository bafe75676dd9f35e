//! Run and step statuses, the record of a run that stores keep, and Dagu's rules for the
//! final status of a run.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::ids::{AttemptId, RunId, Stamp};

/// Status of a run or a step; names and meanings follow Dagu.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    NotStarted,
    Queued,
    Running,
    Succeeded,
    Failed,
    Aborted,
    Skipped,
    PartiallySucceeded,
    Waiting,
    Retrying,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotStarted => "not_started",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Aborted => "aborted",
            Status::Skipped => "skipped",
            Status::PartiallySucceeded => "partially_succeeded",
            Status::Waiting => "waiting",
            Status::Retrying => "retrying",
            Status::Cancelled => "cancelled",
        }
    }

    /// A status from which the step or run will not move on its own.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Status::NotStarted | Status::Queued | Status::Running | Status::Retrying
        )
    }

    /// Exit code of `trellis start` for a run that ended this way.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Succeeded | Status::PartiallySucceeded => 0,
            _ => 1,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one step within a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub retry_count: u32,
    pub done_count: u32,
    /// The captured output variable's value, when the step has `output: VAR`.
    pub output: Option<String>,
    pub started_at: Option<Stamp>,
    pub finished_at: Option<Stamp>,
    pub worker_id: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub error: Option<String>,
    /// The step failed but `continue_on` let the run go on.
    pub continued: bool,
    /// Child runs started by a `call` step.
    pub children: Vec<String>,
    /// Things the user should know that are not errors (e.g. output truncated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Where the step runs when that outlives its runner (a container): recorded once
    /// started, so a new runner reattaches instead of starting it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
}

/// A step's work outside this process: the executor type and its external id (a
/// container id, a Job name, a Slurm job id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub executor: String,
    pub id: String,
}

impl Handle {
    pub fn new(executor: impl Into<String>, id: impl Into<String>) -> Handle {
        Handle {
            executor: executor.into(),
            id: id.into(),
        }
    }
}

/// Everything a store keeps about one attempt of a run. Each update appends a whole record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub run_id: RunId,
    pub attempt_id: AttemptId,
    pub status: Status,
    pub steps: Vec<StepRecord>,
    pub handlers: IndexMap<String, StepRecord>,
    pub outputs: IndexMap<String, String>,
    pub params: Vec<String>,
    pub error: Option<String>,
    pub started_at: Option<Stamp>,
    pub finished_at: Option<Stamp>,
    pub pid: Option<u32>,
    pub root: Option<String>,
    pub parent: Option<String>,
    pub log_file: Option<String>,
    /// Started from a queue (by a scheduler), so a scheduler may recover it if its process
    /// dies.
    #[serde(default)]
    pub queued: bool,
    /// When the run entered a queue (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Stamp>,
    /// The worker executing the run, when it runs on one: then its liveness is the
    /// coordinator's lease, not `pid` (a process on another machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The machine whose process `pid` is: only there can it be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What went wrong without changing the outcome, e.g. a store write that failed for
    /// good (then this record may lack a step change the run made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl RunRecord {
    /// A record for a new attempt of `dag`: every step not started yet.
    pub fn new(dag: &crate::Dag, run_id: &str, attempt_id: &str, status: Status) -> RunRecord {
        RunRecord {
            name: dag.name.clone(),
            run_id: run_id.into(),
            attempt_id: attempt_id.into(),
            status,
            steps: dag
                .steps
                .iter()
                .map(|s| StepRecord {
                    name: s.name.clone(),
                    ..StepRecord::default()
                })
                .collect(),
            ..RunRecord::default()
        }
    }

    /// The params the run was started with (`K=V` named, the rest positional), to start
    /// it again the same way.
    pub fn param_values(&self) -> Vec<crate::params::ParamValue> {
        let mut position = 0;
        self.params
            .iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) if crate::params::is_identifier(k) => crate::params::ParamValue {
                    name: k.into(),
                    value: v.into(),
                    positional: false,
                },
                _ => {
                    position += 1;
                    crate::params::ParamValue {
                        name: position.to_string(),
                        value: p.clone(),
                        positional: true,
                    }
                }
            })
            .collect()
    }

    /// The params as one `--params` string (quoted where needed), if there are any.
    pub fn params_text(&self) -> Option<String> {
        (!self.params.is_empty()).then(|| crate::params::render(&self.param_values()))
    }
}

/// Dagu's final-status rule for a run whose steps have all settled.
///
/// Failed (without continue_on) wins; then waiting; the run is partially succeeded only
/// when a step failed under continue_on (or a child run partially succeeded) and at least
/// one step succeeded — a lone continued failure is still a failure.
pub fn final_status(steps: &[StepRecord]) -> Status {
    let any = |f: &dyn Fn(&StepRecord) -> bool| steps.iter().any(f);
    if any(&|s| matches!(s.status, Status::Failed) && !s.continued) {
        return Status::Failed;
    }
    if any(&|s| s.status == Status::Aborted) {
        return Status::Aborted;
    }
    if any(&|s| s.status == Status::Cancelled) {
        return Status::Cancelled;
    }
    if any(&|s| s.status == Status::Waiting) {
        return Status::Waiting;
    }
    let continued_failure = any(&|s| s.status == Status::Failed && s.continued);
    let succeeded = any(&|s| s.status == Status::Succeeded);
    if any(&|s| s.status == Status::PartiallySucceeded) || (continued_failure && succeeded) {
        return Status::PartiallySucceeded;
    }
    if continued_failure {
        return Status::Failed;
    }
    Status::Succeeded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: Status, continued: bool) -> StepRecord {
        StepRecord {
            status,
            continued,
            ..StepRecord::default()
        }
    }

    #[test]
    fn partial_success_needs_a_success_too() {
        let ok = step(Status::Succeeded, false);
        let cont = step(Status::Failed, true);
        assert_eq!(
            final_status(&[cont.clone(), ok.clone()]),
            Status::PartiallySucceeded
        );
        assert_eq!(final_status(&[cont]), Status::Failed);
        assert_eq!(
            final_status(&[ok.clone(), step(Status::Skipped, false)]),
            Status::Succeeded
        );
        assert_eq!(
            final_status(&[ok, step(Status::Failed, false)]),
            Status::Failed
        );
        assert_eq!(
            final_status(&[step(Status::Waiting, false)]),
            Status::Waiting
        );
    }
}
