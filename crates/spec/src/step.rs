//! Decoding of steps and their policies.

use indexmap::IndexMap;
use trellis_core::pattern::Pattern;
use trellis_core::{
    Action, Approval, Call, Condition, ContinueOn, DEFAULT_PARALLEL_MAX_CONCURRENT, ExecutorConfig,
    MAX_PARALLEL_MAX_CONCURRENT, Output, OutputDecode, OutputField, OutputSource, Parallel,
    ParallelItems, RepeatPolicy, RetryPolicy, Route, Step,
};

use crate::dag::{env_list, shell, worker_selector};
use crate::decode::{Cx, Obj, strings};
use crate::diag::{Code, Problem};
use crate::fields;
use crate::graph::StepMeta;
pub use crate::policy::{decode_condition_list, decode_retry};
use crate::policy::{decode_continue_on, decode_repeat, signal};
use crate::yaml::{Node, Span, Value};

/// `defaults:` — values every step starts from.
#[derive(Default)]
pub struct Defaults {
    retry_policy: Option<RetryPolicy>,
    continue_on: Option<ContinueOn>,
    repeat_policy: Option<RepeatPolicy>,
    timeout_sec: Option<u64>,
    mail_on_error: Option<bool>,
    signal_on_stop: Option<String>,
    env: Vec<(String, String)>,
    preconditions: Vec<Condition>,
}

impl Defaults {
    pub fn decode(cx: &mut Cx, node: &Node) -> Defaults {
        let Some(obj) = cx.object(node, fields::DEFAULTS_FIELDS, "defaults") else {
            return Defaults::default();
        };
        Defaults {
            retry_policy: obj
                .get("retry_policy")
                .and_then(|n| decode_retry(cx, n, fields::RETRY_FIELDS)),
            continue_on: obj.get("continue_on").map(|n| decode_continue_on(cx, n)),
            repeat_policy: obj.get("repeat_policy").and_then(|n| decode_repeat(cx, n)),
            timeout_sec: obj.uint(cx, "timeout_sec"),
            mail_on_error: obj.bool(cx, "mail_on_error"),
            signal_on_stop: obj.get("signal_on_stop").and_then(|n| signal(cx, n)),
            env: obj.get("env").map(|n| env_list(cx, n)).unwrap_or_default(),
            preconditions: obj
                .get("preconditions")
                .map(|n| decode_condition_list(cx, n))
                .unwrap_or_default(),
        }
    }

    /// Fills what the step left unset; env and preconditions add up (defaults first).
    fn apply(&self, step: &mut Step, obj: &Obj) {
        if !obj.has("retry_policy") {
            step.retry_policy = self.retry_policy.clone().map(Box::new);
        }
        if !obj.has("continue_on")
            && let Some(c) = &self.continue_on
        {
            step.continue_on = c.clone();
        }
        if !obj.has("repeat_policy") {
            step.repeat_policy = self.repeat_policy.clone().map(Box::new);
        }
        step.timeout_sec = step.timeout_sec.or(self.timeout_sec);
        step.mail_on_error = obj.has("mail_on_error") && step.mail_on_error
            || !obj.has("mail_on_error") && self.mail_on_error.unwrap_or(false);
        step.signal_on_stop = step
            .signal_on_stop
            .take()
            .or_else(|| self.signal_on_stop.clone());
        let mut env = self.env.clone();
        env.append(&mut step.env);
        step.env = env;
        let mut pre = self.preconditions.clone();
        pre.append(&mut step.preconditions);
        step.preconditions = pre;
    }
}

/// What step decoding needs from the DAG around it.
pub struct StepCx<'a> {
    pub defaults: &'a Defaults,
    pub step_types: Option<&'a Node>,
    /// `actions:` — custom actions (Dagu 2.15's successor of `step_types:`).
    pub actions: Option<&'a Node>,
}

