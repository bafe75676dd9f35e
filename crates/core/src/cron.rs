//! Cron expressions: parsing them and working out when they fire next.
//!
//! Schedules in workflow files are cron strings. [`CronExpr::parse`] turns one into a set of
//! `u64` bitmasks (one per field) and [`CronExpr::next_after`] finds the next matching
//! [`CivilTime`]. All maths is on civil (wall-clock) time with no clock and no timezone
//! database: the caller converts "now" into the zone named by [`CronExpr::timezone`], asks
//! for the next fire time, and maps the answer back to an instant (handling DST itself).
//!
//! Syntax: 5 fields (`minute hour day-of-month month day-of-week`) or 6 with a leading
//! seconds field; `*`, `?` (day fields only), lists `a,b`, ranges `a-b`, steps `*/n`,
//! `a-b/n` and `a/n`; `JAN`-`DEC` and `SUN`-`SAT` in any case; day-of-week `7` is Sunday;
//! the macros `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly`;
//! and an optional `CRON_TZ=<zone> ` or `TZ=<zone> ` prefix. As in Vixie cron, when both
//! day fields are restricted (neither is `*`/`?`) a day matches if either of them does.

use std::fmt;
use std::str::FromStr;

/// How far ahead [`CronExpr::next_after`] searches. Eight years rather than five because
/// `0 0 29 2 *` has an eight-year gap around 2100 (not a leap year) and must still fire.
const HORIZON_YEARS: i32 = 8;

/// Why a cron expression was rejected. Every message is lowercase and concrete, e.g.
/// `minute field: value 61 is out of range 0-59`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("timezone prefix has an empty zone name")]
    EmptyZone,
    #[error("empty cron expression")]
    Empty,
    #[error("expected 5 or 6 fields, found {0}")]
    FieldCount(usize),
    #[error("unknown macro '{0}'")]
    UnknownMacro(String),
    #[error("macro '{0}' must be the whole expression")]
    MacroNotAlone(String),
    /// One field is wrong: `name` is the field's (`minute`, `day-of-week`...), `index` as
    /// for [`Error::field`].
    #[error("{name} field: {problem}")]
    Field {
        name: &'static str,
        index: usize,
        problem: FieldError,
    },
}

impl Error {
    /// 0-based index of the offending whitespace-separated field (see [`field_span`]).
    pub fn field(&self) -> Option<usize> {
        match self {
            Error::UnknownMacro(_) => Some(0),
            Error::MacroNotAlone(_) => Some(1),
            Error::Field { index, .. } => Some(*index),
            Error::EmptyZone | Error::Empty | Error::FieldCount(_) => None,
        }
    }
}

/// What is wrong inside one field of a cron expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("empty list item")]
    EmptyItem,
    #[error("'?' is only allowed in the day-of-month and day-of-week fields")]
    Question,
    #[error("range {from}-{to} starts after it ends")]
    Backwards { from: String, to: String },
    #[error("invalid step '{0}'")]
    InvalidStep(String),
    #[error("step must be at least 1")]
    ZeroStep,
    /// A value missing from a range or before a step (`-5`, `/5`); carries the whole item.
    #[error("missing value in '{0}'")]
    MissingValue(String),
    #[error("value {value} is out of range {min}-{max}")]
    OutOfRange { value: String, min: u8, max: u8 },
    #[error("invalid value '{0}'")]
    InvalidValue(String),
}

