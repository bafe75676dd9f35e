//! The queue decision: which queued runs may start now, given the runs already running and
//! the concurrency limits, with the semantics of Dagster's `QueuedRunCoordinator`.
//!
//! The whole rule lives here so the scheduler only moves runs between "queued" and
//! "running" and never re-derives a limit. Candidates are walked once, in priority order
//! (higher first) and FIFO within a priority; each starts when every limit that applies to
//! it still has room, counting the runs already running and those picked earlier in the
//! same pass. A blocked run does not hold back later runs that fit (Dagster skips it too),
//! so one full tag bucket never stalls unrelated work.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A concurrency limit on runs carrying a tag (one `tag_concurrency_limits` entry).
///
/// - `key` only: one limit shared by every run that has the key, whatever its value.
/// - `key` + `value`: only runs whose tag `key` equals `value` count.
/// - `per_unique_value`: a separate limit for each distinct value of `key`, a run counting
///   against its own value's bucket; `value` is then ignored, as Dagster's
///   `value: {applyLimitPerUniqueValue: true}` has no value either.
///
/// A limit of 0 blocks every matching run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TagLimit {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub limit: usize,
    #[serde(default)]
    pub per_unique_value: bool,
}

impl TagLimit {
    /// The bucket a run with these tags counts in, or `None` when the limit does not apply
    /// to it. Shared limits have a single bucket, `""`.
    fn bucket<'a>(&self, tags: &'a IndexMap<String, String>) -> Option<&'a str> {
        let value = tags.get(&self.key)?;
        match &self.value {
            _ if self.per_unique_value => Some(value),
            Some(want) if want != value => None,
            _ => Some(""),
        }
    }

    /// How messages name this limit (for `bucket`, as returned by [`TagLimit::bucket`]).
    fn label(&self, bucket: &str) -> String {
        match &self.value {
            _ if self.per_unique_value => format!("{}={bucket} (per unique value)", self.key),
            Some(value) => format!("{}={value}", self.key),
            None => format!("{} (any value)", self.key),
        }
    }
}

/// The concurrency limits the queue enforces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// None = unlimited (config -1).
    pub max_concurrent_runs: Option<usize>,
    pub tag_concurrency_limits: Vec<TagLimit>,
    /// Named queues' own max_concurrent_runs.
    pub queues: IndexMap<String, usize>,
}

/// The first limit a set of running runs goes over (see [`Limits::counts_ok`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("max_concurrent_runs {max} exceeded: {running} running")]
    MaxConcurrentRuns { max: usize, running: usize },
    #[error("queue {queue} limit {max} exceeded: {running} running")]
    Queue {
        queue: String,
        max: usize,
        running: usize,
    },
    #[error("DAG {dag} max_active_runs {max} exceeded: {running} running")]
    MaxActiveRuns {
        dag: String,
        max: usize,
        running: usize,
    },
    /// `label` names the limit as queue messages do (`team=ml (per unique value)`).
    #[error("tag limit {label} {limit} exceeded: {running} running")]
    Tag {
        label: String,
        limit: usize,
        running: usize,
    },
}

/// A run that is running (or starting): what limits count.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub dag: String,
    pub queue: String,
    pub tags: IndexMap<String, String>,
}

/// A queued run.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub slot: Slot,
    pub priority: i32,
    /// Arrival order (FIFO within a priority).
    pub seq: u64,
    /// The DAG's max_active_runs: None = unlimited.
    pub max_active_runs: Option<usize>,
}

/// Which candidates start now, in start order (indices into `candidates`), and for each
/// blocked one the reason, in the order they were considered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub start: Vec<usize>,
    pub blocked: Vec<(usize, String)>,
}

/// How many runs count against each limit, over a set of slots.
struct Counts<'a> {
    total: usize,
    dags: IndexMap<&'a str, usize>,
    queues: IndexMap<&'a str, usize>,
    /// Per entry of `Limits::tag_concurrency_limits` (same index), per bucket.
    tags: Vec<IndexMap<&'a str, usize>>,
}

impl<'a> Counts<'a> {
    fn of(limits: &Limits, slots: impl IntoIterator<Item = &'a Slot>) -> Self {
        let mut counts = Counts {
            total: 0,
            dags: IndexMap::new(),
            queues: IndexMap::new(),
            tags: vec![IndexMap::new(); limits.tag_concurrency_limits.len()],
        };
        for slot in slots {
            counts.add(limits, slot);
        }
        counts
    }

