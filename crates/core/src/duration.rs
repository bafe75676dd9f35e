//! Human durations such as `90s`, `1h30m`, `2d12h` (used by `catchup_window` and friends).

/// Why a duration was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty duration")]
    Empty,
    /// More milliseconds than a `u64` holds.
    #[error("duration is too large")]
    TooLarge,
    /// Carries the rest of the text from where a number was expected.
    #[error("expected a number at `{0}`")]
    ExpectedNumber(String),
    #[error("missing unit after `{0}` (use ms, s, m, h, d or w)")]
    MissingUnit(u64),
    #[error("unknown unit `{0}` (use ms, s, m, h, d or w)")]
    UnknownUnit(String),
}

/// Parses a duration made of `<number><unit>` groups, units `ms`, `s`, `m`, `h`, `d`, `w`.
/// A bare integer means seconds. Returns the total in milliseconds.
pub fn parse_millis(text: &str) -> Result<u64, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::Empty);
    }
    if let Ok(secs) = text.parse::<u64>() {
        return secs.checked_mul(1000).ok_or(Error::TooLarge);
    }
    let bytes = text.as_bytes();
    let (mut i, mut total) = (0usize, 0u64);
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(Error::ExpectedNumber(text[start..].to_string()));
        }
        // All digits, so a parse failure is overflow.
        let n: u64 = text[start..i].parse().map_err(|_| Error::TooLarge)?;
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
            "" => return Err(Error::MissingUnit(n)),
            other => return Err(Error::UnknownUnit(other.to_string())),
        };
        let part = n.checked_mul(unit).ok_or(Error::TooLarge)?;
        total = total.checked_add(part).ok_or(Error::TooLarge)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::{Error, parse_millis};

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
        assert_eq!(parse_millis(""), Err(Error::Empty));
        assert_eq!(parse_millis("6x"), Err(Error::UnknownUnit("x".into())));
        assert_eq!(
            parse_millis("6x").unwrap_err().to_string(),
            "unknown unit `x` (use ms, s, m, h, d or w)"
        );
        assert_eq!(parse_millis("h"), Err(Error::ExpectedNumber("h".into())));
        assert_eq!(parse_millis("5"), Ok(5_000));
        assert_eq!(parse_millis("5m3"), Err(Error::MissingUnit(3)));
        assert!(parse_millis("10").is_ok());
        assert_eq!(parse_millis("99999999999999999999d"), Err(Error::TooLarge));
    }
}
