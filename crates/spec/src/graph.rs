//! Linking steps into a graph: names, `depends`, chain order, router targets and cycles,
//! reported with the spans of the steps involved.

use std::collections::HashMap;

use trellis_core::graph::Graph;
use trellis_core::{Action, Dag, DagType};

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::yaml::Span;

/// Where a decoded step came from, for diagnostics that concern several steps.
#[derive(Clone, Debug)]
pub struct StepMeta {
    pub span: Span,
    pub name_span: Span,
    /// `depends` entries as written.
    pub depends: Vec<(String, Span)>,
    /// Where `depends` is given (even as `[]`): in a chain, such a step does not also
    /// wait for the step before it (Dagu 1.x).
    pub explicit: Option<Span>,
    /// Index of the top-level `steps` item (a nested list shares one index).
    pub group: usize,
}

/// Resolves every dependency into `Step::depends` (by step name) and checks the graph.
pub fn link(cx: &mut Cx, dag: &mut Dag, metas: &[StepMeta]) {
    let index = names(cx, dag, metas);
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (i, meta) in metas.iter().enumerate() {
        for (dep, span) in &meta.depends {
            match index.get(dep.as_str()) {
                Some(&j) => edges.push((j, i)),
                None => cx.push(unknown_step(dag, dep, *span, "depends on")),
            }
        }
    }
    if dag.dag_type == DagType::Chain {
        chain_edges(metas, &mut edges);
    }
    router_edges(cx, dag, metas, &index, &mut edges);
    let graph = Graph::new(dag.steps.len(), edges);
    for cycle in graph.cycles() {
        cx.push(cycle_problem(dag, metas, &cycle));
    }
    let names: Vec<String> = dag.steps.iter().map(|s| s.name.clone()).collect();
    for (i, step) in dag.steps.iter_mut().enumerate() {
        step.depends = graph.deps[i].iter().map(|&d| names[d].clone()).collect();
    }
}

/// Maps names and ids to step indices, reporting duplicates.
fn names<'d>(cx: &mut Cx, dag: &'d Dag, metas: &[StepMeta]) -> HashMap<&'d str, usize> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in dag.steps.iter().enumerate() {
        if let Some(&first) = index.get(step.name.as_str())
            && dag.steps[first].name == step.name
        {
            cx.push(
                Problem::error(
                    Code::DuplicateStep,
                    metas[i].name_span,
                    format!("duplicate step name `{}`", step.name),
                )
                .related(metas[first].name_span, "first used here")
                .help("step names must be unique within a DAG"),
            );
            continue;
        }
        index.insert(&step.name, i);
    }
    for (i, step) in dag.steps.iter().enumerate() {
        if let Some(id) = &step.id {
            index.entry(id.as_str()).or_insert(i);
        }
    }
    index
}

fn unknown_step(dag: &Dag, name: &str, span: Span, what: &str) -> Problem {
    let problem = Problem::error(
        Code::UnknownDependency,
        span,
        format!("{what} unknown step `{name}`"),
    )
    .label("no step has this name or id");
    let best = dag
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .max_by(|a, b| strsim::jaro_winkler(name, a).total_cmp(&strsim::jaro_winkler(name, b)));
    match best {
        Some(best) if strsim::jaro_winkler(name, best) >= 0.8 => {
            problem.help(format!("did you mean `{best}`?"))
        }
        _ => {
            let all: Vec<&str> = dag.steps.iter().take(12).map(|s| s.name.as_str()).collect();
            let more = if dag.steps.len() > 12 { ", ..." } else { "" };
            problem.help(format!("steps in this DAG: {}{more}", all.join(", ")))
        }
    }
}

/// In a chain, every step of a top-level item depends on every step of the item before,
/// unless it gives its own `depends`: Dagu 1.17–1.21 let those replace the implicit edge
/// (and `depends: []` opt out of it); the step after still chains to it.
fn chain_edges(metas: &[StepMeta], edges: &mut Vec<(usize, usize)>) {
    let mut previous: Vec<usize> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut group = None;
    for (i, meta) in metas.iter().enumerate() {
        if group != Some(meta.group) {
            if !current.is_empty() {
                previous = std::mem::take(&mut current);
            }
            group = Some(meta.group);
        }
        if meta.explicit.is_none() {
            edges.extend(previous.iter().map(|&p| (p, i)));
        }
        current.push(i);
    }
}

/// Steps a router targets run after it; untargeted routes are skipped at run time.
fn router_edges(
    cx: &mut Cx,
    dag: &Dag,
    metas: &[StepMeta],
    index: &HashMap<&str, usize>,
    edges: &mut Vec<(usize, usize)>,
) {
    for (i, step) in dag.steps.iter().enumerate() {
        let Action::Router { routes, .. } = &step.action else {
            continue;
        };
        for route in routes {
            if let Err(e) = route.pattern.check() {
                cx.push(Problem::error(
                    Code::InvalidValue,
                    metas[i].span,
                    format!("route `{}` is not a valid regex: {e}", route.pattern),
                ));
            }
            for target in &route.targets {
                match index.get(target.as_str()) {
                    Some(&t) => edges.push((i, t)),
                    None => cx.push(unknown_step(dag, target, metas[i].span, "router routes to")),
                }
            }
        }
    }
}

fn cycle_problem(dag: &Dag, metas: &[StepMeta], cycle: &[usize]) -> Problem {
    if let [only] = cycle {
        let step = &dag.steps[*only];
        let meta = &metas[*only];
        let own = |d: &str| d == step.name || step.id.as_deref() == Some(d);
        let Some((_, span)) = meta.depends.iter().find(|(d, _)| own(d)) else {
            return Problem::error(
                Code::Cycle,
                meta.name_span,
                format!("step `{}` routes to itself", step.name),
            )
            .label("on the cycle")
            .help("a router cannot list itself as a target");
        };
        return Problem::error(
            Code::Cycle,
            *span,
            format!("step `{}` depends on itself", step.name),
        )
        .label("a step cannot wait for itself")
        .related(meta.name_span, "the step")
        .help("remove this entry from `depends`");
    }
    let names: Vec<String> = cycle
        .iter()
        .map(|&i| format!("`{}`", dag.steps[i].name))
        .collect();
    let first = cycle[0];
    let mut problem = Problem::error(
        Code::Cycle,
        metas[first].name_span,
        format!("dependency cycle between {}", names.join(", ")),
    )
    .label("on the cycle")
    .help("remove one of these `depends` so that the steps can be ordered");
    for &i in &cycle[1..] {
        problem = problem.related(metas[i].name_span, "on the cycle");
    }
    problem
}
