//! Time for the scheduler: an injectable [`Clock`] and cron maths in a timezone.
//!
//! Cron expressions are matched in civil (wall-clock) time of the DAG's timezone, then
//! converted back to an instant. A time that does not exist (a DST gap) fires at the first
//! instant after the gap; a time that happens twice (a DST fold) fires once, at the earlier.

use jiff::tz::TimeZone;
use jiff::{Timestamp, civil};
use trellis_core::cron::{CivilTime, CronExpr};

/// Where the scheduler reads the time; tests step it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A cron schedule bound to its timezone.
#[derive(Clone, Debug)]
pub struct Cron {
    expr: CronExpr,
    tz: TimeZone,
}

impl Cron {
    /// `timezone` is an IANA name (`Europe/Paris`); `None` means the system's zone.
    pub fn new(expression: &str, timezone: Option<&str>) -> Result<Cron, crate::Error> {
        let expr = CronExpr::parse(expression).map_err(crate::Error::Cron)?;
        let name = expr.timezone().or(timezone);
        let tz = match name {
            Some(name) => TimeZone::get(name).map_err(|e| crate::Error::Timezone {
                name: name.to_string(),
                message: e.to_string(),
            })?,
            None => TimeZone::system(),
        };
        Ok(Cron { expr, tz })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut civil = to_civil(t.to_zoned(self.tz.clone()).datetime());
        // A few tries cover fire times that fall in a DST gap or fold.
        for _ in 0..4 {
            let next = self.expr.next_after(civil)?;
            let dt = civil::DateTime::new(
                next.year as i16,
                next.month as i8,
                next.day as i8,
                next.hour as i8,
                next.minute as i8,
                next.second as i8,
                0,
            )
            .ok()?;
            let instant = self
                .tz
                .to_ambiguous_zoned(dt)
                .compatible()
                .ok()?
                .timestamp();
            if instant > t {
                return Some(instant);
            }
            civil = next;
        }
        None
    }

    /// Every fire time in `(from, to]`, at most `limit` of them.
    pub fn between(&self, from: Timestamp, to: Timestamp, limit: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = from;
        while out.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= to => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

fn to_civil(dt: civil::DateTime) -> CivilTime {
    CivilTime {
        year: i32::from(dt.year()),
        month: dt.month() as u8,
        day: dt.day() as u8,
        hour: dt.hour() as u8,
        minute: dt.minute() as u8,
        second: dt.second() as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fires_in_the_dags_timezone() {
        let cron = Cron::new("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            cron.next_after(ts("2026-11-22T00:00:00Z")),
            Some(ts("2026-11-22T08:00:00Z"))
        );
        let prefixed = Cron::new("CRON_TZ=America/New_York 0 9 * * *", None).unwrap();
        assert_eq!(
            prefixed.next_after(ts("2026-11-22T00:00:00Z")),
            Some(ts("2026-11-22T14:00:00Z"))
        );
    }

    #[test]
    fn dst_gap_and_fold_fire_once() {
        // 02:30 does not exist on 2026-03-29 in Paris: it fires at 03:30 local (01:30Z).
        let gap = Cron::new("30 2 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            gap.next_after(ts("2026-03-29T00:00:00Z")),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        // 02:30 happens twice on 2026-10-25: it fires once, at the first (00:30Z).
        let fold = Cron::new("30 2 * * *", Some("Europe/Paris")).unwrap();
        let times = fold.between(ts("2026-10-24T22:00:00Z"), ts("2026-10-25T04:00:00Z"), 10);
        assert_eq!(times, vec![ts("2026-10-25T00:30:00Z")]);
    }

    #[test]
    fn seconds_and_ranges() {
        let every = Cron::new("* * * * * *", Some("UTC")).unwrap();
        let got = every.between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:00:03Z"), 10);
        assert_eq!(got.len(), 3);
        assert!(matches!(
            Cron::new("0 9 * * *", Some("Mars/Base")),
            Err(crate::Error::Timezone { .. })
        ));
    }
}