/// `steps:` as a list (strings, steps, nested lists = parallel groups) or a name → step map.
pub fn decode_steps(cx: &mut Cx, node: &Node, scx: &StepCx) -> (Vec<Step>, Vec<StepMeta>) {
    // Sized up front: growing by doubling would briefly hold 1.5x a large DAG.
    let count = match &node.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| {
                if let Value::Seq(inner) = &i.value {
                    inner.len()
                } else {
                    1
                }
            })
            .sum(),
        Value::Map(entries) => entries.len(),
        _ => 0,
    };
    let (mut steps, mut metas) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut push = |cx: &mut Cx, item: &Node, group: usize, name: Option<&Node>| {
        let default = format!("cmd_{}", steps.len() + 1);
        let decoded = match name {
            Some(key) => decode_named(cx, item, key, scx),
            None => decode_step(cx, item, &default, scx),
        };
        if let Some((step, mut meta)) = decoded {
            meta.group = group;
            steps.push(step);
            metas.push(meta);
        }
    };
    match &node.value {
        Value::Seq(items) => {
            for (group, item) in items.iter().enumerate() {
                match &item.value {
                    Value::Seq(inner) => inner.iter().for_each(|i| push(cx, i, group, None)),
                    _ => push(cx, item, group, None),
                }
            }
        }
        Value::Map(entries) => {
            for (group, (key, item)) in entries.iter().enumerate() {
                push(cx, item, group, Some(key));
            }
        }
        Value::Null => {}
        _ => cx.wrong_type(node, "a list of steps"),
    }
    if steps.is_empty() && !node.is_null() && cx.problems.iter().all(|p| p.warning) {
        cx.push(
            Problem::error(Code::MissingField, node.span, "the DAG has no steps")
                .help("add at least one step"),
        );
    }
    (steps, metas)
}

/// A step from the map form, where the key is the name.
fn decode_named(cx: &mut Cx, item: &Node, key: &Node, scx: &StepCx) -> Option<(Step, StepMeta)> {
    let name = key.scalar_text().unwrap_or_default();
    let (mut step, mut meta) = decode_step(cx, item, &name, scx)?;
    if step.name.is_empty() || meta.name_span == item.span {
        step.name = name;
        meta.name_span = key.span;
    }
    Some((step, meta))
}

/// The step in the form the decoder reads: custom types and actions filled in, Dagu
/// 2.15's `run:`/`action:` rewritten; `None` when it is already in that form. Custom
/// actions may use one another, up to a depth that stops a cycle.
fn expand(cx: &mut Cx, node: &Node, scx: &StepCx) -> Option<Node> {
    let mut current: Option<Node> = None;
    for _ in 0..8 {
        let at = current.as_ref().unwrap_or(node);
        let next = crate::step_types::expand(cx, at, scx.step_types, scx.actions).or_else(|| {
            let names = cx.local_dags.clone();
            crate::action::normalize(cx, at, &names)
        });
        match next {
            Some(n) => current = Some(n),
            None => return current,
        }
    }
    cx.push(Problem::error(
        Code::Cycle,
        node.span,
        "custom actions use one another in a cycle",
    ));
    None
}

