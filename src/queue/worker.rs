//! The worker of one TeamCity server: keeps that server's job schedule in memory, and sends
//! due jobs through the server's token bucket with at most `max_in_flight` calls at once.
//!
//! Every server has its own worker task, bucket, slots and HTTP client, so a slow or dead
//! server only ever delays its own jobs. The schedule holds only (due time, job id) pairs —
//! 24 bytes per queued job — and the jobs themselves stay in the store, so a long backlog
//! behind a dead server costs little memory.

use super::cancel::cancel_superseded;
use super::dispatch::dispatch;
use super::lease::{Idle, LeaseGate};
use super::rate_limit::RateLimit;
use super::trigger::Trigger;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Finish, Job, Store, StoreError, Unchanged};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Asks the worker to do `work` for job `id` at `due`.
#[derive(Debug, Clone, Copy)]
pub struct Scheduled {
    /// Job id.
    pub id: u64,
    /// Not before.
    pub due: Instant,
    /// Send it, or ask about its build.
    pub work: Work,
}

/// What a worker does for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Send the pending job.
    Send,
    /// Ask TeamCity how the done job's build is doing (SPEC §6.1).
    Follow,
}

/// How long a due poll waits for a free slot before it looks again.
const SLOT_WAIT: Duration = Duration::from_millis(100);

/// How long to wait before looking at a job again after the store failed to read it.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct Worker<T: Trigger> {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub teamcity: T,
    /// Retry jitter in [-1, 1]: random in production, fixed in tests.
    pub jitter: fn() -> f64,
    /// The server's bucket, taken before a job is claimed.
    pub admit: RateLimit,
    /// The same bucket again, right before the call (see [`Worker::send`]).
    pub pace: Arc<RateLimit>,
    pub slots: Arc<Semaphore>,
    pub inbox: mpsc::UnboundedReceiver<Scheduled>,
    pub outbox: mpsc::UnboundedSender<Scheduled>,
    pub shutdown: Shutdown,
    /// The slot a poll about to start holds.
    pub poll_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Sends taken off the schedule whose call has not passed the bucket yet: no poll
    /// starts while there are any.
    pub sending: Arc<AtomicUsize>,
    /// With PostgreSQL: whether this instance holds the server's dispatch lease. Not
    /// holding it, the worker sends and polls nothing, and drops what it is handed.
    pub lease: Option<LeaseGate>,
}

/// Counts one send in [`Worker::sending`] until it is dropped (its call passed the bucket,
/// or it ended before).
struct Sending(Arc<AtomicUsize>);

