//! Counts kept up to date with every write, so `/metrics` costs the same with 10 or 100 000
//! queued jobs (SPEC §11): jobs per (server, state), the pending jobs of each server by age,
//! tokens per status, records set aside. Counted once from the trees when the store opens
//! (which reads every live job anyway to resume them; sled's finished jobs are counted just
//! after, see `store::sled::finished`), then changed by each write.

use crate::ids::ServerId;
use crate::job::{Job, JobState};
use crate::store::TokenStatus;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// How many jobs of one server are in one state, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStat {
    /// Number of jobs.
    pub count: usize,
    /// Creation time (ms) of the oldest (pending jobs only; else 0).
    pub oldest_created_at: u64,
}

/// A copy of the counts at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Jobs per (server, state); the oldest only for pending.
    pub jobs: HashMap<(ServerId, JobState), QueueStat>,
    /// Tokens per status.
    pub tokens: HashMap<TokenStatus, usize>,
    /// Records set aside because they could not be read.
    pub unreadable: usize,
    /// Accepted deliveries durable in the intake log, not yet applied to the store's trees.
    pub intake_backlog: usize,
}

#[derive(Debug, Default)]
struct Counts {
    jobs: HashMap<(ServerId, JobState), usize>,
    pending: HashMap<ServerId, BTreeSet<(u64, u64)>>,
    tokens: HashMap<TokenStatus, usize>,
    unreadable: usize,
}

/// The live counts.
#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<Counts>,
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain numbers: still usable.
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut counts)
    }

    /// A job was written (`after`), removed (`after: None`) or created (`before: None`).
    /// Status posts to Bitbucket are not counted: the queue's depth and age are about
    /// TeamCity servers (statuses have `bb2tc_status_posts_total`).
    pub fn job_changed(&self, before: Option<&Job>, after: Option<&Job>) {
        let counted = |job: &&Job| job.purpose != crate::job::Purpose::ReportStatus;
        let (before, after) = (before.filter(counted), after.filter(counted));
        self.with(|c| {
            if let Some(job) = before {
                let key = (job.server.clone(), job.state);
                if let Some(n) = c.jobs.get_mut(&key) {
                    *n = n.saturating_sub(1);
                }
                if job.state == JobState::Pending
                    && let Some(ages) = c.pending.get_mut(&job.server)
                {
                    ages.remove(&(job.created_at, job.id));
                }
            }
            if let Some(job) = after {
                *c.jobs.entry((job.server.clone(), job.state)).or_default() += 1;
                if job.state == JobState::Pending {
                    c.pending
                        .entry(job.server.clone())
                        .or_default()
                        .insert((job.created_at, job.id));
                }
            }
        });
    }

    /// A token was added, changed status or removed.
    pub fn token_changed(&self, before: Option<TokenStatus>, after: Option<TokenStatus>) {
        self.with(|c| {
            if let Some(status) = before
                && let Some(n) = c.tokens.get_mut(&status)
            {
                *n = n.saturating_sub(1);
            }
            if let Some(status) = after {
                *c.tokens.entry(status).or_default() += 1;
            }
        });
    }

    /// `n` more records were set aside.
    pub fn set_aside(&self, n: usize) {
        self.with(|c| c.unreadable += n);
    }

    /// The counts now; costs a copy of a few map entries per server.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.with(|c| StatsSnapshot {
            jobs: c
                .jobs
                .iter()
                .map(|(key, &count)| {
                    let oldest = match key.1 {
                        JobState::Pending => c
                            .pending
                            .get(&key.0)
                            .and_then(|ages| ages.first())
                            .map_or(0, |(created, _)| *created),
                        _ => 0,
                    };
                    (
                        key.clone(),
                        QueueStat {
                            count,
                            oldest_created_at: oldest,
                        },
                    )
                })
                .collect(),
            tokens: c.tokens.clone(),
            unreadable: c.unreadable,
            intake_backlog: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::job;

    #[test]
    fn counts_follow_the_changes() {
        let stats = Stats::default();
        let mut a = job("a", 'a');
        a.id = 1;
        a.created_at = 50;
        let mut b = job("b", 'b');
        b.id = 2;
        b.created_at = 10;
        stats.job_changed(None, Some(&a));
        stats.job_changed(None, Some(&b));
        let main = ServerId::new("main");
        let pending = stats.snapshot().jobs[&(main.clone(), JobState::Pending)];
        assert_eq!((pending.count, pending.oldest_created_at), (2, 10));
        let mut sent = b.clone();
        sent.state = JobState::Inflight;
        stats.job_changed(Some(&b), Some(&sent));
        let snapshot = stats.snapshot();
        let pending = snapshot.jobs[&(main.clone(), JobState::Pending)];
        assert_eq!((pending.count, pending.oldest_created_at), (1, 50));
        assert_eq!(snapshot.jobs[&(main.clone(), JobState::Inflight)].count, 1);
        stats.job_changed(Some(&a), None);
        let pending = stats.snapshot().jobs[&(main, JobState::Pending)];
        assert_eq!((pending.count, pending.oldest_created_at), (0, 0));

        stats.token_changed(None, Some(TokenStatus::Unverified));
        stats.token_changed(Some(TokenStatus::Unverified), Some(TokenStatus::Valid));
        let tokens = stats.snapshot().tokens;
        assert_eq!(tokens[&TokenStatus::Valid], 1);
        assert_eq!(tokens[&TokenStatus::Unverified], 0);
    }
}