/// A wall-clock date and time with no zone. Field order makes the derived `Ord` chronological.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl CivilTime {
    pub const fn new(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Self {
        CivilTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    /// True when every field is in range (no leap seconds, the day fits the month).
    pub fn is_valid(&self) -> bool {
        (1..=12).contains(&self.month)
            && (1..=days_in_month(self.year, self.month)).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }

    /// Day of the week, 0 = Sunday .. 6 = Saturday (proleptic Gregorian calendar).
    pub fn weekday(&self) -> u8 {
        let (y, m, d) = (self.year.into(), self.month.into(), self.day.into());
        // 1970-01-01 was a Thursday; rem_euclid keeps earlier dates in 0..7.
        (days_from_civil(y, m, d) + 4).rem_euclid(7) as u8
    }

    /// Same day at the given time.
    fn with_time(self, hour: u8, minute: u8, second: u8) -> Self {
        CivilTime::new(self.year, self.month, self.day, hour, minute, second)
    }
}

impl fmt::Display for CivilTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = (self.year, self.month, self.day);
        let (h, mi, s) = (self.hour, self.minute, self.second);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
    }
}

/// Gregorian leap year rule: every 4th year, except centuries not divisible by 400.
pub fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days in `month` (1-12) of `year`; 0 for a month outside 1-12.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm); i64 so no i32 year can overflow it.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Static description of one cron field: its name for messages and its value limits.
struct Field {
    name: &'static str,
    min: u8,
    /// Largest value accepted in the text (7 for day-of-week, an alias for Sunday).
    max: u8,
    /// Where `*` and `a/n` stop. Only day-of-week differs from `max`, so that `1/2`
    /// does not wrap round to Sunday through the alias 7.
    top: u8,
    /// Names for `min`, `min + 1`, ... (months and weekdays).
    names: Names,
    /// Whether `?` is allowed (the two day fields).
    question: bool,
}

type Names = &'static [&'static str];