impl Sending {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: Trigger> Worker<T> {
    pub async fn run(mut self) {
        let mut schedule: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut polls: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        loop {
            if let Some(gate) = self.lease.as_mut()
                && !gate.held()
            {
                // The holder has the schedule; this one gets every job when it gains the lease.
                schedule.clear();
                polls.clear();
                match super::lease::idle(gate, &mut self.shutdown, &mut self.inbox).await {
                    Idle::Stop => break,
                    Idle::Gained => self.empty_buckets(),
                    Idle::Waiting => {}
                }
                continue;
            }
            // Everything handed over so far counts, so that a send waiting in the inbox is
            // seen as due before a poll is started.
            while let Ok(s) = self.inbox.try_recv() {
                match s.work {
                    Work::Send => schedule.push(Reverse((s.due, s.id))),
                    Work::Follow => polls.push(Reverse((s.due, s.id))),
                }
            }
            let next_due = schedule.peek().map(|Reverse((due, _))| *due);
            // A job already due goes at once: a timer would round up to the next
            // millisecond, and push → call is meant to take less than two.
            if next_due.is_some_and(|due| due <= Instant::now()) {
                let Some(Reverse((_, id))) = schedule.pop() else {
                    continue;
                };
                if !self.send(id).await {
                    break;
                }
                continue;
            }
            // Polls only while no send is due, and only with a free slot and a free call
            // in the bucket: a backlog of triggers is never slowed by them.
            let mut next_poll = polls.peek().map(|Reverse((due, _))| *due);
            if let Some(due) = next_poll
                && due <= Instant::now()
            {
                match self.start_poll() {
                    Ok(()) => {
                        if let Some(Reverse((_, id))) = polls.pop() {
                            self.follow(id);
                        }
                        continue;
                    }
                    Err(wait) => next_poll = Some(Instant::now() + wait),
                }
            }
            let wake = match (next_due, next_poll) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                message = self.inbox.recv() => match message {
                    Some(s) if s.work == Work::Send => schedule.push(Reverse((s.due, s.id))),
                    Some(s) => polls.push(Reverse((s.due, s.id))),
                    None => break,
                },
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// A new holder of the lease starts with empty buckets: the previous holder may have
    /// just spent the burst (SPEC §7's `burst + rate × T` across the cluster).
    fn empty_buckets(&mut self) {
        let server = self.teamcity.server();
        self.admit = RateLimit::empty(server.rate_per_second, server.burst);
        self.pace = Arc::new(RateLimit::empty(server.rate_per_second, server.burst));
    }

    /// Takes a slot and a call for a poll, or says how long to wait for them. A poll takes
    /// a call of both buckets, so that a send already admitted never finds its second call
    /// taken by a poll.
    fn start_poll(&mut self) -> Result<(), Duration> {
        if self.sending.load(Ordering::SeqCst) > 0 {
            return Err(SLOT_WAIT);
        }
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| SLOT_WAIT)?;
        self.admit.try_take()?;
        self.pace.try_take()?;
        self.poll_slot = Some(slot);
        Ok(())
    }

    /// Asks about job `id`'s build in a task of its own, in the slot `start_poll` took.
    fn follow(&mut self, id: u64) {
        let Some(slot) = self.poll_slot.take() else {
            return;
        };
        let poll = super::follow::Poll {
            store: self.store.clone(),
            teamcity: self.teamcity.clone(),
            metrics: self.metrics.clone(),
            outbox: self.outbox.clone(),
        };
        tokio::spawn(async move {
            poll.run(id).await;
            drop(slot);
        });
    }

    /// Waits for a slot and the bucket, claims job `id`, and sends it. `false` on shutdown.
    ///
    /// A job stays pending — where a newer push for its branch can still replace it — until
    /// the bucket admits it. Between admission and the call its in-flight mark is made
    /// durable; those waits vary with the disk and could bunch calls together, so the call
    /// then passes a second bucket of the same rate and burst (`pace`), which keeps what
    /// TeamCity sees within `burst + rate × T` whatever the disk does. It almost never waits.
    async fn send(&mut self, id: u64) -> bool {
        // A job replaced by a newer push (or removed) is gone from the store and must not
        // use up a slot or a call; `claim_job` checks the rest.
        let sending = Sending::new(&self.sending);
        match self.store.job_exists(id).await {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot read job; will look again");
                self.reschedule(id, STORE_ERROR_BACKOFF);
                return true;
            }
        }
        let slot = tokio::select! {
            biased;
            _ = self.shutdown.wait() => return false,
            slot = self.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return false,
            },
        };
        tokio::select! {
            biased;
            _ = self.shutdown.wait() => return false,
            _ = self.admit.ready() => {}
        }
        let claiming = Instant::now();
        let claimed = self.store.claim_job(id).await;
        self.metrics
            .job_claimed(self.teamcity.server().id.as_str(), claiming.elapsed());
        let job = match claimed {
            Ok(Ok(job)) => job,
            Ok(Err(Unchanged::NotDue { at })) => {
                // Scheduled early (by another instance's clock): at its time, then.
                let wait = at.saturating_sub(crate::clock::now_ms());
                self.reschedule(id, Duration::from_millis(wait));
                return true;
            }
            Ok(Err(_)) => return true, // replaced, removed or no longer pending
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot claim job; will look again");
                self.reschedule(id, STORE_ERROR_BACKOFF);
                return true;
            }
        };
        let call = Call {
            store: self.store.clone(),
            teamcity: self.teamcity.clone(),
            metrics: self.metrics.clone(),
            outbox: self.outbox.clone(),
            pace: self.pace.clone(),
            shutdown: self.shutdown.clone(),
            jitter: (self.jitter)(),
            lease: self.lease.clone(),
        };
        tokio::spawn(async move {
            call.run(job, sending).await;
            drop(slot);
        });
        true
    }

    fn reschedule(&self, id: u64, delay: Duration) {
        schedule_in(&self.outbox, id, delay);
    }
}

/// Hands job `id` back to the worker's schedule, due after `delay`.
fn schedule_in(outbox: &mpsc::UnboundedSender<Scheduled>, id: u64, delay: Duration) {
    let _ = outbox.send(Scheduled {
        id,
        due: Instant::now() + delay,
        work: Work::Send,
    });
}

/// Asks the worker to follow job `id`'s build at `at_ms` (wall clock, ms).
pub(super) fn follow_at(outbox: &mpsc::UnboundedSender<Scheduled>, id: u64, at_ms: u64) {
    let delay = Duration::from_millis(at_ms.saturating_sub(crate::clock::now_ms()));
    let _ = outbox.send(Scheduled {
        id,
        due: Instant::now() + delay,
        work: Work::Follow,
    });
}

/// One claimed job's way through its call, in a task of its own.
struct Call<T: Trigger> {
    store: Arc<Store>,
    teamcity: T,
    metrics: Arc<Metrics>,
    outbox: mpsc::UnboundedSender<Scheduled>,
    pace: Arc<RateLimit>,
    shutdown: Shutdown,
    jitter: f64,
    lease: Option<LeaseGate>,
}

