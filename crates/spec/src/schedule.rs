//! Decoding of `schedule:` (cron strings, lists, start/stop/restart, one-off `at`).

use trellis_core::cron::CronExpr;
use trellis_core::{Schedule, Schedules};

use crate::decode::Cx;
use crate::diag::{Code, Problem};
use crate::fields;
use crate::yaml::{Node, Value};

pub fn decode_schedule(cx: &mut Cx, node: &Node, timezone: Option<&str>) -> Schedules {
    let mut out = Schedules::default();
    match &node.value {
        Value::Map(_) if node.get("kind").is_none() => {
            let Some(obj) = cx.object(node, fields::SCHEDULE_FIELDS, "schedule") else {
                return out;
            };
            for (name, list) in [
                ("start", &mut out.start),
                ("stop", &mut out.stop),
                ("restart", &mut out.restart),
            ] {
                if let Some(n) = obj.get(name) {
                    *list = entries(cx, n, timezone);
                }
            }
        }
        _ => out.start = entries(cx, node, timezone),
    }
    out
}

fn entries(cx: &mut Cx, node: &Node, timezone: Option<&str>) -> Vec<Schedule> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| entry(cx, i, timezone))
            .collect(),
        Value::Null => Vec::new(),
        _ => entry(cx, node, timezone).into_iter().collect(),
    }
}

fn entry(cx: &mut Cx, node: &Node, timezone: Option<&str>) -> Option<Schedule> {
    if let Some(text) = node.as_str() {
        return cron(cx, node, text, timezone);
    }
    let obj = cx.object(node, fields::SCHEDULE_ENTRY_FIELDS, "a schedule entry")?;
    match obj.choice(cx, "kind", &["cron", "at"]).as_deref() {
        Some("at") => {
            let at = obj.string(cx, "at");
            let Some(at) = at else {
                cx.push(
                    Problem::error(
                        Code::MissingField,
                        node.span,
                        "a one-off schedule needs `at`",
                    )
                    .help("e.g. `at: 2026-12-01T09:00:00Z`"),
                );
                return None;
            };
            if let Err(e) = check_rfc3339(&at) {
                let at_node = obj.get("at").unwrap_or(node);
                cx.push(
                    Problem::error(
                        Code::InvalidValue,
                        at_node.span,
                        format!("`{at}` is not an RFC 3339 time: {e}"),
                    )
                    .help("e.g. `2026-12-01T09:00:00Z` or `2026-12-01T09:00:00+01:00`"),
                );
                return None;
            }
            Some(Schedule::At { at })
        }
        Some(_) => {
            let expr_node = obj.get("expression");
            match (expr_node, obj.string(cx, "expression")) {
                (Some(n), Some(text)) => cron(cx, n, &text, timezone),
                _ => {
                    cx.push(Problem::error(
                        Code::MissingField,
                        node.span,
                        "a cron schedule needs `expression`",
                    ));
                    None
                }
            }
        }
        None => {
            cx.push(Problem::error(
                Code::MissingField,
                node.span,
                "a schedule entry needs `kind` (cron or at)",
            ));
            None
        }
    }
}

fn cron(cx: &mut Cx, node: &Node, text: &str, timezone: Option<&str>) -> Option<Schedule> {
    match CronExpr::parse(text) {
        Ok(expr) => {
            let timezone = expr.timezone().or(timezone).map(String::from);
            Some(Schedule::Cron {
                expression: text.to_string(),
                timezone,
            })
        }
        Err(e) => {
            cx.push(
                Problem::error(Code::InvalidCron, node.span, format!("invalid cron expression `{text}`: {e}"))
                    .help("use 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @daily/@hourly/..."),
            );
            None
        }
    }
}

/// Checks `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn check_rfc3339(text: &str) -> Result<(), crate::Error> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| {
        text.get(r)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(99)
    };
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return Err(crate::Error::TimeShape);
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let zone_ok = match &text[i..] {
        "Z" | "z" => true,
        z => {
            z.len() == 6
                && matches!(z.as_bytes()[0], b'+' | b'-')
                && digits(i + 1..i + 3)
                && b[i + 3] == b':'
                && digits(i + 4..i + 6)
        }
    };
    if !zone_ok {
        return Err(crate::Error::TimeZone);
    }
    let (month, day, hour, minute, second) =
        (num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(crate::Error::TimeOutOfRange);
    }
    Ok(())
}
