//! Jobs and deliveries in sled: `jobs` (id, big-endian → job) and `finished_jobs` (the same,
//! for jobs with nothing left to do, see `finished`), `latest_jobs` (coalescing key → newest
//! job id); delivery records and marks in the de-duplication window (`window`). What happens to a job is decided by
//! [`crate::job::lifecycle`]; each method here reads what a transition needs and applies the
//! writes it returns in one transaction.

use super::Trees;
use super::finished::{self, CountCursor, JobTrees, Unreadable, job_key};
use super::fresh::FreshTx;
use super::intake::segment::Accepted;
use super::records::{decode, encode};
use super::window;
use crate::job::lifecycle::{self, Refused, Transition, Write};
use crate::job::{Finish, Job, JobState, follow, status};
use crate::store::jobs::{Applied, DeliveryRecord, Unchanged};
use crate::store::{DEDUP_WINDOW_MS, StoreError};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The status jobs a transition enqueued (for the workers).
fn made_statuses(t: &Transition) -> Vec<Job> {
    t.writes
        .iter()
        .filter_map(|w| match w {
            Write::Put(job)
                if job.purpose == crate::job::Purpose::ReportStatus
                    && job.state == JobState::Pending =>
            {
                Some(job.as_ref().clone())
            }
            _ => None,
        })
        .collect()
}

fn apply(jobs: &JobTrees<'_>, writes: &[Write], bad: &Unreadable) -> TxResult<()> {
    for write in writes {
        apply_one(jobs, write, bad)?;
    }
    Ok(())
}

fn apply_one(jobs: &JobTrees<'_>, write: &Write, bad: &Unreadable) -> TxResult<()> {
    match write {
        Write::Put(job) => jobs.put(job),
        Write::Delete(id) => jobs.remove(*id),
        Write::SetLatest { key, id } => jobs.set_latest(key, Some(*id), bad),
        Write::ClearLatest { key } => jobs.set_latest(key, None, bad),
    }
}

/// Applies the writes that enqueue new job `id`: the job itself into a chunk of fresh jobs
/// (its coalescing-index entry into the overlay), the rest as any transition's.
fn apply_new(jobs: &JobTrees<'_>, id: u64, writes: &[Write], bad: &Unreadable) -> TxResult<()> {
    let latest = writes.iter().find_map(|w| match w {
        Write::SetLatest { key, id: newest } if *newest == id => Some(key.as_slice()),
        _ => None,
    });
    for write in writes {
        match write {
            Write::Put(job) if job.id == id => jobs.add_fresh(job, latest, bad)?,
            Write::SetLatest { id: latest, .. } if *latest == id => {}
            other => apply_one(jobs, other, bad)?,
        }
    }
    Ok(())
}

/// A new job as the applier's transaction wrote it.
enum Enqueued<'a> {
    /// No job of its coalescing key was stored: written as it came.
    Alone(&'a Job),
    /// Decided against the newest job of its key (boxed: a transition holds three jobs).
    After(Box<Transition>),
}

/// `meta` keys: the last intake-log delivery applied, and the next job id to give.
pub(super) const APPLIED_SEQ: &[u8] = b"intake_applied_seq";
pub(super) const NEXT_JOB_ID: &[u8] = b"next_job_id";

