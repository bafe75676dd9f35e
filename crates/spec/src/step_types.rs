//! Custom step types (`step_types:`, used as `type: <name>`) and custom actions (Dagu
//! 2.15's `actions:`, used as `action: <name>`): a named template of a step whose
//! `{$input: name}` placeholders (typed) and `{{ .input.name }}` / `{{ json .input.name }}`
//! texts are filled from the using step's `with:`, checked against `input_schema`.

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::yaml::{Node, Value};

/// When `step` uses a custom type, returns the step with the template merged in.
pub fn expand(
    cx: &mut Cx,
    step: &Node,
    step_types: Option<&Node>,
    actions: Option<&Node>,
) -> Option<Node> {
    if let Some(name) = step.get("action").and_then(Node::as_str)
        && let Some(def) = actions.and_then(|a| a.get(name))
    {
        return expand_action(cx, step, def, name);
    }
    let kind = step.get("type")?.as_str()?;
    let def = step_types?.get(kind)?;
    let template = match def.get("template") {
        Some(t) if matches!(t.value, Value::Map(_)) => t,
        _ => {
            cx.push(Problem::error(
                Code::MissingField,
                def.span,
                format!("step type `{kind}` needs a `template` mapping"),
            ));
            return None;
        }
    };
    let inputs = inputs(cx, step, def, kind)?;
    let filled = substitute(template, &inputs);
    let Value::Map(mut entries) = filled.value else {
        return None;
    };
    let Value::Map(outer) = &step.value else {
        return None;
    };
    for (k, v) in outer {
        let key = k.as_str().unwrap_or_default();
        if key == "with" || key == "config" {
            continue;
        }
        if key == "type" {
            let builtin = def.get("type").cloned().unwrap_or_else(|| Node {
                value: Value::Str {
                    text: "command".into(),
                    plain: true,
                },
                span: v.span,
            });
            entries.retain(|(ek, _)| ek.as_str() != Some("type"));
            entries.push((k.clone(), builtin));
            continue;
        }
        entries.retain(|(ek, _)| ek.as_str() != Some(key));
        entries.push((k.clone(), v.clone()));
    }
    Some(Node {
        value: Value::Map(entries),
        span: step.span,
    })
}

/// `action: <name>` of a custom action: its template (holding `run` or `action`), texts
/// rendered, with the using step's other keys over it.
fn expand_action(cx: &mut Cx, step: &Node, def: &Node, name: &str) -> Option<Node> {
    let template = match def.get("template") {
        Some(t) if matches!(t.value, Value::Map(_)) => t,
        _ => {
            cx.push(Problem::error(
                Code::MissingField,
                def.span,
                format!("action `{name}` needs a `template` mapping"),
            ));
            return None;
        }
    };
    let runs = ["run", "action"]
        .iter()
        .filter(|k| template.get(k).is_some())
        .count();
    if runs != 1 {
        cx.push(
            Problem::error(
                Code::InvalidValue,
                template.span,
                format!("the template of action `{name}` needs exactly one of `run` or `action`"),
            )
            .label("this template"),
        );
        return None;
    }
    let inputs = inputs(cx, step, def, name)?;
    let filled = render(cx, &substitute(template, &inputs), &inputs)?;
    let (Value::Map(mut entries), Value::Map(outer)) = (filled.value, &step.value) else {
        return None;
    };
    if let (None, Some(d)) = (step.get("description"), def.get("description")) {
        entries.push((text_node("description", d.span), d.clone()));
    }
    for (k, v) in outer {
        let key = k.as_str().unwrap_or_default();
        if matches!(key, "with" | "config" | "action") {
            continue;
        }
        entries.retain(|(ek, _)| ek.as_str() != Some(key));
        entries.push((k.clone(), v.clone()));
    }
    Some(Node {
        value: Value::Map(entries),
        span: step.span,
    })
}

fn text_node(text: &str, span: crate::yaml::Span) -> Node {
    Node {
        value: Value::Str {
            text: text.into(),
            plain: true,
        },
        span,
    }
}

