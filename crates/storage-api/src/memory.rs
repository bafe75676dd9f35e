//! [`MemStore`]: every trait of the seam, in memory. For tests of the parts above the
//! store (no files, no database), and as the reference the conformance suite is checked
//! against. Attempts still get a directory each under the scratch dir given at creation,
//! since steps write their scripts and logs there.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use trellis_core::Dag;
use trellis_core::status::RunRecord;

use crate::state::{Lead, LeaseInfo, SCHEDULER, State};
use crate::{Attempt, Backend, Entry, Error, Queue, QueueItem, Result, Store, check_name};

/// One attempt: where its files go, its folded record, the entries it was folded from
/// (for [`Store::history`]) and its definition.
struct Slot {
    attempt: Attempt,
    record: Option<RunRecord>,
    entries: Vec<Entry>,
    definition: Option<Dag>,
}

/// A run (top-level or a child of an attempt) and its attempts, oldest first.
struct Run {
    seq: u64,
    dag: String,
    attempts: Vec<Slot>,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    /// Top-level runs by (DAG, run id); children by (parent attempt id, run id).
    runs: HashMap<(String, String), Run>,
    children: HashMap<(String, String), Run>,
    queues: BTreeMap<String, Vec<(u64, QueueItem)>>,
    leases: HashMap<String, (LeaseInfo, bool)>,
    ticks: HashMap<(String, String), (u64, bool)>,
    values: BTreeMap<(String, String), String>,
    workers: BTreeMap<String, (String, jiff::Timestamp)>,
}

/// Runs, queues and shared state in memory; clones of an `Arc<MemStore>` share them.
pub struct MemStore {
    scratch: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("scratch", &self.scratch)
            .finish()
    }
}

