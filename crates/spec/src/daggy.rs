//! Daggy JSON run specs (`{"tags", "parameters", "tasks": {id: {details|job, parents,
//! children, is_generator, max_retries, parameters}}}`) loaded into the Trellis model.
//!
//! Parameters expand as a cartesian product over the keys that occur in a task's command or
//! environment. A task that expands to several instances becomes a no-op head (keeping its
//! parents), the instances `id.K:V...`, and a no-op `id.tail` (keeping its children), as
//! daggyr does, so that edges into and out of it stay correct.
//!
//! Where a task runs is read from its details, since Trellis has no daggyr pools: Slurm
//! options (`logdir`, `min_cpus`, ...) make its steps Slurm jobs, `host` an ssh step.
//! What Trellis cannot act on (`jwt_token`, `user`, `resources`) is a warning, never a
//! silent drop; the token is never kept.

use indexmap::IndexMap;
use serde_json::json;
use trellis_core::{Action, Dag, DagType, ExecutorConfig, RetryPolicy, Step};

use crate::decode::{Cx, Obj, field};
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
    /// Slurm or ssh, from the details; `None` runs on this machine (or a worker).
    executor: Option<ExecutorConfig>,
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
    order(cx, &obj, &mut dag.steps);
    // `maxRetries` and `max_retries` are both Daggy's (C++ and DaggyR): neither is legacy.
    cx.problems.retain(|p| !matches!(p.code, Code::LegacyKey));
    // Kept for generator tasks, whose output is expanded with the run's parameters.
    let params = serde_json::to_value(&run_params).unwrap_or_default();
    dag.executor_defaults.insert(PARAMETERS_KEY.into(), params);
    Some(dag)
}

