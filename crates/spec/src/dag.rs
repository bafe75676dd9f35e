//! Decoding of one Dagu document (the DAG level) into [`Dag`].

use indexmap::IndexMap;
use trellis_core::{Dag, DagType, Handlers, LogOutput, OverlapPolicy, Shell, WorkerSelector};

use crate::decode::{Cx, Obj, pairs, strings};
use crate::diag::{Code, Problem};
use crate::fields;
use crate::graph::{self, StepMeta};
use crate::params::decode_params;
use crate::schedule::decode_schedule;
use crate::step::{Defaults, StepCx, decode_condition_list, decode_step, decode_steps};
use crate::yaml::{Node, Span, Value};

/// Decodes one document. `default_name` names the DAG when it has no `name` (the file stem
/// for the first document); later documents must name themselves.
pub fn decode_dag(cx: &mut Cx, doc: &Node, default_name: Option<&str>) -> Option<Dag> {
    let obj = cx.object(doc, fields::DAG, "the DAG")?;
    let mut dag = Dag::empty(String::new());
    dag.name = match (obj.string(cx, "name"), default_name) {
        (Some(name), _) => name,
        (None, Some(name)) => name.to_string(),
        (None, None) => {
            // The first key, not the whole document: a long sub-DAG would fill the screen.
            let span = match &doc.value {
                Value::Map(entries) => entries.first().map_or(doc.span, |(k, _)| k.span),
                _ => doc.span,
            };
            cx.push(
                Problem::error(
                    Code::MissingField,
                    span,
                    "a sub-DAG document needs a `name`",
                )
                .label("this document has no `name`")
                .help("add `name: <name>` so that `call:` can refer to it"),
            );
            String::new()
        }
    };
    dag.description = obj.string(cx, "description");
    dag.group = obj.string(cx, "group");
    dag.labels = obj
        .get("labels")
        .map(|n| decode_labels(cx, n))
        .unwrap_or_default();
    dag.env = obj.get("env").map(|n| env_list(cx, n)).unwrap_or_default();
    dag.dotenv = obj.strings(cx, "dotenv");
    dag.params = obj
        .get("params")
        .map(|n| decode_params(cx, n))
        .unwrap_or_default();
    decode_scalars(cx, &obj, &mut dag);
    let timezone = obj.string(cx, "timezone");
    dag.schedule = obj
        .get("schedule")
        .map(|n| decode_schedule(cx, n, timezone.as_deref()))
        .unwrap_or_default();
    dag.preconditions = obj
        .get("preconditions")
        .map(|n| decode_condition_list(cx, n))
        .unwrap_or_default();
    dag.retry_policy = obj
        .get("retry_policy")
        .and_then(|n| crate::step::decode_retry(cx, n, fields::DAG_RETRY_FIELDS));
    for key in [
        "container",
        "ssh",
        "s3",
        "redis",
        "kubernetes",
        "slurm",
        "smtp",
        "mail_on",
        "error_mail",
        "info_mail",
        "wait_mail",
        "llm",
        "registry_auths",
        "artifacts",
        "otel",
        "run_config",
        "webhook",
        "harness",
        "harnesses",
    ] {
        if let Some(node) = obj.get(key) {
            let value = executor_option(key, node);
            // Without the executors' check (this crate alone), what they read loads.
            let checked = match crate::dag_option_check() {
                Some(check) => check(key, &value),
                None if matches!(
                    key,
                    "container"
                        | "registry_auths"
                        | "kubernetes"
                        | "slurm"
                        | "ssh"
                        | "smtp"
                        | "mail_on"
                        | "error_mail"
                        | "info_mail"
                ) =>
                {
                    Some(Ok(()))
                }
                None => None,
            };
            match checked {
                Some(Ok(())) => {}
                Some(Err(message)) => cx.push(
                    Problem::error(Code::InvalidValue, node.span, message).label("these options"),
                ),
                None => not_acted_on(cx, &obj, key),
            }
            dag.executor_defaults.insert(key.to_string(), value);
        }
    }
    dag.secrets = obj
        .get("secrets")
        .map(|n| crate::secrets::decode_secrets(cx, n))
        .unwrap_or_default();
    let step_types = obj.get("step_types");
    let defaults = obj
        .get("defaults")
        .map(|n| Defaults::decode(cx, n))
        .unwrap_or_default();
    let scx = StepCx {
        defaults: &defaults,
        step_types,
        actions: obj.get("actions"),
    };
    dag.handlers = obj
        .get("handler_on")
        .map(|n| decode_handlers(cx, n, &scx))
        .unwrap_or_default();
    let (steps, metas) = match obj.get("steps") {
        Some(node) => decode_steps(cx, node, &scx),
        None => {
            cx.push(
                Problem::error(
                    Code::MissingField,
                    doc.span,
                    format!("DAG `{}` has no `steps`", dag.name),
                )
                .label("this document")
                .help("add `steps:` with at least one step"),
            );
            (Vec::new(), Vec::new())
        }
    };
    dag.steps = steps;
    dag.dag_type = resolve_type(cx, &obj, &dag, &metas);
    graph::link(cx, &mut dag, &metas);
    Some(dag)
}

