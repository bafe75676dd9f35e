//! Decoding of `params:` in its five shapes into [`ParamSpec`], checking that defaults fit
//! their own declarations.

use trellis_core::params::{self, ParamDef, ParamSpec, ParamType, is_identifier};

use crate::decode::{Cx, strings};
use crate::diag::{Code, Problem};
use crate::fields;
use crate::yaml::{Node, Value};

pub fn decode_params(cx: &mut Cx, node: &Node) -> ParamSpec {
    let defs = match &node.value {
        Value::Null => Vec::new(),
        Value::Str { text, .. } => from_string(cx, node, text),
        Value::Seq(items) => items.iter().flat_map(|i| from_item(cx, i)).collect(),
        Value::Map(_) if node.get("type").and_then(Node::as_str) == Some("object") => {
            inline_schema(cx, node)
        }
        Value::Map(_) if node.get("schema").is_some() => {
            cx.push(
                Problem::error(
                    Code::Unsupported,
                    node.span,
                    "params read from an external `schema:` file or URL are not accepted",
                )
                .help("inline the schema: `params: {type: object, properties: {...}}`"),
            );
            Vec::new()
        }
        Value::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| named(cx, k, v))
            .collect(),
        _ => node
            .scalar_text()
            .map(|t| from_string(cx, node, &t))
            .unwrap_or_default(),
    };
    for def in &defs {
        check_default(cx, node, def);
    }
    ParamSpec { defs }
}

fn from_string(cx: &mut Cx, node: &Node, text: &str) -> Vec<ParamDef> {
    match params::parse_tokens(text) {
        Ok(tokens) => tokens
            .into_iter()
            .map(|t| ParamDef {
                name: t.name,
                default: Some(t.value),
                ..ParamDef::default()
            })
            .collect(),
        Err(e) => {
            cx.invalid(node, e.to_string());
            Vec::new()
        }
    }
}

fn from_item(cx: &mut Cx, item: &Node) -> Vec<ParamDef> {
    match &item.value {
        Value::Str { text, .. } if is_identifier(text) => {
            vec![ParamDef {
                name: Some(text.clone()),
                ..ParamDef::default()
            }]
        }
        Value::Map(_) if item.get("name").is_some() => rich(cx, item).into_iter().collect(),
        Value::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| named(cx, k, v))
            .collect(),
        _ => match item.scalar_text() {
            Some(text) => from_string(cx, item, &text),
            None => {
                cx.wrong_type(
                    item,
                    "a param (`NAME`, `NAME=value`, `{NAME: value}` or `{name: ...}`)",
                );
                Vec::new()
            }
        },
    }
}

fn named(cx: &mut Cx, key: &Node, value: &Node) -> Option<ParamDef> {
    let name = key.scalar_text()?;
    if !is_identifier(&name) {
        cx.push(
            Problem::error(
                Code::InvalidParam,
                key.span,
                format!("`{name}` is not a valid param name"),
            )
            .help("use letters, digits and `_`, not starting with a digit"),
        );
    }
    Some(ParamDef {
        name: Some(name),
        default: default_text(value),
        ..ParamDef::default()
    })
}

fn default_text(node: &Node) -> Option<String> {
    match &node.value {
        Value::Null => None,
        Value::Seq(_) | Value::Map(_) => Some(node.to_json().to_string()),
        _ => node.scalar_text(),
    }
}

/// `{name, type, default, enum, required, ...}`.
fn rich(cx: &mut Cx, node: &Node) -> Option<ParamDef> {
    let obj = cx.object(node, fields::PARAM_FIELDS, "a param")?;
    let name = obj.string(cx, "name")?;
    let kind = match obj
        .choice(cx, "type", &["string", "integer", "number", "boolean"])
        .as_deref()
    {
        Some("integer") => ParamType::Integer,
        Some("number") => ParamType::Number,
        Some("boolean") => ParamType::Boolean,
        _ => ParamType::String,
    };
    Some(ParamDef {
        name: Some(name),
        default: obj.get("default").and_then(default_text),
        kind,
        required: obj.bool(cx, "required").unwrap_or(false),
        choices: obj.strings(cx, "enum"),
        description: obj.string(cx, "description"),
        minimum: obj
            .get("minimum")
            .and_then(|_| obj.number_signed(cx, "minimum")),
        maximum: obj
            .get("maximum")
            .and_then(|_| obj.number_signed(cx, "maximum")),
        min_length: obj.uint(cx, "min_length").map(|n| n as usize),
        max_length: obj.uint(cx, "max_length").map(|n| n as usize),
        pattern: pattern(cx, obj.get("pattern")),
    })
}

fn pattern(cx: &mut Cx, node: Option<&Node>) -> Option<String> {
    let node = node?;
    let text = node.scalar_text()?;
    if let Err(e) = regex::Regex::new(&text) {
        cx.invalid(node, format!("invalid regular expression: {e}"));
    }
    Some(text)
}