/// Puts the steps in dependency order (what the engine's retry expects of a loaded DAG),
/// or reports each cycle with the tasks on it: a cyclic run could never end.
fn order(cx: &mut Cx, obj: &crate::decode::Obj, steps: &mut Vec<Step>) {
    let index: std::collections::HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.depends
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .map(move |&j| (j, i))
        })
        .collect();
    match trellis_core::graph::Graph::new(steps.len(), edges).topo_order() {
        Ok(order) => {
            let mut taken: Vec<Option<Step>> =
                std::mem::take(steps).into_iter().map(Some).collect();
            steps.extend(order.into_iter().filter_map(|i| taken[i].take()));
        }
        Err(cycles) => {
            let span = obj.get("tasks").map_or(obj.span, |n| n.span);
            for cycle in cycles {
                let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
                cx.push(Problem::error(
                    Code::Cycle,
                    span,
                    format!("tasks form a cycle: {} → {}", names.join(" → "), names[0]),
                ).help("a run of a cyclic graph could never end; remove one of the edges (`parents` or `children`)"));
            }
        }
    }
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
    let executor = placement(cx, &id, &dobj, details);
    Some(Task {
        executor,
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

/// daggyr's Slurm job options, by their names in `details`.
const SLURM_KEYS: &[&str] = &[
    "logdir",
    "min_cpus",
    "min_memory_mb",
    "min_tmp_disk_mb",
    "priority",
    "time_limit_seconds",
];

/// Where a task runs, read from the executor-specific keys of its details (daggyr reads
/// them by pool, which Trellis has not): Slurm options make a Slurm job, `host` an ssh
/// step. The keys Trellis cannot act on are warned about.
fn placement(cx: &mut Cx, id: &str, dobj: &Obj, details: &Node) -> Option<ExecutorConfig> {
    unused_keys(cx, id, dobj);
    let slurm_key = SLURM_KEYS.iter().find(|k| dobj.has(k));
    let config = match (dobj.key("host"), slurm_key) {
        (Some(host), Some(key)) => {
            cx.push(
                Problem::error(
                    Code::Conflict,
                    host.span,
                    format!("task `{id}` has both `host` (an ssh target) and the Slurm option `{key}`: a task runs in one place"),
                )
                .help("keep `host` to run the command over ssh, or the Slurm options to run it as a Slurm job"),
            );
            return None;
        }
        (Some(_), None) => ssh(cx, id, dobj)?,
        (None, Some(_)) => slurm(cx, id, dobj)?,
        (None, None) => return None,
    };
    checked(cx, details, config)
}

/// `jwt_token`, `user` and `resources`: read by daggyr, not by Trellis, so each is a
/// warning. The token's value is never read, so it reaches no step, record or message.
fn unused_keys(cx: &mut Cx, id: &str, dobj: &Obj) {
    if let Some(key) = dobj.key("jwt_token") {
        cx.push(
            Problem::warning(
                Code::Unsupported,
                key.span,
                format!("`jwt_token` of task `{id}` is not used and not kept: trellis submits Slurm jobs with `sbatch` as the user running it, not through slurmrestd"),
            )
            .help("remove the token from the spec: whoever can read the spec can use it"),
        );
    }
    if let Some(key) = dobj.key("user") {
        cx.push(
            Problem::warning(
                Code::Unsupported,
                key.span,
                format!("`user` of task `{id}` is not used: trellis submits Slurm jobs (and runs every task) as the user running trellis"),
            )
            .help("run trellis as that user, or remove `user`"),
        );
    }
    if let Some(key) = dobj.key("resources") {
        cx.push(
            Problem::warning(
                Code::Unsupported,
                key.span,
                format!("`resources` of task `{id}` (daggyr's agent resources) is not used: trellis runs the task where its executor runs it, reserving nothing"),
            )
            .help("for a Slurm job, give `min_cpus` and `min_memory_mb` instead"),
        );
    }
}

/// A Slurm step's `with:`, in the job options of the Trellis slurm executor. A minimum
/// of 0 asks for nothing; `priority` 1 is daggyr's default, so it is not sent.
fn slurm(cx: &mut Cx, id: &str, dobj: &Obj) -> Option<ExecutorConfig> {
    let mut with = serde_json::Map::new();
    let mut sbatch_args = Vec::new();
    if let Some(dir) = logdir(cx, id, dobj) {
        with.insert("log_dir".into(), json!(dir));
    }
    let positive = |cx: &mut Cx, key: &str| dobj.uint(cx, key).filter(|n| *n > 0);
    if let Some(n) = positive(cx, "min_cpus") {
        with.insert("cpus_per_task".into(), json!(n));
    }
    if let Some(n) = positive(cx, "min_memory_mb") {
        with.insert("mem".into(), json!(format!("{n}M")));
    }
    if let Some(n) = positive(cx, "min_tmp_disk_mb") {
        sbatch_args.push(format!("--tmp={n}M"));
    }
    if let Some(n) = dobj.uint(cx, "priority").filter(|n| *n != 1) {
        // Slurm refuses it, in its own words, to anyone but an operator.
        sbatch_args.push(format!("--priority={n}"));
    }
    if let Some(secs) = positive(cx, "time_limit_seconds") {
        with.insert("time".into(), json!(slurm_time(secs)));
    }
    if !sbatch_args.is_empty() {
        with.insert("sbatch_args".into(), json!(sbatch_args));
    }
    Some(ExecutorConfig {
        kind: "slurm".into(),
        config: serde_json::Value::Object(with),
    })
}

/// `minutes:seconds`, which sbatch reads without losing a second (Slurm itself counts
/// whole minutes, rounding up).
fn slurm_time(secs: u64) -> String {
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// The job's log dir: absolute, since the job's node and trellis both read it.
fn logdir(cx: &mut Cx, id: &str, dobj: &Obj) -> Option<String> {
    let node = dobj.get("logdir")?;
    let dir = dobj.string(cx, "logdir")?;
    if dir.starts_with('/') {
        return Some(dir);
    }
    cx.push(
        Problem::error(
            Code::InvalidValue,
            node.span,
            format!("`logdir` of task `{id}` must be an absolute path, found `{dir}`"),
        )
        .help("a directory the job's node and trellis share, such as /shared/logs"),
    );
    None
}

/// An ssh step on `host` (`user@host` works as ssh reads it).
fn ssh(cx: &mut Cx, id: &str, dobj: &Obj) -> Option<ExecutorConfig> {
    let node = dobj.get("host")?;
    let host = dobj.string(cx, "host")?;
    if host.trim().is_empty() {
        cx.invalid(node, format!("`host` of task `{id}` is empty"));
        return None;
    }
    Some(ExecutorConfig {
        kind: "ssh".into(),
        config: json!({ "host": host.trim() }),
    })
}

/// The executor's own objections to the step's `with:`, when the binary installed them.
fn checked(cx: &mut Cx, details: &Node, config: ExecutorConfig) -> Option<ExecutorConfig> {
    let Some(check) = crate::executor_check() else {
        return Some(config);
    };
    let problem = match check(&config.kind, &config.config) {
        Some(Ok(())) => return Some(config),
        Some(Err(message)) => Problem::error(Code::InvalidValue, details.span, message),
        None => Problem::error(
            Code::Unsupported,
            details.span,
            format!(
                "these details make a `{}` step, which this build of trellis cannot run",
                config.kind
            ),
        ),
    };
    cx.push(problem);
    None
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
    step.executor = t.executor.clone().map(Box::new);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The details of daggyr's Slurm executor test (the conformance corpus's
    /// `daggyr__slurm_task_details.json`), as a whole run spec.
    const SLURM: &str = r#"{"tasks": {"test_task": {"details": {
        "command": ["/usr/bin/echo", "hello", "$MYVAR"],
        "user": "USERNAME",
        "jwt_token": "TOKEN_FROM_scontrol_token",
        "environment": {"MYVAR": "fancy_pants"},
        "logdir": "/tmp",
        "min_cpus": 1, "min_memory_mb": 200, "min_tmp_disk_mb": 0, "priority": 1,
        "time_limit_seconds": 3600}}}}"#;

    fn load(text: &str) -> crate::Loaded {
        crate::load_str("spec.json", text).unwrap_or_else(|p| panic!("must load: {p:#?}"))
    }

    fn errors(text: &str) -> Vec<Problem> {
        match crate::load_str("spec.json", text) {
            Ok(_) => panic!("must be refused"),
            Err(problems) => problems.into_iter().filter(|p| !p.warning).collect(),
        }
    }

    fn executor(step: &Step) -> (&str, &serde_json::Value) {
        let e = step.executor.as_deref().expect("an executor");
        (e.kind.as_str(), &e.config)
    }

    #[test]
    fn slurm_details_become_a_slurm_step_with_sbatch_options() {
        let loaded = load(SLURM);
        let step = &loaded.dag.steps[0];
        assert_eq!(
            executor(step),
            (
                "slurm",
                &json!({"log_dir": "/tmp", "cpus_per_task": 1, "mem": "200M", "time": "60:00"})
            ),
            "tmp disk 0 and priority 1 (daggyr's default) send nothing"
        );
        assert_eq!(step.env, [("MYVAR".to_string(), "fancy_pants".to_string())]);
        let Action::Exec { program, args } = &step.action else {
            panic!("{:?}", step.action);
        };
        assert_eq!((program.as_str(), args.len()), ("/usr/bin/echo", 2));
    }

    #[test]
    fn every_slurm_option_is_mapped() {
        let loaded = load(
            r#"{"tasks": {"t": {"details": {"command": ["true"], "min_cpus": 0,
            "min_memory_mb": 2048, "min_tmp_disk_mb": 100, "priority": 5,
            "time_limit_seconds": 90}}}}"#,
        );
        assert_eq!(
            executor(&loaded.dag.steps[0]),
            (
                "slurm",
                &json!({"mem": "2048M", "time": "1:30",
                    "sbatch_args": ["--tmp=100M", "--priority=5"]})
            ),
            "a minimum of 0 asks for nothing"
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn time_limits_keep_every_second() {
        let cases = [(5, "0:05"), (90, "1:30"), (3600, "60:00"), (3601, "60:01")];
        for (secs, time) in cases {
            assert_eq!(slurm_time(secs), time);
        }
    }

    #[test]
    fn every_instance_of_an_expanded_task_is_a_slurm_job() {
        let loaded = load(
            r#"{"parameters": {"DAY": ["1", "2"]}, "tasks": {"t": {"details": {
            "command": ["echo", "DAY"], "logdir": "/shared/logs"}}}}"#,
        );
        let kinds: Vec<&str> = loaded.dag.steps.iter().map(Step::executor_kind).collect();
        assert_eq!(kinds, ["noop", "slurm", "slurm", "noop"]);
    }

    #[test]
    fn the_jwt_token_reaches_nothing_and_user_and_token_are_warned_about() {
        let loaded = load(SLURM);
        let dag = serde_json::to_string(&loaded.dag).expect("serialize");
        assert!(!dag.contains("TOKEN_FROM_scontrol_token"), "{dag}");
        let warned: Vec<&str> = loaded.warnings.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].contains("`user`") && warned[0].contains("user running trellis"));
        assert!(warned[1].contains("`jwt_token`") && warned[1].contains("not kept"));
        assert!(
            loaded
                .warnings
                .iter()
                .all(|p| !format!("{p:?}").contains("TOKEN_FROM")),
            "nor any message"
        );
    }

    #[test]
    fn resources_are_a_warning_and_the_task_runs_here() {
        let loaded = load(
            r#"{"tasks": {"a": {"details": {"command": ["echo"],
            "resources": {"cores": 1, "memory_mb": 100}}}}}"#,
        );
        assert!(loaded.dag.steps[0].executor.is_none());
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].code, Code::Unsupported);
        assert!(loaded.warnings[0].message.contains("`resources`"));
    }

    #[test]
    fn host_makes_an_ssh_step_but_not_beside_slurm_options() {
        let loaded =
            load(r#"{"tasks": {"a": {"details": {"command": ["uptime"], "host": "me@box"}}}}"#);
        assert_eq!(
            executor(&loaded.dag.steps[0]),
            ("ssh", &json!({"host": "me@box"}))
        );
        let both = errors(
            r#"{"tasks": {"a": {"details": {"command": ["uptime"], "host": "box", "logdir": "/l"}}}}"#,
        );
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].code, Code::Conflict);
        assert!(both[0].message.contains("`logdir`"), "{}", both[0].message);
    }

    #[test]
    fn a_relative_logdir_is_refused() {
        let problems =
            errors(r#"{"tasks": {"a": {"details": {"command": ["true"], "logdir": "logs"}}}}"#);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("absolute"));
    }
}
