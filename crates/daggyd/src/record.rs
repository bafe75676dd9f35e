//! Daggy's words for what happens to a run: its states, a task's attempts, and the events
//! a logger is given. The API's JSON and the loggers' records use these shapes.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use trellis_core::status::Status;

/// A run's or a task's state, by Daggy's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Queued,
    Running,
    /// Failed, waiting to be tried again.
    Retry,
    Errored,
    Killed,
    Completed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "Queued",
            State::Running => "Running",
            State::Retry => "Retry",
            State::Errored => "Errored",
            State::Killed => "Killed",
            State::Completed => "Completed",
        }
    }

    /// Reads a name in any case (`QUEUED`, `queued`, `Queued`).
    pub fn parse(text: &str) -> Option<State> {
        [
            State::Queued,
            State::Running,
            State::Retry,
            State::Errored,
            State::Killed,
            State::Completed,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// Daggy's name for a Trellis status. A skipped step (its parent failed) has not run:
    /// Daggy leaves such a task queued.
    pub fn of(status: Status) -> State {
        match status {
            Status::NotStarted | Status::Queued | Status::Skipped | Status::Waiting => {
                State::Queued
            }
            Status::Running => State::Running,
            Status::Retrying => State::Retry,
            Status::Succeeded | Status::PartiallySucceeded => State::Completed,
            Status::Failed => State::Errored,
            Status::Aborted | Status::Cancelled => State::Killed,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Errored | State::Killed | State::Completed)
    }
}

/// When a run or task entered a state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// RFC 3339.
    pub datetime: String,
    pub state: State,
}

/// One try of a task, as DaggyR reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskAttempt {
    /// RFC 3339, empty when it did not start.
    pub start_time: String,
    pub stop_time: String,
    pub succeeded: bool,
    pub killed: bool,
    /// What the task printed on stdout (the first MiB).
    pub output: String,
    /// What it printed on stderr (the first MiB), then the reason it failed.
    pub error: String,
    /// Notes of the executor: where it ran, why it was retried.
    pub executor: Vec<String>,
    pub exit_code: i32,
    pub max_cpu: u64,
    pub max_rss: u64,
}

/// What a logger is told, as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A run was accepted: its Daggy id, the Trellis run it is, its tags and its spec.
    Created {
        run: u64,
        dag: String,
        run_id: String,
        tags: IndexMap<String, String>,
        spec: serde_json::Value,
    },
    Run {
        run: u64,
        change: StateChange,
    },
    Task {
        run: u64,
        task: String,
        change: StateChange,
    },
    /// A try of a task ended.
    Attempt {
        run: u64,
        task: String,
        attempt: TaskAttempt,
    },
}

impl Event {
    pub fn run(&self) -> u64 {
        match self {
            Event::Created { run, .. }
            | Event::Run { run, .. }
            | Event::Task { run, .. }
            | Event::Attempt { run, .. } => *run,
        }
    }
}

/// A run as a logger that keeps state (Redis) remembers it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub run: u64,
    /// The Trellis DAG and run id it maps to.
    pub dag: String,
    pub run_id: String,
    pub tags: IndexMap<String, String>,
    pub spec: serde_json::Value,
    pub state: Option<State>,
    pub state_changes: Vec<StateChange>,
    /// Task name → its state, state changes and attempts.
    pub tasks: IndexMap<String, RememberedTask>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RememberedTask {
    pub state: Option<State>,
    pub state_changes: Vec<StateChange>,
    pub attempts: Vec<TaskAttempt>,
}

impl Remembered {
    /// Folds an event in, as the Redis logger records it.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Created {
                run,
                dag,
                run_id,
                tags,
                spec,
            } => {
                (self.run, self.dag, self.run_id) = (run, dag, run_id);
                (self.tags, self.spec) = (tags, spec);
            }
            Event::Run { change, .. } => {
                self.state = Some(change.state);
                self.state_changes.push(change);
            }
            Event::Task { task, change, .. } => {
                let task = self.tasks.entry(task).or_default();
                task.state = Some(change.state);
                task.state_changes.push(change);
            }
            Event::Attempt { task, attempt, .. } => {
                self.tasks.entry(task).or_default().attempts.push(attempt);
            }
        }
    }
}
