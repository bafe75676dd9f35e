//! Dagu 2.15's step spellings — `run: <command>` and `action: <name>` with `with:` —
//! rewritten into the older form the step decoder reads (`command`/`script`, `type` +
//! `with`, `call`, `exec`, `value` + `routes`), as Dagu itself normalises them. The
//! rewrite keeps every node's span, so a problem found later still points into the file.

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::yaml::{Node, Span, Value};

/// Keys that say what a step runs in the older form; none may sit beside `run`/`action`.
const LEGACY: &[&str] = &[
    "call", "command", "config", "exec", "executor", "params", "routes", "script", "shell", "type",
    "value",
];

/// The built-in actions Trellis runs, with the step type each becomes.
pub const ACTIONS: &[(&str, &str)] = &[
    ("http.request", "http"),
    ("ssh.run", "ssh"),
    ("sftp.upload", "sftp"),
    ("sftp.download", "sftp"),
    ("docker.run", "docker"),
    ("container.run", "container"),
    ("kubernetes.run", "kubernetes"),
    ("k8s.run", "k8s"),
    ("jq.filter", "jq"),
    ("mail.send", "mail"),
    ("log.write", "log"),
    ("state.get", "state"),
    ("state.set", "state"),
    ("state.delete", "state"),
    ("state.list", "state"),
    ("state.diff", "state"),
    ("wait.duration", "wait"),
    ("wait.until", "wait"),
    ("wait.file", "wait"),
    ("wait.http", "wait"),
    ("dag.run", "dag"),
    ("dag.enqueue", "dag_enqueue"),
    ("router.route", "router"),
    ("exec", "exec"),
    ("noop", "noop"),
];

/// Dagu actions whose executors Trellis does not have: named in the error.
const NOT_BUILT: &[&str] = &[
    "chat.",
    "harness.",
    "postgres.",
    "sqlite.",
    "redis.",
    "s3.",
    "file.",
    "artifact.",
    "archive.",
    "data.",
    "git.",
    "outputs.",
    "template.",
    "human.",
];

/// Whether `name` is the name of a DAG Trellis can call (`run: <dag>` of Dagu 1.x):
/// installed by the binary to look in the dags dir.
pub type DagExists = fn(&str) -> bool;

static DAG_EXISTS: std::sync::OnceLock<DagExists> = std::sync::OnceLock::new();

/// Lets `run: <name>` read as a sub-DAG call when `name` is a DAG in the dags dir.
pub fn set_dag_exists(check: DagExists) {
    let _ = DAG_EXISTS.set(check);
}

fn text(s: impl Into<String>, span: Span) -> Node {
    Node {
        value: Value::Str {
            text: s.into(),
            plain: false,
        },
        span,
    }
}

fn key(k: &str, span: Span) -> Node {
    Node {
        value: Value::Str {
            text: k.to_string(),
            plain: true,
        },
        span,
    }
}

/// A step in the older form when it uses `run:` or `action:`; `None` when it uses neither
/// (or when it is broken: the problems are pushed).
pub fn normalize(cx: &mut Cx, step: &Node, local_dags: &[String]) -> Option<Node> {
    let Value::Map(entries) = &step.value else {
        return None;
    };
    let run = step.get("run");
    let action = step.get("action");
    if run.is_none() && action.is_none() {
        return None;
    }
    let (head_key, head) = entries
        .iter()
        .find(|(k, _)| matches!(k.as_str(), Some("run" | "action")))?;
    if let (Some(r), Some(a)) = (run, action) {
        cx.push(
            Problem::error(Code::Conflict, a.span, "`run` and `action` both say what the step does")
                .related(r.span, "run set here")
                .help("`run:` is a shell command; `action:` names a built-in action with its inputs under `with:`"),
        );
        return None;
    }
    let mut rest: Vec<(Node, Node)> = entries
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), Some("run" | "action" | "with")))
        .cloned()
        .collect();
    let with = step.get("with");
    let rewritten = match run {
        Some(run) => run_step(cx, run, with, local_dags),
        None => action_step(cx, head, with),
    }?;
    // A sub-DAG read of `run:` keeps its `params:`; anything else may not mix forms.
    let mixing = rest.iter().find(|(k, _)| {
        let name = k.as_str().unwrap_or("");
        LEGACY.contains(&name)
            && !(name == "params" && rewritten.iter().any(|(k, _)| k.as_str() == Some("call")))
    });
    if let Some((k, _)) = mixing {
        cx.push(
            Problem::error(
                Code::Conflict,
                k.span,
                format!(
                    "`{}` is the older spelling and cannot sit beside `{}`",
                    k.as_str().unwrap_or(""),
                    head_key.as_str().unwrap_or("")
                ),
            )
            .related(head_key.span, "the step says what it does here")
            .help("write the step in one form: `run:`/`action:` with `with:`, or the older keys"),
        );
        return None;
    }
    rest.extend(rewritten);
    Some(Node {
        value: Value::Map(rest),
        span: step.span,
    })
}