    fn add(&mut self, limits: &Limits, slot: &'a Slot) {
        self.total += 1;
        *self.dags.entry(&slot.dag).or_default() += 1;
        *self.queues.entry(&slot.queue).or_default() += 1;
        for (limit, buckets) in limits.tag_concurrency_limits.iter().zip(&mut self.tags) {
            if let Some(bucket) = limit.bucket(&slot.tags) {
                *buckets.entry(bucket).or_default() += 1;
            }
        }
    }
}

fn count(map: &IndexMap<&str, usize>, key: &str) -> usize {
    map.get(key).copied().unwrap_or(0)
}

/// Why one more run like `slot` would go over a limit, or `None` when every limit that
/// applies has room. The first full limit wins, broadest first, so the reason is stable.
fn blocker(
    limits: &Limits,
    counts: &Counts,
    slot: &Slot,
    max_active: Option<usize>,
) -> Option<String> {
    if let Some(max) = limits.max_concurrent_runs
        && counts.total >= max
    {
        return Some(format!("max_concurrent_runs {max} reached"));
    }
    if let Some(&max) = limits.queues.get(&slot.queue)
        && count(&counts.queues, &slot.queue) >= max
    {
        return Some(format!("queue {} limit {max} reached", slot.queue));
    }
    if let Some(max) = max_active
        && count(&counts.dags, &slot.dag) >= max
    {
        return Some(format!("DAG {} max_active_runs {max} reached", slot.dag));
    }
    for (limit, buckets) in limits.tag_concurrency_limits.iter().zip(&counts.tags) {
        if let Some(bucket) = limit.bucket(&slot.tags)
            && count(buckets, bucket) >= limit.limit
        {
            let label = limit.label(bucket);
            return Some(format!("tag limit {label} {} reached", limit.limit));
        }
    }
    None
}

/// The order candidates are considered in: priority (higher first), then arrival (`seq`,
/// lower first). Ties keep slice order, so the result is deterministic.
pub fn start_order(candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(candidates[i].priority), candidates[i].seq));
    order
}

/// Decides which queued runs start now. See the module docs for the rule.
pub fn decide(limits: &Limits, running: &[Slot], candidates: &[Candidate]) -> Decision {
    let mut counts = Counts::of(limits, running);
    let mut decision = Decision::default();
    for i in start_order(candidates) {
        let c = &candidates[i];
        match blocker(limits, &counts, &c.slot, c.max_active_runs) {
            None => {
                // Picked runs count against the limits of everything after them.
                counts.add(limits, &c.slot);
                decision.start.push(i);
            }
            Some(reason) => decision.blocked.push((i, reason)),
        }
    }
    decision
}