/// `params: {type: object, properties: {...}, required: [...]}`.
fn inline_schema(cx: &mut Cx, node: &Node) -> Vec<ParamDef> {
    let required = node
        .get("required")
        .map(|n| strings(cx, n))
        .unwrap_or_default();
    let Some(Value::Map(props)) = node.get("properties").map(|n| &n.value) else {
        cx.push(Problem::error(
            Code::MissingField,
            node.span,
            "an inline params schema needs `properties`",
        ));
        return Vec::new();
    };
    let mut defs = Vec::new();
    for (key, prop) in props {
        let name = key.scalar_text().unwrap_or_default();
        let get = |k: &str| prop.get(k);
        let kind = match get("type").and_then(Node::as_str) {
            Some("integer") => ParamType::Integer,
            Some("number") => ParamType::Number,
            Some("boolean") => ParamType::Boolean,
            Some("string") | None => ParamType::String,
            Some(other) => {
                if let Some(t) = get("type") {
                    cx.push(
                        Problem::error(
                            Code::BadEnum,
                            t.span,
                            format!("param type `{other}` is not supported"),
                        )
                        .help("use string, integer, number or boolean"),
                    );
                }
                ParamType::String
            }
        };
        let number = |k: &str| {
            get(k)
                .and_then(|n| n.scalar_text())
                .and_then(|t| t.parse::<f64>().ok())
        };
        defs.push(ParamDef {
            required: required.contains(&name),
            default: get("default").and_then(default_text),
            kind,
            choices: get("enum").map(|n| strings(cx, n)).unwrap_or_default(),
            description: get("description").and_then(Node::scalar_text),
            minimum: number("minimum"),
            maximum: number("maximum"),
            min_length: number("minLength").map(|n| n as usize),
            max_length: number("maxLength").map(|n| n as usize),
            pattern: pattern(cx, get("pattern")),
            name: Some(name),
        });
    }
    if let Some(req) = node.get("required") {
        for name in &required {
            if !defs.iter().any(|d| d.name.as_deref() == Some(name)) {
                cx.invalid(
                    req,
                    format!("`{name}` is required but not declared in `properties`"),
                );
            }
        }
    }
    defs
}

/// A default must itself be a valid value.
fn check_default(cx: &mut Cx, node: &Node, def: &ParamDef) {
    let (Some(name), Some(default)) = (&def.name, &def.default) else {
        return;
    };
    let spec = ParamSpec {
        defs: vec![def.clone()],
    };
    let token = params::ParamToken {
        name: Some(name.clone()),
        value: default.clone(),
    };
    if let Err(errors) = params::resolve(&spec, &[token], &regex_match) {
        let span = default_node(node, name).map_or(node.span, |n| n.span);
        for e in errors {
            cx.push(
                Problem::error(
                    Code::InvalidParam,
                    span,
                    format!("default of param `{name}` is invalid: {}", e.error),
                )
                .label("this default"),
            );
        }
    }
}

/// The node that gives param `name` its default, in any of the `params:` shapes.
fn default_node<'n>(node: &'n Node, name: &str) -> Option<&'n Node> {
    let in_map = |n: &'n Node| match &n.value {
        Value::Map(_) if n.get("name").and_then(Node::as_str) == Some(name) => n.get("default"),
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.scalar_text().as_deref() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    };
    match &node.value {
        Value::Seq(items) => items.iter().find_map(|item| match &item.value {
            Value::Map(_) => in_map(item),
            _ => item
                .scalar_text()
                .filter(|t| t.split('=').next().map(str::trim) == Some(name))
                .map(|_| item),
        }),
        Value::Map(_) => match node.get("properties") {
            Some(props) if node.get("type").and_then(Node::as_str) == Some("object") => {
                props.get(name).map(|p| p.get("default").unwrap_or(p))
            }
            _ => in_map(node),
        },
        _ => None,
    }
}

/// `pattern:` checks for [`params::resolve`].
pub fn regex_match(pattern: &str, value: &str) -> Result<bool, params::Error> {
    regex::Regex::new(pattern)
        .map(|r| r.is_match(value))
        .map_err(|e| params::Error::BadPattern {
            pattern: pattern.to_string(),
            message: e.to_string(),
        })
}

/// Step `params:` given as a map or list, rendered to the `K=V ...` string form.
pub fn params_string(cx: &mut Cx, node: &Node) -> String {
    let spec = decode_params(cx, node);
    let values: Vec<params::ParamValue> = spec
        .defs
        .into_iter()
        .enumerate()
        .map(|(i, d)| params::ParamValue {
            positional: d.name.is_none(),
            name: d.name.unwrap_or_else(|| (i + 1).to_string()),
            value: d.default.unwrap_or_default(),
        })
        .collect();
    params::render(&values)
}