impl<T: Trigger> Call<T> {
    async fn run(mut self, job: Job, sending: Sending) {
        // The in-flight mark must be on disk before the call, so that a crash after the
        // call is known to be one (SPEC §7). Without it, no call: the job goes back.
        if let Err(e) = self.store.persist_claim(&job).await {
            tracing::error!(job = job.id, error = %e, "cannot persist the in-flight mark; the job waits");
            self.put_back(job.id, STORE_ERROR_BACKOFF).await;
            return;
        }
        let stopped = tokio::select! {
            biased;
            _ = self.shutdown.wait() => true,
            _ = self.pace.ready() => false,
        };
        drop(sending);
        if stopped {
            // Not sent: it stays pending for the next start.
            self.put_back(job.id, Duration::ZERO).await;
            let _ = self.store.commit().await;
            return;
        }
        if self.lease.as_ref().is_some_and(|gate| !gate.held()) {
            // Another instance sends this server's jobs now; it finds this one pending.
            self.put_back(job.id, Duration::ZERO).await;
            return;
        }
        match self.store.confirm_claim(&job).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    job = job.id,
                    "the job's claim was taken back before its call; not sending it"
                );
                return;
            }
            Err(e) => {
                tracing::error!(job = job.id, error = %e, "cannot confirm the job's claim; the job waits");
                self.put_back(job.id, STORE_ERROR_BACKOFF).await;
                return;
            }
        }
        // The call runs in a task of its own, so that a panic in it cannot strand the job.
        let dispatched = {
            let (store, teamcity, metrics, job, jitter, pace) = (
                self.store.clone(),
                self.teamcity.clone(),
                self.metrics.clone(),
                job.clone(),
                self.jitter,
                self.pace.clone(),
            );
            tokio::spawn(
                async move { dispatch(&store, &teamcity, &metrics, &job, jitter, &pace).await },
            )
            .await
        };
        let finish = match dispatched {
            Ok(finish) => finish,
            Err(e) => {
                // Whether the call reached TeamCity is unknown: as after a crash, TeamCity
                // is asked before the job is sent again.
                tracing::error!(job = job.id, error = %e, "the TeamCity call failed inside bb2tc; the job will be checked and retried");
                self.persist(|store, now| async move { store.interrupt_job(job.id, now).await })
                    .await;
                self.reschedule(job.id, STORE_ERROR_BACKOFF);
                return;
            }
        };
        let retry_in = match &finish {
            Finish::Retry { delay, .. } => Some(*delay),
            _ => None,
        };
        // The result needs no fsync of its own: it reaches the disk with the next group
        // commit, and if bb2tc dies first the job is found in flight at the next start,
        // where TeamCity is asked before it is sent again.
        let kept = self
            .persist(|store, now| {
                let finish = finish.clone();
                async move { store.finish_job(job.id, finish, now).await }
            })
            .await;
        if let Some(Ok(Some(done))) = &kept
            && let Some(at) = done.build.as_ref().and_then(|b| b.next_poll_at)
        {
            follow_at(&self.outbox, done.id, at);
        }
        match (kept, retry_in) {
            (Some(Ok(Some(_))), Some(delay)) => self.reschedule(job.id, delay),
            // A newer job was sent while this one was under way: its build is superseded
            // already (see `lifecycle::sent`).
            (Some(Ok(Some(done))), None) if !done.supersedes.is_empty() => {
                let comment = format!("superseded by a newer commit of {} (bb2tc)", done.branch);
                cancel_superseded(
                    &self.store,
                    &self.teamcity,
                    &self.metrics,
                    &self.pace,
                    &done,
                    None,
                    &comment,
                )
                .await;
            }
            _ => {}
        }
    }

    /// Puts a claimed, unsent job back to pending and schedules it after `delay`.
    async fn put_back(&mut self, id: u64, delay: Duration) {
        if let Some(Ok(Some(_))) = self
            .persist(|store, _| async move { store.release_job(id).await })
            .await
        {
            self.reschedule(id, delay);
        }
    }

    /// Runs a store write until it succeeds: a job must not stay in flight because the
    /// store failed once (a full disk heals). Gives up only on shutdown — the job is then
    /// found in flight at the next start and recovered like after a crash.
    async fn persist<R, F>(&mut self, write: impl Fn(Arc<Store>, u64) -> F) -> Option<R>
    where
        F: std::future::Future<Output = Result<R, StoreError>>,
    {
        loop {
            match write(self.store.clone(), crate::clock::now_ms()).await {
                Ok(result) => return Some(result),
                Err(e) => {
                    tracing::error!(error = %e, "cannot record a job's state; trying again")
                }
            }
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => return None,
                _ = tokio::time::sleep(STORE_ERROR_BACKOFF) => {}
            }
        }
    }

    fn reschedule(&self, id: u64, delay: Duration) {
        schedule_in(&self.outbox, id, delay);
    }
}

pub(super) async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
