//! One budget for the webhook bodies held in memory at once (`server.body_budget_bytes`).
//!
//! A body is buffered whole before its signature can be checked, so without a bound anyone
//! can pin `max_connections × max_body_bytes` of memory with unsigned requests. Each webhook
//! reserves its `Content-Length` (or `max_body_bytes` when the length is not declared) before
//! reading, and gives it back when its answer is sent. A request that cannot get its share
//! within [`WAIT`] is answered 503 with `Retry-After`, which Bitbucket Cloud retries.

use super::error::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget counts kibibytes, so a `u32` of permits covers any body size allowed.
const UNIT: u64 = 1024;

/// How long a request may wait for room before it is answered 503.
pub const WAIT: Duration = Duration::from_secs(1);

/// The shared budget.
#[derive(Debug)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// Room for one body; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl BodyBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Room for a body of `bytes`, waiting up to [`WAIT`]; [`ApiError::Busy`] when other
    /// requests hold the budget for longer.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, ApiError> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units);
        match tokio::time::timeout(WAIT, self.units.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(Reservation { _permit: permit }),
            _ => Err(ApiError::Busy),
        }
    }

    /// Bytes not reserved now.
    #[cfg(test)]
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bodies_wait_for_room_then_get_503() {
        let budget = BodyBudget::new(2 * 1024 * 1024);
        let first = budget.reserve(1024 * 1024).await.unwrap();
        let second = budget.reserve(1024 * 1024).await.unwrap();
        assert_eq!(budget.available(), 0);
        // A third waits for room: it gets it when the first request is done…
        let third = {
            let budget = &budget;
            async move { budget.reserve(1024 * 1024).await }
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(first);
        };
        let (third, ()) = tokio::join!(third, release);
        let third = third.unwrap();
        // …and a fourth that finds none within the wait is told to come back.
        let started = tokio::time::Instant::now();
        assert!(matches!(budget.reserve(10).await, Err(ApiError::Busy)));
        assert_eq!(started.elapsed(), WAIT);
        drop(third);
        assert_eq!(budget.available(), 1024 * 1024);
        // A body larger than the whole budget can still be received, alone.
        drop(second);
        assert!(budget.reserve(u64::MAX).await.is_ok());
    }
}
