//! Reconnect delays for upstream connections: exponential backoff with full
//! jitter.
//!
//! # Contract
//! * Attempt `n` (0-based, counted since the last reset) waits a uniformly
//!   random duration in `[0, min(max, base · 2^n)]` ("full jitter", as in the
//!   AWS Architecture Blog's *Exponential Backoff And Jitter*): many relays
//!   that lost the same upstream spread their reconnects over the whole
//!   window instead of arriving together. The wait is never above `max`, and
//!   the arithmetic saturates, so attempt 1000 (or `u32::MAX`) is just `max`.
//! * The counter resets only when a connection stayed up for at least
//!   `reset_after` (default 10 s), reported with [`Backoff::on_disconnect`].
//!   An upstream that accepts and then drops us at once keeps the delay
//!   growing instead of being hammered; one that was healthy for a while is
//!   retried within `base` of failing.
//! * Randomness is injected ([`Jitter`]), so tests are deterministic; the
//!   default draws from the thread-local RNG.
//! * Everything but [`Backoff::wait`] is pure arithmetic; `wait` sleeps on the
//!   tokio clock (so paused-time tests see exact durations).

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Draws a uniformly random integer in `0..=n` (nanoseconds). A result above
/// `n` is clamped to `n`.
pub type Jitter = Box<dyn FnMut(u64) -> u64 + Send>;

/// Backoff settings (`--upstream-backoff-base`, `--upstream-backoff-max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The ceiling of the first attempt's delay. Default 250 ms.
    pub base: Duration,
    /// The largest ceiling, and so the longest possible delay. Default 30 s.
    pub max: Duration,
    /// How long a connection must stay up before the next failure starts
    /// again from `base`. Default 10 s.
    pub reset_after: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A zero base would reconnect in a tight loop.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// `max` below `base`.
    #[error("backoff max must be at least the base")]
    MaxBelowBase,
}

