//! Custom step types (`step_types:`): a named template of a step whose `{$input: name}`
//! placeholders are filled from the using step's `with:`, checked against `input_schema`.

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::yaml::{Node, Value};

/// When `step` uses a custom type, returns the step with the template merged in.
pub fn expand(cx: &mut Cx, step: &Node, step_types: Option<&Node>) -> Option<Node> {
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