/// Decodes one step; `default_name` is used when it has neither `name` nor `id`.
pub fn decode_step(
    cx: &mut Cx,
    node: &Node,
    default_name: &str,
    scx: &StepCx,
) -> Option<(Step, StepMeta)> {
    let meta = |span: Span| StepMeta {
        span: node.span,
        name_span: span,
        depends: Vec::new(),
        explicit: None,
        group: 0,
    };
    if let Some(text) = node.as_str() {
        let step = Step::command(default_name, text);
        return Some((step, meta(node.span)));
    }
    let before = cx.problems.len();
    let expanded;
    let node = match expand(cx, node, scx) {
        Some(n) => {
            expanded = n;
            &expanded
        }
        None => node,
    };
    let obj = cx.object(node, fields::STEP_FIELDS, "a step")?;
    let id = obj.string(cx, "id");
    let name = obj
        .string(cx, "name")
        .or_else(|| id.clone())
        .unwrap_or_else(|| default_name.to_string());
    let name_span = obj
        .get("name")
        .or(obj.get("id"))
        .map_or(node.span, |n| n.span);
    let mut step = Step::command(name, "");
    step.id = id;
    step.description = obj.string(cx, "description");
    step.executor = executor(cx, &obj).map(Box::new);
    step.action = action(cx, &obj, step.executor.as_deref(), node.span);
    step.shell = obj.get("shell").and_then(|n| shell(cx, n));
    step.working_dir = obj.string(cx, "working_dir");
    step.env = obj.get("env").map(|n| env_list(cx, n)).unwrap_or_default();
    step.output = obj
        .get("output")
        .and_then(|n| decode_output(cx, n))
        .map(Box::new);
    step.preconditions = obj
        .get("preconditions")
        .map(|n| decode_condition_list(cx, n))
        .unwrap_or_default();
    step.retry_policy = obj
        .get("retry_policy")
        .and_then(|n| decode_retry(cx, n, fields::RETRY_FIELDS))
        .map(Box::new);
    step.repeat_policy = obj
        .get("repeat_policy")
        .and_then(|n| decode_repeat(cx, n))
        .map(Box::new);
    step.continue_on = obj
        .get("continue_on")
        .map(|n| decode_continue_on(cx, n))
        .unwrap_or_default();
    step.timeout_sec = obj.uint(cx, "timeout_sec");
    step.signal_on_stop = obj.get("signal_on_stop").and_then(|n| signal(cx, n));
    step.approval = obj
        .get("approval")
        .and_then(|n| decode_approval(cx, n))
        .map(Box::new);
    step.worker_selector = obj
        .get("worker_selector")
        .map(|n| worker_selector(cx, n))
        .unwrap_or_default();
    step.stdout = obj.string(cx, "stdout");
    step.stderr = obj.string(cx, "stderr");
    step.log_output = obj
        .has("log_output")
        .then(|| crate::dag::log_output(cx, &obj));
    step.mail_on_error = obj.bool(cx, "mail_on_error").unwrap_or(false);
    scx.defaults.apply(&mut step, &obj);
    // A misspelt `command` or an unknown `type` already has its own error; "nothing to run"
    // would only repeat it.
    // `type: noop` (Dagu's `action: noop`) says so on purpose.
    let noop = obj.get("type").and_then(Node::as_str) == Some("noop");
    if !noop && cx.problems[before..].iter().all(|p| p.warning) {
        check_nothing_to_run(cx, &step, name_span);
    }
    let mut meta = meta(name_span);
    if let Some(dep) = obj.get("depends") {
        meta.depends = depends(cx, dep);
        // `depends:` with no value is no list at all (Go reads it as nil).
        meta.explicit = (!dep.is_null()).then_some(dep.span);
    }
    Some((step, meta))
}

fn depends(cx: &mut Cx, node: &Node) -> Vec<(String, Span)> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| {
                let t = i.scalar_text();
                if t.is_none() {
                    cx.wrong_type(i, "a step name");
                }
                t.map(|t| (t, i.span))
            })
            .collect(),
        Value::Null => Vec::new(),
        _ => strings(cx, node)
            .into_iter()
            .map(|t| (t, node.span))
            .collect(),
    }
}

fn check_nothing_to_run(cx: &mut Cx, step: &Step, span: Span) {
    let publishes = step.output.is_some() || step.approval.is_some() || step.executor.is_some();
    if matches!(step.action, Action::Noop) && !publishes {
        cx.push(
            Problem::error(
                Code::MissingField,
                span,
                format!("step `{}` has nothing to run", step.name),
            )
            .label("this step")
            .help("give it a `command`, `script`, `exec`, `call` or `type`"),
        );
    }
}