fn read_u64(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

impl Trees {
    /// Counts the jobs a transaction wrote; `before` are the jobs it read. A finished job
    /// that the count after start-up has still to reach is left to it (`finished`).
    fn count_writes(&self, cursor: &CountCursor, before: &[&Job], writes: &[Write]) {
        let find = |id: u64| {
            before
                .iter()
                .copied()
                .find(|j| j.id == id)
                .filter(|j| !cursor.leaves_to_count(j))
        };
        for write in writes {
            match write {
                Write::Put(job) => self.stats.job_changed(
                    find(job.id),
                    Some(job.as_ref()).filter(|j| !cursor.leaves_to_count(j)),
                ),
                Write::Delete(id) => self.stats.job_changed(find(*id), None),
                Write::SetLatest { .. } | Write::ClearLatest { .. } => {}
            }
        }
    }

    fn set_aside_jobs(&self, bad: Unreadable) {
        for key in bad.into_inner() {
            self.set_aside_if_unreadable::<Job>(&self.jobs, &key);
            self.set_aside_if_unreadable::<Job>(&self.finished, &key);
        }
    }

    /// Whether delivery `id` was recorded within the de-duplication window.
    pub(super) fn delivery_seen(&self, id: &str, now: u64) -> Result<bool, StoreError> {
        self.window.seen_delivery(id, now)
    }

    /// Whether a change (its de-duplication mark) was seen within the window.
    pub(super) fn change_seen(&self, mark: &[u8], now: u64) -> Result<bool, StoreError> {
        self.window.seen_change(mark, now)
    }

    /// Adds the delivery records and marks of a batch from the intake log to the
    /// de-duplication window — those it does not hold yet (after the sequence number it
    /// has), so that adding a batch again adds nothing.
    pub(super) fn window_accepted(&self, batch: &[(u64, Accepted)]) -> Result<(), StoreError> {
        let held = self.window.max_seq();
        let fresh: Vec<&(u64, Accepted)> = batch.iter().filter(|(seq, _)| *seq > held).collect();
        let records = fresh
            .iter()
            .map(|(_, a)| encode(&a.delivery))
            .collect::<Result<Vec<_>, _>>()?;
        let mut new = Vec::with_capacity(fresh.len() * 2);
        for ((seq, accepted), record) in fresh.iter().zip(&records) {
            let at = accepted.delivery.received_at;
            for mark in &accepted.marks {
                new.push(window::New {
                    kind: window::Kind::Change,
                    seq: *seq,
                    received_at: at,
                    key: mark,
                    record: &[],
                });
            }
            new.push(window::New {
                kind: if accepted.dedup_id {
                    window::Kind::MarkedDelivery
                } else {
                    window::Kind::Delivery
                },
                seq: *seq,
                received_at: at,
                key: accepted.delivery.id.as_bytes(),
                record,
            });
        }
        self.window.add(&new)
    }

    /// The last intake-log sequence number the de-duplication window holds.
    pub(super) fn window_seq(&self) -> u64 {
        self.window.max_seq()
    }

    /// Makes the de-duplication window durable (at a checkpoint, before the intake log's
    /// segments go).
    pub(super) fn sync_window(&self) -> Result<(), StoreError> {
        self.window.sync()
    }

    /// Writes the jobs of a batch of accepted deliveries from the intake log (coalesced as
    /// [`lifecycle::enqueue`] says) and the last one's sequence number, in one transaction
    /// (their records and marks go to the window: [`window_accepted`](Self::window_accepted)).
    pub(super) fn apply_accepted(&self, batch: &[(u64, Accepted)]) -> Result<Applied, StoreError> {
        let Some((last_seq, _)) = batch.last() else {
            return Ok(Applied::default());
        };
        let bad = Unreadable::default();
        let mut index = self.fresh.lock();
        let result = (
            &self.jobs,
            &self.latest,
            &self.meta,
            &self.finished,
            &self.fresh_chunks,
            &self.fresh_gone,
        )
            .transaction(|(jobs, latest, meta, finished, chunks, gone)| {
                bad.borrow_mut().clear();
                let jobs = JobTrees {
                    jobs,
                    finished,
                    latest,
                    fresh: FreshTx::new(chunks, gone, &index),
                };
                let mut enqueued = Vec::new();
                let mut next_job_id = read_u64(meta, NEXT_JOB_ID)?;
                for (_, accepted) in batch {
                    for job in &accepted.jobs {
                        next_job_id = next_job_id.max(job.id + 1);
                        let key = job.coalescing_key();
                        let newest = match jobs.newest(&key)? {
                            Some(id) => jobs.get(id, &bad)?,
                            None => None,
                        };
                        let Some(newest) = newest else {
                            // What `lifecycle::enqueue` does with no job of the key: the
                            // job as it came, the newest of its key. Without the
                            // transition's two copies of it (most pushes make new keys).
                            jobs.add_fresh(job, Some(&key), &bad)?;
                            enqueued.push(Enqueued::Alone(job));
                            continue;
                        };
                        let t = lifecycle::enqueue_keyed(job.clone(), key, Some(&newest));
                        apply_new(&jobs, job.id, &t.writes, &bad)?;
                        enqueued.push(Enqueued::After(Box::new(t)));
                    }
                }
                jobs.fresh.write_chunks(*last_seq)?;
                meta.insert(APPLIED_SEQ, &last_seq.to_be_bytes())?;
                meta.insert(NEXT_JOB_ID, &next_job_id.to_be_bytes())?;
                Ok((enqueued, jobs.fresh.into_change()))
            });
        self.set_aside_jobs(bad);
        let (enqueued, change) = result?;
        change.apply_to(&mut index);
        drop(index);
        let mut applied = Applied::default();
        for e in enqueued {
            match e {
                Enqueued::Alone(job) => {
                    self.stats.job_changed(None, Some(job));
                    applied.jobs.push(job.clone());
                }
                Enqueued::After(t) => {
                    let before: Vec<&Job> = t.coalesced.iter().collect();
                    // New jobs and the pending ones they replace: never finished ones.
                    self.count_writes(&CountCursor::DONE, &before, &t.writes);
                    if let Some(old) = &t.coalesced {
                        applied.coalesced.push((old.server.clone(), old.id));
                    }
                    applied.jobs.extend(t.job);
                }
            }
        }
        Ok(applied)
    }

    /// The sequence number of the last intake-log delivery sled holds (0: none).
    pub(super) fn applied_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(APPLIED_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// The first job id never given: past every job stored, every id sled generated (bb2tc
    /// up to format 1 took ids from sled), the id kept with the last batch, and
    /// `last_in_log`.
    pub(super) fn next_job_id(&self, last_in_log: u64) -> Result<u64, StoreError> {
        let kept = self
            .meta
            .get(NEXT_JOB_ID)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let last = |tree: &sled::Tree| -> Result<u64, StoreError> {
            Ok(tree
                .last()?
                .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
                .map_or(0, u64::from_be_bytes))
        };
        let fresh = self.fresh.lock().max_id().unwrap_or(0);
        let stored = last(&self.jobs)?.max(last(&self.finished)?).max(fresh);
        let generated = self.db.generate_id()?;
        Ok(kept.max(stored + 1).max(generated + 1).max(last_in_log + 1))
    }

    /// Replays a claim from the intake log: `true` when the job was still pending at the
    /// attempt before, and is now in flight.
    pub(super) fn replay_claim(&self, id: u64, attempt: u32) -> Result<bool, StoreError> {
        let t = self.transition(id, |job, _, _| Ok(lifecycle::replay_claim(job, attempt)))?;
        Ok(t.is_ok())
    }

    /// Records a delivery that made no jobs (ignored, rejected, duplicate), for the admin
    /// API. Not made durable on its own: it is bookkeeping, not a promise.
    pub fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError> {
        self.window.add_delivery(delivery, false, 0)
    }

    /// Reads job `id` and the newest job id of its key, runs `decide`, applies its writes.
    fn transition(
        &self,
        id: u64,
        decide: impl Fn(&Job, Option<u64>, &JobTrees<'_>) -> TxResult<Result<Transition, Refused>>,
    ) -> Result<Result<Transition, Unchanged>, StoreError> {
        let bad = Unreadable::default();
        // Held from the transaction to its count (see `finished`).
        let cursor = self.finished_count.hold();
        let mut index = self.fresh.lock();
        let result = (
            &self.jobs,
            &self.latest,
            &self.finished,
            &self.fresh_chunks,
            &self.fresh_gone,
        )
            .transaction(|(jobs, latest, finished, chunks, gone)| {
                bad.borrow_mut().clear();
                let jobs = JobTrees {
                    jobs,
                    finished,
                    latest,
                    fresh: FreshTx::new(chunks, gone, &index),
                };
                let Some(job) = jobs.get(id, &bad)? else {
                    return Ok((Err(Unchanged::Gone), jobs.fresh.into_change()));
                };
                let newest = jobs.newest(&job.coalescing_key())?;
                let outcome = match decide(&job, newest, &jobs)? {
                    Ok(t) => {
                        apply(&jobs, &t.writes, &bad)?;
                        Ok((job, t))
                    }
                    Err(Refused::WrongState(state)) => Err(Unchanged::InState(state)),
                };
                Ok((outcome, jobs.fresh.into_change()))
            });
        self.set_aside_jobs(bad);
        let (outcome, change) = result?;
        change.apply_to(&mut index);
        drop(index);
        Ok(outcome.map(|(before, t)| {
            let mut all_before = vec![&before];
            all_before.extend(&t.also_changed);
            self.count_writes(&cursor, &all_before, &t.writes);
            t
        }))
    }

    /// Marks a pending job in flight (one more attempt); the job as claimed.
    pub fn claim_job(&self, id: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        let t = self.transition(id, |job, _, _| Ok(lifecycle::claim(job)))?;
        Ok(t.and_then(|t| t.job.ok_or(Unchanged::Gone)))
    }

    /// Puts a claimed job back, unsent (on shutdown, before its call was made). `Ok(None)`
    /// when it was dropped as superseded.
    pub fn release_job(&self, id: u64) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self.transition(id, |job, newest, _| Ok(lifecycle::release(job, newest)))?;
        Ok(t.map(|t| t.job))
    }

    /// A job whose call may have reached TeamCity (its task failed mid-call): pending again,
    /// flagged so TeamCity is asked first. `Ok(None)` when dropped as superseded.
    pub fn interrupt_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self.transition(id, |job, newest, _| {
            Ok(lifecycle::interrupted(job, newest, now))
        })?;
        Ok(t.map(|t| t.job))
    }

    /// Stores how a call ended. `Ok(None)` when a job to retry was dropped as superseded.
    pub fn finish_job(
        &self,
        id: u64,
        finish: &Finish,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        #[cfg(test)]
        self.faults.check("finish_job")?;
        let bad = Unreadable::default();
        let t = self.transition(id, |job, latest, jobs| {
            let newest = match latest.filter(|&l| l != id) {
                Some(newest) => jobs.get(newest, &bad)?,
                None => None,
            };
            let mut t = lifecycle::sent(job, finish, latest, newest.as_ref(), now);
            if let Ok(t) = &mut t
                && let Some(after) = t.job.clone()
            {
                let report = status::after_trigger(&after, finish);
                self.add_status(t, &after, report, now, jobs, &bad)?;
            }
            Ok(t)
        })?;
        self.set_aside_jobs(bad);
        if let Ok(t) = &t {
            self.announce(made_statuses(t));
        }
        Ok(t.map(|t| t.job))
    }

    /// What TeamCity answered about a done job's build (SPEC §6.1); the job as kept.
    pub fn observe_build(
        &self,
        id: u64,
        seen: &follow::Seen,
        now: u64,
    ) -> Result<Result<Job, Unchanged>, StoreError> {
        let bad = Unreadable::default();
        let t = self.transition(id, |job, _, jobs| {
            let mut t = lifecycle::followed(job, seen, now);
            if let Ok(t) = &mut t
                && let Some(after) = t.job.clone()
            {
                let report = status::after_poll(job.build.as_ref(), &after);
                self.add_status(t, &after, report, now, jobs, &bad)?;
            }
            Ok(t)
        })?;
        self.set_aside_jobs(bad);
        if let Ok(t) = &t {
            self.announce(made_statuses(t));
        }
        Ok(t.and_then(|t| t.job.ok_or(Unchanged::Gone)))
    }

    /// Adds to `t` the writes that enqueue the status job for `report` about `job` (due
    /// `now`, replacing one of its key still waiting) — in the same transaction as the change
    /// that called for it, so that a crash loses neither or both.
    fn add_status(
        &self,
        t: &mut Transition,
        job: &Job,
        report: Option<status::StatusReport>,
        now: u64,
        jobs: &JobTrees<'_>,
        bad: &Unreadable,
    ) -> TxResult<()> {
        let Some(report) = report else {
            return Ok(());
        };
        let mut made = status::status_job(job, report);
        made.id = self.take_job_id();
        made.created_at = now;
        made.next_attempt_at = now;
        let waiting = match jobs.newest(&made.coalescing_key())? {
            Some(id) => jobs.get(id, bad)?,
            None => None,
        };
        t.writes
            .extend(lifecycle::enqueue(made, waiting.as_ref()).writes);
        Ok(())
    }

    /// On start: jobs left in flight by a stopped process become pending again (flagged
    /// `interrupted`), or are dropped when superseded. Returns every pending job, and every
    /// done one whose build is still followed.
    pub fn resume_jobs(&self, now: u64) -> Result<Vec<Job>, StoreError> {
        // Fresh jobs are pending, as they arrived.
        let mut pending = self.fresh.lock().jobs(&self.fresh_chunks)?;
        for item in self.records::<Job>(&self.jobs) {
            let (_, job) = item?;
            match job.state {
                JobState::Pending => pending.push(job),
                JobState::Inflight => {
                    if let Ok(Some(job)) = self.interrupt_job(job.id, now)? {
                        pending.push(job);
                    }
                }
                JobState::Done if follow::is_followed(&job) => pending.push(job),
                JobState::Dead | JobState::Done => {}
            }
        }
        self.finished_count.resumed();
        pending.sort_unstable_by_key(|job| job.id);
        Ok(pending)
    }

    /// Makes a dead job pending again, due now, with a fresh attempt count.
    pub fn revive_job(&self, id: u64, now: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        let bad = Unreadable::default();
        let t = self.transition(id, |job, newest, jobs| {
            let newest = match newest {
                Some(newest) => jobs.get(newest, &bad)?,
                None => None,
            };
            Ok(lifecycle::revive(job, newest.as_ref(), now))
        })?;
        self.set_aside_jobs(bad);
        Ok(t.and_then(|t| t.job.ok_or(Unchanged::Gone)))
    }

    /// Deletes a job in any state; `false` when there was none.
    pub fn remove_job(&self, id: u64) -> Result<bool, StoreError> {
        let t = self.transition(id, |job, newest, _| Ok(Ok(lifecycle::remove(job, newest))))?;
        Ok(t.is_ok())
    }

    /// Whether a job is still stored (cheaper than reading it).
    pub fn job_exists(&self, id: u64) -> Result<bool, StoreError> {
        {
            let index = self.fresh.lock();
            if index.holds(id) {
                return Ok(true);
            }
        }
        Ok(self.jobs.contains_key(job_key(id))? || self.finished.contains_key(job_key(id))?)
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        {
            // Held through the read: a job that leaves its chunk is in `jobs` once the
            // lock is free.
            let index = self.fresh.lock();
            if let Some(job) = index.job(&self.fresh_chunks, id)? {
                return Ok(Some(job));
            }
        }
        match self.read_record(&self.jobs, &job_key(id))? {
            Some(job) => Ok(Some(job)),
            None => self.read_record(&self.finished, &job_key(id)),
        }
    }

    /// The fresh jobs, newest first (each read as it is reached: it may have left its
    /// chunk since, and is then read where it went).
    fn fresh_newest_first(&self) -> impl Iterator<Item = Result<Job, StoreError>> + '_ {
        let mut ids: Vec<u64> = self.fresh.lock().ids().collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .filter_map(move |id| self.job(id).transpose())
    }

    /// Every job, fresh, live and finished, newest first.
    fn jobs_newest_first(&self) -> impl Iterator<Item = Result<Job, StoreError>> + '_ {
        finished::newest_first(
            self.live_newest_first(),
            self.records_rev::<Job>(&self.finished)
                .map(|r| r.map(|(_, job)| job)),
        )
    }

    /// The fresh and the live jobs, newest first (no finished ones).
    fn live_newest_first(&self) -> impl Iterator<Item = Result<Job, StoreError>> + '_ {
        finished::newest_first(
            self.records_rev::<Job>(&self.jobs)
                .map(|r| r.map(|(_, job)| job)),
            self.fresh_newest_first(),
        )
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        // Only done jobs are ever finished.
        let all: Box<dyn Iterator<Item = Result<Job, StoreError>>> = match state {
            None | Some(JobState::Done) => Box::new(self.jobs_newest_first()),
            Some(_) => Box::new(self.live_newest_first()),
        };
        for job in all {
            let job = job?;
            if state.is_none_or(|s| s == job.state) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest build jobs (no status posts, no cancellations) sent — or to be sent — with
    /// one of `tokens` (`None`: with any token), at most `limit`.
    pub fn recent_builds(
        &self,
        tokens: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for job in self.jobs_newest_first() {
            let job = job?;
            let mine = match (tokens, &job.token) {
                (None, _) => true,
                (Some(ids), crate::job::TokenRef::User(id)) => ids.contains(id),
                (Some(_), crate::job::TokenRef::Service) => false,
            };
            if mine && job.purpose == crate::job::Purpose::Build {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Recent deliveries (at most the newest [`window::RECENT`]), newest first.
    pub fn list_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(self.window.recent(limit))
    }

    /// Drops de-duplication marks, delivery records and done jobs older than the window,
    /// `PRUNE_BATCH` keys at a time. Returns how many records went.
    pub fn prune(&self, now: u64) -> Result<usize, StoreError> {
        let old = |at: u64| now.saturating_sub(at) >= DEDUP_WINDOW_MS;
        let mut removed = usize::try_from(self.window.prune(now)?).unwrap_or(usize::MAX);
        let mut done = Vec::new();
        // Finished jobs, and done ones whose build is still followed (following ends 24 h
        // after the build was queued, so few are that old).
        for item in self.finished.iter().chain(self.jobs.iter()) {
            let (_, value) = item?;
            if let Ok(job) = decode::<Job>(&value)
                && job.state == JobState::Done
                && old(job.finished_at.unwrap_or(0))
            {
                done.push(job.id);
                if done.len() >= PRUNE_BATCH {
                    removed += self.remove_done(&mut done)?;
                }
            }
        }
        removed += self.remove_done(&mut done)?;
        Ok(removed)
    }

    fn remove_done(&self, ids: &mut Vec<u64>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for id in ids.drain(..) {
            removed += usize::from(self.remove_job(id)?);
        }
        Ok(removed)
    }
}

/// How many keys pruning collects before removing them.
const PRUNE_BATCH: usize = 1000;

/// Removes the entries of `tree` that `expired` says are, in batches.
pub(super) fn prune_tree(
    tree: &sled::Tree,
    expired: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    let mut batch = Vec::new();
    for item in tree.iter() {
        let (key, value) = item?;
        if expired(&key, &value) {
            batch.push(key);
            if batch.len() >= PRUNE_BATCH {
                removed += remove_keys(tree, &mut batch)?;
            }
        }
    }
    removed += remove_keys(tree, &mut batch)?;
    Ok(removed)
}

fn remove_keys(tree: &sled::Tree, keys: &mut Vec<sled::IVec>) -> Result<usize, StoreError> {
    let mut batch = sled::Batch::default();
    let n = keys.len();
    for key in keys.drain(..) {
        batch.remove(key);
    }
    tree.apply_batch(batch)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use crate::ids::ServerId;
    use crate::store::RecordOutcome;
    use crate::store::test_support::{change, delivery, temp_sled};

    fn recorded(outcome: RecordOutcome) -> (Vec<Job>, DeliveryRecord) {
        match outcome {
            RecordOutcome::Recorded { jobs, delivery } => (jobs, delivery),
            RecordOutcome::Duplicate => panic!("unexpected duplicate"),
        }
    }

    #[test]
    fn duplicate_delivery_and_change_are_skipped() {
        let (_dir, store) = temp_sled();
        let (jobs, record) = recorded(
            store
                .record_now(&delivery("a"), true, &[change("main", 'a')])
                .unwrap(),
        );
        assert_eq!((jobs.len(), record.jobs), (1, 1));
        assert_eq!(
            store
                .record_now(&delivery("a"), true, &[change("main", 'a')])
                .unwrap(),
            RecordOutcome::Duplicate
        );
        let (jobs, record) = recorded(
            store
                .record_now(&delivery("b"), true, &[change("main", 'a')])
                .unwrap(),
        );
        assert!(jobs.is_empty());
        assert_eq!(record.skipped[0].reference, "refs/heads/main");
        assert_eq!(store.list_jobs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_trigger_that_ends_makes_its_status_job_in_the_same_write() {
        let (_dir, store) = temp_sled();
        let mut reporting = change("main", 'a');
        reporting.jobs[0].report_status = crate::config::ReportStatus::Triggers;
        let (jobs, _) = recorded(
            store
                .record_now(&delivery("1"), true, &[reporting])
                .unwrap(),
        );
        store.claim_job(jobs[0].id).unwrap().unwrap();
        let dead = Finish::Dead {
            error: "TeamCity answered 404: No build type".into(),
        };
        store.finish_job(jobs[0].id, &dead, now()).unwrap().unwrap();
        let statuses: Vec<Job> = store
            .list_jobs(Some(JobState::Pending), 10)
            .unwrap()
            .into_iter()
            .filter(|j| j.purpose == crate::job::Purpose::ReportStatus)
            .collect();
        assert_eq!(statuses.len(), 1);
        let report = statuses[0].status.as_ref().unwrap();
        assert_eq!(
            (report.state, report.of_job),
            (status::State::Failed, jobs[0].id)
        );
        assert!(statuses[0].id > jobs[0].id, "ids from the one sequence");
        // Its own ending makes no further status.
        store.claim_job(statuses[0].id).unwrap().unwrap();
        let posted = Finish::Done {
            build_id: None,
            web_url: None,
            warning: None,
        };
        store
            .finish_job(statuses[0].id, &posted, now())
            .unwrap()
            .unwrap();
        assert!(
            store
                .list_jobs(Some(JobState::Pending), 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_build_queued_after_a_newer_push_came_is_handed_to_it_to_cancel() {
        let (_dir, store) = temp_sled();
        let cancelling = |sha| {
            let mut change = change("main", sha);
            change.jobs[0].cancel_superseded = true;
            change
        };
        let (first, _) = recorded(
            store
                .record_now(&delivery("1"), true, &[cancelling('a')])
                .unwrap(),
        );
        store.claim_job(first[0].id).unwrap().unwrap();
        let (second, _) = recorded(
            store
                .record_now(&delivery("2"), true, &[cancelling('b')])
                .unwrap(),
        );
        let done = Finish::Done {
            build_id: Some(77),
            web_url: None,
            warning: None,
        };
        let finished = store
            .finish_job(first[0].id, &done, now())
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            finished.supersedes.is_empty(),
            "the pending newer job cancels it"
        );
        let newer = store.job(second[0].id).unwrap().unwrap();
        assert_eq!(
            newer
                .supersedes
                .iter()
                .map(|s| s.build_id)
                .collect::<Vec<_>>(),
            vec![77]
        );
        // The counts saw the newer job change, not a new one appear.
        let stats = store.stats.snapshot();
        let count = |state| {
            stats
                .jobs
                .get(&(ServerId::new("main"), state))
                .map_or(0, |s| s.count)
        };
        assert_eq!((count(JobState::Pending), count(JobState::Done)), (1, 1));
    }

    #[test]
    fn newer_push_replaces_pending_job_and_supersedes_inflight() {
        let (_dir, store) = temp_sled();
        let (first, _) = recorded(
            store
                .record_now(&delivery("1"), true, &[change("main", 'a')])
                .unwrap(),
        );
        let (second, _) = recorded(
            store
                .record_now(&delivery("2"), true, &[change("main", 'b')])
                .unwrap(),
        );
        assert!(store.job(first[0].id).unwrap().is_none(), "coalesced");
        assert_eq!(store.claim_job(first[0].id).unwrap(), Err(Unchanged::Gone));

        let claimed = store.claim_job(second[0].id).unwrap().unwrap();
        assert_eq!((claimed.state, claimed.attempts), (JobState::Inflight, 1));
        let (third, _) = recorded(
            store
                .record_now(&delivery("3"), true, &[change("main", 'c')])
                .unwrap(),
        );
        assert!(
            store.job(second[0].id).unwrap().is_some(),
            "an in-flight job is not replaced"
        );
        // The newer job is claimed too; the older one's call fails and would be retried:
        // it is dropped, so the older commit is not built after the newer one.
        store.claim_job(third[0].id).unwrap().unwrap();
        let retry = Finish::Retry {
            delay: std::time::Duration::ZERO,
            error: "503".into(),
            check_first: false,
        };
        assert_eq!(
            store.finish_job(second[0].id, &retry, now()).unwrap(),
            Ok(None)
        );
        assert!(store.job(second[0].id).unwrap().is_none());
        assert_eq!(
            store
                .list_jobs(None, 10)
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect::<Vec<_>>(),
            vec![third[0].id]
        );
        let depth = store.stats().jobs;
        assert_eq!(depth[&(ServerId::new("main"), JobState::Inflight)].count, 1);
        assert_eq!(depth[&(ServerId::new("main"), JobState::Pending)].count, 0);
    }

    #[test]
    fn in_one_batch_a_new_key_is_written_as_it_came_and_a_known_one_is_coalesced() {
        let (_dir, store) = temp_sled();
        // `main` twice: the second job finds the first (fresh, in the same transaction) the
        // newest of its key and replaces it; `other` has no job of its key.
        let changes = [
            change("main", 'a'),
            change("main", 'b'),
            change("other", 'c'),
        ];
        let (jobs, record) = recorded(store.record_now(&delivery("1"), true, &changes).unwrap());
        assert_eq!((jobs.len(), record.jobs), (3, 3));
        assert!(store.job(jobs[0].id).unwrap().is_none(), "coalesced");
        for job in &jobs[1..] {
            let stored = store.job(job.id).unwrap().expect("stored");
            assert_eq!(
                (stored.state, &stored.branch),
                (JobState::Pending, &job.branch)
            );
        }
        let mut listed: Vec<u64> = store
            .list_jobs(None, 10)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        listed.sort_unstable();
        assert_eq!(listed, vec![jobs[1].id, jobs[2].id]);
        let depth = store.stats().jobs;
        assert_eq!(depth[&(ServerId::new("main"), JobState::Pending)].count, 2);
        // Both are the newest of their keys: a newer push of either replaces it.
        for (id, branch, sha) in [(jobs[1].id, "main", 'd'), (jobs[2].id, "other", 'e')] {
            store
                .record_now(
                    &delivery(&format!("{branch}-{sha}")),
                    true,
                    &[change(branch, sha)],
                )
                .unwrap();
            assert!(store.job(id).unwrap().is_none(), "{branch} replaced");
        }
        let depth = store.stats().jobs;
        assert_eq!(depth[&(ServerId::new("main"), JobState::Pending)].count, 2);
    }

    fn now() -> u64 {
        clock::now_ms()
    }

    #[test]
    fn retry_done_dead_and_resume() {
        let (_dir, store) = temp_sled();
        let (jobs, _) = recorded(
            store
                .record_now(
                    &delivery("1"),
                    true,
                    &[change("a", 'a'), change("b", 'b'), change("c", 'c')],
                )
                .unwrap(),
        );
        for job in &jobs {
            store.claim_job(job.id).unwrap().unwrap();
        }
        let retry = Finish::Retry {
            delay: std::time::Duration::from_secs(42),
            error: "timeout".into(),
            check_first: false,
        };
        let retried = store
            .finish_job(jobs[0].id, &retry, 1_000)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(retried.state, JobState::Pending);
        assert_eq!(retried.next_attempt_at, 43_000);
        let done = Finish::Done {
            build_id: Some(7),
            web_url: None,
            warning: None,
        };
        let done = store.finish_job(jobs[1].id, &done, now()).unwrap();
        assert_eq!(done.unwrap().unwrap().state, JobState::Done);
        // jobs[2] stays in flight, as if the process died during the call.
        let resumed = store.resume_jobs(now()).unwrap();
        let ids: Vec<u64> = resumed.iter().map(|j| j.id).collect();
        // The done job's build is followed: it is resumed too.
        assert_eq!(ids, vec![jobs[0].id, jobs[1].id, jobs[2].id]);
        assert_eq!(resumed[1].state, JobState::Done);
        assert!(resumed[1].build.as_ref().unwrap().next_poll_at.is_some());
        assert!(resumed[2].interrupted && !resumed[0].interrupted);
        let dead = Finish::Dead {
            error: "400 bad".into(),
        };
        store.claim_job(jobs[0].id).unwrap().unwrap();
        let dead = store
            .finish_job(jobs[0].id, &dead, now())
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(dead.last_error.as_deref(), Some("400 bad"));
        assert_eq!(store.list_jobs(Some(JobState::Dead), 10).unwrap().len(), 1);
        let revived = store.revive_job(jobs[0].id, 5).unwrap().unwrap();
        assert_eq!(
            (revived.state, revived.attempts, revived.next_attempt_at),
            (JobState::Pending, 0, 5)
        );
        assert_eq!(
            store.revive_job(jobs[1].id, 5).unwrap(),
            Err(Unchanged::InState(JobState::Done))
        );
        assert!(store.remove_job(jobs[1].id).unwrap());
        assert!(!store.remove_job(jobs[1].id).unwrap());
    }

    fn done(build_id: Option<u64>) -> Finish {
        Finish::Done {
            build_id,
            web_url: None,
            warning: None,
        }
    }

    /// Done jobs of server `main`, as counted.
    fn done_count(store: &super::super::SledStore) -> usize {
        store
            .stats()
            .jobs
            .get(&(ServerId::new("main"), JobState::Done))
            .map_or(0, |q| q.count)
    }

    #[test]
    fn a_finished_job_moves_to_its_own_tree_and_is_still_found_listed_and_removed() {
        let (_dir, store) = temp_sled();
        store.resume_and_count();
        let mut b = change("b", 'b');
        b.jobs[0].cancel_superseded = true;
        let (jobs, _) = recorded(
            store
                .record_now(
                    &delivery("1"),
                    true,
                    &[change("a", 'a'), b, change("c", 'c')],
                )
                .unwrap(),
        );
        for job in &jobs {
            store.claim_job(job.id).unwrap().unwrap();
        }
        // No build id: nothing to follow, finished at once.
        store
            .finish_job(jobs[0].id, &done(None), now())
            .unwrap()
            .unwrap();
        // A build to follow: live until following ends.
        store
            .finish_job(jobs[1].id, &done(Some(7)), now())
            .unwrap()
            .unwrap();
        assert!(store.finished.contains_key(job_key(jobs[0].id)).unwrap());
        assert!(!store.jobs.contains_key(job_key(jobs[0].id)).unwrap());
        assert!(store.jobs.contains_key(job_key(jobs[1].id)).unwrap());
        let gone = follow::Seen::Gone("TeamCity answered 404".into());
        let observed = store
            .observe_build(jobs[1].id, &gone, now())
            .unwrap()
            .unwrap();
        assert!(finished::settled(&observed));
        assert!(store.finished.contains_key(job_key(jobs[1].id)).unwrap());
        assert!(!store.jobs.contains_key(job_key(jobs[1].id)).unwrap());

        // Read, listed (newest first across both trees), counted — but not resumed.
        assert_eq!(
            store.job(jobs[0].id).unwrap().unwrap().state,
            JobState::Done
        );
        assert!(store.job_exists(jobs[1].id).unwrap());
        let ids = |list: Vec<Job>| list.iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_jobs(None, 10).unwrap()),
            vec![jobs[2].id, jobs[1].id, jobs[0].id]
        );
        assert_eq!(
            ids(store.list_jobs(Some(JobState::Done), 10).unwrap()),
            vec![jobs[1].id, jobs[0].id]
        );
        assert_eq!(
            ids(store.list_jobs(Some(JobState::Done), 1).unwrap()),
            vec![jobs[1].id]
        );
        assert_eq!(ids(store.recent_builds(None, 10).unwrap()).len(), 3);
        assert_eq!(done_count(&store), 2);
        assert_eq!(ids(store.resume_jobs(now()).unwrap()), vec![jobs[2].id]);

        // A new push of a finished job's branch still finds it as the newest of its key:
        // the build it queued is to be cancelled.
        let mut cancelling = change("b", 'e');
        cancelling.jobs[0].cancel_superseded = true;
        let (newer, _) = recorded(
            store
                .record_now(&delivery("2"), true, &[cancelling])
                .unwrap(),
        );
        let newer = store.job(newer[0].id).unwrap().unwrap();
        assert_eq!(
            newer
                .supersedes
                .iter()
                .map(|s| (s.job, s.build_id))
                .collect::<Vec<_>>(),
            vec![(jobs[1].id, 7)]
        );

        assert!(store.remove_job(jobs[0].id).unwrap());
        assert!(store.job(jobs[0].id).unwrap().is_none());
        assert!(!store.remove_job(jobs[0].id).unwrap());
        assert_eq!(done_count(&store), 1);
        // Ids are never given twice, whichever tree holds the newest.
        assert!(store.next_job_id(0).unwrap() > jobs[2].id + 1);
    }

    #[test]
    fn finished_jobs_are_counted_after_a_restart_exactly_while_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        let n = 2 * finished::COUNT_CHUNK + 100;
        let (first, last_two) = {
            let store = super::super::SledStore::open(&settings).unwrap();
            store.resume_and_count();
            let changes: Vec<_> = (0..n + 2).map(|i| change(&format!("b{i}"), 'a')).collect();
            let (jobs, _) = recorded(store.record_now(&delivery("1"), true, &changes).unwrap());
            for job in &jobs[..n] {
                store.claim_job(job.id).unwrap().unwrap();
                store
                    .finish_job(job.id, &done(None), now())
                    .unwrap()
                    .unwrap();
            }
            for job in &jobs[n..] {
                store.claim_job(job.id).unwrap().unwrap();
            }
            assert_eq!(done_count(&store), n);
            (jobs[0].id, [jobs[n].id, jobs[n + 1].id])
        };
        let store = super::super::SledStore::open_counting_by_hand(&settings).unwrap();
        // Start-up read the live jobs only.
        assert_eq!(done_count(&store), 0);
        assert_eq!(store.resume_jobs(now()).unwrap().len(), 2);
        assert!(store.count_finished_step());
        assert_eq!(done_count(&store), finished::COUNT_CHUNK);
        // Counted already, then removed: the removal counts.
        assert!(store.remove_job(first).unwrap());
        // Not reached yet, then removed: left to the count, which will not see it.
        assert!(store.remove_job(first + n as u64 - 1).unwrap());
        // Finished now, past the cursor: left to the count, which will see it.
        for id in last_two {
            store.claim_job(id).unwrap().unwrap();
            store.finish_job(id, &done(None), now()).unwrap().unwrap();
        }
        while store.count_finished_step() {}
        assert_eq!(store.finished.len(), n);
        assert_eq!(done_count(&store), n);
        // Once counted, every write counts for itself.
        assert!(store.remove_job(last_two[0]).unwrap());
        assert_eq!(done_count(&store), n - 1);
    }

    #[test]
    fn an_unreadable_job_is_set_aside_and_counted_not_fatal() {
        let (_dir, store) = temp_sled();
        let (jobs, _) = recorded(
            store
                .record_now(&delivery("1"), true, &[change("a", 'a'), change("b", 'b')])
                .unwrap(),
        );
        // Claimed, they have left their chunk of fresh jobs for `jobs`.
        for job in &jobs {
            store.claim_job(job.id).unwrap().unwrap();
            assert!(store.jobs.contains_key(job_key(job.id)).unwrap());
        }
        store
            .jobs
            .insert(job_key(jobs[0].id), &[1u8, 0xff, 0xff, 0xff][..])
            .unwrap();
        let listed = store.list_jobs(None, 10).unwrap();
        assert_eq!(
            listed.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![jobs[1].id]
        );
        assert_eq!(store.stats().unreadable, 1);
        assert!(store.jobs.get(job_key(jobs[0].id)).unwrap().is_none());
        let key = [b"jobs\0".as_slice(), &job_key(jobs[0].id)].concat();
        assert_eq!(
            store.unreadable.get(key).unwrap().as_deref(),
            Some(&[1u8, 0xff, 0xff, 0xff][..])
        );
        // A record of a newer bb2tc inside a transaction: the claim treats it as gone.
        store
            .jobs
            .insert(job_key(jobs[1].id), &[9u8, 1, 2][..])
            .unwrap();
        assert_eq!(store.claim_job(jobs[1].id).unwrap(), Err(Unchanged::Gone));
        assert_eq!(store.stats().unreadable, 2);
        assert!(store.resume_jobs(now()).unwrap().is_empty());
    }

    fn reopen(dir: &tempfile::TempDir, store: super::super::SledStore) -> super::super::SledStore {
        drop(store);
        let settings = crate::store::test_support::settings(dir.path());
        super::super::SledStore::open(&settings).unwrap()
    }

    fn fresh_ids(store: &super::super::SledStore) -> Vec<u64> {
        let mut ids: Vec<u64> = store.fresh.lock().ids().collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn new_jobs_stay_in_chunks_until_their_first_change_and_the_last_to_leave_takes_the_chunk() {
        let (dir, store) = temp_sled();
        // One delivery of 40 changes: one batch of the applier.
        let changes: Vec<_> = (0..40).map(|n| change(&format!("b{n}"), 'a')).collect();
        let (jobs, _) = recorded(store.record_now(&delivery("1"), true, &changes).unwrap());
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        // Nothing in `jobs` nor in `latest_jobs`: the jobs and their index entries are in
        // chunks of CHUNK (16).
        assert_eq!((store.jobs.len(), store.latest.len()), (0, 0));
        assert_eq!(store.fresh_chunks.len(), 3);
        assert_eq!(fresh_ids(&store), ids);
        let listed: Vec<u64> = store
            .list_jobs(None, 100)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, ids.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(store.job(ids[3]).unwrap().unwrap().branch, "b3");
        assert!(store.job_exists(ids[3]).unwrap());

        let store = reopen(&dir, store);
        assert_eq!(fresh_ids(&store), ids);
        let resumed: Vec<u64> = store
            .resume_jobs(now())
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(resumed, ids);
        assert_eq!(
            store.stats().jobs.values().map(|q| q.count).sum::<usize>(),
            40
        );

        // A claim takes the job out of its chunk, into `jobs`, with its index entry.
        let claimed = store.claim_job(ids[0]).unwrap().unwrap();
        assert_eq!(claimed.state, JobState::Inflight);
        assert!(store.jobs.contains_key(job_key(ids[0])).unwrap());
        assert_eq!(
            store
                .latest
                .get(claimed.coalescing_key())
                .unwrap()
                .as_deref(),
            Some(&job_key(ids[0])[..])
        );
        assert_eq!(store.fresh_gone.len(), 1);
        let store = reopen(&dir, store);
        assert_eq!(fresh_ids(&store), ids[1..]);
        assert_eq!(
            store.job(ids[0]).unwrap().unwrap().state,
            JobState::Inflight
        );
        // Once every job has left, no chunk and no mark of one gone is left.
        for &id in &ids[1..] {
            store.claim_job(id).unwrap().unwrap();
        }
        assert_eq!((store.fresh_chunks.len(), store.fresh_gone.len()), (0, 0));
        assert_eq!(store.jobs.len(), 40);
        assert_eq!(store.latest.len(), 40);
        let store = reopen(&dir, store);
        assert!(fresh_ids(&store).is_empty());
        assert_eq!(
            store
                .list_jobs(Some(JobState::Inflight), 100)
                .unwrap()
                .len(),
            40
        );
    }

    #[test]
    fn a_newer_push_replaces_a_fresh_job_as_it_replaced_a_stored_one_across_restarts() {
        let (dir, store) = temp_sled();
        let push = |store: &super::super::SledStore, n: u32, sha: char| {
            recorded(
                store
                    .record_now(&delivery(&format!("d{n}")), true, &[change("main", sha)])
                    .unwrap(),
            )
            .0[0]
                .clone()
        };
        let a = push(&store, 1, 'a');
        let b = push(&store, 2, 'b');
        // `a` was still pending: `b` replaced it.
        assert!(store.job(a.id).unwrap().is_none());
        assert_eq!(fresh_ids(&store), vec![b.id]);
        let store = reopen(&dir, store);
        let c = push(&store, 3, 'c');
        assert!(store.job(b.id).unwrap().is_none());
        let pending: Vec<u64> = store
            .list_jobs(Some(JobState::Pending), 10)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(pending, vec![c.id]);
        // In flight, `c` is not replaced; `d` becomes the newest, fresh, and stays so
        // after a restart, in front of `latest_jobs`' entry for `c`.
        store.claim_job(c.id).unwrap().unwrap();
        let d = push(&store, 4, 'd');
        assert_eq!(store.job(c.id).unwrap().unwrap().state, JobState::Inflight);
        let store = reopen(&dir, store);
        let index: Vec<(Vec<u8>, u64)> = store
            .fresh
            .lock()
            .latest()
            .map(|(k, id)| (k.to_vec(), id))
            .collect();
        assert_eq!(index, vec![(d.coalescing_key(), d.id)]);
        // `c` ends: nothing more; `d` is claimed and released (shutdown): it is still
        // the newest, now in `latest_jobs`.
        store
            .finish_job(c.id, &done(Some(7)), now())
            .unwrap()
            .unwrap();
        store.claim_job(d.id).unwrap().unwrap();
        assert_eq!(store.release_job(d.id).unwrap().unwrap().unwrap().id, d.id);
        assert!(store.fresh.lock().latest().next().is_none());
        let e = push(&store, 5, 'e');
        assert!(
            store.job(d.id).unwrap().is_none(),
            "pending again, so replaced"
        );
        let store = reopen(&dir, store);
        let resumed: Vec<u64> = store
            .resume_jobs(now())
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(resumed.last(), Some(&e.id));
        assert!(!resumed.contains(&d.id));
    }

    #[test]
    fn an_admin_removal_or_a_revival_writes_the_index_as_before() {
        let (dir, store) = temp_sled();
        let (jobs, _) = recorded(
            store
                .record_now(&delivery("1"), true, &[change("x", 'a'), change("y", 'b')])
                .unwrap(),
        );
        let (x, y) = (&jobs[0], &jobs[1]);
        // The newest of its key, removed while fresh: nothing is the newest any more.
        assert!(store.remove_job(x.id).unwrap());
        assert!(store.latest.get(x.coalescing_key()).unwrap().is_none());
        assert!(
            store
                .fresh
                .lock()
                .latest()
                .all(|(k, _)| k != x.coalescing_key())
        );
        let store = reopen(&dir, store);
        assert_eq!(fresh_ids(&store), vec![y.id]);
        assert!(store.job(x.id).unwrap().is_none());
        // A dead job revived while a newer one of its key is fresh: the fresh one stays
        // the newest (the revival does not take the index).
        let (older, _) = recorded(
            store
                .record_now(&delivery("2"), true, &[change("z", 'c')])
                .unwrap(),
        );
        store.claim_job(older[0].id).unwrap().unwrap();
        let dead = Finish::Dead {
            error: "TeamCity answered 404".into(),
        };
        store
            .finish_job(older[0].id, &dead, now())
            .unwrap()
            .unwrap();
        let (newer, _) = recorded(
            store
                .record_now(&delivery("3"), true, &[change("z", 'd')])
                .unwrap(),
        );
        store.revive_job(older[0].id, now()).unwrap().unwrap();
        let store = reopen(&dir, store);
        let key = newer[0].coalescing_key();
        let named: Vec<u64> = store
            .fresh
            .lock()
            .latest()
            .filter(|(k, _)| *k == key.as_slice())
            .map(|(_, id)| id)
            .collect();
        assert_eq!(named, vec![newer[0].id]);
        assert_eq!(fresh_ids(&store), vec![y.id, newer[0].id]);
    }
}
