//! Exponential backoff with jitter, as the spec's §5 describes: after a failure wait
//! `min(max, base × 2^attempts) × random(0.5, 1.0)`, and start over after a success.

use std::time::Duration;

/// When to try again after failures; one per loop (receiving and sending back off apart).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    /// Failures since the last success.
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempts: 0,
        }
    }

    /// The wait after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        jitter(delay, fastrand::f64())
    }

    /// The longest wait, with jitter: for failures that will not clear up soon (the spec's
    /// `401`/`403`), so the client resumes once they do without hammering the server meanwhile.
    pub(crate) fn longest_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        jitter(self.max, fastrand::f64())
    }

    /// A success: the next failure waits `base` again.
    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }

    /// `min(max, base × 2^attempts)`, without overflowing however many attempts there were.
    fn ceiling(&self) -> Duration {
        // 2^31 × any base worth using is past any max worth using.
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// `delay × (0.5 + random / 2)` for `random` in `[0, 1)`: spreads clients that failed together
/// so they do not all come back at the same instant.
fn jitter(delay: Duration, random: f64) -> Duration {
    delay.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_up_to_the_max() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn every_delay_is_between_half_and_all_of_its_ceiling() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        for _ in 0..100 {
            let ceiling = b.ceiling();
            let delay = b.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
    }

    #[test]
    fn jitter_spans_half_to_whole() {
        assert_eq!(jitter(1000 * MS, 0.0), 500 * MS);
        assert_eq!(jitter(1000 * MS, 0.5), 750 * MS);
        assert!(jitter(1000 * MS, 0.999_999) <= 1000 * MS);
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), 500 * MS);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(7200));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(7200));
        }
    }

    #[test]
    fn the_longest_delay_sits_at_the_max() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        let d = b.longest_delay();
        assert!(d >= 15_000 * MS && d <= 30_000 * MS);
    }
}