const fn field(name: &'static str, min: u8, max: u8, top: u8, names: Names, q: bool) -> Field {
    Field {
        name,
        min,
        max,
        top,
        names,
        question: q,
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// All six fields in 6-field order; 5-field expressions start at index 1.
const FIELDS: [Field; 6] = [
    field("second", 0, 59, 59, &[], false),
    field("minute", 0, 59, 59, &[], false),
    field("hour", 0, 23, 23, &[], false),
    field("day-of-month", 1, 31, 31, &[], true),
    field("month", 1, 12, 12, &MONTHS, false),
    field("day-of-week", 0, 7, 6, &DAYS, true),
];

/// A parsed cron expression: one bitmask per field, bit `n` set when value `n` matches.
#[derive(Clone, Debug, PartialEq)]
pub struct CronExpr {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// Sunday is bit 0 only; the alias 7 is folded in while parsing.
    days_of_week: u64,
    /// Whether each day field was written as `*`/`?`, for the Vixie dom-or-dow rule.
    dom_star: bool,
    dow_star: bool,
    has_seconds: bool,
    timezone: Option<String>,
}

impl CronExpr {
    /// Parses a 5- or 6-field expression or a macro, with an optional timezone prefix.
    pub fn parse(text: &str) -> Result<CronExpr, Error> {
        let (zone, offset) = split_timezone(text);
        if zone == Some("") {
            return Err(Error::EmptyZone);
        }
        let (words, from_macro) = expand_macro(&split_fields(&text[offset..]))?;
        let skip = match words.len() {
            5 => 1,
            6 => 0,
            n => return Err(Error::FieldCount(n)),
        };
        // Without a seconds field the expression fires at second 0 only.
        let mut masks = [1u64; 6];
        let mut stars = [false; 6];
        for (i, word) in words.iter().enumerate() {
            let spec = &FIELDS[i + skip];
            // A macro's fields are not in the text: point at the macro itself.
            let index = if from_macro { 0 } else { i };
            (masks[i + skip], stars[i + skip]) =
                parse_field(word, spec).map_err(|problem| Error::Field {
                    name: spec.name,
                    index,
                    problem,
                })?;
        }
        let m = masks;
        // Fold day-of-week 7 into 0 so that matching only ever checks 0-6.
        let sunday = (m[5] >> 7) & 1;
        Ok(CronExpr {
            seconds: m[0],
            minutes: m[1],
            hours: m[2],
            days_of_month: m[3],
            months: m[4],
            days_of_week: (m[5] & !(1 << 7)) | sunday,
            dom_star: stars[3],
            dow_star: stars[5],
            has_seconds: skip == 0,
            timezone: zone.map(str::to_owned),
        })
    }

    /// The zone from a `CRON_TZ=`/`TZ=` prefix, unvalidated.
    pub fn timezone(&self) -> Option<&str> {
        self.timezone.as_deref()
    }

    /// True for 6-field expressions (leading seconds field).
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// Whether `t` is a valid civil time at which this expression fires.
    pub fn matches(&self, t: CivilTime) -> bool {
        t.is_valid()
            && has(self.months, t.month)
            && self.day_matches(t)
            && has(self.hours, t.hour)
            && has(self.minutes, t.minute)
            && has(self.seconds, t.second)
    }

    fn day_matches(&self, t: CivilTime) -> bool {
        let dom = has(self.days_of_month, t.day);
        let dow = has(self.days_of_week, t.weekday());
        // An unrestricted field matches every day, so AND reduces to the other field;
        // when both are restricted the Vixie rule says either one is enough.
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// First matching time strictly after `t`, or `None` if `t` is invalid or nothing
    /// matches within the search horizon (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: CivilTime) -> Option<CivilTime> {
        if !t.is_valid() {
            return None;
        }
        let limit = t.year.saturating_add(HORIZON_YEARS);
        let mut c = next_second(t)?;
        while c.year <= limit {
            let n = self.skip(c)?;
            if n == c {
                return Some(c);
            }
            c = n;
        }
        None
    }

    /// The earliest time at or after `c` that the first mismatching unit allows: a month,
    /// day or hour that cannot match is skipped whole, and inside a unit we jump straight
    /// to the next set bit. Returns `c` itself when it matches.
    fn skip(&self, c: CivilTime) -> Option<CivilTime> {
        if !has(self.months, c.month) {
            return Some(match next_bit(self.months, c.month) {
                Some(month) => CivilTime::new(c.year, month, 1, 0, 0, 0),
                None => CivilTime::new(c.year.checked_add(1)?, 1, 1, 0, 0, 0),
            });
        }
        if !self.day_matches(c) {
            return next_day(c);
        }
        let (h, m, s) = (c.hour, c.minute, c.second);
        if !has(self.hours, h) {
            return next_bit(self.hours, h)
                .map_or_else(|| next_day(c), |h| Some(c.with_time(h, 0, 0)));
        }
        if !has(self.minutes, m) {
            return next_bit(self.minutes, m)
                .map_or_else(|| next_hour(c), |m| Some(c.with_time(h, m, 0)));
        }
        next_bit(self.seconds, s).map_or_else(|| next_minute(c), |s| Some(c.with_time(h, m, s)))
    }
}

impl FromStr for CronExpr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CronExpr::parse(text)
    }
}

/// Byte offset and length of whitespace-separated `field` of `text` (counted after any
/// timezone prefix, like [`Error::field`]), for pointing at it in an error report.
pub fn field_span(text: &str, field: usize) -> Option<(usize, usize)> {
    let (_, offset) = split_timezone(text);
    let (start, word) = *split_fields(&text[offset..]).get(field)?;
    Some((offset + start, word.len()))
}

/// Finds a `CRON_TZ=zone`/`TZ=zone` prefix; returns the zone and where the fields start.
fn split_timezone(text: &str) -> (Option<&str>, usize) {
    let trimmed = text.trim_start();
    let rest = trimmed.strip_prefix("CRON_TZ=");
    let Some(rest) = rest.or_else(|| trimmed.strip_prefix("TZ=")) else {
        return (None, 0);
    };
    let zone_start = text.len() - rest.len();
    let zone_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    (Some(&rest[..zone_len]), zone_start + zone_len)
}

