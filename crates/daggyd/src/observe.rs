//! The store as one Daggy run writes it: every entry goes to the Trellis store unchanged,
//! and each change of the run's or a task's Daggy state becomes an event for the logger
//! (with the finished try's output, when the logger keeps attempts).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status, StepRecord};
use trellis_store::{Attempt, Entry, Shared, Store};

use crate::record::{Event, State, StateChange, TaskAttempt};
use crate::sink::Sink;

/// How much of a try's stdout and stderr an attempt keeps.
const KEEP: u64 = 1 << 20;

/// Daggy run ids whose new attempt has not written its first record yet.
pub type Pending = Arc<Mutex<std::collections::HashSet<u64>>>;

pub struct Observed {
    inner: Shared,
    run: u64,
    sink: Sink,
    tracker: Mutex<Tracker>,
    /// Cleared of this run at its first write.
    pending: Option<Pending>,
}

impl Observed {
    pub fn new(inner: Shared, run: u64, sink: Sink, attempts: bool) -> Observed {
        Observed {
            inner,
            run,
            sink,
            tracker: Mutex::new(Tracker::new(run, attempts)),
            pending: None,
        }
    }

    /// Takes the run out of `pending` once its attempt has written a record.
    pub fn clearing(mut self, pending: Pending) -> Arc<Observed> {
        self.pending = Some(pending);
        Arc::new(self)
    }
}

/// Turns the entries of a run, in the order they are written, into Daggy's events:
/// live (as a run writes them) or replayed (from the store's history of a run).
pub struct Tracker {
    run: u64,
    /// Read each finished try's output for an `Attempt` event.
    attempts: bool,
    state: Option<State>,
    tasks: HashMap<String, (State, u32)>,
    /// When the last snapshot was taken: the time of the states of tasks not started.
    at: Option<jiff::Timestamp>,
}

impl Tracker {
    pub fn new(run: u64, attempts: bool) -> Tracker {
        Tracker {
            run,
            attempts,
            state: None,
            tasks: HashMap::new(),
            at: None,
        }
    }

    /// A new attempt of the run begins (a retry, a resume): a task that was running in
    /// the last one lost that try with its runner, and is not a try that ended here.
    pub fn new_attempt(&mut self) {
        for (state, _) in self.tasks.values_mut() {
            if *state == State::Running {
                *state = State::Errored;
            }
        }
    }

    pub fn entry(&mut self, entry: &Entry, out: &mut Vec<Event>) {
        match entry {
            Entry::Snapshot(run) => {
                let at = run.finished_at.or(run.started_at).or(run.queued_at);
                self.at = at.map(|s| s.0);
                self.run_state(run, out);
                for step in &run.steps {
                    self.task_state(step, out);
                }
            }
            Entry::Step { step, .. } => self.task_state(step, out),
            Entry::Handler { .. } => {}
        }
    }

    fn run_state(&mut self, run: &RunRecord, out: &mut Vec<Event>) {
        let state = State::of(run.status);
        if self.state == Some(state) {
            return;
        }
        self.state = Some(state);
        let at = match state {
            State::Queued => run.queued_at.or(run.started_at),
            s if s.is_final() => run.finished_at,
            _ => run.started_at,
        };
        out.push(Event::Run {
            run: self.run,
            change: change(at.map(|s| s.0), state),
        });
    }

    fn task_state(&mut self, step: &StepRecord, out: &mut Vec<Event>) {
        let state = State::of(step.status);
        let before = self
            .tasks
            .insert(step.name.clone(), (state, step.retry_count));
        if before.is_some_and(|(s, tries)| s == state && tries == step.retry_count) {
            return;
        }
        // A try ended: it ran, and now it does not (or a new try began after it).
        let ended = matches!(before, Some((State::Running, tries))
            if state != State::Running || tries != step.retry_count);
        if ended && self.attempts {
            out.push(Event::Attempt {
                run: self.run,
                task: step.name.clone(),
                attempt: attempt(step),
            });
        }
        if before.is_some_and(|(s, _)| s == state) {
            return;
        }
        let at = match state {
            State::Running => step.started_at.map(|s| s.0),
            State::Queued => self.at,
            _ => step.finished_at.map(|s| s.0),
        };
        out.push(Event::Task {
            run: self.run,
            task: step.name.clone(),
            change: change(at, state),
        });
    }
}

