//! How the UI writes times, durations and statuses. Relative times ("3 min ago") are
//! rendered here and refreshed in the browser, which also shows the exact time (in the
//! viewer's time zone) on hover.

use trellis_core::status::Status;

/// A point in time as a page shows it.
#[derive(Clone, Debug, Default)]
pub struct When {
    /// RFC 3339, for `<time datetime>` and the script; empty when unknown.
    pub iso: String,
    /// "3 min ago", "in 2 h"; "—" when unknown.
    pub rel: String,
    /// The exact time in UTC, until the script shows it in local time.
    pub exact: String,
}

impl When {
    pub fn of(text: Option<&str>) -> When {
        let Some(t) = text.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
            return When {
                rel: "—".into(),
                ..When::default()
            };
        };
        let now = jiff::Timestamp::now();
        When {
            iso: t.to_string(),
            rel: relative(now.as_second() - t.as_second()),
            exact: t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        }
    }

    pub fn known(&self) -> bool {
        !self.iso.is_empty()
    }
}

/// `seconds` ago (negative: in the future), in the unit a person would use.
pub fn relative(seconds: i64) -> String {
    let (ago, s) = (seconds >= 0, seconds.unsigned_abs());
    let amount = if s < 10 {
        return if ago {
            "just now".into()
        } else {
            "in a few seconds".into()
        };
    } else if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s < 86_400 {
        format!("{} h", s / 3600)
    } else if s < 86_400 * 60 {
        format!("{} d", s / 86_400)
    } else {
        format!("{} mo", s / (86_400 * 30))
    };
    if ago {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// A duration for tables: "850 ms", "12.4 s", "3 min 05 s", "2 h 10 min".
pub fn duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return String::new();
    };
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// Milliseconds between two stored times, or from `start` to now while still going.
pub fn between(start: Option<&str>, end: Option<&str>, going: bool) -> Option<u64> {
    let parse = |t: Option<&str>| t?.parse::<jiff::Timestamp>().ok();
    let start = parse(start)?;
    let end = match parse(end) {
        Some(end) => end,
        None if going => jiff::Timestamp::now(),
        None => return None,
    };
    u64::try_from(end.duration_since(start).as_millis()).ok()
}

/// Labels as `key=value` (a bare label as its key).
pub fn labels(labels: &indexmap::IndexMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

/// A status as people read it: "partially succeeded".
pub fn label(status: Status) -> String {
    status.as_str().replace('_', " ")
}

/// Percent-encodes everything but unreserved characters and `/`, for a query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A step's handle, short: `slurm job 42`, `docker 3f2a9c1b0d4e` (a container id cut to
/// 12 characters, as `docker ps` shows it), `docker exec 1a2b…`.
pub fn handle(h: &trellis_core::status::Handle) -> String {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    match (h.executor.as_str(), h.id.strip_prefix("exec:")) {
        ("slurm", _) => format!("slurm job {}", h.id),
        (kind, Some(exec)) => format!("{kind} exec {}", short(exec)),
        (kind, None) => format!("{kind} {}", short(&h.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(relative(3), "just now");
        assert_eq!(relative(45), "45 s ago");
        assert_eq!(relative(180), "3 min ago");
        assert_eq!(relative(-7200), "in 2 h");
        assert_eq!(relative(86_400 * 3), "3 d ago");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(None), "");
        assert_eq!(duration(Some(850)), "850 ms");
        assert_eq!(duration(Some(12_400)), "12.4 s");
        assert_eq!(duration(Some(185_000)), "3 min 05 s");
        assert_eq!(duration(Some(7_800_000)), "2 h 10 min");
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(percent_encode("/dags/a b?x=1&y"), "/dags/a%20b%3Fx%3D1%26y");
    }

    #[test]
    fn handles_read_as_people_say_them() {
        let h = |executor: &str, id: &str| trellis_core::status::Handle {
            executor: executor.into(),
            id: id.into(),
        };
        assert_eq!(handle(&h("slurm", "42")), "slurm job 42");
        assert_eq!(
            handle(&h("docker", "3f2a9c1b0d4e5f60718")),
            "docker 3f2a9c1b0d4e"
        );
        assert_eq!(
            handle(&h("docker", "exec:abcdef0123456789")),
            "docker exec abcdef012345"
        );
    }
}
