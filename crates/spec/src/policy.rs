//! Step policies and guards: preconditions, retry_policy, repeat_policy, continue_on and
//! stop signals.

use trellis_core::pattern::Pattern;
use trellis_core::{Condition, ContinueOn, RepeatMode, RepeatPolicy, RetryPolicy};

use crate::decode::{Cx, Field};
use crate::diag::{Code, Problem};
use crate::fields;
use crate::yaml::{Node, Value};

/// Preconditions: a string, a condition object, or a list of either.
pub fn decode_condition_list(cx: &mut Cx, node: &Node) -> Vec<Condition> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| decode_condition(cx, i))
            .collect(),
        Value::Null => Vec::new(),
        _ => decode_condition(cx, node).into_iter().collect(),
    }
}

pub(crate) fn decode_condition(cx: &mut Cx, node: &Node) -> Option<Condition> {
    if let Some(text) = node.scalar_text() {
        return Some(Condition {
            condition: text,
            expected: None,
            negate: false,
        });
    }
    let obj = cx.object(node, fields::CONDITION_FIELDS, "a precondition")?;
    let Some(condition) = obj.string(cx, "condition") else {
        cx.push(Problem::error(
            Code::MissingField,
            node.span,
            "a precondition needs `condition`",
        ));
        return None;
    };
    let expected = obj
        .string(cx, "expected")
        .map(|t| pattern(cx, obj.get("expected"), &t));
    Some(Condition {
        condition,
        expected,
        negate: obj.bool(cx, "negate").unwrap_or(false),
    })
}

/// Decodes a literal-or-`re:` text, reporting an invalid regex at `node`.
pub(crate) fn pattern(cx: &mut Cx, node: Option<&Node>, text: &str) -> Pattern {
    let pattern = Pattern::parse(text);
    if let (Some(node), Err(e)) = (node, pattern.check()) {
        cx.invalid(node, format!("invalid regular expression: {e}"));
    }
    pattern
}

pub fn decode_retry(cx: &mut Cx, node: &Node, table: &'static [Field]) -> Option<RetryPolicy> {
    let obj = cx.object(node, table, "retry_policy")?;
    let limit = obj.uint(cx, "limit");
    if limit.is_none() && !obj.has("limit") {
        cx.push(
            Problem::error(Code::MissingField, node.span, "retry_policy needs `limit`")
                .help("e.g. `limit: 3`"),
        );
    }
    Some(RetryPolicy {
        limit: limit.unwrap_or(0).min(u32::MAX as u64) as u32,
        interval_sec: obj.number(cx, "interval_sec").unwrap_or(0.0),
        backoff: obj.get("backoff").and_then(|n| backoff(cx, n)),
        max_interval_sec: obj.number(cx, "max_interval_sec"),
        exit_codes: obj
            .get("exit_code")
            .map(|n| exit_codes(cx, n))
            .unwrap_or_default(),
    })
}

pub(crate) fn backoff(cx: &mut Cx, node: &Node) -> Option<f64> {
    match node.value {
        Value::Bool(true) => Some(2.0),
        Value::Bool(false) | Value::Null => None,
        Value::Int(i) if i > 1 => Some(i as f64),
        Value::Float(f) if f > 1.0 && f.is_finite() => Some(f),
        _ => {
            cx.invalid(
                node,
                "backoff must be true, false or a multiplier greater than 1",
            );
            None
        }
    }
}

pub(crate) fn exit_codes(cx: &mut Cx, node: &Node) -> Vec<i32> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    items
        .into_iter()
        .filter_map(
            |n| match n.scalar_text().and_then(|t| t.trim().parse::<i32>().ok()) {
                Some(code) => Some(code),
                None => {
                    cx.wrong_type(n, "an exit code (integer)");
                    None
                }
            },
        )
        .collect()
}

pub(crate) fn decode_repeat(cx: &mut Cx, node: &Node) -> Option<RepeatPolicy> {
    let obj = cx.object(node, fields::REPEAT_FIELDS, "repeat_policy")?;
    let condition = obj.string(cx, "condition").map(|c| Condition {
        condition: c,
        expected: obj
            .get("expected")
            .and_then(Node::scalar_text)
            .map(|t| pattern(cx, obj.get("expected"), &t)),
        negate: false,
    });
    let exit_codes = obj
        .get("exit_code")
        .map(|n| exit_codes(cx, n))
        .unwrap_or_default();
    let mode = match obj.get("repeat").map(|n| &n.value) {
        Some(Value::Str { text, .. }) if text == "until" => RepeatMode::Until,
        Some(Value::Str { text, .. }) if text == "while" => RepeatMode::While,
        Some(Value::Bool(_)) | None => RepeatMode::While,
        Some(_) => {
            let n = obj.get("repeat").unwrap_or(node);
            cx.push(Problem::error(
                Code::BadEnum,
                n.span,
                "`repeat` must be true, \"while\" or \"until\"",
            ));
            RepeatMode::While
        }
    };
    if matches!(
        obj.get("repeat").map(|n| &n.value),
        Some(Value::Bool(false))
    ) {
        return None;
    }
    Some(RepeatPolicy {
        mode,
        interval_sec: obj.number(cx, "interval_sec").unwrap_or(0.0),
        limit: obj.uint(cx, "limit").map(|l| l.min(u32::MAX as u64) as u32),
        backoff: obj.get("backoff").and_then(|n| backoff(cx, n)),
        max_interval_sec: obj.number(cx, "max_interval_sec"),
        condition,
        exit_codes,
    })
}

pub(crate) fn decode_continue_on(cx: &mut Cx, node: &Node) -> ContinueOn {
    match node.as_str() {
        Some("failed" | "failure") => {
            return ContinueOn {
                failure: true,
                ..ContinueOn::default()
            };
        }
        Some("skipped") => {
            return ContinueOn {
                skipped: true,
                ..ContinueOn::default()
            };
        }
        Some(other) => {
            cx.push(
                Problem::error(
                    Code::BadEnum,
                    node.span,
                    format!("`{other}` is not a valid continue_on"),
                )
                .help("use `failed`, `skipped`, or a mapping"),
            );
            return ContinueOn::default();
        }
        None => {}
    }
    let Some(obj) = cx.object(node, fields::CONTINUE_FIELDS, "continue_on") else {
        return ContinueOn::default();
    };
    let output = obj
        .strings(cx, "output")
        .iter()
        .map(|t| pattern(cx, obj.get("output"), t))
        .collect();
    ContinueOn {
        failure: obj.bool(cx, "failure").unwrap_or(false),
        skipped: obj.bool(cx, "skipped").unwrap_or(false),
        exit_codes: obj
            .get("exit_code")
            .map(|n| exit_codes(cx, n))
            .unwrap_or_default(),
        output,
        mark_success: obj.bool(cx, "mark_success").unwrap_or(false),
    }
}

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

pub(crate) fn signal(cx: &mut Cx, node: &Node) -> Option<String> {
    let text = node.scalar_text()?;
    let bare = text.trim_start_matches("SIG");
    let numeric = text.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
    if SIGNALS.contains(&bare) || numeric {
        return Some(text);
    }
    cx.push(
        Problem::error(
            Code::BadEnum,
            node.span,
            format!("`{text}` is not a signal name"),
        )
        .help("use a name such as SIGTERM, SIGINT or SIGKILL"),
    );
    None
}