fn decode_scalars(cx: &mut Cx, obj: &Obj, dag: &mut Dag) {
    dag.skip_if_successful = obj.bool(cx, "skip_if_successful").unwrap_or(false);
    if let Some(node) = obj.get("catchup_window") {
        dag.catchup_window_ms = duration(cx, node);
    }
    dag.overlap_policy = match obj
        .choice(cx, "overlap_policy", &["skip", "all", "latest"])
        .as_deref()
    {
        Some("all") => OverlapPolicy::All,
        Some("latest") => OverlapPolicy::Latest,
        _ => OverlapPolicy::Skip,
    };
    if let Some(node) = obj.get("max_active_runs") {
        dag.max_active_runs = match &node.value {
            Value::Int(i) if *i >= -1 => Some(*i),
            _ => {
                cx.invalid(node, "expected an integer of at least -1 (-1 = unlimited)");
                None
            }
        };
    }
    dag.max_active_steps = obj
        .uint(cx, "max_active_steps")
        .map(|n| n.min(u32::MAX as u64) as u32);
    dag.queue = obj.string(cx, "queue");
    dag.worker_selector = obj
        .get("worker_selector")
        .map(|n| worker_selector(cx, n))
        .unwrap_or_default();
    dag.timeout_sec = obj.uint(cx, "timeout_sec");
    dag.delay_sec = obj.uint(cx, "delay_sec");
    dag.restart_wait_sec = obj.uint(cx, "restart_wait_sec");
    if let Some(v) = obj.uint(cx, "max_clean_up_time_sec") {
        dag.max_clean_up_time_sec = v;
    }
    if let Some(v) = obj.uint(cx, "max_output_size") {
        dag.max_output_size = v;
    }
    dag.hist_retention_days = obj.uint(cx, "hist_retention_days");
    dag.hist_retention_runs = obj.uint(cx, "hist_retention_runs");
    if let (Some(a), Some(b)) = (
        obj.key("hist_retention_days"),
        obj.key("hist_retention_runs"),
    ) {
        cx.push(
            Problem::error(
                Code::Conflict,
                b.span,
                "`hist_retention_days` and `hist_retention_runs` cannot both be set",
            )
            .related(a.span, "also set here")
            .help("keep the one you mean"),
        );
    }
    dag.log_dir = obj.string(cx, "log_dir");
    dag.log_output = log_output(cx, obj);
    dag.working_dir = obj.string(cx, "working_dir");
    dag.shell = obj.get("shell").and_then(|n| shell(cx, n));
}

pub fn log_output(cx: &mut Cx, obj: &Obj) -> LogOutput {
    match obj
        .choice(cx, "log_output", &["separate", "merged"])
        .as_deref()
    {
        Some("merged") => LogOutput::Merged,
        _ => LogOutput::Separate,
    }
}

/// `type`, or graph when absent and any step uses `depends` or is a router (Dagu 2 rejects
/// such files; Dagu 1 ran them, and so do we).
fn resolve_type(cx: &mut Cx, obj: &Obj, dag: &Dag, metas: &[StepMeta]) -> DagType {
    let inferred = metas.iter().any(|m| !m.depends.is_empty())
        || dag
            .steps
            .iter()
            .any(|s| matches!(s.action, trellis_core::Action::Router { .. }));
    match obj.choice(cx, "type", &["chain", "graph"]).as_deref() {
        Some("graph") => DagType::Graph,
        Some(_) => {
            let key = obj.key("type").map_or(obj.span, |k| k.span);
            for meta in metas {
                chain_depends_warning(cx, meta, key);
            }
            DagType::Chain
        }
        None if inferred => DagType::Graph,
        None => DagType::Chain,
    }
}

/// `depends` in a `type: chain` DAG: Dagu 2 rejects it, Dagu 1.17–1.21 ran it with the
/// step's own `depends` in place of the edge to the step before (see `graph::chain_edges`).
fn chain_depends_warning(cx: &mut Cx, meta: &StepMeta, type_key: Span) {
    let Some(span) = meta.explicit else { return };
    let at = meta.depends.first().map_or(span, |(_, s)| *s);
    let waits = if meta.depends.is_empty() {
        "this step waits for no other step"
    } else {
        "this step waits only for the steps it lists"
    };
    cx.push(
        Problem::warning(
            Code::LegacyKey,
            at,
            format!(
                "`depends` in a `type: chain` DAG is Dagu 1 syntax: {waits}, not for the step before it"
            ),
        )
        .related(type_key, "the DAG is declared a chain here")
        .help("Dagu 2 rejects this file: use `type: graph` and list every dependency"),
    );
}

