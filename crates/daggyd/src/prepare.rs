//! A posted run spec → the DAG this daemon runs: loaded by the spec crate (every problem
//! with its task and place), then fitted to the daemon's executor.

use serde::Serialize;
use serde_json::Value;
use trellis_core::{Action, Dag, ExecutorConfig};

use crate::config::Executor;

/// What is wrong with a spec: one entry per problem, with where it is.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub message: String,
    /// 1-based, in the posted body.
    pub line: usize,
    pub column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Problem {
    /// A loader's problem, placed in the posted text.
    fn at(p: &trellis_spec::diag::Problem, text: &str) -> Problem {
        let (line, column) = p.line_col(text);
        Problem {
            message: p.message.clone(),
            line,
            column,
            help: p.help.clone(),
        }
    }

    fn whole(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            line: 1,
            column: 1,
            help: None,
        }
    }
}

/// A spec this daemon can run: the DAG, and the spec's tags and JSON for the logger.
pub struct Prepared {
    pub dag: Dag,
    pub tags: indexmap::IndexMap<String, String>,
    pub spec: Value,
    /// What the spec says that Trellis reads but does not act on (e.g. `jwt_token`).
    pub warnings: Vec<Problem>,
}

/// Loads `text` (a Daggy run spec) and fits it to `executor`; every problem, or the DAG.
/// `default_name` names the DAG when the spec does not.
pub fn prepare(
    text: &str,
    default_name: &str,
    executor: &Executor,
) -> Result<Prepared, Vec<Problem>> {
    let spec: Value = serde_json::from_str(text).map_err(|e| {
        vec![Problem {
            message: format!("the body is not JSON: {e}"),
            line: e.line(),
            // serde_json says column 0 when the text ends at the start of a line (an empty
            // body, or `{` and a newline); the problem is 1-based.
            column: e.column().max(1),
            help: None,
        }]
    })?;
    if spec.get("tasks").is_none() {
        return Err(vec![Problem::whole(
            "a Daggy run spec is a JSON object with `tasks` (task id → task)",
        )]);
    }
    let loaded = trellis_spec::load_str(&format!("{default_name}.json"), text).map_err(|ps| {
        ps.iter()
            .filter(|p| !p.warning)
            .map(|p| Problem::at(p, text))
            .collect::<Vec<_>>()
    })?;
    let warnings = loaded
        .warnings
        .iter()
        .map(|p| Problem::at(p, text))
        .collect();
    let mut dag = loaded.dag;
    fit(&mut dag, executor).map_err(|m| m.into_iter().map(Problem::whole).collect::<Vec<_>>())?;
    Ok(Prepared {
        tags: dag.labels.clone(),
        dag,
        spec,
        warnings,
    })
}

/// Makes every task run on `executor`; a task whose details are for another executor is
/// refused rather than run somewhere its author did not mean.
fn fit(dag: &mut Dag, executor: &Executor) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for step in &mut dag.steps {
        if matches!(step.action, Action::Noop) {
            continue; // the structural head and tail of an expanded task
        }
        let kind = step.executor.as_ref().map(|e| e.kind.clone());
        match (executor, kind.as_deref()) {
            (Executor::Forking { .. }, None) => {}
            (Executor::Forking { .. }, Some(other)) => problems.push(format!(
                "task `{}`: its details are for the {other} executor (e.g. `logdir`, `min_cpus`), \
                 but this daemon runs ForkingTaskExecutor; configure SlurmTaskExecutor or drop them",
                step.name
            )),
            (Executor::Slurm { defaults }, None | Some("slurm")) => {
                let mut with = defaults.clone();
                if let Some(Value::Object(own)) = step.executor.as_ref().map(|e| &e.config) {
                    with.extend(own.clone());
                }
                let with = Value::Object(with);
                if let Err(e) = trellis_executor::slurm_config::Config::parse(&with) {
                    problems.push(format!("task `{}`: {e}", step.name));
                }
                step.executor = Some(Box::new(ExecutorConfig {
                    kind: "slurm".into(),
                    config: with,
                }));
            }
            (Executor::Slurm { .. }, Some(other)) => problems.push(format!(
                "task `{}`: its details are for the {other} executor, but this daemon runs SlurmTaskExecutor",
                step.name
            )),
            (Executor::Noop, _) => {
                step.action = Action::Noop;
                step.executor = None;
                // A dry run prints nothing, so a generator adds no tasks.
                step.generator = false;
            }
        }
    }
    if let Executor::Forking { threads } = executor {
        let threads = u32::try_from(*threads).unwrap_or(u32::MAX);
        dag.max_active_steps = Some(dag.max_active_steps.map_or(threads, |n| n.min(threads)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (usize, usize) {
        let Err(problems) = prepare(text, "daggy", &Executor::Noop) else {
            panic!("{text:?} was accepted");
        };
        (problems[0].line, problems[0].column)
    }

    #[test]
    fn a_body_cut_short_at_a_line_start_is_column_1() {
        // Found by the daggyd_body fuzz target: serde_json says column 0 here.
        assert_eq!(at(""), (1, 1));
        assert_eq!(at("{\n"), (2, 1));
        assert_eq!(at("{\"tasks\": {\n  \"a\": }"), (2, 8));
    }
}