/// Splits on Unicode whitespace, keeping each word's byte offset.
fn split_fields(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, ch) in text.char_indices() {
        match (ch.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// Replaces a lone `@macro` by its fields; also reports whether that happened.
fn expand_macro<'a>(words: &[(usize, &'a str)]) -> Result<(Vec<&'a str>, bool), Error> {
    let word = match words {
        [] => return Err(Error::Empty),
        [(_, word), ..] if word.starts_with('@') => *word,
        _ => return Ok((words.iter().map(|&(_, w)| w).collect(), false)),
    };
    let body = match word.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return Err(Error::UnknownMacro(word.to_string())),
    };
    if words.len() > 1 {
        return Err(Error::MacroNotAlone(word.to_string()));
    }
    Ok((body.split(' ').collect(), true))
}

/// Parses one field into a bitmask plus whether it was an unrestricted `*`/`?`.
fn parse_field(text: &str, spec: &Field) -> Result<(u64, bool), FieldError> {
    let mut mask = 0;
    let mut star = false;
    for item in text.split(',') {
        let (bits, item_star) = parse_item(item, spec)?;
        mask |= bits;
        star |= item_star;
    }
    Ok((mask, star))
}

/// One list item: `*`, `?`, `v` or `a-b`, each optionally followed by `/step`.
fn parse_item(item: &str, spec: &Field) -> Result<(u64, bool), FieldError> {
    if item.is_empty() {
        return Err(FieldError::EmptyItem);
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(step)?)),
        None => (item, None),
    };
    let wildcard = range == "*" || range == "?";
    if range == "?" && !spec.question {
        return Err(FieldError::Question);
    }
    let (lo, hi) = if wildcard {
        (spec.min, spec.top)
    } else if let Some((a, b)) = range.split_once('-') {
        let (lo, hi) = (parse_value(a, item, spec)?, parse_value(b, item, spec)?);
        if lo > hi {
            let (from, to) = (a.to_string(), b.to_string());
            return Err(FieldError::Backwards { from, to });
        }
        (lo, hi)
    } else {
        let value = parse_value(range, item, spec)?;
        // `a/n` means "from a to the end of the range, every n".
        (value, step.map_or(value, |_| spec.top.max(value)))
    };
    let step = step.unwrap_or(1);
    let mask = (lo..=hi).step_by(step).fold(0u64, |m, v| m | (1 << v));
    Ok((mask, wildcard && step == 1))
}

fn parse_step(text: &str) -> Result<usize, FieldError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::InvalidStep(text.to_string()));
    }
    match text.parse::<usize>() {
        Ok(0) => Err(FieldError::ZeroStep),
        Ok(n) => Ok(n),
        // All digits, so this is overflow: a step that large just keeps the first value.
        Err(_) => Ok(usize::MAX),
    }
}

/// A number or (for month/day-of-week) a three-letter name, checked against the range.
fn parse_value(text: &str, item: &str, spec: &Field) -> Result<u8, FieldError> {
    let (min, max) = (spec.min, spec.max);
    if text.is_empty() {
        return Err(FieldError::MissingValue(item.to_string()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u8>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(FieldError::OutOfRange {
                value: text.to_string(),
                min,
                max,
            }),
        };
    }
    match spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        Some(i) => Ok(min + i as u8),
        None => Err(FieldError::InvalidValue(text.to_string())),
    }
}

fn has(mask: u64, value: u8) -> bool {
    value < 64 && mask & (1 << value) != 0
}

/// Smallest set bit of `mask` at or above `from`.
fn next_bit(mask: u64, from: u8) -> Option<u8> {
    let rest = mask.checked_shr(from.into())?;
    (rest != 0).then(|| from + rest.trailing_zeros() as u8)
}

/// Midnight of the following day, or `None` past the last representable year.
fn next_day(c: CivilTime) -> Option<CivilTime> {
    let (year, month, day) = if c.day < days_in_month(c.year, c.month) {
        (c.year, c.month, c.day + 1)
    } else if c.month < 12 {
        (c.year, c.month + 1, 1)
    } else {
        (c.year.checked_add(1)?, 1, 1)
    };
    Some(CivilTime::new(year, month, day, 0, 0, 0))
}

