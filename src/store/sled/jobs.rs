//! Jobs and deliveries in sled: `jobs` (id, big-endian → job) and `finished_jobs` (the same,
//! for jobs with nothing left to do, see `finished`), `latest_jobs` (coalescing key → newest
//! job id); delivery records and marks in the de-duplication window (`window`). What happens to a job is decided by
//! [`crate::job::lifecycle`]; each method here reads what a transition needs and applies the
//! writes it returns in one transaction.

use super::Trees;
use super::finished::{self, CountCursor, JobTrees, Unreadable, job_key};
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

/// The id of the newest job for `key`.
fn latest_id(latest: &TransactionalTree, key: &[u8]) -> TxResult<Option<u64>> {
    Ok(latest
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

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

fn apply(jobs: &JobTrees<'_>, latest: &TransactionalTree, writes: &[Write]) -> TxResult<()> {
    for write in writes {
        match write {
            Write::Put(job) => jobs.put(job)?,
            Write::Delete(id) => jobs.remove(*id)?,
            Write::SetLatest { key, id } => {
                latest.insert(key.as_slice(), &job_key(*id))?;
            }
            Write::ClearLatest { key } => {
                latest.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
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
        let result = (&self.jobs, &self.latest, &self.meta, &self.finished).transaction(
            |(jobs, latest, meta, finished)| {
                bad.borrow_mut().clear();
                let jobs = JobTrees { jobs, finished };
                let mut transitions = Vec::new();
                let mut next_job_id = read_u64(meta, NEXT_JOB_ID)?;
                for (_, accepted) in batch {
                    for job in &accepted.jobs {
                        let newest = match latest_id(latest, &job.coalescing_key())? {
                            Some(id) => jobs.get(id, &bad)?,
                            None => None,
                        };
                        let t = lifecycle::enqueue(job.clone(), newest.as_ref());
                        apply(&jobs, latest, &t.writes)?;
                        next_job_id = next_job_id.max(job.id + 1);
                        transitions.push(t);
                    }
                }
                meta.insert(APPLIED_SEQ, &last_seq.to_be_bytes())?;
                meta.insert(NEXT_JOB_ID, &next_job_id.to_be_bytes())?;
                Ok(transitions)
            },
        );
        self.set_aside_jobs(bad);
        let transitions = result?;
        let mut applied = Applied::default();
        for t in transitions {
            let before: Vec<&Job> = t.coalesced.iter().collect();
            // New jobs and the pending ones they replace: never finished ones.
            self.count_writes(&CountCursor::DONE, &before, &t.writes);
            if let Some(old) = &t.coalesced {
                applied.coalesced.push((old.server.clone(), old.id));
            }
            applied.jobs.extend(t.job);
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
        let stored = last(&self.jobs)?.max(last(&self.finished)?);
        let generated = self.db.generate_id()?;
        Ok(kept.max(stored + 1).max(generated + 1).max(last_in_log + 1))
    }

    /// Replays a claim from the intake log: `true` when the job was still pending at the
    /// attempt before, and is now in flight.
    pub(super) fn replay_claim(&self, id: u64, attempt: u32) -> Result<bool, StoreError> {
        let t = self.transition(id, |job, _, _, _| Ok(lifecycle::replay_claim(job, attempt)))?;
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
        decide: impl Fn(
            &Job,
            Option<u64>,
            &JobTrees<'_>,
            &TransactionalTree,
        ) -> TxResult<Result<Transition, Refused>>,
    ) -> Result<Result<Transition, Unchanged>, StoreError> {
        let bad = Unreadable::default();
        // Held from the transaction to its count (see `finished`).
        let cursor = self.finished_count.hold();
        let result =
            (&self.jobs, &self.latest, &self.finished).transaction(|(jobs, latest, finished)| {
                bad.borrow_mut().clear();
                let jobs = JobTrees { jobs, finished };
                let Some(job) = jobs.get(id, &bad)? else {
                    return Ok(Err(Unchanged::Gone));
                };
                let newest = latest_id(latest, &job.coalescing_key())?;
                match decide(&job, newest, &jobs, latest)? {
                    Ok(t) => {
                        apply(&jobs, latest, &t.writes)?;
                        Ok(Ok((job, t)))
                    }
                    Err(Refused::WrongState(state)) => Ok(Err(Unchanged::InState(state))),
                }
            });
        self.set_aside_jobs(bad);
        Ok(result?.map(|(before, t)| {
            let mut all_before = vec![&before];
            all_before.extend(&t.also_changed);
            self.count_writes(&cursor, &all_before, &t.writes);
            t
        }))
    }

    /// Marks a pending job in flight (one more attempt); the job as claimed.
    pub fn claim_job(&self, id: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        let t = self.transition(id, |job, _, _, _| Ok(lifecycle::claim(job)))?;
        Ok(t.and_then(|t| t.job.ok_or(Unchanged::Gone)))
    }

    /// Puts a claimed job back, unsent (on shutdown, before its call was made). `Ok(None)`
    /// when it was dropped as superseded.
    pub fn release_job(&self, id: u64) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self.transition(id, |job, newest, _, _| Ok(lifecycle::release(job, newest)))?;
        Ok(t.map(|t| t.job))
    }

    /// A job whose call may have reached TeamCity (its task failed mid-call): pending again,
    /// flagged so TeamCity is asked first. `Ok(None)` when dropped as superseded.
    pub fn interrupt_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self.transition(id, |job, newest, _, _| {
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
        let t = self.transition(id, |job, latest, jobs, latest_tree| {
            let newest = match latest.filter(|&l| l != id) {
                Some(newest) => jobs.get(newest, &bad)?,
                None => None,
            };
            let mut t = lifecycle::sent(job, finish, latest, newest.as_ref(), now);
            if let Ok(t) = &mut t
                && let Some(after) = t.job.clone()
            {
                let report = status::after_trigger(&after, finish);
                self.add_status(t, &after, report, now, jobs, latest_tree, &bad)?;
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
        let t = self.transition(id, |job, _, jobs, latest| {
            let mut t = lifecycle::followed(job, seen, now);
            if let Ok(t) = &mut t
                && let Some(after) = t.job.clone()
            {
                let report = status::after_poll(job.build.as_ref(), &after);
                self.add_status(t, &after, report, now, jobs, latest, &bad)?;
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
    #[allow(clippy::too_many_arguments)]
    fn add_status(
        &self,
        t: &mut Transition,
        job: &Job,
        report: Option<status::StatusReport>,
        now: u64,
        jobs: &JobTrees<'_>,
        latest: &TransactionalTree,
        bad: &Unreadable,
    ) -> TxResult<()> {
        let Some(report) = report else {
            return Ok(());
        };
        let mut made = status::status_job(job, report);
        made.id = self.take_job_id();
        made.created_at = now;
        made.next_attempt_at = now;
        let waiting = match latest_id(latest, &made.coalescing_key())? {
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
        let mut pending = Vec::new();
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
        Ok(pending)
    }

    /// Makes a dead job pending again, due now, with a fresh attempt count.
    pub fn revive_job(&self, id: u64, now: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        let bad = Unreadable::default();
        let t = self.transition(id, |job, newest, jobs, _| {
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
        let t = self.transition(id, |job, newest, _, _| {
            Ok(Ok(lifecycle::remove(job, newest)))
        })?;
        Ok(t.is_ok())
    }

    /// Whether a job is still stored (cheaper than reading it).
    pub fn job_exists(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.jobs.contains_key(job_key(id))? || self.finished.contains_key(job_key(id))?)
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        match self.read_record(&self.jobs, &job_key(id))? {
            Some(job) => Ok(Some(job)),
            None => self.read_record(&self.finished, &job_key(id)),
        }
    }

    /// Every job, live and finished, newest first.
    fn jobs_newest_first(&self) -> impl Iterator<Item = Result<Job, StoreError>> + '_ {
        finished::newest_first(
            self.records_rev::<Job>(&self.jobs),
            self.records_rev::<Job>(&self.finished),
        )
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        // Only done jobs are ever finished.
        let all: Box<dyn Iterator<Item = Result<Job, StoreError>>> = match state {
            None | Some(JobState::Done) => Box::new(self.jobs_newest_first()),
            Some(_) => Box::new(
                self.records_rev::<Job>(&self.jobs)
                    .map(|r| r.map(|(_, j)| j)),
            ),
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
}
