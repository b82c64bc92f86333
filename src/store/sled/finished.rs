//! Finished jobs — done, their build no longer followed — apart from the live ones, in the
//! `finished_jobs` tree (store format 4).
//!
//! Start-up reads the whole `jobs` tree (to resume what is pending or was in flight, and
//! to count the queue). With every done job of the 24-h window in it, that read grew with
//! the window — 3.2 s to ready with 300 000 deliveries, where 100 000 queued jobs take
//! 0.5 s — though none of those jobs has anything left to do. Such a job never changes
//! again (it is listed, pruned after the window, or removed by an admin), so it moves to
//! `finished_jobs` in the transaction that finishes it, and start-up does not read it.
//!
//! A job's place follows from the job alone ([`settled`]), so every write puts it where it
//! belongs ([`JobTrees::put`]) and every read looks in both ([`JobTrees::get`]); what a
//! transition decides does not depend on where a job is kept.
//!
//! **Counts.** `bb2tc_queue_depth{state="done"}` counts finished jobs too. They are counted
//! after start-up, off its path, a chunk of keys at a time in id order ([`FinishedCount`]).
//! While the count runs, a write that adds or removes a finished job at or past the count's
//! cursor is left to the count (it will see the tree as the write left it); one before the
//! cursor is counted by the write. While the count runs, the cursor is held for the whole
//! of a transition, from its transaction to its count, so the two never count one job
//! twice or not at all; once it is done, transitions no longer take it. The count starts
//! once start-up has resumed the live jobs (or after [`COUNT_AFTER`]), so as not to share
//! the disk with them.

use super::fresh::FreshTx;
use super::records::{decode, encode};
use crate::job::{Job, JobState, follow};
use crate::store::StoreError;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Whether `job` is finished: done, and its build no longer followed. Nothing more happens
/// to it but listing and removal.
pub fn settled(job: &Job) -> bool {
    job.state == JobState::Done && !follow::is_followed(job)
}

pub(super) fn job_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Keys of job records found unreadable inside a transaction, set aside after it.
pub(super) type Unreadable = RefCell<Vec<Vec<u8>>>;

/// The job trees inside one transaction: live, finished, fresh (see `fresh`), and the
/// coalescing index.
pub(super) struct JobTrees<'a> {
    pub jobs: &'a TransactionalTree,
    pub finished: &'a TransactionalTree,
    pub latest: &'a TransactionalTree,
    pub fresh: FreshTx<'a>,
}

impl JobTrees<'_> {
    /// A job, fresh, live or finished; one that cannot be decoded counts as absent and is
    /// noted.
    pub fn get(&self, id: u64, bad: &Unreadable) -> TxResult<Option<Job>> {
        if self.fresh.holds(id) {
            return self.fresh.get(id);
        }
        let key = job_key(id);
        let bytes = match self.jobs.get(key)? {
            Some(bytes) => bytes,
            None => match self.finished.get(key)? {
                Some(bytes) => bytes,
                None => return Ok(None),
            },
        };
        match decode::<Job>(&bytes) {
            Ok(job) => Ok(Some(job)),
            Err(_) => {
                bad.borrow_mut().push(key.to_vec());
                Ok(None)
            }
        }
    }

    /// Writes `job` into the tree it belongs in. A live job is never finished already (a
    /// finished one does not change), so only the move into `finished_jobs` removes. A
    /// fresh job leaves its chunk.
    pub fn put(&self, job: &Job) -> TxResult<()> {
        self.leave_fresh(job.id)?;
        let bytes = encode(job).map_err(ConflictableTransactionError::Abort)?;
        if settled(job) {
            self.finished.insert(&job_key(job.id), bytes)?;
            self.jobs.remove(&job_key(job.id))?;
        } else {
            self.jobs.insert(&job_key(job.id), bytes)?;
        }
        Ok(())
    }

    /// Removes job `id` from the tree it is in. Most removals (a pending job replaced by a
    /// newer push, on the intake's path) find it fresh or live and write nothing to
    /// `finished_jobs`.
    pub fn remove(&self, id: u64) -> TxResult<()> {
        if self.leave_fresh(id)? {
            return Ok(());
        }
        if self.jobs.remove(&job_key(id))?.is_none() {
            self.finished.remove(&job_key(id))?;
        }
        Ok(())
    }

    /// Takes job `id` out of its chunk if it is fresh (`true`); the coalescing-index entry
    /// the overlay held for it goes to `latest_jobs`, as it would have been written.
    fn leave_fresh(&self, id: u64) -> TxResult<bool> {
        if !self.fresh.holds(id) {
            return Ok(false);
        }
        if let Some(key) = self.fresh.leave(id)? {
            self.latest.insert(key, &job_key(id))?;
        }
        Ok(true)
    }

    /// The id of the newest job of coalescing key `key`.
    pub fn newest(&self, key: &[u8]) -> TxResult<Option<u64>> {
        if let Some(id) = self.fresh.newest(key) {
            return Ok(Some(id));
        }
        Ok(self
            .latest
            .get(key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Writes the coalescing index's entry for `key` (`None`: none is the newest). A fresh
    /// job the overlay names for it first moves, unchanged, out of its chunk, so that
    /// start-up does not bring the overlay's entry back.
    pub fn set_latest(&self, key: &[u8], id: Option<u64>, bad: &Unreadable) -> TxResult<()> {
        self.move_out_newest(key, bad)?;
        match id {
            Some(id) => self.latest.insert(key, &job_key(id))?,
            None => self.latest.remove(key)?,
        };
        Ok(())
    }

    /// Adds a new job to the chunks the transaction writes; `latest`: the coalescing key it
    /// is now the newest of (the overlay names it), if it is.
    pub fn add_fresh(&self, job: &Job, latest: Option<&[u8]>, bad: &Unreadable) -> TxResult<()> {
        let key = match latest {
            Some(key) => {
                if self.fresh.newest(key).is_some_and(|j| j != job.id) {
                    self.move_out_newest(key, bad)?;
                }
                self.fresh.set_newest(key, Some(job.id));
                key.to_vec()
            }
            None => job.coalescing_key(),
        };
        self.fresh.add(job, latest.is_some(), key)
    }

    fn move_out_newest(&self, key: &[u8], bad: &Unreadable) -> TxResult<()> {
        if let Some(newest) = self.fresh.newest(key)
            && self.fresh.holds(newest)
            && let Some(job) = self.get(newest, bad)?
        {
            // `put` takes it out of its chunk and writes the overlay's entry, which the
            // caller then replaces.
            self.put(&job)?;
        }
        self.fresh.set_newest(key, None);
        Ok(())
    }
}

/// Merges two newest-first job iterations (say the live and the finished jobs) into one.
pub(super) fn newest_first<'a>(
    live: impl Iterator<Item = Result<Job, StoreError>> + 'a,
    finished: impl Iterator<Item = Result<Job, StoreError>> + 'a,
) -> impl Iterator<Item = Result<Job, StoreError>> + 'a {
    let mut live = live.peekable();
    let mut finished = finished.peekable();
    std::iter::from_fn(move || {
        let take_live = match (live.peek(), finished.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            // An error is passed on at once.
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok(a)), Some(Ok(b))) => a.id >= b.id,
        };
        if take_live {
            live.next()
        } else {
            finished.next()
        }
    })
}

