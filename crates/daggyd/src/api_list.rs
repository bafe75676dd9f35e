//! Listing runs: a summary per run from its folded record (not its whole history), and
//! DaggyR's filters (`tags`, `states`, `start_time`, `end_time`).

use indexmap::IndexMap;

use crate::book::Entry;
use crate::daemon::Daemon;
use crate::record::State;

/// One line of a run list.
pub struct Summary {
    pub run: u64,
    pub dag: String,
    pub tags: IndexMap<String, String>,
    pub state: State,
    pub started: String,
    pub updated: String,
    pub task_counts: IndexMap<&'static str, usize>,
}

impl Daemon {
    pub async fn summary(&self, entry: &Entry) -> Result<Summary, crate::Error> {
        if let Some(run) = self.record(entry).await? {
            let mut counts = IndexMap::new();
            for step in &run.steps {
                *counts.entry(State::of(step.status).as_str()).or_insert(0) += 1;
            }
            let started = run.queued_at.or(run.started_at).map(|s| s.0.to_string());
            let last = run.finished_at.or(run.started_at).or(run.queued_at);
            let tags = self.tags(entry).await?;
            return Ok(Summary {
                run: entry.run,
                dag: entry.dag.clone(),
                tags,
                state: self.seen_state(entry.run, &run),
                started: started.unwrap_or_default(),
                updated: last.map(|s| s.0.to_string()).unwrap_or_default(),
                task_counts: counts,
            });
        }
        // Not in this store: what the Redis logger remembers, if anything.
        let shown = self.show(entry.run).await?;
        Ok(match shown {
            Some(s) => Summary {
                run: entry.run,
                dag: entry.dag.clone(),
                tags: s.story.tags.clone(),
                state: s.state(),
                task_counts: s.task_counts(),
                started: s.started,
                updated: s.updated,
            },
            None => Summary {
                run: entry.run,
                dag: entry.dag.clone(),
                tags: IndexMap::new(),
                state: State::Errored,
                started: String::new(),
                updated: String::new(),
                task_counts: IndexMap::new(),
            },
        })
    }

    async fn tags(&self, entry: &Entry) -> Result<IndexMap<String, String>, crate::Error> {
        let (store, e) = (self.store.clone(), entry.clone());
        let dag = crate::blocking(move || Ok(store.definition(&e.dag, &e.run_id)?)).await?;
        Ok(dag.map(|d| d.labels).unwrap_or_default())
    }
}

/// What a list keeps.
#[derive(Default)]
pub struct Filter {
    tags: Vec<(String, String)>,
    states: Vec<State>,
    from: Option<jiff::Timestamp>,
    to: Option<jiff::Timestamp>,
}

impl Filter {
    /// `tags=k:v,k2:v2` (or `k=v`), `states=Running,Completed`, times in RFC 3339.
    pub fn parse(
        tags: Option<&str>,
        states: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for pair in tags.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once(':')
                .or_else(|| pair.split_once('='))
                .ok_or_else(|| format!("tag filter `{pair}` is not key:value"))?;
            filter.tags.push((k.to_string(), v.to_string()));
        }
        for name in states.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            filter
                .states
                .push(State::parse(name.trim()).ok_or_else(|| format!("`{name}` is not a state"))?);
        }
        let time = |t: Option<&str>| -> Result<Option<jiff::Timestamp>, String> {
            t.map(|t| {
                t.parse()
                    .map_err(|e| format!("`{t}` is not an RFC 3339 time: {e}"))
            })
            .transpose()
        };
        filter.from = time(from)?;
        filter.to = time(to)?;
        Ok(filter)
    }

    pub fn keeps(&self, s: &Summary) -> bool {
        let tags = self
            .tags
            .iter()
            .all(|(k, v)| s.tags.get(k).is_some_and(|x| x == v));
        let state = self.states.is_empty() || self.states.contains(&s.state);
        let started: Option<jiff::Timestamp> = s.started.parse().ok();
        let from = self.from.is_none_or(|f| started.is_some_and(|t| t >= f));
        let to = self.to.is_none_or(|e| started.is_some_and(|t| t <= e));
        tags && state && from && to
    }
}