impl Limits {
    /// Checks that `running` goes over no limit; `max_active` gives a DAG's
    /// max_active_runs (None = unlimited). The error names the first limit exceeded.
    pub fn counts_ok(
        &self,
        running: &[Slot],
        max_active: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<(), Error> {
        let counts = Counts::of(self, running);
        if let Some(max) = self.max_concurrent_runs
            && counts.total > max
        {
            let running = counts.total;
            return Err(Error::MaxConcurrentRuns { max, running });
        }
        for (&queue, &running) in &counts.queues {
            match self.queues.get(queue) {
                Some(&max) if running > max => {
                    let queue = queue.to_string();
                    return Err(Error::Queue {
                        queue,
                        max,
                        running,
                    });
                }
                _ => {}
            }
        }
        for (&dag, &running) in &counts.dags {
            match max_active(dag) {
                Some(max) if running > max => {
                    let dag = dag.to_string();
                    return Err(Error::MaxActiveRuns { dag, max, running });
                }
                _ => {}
            }
        }
        for (limit, buckets) in self.tag_concurrency_limits.iter().zip(&counts.tags) {
            for (&bucket, &running) in buckets {
                if running > limit.limit {
                    let (label, limit) = (limit.label(bucket), limit.limit);
                    return Err(Error::Tag {
                        label,
                        limit,
                        running,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(dag: &str, queue: &str, tags: &[(&str, &str)]) -> Slot {
        Slot {
            dag: dag.into(),
            queue: queue.into(),
            tags: tags.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
        }
    }

    fn cand(slot: Slot, priority: i32, seq: u64) -> Candidate {
        Candidate {
            slot,
            priority,
            seq,
            max_active_runs: None,
        }
    }

    /// Candidates on DAG `d`, default queue, with the given tags, in arrival order.
    fn cands(tags: &[&[(&str, &str)]]) -> Vec<Candidate> {
        let each = tags.iter().enumerate();
        each.map(|(i, t)| cand(slot("d", "default", t), 0, i as u64))
            .collect()
    }

    fn tag_limit(key: &str, value: Option<&str>, limit: usize, per_unique_value: bool) -> TagLimit {
        TagLimit {
            key: key.into(),
            value: value.map(Into::into),
            limit,
            per_unique_value,
        }
    }

    fn with_tags(tags: Vec<TagLimit>) -> Limits {
        Limits {
            tag_concurrency_limits: tags,
            ..Limits::default()
        }
    }

    fn reasons(d: &Decision) -> Vec<&str> {
        d.blocked.iter().map(|(_, r)| r.as_str()).collect()
    }

    #[test]
    fn no_limits_start_everything_in_order() {
        let c = vec![
            cand(slot("a", "default", &[]), 0, 2),
            cand(slot("b", "default", &[]), 5, 9),
            cand(slot("c", "default", &[]), 0, 1),
        ];
        let d = decide(&Limits::default(), &[], &c);
        assert_eq!(d.start, vec![1, 2, 0]);
        assert!(d.blocked.is_empty());
    }

    #[test]
    fn global_limit_counts_running_and_picked() {
        let limits = Limits {
            max_concurrent_runs: Some(3),
            ..Limits::default()
        };
        let running = [slot("x", "default", &[])];
        let d = decide(&limits, &running, &cands(&[&[], &[], &[]]));
        assert_eq!(d.start, vec![0, 1]);
        assert_eq!(
            d.blocked,
            vec![(2, "max_concurrent_runs 3 reached".to_string())]
        );
        let none = Limits {
            max_concurrent_runs: Some(0),
            ..Limits::default()
        };
        assert!(decide(&none, &[], &cands(&[&[]])).start.is_empty());
    }

    #[test]
    fn dag_max_active_runs_counts_only_its_dag() {
        let mut c = vec![
            cand(slot("nightly", "default", &[]), 0, 0),
            cand(slot("nightly", "default", &[]), 0, 1),
            cand(slot("other", "default", &[]), 0, 2),
        ];
        c[0].max_active_runs = Some(1);
        c[1].max_active_runs = Some(1);
        c[2].max_active_runs = Some(1);
        let running = [slot("nightly", "default", &[])];
        let d = decide(&Limits::default(), &running, &c);
        assert_eq!(d.start, vec![2]);
        assert_eq!(
            reasons(&d),
            vec!["DAG nightly max_active_runs 1 reached"; 2]
        );
        // Without the running one, the first nightly run takes the only place.
        let d = decide(&Limits::default(), &[], &c);
        assert_eq!(d.start, vec![0, 2]);
        assert_eq!(d.blocked[0].0, 1);
    }

    #[test]
    fn named_queue_limit_applies_only_to_listed_queues() {
        let limits = Limits {
            queues: [("etl".to_string(), 1)].into_iter().collect(),
            ..Limits::default()
        };
        let c = vec![
            cand(slot("a", "etl", &[]), 0, 0),
            cand(slot("b", "etl", &[]), 0, 1),
            cand(slot("c", "adhoc", &[]), 0, 2),
            cand(slot("d", "adhoc", &[]), 0, 3),
        ];
        let d = decide(&limits, &[], &c);
        assert_eq!(d.start, vec![0, 2, 3]);
        assert_eq!(
            d.blocked,
            vec![(1, "queue etl limit 1 reached".to_string())]
        );
    }

    #[test]
    fn tag_key_only_is_one_shared_limit() {
        let limits = with_tags(vec![tag_limit("team", None, 2, false)]);
        let running = [slot("x", "default", &[("team", "data")])];
        let c = cands(&[
            &[("team", "ml")],
            &[("team", "web")],
            &[],
            &[("other", "1")],
        ]);
        let d = decide(&limits, &running, &c);
        assert_eq!(d.start, vec![0, 2, 3]);
        assert_eq!(reasons(&d), vec!["tag limit team (any value) 2 reached"]);
    }

    #[test]
    fn tag_key_and_value_counts_only_that_value() {
        let limits = with_tags(vec![tag_limit("team", Some("data"), 1, false)]);
        let running = [slot("x", "default", &[("team", "ml")])];
        let c = cands(&[&[("team", "data")], &[("team", "data")], &[("team", "ml")]]);
        let d = decide(&limits, &running, &c);
        assert_eq!(d.start, vec![0, 2]);
        assert_eq!(reasons(&d), vec!["tag limit team=data 1 reached"]);
    }

    #[test]
    fn tag_per_unique_value_has_a_bucket_per_value() {
        let limits = with_tags(vec![tag_limit("team", None, 1, true)]);
        let running = [slot("x", "default", &[("team", "data")])];
        let c = cands(&[
            &[("team", "data")],
            &[("team", "ml")],
            &[("team", "ml")],
            &[("team", "web")],
            &[],
        ]);
        let d = decide(&limits, &running, &c);
        assert_eq!(d.start, vec![1, 3, 4]);
        assert_eq!(
            reasons(&d),
            vec![
                "tag limit team=data (per unique value) 1 reached",
                "tag limit team=ml (per unique value) 1 reached",
            ]
        );
    }

    #[test]
    fn tag_limit_zero_blocks_matching_runs() {
        let limits = with_tags(vec![tag_limit("env", Some("prod"), 0, false)]);
        let c = cands(&[&[("env", "prod")], &[("env", "dev")]]);
        let d = decide(&limits, &[], &c);
        assert_eq!(d.start, vec![1]);
        assert_eq!(reasons(&d), vec!["tag limit env=prod 0 reached"]);
    }

    #[test]
    fn priority_first_then_fifo() {
        let limits = Limits {
            max_concurrent_runs: Some(2),
            ..Limits::default()
        };
        let c = vec![
            cand(slot("low", "default", &[]), -1, 0),
            cand(slot("late", "default", &[]), 0, 7),
            cand(slot("early", "default", &[]), 0, 3),
            cand(slot("high", "default", &[]), 10, 9),
        ];
        assert_eq!(start_order(&c), vec![3, 2, 1, 0]);
        let d = decide(&limits, &[], &c);
        assert_eq!(d.start, vec![3, 2]);
        assert_eq!(
            d.blocked.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![1, 0]
        );
    }

    #[test]
    fn blocked_run_does_not_hold_back_later_ones() {
        let limits = Limits {
            max_concurrent_runs: Some(5),
            tag_concurrency_limits: vec![tag_limit("gpu", None, 1, false)],
            queues: IndexMap::new(),
        };
        let running = [slot("train", "default", &[("gpu", "a100")])];
        let c = vec![
            cand(slot("train", "default", &[("gpu", "a100")]), 9, 0),
            cand(slot("report", "default", &[]), 0, 1),
        ];
        let d = decide(&limits, &running, &c);
        assert_eq!(d.start, vec![1]);
        assert_eq!(d.blocked[0].0, 0);
    }

    #[test]
    fn the_first_full_limit_names_the_reason() {
        let limits = Limits {
            max_concurrent_runs: Some(1),
            tag_concurrency_limits: vec![tag_limit("team", None, 0, false)],
            queues: IndexMap::new(),
        };
        let d = decide(&limits, &[], &cands(&[&[("team", "a")], &[("team", "a")]]));
        assert_eq!(
            reasons(&d),
            vec![
                "tag limit team (any value) 0 reached",
                "tag limit team (any value) 0 reached"
            ]
        );
    }

    #[test]
    fn counts_ok_names_the_limit_exceeded() {
        let limits = Limits {
            max_concurrent_runs: Some(3),
            tag_concurrency_limits: vec![tag_limit("team", None, 1, true)],
            queues: [("etl".to_string(), 1)].into_iter().collect(),
        };
        let none = |_: &str| None;
        let a = slot("a", "etl", &[("team", "data")]);
        let b = slot("b", "adhoc", &[("team", "ml")]);
        assert_eq!(limits.counts_ok(&[a.clone(), b.clone()], &none), Ok(()));
        // The messages are what `trellis` prints; compare them, not only the variants.
        let text = |r: Result<(), Error>| r.map_err(|e| e.to_string());
        assert_eq!(
            text(limits.counts_ok(&[a.clone(), a.clone()], &none)),
            Err("queue etl limit 1 exceeded: 2 running".into())
        );
        let c = slot("c", "adhoc", &[("team", "ml")]);
        assert_eq!(
            text(limits.counts_ok(&[a.clone(), b.clone(), c], &none)),
            Err("tag limit team=ml (per unique value) 1 exceeded: 2 running".into())
        );
        let one = |d: &str| (d == "b").then_some(1);
        assert_eq!(
            text(limits.counts_ok(&[b.clone(), slot("b", "x", &[])], &one)),
            Err("DAG b max_active_runs 1 exceeded: 2 running".into())
        );
        let four = [
            slot("w", "x", &[]),
            slot("x", "x", &[]),
            slot("y", "x", &[]),
            b,
        ];
        assert_eq!(
            limits.counts_ok(&four, &none),
            Err(Error::MaxConcurrentRuns { max: 3, running: 4 })
        );
    }

    #[test]
    fn tag_limit_serde_defaults() {
        let t: TagLimit = serde_json::from_str(r#"{"key":"team","limit":2}"#).unwrap();
        assert_eq!(t, tag_limit("team", None, 2, false));
        let l: Limits = serde_json::from_str(
            r#"{"max_concurrent_runs":null,"tag_concurrency_limits":[],"queues":{"etl":1}}"#,
        )
        .unwrap();
        assert_eq!(l.queues.get("etl"), Some(&1));
    }

    // ---- property tests: a simulated queue over random limits and traffic ----

    const DAGS: [&str; 3] = ["a", "b", "c"];
    const QUEUES: [&str; 3] = ["default", "q1", "q2"];
    const KEYS: [&str; 2] = ["team", "env"];
    const VALUES: [&str; 3] = ["x", "y", "z"];

    /// Random limits plus each DAG's max_active_runs (indexed like `DAGS`).
    fn arb_limits() -> impl Strategy<Value = (Limits, Vec<Option<usize>>)> {
        let tag = (
            0..2usize,
            prop::option::of(0..3usize),
            0..3usize,
            any::<bool>(),
        )
            .prop_map(|(k, v, limit, per)| TagLimit {
                key: KEYS[k].into(),
                value: v.map(|v| VALUES[v].into()),
                limit,
                per_unique_value: per,
            });
        let queues = prop::collection::vec(prop::option::of(0..3usize), 2);
        (
            prop::option::of(0..5usize),
            prop::collection::vec(tag, 0..3),
            queues,
            prop::collection::vec(prop::option::of(0..3usize), DAGS.len()),
        )
            .prop_map(|(max, tags, queues, dags)| {
                let named = QUEUES[1..].iter().zip(queues);
                let limits = Limits {
                    max_concurrent_runs: max,
                    tag_concurrency_limits: tags,
                    queues: named
                        .filter_map(|(q, l)| Some((q.to_string(), l?)))
                        .collect(),
                };
                (limits, dags)
            })
    }

    /// One arrival: DAG, queue, a value (or none) for each tag key, priority.
    type Arrival = (usize, usize, Vec<Option<usize>>, i32);
    /// One step: arrivals, then which running runs finish (by position).
    type Step = (Vec<Arrival>, Vec<bool>);

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let tags = prop::collection::vec(prop::option::of(0..3usize), KEYS.len());
        let arrival = (0..DAGS.len(), 0..QUEUES.len(), tags, -1..=1i32);
        let step = (
            prop::collection::vec(arrival, 0..4),
            prop::collection::vec(any::<bool>(), 0..8),
        );
        prop::collection::vec(step, 1..25)
    }

    /// `Limits::counts_ok` restated from the Dagster rules, sharing none of its code.
    fn naive_ok(
        limits: &Limits,
        slots: &[Slot],
        max_active: &dyn Fn(&str) -> Option<usize>,
    ) -> bool {
        let n = |f: &dyn Fn(&Slot) -> bool| slots.iter().filter(|o| f(o)).count();
        let global = limits.max_concurrent_runs.is_none_or(|m| slots.len() <= m);
        global
            && slots.iter().all(|s| {
                let queue = limits.queues.get(&s.queue);
                queue.is_none_or(|&m| n(&|o| o.queue == s.queue) <= m)
                    && max_active(&s.dag).is_none_or(|m| n(&|o| o.dag == s.dag) <= m)
                    && limits.tag_concurrency_limits.iter().all(|t| {
                        let Some(v) = s.tags.get(&t.key) else {
                            return true;
                        };
                        let used = if t.per_unique_value {
                            n(&|o| o.tags.get(&t.key) == Some(v))
                        } else if let Some(want) = &t.value {
                            if v != want {
                                return true;
                            }
                            n(&|o| o.tags.get(&t.key) == Some(want))
                        } else {
                            n(&|o| o.tags.contains_key(&t.key))
                        };
                        used <= t.limit
                    })
            })
    }

    /// Checks one decision against the rule, replayed with `counts_ok` as the oracle.
    fn check_decision(
        limits: &Limits,
        running: &[Slot],
        queue: &[Candidate],
        d: &Decision,
        max_active: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<(), TestCaseError> {
        let order = start_order(queue);
        let mut seen: Vec<usize> = d
            .start
            .iter()
            .chain(d.blocked.iter().map(|b| &b.0))
            .copied()
            .collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..queue.len()).collect::<Vec<_>>());
        let mut picked = running.to_vec();
        let (mut starts, mut blocks) = (d.start.iter(), d.blocked.iter());
        for &i in &order {
            picked.push(queue[i].slot.clone());
            let fits = limits.counts_ok(&picked, max_active).is_ok();
            prop_assert_eq!(fits, naive_ok(limits, &picked, max_active));
            if fits {
                // Started, and in walk order.
                prop_assert_eq!(starts.next(), Some(&i));
            } else {
                picked.pop();
                let (b, reason) = blocks.next().expect("blocked");
                prop_assert_eq!(*b, i);
                prop_assert!(reason.ends_with(" reached"), "{}", reason);
            }
        }
        // FIFO: no run starts after an identical earlier one was blocked.
        for (bi, &(b, _)) in d.blocked.iter().enumerate() {
            let later = d.start.iter().filter(|&&s| {
                order.iter().position(|&o| o == s) > order.iter().position(|&o| o == b)
            });
            for &s in later {
                prop_assert!(
                    queue[s].slot != queue[b].slot
                        || queue[s].max_active_runs != queue[b].max_active_runs,
                    "blocked #{}",
                    bi
                );
            }
        }
        // Progress: an idle system starts something whenever some run fits on its own.
        let fits_alone = |c: &Candidate| {
            limits
                .counts_ok(std::slice::from_ref(&c.slot), max_active)
                .is_ok()
        };
        if running.is_empty() && queue.iter().any(fits_alone) {
            prop_assert!(!d.start.is_empty());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn simulated_queue_never_exceeds_limits((limits, dag_max) in arb_limits(), steps in arb_steps()) {
            let max_active = |d: &str| dag_max[DAGS.iter().position(|&x| x == d).unwrap()];
            let (mut running, mut queue, mut seq) = (Vec::<Slot>::new(), Vec::<Candidate>::new(), 0u64);
            for (arrivals, finish) in steps {
                for (dag, q, values, priority) in arrivals {
                    let tags: Vec<(&str, &str)> = KEYS.iter().zip(values)
                        .filter_map(|(&k, v)| Some((k, VALUES[v?]))).collect();
                    let mut c = cand(slot(DAGS[dag], QUEUES[q], &tags), priority, seq);
                    c.max_active_runs = dag_max[dag];
                    queue.push(c);
                    seq += 1;
                }
                let d = decide(&limits, &running, &queue);
                check_decision(&limits, &running, &queue, &d, &max_active)?;
                running.extend(d.start.iter().map(|&i| queue[i].slot.clone()));
                let mut started = d.start.clone();
                started.sort_unstable();
                for i in started.into_iter().rev() { queue.remove(i); }
                prop_assert_eq!(limits.counts_ok(&running, &max_active), Ok(()));
                prop_assert!(naive_ok(&limits, &running, &max_active));
                let mut finishing = finish.into_iter();
                running.retain(|_| !finishing.next().unwrap_or(false));
            }
        }
    }
}
