//! Dependency bookkeeping for the run loop: unsettled-dependency counts and the ready queue.

use std::collections::HashMap;

use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status};

/// Dependency bookkeeping for the run loop.
pub(crate) struct Links {
    pub(crate) index: HashMap<String, usize>,
    pub(crate) dependents: Vec<Vec<usize>>,
    pub(crate) remaining: Vec<usize>,
    pub(crate) ready: std::collections::VecDeque<usize>,
}

impl Links {
    pub(crate) fn new(dag: &Dag, run: &RunRecord) -> Links {
        let index: HashMap<String, usize> = dag
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut links = Links {
            dependents: vec![Vec::new(); dag.steps.len()],
            remaining: vec![0; dag.steps.len()],
            ready: Default::default(),
            index,
        };
        for (i, step) in dag.steps.iter().enumerate() {
            for dep in &step.depends {
                if let Some(&d) = links.index.get(dep) {
                    links.dependents[d].push(i);
                    if run.steps[d].status == Status::NotStarted
                        || run.steps[d].status == Status::Running
                    {
                        links.remaining[i] += 1;
                    }
                }
            }
        }
        links.ready = (0..dag.steps.len())
            .filter(|&i| links.remaining[i] == 0)
            .collect();
        links
    }

    /// After steps were added: recount, keeping steps already queued.
    pub(crate) fn rebuild(dag: &Dag, run: &RunRecord, old: &Links) -> Links {
        let mut links = Links::new(dag, run);
        links
            .ready
            .retain(|i| *i >= old.remaining.len() || old.ready.contains(i));
        links
    }

    pub(crate) fn settled(&mut self, i: usize) {
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            self.remaining[d] = self.remaining[d].saturating_sub(1);
            if self.remaining[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }
}

/// `max_active_steps`, capped so a huge fan-out cannot exhaust file descriptors: each
/// running step holds a few (log files, pipes), so allow a quarter of the soft limit.
pub(crate) fn step_limit(max_active_steps: Option<u32>) -> usize {
    let configured = max_active_steps
        .filter(|m| *m > 0)
        .map_or(usize::MAX, |m| m as usize);
    let fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    configured.min((fds / 4).max(8) as usize)
}