/// `type` + `with`, or the v1 `executor:` form. `None` means the built-in shell.
fn executor(cx: &mut Cx, obj: &Obj) -> Option<ExecutorConfig> {
    if let Some(node) = obj.get("container") {
        return own_container(cx, obj, node);
    }
    let config = obj
        .get("with")
        .map(Node::to_json)
        .unwrap_or(serde_json::Value::Null);
    let (kind, node) = if let Some(node) = obj.get("executor") {
        if let (Some(t), Some(e)) = (obj.key("type"), obj.key("executor")) {
            cx.push(
                Problem::error(
                    Code::Conflict,
                    e.span,
                    "`executor` and `type` both set the step type",
                )
                .related(t.span, "type set here")
                .help("keep only `type` (with `with:` for its settings)"),
            );
        }
        match &node.value {
            Value::Str { text, .. } => (text.clone(), node),
            _ => {
                let eobj = cx.object(node, fields::EXECUTOR_FIELDS, "executor")?;
                let kind = eobj.string(cx, "type")?;
                let config = eobj.get("config").map(Node::to_json).unwrap_or(config);
                let with = eobj.get("config").unwrap_or(node);
                let runs = known_type(cx, &kind, node) && runnable(cx, &kind, &config, node, with);
                return runs.then_some(ExecutorConfig { kind, config });
            }
        }
    } else {
        let node = obj.get("type")?;
        (obj.string(cx, "type")?, node)
    };
    if matches!(
        kind.as_str(),
        "command"
            | "shell"
            | "router"
            | "dag"
            | "subworkflow"
            | "parallel"
            | "noop"
            | "dag_enqueue"
    ) {
        return None;
    }
    let with = obj.get("with").unwrap_or(node);
    let runs = known_type(cx, &kind, node) && runnable(cx, &kind, &config, node, with);
    runs.then_some(ExecutorConfig { kind, config })
}

/// A step's own `container:` (Dagu 2.x): a `docker` step whose options are the mapping,
/// or `{exec: name}` for a bare container name.
fn own_container(cx: &mut Cx, obj: &Obj, node: &Node) -> Option<ExecutorConfig> {
    for other in ["type", "executor"] {
        if let (Some(k), Some(c)) = (obj.key(other), obj.key("container")) {
            let kind = obj.get(other).and_then(Node::as_str).unwrap_or("");
            if matches!(kind, "docker" | "container") && other == "type" && !obj.has("with") {
                continue;
            }
            cx.push(
                Problem::error(
                    Code::Conflict,
                    c.span,
                    format!("`container` and `{other}` both say where the step runs"),
                )
                .related(k.span, format!("{other} set here"))
                .help("keep one: `container:` alone runs the step in that container"),
            );
            return None;
        }
    }
    let config = match node.as_str() {
        Some(name) => serde_json::json!({ "exec": name }),
        None => node.to_json(),
    };
    let kind = "docker".to_string();
    runnable(cx, &kind, &config, node, node).then_some(ExecutorConfig { kind, config })
}

/// Refuses a step type this build cannot run (rather than load a step that would fail at
/// run time, or run elsewhere than written), and reports its executor's objections to
/// its `with:`.
fn runnable(cx: &mut Cx, kind: &str, config: &serde_json::Value, node: &Node, with: &Node) -> bool {
    let Some(check) = crate::executor_check() else {
        return true;
    };
    let problem = match check(kind, config) {
        Some(Ok(())) => return true,
        Some(Err(message)) => Problem::error(Code::InvalidValue, with.span, message)
            .label("these options"),
        None => Problem::error(
            Code::Unsupported,
            node.span,
            format!("step type `{kind}` cannot run in this version of trellis: its executor is not built yet"),
        )
        .help("the steps that run: shell commands, scripts and exec, call (dag, subworkflow, parallel), router, noop, docker (container), slurm, kubernetes (k8s), ssh, sftp, http, jq, mail, state, wait and log"),
    };
    cx.push(problem);
    false
}

fn known_type(cx: &mut Cx, kind: &str, node: &Node) -> bool {
    if fields::STEP_TYPES.contains(&kind) {
        return true;
    }
    let mut problem = Problem::error(
        Code::BadEnum,
        node.span,
        format!("unknown step type `{kind}`"),
    )
    .help(format!(
        "built-in types: {}; or declare it under `step_types`",
        fields::STEP_TYPES.join(", ")
    ));
    if let Some(best) = fields::STEP_TYPES
        .iter()
        .find(|t| strsim::jaro_winkler(kind, t) >= 0.85)
    {
        problem = problem.help(format!("did you mean `{best}`?"));
    }
    cx.push(problem);
    false
}

