//! Backoff maths, one formula for everything that waits and tries again: step retries and
//! repeats (`interval_sec`, `backoff`, `max_interval_sec`), database retries, workers
//! reconnecting to a coordinator. Pure: callers do the waiting.

use std::time::Duration;

/// Intervals that start at `initial` and grow by `factor` after each wait, capped at
/// `max`. A factor of 1 (or none) keeps the interval constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    next: f64,
    factor: f64,
    max: f64,
}

impl Backoff {
    /// Intervals in seconds; `factor` `None` means constant, `max` `None` means no cap.
    pub fn new(initial_secs: f64, factor: Option<f64>, max_secs: Option<f64>) -> Backoff {
        Backoff {
            next: initial_secs.max(0.0),
            factor: factor.filter(|f| f.is_finite() && *f > 0.0).unwrap_or(1.0),
            max: max_secs.filter(|m| *m >= 0.0).unwrap_or(f64::MAX),
        }
    }

    /// Doubling from `initial` up to `max`: the usual retry of a transient failure.
    pub fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff::new(initial.as_secs_f64(), Some(2.0), Some(max.as_secs_f64()))
    }

    /// The interval to wait now, in seconds; the next one grows.
    pub fn next_secs(&mut self) -> f64 {
        let now = self.next.min(self.max);
        self.next = (self.next * self.factor).min(self.max);
        now
    }

    /// [`Backoff::next_secs`] as a duration.
    pub fn next_delay(&mut self) -> Duration {
        Duration::from_secs_f64(self.next_secs())
    }

    /// The interval after `waits` earlier waits, in seconds (without changing this one).
    pub fn after(&self, waits: u32) -> f64 {
        let grown = self.next * self.factor.powi(waits.min(i32::MAX as u32) as i32);
        grown.min(self.max)
    }

    /// Back to the first interval (after a success).
    pub fn reset(&mut self, initial: Duration) {
        self.next = initial.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let mut b = Backoff::new(1.0, Some(2.0), Some(5.0));
        let got: Vec<f64> = (0..5).map(|_| b.next_secs()).collect();
        assert_eq!(got, [1.0, 2.0, 4.0, 5.0, 5.0]);
    }

    #[test]
    fn the_nth_interval_matches_waiting_n_times() {
        let b = Backoff::new(1.5, Some(3.0), Some(100.0));
        let mut walked = b;
        for n in 0..6 {
            assert_eq!(b.after(n), walked.next_secs());
        }
    }

    #[test]
    fn without_a_factor_the_interval_is_constant() {
        let mut b = Backoff::new(3.0, None, None);
        assert_eq!((b.next_secs(), b.next_secs()), (3.0, 3.0));
    }

    #[test]
    fn a_cap_below_the_first_interval_wins() {
        let mut b = Backoff::new(10.0, Some(2.0), Some(4.0));
        assert_eq!(b.next_secs(), 4.0);
    }

    #[test]
    fn doubling_durations() {
        let mut b = Backoff::doubling(Duration::from_millis(50), Duration::from_secs(2));
        let got: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 400, 800, 1600, 2000]);
    }
}
