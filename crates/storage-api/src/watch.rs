//! Watching runs change, for live pages: one run's record ([`watch_run`]) and a feed of
//! status changes of recent runs ([`run_feed`]). A backend that can tell a change without
//! reading the run (the file backend: a `stat` of the run's status log) gives its own
//! watchers through [`Backend::run_watch`] and [`Backend::run_feed`]; every other backend
//! gets the ones here, which read the run on every look.

use std::collections::{HashMap, HashSet};

use trellis_core::status::RunRecord;

use crate::{Result, Shared, live_status, mark_dead};

/// One run's record, re-read when it may have changed.
pub trait RunWatch: Send {
    /// Whether the run may have changed since the last [`RunWatch::read`]: cheap, and
    /// true when the backend cannot tell without reading.
    fn stale(&mut self) -> bool;
    /// The run's latest record as stored (a dead process not yet marked), remembered as
    /// seen; `None` when it cannot be read now.
    fn read(&mut self) -> Result<Option<RunRecord>>;
}

/// Status changes of the newest runs of every DAG, and of every run still going.
pub trait RunFeed: Send {
    /// The runs that appeared or changed status since the last call, a dead process shown
    /// failed. The first call only learns the current state and returns nothing.
    fn changes(&mut self) -> Vec<RunRecord>;
}

/// A run's latest record, kept up to date by its watcher: what a live page or a feed
/// follows.
pub struct Followed {
    watch: Box<dyn RunWatch>,
    pub record: Option<RunRecord>,
}

impl Followed {
    pub fn new(watch: Box<dyn RunWatch>) -> Followed {
        Followed {
            watch,
            record: None,
        }
    }

    /// Re-reads the record when it may have changed; true when it did.
    pub fn refresh(&mut self) -> bool {
        self.stale() && self.load()
    }

    /// Looks without reading (cheap): whether the record may have changed.
    pub fn stale(&mut self) -> bool {
        self.watch.stale()
    }

    /// Reads the record that [`Followed::stale`] found changed; true when it differs.
    pub fn load(&mut self) -> bool {
        let Ok(Some(record)) = self.watch.read() else {
            return false;
        };
        let changed = self.record.as_ref() != Some(&record);
        self.record = Some(record);
        changed
    }

    /// The run's status now: a run recorded as running whose process is gone is failed.
    pub fn status(&self) -> Option<trellis_core::status::Status> {
        self.record.as_ref().map(live_status)
    }

    /// The status, after reading the record once more if the process seems dead: it may
    /// have written its final status just before exiting. The bool says the record changed.
    pub fn settled_status(&mut self) -> (Option<trellis_core::status::Status>, bool) {
        let status = self.status();
        if status != self.record.as_ref().map(|r| r.status) {
            let changed = self.refresh();
            return (self.status(), changed);
        }
        (status, false)
    }

    /// The record with a dead process shown failed.
    pub fn view(&self) -> Option<RunRecord> {
        let mut view = self.record.clone()?;
        mark_dead(&mut view);
        Some(view)
    }
}

/// A watcher of run `run_id` of `dag`; `None` when there is no such run.
pub fn watch_run(store: &Shared, dag: &str, run_id: &str) -> Result<Option<Box<dyn RunWatch>>> {
    if let Some(own) = store.run_watch(dag, run_id) {
        return own;
    }
    if store.find(dag, run_id)?.is_none() {
        return Ok(None);
    }
    Ok(Some(Box::new(Rereading {
        store: store.clone(),
        dag: dag.to_string(),
        run_id: run_id.to_string(),
    })))
}

/// A feed over the `per_dag` newest runs of each DAG (at least).
pub fn run_feed(store: &Shared, per_dag: usize) -> Box<dyn RunFeed> {
    store.run_feed(per_dag).unwrap_or_else(|| {
        Box::new(Paging {
            store: store.clone(),
            newest: per_dag * 8,
            announced: HashMap::new(),
            first: true,
        })
    })
}

/// Reads the run on every look.
struct Rereading {
    store: Shared,
    dag: String,
    run_id: String,
}

impl RunWatch for Rereading {
    fn stale(&mut self) -> bool {
        true
    }

    fn read(&mut self) -> Result<Option<RunRecord>> {
        self.store.find(&self.dag, &self.run_id)
    }
}

/// The status last announced per (DAG, run id).
type Announced = HashMap<(String, String), trellis_core::status::Status>;

/// The newest runs across DAGs, every run still going, and those announced going that
/// have ended since, read afresh on each call.
struct Paging {
    store: Shared,
    newest: usize,
    announced: Announced,
    first: bool,
}

impl RunFeed for Paging {
    fn changes(&mut self) -> Vec<RunRecord> {
        let Ok(page) = self.store.page(None, None, 0, self.newest) else {
            return Vec::new();
        };
        // Runs still going, however old: their end must be announced too.
        let going = self
            .store
            .unfinished(500)
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let ended = self.ended(&going);
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for mut run in page.runs.into_iter().chain(going).chain(ended) {
            let key = (run.name.clone(), run.run_id.to_string());
            if seen.contains_key(&key) {
                continue;
            }
            mark_dead(&mut run);
            seen.insert(key.clone(), run.status);
            if self.announced.get(&key) != Some(&run.status) && !self.first {
                out.push(run);
            }
        }
        self.announced = seen;
        self.first = false;
        out
    }
}

impl Paging {
    /// Runs announced going that are not going any more: read them again.
    fn ended(&self, going: &[RunRecord]) -> Vec<RunRecord> {
        let still: HashSet<(&str, &str)> = going
            .iter()
            .map(|r| (r.name.as_str(), r.run_id.as_str()))
            .collect();
        self.announced
            .iter()
            .filter(|((dag, id), s)| !s.is_final() && !still.contains(&(dag.as_str(), id.as_str())))
            .filter_map(|((dag, id), _)| self.store.find(dag, id).ok().flatten())
            .collect()
    }
}
