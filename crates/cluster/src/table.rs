//! The coordinator's task table, as a pure state machine: tasks wait, are claimed by a
//! worker whose labels match, are acknowledged, and hold a lease that heartbeats renew.
//! Time comes in as milliseconds; nothing here reads a clock or touches a file. The
//! coordinator persists the table's tasks and performs what [`Table::expire`] returns.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use trellis_core::WorkerSelector;

/// What a task asks for (the part the scheduler writes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub dag_name: String,
    pub run_id: String,
    pub attempt: u32,
    /// Attempts allowed when a worker is lost (1 + the DAG's retry limit).
    pub max_attempts: u32,
    pub definition_json: String,
    pub params: String,
    pub selector: IndexMap<String, String>,
    pub queued_at: String,
    /// Milliseconds since the epoch when it entered the table (orders the pending tasks).
    pub queued_ms: i64,
    pub env: IndexMap<String, String>,
    pub existing_run: bool,
    /// The queue the run came from and its tags: a new scheduler leader counts the run
    /// against the same limits.
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub tags: IndexMap<String, String>,
    /// HMAC of the content by the scheduler, when the cluster has a signing key.
    #[serde(default)]
    pub signature: String,
    /// A child run of a `call` step: stored under this parent attempt (shared filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}

/// Where a child run's parent attempt lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentRef {
    pub dir: std::path::PathBuf,
    pub log_dir: std::path::PathBuf,
    pub run_id: String,
    pub attempt_id: String,
    pub root_run_id: String,
}

impl ParentRef {
    pub fn of(a: &trellis_store::Attempt) -> ParentRef {
        ParentRef {
            dir: a.dir.clone(),
            log_dir: a.log_dir.clone(),
            run_id: a.run_id.to_string(),
            attempt_id: a.attempt_id.to_string(),
            root_run_id: a.root_run_id.to_string(),
        }
    }

    pub fn attempt(&self) -> trellis_store::Attempt {
        trellis_store::Attempt {
            dir: self.dir.clone(),
            log_dir: self.log_dir.clone(),
            run_id: self.run_id.clone().into(),
            attempt_id: self.attempt_id.clone().into(),
            root_run_id: self.root_run_id.clone().into(),
        }
    }
}

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Pending {
        /// Why it has not started, when no live worker matches.
        #[serde(default)]
        reason: Option<String>,
        /// Since when (ms) no live worker has matched: the dispatch timeout counts from here.
        #[serde(default)]
        since_ms: Option<i64>,
    },
    Claimed {
        worker_id: String,
        claim_token: String,
        acked: bool,
        lease_until_ms: i64,
        #[serde(default)]
        cancel: bool,
        /// Shared-nothing: the attempt the coordinator stores this worker's reports in.
        #[serde(default)]
        remote_attempt: Option<String>,
    },
}

impl Phase {
    /// Waiting for a worker, with nothing to explain yet.
    pub fn pending() -> Phase {
        Phase::Pending {
            reason: None,
            since_ms: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub spec: TaskSpec,
    pub phase: Phase,
}

/// Time limits of claims and leases.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A claim not acknowledged within this goes back to pending.
    pub ack_ms: i64,
    /// A lease not renewed within this is lost.
    pub lease_ms: i64,
}

/// What the coordinator must do after a lease expired.
#[derive(Clone, Debug, PartialEq)]
pub enum Expired {
    /// Queued again for another worker, as the given attempt.
    Requeued { task_id: String, attempt: u32 },
    /// No attempts left: fail the run with "worker lost".
    Lost { task: Box<Task>, worker_id: String },
    /// A claim that was never acknowledged, back to pending (same attempt).
    Unclaimed { task_id: String },
    /// A run the user stopped whose worker went silent: it ends cancelled, never re-queued.
    Cancelled { task: Box<Task> },
}

#[derive(Default, Debug)]
pub struct Table {
    tasks: BTreeMap<String, Task>,
}

impl Table {
    pub fn insert(&mut self, task: Task) {
        self.tasks.insert(task.spec.task_id.clone(), task);
    }

    pub fn get(&self, task_id: &str) -> Option<&Task> {
        self.tasks.get(task_id)
    }

