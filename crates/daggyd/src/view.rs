//! Runs as the two APIs show them. A run's story (every state change, every try) is
//! replayed from the Trellis store's history of the run; a run the store no longer has
//! is shown from what the Redis logger remembers.

use indexmap::IndexMap;
use serde_json::{Value, json};
use trellis_core::{Action, Dag, Step};

use crate::book::Entry;
use crate::daemon::Daemon;
use crate::observe::Tracker;
use crate::record::{Remembered, RememberedTask, State};
use crate::{Error, blocking};

/// A run with its story and, when the store has it, its definition.
pub struct Shown {
    pub story: Remembered,
    pub dag: Option<Dag>,
    pub started: String,
    pub updated: String,
}

impl Daemon {
    /// Everything known of run `run`; `None` when it has no such id.
    pub async fn show(&self, run: u64) -> Result<Option<Shown>, Error> {
        let Some(entry) = self.book.lookup(run).await? else {
            return Ok(None);
        };
        let (store, e) = (self.store.clone(), entry.clone());
        let (history, dag) = blocking(move || {
            Ok((
                store.history(&e.dag, &e.run_id)?,
                store.definition(&e.dag, &e.run_id)?,
            ))
        })
        .await?;
        if history.is_empty() {
            let Some(story) = self.book.remembered(run).await? else {
                return Ok(Some(lost(&entry)));
            };
            return Ok(Some(shown(story, None)));
        }
        let mut story = replay(&entry, &history);
        // The state of a run whose runner died without a word is the store's verdict.
        if let Some(record) = self.record(&entry).await? {
            let now = self.seen_state(run, &record);
            if story.state != Some(now) {
                let at = record.finished_at.map(|s| s.0);
                story.apply(crate::record::Event::Run {
                    run,
                    change: crate::observe::change(at, now),
                });
            }
        }
        if let Some(dag) = &dag {
            story.tags = dag.labels.clone();
        }
        Ok(Some(shown(story, dag)))
    }
}

impl Daemon {
    /// The state a user sees: a run this process launched (to start, resume or retry)
    /// whose new attempt has not written yet is `Queued`, whatever its last attempt,
    /// ended or dead, says.
    pub(crate) fn seen_state(&self, run: u64, record: &trellis_core::status::RunRecord) -> State {
        let state = State::of(record.status);
        if state.is_final() && self.pending.lock().is_ok_and(|p| p.contains(&run)) {
            return State::Queued;
        }
        state
    }
}

fn replay(entry: &Entry, history: &[(String, trellis_store::Entry)]) -> Remembered {
    let mut story = Remembered {
        run: entry.run,
        dag: entry.dag.clone(),
        run_id: entry.run_id.clone(),
        ..Remembered::default()
    };
    let mut events = Vec::new();
    let mut attempt = None;
    let mut tracker = Tracker::new(entry.run, true);
    for (id, e) in history {
        // A new attempt of the run (a retry) starts its tasks' stories where they were.
        if attempt.as_ref() != Some(id) {
            attempt = Some(id.clone());
            tracker.new_attempt();
        }
        tracker.entry(e, &mut events);
    }
    for event in events {
        story.apply(event);
    }
    story
}

/// A run whose id was given but whose record never reached the store.
fn lost(entry: &Entry) -> Shown {
    let mut story = Remembered {
        run: entry.run,
        dag: entry.dag.clone(),
        run_id: entry.run_id.clone(),
        ..Remembered::default()
    };
    story.apply(crate::record::Event::Run {
        run: entry.run,
        change: crate::observe::change(None, State::Errored),
    });
    shown(story, None)
}

fn shown(story: Remembered, dag: Option<Dag>) -> Shown {
    let started = story
        .state_changes
        .first()
        .map(|c| c.datetime.clone())
        .unwrap_or_default();
    let updated = story
        .state_changes
        .last()
        .map(|c| c.datetime.clone())
        .unwrap_or_default();
    Shown {
        story,
        dag,
        started,
        updated,
    }
}

impl Shown {
    pub fn state(&self) -> State {
        self.story.state.unwrap_or(State::Queued)
    }

    /// Tasks by name, in the DAG's order, with those that have no story yet.
    pub fn tasks(&self) -> IndexMap<String, RememberedTask> {
        let mut tasks = IndexMap::new();
        if let Some(dag) = &self.dag {
            for step in &dag.steps {
                tasks.insert(step.name.clone(), RememberedTask::default());
            }
        }
        for (name, task) in &self.story.tasks {
            tasks.insert(name.clone(), task.clone());
        }
        tasks
    }

    pub fn task_counts(&self) -> IndexMap<&'static str, usize> {
        let mut counts = IndexMap::new();
        for task in self.tasks().values() {
            *counts
                .entry(task.state.unwrap_or(State::Queued).as_str())
                .or_insert(0) += 1;
        }
        counts
    }

    pub fn parameters(&self) -> Value {
        self.dag
            .as_ref()
            .and_then(|d| d.executor_defaults.get(trellis_spec::DAGGY_PARAMETERS))
            .cloned()
            .unwrap_or_else(|| json!({}))
    }

    /// A task's definition in Daggy's form.
    pub fn task_spec(&self, name: &str) -> Value {
        let step = self
            .dag
            .as_ref()
            .and_then(|d| d.steps.iter().find(|s| s.name == name));
        step.map(task_spec).unwrap_or(Value::Null)
    }
}

fn task_spec(step: &Step) -> Value {
    let command: Vec<&str> = match &step.action {
        Action::Exec { program, args } => std::iter::once(program.as_str())
            .chain(args.iter().map(String::as_str))
            .collect(),
        _ => Vec::new(),
    };
    let env: serde_json::Map<String, Value> = step
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut details = json!({"command": command, "environment": env});
    if let Some(t) = step.timeout_sec {
        details["timeout"] = t.into();
    }
    if let Some(e) = &step.executor {
        details["executor"] = json!({"type": e.kind, "with": e.config});
    }
    json!({
        "details": details,
        "parents": step.depends,
        "is_generator": step.generator,
        "max_retries": step.retry_policy.as_ref().map_or(0, |p| p.limit),
        "retry_interval_seconds": step.retry_policy.as_ref().map_or(0.0, |p| p.interval_sec),
    })
}
