//! The per-server token bucket (`rate_per_second`, `burst`), on tokio's clock.
//!
//! governor implements the GCRA bucket; its clock here reads `tokio::time::Instant`, so a
//! test with `tokio::time::pause()` sees exact, instant rate limiting.

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// A governor clock that reads tokio's (pausable) time, as the elapsed time since creation.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Allows at most `burst + rate × T` calls in any window of T seconds.
#[derive(Debug)]
pub struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl RateLimit {
    /// A bucket refilling `rate_per_second` cells per second, holding at most `burst`.
    /// Values are validated by the config; out-of-range ones are clamped, never a panic.
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate_per_second.max(1e-6));
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = TokioClock::default();
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// [`new`](Self::new), with the burst already spent: the first call waits a period.
    pub fn empty(rate_per_second: f64, burst: u32) -> Self {
        let limit = Self::new(rate_per_second, burst);
        while limit.try_take().is_ok() {}
        limit
    }

    /// Takes one call if it is allowed now; else how long until one is.
    pub fn try_take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Waits until one call is allowed, and takes it.
    pub async fn ready(&self) {
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let limit = RateLimit::new(2.0, 1);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            limit.ready().await;
            times.push(start.elapsed());
        }
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(500 * i)).collect();
        assert_eq!(times, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_burst_plus_rate_times_window() {
        let (rate, burst) = (20.0, 5);
        let limit = RateLimit::new(rate, burst);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..200 {
            limit.ready().await;
            times.push(start.elapsed().as_secs_f64());
        }
        // The first `burst` go at once, the rest at exactly `rate`.
        assert_eq!(times.iter().filter(|t| **t == 0.0).count(), burst as usize);
        for window in [0.5, 1.0, 3.0] {
            for (i, t0) in times.iter().enumerate() {
                let in_window = times[i..].iter().take_while(|t| **t < t0 + window).count();
                assert!(in_window as f64 <= burst as f64 + rate * window + 1e-9);
            }
        }
        let achieved = (times.len() - burst as usize) as f64 / times.last().unwrap();
        assert!((achieved - rate).abs() / rate < 0.02, "achieved {achieved}");
    }
}
