//! Daggy JSON run specs (`{"tags", "parameters", "tasks": {id: {details|job, parents,
//! children, is_generator, max_retries, parameters}}}`) loaded into the Trellis model.
//!
//! Parameters expand as a cartesian product over the keys that occur in a task's command or
//! environment. A task that expands to several instances becomes a no-op head (keeping its
//! parents), the instances `id.K:V...`, and a no-op `id.tail` (keeping its children), as
//! daggyr does, so that edges into and out of it stay correct.

use indexmap::IndexMap;
use trellis_core::{Action, Dag, DagType, RetryPolicy, Step};

use crate::decode::{Cx, field};
use crate::diag::{Code, Problem};
use crate::yaml::{Node, Value};

static RUN: &[crate::decode::Field] = &[
    field!("tags", [], r#"{"type":"object"}"#, "Run tags."),
    field!(
        "parameters",
        [],
        r#"{"type":"object"}"#,
        "Parameter name → value or list of values."
    ),
    field!("pool", [], r#"{"type":"string"}"#, "Executor pool."),
    field!("tasks", [], r#"{"type":"object"}"#, "Task id → task."),
    field!(
        "name",
        [],
        r#"{"type":"string"}"#,
        "Run name (Trellis extension)."
    ),
];

static TASK: &[crate::decode::Field] = &[
    field!(
        "details",
        ["job"],
        r#"{"type":"object"}"#,
        "Executor details: command, environment, timeout."
    ),
    field!(
        "parents",
        [],
        r#"{"type":"array"}"#,
        "Tasks this one depends on."
    ),
    field!(
        "children",
        [],
        r#"{"type":"array"}"#,
        "Tasks that depend on this one."
    ),
    field!(
        "is_generator",
        ["isGenerator"],
        r#"{"type":"boolean"}"#,
        "Stdout is a JSON task set to add."
    ),
    field!(
        "max_retries",
        ["maxRetries"],
        r#"{"type":"integer"}"#,
        "Retries after a failure."
    ),
    field!(
        "retry_interval_seconds",
        ["retryIntervalSeconds", "retry"],
        r#"{"type":"integer"}"#,
        "Seconds between retries."
    ),
    field!(
        "parameters",
        [],
        r#"{"type":"object"}"#,
        "Task parameters, merged over the run's."
    ),
    field!(
        "name",
        ["definedName"],
        r#"{"type":"string"}"#,
        "Display name."
    ),
];

static DETAILS: &[crate::decode::Field] = &[
    field!("command", [], r#"{"type":"array"}"#, "argv."),
    field!("environment", [], r#"{"type":"object"}"#, "Environment."),
    field!("timeout", [], r#"{"type":"integer"}"#, "Seconds; 0 = none."),
    field!("resources", [], r#"{"type":"object"}"#, "Agent resources."),
    field!("logdir", [], r#"{"type":"string"}"#, "Slurm log dir."),
    field!("user", [], r#"{"type":"string"}"#, "Slurm user."),
    field!("jwt_token", [], r#"{"type":"string"}"#, "Slurm token."),
    field!("min_cpus", [], r#"{"type":"integer"}"#, "Slurm CPUs."),
    field!(
        "min_memory_mb",
        [],
        r#"{"type":"integer"}"#,
        "Slurm memory."
    ),
    field!(
        "min_tmp_disk_mb",
        [],
        r#"{"type":"integer"}"#,
        "Slurm disk."
    ),
    field!("priority", [], r#"{"type":"integer"}"#, "Slurm priority."),
    field!(
        "time_limit_seconds",
        [],
        r#"{"type":"integer"}"#,
        "Slurm time limit."
    ),
    field!("host", [], r#"{"type":"string"}"#, "SSH target."),
    // Misplaced edges get their own, clearer problem in `task`.
    field!(
        "children",
        [],
        r#"{"type":"array"}"#,
        "Misplaced: belongs to the task."
    ),
    field!(
        "parents",
        [],
        r#"{"type":"array"}"#,
        "Misplaced: belongs to the task."
    ),
];

/// Where a Daggy run's parameters are kept on the loaded [`Dag`].
pub const PARAMETERS_KEY: &str = "daggy_parameters";

/// Turns a generator's stdout (a JSON map of task id → task) into steps, expanded with the
/// run's parameters. The caller wires them after the generator.
pub fn generated_steps(dag: &Dag, stdout: &str) -> Result<Vec<Step>, crate::Error> {
    let docs = crate::yaml::parse(stdout).map_err(crate::Error::GeneratorNotJson)?;
    let Some(Node {
        value: Value::Map(entries),
        ..
    }) = docs.first()
    else {
        return Err(crate::Error::GeneratorNotObject);
    };
    let mut cx = Cx::default();
    let tasks: Vec<Task> = entries
        .iter()
        .filter_map(|(k, v)| task(&mut cx, k, v))
        .collect();
    if let Some(p) = cx.problems.iter().find(|p| !p.warning) {
        return Err(crate::Error::GeneratorTask(Box::new(p.clone())));
    }
    let params: IndexMap<String, Vec<String>> = dag
        .executor_defaults
        .get(PARAMETERS_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    Ok(expand_all(&tasks, &params))
}

/// One task after reading, before expansion.
struct Task {
    id: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Option<u64>,
    parents: Vec<String>,
    children: Vec<String>,
    generator: bool,
    retries: u32,
    interval: f64,
    params: IndexMap<String, Vec<String>>,
}

/// Decodes a run spec document.
pub fn decode_run(cx: &mut Cx, doc: &Node, default_name: &str) -> Option<Dag> {
    let obj = cx.object(doc, RUN, "a Daggy run spec")?;
    let mut dag = Dag::empty(
        obj.string(cx, "name")
            .unwrap_or_else(|| default_name.to_string()),
    );
    dag.dag_type = DagType::Graph;
    if let Some(tags) = obj.get("tags") {
        match &tags.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    dag.labels.insert(
                        k.scalar_text().unwrap_or_default(),
                        v.scalar_text().unwrap_or_default(),
                    );
                }
            }
            _ => cx.wrong_type(tags, "a mapping of tag → value (the list form is obsolete)"),
        }
    }
    let run_params = obj
        .get("parameters")
        .map(|n| parameters(cx, n))
        .unwrap_or_default();
    let tasks = match obj.get("tasks") {
        Some(Node {
            value: Value::Map(entries),
            ..
        }) => entries
            .iter()
            .filter_map(|(k, v)| task(cx, k, v))
            .collect::<Vec<_>>(),
        Some(n) => {
            let key = obj.key("tasks").map_or(n.span, |k| k.span);
            cx.push(Problem::error(Code::WrongType, key, format!("`tasks` must be a mapping of task id → task, found {}", n.type_name())).label(format!("this is {}", n.type_name())).help("the list form with `class` is an obsolete daggy format; key each task by its id"));
            return None;
        }
        None => {
            cx.push(Problem::error(
                Code::MissingField,
                doc.span,
                "a Daggy run spec needs `tasks`",
            ));
            return None;
        }
    };
    check_edges(cx, &obj, &tasks);
    dag.steps = expand_all(&tasks, &run_params);
    // Kept for generator tasks, whose output is expanded with the run's parameters.
    let params = serde_json::to_value(&run_params).unwrap_or_default();
    dag.executor_defaults.insert(PARAMETERS_KEY.into(), params);
    Some(dag)
}

fn parameters(cx: &mut Cx, node: &Node) -> IndexMap<String, Vec<String>> {
    let mut out = IndexMap::new();
    let Value::Map(entries) = &node.value else {
        cx.wrong_type(node, "a mapping of parameter → value(s)");
        return out;
    };
    for (k, v) in entries {
        out.insert(
            k.scalar_text().unwrap_or_default(),
            crate::decode::strings(cx, v),
        );
    }
    out
}

fn task(cx: &mut Cx, key: &Node, node: &Node) -> Option<Task> {
    let id = key.scalar_text()?;
    let obj = cx.object(node, TASK, "a Daggy task")?;
    let Some(details) = obj.get("details") else {
        cx.push(Problem::error(
            Code::MissingField,
            node.span,
            format!("task `{id}` needs `details` (or `job`) with a `command`"),
        ));
        return None;
    };
    for misplaced in ["children", "parents"] {
        if let Some(k) = details.get(misplaced) {
            cx.push(Problem::error(Code::UnknownKey, k.span, format!("`{misplaced}` inside `details` of task `{id}` would be ignored, losing its edges")).help(format!("move `{misplaced}` up to the task, next to `details`")));
        }
    }
    let dobj = cx.object(details, DETAILS, "task details")?;
    let argv = dobj.strings(cx, "command");
    if argv.is_empty() {
        cx.push(Problem::error(
            Code::MissingField,
            details.span,
            format!("task `{id}` needs a non-empty `command` array"),
        ));
    }
    let env = dobj
        .get("environment")
        .map(|n| {
            crate::decode::pairs(cx, n)
                .into_iter()
                .map(|(k, v, _)| (k, v))
                .collect()
        })
        .unwrap_or_default();
    Some(Task {
        argv,
        env,
        timeout: dobj.uint(cx, "timeout").filter(|t| *t > 0),
        parents: obj.strings(cx, "parents"),
        children: obj.strings(cx, "children"),
        generator: obj.bool(cx, "is_generator").unwrap_or(false),
        retries: obj
            .uint(cx, "max_retries")
            .unwrap_or(0)
            .min(u32::MAX as u64) as u32,
        interval: obj.number(cx, "retry_interval_seconds").unwrap_or(0.0),
        params: obj
            .get("parameters")
            .map(|n| parameters(cx, n))
            .unwrap_or_default(),
        id,
    })
}

fn check_edges(cx: &mut Cx, obj: &crate::decode::Obj, tasks: &[Task]) {
    let span = obj.get("tasks").map_or(obj.span, |n| n.span);
    for t in tasks {
        for other in t.parents.iter().chain(&t.children) {
            if !tasks.iter().any(|x| &x.id == other) {
                cx.push(Problem::error(
                    Code::UnknownDependency,
                    span,
                    format!("task `{}` refers to unknown task `{other}`", t.id),
                ));
            }
        }
    }
}

/// Expands every task and wires parents/children edges into `depends`.
fn expand_all(tasks: &[Task], run_params: &IndexMap<String, Vec<String>>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // (head, tail) step names for each task id: edges into a task go to its head, edges out
    // leave from its tail.
    let mut ends: IndexMap<&str, (String, String)> = IndexMap::new();
    for t in tasks {
        let mut params = run_params.clone();
        params.extend(t.params.clone());
        let combos = combinations(t, &params);
        if combos.len() == 1 {
            steps.push(instance(t, &t.id, &combos[0]));
            ends.insert(&t.id, (t.id.clone(), t.id.clone()));
            continue;
        }
        let tail = format!("{}.tail", t.id);
        steps.push(structural(&t.id, Vec::new()));
        let mut names = Vec::new();
        for combo in &combos {
            let suffix: Vec<String> = combo.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let name = format!("{}.{}", t.id, suffix.join("."));
            let mut step = instance(t, &name, combo);
            step.depends = vec![t.id.clone()];
            names.push(name);
            steps.push(step);
        }
        steps.push(structural(&tail, names));
        ends.insert(&t.id, (t.id.clone(), tail));
    }
    for t in tasks {
        for parent in &t.parents {
            add_edge(&mut steps, &ends, parent, &t.id);
        }
        for child in &t.children {
            add_edge(&mut steps, &ends, &t.id, child);
        }
    }
    steps
}

fn add_edge(steps: &mut [Step], ends: &IndexMap<&str, (String, String)>, from: &str, to: &str) {
    let (Some((_, tail)), Some((head, _))) = (ends.get(from), ends.get(to)) else {
        return;
    };
    if let Some(step) = steps.iter_mut().find(|s| &s.name == head)
        && !step.depends.contains(tail)
    {
        step.depends.push(tail.clone());
    }
}

fn structural(name: &str, depends: Vec<String>) -> Step {
    let mut step = Step::command(name, "");
    step.action = Action::Noop;
    step.depends = depends;
    step
}

fn instance(t: &Task, name: &str, combo: &[(String, String)]) -> Step {
    let fill = |s: &str| {
        combo
            .iter()
            .fold(s.to_string(), |acc, (k, v)| acc.replace(k.as_str(), v))
    };
    let mut argv = t.argv.iter().map(|a| fill(a));
    let mut step = Step::command(name, "");
    step.action = Action::Exec {
        program: argv.next().unwrap_or_default(),
        args: argv.collect(),
    };
    step.env = t.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    step.timeout_sec = t.timeout;
    step.generator = t.generator;
    if t.retries > 0 {
        step.retry_policy = Some(Box::new(RetryPolicy {
            limit: t.retries,
            interval_sec: t.interval,
            backoff: None,
            max_interval_sec: None,
            exit_codes: Vec::new(),
        }));
    }
    step
}

/// The cartesian product over the parameters that occur in the command or environment.
fn combinations(t: &Task, params: &IndexMap<String, Vec<String>>) -> Vec<Vec<(String, String)>> {
    let used = |key: &str| {
        !key.is_empty()
            && (t.argv.iter().any(|a| a.contains(key))
                || t.env.iter().any(|(_, v)| v.contains(key)))
    };
    let mut keys: Vec<(&String, &Vec<String>)> = params
        .iter()
        .filter(|(k, v)| used(k) && !v.is_empty())
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in keys {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut next = c.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    combos
}