fn missing(what: String) -> Error {
    Error::Io {
        path: PathBuf::from(what),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

impl MemStore {
    /// A store whose attempts keep their files under `scratch`.
    pub fn new(scratch: impl Into<PathBuf>) -> MemStore {
        MemStore {
            scratch: scratch.into(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new attempt's ids and directories (created on disk).
    fn new_attempt(&self, seq: u64, run_id: &str, root: &str) -> Result<Attempt> {
        let attempt_id = format!("{seq:06x}");
        let dir = self.scratch.join("attempts").join(&attempt_id);
        let log_dir = self.scratch.join("logs").join(&attempt_id);
        for d in [&dir, &log_dir] {
            std::fs::create_dir_all(d).map_err(|source| Error::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(Attempt {
            dir,
            log_dir,
            run_id: run_id.into(),
            attempt_id: attempt_id.into(),
            root_run_id: root.into(),
        })
    }
}

impl Run {
    /// The record shown for the run: its newest attempt that has one.
    fn shown(&self) -> Option<&RunRecord> {
        self.attempts.iter().rev().find_map(|s| s.record.as_ref())
    }
}

/// Finds the slot of `attempt` among every run.
fn slot_of<'a>(inner: &'a mut Inner, attempt: &Attempt) -> Option<&'a mut Slot> {
    inner
        .runs
        .values_mut()
        .chain(inner.children.values_mut())
        .flat_map(|r| r.attempts.iter_mut())
        .find(|s| s.attempt.attempt_id == attempt.attempt_id)
}

impl Store for MemStore {
    fn create_attempt(&self, dag: &str, run_id: &str, parent: Option<&Attempt>) -> Result<Attempt> {
        check_name(dag)?;
        check_name(run_id)?;
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let root = parent.map_or(run_id, |p| p.root_run_id.as_str());
        let attempt = self.new_attempt(seq, run_id, root)?;
        let key = match parent {
            Some(p) => (p.attempt_id.to_string(), run_id.to_string()),
            None => (dag.to_string(), run_id.to_string()),
        };
        let runs = match parent {
            Some(_) => &mut inner.children,
            None => &mut inner.runs,
        };
        let run = runs.entry(key).or_insert_with(|| Run {
            seq,
            dag: dag.to_string(),
            attempts: Vec::new(),
        });
        run.attempts.push(Slot {
            attempt: attempt.clone(),
            record: None,
            entries: Vec::new(),
            definition: None,
        });
        Ok(attempt)
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> Result<()> {
        let mut inner = self.lock();
        let slot = slot_of(&mut inner, attempt)
            .ok_or_else(|| missing(format!("attempt {}", attempt.attempt_id)))?;
        slot.entries.push(entry.clone());
        entry.clone().apply(&mut slot.record);
        Ok(())
    }

    fn may_wait(&self) -> bool {
        false
    }

    fn latest(&self, dag: &str) -> Result<Option<RunRecord>> {
        Ok(self.list(dag, 1)?.into_iter().next())
    }

    fn find(&self, dag: &str, run_id: &str) -> Result<Option<RunRecord>> {
        check_name(dag)?;
        check_name(run_id)?;
        let inner = self.lock();
        let run = inner.runs.get(&(dag.to_string(), run_id.to_string()));
        Ok(run.and_then(Run::shown).cloned())
    }

    fn retry_attempt(&self, dag: &str, run_id: &str) -> Result<Attempt> {
        check_name(dag)?;
        check_name(run_id)?;
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let key = (dag.to_string(), run_id.to_string());
        if !inner.runs.contains_key(&key) {
            return Err(missing(format!("run {run_id} of {dag}")));
        }
        let attempt = self.new_attempt(seq, run_id, run_id)?;
        if let Some(run) = inner.runs.get_mut(&key) {
            run.attempts.push(Slot {
                attempt: attempt.clone(),
                record: None,
                entries: Vec::new(),
                definition: None,
            });
        }
        Ok(attempt)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> Result<Option<Attempt>> {
        check_name(dag)?;
        check_name(run_id)?;
        let inner = self.lock();
        let run = inner.runs.get(&(dag.to_string(), run_id.to_string()));
        Ok(run
            .and_then(|r| r.attempts.last())
            .map(|s| s.attempt.clone()))
    }

    fn history(&self, dag: &str, run_id: &str) -> Result<Vec<(String, Entry)>> {
        check_name(dag)?;
        check_name(run_id)?;
        let inner = self.lock();
        let Some(run) = inner.runs.get(&(dag.to_string(), run_id.to_string())) else {
            return Ok(Vec::new());
        };
        // Attempts are kept oldest first, and each one's entries as they were appended.
        Ok(run
            .attempts
            .iter()
            .flat_map(|s| {
                let id = s.attempt.attempt_id.as_str();
                s.entries.iter().map(move |e| (id.to_string(), e.clone()))
            })
            .collect())
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> Result<()> {
        let mut inner = self.lock();
        let slot = slot_of(&mut inner, attempt)
            .ok_or_else(|| missing(format!("attempt {}", attempt.attempt_id)))?;
        slot.definition = Some(dag.clone());
        Ok(())
    }

    fn find_child(&self, parent: &Attempt, run_id: &str) -> Result<Option<RunRecord>> {
        check_name(run_id)?;
        let inner = self.lock();
        let key = (parent.attempt_id.to_string(), run_id.to_string());
        Ok(inner.children.get(&key).and_then(Run::shown).cloned())
    }

    fn definition(&self, dag: &str, run_id: &str) -> Result<Option<Dag>> {
        check_name(dag)?;
        check_name(run_id)?;
        let inner = self.lock();
        let run = inner.runs.get(&(dag.to_string(), run_id.to_string()));
        Ok(run.and_then(|r| r.attempts.iter().rev().find_map(|s| s.definition.clone())))
    }

    fn list(&self, dag: &str, limit: usize) -> Result<Vec<RunRecord>> {
        check_name(dag)?;
        let inner = self.lock();
        let mut runs: Vec<&Run> = inner.runs.values().filter(|r| r.dag == dag).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        Ok(runs
            .into_iter()
            .filter_map(Run::shown)
            .take(limit)
            .cloned()
            .collect())
    }

    fn page(
        &self,
        dag: Option<&str>,
        keep: crate::Keep<'_>,
        offset: usize,
        limit: usize,
    ) -> Result<crate::Page> {
        let inner = self.lock();
        let mut runs: Vec<&Run> = inner
            .runs
            .values()
            .filter(|r| dag.is_none_or(|d| r.dag == d))
            .collect();
        // Newest first by creation, as the other backends order by their run ids' time.
        runs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        let kept: Vec<&RunRecord> = runs
            .into_iter()
            .filter_map(Run::shown)
            .filter(|r| keep.is_none_or(|k| k(r)))
            .collect();
        let total = kept.len();
        Ok(crate::Page {
            runs: kept.into_iter().skip(offset).take(limit).cloned().collect(),
            total: Some(total),
            has_more: total > offset.saturating_add(limit),
        })
    }

    fn dag_names(&self) -> Result<Vec<String>> {
        let inner = self.lock();
        let mut names: Vec<String> = inner.runs.values().map(|r| r.dag.clone()).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove(&self, dag: &str, run_id: &str) -> Result<()> {
        check_name(dag)?;
        check_name(run_id)?;
        let mut inner = self.lock();
        let run = inner
            .runs
            .remove(&(dag.to_string(), run_id.to_string()))
            .ok_or_else(|| missing(format!("run {run_id} of {dag}")))?;
        for slot in run.attempts {
            let _ = std::fs::remove_dir_all(&slot.attempt.dir);
            let _ = std::fs::remove_dir_all(&slot.attempt.log_dir);
            inner
                .children
                .retain(|(parent, _), _| *parent != slot.attempt.attempt_id);
        }
        Ok(())
    }
}

impl Queue for MemStore {
    fn enqueue(&self, item: &QueueItem) -> Result<()> {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let queue = inner.queues.entry(item.queue.clone()).or_default();
        // As the other backends: an item already waiting keeps its place and fields.
        if !queue.iter().any(|(_, i)| i.run_id == item.run_id) {
            queue.push((seq, item.clone()));
        }
        Ok(())
    }

    fn items(&self, queue: &str) -> Result<Vec<QueueItem>> {
        let inner = self.lock();
        let mut items = inner.queues.get(queue).cloned().unwrap_or_default();
        items.sort_by(|(a_seq, a), (b_seq, b)| b.priority.cmp(&a.priority).then(a_seq.cmp(b_seq)));
        Ok(items.into_iter().map(|(_, i)| i).collect())
    }

    fn remove_item(&self, queue: &str, run_id: &str) -> Result<bool> {
        let mut inner = self.lock();
        let Some(items) = inner.queues.get_mut(queue) else {
            return Ok(false);
        };
        let before = items.len();
        items.retain(|(_, i)| i.run_id != run_id);
        let removed = items.len() < before;
        if items.is_empty() {
            inner.queues.remove(queue);
        }
        Ok(removed)
    }

    fn set_priority(&self, queue: &str, run_id: &str, priority: i32) -> Result<Option<QueueItem>> {
        let mut inner = self.lock();
        let item = inner
            .queues
            .get_mut(queue)
            .and_then(|items| items.iter_mut().find(|(_, i)| i.run_id == run_id));
        Ok(item.map(|(_, i)| {
            i.priority = priority;
            i.clone()
        }))
    }

    fn take(&self, lead: u64, queue: &str, run_id: &str) -> Result<bool> {
        self.fence(lead)?;
        self.remove_item(queue, run_id)
    }

    fn queues(&self) -> Result<Vec<String>> {
        Ok(self.lock().queues.keys().cloned().collect())
    }
}

impl MemStore {
    /// Refuses a leader write from a lead that has passed on.
    fn fence(&self, lead: u64) -> Result<()> {
        let inner = self.lock();
        let current = inner.leases.get(SCHEDULER);
        if current.is_some_and(|(i, held)| *held && i.token == lead) {
            Ok(())
        } else {
            Err(Error::Fenced(lead))
        }
    }
}

impl State for MemStore {
    fn acquire_lease(&self, name: &str, holder: &str) -> Result<Option<Lead>> {
        let mut inner = self.lock();
        let previous = inner.leases.get(name).cloned();
        if previous.as_ref().is_some_and(|(_, held)| *held) {
            return Ok(None);
        }
        let info = LeaseInfo {
            token: previous.as_ref().map_or(0, |(i, _)| i.token) + 1,
            holder: holder.to_string(),
            pid: std::process::id(),
            since: jiff::Timestamp::now().to_string(),
            host: crate::hostname().to_string(),
        };
        inner.leases.insert(name.to_string(), (info.clone(), true));
        Ok(Some(Lead {
            name: name.to_string(),
            info,
            previous: previous.map(|(i, _)| i),
            guard: None,
        }))
    }

    fn renew_lease(&self, lead: &Lead) -> Result<bool> {
        let inner = self.lock();
        Ok(inner
            .leases
            .get(&lead.name)
            .is_some_and(|(i, held)| *held && i.token == lead.info.token))
    }

    fn release_lease(&self, lead: Lead) {
        let mut inner = self.lock();
        if let Some((info, held)) = inner.leases.get_mut(&lead.name)
            && info.token == lead.info.token
        {
            *held = false;
        }
    }

    fn lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        Ok(self.lock().leases.get(name).map(|(i, _)| i.clone()))
    }

    fn values(&self, scope: &str) -> Result<Vec<(String, String)>> {
        let inner = self.lock();
        Ok(inner
            .values
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect())
    }

    fn put_worker(&self, id: &str, info: &str) -> Result<()> {
        let now = jiff::Timestamp::now();
        let mut inner = self.lock();
        inner
            .workers
            .insert(id.to_string(), (info.to_string(), now));
        Ok(())
    }

    fn workers(&self) -> Result<Vec<String>> {
        let since = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10);
        let inner = self.lock();
        Ok(inner
            .workers
            .values()
            .filter(|(_, at)| *at >= since)
            .map(|(info, _)| info.clone())
            .collect())
    }

    fn claim_tick(&self, lead: u64, dag: &str, at: &str) -> Result<bool> {
        self.fence(lead)?;
        let mut inner = self.lock();
        let key = (dag.to_string(), at.to_string());
        match inner.ticks.get(&key) {
            // A repeated claim by the same lead (a retry after a lost reply) still fires.
            Some((by, _)) => Ok(*by == lead),
            None => {
                inner.ticks.insert(key, (lead, false));
                Ok(true)
            }
        }
    }

    fn mark_tick_skipped(&self, dag: &str, at: &str) -> Result<()> {
        let mut inner = self.lock();
        // Only a claimed tick can be marked, as in the other backends.
        if let Some(tick) = inner.ticks.get_mut(&(dag.to_string(), at.to_string())) {
            tick.1 = true;
        }
        Ok(())
    }

    fn tick_skipped(&self, dag: &str, at: &str) -> Result<bool> {
        let inner = self.lock();
        let key = (dag.to_string(), at.to_string());
        Ok(inner.ticks.get(&key).is_some_and(|(_, skipped)| *skipped))
    }

    fn last_tick(&self, dag: &str) -> Result<Option<String>> {
        let inner = self.lock();
        Ok(inner
            .ticks
            .keys()
            .filter(|(d, _)| d == dag)
            .map(|(_, at)| at.clone())
            .max())
    }

    fn get(&self, scope: &str, name: &str) -> Result<Option<String>> {
        let key = (scope.to_string(), name.to_string());
        Ok(self.lock().values.get(&key).cloned())
    }

    fn put(&self, scope: &str, name: &str, value: Option<&str>) -> Result<()> {
        let key = (scope.to_string(), name.to_string());
        let mut inner = self.lock();
        match value {
            Some(v) => inner.values.insert(key, v.to_string()),
            None => inner.values.remove(&key),
        };
        Ok(())
    }

    fn swap(
        &self,
        scope: &str,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        let key = (scope.to_string(), name.to_string());
        let mut inner = self.lock();
        if inner.values.get(&key).map(String::as_str) != expected {
            return Ok(false);
        }
        match new {
            Some(v) => inner.values.insert(key, v.to_string()),
            None => inner.values.remove(&key),
        };
        Ok(true)
    }

    fn values_with_prefix(&self, scope: &str, prefix: &str) -> Result<Vec<(String, String)>> {
        let inner = self.lock();
        let from = (scope.to_string(), prefix.to_string());
        Ok(inner
            .values
            .range(from..)
            .take_while(|((s, n), _)| s == scope && n.starts_with(prefix))
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect())
    }
}

impl Backend for MemStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn probe(&self) -> Result<()> {
        Ok(())
    }
}