/// `run:`: a command, a script (several lines), commands (a list), or — Dagu 1.x — the
/// name of a DAG to call.
fn run_step(
    cx: &mut Cx,
    run: &Node,
    with: Option<&Node>,
    local_dags: &[String],
) -> Option<Vec<(Node, Node)>> {
    let mut out = Vec::new();
    match &run.value {
        Value::Str { text: t, .. }
            if with.is_none() && !t.contains('\n') && is_dag(t, local_dags) =>
        {
            cx.push(
                Problem::warning(
                    Code::LegacyKey,
                    run.span,
                    format!("`run: {t}` is read as a call of the DAG `{t}` (Dagu 1.x); Dagu 2.7+ reads `run:` as a shell command"),
                )
                .help(format!("write `action: dag.run` with `with: {{dag: {t}}}` (or `call: {t}`) to say so")),
            );
            out.push((key("call", run.span), run.clone()));
            return Some(out);
        }
        Value::Str { text: t, .. } if t.trim_end().contains('\n') => {
            out.push((key("script", run.span), run.clone()));
        }
        Value::Str { .. } | Value::Seq(_) => out.push((key("command", run.span), run.clone())),
        _ => {
            cx.wrong_type(run, "a command (a string) or commands (a list)");
            return None;
        }
    }
    if let Some(with) = with {
        out.extend(run_with(cx, with)?);
    }
    Some(out)
}

/// `with:` of a `run:` step holds only its shell.
fn run_with(cx: &mut Cx, with: &Node) -> Option<Vec<(Node, Node)>> {
    let Value::Map(entries) = &with.value else {
        if !with.is_null() {
            cx.wrong_type(with, "a mapping");
        }
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    let mut words = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            Some("shell") => match &v.value {
                Value::Seq(items) => words.extend(items.iter().cloned()),
                _ => words.push(v.clone()),
            },
            Some("shell_args") => match &v.value {
                Value::Seq(items) => words.extend(items.iter().cloned()),
                _ => words.push(v.clone()),
            },
            Some("shell_packages") => out.push((k.clone(), v.clone())),
            _ => {
                cx.push(
                    Problem::error(
                        Code::UnknownKey,
                        k.span,
                        format!("`with:` of a `run:` step takes only `shell`, `shell_args` and `shell_packages`, not `{}`", k.as_str().unwrap_or("")),
                    )
                    .help("put step options beside `run:`, not under `with:`"),
                );
                return None;
            }
        }
    }
    if !words.is_empty() {
        out.push((
            key("shell", with.span),
            Node {
                value: Value::Seq(words),
                span: with.span,
            },
        ));
    }
    Some(out)
}

fn is_dag(name: &str, local_dags: &[String]) -> bool {
    let word = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    word && (local_dags.iter().any(|d| d == name) || DAG_EXISTS.get().is_some_and(|f| f(name)))
}

