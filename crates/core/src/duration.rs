//! Human durations such as `90s`, `1h30m`, `2d12h` (used by `catchup_window` and friends).

/// Parses a duration made of `<number><unit>` groups, units `ms`, `s`, `m`, `h`, `d`, `w`.
/// A bare integer means seconds. Returns the total in milliseconds.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| "duration is too large".into());
    }
    let bytes = text.as_bytes();
    let (mut i, mut total) = (0usize, 0u64);
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("expected a number at `{}`", &text[start..]));
        }
        let n: u64 = text[start..i]
            .parse()
            .map_err(|_| "duration is too large".to_string())?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &text[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "missing unit after `{n}` (use ms, s, m, h, d or w)"
                ));
            }
            other => return Err(format!("unknown unit `{other}` (use ms, s, m, h, d or w)")),
        };
        let part = n.checked_mul(unit).ok_or("duration is too large")?;
        total = total.checked_add(part).ok_or("duration is too large")?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse_millis("90s"), Ok(90_000));
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("2d12h"), Ok(216_000_000));
        assert_eq!(parse_millis("15"), Ok(15_000));
        assert_eq!(parse_millis("250ms"), Ok(250));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_millis("").is_err());
        assert!(parse_millis("6x").unwrap_err().contains("unknown unit"));
        assert!(parse_millis("h").is_err());
        assert!(parse_millis("10").is_ok());
        assert!(parse_millis("99999999999999999999d").is_err());
    }
}