/// Fills `{{ .input.a.b }}` and `{{ json .input.a }}` in every text of `node`; other
/// template code is refused (Dagu's Go templates are not run here).
fn render(cx: &mut Cx, node: &Node, inputs: &[(String, Node)]) -> Option<Node> {
    static PART: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{\{-?\s*(json\s+)?\.input((?:\.[A-Za-z0-9_]+)*)\s*-?\}\}")
            .expect("a valid regex")
    });
    let value = match &node.value {
        Value::Str { text, plain } if text.contains("{{") => {
            let mut out = String::new();
            let mut last = 0;
            for caps in PART.captures_iter(text) {
                let whole = caps.get(0)?;
                out.push_str(&text[last..whole.start()]);
                let found = lookup(inputs, &caps[2]);
                let json = found
                    .as_ref()
                    .map_or(serde_json::Value::Null, Node::to_json);
                out.push_str(&match (caps.get(1).is_some(), json) {
                    (true, json) => json.to_string(),
                    (false, serde_json::Value::String(s)) => s,
                    (false, serde_json::Value::Null) => String::new(),
                    (false, other) => other.to_string(),
                });
                last = whole.end();
            }
            out.push_str(&text[last..]);
            if out.contains("{{") {
                cx.push(
                    Problem::error(
                        Code::Unsupported,
                        node.span,
                        "this template text uses Go template code Trellis does not run",
                    )
                    .help("use `{{ .input.name }}`, `{{ json .input.name }}` or `{$input: name}`"),
                );
                return None;
            }
            Value::Str {
                text: out,
                plain: *plain,
            }
        }
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| Some((k.clone(), render(cx, v, inputs)?)))
                .collect::<Option<_>>()?,
        ),
        Value::Seq(items) => Value::Seq(
            items
                .iter()
                .map(|i| render(cx, i, inputs))
                .collect::<Option<_>>()?,
        ),
        other => other.clone(),
    };
    Some(Node {
        value,
        span: node.span,
    })
}

/// The input at `.a.b` (a path below the input's name).
fn lookup(inputs: &[(String, Node)], path: &str) -> Option<Node> {
    let mut parts = path.trim_start_matches('.').split('.');
    let first = parts.next()?;
    let mut node = inputs.iter().find(|(n, _)| n == first)?.1.clone();
    for part in parts {
        node = match &node.value {
            Value::Seq(items) => items.get(part.parse::<usize>().ok()?)?.clone(),
            _ => node.get(part)?.clone(),
        };
    }
    Some(node)
}

/// The step's `with:` values plus schema defaults, checked for required and unknown inputs.
fn inputs(cx: &mut Cx, step: &Node, def: &Node, kind: &str) -> Option<Vec<(String, Node)>> {
    let with = step.get("with").or_else(|| step.get("config"));
    let mut values: Vec<(String, Node)> = match with.map(|w| &w.value) {
        Some(Value::Map(entries)) => entries
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.clone()))
            .collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            if let Some(w) = with {
                cx.wrong_type(w, "a mapping of inputs");
            }
            return None;
        }
    };
    let schema = def.get("input_schema");
    let props = schema.and_then(|s| s.get("properties"));
    if let Some(Node {
        value: Value::Map(props),
        ..
    }) = props
    {
        for (k, prop) in props {
            let name = k.scalar_text().unwrap_or_default();
            if let (false, Some(default)) =
                (values.iter().any(|(n, _)| *n == name), prop.get("default"))
            {
                values.push((name, default.clone()));
            }
        }
    }
    let mut ok = true;
    for name in schema
        .and_then(|s| s.get("required"))
        .map(|r| crate::decode::strings(cx, r))
        .unwrap_or_default()
    {
        if !values.iter().any(|(n, _)| *n == name) {
            cx.push(
                Problem::error(
                    Code::MissingField,
                    with.unwrap_or(step).span,
                    format!("step type `{kind}` requires input `{name}`"),
                )
                .help(format!("add `{name}:` under `with:`")),
            );
            ok = false;
        }
    }
    let closed = schema
        .and_then(|s| s.get("additionalProperties"))
        .is_some_and(|a| a.value == Value::Bool(false));
    if let (
        true,
        Some(Node {
            value: Value::Map(entries),
            ..
        }),
    ) = (closed, with)
    {
        for (k, _) in entries {
            let name = k.scalar_text().unwrap_or_default();
            if props.is_none_or(|p| p.get(&name).is_none()) {
                cx.push(Problem::error(
                    Code::UnknownKey,
                    k.span,
                    format!("step type `{kind}` has no input `{name}`"),
                ));
                ok = false;
            }
        }
    }
    ok.then_some(values)
}

fn substitute(node: &Node, inputs: &[(String, Node)]) -> Node {
    let value = match &node.value {
        Value::Map(entries) => {
            if let (1, Some(name)) = (
                entries.len(),
                node.get("$input").and_then(Node::scalar_text),
            ) {
                if let Some((_, v)) = inputs.iter().find(|(n, _)| *n == name) {
                    return v.clone();
                }
                return Node {
                    value: Value::Null,
                    span: node.span,
                };
            }
            Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute(v, inputs)))
                    .collect(),
            )
        }
        Value::Seq(items) => Value::Seq(items.iter().map(|i| substitute(i, inputs)).collect()),
        other => other.clone(),
    };
    Node {
        value,
        span: node.span,
    }
}