fn decode_handlers(cx: &mut Cx, node: &Node, scx: &StepCx) -> Handlers {
    let Some(obj) = cx.object(node, fields::HANDLERS, "handler_on") else {
        return Handlers::default();
    };
    let mut one = |name: &str, label: &str| {
        obj.get(name)
            .and_then(|n| {
                decode_step(
                    cx,
                    n,
                    label,
                    &StepCx {
                        defaults: &Defaults::default(),
                        step_types: scx.step_types,
                        actions: scx.actions,
                    },
                )
            })
            .map(|(s, _)| Box::new(s))
    };
    Handlers {
        init: one("init", "onInit"),
        success: one("success", "onSuccess"),
        failure: one("failure", "onFailure"),
        abort: one("abort", "onAbort"),
        exit: one("exit", "onExit"),
        wait: one("wait", "onWait"),
    }
}

/// Labels from `a,b`, `k=v`, a list of those, or a map.
fn decode_labels(cx: &mut Cx, node: &Node) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    let mut add = |text: &str| {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let value = v.scalar_text().unwrap_or_default();
                out.insert(k.scalar_text().unwrap_or_default(), value);
            }
        }
        _ => {
            for text in strings(cx, node) {
                add(&text);
            }
        }
    }
    out
}

pub fn env_list(cx: &mut Cx, node: &Node) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value, span) in pairs(cx, node) {
        if !trellis_core::params::is_identifier(&key) {
            cx.push(
                Problem::error(
                    Code::InvalidValue,
                    span,
                    format!("`{key}` is not a valid environment variable name"),
                )
                .help("use letters, digits and `_`, not starting with a digit"),
            );
        }
        out.push((key, value));
    }
    out
}

pub fn worker_selector(cx: &mut Cx, node: &Node) -> WorkerSelector {
    match &node.value {
        Value::Str { text, .. } if text == "local" => WorkerSelector::Local,
        Value::Map(entries) => {
            let mut labels = IndexMap::new();
            for (k, v) in entries {
                match (k.scalar_text(), v.scalar_text()) {
                    (Some(k), Some(v)) => {
                        labels.insert(k, v);
                    }
                    _ => cx.wrong_type(v, "a label value (string, number or boolean)"),
                }
            }
            WorkerSelector::Labels(labels)
        }
        Value::Null => WorkerSelector::Any,
        _ => {
            cx.push(
                Problem::error(
                    Code::InvalidValue,
                    node.span,
                    "worker_selector must be a map of labels or `local`",
                )
                .help("e.g. `worker_selector: {gpu: \"true\"}`"),
            );
            WorkerSelector::Any
        }
    }
}

pub fn shell(cx: &mut Cx, node: &Node) -> Option<Shell> {
    let words: Vec<String> = match &node.value {
        Value::Str { text, .. } => text.split_whitespace().map(String::from).collect(),
        Value::Seq(_) => strings(cx, node),
        _ => {
            cx.wrong_type(node, "a string or a list of strings");
            return None;
        }
    };
    let mut words = words.into_iter();
    let program = words.next()?;
    Some(Shell {
        program,
        args: words.collect(),
    })
}

pub fn duration(cx: &mut Cx, node: &Node) -> Option<u64> {
    let text = node.scalar_text()?;
    match trellis_core::duration::parse_millis(&text) {
        Ok(ms) => Some(ms),
        Err(e) => {
            cx.push(
                Problem::error(
                    Code::InvalidDuration,
                    node.span,
                    format!("invalid duration `{text}`: {e}"),
                )
                .help("write a duration such as 90s, 30m, 6h or 2d12h"),
            );
            None
        }
    }
}

/// DAG-level settings kept in the model but not acted on yet. Those that would change what
/// A DAG-level executor option as stored: `container: name` is Dagu's short form of
/// `container: {exec: name}`.
fn executor_option(key: &str, node: &Node) -> serde_json::Value {
    match (key, node.as_str()) {
        ("container", Some(name)) => serde_json::json!({ "exec": name }),
        _ => node.to_json(),
    }
}

/// runs or where (a `container:` every step should run in) are refused; notification
/// settings, whose absence changes nothing that runs, load with a warning.
fn not_acted_on(cx: &mut Cx, obj: &Obj, key: &str) {
    let Some(span) = obj.key(key).map(|k| k.span) else {
        return;
    };
    let notice = matches!(
        key,
        "smtp" | "mail_on" | "error_mail" | "info_mail" | "wait_mail" | "otel" | "webhook"
    );
    let problem = if notice {
        Problem::warning(
            Code::Unsupported,
            span,
            format!("`{key}` is not acted on yet: no mail, trace or webhook is sent for this DAG"),
        )
    } else {
        Problem::error(
            Code::Unsupported,
            span,
            format!("`{key}` at the DAG level is not acted on by this version of trellis"),
        )
        .help("remove it, or set it on the steps whose type supports it")
    };
    cx.push(problem);
}