    pub fn remove(&mut self, task_id: &str) -> Option<Task> {
        self.tasks.remove(task_id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Gives the oldest pending task that `labels` satisfy to `worker_id`.
    pub fn claim(
        &mut self,
        worker_id: &str,
        labels: &IndexMap<String, String>,
        token: &str,
        now_ms: i64,
        timing: Timing,
    ) -> Option<&Task> {
        let id = self
            .tasks
            .values()
            .filter(|t| matches!(t.phase, Phase::Pending { .. }))
            .filter(|t| selector(&t.spec).matches(labels))
            .min_by(|a, b| {
                (a.spec.queued_ms, &a.spec.task_id).cmp(&(b.spec.queued_ms, &b.spec.task_id))
            })?
            .spec
            .task_id
            .clone();
        let task = self.tasks.get_mut(&id)?;
        task.phase = Phase::Claimed {
            worker_id: worker_id.to_string(),
            claim_token: token.to_string(),
            acked: false,
            lease_until_ms: now_ms + timing.ack_ms,
            cancel: false,
            remote_attempt: None,
        };
        Some(task)
    }

    /// Confirms a claim; false when the claim is not (or no longer) this worker's.
    pub fn ack(&mut self, task_id: &str, worker: &str, token: &str, now: i64, t: Timing) -> bool {
        match self.tasks.get_mut(task_id).map(|t| &mut t.phase) {
            Some(Phase::Claimed {
                worker_id,
                claim_token,
                acked,
                lease_until_ms,
                ..
            }) if worker_id == worker && claim_token == token => {
                *acked = true;
                *lease_until_ms = now + t.lease_ms;
                true
            }
            _ => false,
        }
    }

    /// Renews the leases of the tasks a worker says it runs. Returns the ones it must stop:
    /// cancelled, or no longer its own (the lease expired and the task moved on).
    pub fn heartbeat(
        &mut self,
        worker: &str,
        running: &[(String, String)],
        now_ms: i64,
        timing: Timing,
    ) -> Vec<String> {
        let mut stop = Vec::new();
        for (task_id, token) in running {
            match self.tasks.get_mut(task_id).map(|t| &mut t.phase) {
                Some(Phase::Claimed {
                    worker_id,
                    claim_token,
                    acked,
                    lease_until_ms,
                    cancel,
                    ..
                }) if worker_id == worker && claim_token == token => {
                    *acked = true;
                    *lease_until_ms = now_ms + timing.lease_ms;
                    if *cancel {
                        stop.push(task_id.clone());
                    }
                }
                _ => stop.push(task_id.clone()),
            }
        }
        stop
    }

    /// Records the store attempt a shared-nothing task's reports go to.
    pub fn set_remote_attempt(&mut self, task_id: &str, attempt_id: &str) {
        if let Some(Phase::Claimed { remote_attempt, .. }) =
            self.tasks.get_mut(task_id).map(|t| &mut t.phase)
        {
            *remote_attempt = Some(attempt_id.to_string());
        }
    }

    /// Whether `token` is the live claim of `task_id` by `worker`.
    /// A worker leaving hands back a task it claimed (its steps run on without it): the
    /// task is pending again as the same attempt, to be resumed by the next worker.
    pub fn release(&mut self, task_id: &str, worker: &str, token: &str, now_ms: i64) -> bool {
        if !self.owns(task_id, worker, token) {
            return false;
        }
        let Some(task) = self.tasks.get_mut(task_id) else {
            return false;
        };
        task.spec.existing_run = true;
        task.spec.queued_ms = now_ms;
        task.phase = Phase::pending();
        true
    }

    pub fn owns(&self, task_id: &str, worker: &str, token: &str) -> bool {
        matches!(
            self.tasks.get(task_id).map(|t| &t.phase),
            Some(Phase::Claimed { worker_id, claim_token, .. })
                if worker_id == worker && claim_token == token
        )
    }

    /// Requests cancellation of a run's task. A pending task is removed and returned (its
    /// run never started); a claimed one is flagged for its worker's next heartbeat.
    pub fn cancel(&mut self, dag: &str, run_id: &str) -> Option<Option<Task>> {
        let id = self
            .tasks
            .values()
            .find(|t| t.spec.dag_name == dag && t.spec.run_id == run_id)?
            .spec
            .task_id
            .clone();
        match self.tasks.get_mut(&id).map(|t| &mut t.phase) {
            Some(Phase::Claimed { cancel, .. }) => {
                *cancel = true;
                Some(None)
            }
            _ => Some(self.tasks.remove(&id)),
        }
    }

    /// Gives every expired claim or lease a new fate; see [`Expired`].
    pub fn expire(&mut self, now_ms: i64) -> Vec<Expired> {
        let due: Vec<String> = self
            .tasks
            .values()
            .filter(|t| matches!(t.phase, Phase::Claimed { lease_until_ms, .. } if lease_until_ms < now_ms))
            .map(|t| t.spec.task_id.clone())
            .collect();
        let mut out = Vec::new();
        for id in due {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let Phase::Claimed {
                acked,
                worker_id,
                cancel,
                ..
            } = task.phase.clone()
            else {
                continue;
            };
            if cancel {
                if let Some(task) = self.tasks.remove(&id) {
                    out.push(Expired::Cancelled {
                        task: Box::new(task),
                    });
                }
            } else if !acked {
                task.phase = Phase::pending();
                out.push(Expired::Unclaimed { task_id: id });
            } else if task.spec.attempt < task.spec.max_attempts {
                task.spec.attempt += 1;
                task.spec.existing_run = true;
                task.spec.queued_ms = now_ms;
                task.phase = Phase::pending();
                out.push(Expired::Requeued {
                    task_id: id,
                    attempt: task.spec.attempt,
                });
            } else if let Some(task) = self.tasks.remove(&id) {
                out.push(Expired::Lost {
                    task: Box::new(task),
                    worker_id,
                });
            }
        }
        out
    }

    /// Notes on each pending task why it waits: no live worker matches its selector, and
    /// since when. Returns the ids whose reason changed (to persist them).
    pub fn explain(&mut self, live: &[IndexMap<String, String>], now_ms: i64) -> Vec<String> {
        let mut changed = Vec::new();
        for task in self.tasks.values_mut() {
            let Phase::Pending { reason, since_ms } = &mut task.phase else {
                continue;
            };
            let sel = selector(&task.spec);
            let now = (!live.iter().any(|l| sel.matches(l)))
                .then(|| format!("no live worker matches {}", sel.describe()));
            if *reason != now {
                *since_ms = now.as_ref().map(|_| now_ms);
                *reason = now;
                changed.push(task.spec.task_id.clone());
            }
        }
        changed
    }

    /// Pending tasks no live worker has matched for longer than `timeout_ms`.
    pub fn unmatched_for(&self, now_ms: i64, timeout_ms: i64) -> Vec<String> {
        self.tasks
            .values()
            .filter(|t| {
                matches!(t.phase, Phase::Pending { since_ms: Some(since), .. }
                    if now_ms - since > timeout_ms)
            })
            .map(|t| t.spec.task_id.clone())
            .collect()
    }
}

pub fn selector(spec: &TaskSpec) -> WorkerSelector {
    if spec.selector.is_empty() {
        WorkerSelector::Any
    } else {
        WorkerSelector::Labels(spec.selector.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ack_ms: 1_000,
        lease_ms: 30_000,
    };

    fn task(id: &str, selector: &str, queued_ms: i64, max_attempts: u32) -> Task {
        Task {
            spec: TaskSpec {
                task_id: id.into(),
                dag_name: "d".into(),
                run_id: format!("run-{id}"),
                attempt: 1,
                max_attempts,
                definition_json: "{}".into(),
                params: String::new(),
                selector: trellis_core::worker::parse_labels(selector).unwrap(),
                queued_at: String::new(),
                queued_ms,
                env: IndexMap::new(),
                existing_run: true,
                queue: String::new(),
                tags: IndexMap::new(),
                signature: String::new(),
                parent: None,
            },
            phase: Phase::pending(),
        }
    }

    fn labels(s: &str) -> IndexMap<String, String> {
        trellis_core::worker::parse_labels(s).unwrap()
    }

    #[test]
    fn claims_oldest_matching_task_only() {
        let mut t = Table::default();
        t.insert(task("gpu", "gpu=true", 1, 1));
        t.insert(task("any", "", 2, 1));
        let cpu = labels("cpu=true");
        assert_eq!(t.claim("w1", &cpu, "k1", 0, T).unwrap().spec.task_id, "any");
        assert!(
            t.claim("w1", &cpu, "k2", 0, T).is_none(),
            "gpu task needs gpu"
        );
        let got = t.claim("w2", &labels("gpu=true"), "k3", 0, T).unwrap();
        assert_eq!(got.spec.task_id, "gpu");
    }

    #[test]
    fn unacked_claim_returns_to_pending() {
        let mut t = Table::default();
        t.insert(task("a", "", 1, 1));
        t.claim("w1", &labels(""), "k", 0, T);
        assert!(t.expire(500).is_empty());
        assert_eq!(
            t.expire(1_001),
            vec![Expired::Unclaimed {
                task_id: "a".into()
            }]
        );
        assert!(t.claim("w2", &labels(""), "k2", 1_002, T).is_some());
    }

    #[test]
    fn heartbeats_renew_leases_and_lost_workers_requeue_then_fail() {
        let mut t = Table::default();
        t.insert(task("a", "", 1, 2));
        t.claim("w1", &labels(""), "k", 0, T);
        assert!(t.ack("a", "w1", "k", 0, T));
        assert!(!t.ack("a", "w1", "wrong", 0, T), "stale token refused");
        let running = vec![("a".to_string(), "k".to_string())];
        assert!(t.heartbeat("w1", &running, 20_000, T).is_empty());
        assert!(
            t.expire(40_000).is_empty(),
            "renewed at 20 s, lease to 50 s"
        );
        assert_eq!(
            t.expire(50_001),
            vec![Expired::Requeued {
                task_id: "a".into(),
                attempt: 2
            }]
        );
        // The old worker comes back: its heartbeat is told to stop the task.
        assert_eq!(
            t.heartbeat("w1", &running, 50_002, T),
            vec!["a".to_string()]
        );
        t.claim("w2", &labels(""), "k2", 50_003, T);
        assert!(t.ack("a", "w2", "k2", 50_003, T));
        match t.expire(90_000).as_slice() {
            [Expired::Lost { worker_id, task }] => {
                assert_eq!(worker_id, "w2");
                assert_eq!(task.spec.attempt, 2);
            }
            other => panic!("expected lost, got {other:?}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn cancel_removes_pending_and_flags_claimed() {
        let mut t = Table::default();
        t.insert(task("a", "", 1, 1));
        t.insert(task("b", "", 2, 1));
        t.claim("w1", &labels(""), "k", 0, T);
        t.ack("a", "w1", "k", 0, T);
        assert!(matches!(t.cancel("d", "run-b"), Some(Some(_))));
        assert!(matches!(t.cancel("d", "run-a"), Some(None)));
        let running = vec![("a".to_string(), "k".to_string())];
        assert_eq!(t.heartbeat("w1", &running, 1, T), vec!["a".to_string()]);
        assert!(t.cancel("d", "nope").is_none());
        // Its worker goes silent: the stopped run ends, it is not handed out again.
        assert!(matches!(
            t.expire(40_000).as_slice(),
            [Expired::Cancelled { .. }]
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn explains_why_a_task_waits() {
        let mut t = Table::default();
        t.insert(task("a", "gpu=true", 1, 1));
        assert_eq!(
            t.explain(&[labels("cpu=true")], 1_000),
            vec!["a".to_string()]
        );
        match &t.get("a").unwrap().phase {
            Phase::Pending { reason, since_ms } => {
                assert_eq!(reason.as_deref(), Some("no live worker matches gpu=true"));
                assert_eq!(*since_ms, Some(1_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            t.explain(&[labels("cpu=true")], 2_000).is_empty(),
            "unchanged"
        );
        assert!(
            t.unmatched_for(5_000, 5_000).is_empty(),
            "counted from 1 s, not queueing"
        );
        assert_eq!(t.unmatched_for(6_001, 5_000), vec!["a".to_string()]);
        assert_eq!(
            t.explain(&[labels("gpu=true")], 7_000),
            vec!["a".to_string()]
        );
        assert!(
            t.unmatched_for(99_000, 5_000).is_empty(),
            "a match clears the clock"
        );
    }
}
