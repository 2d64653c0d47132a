//! Exponential backoff: `MIN_MS`, twice that, … capped at `MAX_MS`. The
//! bounds are type parameters, so the state is one `u32`: the gateway keeps
//! one in every idle connection's task, where each byte counts.

use std::time::Duration;

/// Failures so far; the next wait doubles with each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff<const MIN_MS: u64, const MAX_MS: u64> {
    failures: u32,
}

impl<const MIN_MS: u64, const MAX_MS: u64> Backoff<MIN_MS, MAX_MS> {
    pub const MIN: Duration = Duration::from_millis(MIN_MS);
    pub const MAX: Duration = Duration::from_millis(MAX_MS);

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        Self::MIN.saturating_mul(1u32 << shift).min(Self::MAX)
    }

    /// A success: the next failure waits `MIN` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::<100, 1000>::default();
        let waits: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(std::mem::size_of::<Backoff<1, 2>>(), 4);
    }
}
