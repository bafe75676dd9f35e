//! `secrets:`: which variables a run resolves when it starts, and from where. Dagu's
//! providers that read this machine (`env`, `file`) are accepted; the cloud and vault
//! providers, which need clients and credentials Trellis does not have yet, are refused
//! at load so that no run starts without the secrets its file asks for.

use trellis_core::{Secret, SecretProvider};

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::fields;
use crate::yaml::{Node, Value};

/// The `secrets:` list; every problem is reported against its node.
pub fn decode_secrets(cx: &mut Cx, node: &Node) -> Vec<Secret> {
    let Value::Seq(items) = &node.value else {
        cx.wrong_type(node, "a list of secrets ({name, provider, key})");
        return Vec::new();
    };
    let mut out: Vec<Secret> = Vec::new();
    for item in items {
        let Some(secret) = decode_one(cx, item) else {
            continue;
        };
        if out.iter().any(|s| s.name == secret.name) {
            cx.invalid(item, format!("secret `{}` is declared twice", secret.name));
            continue;
        }
        out.push(secret);
    }
    out
}

fn decode_one(cx: &mut Cx, item: &Node) -> Option<Secret> {
    let obj = cx.object(item, fields::SECRET_FIELDS, "secret")?;
    let missing = |cx: &mut Cx, field: &str| {
        let message = format!("a secret needs `{field}`");
        cx.push(Problem::error(Code::MissingField, item.span, message));
    };
    let name = obj.string(cx, "name");
    let key = obj.string(cx, "key");
    let provider = obj.get("provider");
    let (Some(name), Some(key), Some(provider)) = (name, key, provider) else {
        for field in ["name", "provider", "key"] {
            if !obj.has(field) {
                missing(cx, field);
            }
        }
        return None;
    };
    if !valid_var_name(&name) {
        let node = obj.get("name").unwrap_or(item);
        cx.invalid(
            node,
            format!("`{name}` is not a variable name (letters, digits, `_`)"),
        );
        return None;
    }
    let provider = match provider.scalar_text().as_deref() {
        Some("env") => SecretProvider::Env,
        Some("file") => SecretProvider::File,
        other => {
            let what = other.unwrap_or("that");
            cx.push(
                Problem::error(
                    Code::Unsupported,
                    provider.span,
                    format!("secret provider `{what}` is not supported"),
                )
                .help("use `env` (a variable of the process running the DAG) or `file` (a file's contents)"),
            );
            return None;
        }
    };
    Some(Secret {
        name,
        provider,
        key,
    })
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