fn next_hour(c: CivilTime) -> Option<CivilTime> {
    let same_day = (c.hour < 23).then(|| c.with_time(c.hour + 1, 0, 0));
    same_day.or_else(|| next_day(c))
}

fn next_minute(c: CivilTime) -> Option<CivilTime> {
    let same_hour = (c.minute < 59).then(|| c.with_time(c.hour, c.minute + 1, 0));
    same_hour.or_else(|| next_hour(c))
}

fn next_second(c: CivilTime) -> Option<CivilTime> {
    let same_minute = (c.second < 59).then(|| c.with_time(c.hour, c.minute, c.second + 1));
    same_minute.or_else(|| next_minute(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `YYYY-MM-DD HH:MM[:SS]` for compact test tables.
    fn t(text: &str) -> CivilTime {
        let n: Vec<i32> = text
            .split(['-', ' ', ':'])
            .map(|p| p.parse().unwrap())
            .collect();
        let small = |i: usize| n.get(i).map_or(0, |&v| v as u8);
        CivilTime::new(n[0], small(1), small(2), small(3), small(4), small(5))
    }

    fn bits(values: &[u8]) -> u64 {
        values.iter().fold(0, |m, &v| m | (1 << v))
    }

    fn parse(text: &str) -> CronExpr {
        CronExpr::parse(text).unwrap()
    }

    /// Rows of `a | b | c`, skipping blank lines.
    fn rows(table: &str) -> impl Iterator<Item = Vec<&str>> {
        let lines = table.lines().filter(|l| !l.trim().is_empty());
        lines.map(|l| l.split('|').map(str::trim).collect())
    }

    #[test]
    fn parses_each_syntax() {
        let e = parse("5,10 1-3 */10 JAN-mar/2 mon,FRI");
        assert_eq!(e.minutes, bits(&[5, 10]));
        assert_eq!(e.hours, bits(&[1, 2, 3]));
        assert_eq!(e.days_of_month, bits(&[1, 11, 21, 31]));
        assert_eq!(e.months, bits(&[1, 3]));
        assert_eq!(e.days_of_week, bits(&[1, 5]));
        assert_eq!(e.seconds, bits(&[0]));
        assert!(!e.has_seconds() && !e.dom_star && !e.dow_star);
        assert_eq!(parse("50/4 0-10/5 * * *").minutes, bits(&[50, 54, 58]));
        assert_eq!(parse("0 0-10/5 * * *").hours, bits(&[0, 5, 10]));
        assert_eq!(parse("0 0 * * 5-7").days_of_week, bits(&[0, 5, 6]));
        assert_eq!(parse("0 0 * * 1/2").days_of_week, bits(&[1, 3, 5]));
        assert_eq!(parse("0 0 ? * *"), parse("0 0 * * *"));
        assert!(parse("0 0 * * ?").dow_star && !parse("0 0 */2 * *").dom_star);
        assert_eq!(
            "1 2 3 4 5 6".parse::<CronExpr>().map(|e| e.has_seconds()),
            Ok(true)
        );
    }

    #[test]
    fn macros_and_timezone_prefix() {
        assert_eq!(parse("@yearly"), parse("0 0 1 1 *"));
        assert_eq!(parse("@Annually"), parse("0 0 1 1 *"));
        assert_eq!(parse("@monthly"), parse("0 0 1 * *"));
        assert_eq!(parse("@weekly"), parse("0 0 * * 0"));
        assert_eq!(parse("@daily"), parse("@midnight"));
        assert_eq!(parse("@hourly"), parse("0 * * * *"));
        let e = parse("CRON_TZ=Europe/Berlin 0 9 * * MON");
        assert_eq!(e.timezone(), Some("Europe/Berlin"));
        assert_eq!(parse("TZ=UTC @daily").timezone(), Some("UTC"));
        assert_eq!(parse("0 9 * * *").timezone(), None);
    }

    const ERRORS: &str = "
        61 * * * *            | 0 | minute field: value 61 is out of range 0-59
        0 61 * * * *          | 1 | minute field: value 61 is out of range 0-59
        0 */0 * * *           | 1 | hour field: step must be at least 1
        * * *                 | - | expected 5 or 6 fields, found 3
        * * * * * * *         | - | expected 5 or 6 fields, found 7
                              | - | empty cron expression
        TZ= 0 9 * * *         | - | timezone prefix has an empty zone name
        * * * * 8             | 4 | day-of-week field: value 8 is out of range 0-7
        * * 0 * *             | 2 | day-of-month field: value 0 is out of range 1-31
        * * * foo *           | 3 | month field: invalid value 'foo'
        * 5-2 * * *           | 1 | hour field: range 5-2 starts after it ends
        -5 * * * *            | 0 | minute field: missing value in '-5'
        1,,2 * * * *          | 0 | minute field: empty list item
        */x * * * *           | 0 | minute field: invalid step 'x'
        1/2/3 * * * *         | 0 | minute field: invalid step '2/3'
        ? * * * *             | 0 | minute field: '?' is only allowed in the day-of-month and day-of-week fields
        99999999999 * * * *   | 0 | minute field: value 99999999999 is out of range 0-59
        ü * * * *             | 0 | minute field: invalid value 'ü'
        @every 5m             | 0 | unknown macro '@every'
        @daily 5              | 1 | macro '@daily' must be the whole expression
    ";

    #[test]
    fn reports_errors_with_field_index() {
        for row in rows(ERRORS) {
            let e = CronExpr::parse(row[0]).unwrap_err();
            assert_eq!(
                (e.to_string(), e.field()),
                (row[2].to_string(), row[1].parse().ok())
            );
        }
    }

    #[test]
    fn field_span_points_into_original_text() {
        let text = "CRON_TZ=UTC  0  */5 * * *";
        assert_eq!(field_span(text, 0), Some((13, 1)));
        assert_eq!(field_span(text, 1), Some((16, 3)));
        assert_eq!(field_span(text, 5), None);
        assert_eq!(field_span("ä 61", 1), Some((3, 2)));
    }

    #[test]
    fn calendar_helpers() {
        assert!(is_leap_year(2000) && is_leap_year(2024));
        assert!(!is_leap_year(1900) && !is_leap_year(2025));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2025, 4), 30);
        assert_eq!(days_in_month(2025, 13), 0);
        assert_eq!(t("1970-01-01 00:00").weekday(), 4);
        assert_eq!(t("2000-01-01 00:00").weekday(), 6);
        assert_eq!(t("1600-03-01 00:00").weekday(), 3);
        assert_eq!(t("2028-02-29 01:02:03").to_string(), "2028-02-29T01:02:03");
    }

    /// expression | after | expected next fire time (or `none`)
    const NEXT: &str = "
        0 0 13 * FRI        | 2025-07-12 00:00    | 2025-07-13 00:00
        0 0 13 * FRI        | 2025-07-13 00:00    | 2025-07-18 00:00
        0 0 * * 5           | 2025-07-12 00:00    | 2025-07-18 00:00
        0 0 13 * *          | 2025-07-14 00:00    | 2025-08-13 00:00
        0 0 1 * *           | 2025-12-15 08:00    | 2026-01-01 00:00
        59 23 31 12 *       | 2025-12-31 23:59    | 2026-12-31 23:59
        0 0 31 * *          | 2025-04-01 00:00    | 2025-05-31 00:00
        0 0 29 2 *          | 2025-03-01 00:00    | 2028-02-29 00:00
        0 0 29 2 *          | 2097-01-01 00:00    | 2104-02-29 00:00
        0 0 30 2 *          | 2025-01-01 00:00    | none
        * * * * *           | 2025-01-01 10:00:30 | 2025-01-01 10:01
        @hourly             | 2025-01-01 23:00    | 2025-01-02 00:00
        @weekly             | 2025-07-12 00:00    | 2025-07-13 00:00
        @yearly             | 2025-01-01 00:00    | 2026-01-01 00:00
        */15 * * * * *      | 2025-01-01 10:00:07 | 2025-01-01 10:00:15
        */15 * * * * *      | 2025-12-31 23:59:45 | 2026-01-01 00:00:00
        30 0 12 * * *       | 2025-01-01 12:00:30 | 2025-01-02 12:00:30
        * * * * *           | 2025-02-30 00:00    | none
        * * * * *           | 2025-01-01 24:00    | none
    ";

    #[test]
    fn next_after_table() {
        // Friday-or-13th: 2025-07-12 is a Saturday and the 13th a Sunday (dom-or-dow rule).
        for row in rows(NEXT) {
            let want = (row[2] != "none").then(|| t(row[2]));
            assert_eq!(parse(row[0]).next_after(t(row[1])), want, "{row:?}");
        }
    }

    #[test]
    fn extreme_years_do_not_panic() {
        let e = parse("* * * * *");
        let last = CivilTime::new(i32::MAX, 12, 31, 23, 59, 0);
        assert_eq!(e.next_after(last), None);
        let early = CivilTime::new(-1, 6, 1, 0, 0, 0);
        assert_eq!(
            parse("@yearly").next_after(early),
            Some(CivilTime::new(0, 1, 1, 0, 0, 0))
        );
    }

    fn expr_strategy() -> impl Strategy<Value = String> {
        let pick = |opts: &'static [&'static str]| prop::sample::select(opts);
        (
            pick(&["0", "*/20", "15,45", "*", "5-10"]),
            pick(&["*", "0", "*/7", "10-20", "1-30/4", "3,17,40", "59"]),
            pick(&["*", "0", "9-17", "*/6", "23"]),
            pick(&["*", "1", "13", "29", "31", "10-20/3", "?"]),
            pick(&["*", "2", "FEB,jun", "*/5", "12"]),
            pick(&["*", "0", "1-5", "SAT,sun", "7", "?"]),
            any::<bool>(),
        )
            .prop_map(|(s, mi, h, dom, mo, dow, secs)| {
                let base = format!("{mi} {h} {dom} {mo} {dow}");
                if secs { format!("{s} {base}") } else { base }
            })
    }

    fn time_strategy() -> impl Strategy<Value = CivilTime> {
        (1990..2110i32, 1..=12u8, 1..=31u8, 0..24u8, 0..60u8, 0..60u8).prop_map(
            |(y, mo, d, h, mi, s)| CivilTime::new(y, mo, d.min(days_in_month(y, mo)), h, mi, s),
        )
    }

    proptest! {
        #[test]
        fn next_after_is_later_and_first(text in expr_strategy(), t in time_strategy()) {
            let e = parse(&text);
            if let Some(n) = e.next_after(t) {
                prop_assert!(n > t && e.matches(n));
                prop_assert!(e.has_seconds() || n.second == 0);
                // Brute force a few thousand steps: nothing earlier may match.
                let step = if e.has_seconds() { next_second } else { next_minute };
                let mut c = step(t).unwrap();
                for _ in 0..3000 {
                    if c >= n { break; }
                    prop_assert!(!e.matches(c), "{} matches {} before {}", text, c, n);
                    c = step(c).unwrap();
                }
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}", f in 0..8usize) {
            let _ = CronExpr::parse(&text);
            let _ = field_span(&text, f);
        }

        #[test]
        fn cronish_input_never_panics(text in "[0-9*?/,A-Za-z@ =-]{0,30}") {
            if let Ok(e) = CronExpr::parse(&text) {
                let _ = e.next_after(CivilTime::new(2025, 1, 1, 0, 0, 0));
            }
        }
    }
}