impl Settings {
    /// Check the settings before use.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.base.is_zero() {
            return Err(SettingsError::ZeroBase);
        }
        if self.max < self.base {
            return Err(SettingsError::MaxBelowBase);
        }
        Ok(())
    }

    /// The ceiling for attempt `attempt`: `min(max, base · 2^attempt)`,
    /// saturating.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        Duration::from_nanos(self.ceiling_nanos(attempt))
    }

    fn ceiling_nanos(&self, attempt: u32) -> u64 {
        let base = nanos(self.base);
        let max = nanos(self.max);
        let grown = if attempt >= u64::BITS {
            u64::MAX
        } else {
            base.saturating_mul(1u64 << attempt)
        };
        grown.min(max)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The reconnect schedule of one upstream connection. Owned by the task that
/// reconnects it.
pub struct Backoff {
    settings: Settings,
    attempt: u32,
    jitter: Jitter,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("settings", &self.settings)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

// === impl Backoff ===

impl Backoff {
    /// A schedule drawing from the thread-local RNG.
    pub fn new(settings: Settings) -> Backoff {
        Backoff::with_jitter(settings, |n| rand::thread_rng().gen_range(0..=n))
    }

    /// A schedule drawing from a seeded RNG (reproducible).
    pub fn seeded(settings: Settings, seed: u64) -> Backoff {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Backoff::with_jitter(settings, move |n| rng.gen_range(0..=n))
    }

    /// A schedule with injected randomness: `jitter(n)` must return a value
    /// in `0..=n` (larger values are clamped).
    pub fn with_jitter(
        settings: Settings,
        jitter: impl FnMut(u64) -> u64 + Send + 'static,
    ) -> Backoff {
        Backoff {
            settings,
            attempt: 0,
            jitter: Box::new(jitter),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        self.settings.ceiling(self.attempt)
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.settings.ceiling_nanos(self.attempt);
        let drawn = (self.jitter)(ceiling).min(ceiling);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(drawn)
    }

    /// A connection ended after being up for `uptime`: reset the schedule if
    /// it was up for at least `reset_after`. Returns whether it reset.
    pub fn on_disconnect(&mut self, uptime: Duration) -> bool {
        let reset = uptime >= self.settings.reset_after;
        if reset {
            self.reset();
        }
        reset
    }

    /// Start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleep for [`Backoff::next_delay`] and return how long that was.
    ///
    /// Cancel safety: cancelling skips the rest of the sleep; the attempt is
    /// still counted (it was drawn on the first poll).
    pub async fn wait(&mut self) -> Duration {
        let delay = self.next_delay();
        tokio::time::sleep(delay).await;
        delay
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn identity() -> Backoff {
        Backoff::with_jitter(Settings::default(), |n| n)
    }

    #[test]
    fn defaults() {
        let s = Settings::default();
        assert_eq!(s.base, 250 * MS);
        assert_eq!(s.max, Duration::from_secs(30));
        assert_eq!(s.reset_after, Duration::from_secs(10));
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn validation() {
        let zero = Settings {
            base: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(zero.validate(), Err(SettingsError::ZeroBase));
        let inverted = Settings {
            max: MS,
            ..Settings::default()
        };
        assert_eq!(inverted.validate(), Err(SettingsError::MaxBelowBase));
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = identity();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.attempt(), 10);
    }

    #[test]
    fn never_above_the_ceiling_or_the_cap() {
        let mut b = Backoff::seeded(Settings::default(), 7);
        for attempt in 0..2000u32 {
            let ceiling = b.ceiling();
            assert_eq!(ceiling, Settings::default().ceiling(attempt));
            let d = b.next_delay();
            assert!(
                d <= ceiling && d <= Settings::default().max,
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let mut b = Backoff::with_jitter(Settings::default(), |_| u64::MAX);
        assert_eq!(b.next_delay(), 250 * MS);
        let mut b = Backoff::with_jitter(Settings::default(), |_| 0);
        assert_eq!(b.next_delay(), Duration::ZERO);
    }

    #[test]
    fn no_overflow_at_huge_attempts() {
        let s = Settings::default();
        for attempt in [63, 64, 65, 1000, u32::MAX] {
            assert_eq!(s.ceiling(attempt), s.max);
        }
        let huge = Settings {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
            reset_after: Duration::MAX,
        };
        assert_eq!(huge.ceiling(1000), Duration::from_nanos(u64::MAX));
        let mut b = identity();
        b.attempt = u32::MAX;
        assert_eq!(b.next_delay(), s.max);
        assert_eq!(b.attempt(), u32::MAX);
    }

    #[test]
    fn grows_exponentially_in_expectation() {
        let s = Settings::default();
        let mut b = Backoff::seeded(s, 42);
        for attempt in 0..7u32 {
            let samples = 4000;
            let mut sum = 0.0;
            for _ in 0..samples {
                b.attempt = attempt;
                sum += b.next_delay().as_secs_f64();
            }
            let mean = sum / f64::from(samples);
            let expected = s.ceiling(attempt).as_secs_f64() / 2.0;
            let err = (mean - expected).abs() / expected;
            assert!(err < 0.05, "attempt {attempt}: mean {mean} vs {expected}");
        }
    }

    #[test]
    fn reset_only_after_a_stable_period() {
        let mut b = identity();
        for _ in 0..5 {
            b.next_delay();
        }
        assert!(!b.on_disconnect(Duration::from_secs(9)));
        assert_eq!(b.attempt(), 5);
        assert!(b.on_disconnect(Duration::from_secs(10)));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(), 250 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_drawn_delay() {
        let mut b = identity();
        for expected in [250, 500, 1000, 2000] {
            let start = tokio::time::Instant::now();
            let slept = b.wait().await;
            assert_eq!(slept, expected * MS);
            assert_eq!(start.elapsed(), expected * MS);
        }
        b.on_disconnect(Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        b.wait().await;
        assert_eq!(start.elapsed(), 250 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_wait_still_counts_the_attempt() {
        let mut b = identity();
        let r = tokio::time::timeout(100 * MS, b.wait()).await;
        assert!(r.is_err());
        assert_eq!(b.attempt(), 1);
    }
}
