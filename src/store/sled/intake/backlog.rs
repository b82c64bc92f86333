//! How far the applier may fall behind the log. A delivery made durable waits in memory (the
//! applier's queue, the de-duplication maps) until sled has it, so the writer hands on at
//! most [`LIMIT`] jobs' worth before it waits for the applier to catch up. The requests of
//! the groups it holds back wait for their 202 meanwhile: under a load the applier cannot
//! follow, ingest slows to what sled takes instead of growing memory without end.
//!
//! The applier runs at a lower priority than the request path (`applier`), so on a saturated
//! machine it falls behind first; this bound is what makes it catch up.
//!
//! The count is its own, not `Pending::unapplied`: that one also counts the deliveries still
//! waiting for the writer, which a writer waiting on it would never let through.

use super::segment::Accepted;
#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The most jobs handed to the applier and not yet in sled before the writer waits (a
/// delivery without jobs counts as one). Eight of the applier's largest transactions.
pub const LIMIT: usize = 8 * super::applier::BATCH_JOBS;

/// How often a waiting writer looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(1);

/// The work handed from the writer to the applier and not yet applied.
#[derive(Debug, Default)]
pub struct Backlog {
    handed: AtomicUsize,
    /// Set while the writer waits (what the tests look at).
    #[cfg(test)]
    waiting: AtomicBool,
}

impl Backlog {
    /// What a delivery counts for.
    pub fn weight(accepted: &Accepted) -> usize {
        accepted.jobs.len().max(1)
    }

    /// The writer handed `weight` on.
    pub fn handed(&self, weight: usize) {
        self.handed.fetch_add(weight, Ordering::SeqCst);
    }

    /// The applier applied `weight`.
    pub fn applied(&self, weight: usize) {
        let _ = self
            .handed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                Some(h.saturating_sub(weight))
            });
    }

    /// Waits while more than [`LIMIT`] is handed on, until `give_up` says the applier or the
    /// writer is going away (it then stops waiting: a store being closed or reopened drains
    /// what it has).
    pub fn wait_for_room(&self, give_up: impl Fn() -> bool) {
        if self.handed.load(Ordering::SeqCst) <= LIMIT {
            return;
        }
        #[cfg(test)]
        self.waiting.store(true, Ordering::SeqCst);
        while self.handed.load(Ordering::SeqCst) > LIMIT && !give_up() {
            std::thread::sleep(LOOK_AGAIN);
        }
        #[cfg(test)]
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Whether the writer is waiting for room now.
    #[cfg(test)]
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }
}