fn action(cx: &mut Cx, obj: &Obj, executor: Option<&ExecutorConfig>, span: Span) -> Action {
    let kind = obj.get("type").and_then(Node::as_str).unwrap_or("");
    if kind == "router" {
        return router(cx, obj, span);
    }
    if let Some(call) = call(cx, obj, kind) {
        return Action::Call(call);
    }
    if let Some(parallel) = obj.key("parallel") {
        cx.push(
            Problem::error(Code::MissingField, parallel.span, "`parallel` needs `call`")
                .help("name the DAG to run once per item with `call: <dag>`"),
        );
    }
    let exec = obj.get("exec");
    let (command, script) = (obj.get("command"), obj.string(cx, "script"));
    if let (Some(exec_node), Some(exec_key)) = (exec, obj.key("exec")) {
        for other in ["command", "script"] {
            if let Some(k) = obj.key(other) {
                cx.push(
                    Problem::error(
                        Code::Conflict,
                        k.span,
                        format!("`exec` and `{other}` cannot be used together"),
                    )
                    .related(exec_key.span, "exec given here")
                    .help("`exec` runs a program without a shell; use one or the other"),
                );
            }
        }
        return decode_exec(cx, exec_node).unwrap_or(Action::Noop);
    }
    if let Some(script) = script {
        let program = command.and_then(|c| {
            let list = strings(cx, c);
            (!list.is_empty()).then(|| list.join(" "))
        });
        return Action::Script { script, program };
    }
    match command {
        Some(node) => {
            let commands = strings(cx, node);
            if commands.is_empty() && executor.is_none() {
                cx.invalid(node, "`command` is empty");
            }
            Action::Commands { commands }
        }
        None => Action::Noop,
    }
}

fn call(cx: &mut Cx, obj: &Obj, kind: &str) -> Option<Call> {
    let dag = match obj.string(cx, "call") {
        Some(dag) => dag,
        None if matches!(kind, "dag" | "subworkflow" | "parallel" | "dag_enqueue") => {
            obj.string(cx, "command")?
        }
        None => return None,
    };
    let params = match obj.get("params") {
        Some(node) => match &node.value {
            Value::Map(_) | Value::Seq(_) => crate::params::params_string(cx, node),
            _ => node.scalar_text().unwrap_or_default(),
        },
        None => String::new(),
    };
    let parallel = obj.get("parallel").and_then(|n| decode_parallel(cx, n));
    // `type: dag_enqueue` (Dagu's `action: dag.enqueue`): `with: {queue}` names the queue.
    let enqueue = (kind == "dag_enqueue").then(|| trellis_core::Enqueue {
        queue: obj
            .get("with")
            .and_then(|w| w.get("queue"))
            .and_then(Node::scalar_text),
    });
    Some(Call {
        dag,
        params,
        parallel,
        enqueue,
    })
}

fn decode_parallel(cx: &mut Cx, node: &Node) -> Option<Parallel> {
    let max_concurrent = DEFAULT_PARALLEL_MAX_CONCURRENT;
    match &node.value {
        Value::Str { text, .. } => Some(Parallel {
            items: ParallelItems::Variable(text.clone()),
            max_concurrent,
        }),
        Value::Seq(items) => Some(Parallel {
            items: ParallelItems::List(items.iter().map(Node::to_json).collect()),
            max_concurrent,
        }),
        _ => {
            let obj = cx.object(node, fields::PARALLEL_FIELDS, "parallel")?;
            let items = match obj.get("items") {
                Some(n) if n.as_str().is_some() => {
                    ParallelItems::Variable(n.as_str().unwrap_or_default().to_string())
                }
                Some(Node {
                    value: Value::Seq(items),
                    ..
                }) => ParallelItems::List(items.iter().map(Node::to_json).collect()),
                Some(n) => {
                    cx.wrong_type(n, "a list of items or a `${VAR}`");
                    return None;
                }
                None => {
                    cx.push(Problem::error(
                        Code::MissingField,
                        node.span,
                        "`parallel` needs `items`",
                    ));
                    return None;
                }
            };
            let max = obj
                .uint(cx, "max_concurrent")
                .unwrap_or(max_concurrent as u64);
            if !(1..=MAX_PARALLEL_MAX_CONCURRENT as u64).contains(&max)
                && let Some(n) = obj.get("max_concurrent")
            {
                cx.invalid(
                    n,
                    format!("max_concurrent must be between 1 and {MAX_PARALLEL_MAX_CONCURRENT}"),
                );
            }
            Some(Parallel {
                items,
                max_concurrent: max.clamp(1, MAX_PARALLEL_MAX_CONCURRENT as u64) as u32,
            })
        }
    }
}