/// Where the count of finished jobs after start-up has got to.
#[derive(Debug)]
pub struct CountCursor {
    /// The next job id to count; `None` once every finished job is counted.
    next: Option<u64>,
}

impl CountCursor {
    /// Whether `job`, written or removed now, is the count's to see (so not the write's).
    pub fn leaves_to_count(&self, job: &Job) -> bool {
        settled(job) && self.next.is_some_and(|next| job.id >= next)
    }

    /// The cursor of a store whose finished jobs are all counted.
    pub const DONE: Self = Self { next: None };
}

/// The count of finished jobs that runs after start-up.
#[derive(Debug)]
pub struct FinishedCount {
    cursor: Mutex<CountCursor>,
    /// Set (under the cursor's lock) when the count is done, never cleared.
    done: AtomicBool,
    /// Set when start-up has resumed the live jobs: the count may begin.
    resumed: AtomicBool,
}

impl Default for FinishedCount {
    fn default() -> Self {
        Self {
            cursor: Mutex::new(CountCursor { next: Some(0) }),
            done: AtomicBool::new(false),
            resumed: AtomicBool::new(false),
        }
    }
}

/// The longest the count waits for start-up to resume the live jobs.
pub const COUNT_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The cursor as a transition holds it: locked while the count runs.
pub enum Held<'a> {
    Counting(MutexGuard<'a, CountCursor>),
    Counted,
}

impl std::ops::Deref for Held<'_> {
    type Target = CountCursor;

    fn deref(&self) -> &CountCursor {
        match self {
            Held::Counting(cursor) => cursor,
            Held::Counted => &CountCursor::DONE,
        }
    }
}

/// How many finished jobs one step of the count reads (holding the cursor meanwhile).
pub const COUNT_CHUNK: usize = 512;

impl FinishedCount {
    /// The cursor, held by a transition from its transaction to its count. Once the count
    /// is done (`done` is set under the lock and never cleared), nothing needs holding.
    pub fn hold(&self) -> Held<'_> {
        if self.done.load(Ordering::Acquire) {
            return Held::Counted;
        }
        Held::Counting(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, CountCursor> {
        self.cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start-up has resumed the live jobs.
    pub fn resumed(&self) {
        self.resumed.store(true, Ordering::Release);
    }

    /// Whether every finished job is counted.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Whether start-up has resumed the live jobs.
    pub fn has_resumed(&self) -> bool {
        self.resumed.load(Ordering::Acquire)
    }

    /// Counts the next chunk of `finished` with `count`; `false` once all are counted.
    pub fn step(
        &self,
        finished: &sled::Tree,
        mut count: impl FnMut(&Job),
    ) -> Result<bool, StoreError> {
        let mut cursor = self.lock();
        let Some(next) = cursor.next else {
            return Ok(false);
        };
        let mut last = None;
        let mut read = 0;
        for item in finished.range(job_key(next)..).take(COUNT_CHUNK) {
            let (key, bytes) = item?;
            read += 1;
            last = <[u8; 8]>::try_from(key.as_ref())
                .ok()
                .map(u64::from_be_bytes);
            // One that cannot be read is not counted; a listing sets it aside.
            if let Ok(job) = decode::<Job>(&bytes) {
                count(&job);
            }
        }
        cursor.next = match last {
            Some(last) if read == COUNT_CHUNK && last < u64::MAX => Some(last + 1),
            _ => None,
        };
        if cursor.next.is_none() {
            self.done.store(true, Ordering::Release);
        }
        Ok(cursor.next.is_some())
    }
}