pub fn change(at: Option<jiff::Timestamp>, state: State) -> StateChange {
    StateChange {
        datetime: at.unwrap_or_else(jiff::Timestamp::now).to_string(),
        state,
    }
}

/// A finished try as DaggyR reports it, from the step's record and log files.
pub fn attempt(step: &StepRecord) -> TaskAttempt {
    let mut error = head(step.stderr.as_deref());
    if let Some(reason) = &step.error {
        if !error.is_empty() && !error.ends_with('\n') {
            error.push('\n');
        }
        error.push_str(reason);
    }
    TaskAttempt {
        start_time: step.started_at.map(|s| s.0.to_string()).unwrap_or_default(),
        stop_time: step
            .finished_at
            .map(|s| s.0.to_string())
            .unwrap_or_default(),
        succeeded: matches!(step.status, Status::Succeeded | Status::PartiallySucceeded),
        killed: matches!(step.status, Status::Aborted | Status::Cancelled),
        output: head(step.stdout.as_deref()),
        error,
        executor: step
            .handle
            .iter()
            .map(|h| format!("{} {}", h.executor, h.id))
            .chain(step.notes.iter().cloned())
            .collect(),
        exit_code: step.exit_code.unwrap_or(-1),
        max_cpu: 0,
        max_rss: 0,
    }
}

/// The first MiB of a log file, lossily decoded.
fn head(path: Option<&str>) -> String {
    let Some(Ok(file)) = path.map(std::fs::File::open) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    let _ = file.take(KEEP).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Store for Observed {
    fn may_wait(&self) -> bool {
        self.inner.may_wait()
    }

    fn create_attempt(
        &self,
        dag: &str,
        run_id: &str,
        parent: Option<&Attempt>,
    ) -> trellis_store::Result<Attempt> {
        self.inner.create_attempt(dag, run_id, parent)
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> trellis_store::Result<()> {
        self.inner.append(attempt, entry)?;
        if let Some(pending) = &self.pending
            && let Ok(mut pending) = pending.lock()
        {
            pending.remove(&self.run);
        }
        // After the write: the logger never tells of a change the store lacks.
        let mut events = Vec::new();
        if let Ok(mut tracker) = self.tracker.lock() {
            tracker.entry(entry, &mut events);
        }
        for event in events {
            self.sink.send(event);
        }
        Ok(())
    }

    fn latest(&self, dag: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.latest(dag)
    }

    fn find(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find(dag, run_id)
    }

    fn retry_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Attempt> {
        self.inner.retry_attempt(dag, run_id)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Attempt>> {
        self.inner.latest_attempt(dag, run_id)
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> trellis_store::Result<()> {
        self.inner.save_definition(attempt, dag)
    }

    fn find_child(
        &self,
        parent: &Attempt,
        run_id: &str,
    ) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find_child(parent, run_id)
    }

    fn definition(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Dag>> {
        self.inner.definition(dag, run_id)
    }

    fn list(&self, dag: &str, limit: usize) -> trellis_store::Result<Vec<RunRecord>> {
        self.inner.list(dag, limit)
    }

    fn dag_names(&self) -> trellis_store::Result<Vec<String>> {
        self.inner.dag_names()
    }

    fn remove(&self, dag: &str, run_id: &str) -> trellis_store::Result<()> {
        self.inner.remove(dag, run_id)
    }

    fn history(&self, dag: &str, run_id: &str) -> trellis_store::Result<Vec<(String, Entry)>> {
        self.inner.history(dag, run_id)
    }
}
