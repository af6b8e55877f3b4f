//! Exponential backoff with jitter for failing streams.

use std::time::Duration;

/// Delays between attempts: attempt `n` (1-based) waits a random time in
/// `[d/2, d]` where `d = min(max, initial * 2^(n-1))` ("equal jitter"), so delays grow
/// and concurrent failures spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's upper bound.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after the `attempt`-th consecutive failure.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay after the `attempt`-th failure, with `unit` in `[0, 1)` as the random part.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling / 2 + ceiling.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_until_the_max_and_stay_in_their_jitter_band() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        for n in 1..=6 {
            assert_eq!(b.delay(n, 0.0), b.ceiling(n) / 2);
            assert_eq!(b.delay(n, 1.0), b.ceiling(n));
        }
        // The shortest delay of an attempt is never below the longest of two attempts back.
        assert!(b.delay(3, 0.0) >= b.delay(1, 1.0));
        assert_eq!(b.ceiling(u32::MAX), b.max);
    }
}