fn router(cx: &mut Cx, obj: &Obj, span: Span) -> Action {
    let value = obj.string(cx, "value").unwrap_or_default();
    if !obj.has("value") {
        cx.push(
            Problem::error(Code::MissingField, span, "a router step needs `value`")
                .help("e.g. `value: ${STATUS}`"),
        );
    }
    let mut routes = Vec::new();
    match obj.get("routes").map(|n| (n, &n.value)) {
        Some((_, Value::Map(entries))) => {
            for (k, v) in entries {
                routes.push(Route {
                    pattern: Pattern::parse(&k.scalar_text().unwrap_or_default()),
                    targets: strings(cx, v),
                });
            }
        }
        Some((n, _)) => cx.wrong_type(n, "a mapping of pattern to steps"),
        None => cx.push(Problem::error(
            Code::MissingField,
            span,
            "a router step needs `routes`",
        )),
    }
    Action::Router { value, routes }
}

fn decode_exec(cx: &mut Cx, node: &Node) -> Option<Action> {
    if let Some(text) = node.as_str() {
        return Some(Action::Exec {
            program: text.to_string(),
            args: Vec::new(),
        });
    }
    let obj = cx.object(node, fields::EXEC_FIELDS, "exec")?;
    let Some(program) = obj.string(cx, "command") else {
        cx.push(
            Problem::error(Code::MissingField, node.span, "`exec` needs `command`")
                .help("e.g. `exec: {command: /usr/bin/env, args: [python3, x.py]}`"),
        );
        return None;
    };
    let args = obj.strings(cx, "args");
    Some(Action::Exec { program, args })
}

fn decode_output(cx: &mut Cx, node: &Node) -> Option<Output> {
    if let Some(text) = node.as_str() {
        let name = text.trim_start_matches('$').to_string();
        if !trellis_core::params::is_identifier(&name) {
            cx.invalid(node, format!("`{text}` is not a valid variable name"));
        }
        return Some(Output::Variable(name));
    }
    let Value::Map(entries) = &node.value else {
        cx.wrong_type(node, "a variable name or a mapping of outputs");
        return None;
    };
    let mut out = IndexMap::new();
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        if let Some(field) = output_field(cx, v) {
            out.insert(key, field);
        }
    }
    Some(Output::Fields(out))
}

fn output_field(cx: &mut Cx, node: &Node) -> Option<OutputField> {
    let is_capture = node.get("from").is_some();
    let only_value =
        matches!(&node.value, Value::Map(e) if e.len() == 1) && node.get("value").is_some();
    if only_value {
        return node.get("value").map(|v| OutputField::Literal(v.to_json()));
    }
    if !is_capture {
        return Some(OutputField::Literal(node.to_json()));
    }
    let obj = cx.object(node, fields::OUTPUT_FIELDS, "an output")?;
    let from = match obj
        .choice(cx, "from", &["stdout", "stderr", "file"])?
        .as_str()
    {
        "stderr" => OutputSource::Stderr,
        "file" => OutputSource::File,
        _ => OutputSource::Stdout,
    };
    let path = obj.string(cx, "path");
    if from == OutputSource::File && path.is_none() {
        cx.push(Problem::error(
            Code::MissingField,
            node.span,
            "`from: file` needs `path`",
        ));
    }
    let decode = match obj
        .choice(cx, "decode", &["text", "json", "yaml"])
        .as_deref()
    {
        Some("json") => OutputDecode::Json,
        Some("yaml") => OutputDecode::Yaml,
        _ => OutputDecode::Text,
    };
    Some(OutputField::Capture {
        from,
        path,
        decode,
        select: obj.string(cx, "select"),
    })
}

fn decode_approval(cx: &mut Cx, node: &Node) -> Option<Approval> {
    if node.is_null() {
        return Some(Approval::default());
    }
    let obj = cx.object(node, fields::APPROVAL_FIELDS, "approval")?;
    Some(Approval {
        prompt: obj.string(cx, "prompt"),
        input: obj.strings(cx, "input"),
        required: obj.strings(cx, "required"),
        rewind_to: obj.string(cx, "rewind_to"),
    })
}