fn action_step(cx: &mut Cx, action: &Node, with: Option<&Node>) -> Option<Vec<(Node, Node)>> {
    let Some(name) = action.as_str().map(str::trim).filter(|n| !n.is_empty()) else {
        cx.wrong_type(action, "an action name such as `http.request`");
        return None;
    };
    let Some((_, kind)) = ACTIONS.iter().find(|(a, _)| *a == name) else {
        unknown(cx, action, name);
        return None;
    };
    let span = action.span;
    let entries: Vec<(Node, Node)> = match with.map(|w| &w.value) {
        Some(Value::Map(entries)) => entries.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            if let Some(w) = with {
                cx.wrong_type(w, "a mapping of the action's inputs");
            }
            return None;
        }
    };
    let with_span = with.map_or(span, |w| w.span);
    let get = |k: &str| {
        entries
            .iter()
            .find(|(n, _)| n.as_str() == Some(k))
            .map(|(_, v)| v)
    };
    let without = |drop: &[&str]| -> Vec<(Node, Node)> {
        entries
            .iter()
            .filter(|(k, _)| !drop.contains(&k.as_str().unwrap_or("")))
            .cloned()
            .collect()
    };
    let map = |entries: Vec<(Node, Node)>| Node {
        value: Value::Map(entries),
        span: with_span,
    };
    let typed = |entries: Vec<(Node, Node)>| -> Vec<(Node, Node)> {
        vec![
            (key("type", span), text(*kind, span)),
            (key("with", with_span), map(entries)),
        ]
    };
    let op = name.split_once('.').map_or("", |(_, op)| op);
    let need = |cx: &mut Cx, k: &str| -> Option<()> {
        if get(k).is_none() {
            cx.push(
                Problem::error(
                    Code::MissingField,
                    with_span,
                    format!("action `{name}` needs `{k}` under `with:`"),
                )
                .label("these inputs"),
            );
            return None;
        }
        Some(())
    };
    Some(match name {
        "ssh.run" | "docker.run" | "container.run" | "kubernetes.run" | "k8s.run" => {
            if name == "ssh.run" {
                need(cx, "command")?;
            }
            let mut out = typed(without(&["command"]));
            if let Some(command) = get("command") {
                let field = match &command.value {
                    Value::Str { text: t, .. } if t.trim_end().contains('\n') => "script",
                    _ => "command",
                };
                out.push((key(field, command.span), command.clone()));
            }
            out
        }
        "http.request" => {
            need(cx, "method")?;
            need(cx, "url")?;
            typed(entries.clone())
        }
        "jq.filter" => {
            need(cx, "filter")?;
            typed(entries.clone())
        }
        "log.write" => {
            need(cx, "message")?;
            typed(entries.clone())
        }
        "sftp.upload" | "sftp.download" => {
            if let Some(d) = get("direction").and_then(Node::as_str).filter(|d| *d != op) {
                cx.push(Problem::error(
                    Code::Conflict,
                    get("direction").map_or(span, |n| n.span),
                    format!("`direction: {d}` contradicts the action `{name}`"),
                ));
                return None;
            }
            let mut w = without(&["direction"]);
            w.push((key("direction", span), text(op, span)));
            typed(w)
        }
        "state.get" | "state.set" | "state.delete" | "state.list" | "state.diff"
        | "wait.duration" | "wait.until" | "wait.file" | "wait.http" => {
            let mut w = without(&["operation"]);
            w.push((key("operation", span), text(op, span)));
            typed(w)
        }
        "dag.run" | "dag.enqueue" => return dag_action(cx, name, span, with_span, &entries),
        "router.route" => {
            need(cx, "value")?;
            need(cx, "routes")?;
            let mut out = vec![(key("type", span), text("router", span))];
            out.extend(entries.clone());
            out
        }
        "exec" => {
            need(cx, "command")?;
            vec![(key("exec", with_span), map(entries.clone()))]
        }
        "noop" => {
            if !entries.is_empty() {
                cx.push(Problem::error(
                    Code::InvalidValue,
                    with_span,
                    "`noop` takes no inputs",
                ));
                return None;
            }
            vec![(key("type", span), text("noop", span))]
        }
        _ => typed(entries.clone()),
    })
}

/// `dag.run` / `dag.enqueue`: `call:` and `params:`; an enqueue is `type: dag_enqueue`
/// with its queue under `with:`.
fn dag_action(
    cx: &mut Cx,
    name: &str,
    span: Span,
    with_span: Span,
    entries: &[(Node, Node)],
) -> Option<Vec<(Node, Node)>> {
    let enqueue = name == "dag.enqueue";
    let mut out = Vec::new();
    let mut queue = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            Some("dag") => out.push((key("call", k.span), v.clone())),
            Some("params") => out.push((k.clone(), v.clone())),
            Some("queue") if enqueue => queue.push((k.clone(), v.clone())),
            other => {
                let takes = if enqueue {
                    "dag, params, queue"
                } else {
                    "dag, params"
                };
                cx.push(Problem::error(
                    Code::UnknownKey,
                    k.span,
                    format!(
                        "action `{name}` has no input `{}` (it takes {takes})",
                        other.unwrap_or("")
                    ),
                ));
                return None;
            }
        }
    }
    if !out.iter().any(|(k, _)| k.as_str() == Some("call")) {
        cx.push(
            Problem::error(
                Code::MissingField,
                with_span,
                format!("action `{name}` needs `dag` under `with:`"),
            )
            .label("these inputs"),
        );
        return None;
    }
    if enqueue {
        out.push((key("type", span), text("dag_enqueue", span)));
        let with = Node {
            value: Value::Map(queue),
            span: with_span,
        };
        out.push((key("with", with_span), with));
    }
    Some(out)
}

fn unknown(cx: &mut Cx, action: &Node, name: &str) {
    if NOT_BUILT.iter().any(|p| name.starts_with(p)) {
        cx.push(
            Problem::error(
                Code::Unsupported,
                action.span,
                format!("action `{name}` cannot run in this version of trellis: its executor is not built yet"),
            )
            .help(format!("the actions that run: {}", names())),
        );
        return;
    }
    let mut problem = Problem::error(
        Code::BadEnum,
        action.span,
        format!("unknown action `{name}`"),
    )
    .help(format!(
        "built-in actions: {}; or declare it under `actions:`",
        names()
    ));
    if let Some((best, _)) = ACTIONS
        .iter()
        .find(|(a, _)| strsim::jaro_winkler(name, a) >= 0.85)
    {
        problem = problem.help(format!("did you mean `{best}`?"));
    }
    cx.push(problem);
}

fn names() -> String {
    ACTIONS
        .iter()
        .map(|(a, _)| *a)
        .collect::<Vec<_>>()
        .join(", ")
}
