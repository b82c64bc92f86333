//! The embedded sled backend: one process per store directory.
//!
//! Trees:
//! - `tokens`: token id → the token record (the token itself sealed, see `crypto`)
//! - `token_index`: `source \0 user key \0 server` → token id
//! - `jobs`: job id (u64, big-endian, so iteration is oldest first) → [`Job`], for every
//!   job with something left to do, or to be retried (pending, in flight, dead, done with
//!   its build still followed)
//! - `finished_jobs`: the same for finished jobs (done, build no longer followed), which
//!   start-up does not read (`finished`)
//! - `fresh_jobs`: (intake sequence number, chunk index) → up to 16 jobs as the intake made
//!   them, until their first change (store format 6, `fresh`); `fresh_gone`: (chunk key, job
//!   id) for each job that has left a chunk still kept
//! - `latest_jobs`: coalescing key → id of the newest job enqueued for that key (where that
//!   job is fresh, the in-memory overlay of `fresh` names it instead)
//! - `sessions`: SHA-256 of a token-page session cookie → [`Session`](crate::store::Session)
//! - `unreadable`: `tree \0 key` → the bytes of a record that could not be read, set aside
//! - `meta`: the store's format version, the master-key check value, the admin token hash,
//!   the store's id, the last intake-log delivery applied and the next job id
//!
//! Beside sled's files, `intake-*.log`: the intake log (`intake`), where accepted
//! deliveries and in-flight marks are made durable before sled has them; and `window/`:
//! the de-duplication window (`window`), every delivery id and change mark of the last
//! 24 h and the delivery records the listing shows (in sled's trees `deliveries` and
//! `seen_changes` up to store format 4).
//!
//! Records carry a format version (`records`); a store of an older bb2tc is migrated when
//! it opens (`migrate`). A record that cannot be read is moved to `unreadable`, counted
//! (`bb2tc_store_unreadable_records`) and logged — never a reason to fail a start or a
//! listing. Queue depths and token counts are kept up to date with each write
//! ([`Stats`]); the finished jobs are counted by a thread after start-up (`finished`).
//!
//! Deliveries and in-flight marks are durable once their intake-log entry is; other writes
//! that must survive a crash (tokens, sessions, admin changes) are followed by
//! [`Trees::commit`] (flush + fsync, shared between concurrent callers; see `group_commit`).

mod dump;
mod finished;
mod fresh;
pub(crate) mod group_commit;
mod intake;
mod job_v1;
mod jobs;
mod key_rotation;
mod migrate;
mod records;
mod sessions;
mod token_cache;
mod tokens;
mod window;

use crate::config::StorageSettings;
use crate::job::Job;
use crate::store::StoreError;
use crate::store::crypto::TokenCipher;
use crate::store::jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome};
use crate::store::stats::Stats;
use group_commit::GroupCommit;
pub use intake::Durable;
use sled::Transactional;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The tree of finished jobs (`finished`).
pub(super) const FINISHED_JOBS: &str = "finished_jobs";

/// Counts the finished jobs of the store, a chunk at a time, on a thread of its own; ends
/// early when the store closes.
fn count_finished_jobs(trees: std::sync::Weak<Trees>) {
    let spawned = std::thread::Builder::new()
        .name("bb2tc-count-finished".into())
        .spawn(move || {
            // After start-up has resumed the live jobs (not to share the disk with it).
            let deadline = std::time::Instant::now() + finished::COUNT_AFTER;
            loop {
                let Some(trees) = trees.upgrade() else { return };
                if trees.finished_count.has_resumed() || std::time::Instant::now() >= deadline {
                    break;
                }
                drop(trees);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let started = std::time::Instant::now();
            let mut counted = 0u64;
            loop {
                let Some(trees) = trees.upgrade() else { return };
                let step = trees.finished_count.step(&trees.finished, |job| {
                    counted += 1;
                    trees.stats.job_changed(None, Some(job));
                });
                match step {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot count the finished jobs; their number in bb2tc_queue_depth stays short");
                        return;
                    }
                }
            }
            tracing::info!(
                jobs = counted,
                ms = started.elapsed().as_millis() as u64,
                "finished jobs counted"
            );
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start counting the finished jobs");
    }
}

/// sled's page cache. Its default (1 GiB) would let a large backlog grow the process; jobs
/// are read once per attempt, so a small cache costs little.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

const ADMIN_HASH: &[u8] = b"admin_token_sha256";

/// The open sled store: its trees and, in front of them, the intake log that deliveries
/// and in-flight marks are made durable in (`intake`). It derefs to [`Trees`].
#[derive(Debug)]
pub struct SledStore {
    // Declared first, so dropped first: its threads finish with the trees still open.
    intake: intake::Intake,
    trees: Arc<Trees>,
}

impl std::ops::Deref for SledStore {
    type Target = Trees;

    fn deref(&self) -> &Trees {
        &self.trees
    }
}

impl SledStore {
    /// Opens (creating if missing) the store at `settings.path`, replays what its intake
    /// log holds that sled does not, and starts the log. Jobs applied to sled from then on
    /// are announced on `events`.
    pub fn start(
        settings: &StorageSettings,
        events: mpsc::UnboundedSender<Applied>,
    ) -> Result<Self, StoreError> {
        let trees = Arc::new(Trees::open(settings)?);
        *lock_announce(&trees.announce) = Some(events.clone());
        let intake = intake::Intake::start(trees.clone(), settings.intake_segment_bytes, events)?;
        count_finished_jobs(Arc::downgrade(&trees));
        Ok(Self { intake, trees })
    }

    /// [`start`](Self::start) with nobody listening for applied jobs.
    #[cfg(test)]
    pub fn open(settings: &StorageSettings) -> Result<Self, StoreError> {
        Self::start(settings, mpsc::unbounded_channel().0)
    }

    /// Test-only: [`open`](Self::open) without the thread that counts the finished jobs;
    /// the test counts them itself, a chunk at a time ([`count_finished_step`]).
    #[cfg(test)]
    pub fn open_counting_by_hand(settings: &StorageSettings) -> Result<Self, StoreError> {
        let trees = Arc::new(Trees::open(settings)?);
        let intake = intake::Intake::start(
            trees.clone(),
            settings.intake_segment_bytes,
            mpsc::unbounded_channel().0,
        )?;
        Ok(Self { intake, trees })
    }

    /// Test-only: resumes the jobs as start-up does, and waits until the thread has
    /// counted the finished jobs.
    #[cfg(test)]
    pub fn resume_and_count(&self) {
        self.trees.resume_jobs(crate::clock::now_ms()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.trees.finished_count.is_done() {
            assert!(
                std::time::Instant::now() < deadline,
                "finished jobs never counted"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Test-only: one step of the count of finished jobs; `false` once it is done.
    #[cfg(test)]
    pub fn count_finished_step(&self) -> bool {
        self.trees
            .finished_count
            .step(&self.trees.finished, |job| {
                self.trees.stats.job_changed(None, Some(job))
            })
            .unwrap()
    }

    /// Records a delivery and its jobs: `Duplicate` when its id was seen (and `dedup_id`),
    /// changes already seen skipped. Returns at once, with what tells when it is durable;
    /// sled has it shortly after (see `intake`).
    pub fn record_push(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<(RecordOutcome, Durable), StoreError> {
        // The log's writer checks that the store directory is still in place, once per
        // group of deliveries (`intake::writer`).
        self.intake.record(delivery, dedup_id, changes)
    }

    /// Makes a claim durable: the job (already in flight in sled) went in flight for
    /// `attempt`.
    pub fn log_claim(&self, job: u64, attempt: u32) -> Result<Durable, StoreError> {
        // Checked here too (once per job, not per delivery): an entry refused at once never
        // joins a group that later deliveries would be refused behind.
        self.location_intact()?;
        self.intake.log_claim(job, attempt)
    }

    /// What to wait on until the trees hold every delivery taken in before this call.
    pub fn catch_up(&self) -> intake::CatchUp {
        self.intake.catch_up()
    }

    /// Writes a probe entry to the intake log (whether it takes writes).
    pub fn log_probe(&self) -> Result<Durable, StoreError> {
        // A probe of a store whose directory is gone fails at once (see `log_claim`).
        self.location_intact()?;
        self.intake.log_probe()
    }

    /// `Err` while accepted deliveries cannot be applied to the trees (a full disk): they
    /// are safe in the intake log, but the store does not work (its probe fails on it).
    pub fn applying(&self) -> Result<(), StoreError> {
        match self.intake.apply_problem() {
            None => Ok(()),
            Some(why) => Err(StoreError::Durability(format!(
                "accepted deliveries cannot be applied to the store: {why}"
            ))),
        }
    }

    /// Bytes of the store's filesystem that bb2tc can still use (as an unprivileged user:
    /// the blocks reserved for root are not counted).
    #[cfg(target_os = "linux")]
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        let fs = rustix::fs::statvfs(&self.path).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            message: format!("cannot read the filesystem's free space: {e}"),
        })?;
        Ok(fs.f_bavail.saturating_mul(fs.f_frsize))
    }

    /// Not measured where bb2tc has no `statvfs` (rustix is a Linux-only dependency here):
    /// `/readyz` then relies on its probe's write alone.
    #[cfg(not(target_os = "linux"))]
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        Ok(u64::MAX)
    }

    /// The trees' maintained counts, and the deliveries not yet applied to them.
    pub fn stats(&self) -> crate::store::StatsSnapshot {
        let mut stats = self.trees.stats();
        stats.intake_backlog = self.intake.backlog();
        stats
    }

    /// Test-only: whether the intake log's writer waits for its applier to catch up.
    #[cfg(test)]
    pub fn intake_waits_for_applier(&self) -> bool {
        self.intake.waits_for_applier()
    }

    /// Test-only: waits until sled holds every delivery recorded so far.
    #[cfg(test)]
    pub fn wait_applied(&self) {
        self.intake.wait_applied();
    }

    /// Test-only: [`record_push`](Self::record_push), then waits until sled has it.
    #[cfg(test)]
    pub fn record_now(
        &self,
        delivery: &DeliveryRecord,
        dedup_id: bool,
        changes: &[ChangeJobs],
    ) -> Result<RecordOutcome, StoreError> {
        let (outcome, _) = self.record_push(delivery.clone(), dedup_id, changes.to_vec())?;
        self.wait_applied();
        Ok(outcome)
    }
}

/// sled's trees and what keeps them. Its methods block (sled calls, fsyncs): the
/// [`crate::store::Store`] boundary runs them off tokio's worker threads.
#[derive(Debug)]
pub struct Trees {
    path: PathBuf,
    db: sled::Db,
    tokens: sled::Tree,
    token_index: sled::Tree,
    jobs: sled::Tree,
    finished: sled::Tree,
    latest: sled::Tree,
    /// Jobs as the intake applied them, a chunk to a value, and those that left a chunk
    /// (see `fresh`).
    fresh_chunks: sled::Tree,
    fresh_gone: sled::Tree,
    fresh: fresh::Fresh,
    /// Delivery ids, change marks and delivery records of the last 24 h.
    window: window::Window,
    sessions: sled::Tree,
    unreadable: sled::Tree,
    meta: sled::Tree,
    cipher: TokenCipher,
    /// Which token each pusher's deliveries use (cleared by every token write).
    token_cache: token_cache::TokenCache,
    committer: GroupCommit,
    stats: Stats,
    /// How far the count of `finished` after start-up has got.
    finished_count: finished::FinishedCount,
    id: String,
    /// (device, inode) of the store directory when it was opened.
    identity: Option<(u64, u64)>,
    /// The next job id to give: set by the intake log's replay at start, then taken by the
    /// intake (a delivery's jobs) and by the store itself (status reports, made as jobs
    /// finish), so that both draw from one sequence.
    next_job_id: std::sync::atomic::AtomicU64,
    /// Where jobs the store makes itself are announced (as the applier announces a
    /// delivery's), for the workers.
    announce: std::sync::Mutex<Option<mpsc::UnboundedSender<Applied>>>,
    /// Test-only: operations made to fail, to test what heals after a store error.
    #[cfg(test)]
    pub(crate) faults: test_support::Faults,
}

fn lock_announce(
    announce: &std::sync::Mutex<Option<mpsc::UnboundedSender<Applied>>>,
) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<Applied>>> {
    announce
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Trees {
    /// The next job id (see `next_job_id`).
    pub(super) fn take_job_id(&self) -> u64 {
        self.next_job_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Hands jobs the store made itself to the workers.
    pub(super) fn announce(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(events) = lock_announce(&self.announce).as_ref() {
            let _ = events.send(Applied {
                jobs,
                coalesced: Vec::new(),
            });
        }
    }

    /// Opens (creating if missing) the store at `settings.path` and checks the master key.
    fn open(settings: &StorageSettings) -> Result<Self, StoreError> {
        let path = settings.path.clone();
        std::fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
        let db = open_sled(&path)?;
        restrict_permissions(&path)?;
        let meta = db.open_tree("meta")?;
        let unreadable = db.open_tree("unreadable")?;
        migrate::migrate(&db, &meta, &unreadable, &path)?;
        let window = window::Window::open(&path.join(window::DIR))?;
        let cipher = key_rotation::open_cipher(settings, &meta)?;
        let id = store_id(&meta)?;
        let committer = GroupCommit::start(db.clone(), &path).map_err(|e| io_error(&path, e))?;
        let identity = directory_identity(&path);
        let fresh_chunks = db.open_tree(fresh::CHUNKS)?;
        let fresh_gone = db.open_tree(fresh::GONE)?;
        let (fresh, unreadable_chunks) = fresh::Fresh::load(&fresh_chunks, &fresh_gone)?;
        let store = Self {
            tokens: db.open_tree("tokens")?,
            token_index: db.open_tree("token_index")?,
            jobs: db.open_tree("jobs")?,
            finished: db.open_tree(FINISHED_JOBS)?,
            latest: db.open_tree("latest_jobs")?,
            fresh_chunks,
            fresh_gone,
            fresh,
            window,
            sessions: db.open_tree("sessions")?,
            unreadable,
            meta,
            path,
            db,
            cipher,
            token_cache: Default::default(),
            committer,
            stats: Stats::default(),
            finished_count: Default::default(),
            identity,
            id,
            #[cfg(test)]
            faults: Default::default(),
            next_job_id: Default::default(),
            announce: Default::default(),
        };
        for (key, bytes, error) in unreadable_chunks {
            store.set_aside(&store.fresh_chunks, &key, &bytes, &error);
        }
        store.count_all()?;
        Ok(store)
    }

    /// This store's id: random, made when it was created, kept for good. Build comments
    /// carry it with the job id, so a job is recognised in TeamCity even when several
    /// bb2tc installations share one TeamCity server.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counts the live jobs, tokens and set-aside records once, at open (the finished jobs
    /// are counted later, see [`count_finished_jobs`]).
    fn count_all(&self) -> Result<(), StoreError> {
        self.stats.set_aside(self.unreadable.len());
        for job in self.fresh.lock().jobs(&self.fresh_chunks)? {
            self.stats.job_changed(None, Some(&job));
        }
        for item in self.records::<Job>(&self.jobs) {
            self.stats.job_changed(None, Some(&item?.1));
        }
        for item in self.records::<tokens::StoredToken>(&self.tokens) {
            self.stats.token_changed(None, Some(item?.1.status()));
        }
        Ok(())
    }

    /// A record by key; one that cannot be read is set aside and reads as absent.
    fn read_record<T: records::Record>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = tree.get(key)? else {
            return Ok(None);
        };
        match records::decode(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                self.set_aside(tree, key, &bytes, &e);
                Ok(None)
            }
        }
    }

    /// Every readable record of `tree` in key order; unreadable ones are set aside.
    fn records<'a, T: records::Record + 'a>(
        &'a self,
        tree: &'a sled::Tree,
    ) -> impl Iterator<Item = Result<(sled::IVec, T), StoreError>> + 'a {
        tree.iter()
            .filter_map(move |item| self.readable(tree, item))
    }

    /// [`records`](Self::records), newest key first.
    fn records_rev<'a, T: records::Record + 'a>(
        &'a self,
        tree: &'a sled::Tree,
    ) -> impl Iterator<Item = Result<(sled::IVec, T), StoreError>> + 'a {
        tree.iter()
            .rev()
            .filter_map(move |item| self.readable(tree, item))
    }

    fn readable<T: records::Record>(
        &self,
        tree: &sled::Tree,
        item: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Option<Result<(sled::IVec, T), StoreError>> {
        match item {
            Err(e) => Some(Err(e.into())),
            Ok((key, bytes)) => match records::decode(&bytes) {
                Ok(record) => Some(Ok((key, record))),
                Err(e) => {
                    self.set_aside(tree, &key, &bytes, &e);
                    None
                }
            },
        }
    }

    /// Sets the record at `key` aside if it (still) cannot be read as a `T`.
    fn set_aside_if_unreadable<T: records::Record>(&self, tree: &sled::Tree, key: &[u8]) {
        if let Ok(Some(bytes)) = tree.get(key)
            && let Err(e) = records::decode::<T>(&bytes)
        {
            self.set_aside(tree, key, &bytes, &e);
        }
    }

    /// Moves a record that cannot be read to `unreadable`, counts and logs it. Failing to
    /// move it is logged too: the record then stays and is skipped again next time.
    fn set_aside(&self, tree: &sled::Tree, key: &[u8], bytes: &[u8], error: &StoreError) {
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        let moved = (tree, &self.unreadable).transaction(|(tree, unreadable)| {
            if tree.get(key)?.as_deref() != Some(bytes) {
                return Ok(false); // changed meanwhile
            }
            unreadable.insert(unreadable_key(&name, key), bytes)?;
            tree.remove(key)?;
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(true)
        });
        match moved {
            Ok(true) => {
                self.stats.set_aside(1);
                // It may have been a token someone's deliveries were using.
                self.token_cache.clear();
                tracing::error!(
                    tree = %name, key = %printable(key), %error,
                    "set aside a record that cannot be read (tree \"unreadable\")"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::error!(
                tree = %name, key = %printable(key), error = %e,
                "cannot set aside a record that cannot be read"
            ),
        }
    }

    /// Sets aside what follows the last readable entry of an intake log segment that is not
    /// the newest (damage, not a torn write): kept in `unreadable`, counted and logged.
    fn set_aside_log_tail(&self, segment: &str, offset: u64, bytes: &[u8], why: &str) {
        let key = unreadable_key("intake", format!("{segment}@{offset}").as_bytes());
        match self.unreadable.insert(key, bytes) {
            Ok(_) => {
                self.stats.set_aside(1);
                tracing::error!(
                    segment,
                    offset,
                    reason = why,
                    "set aside the unreadable rest of an intake log segment (tree \"unreadable\")"
                );
            }
            Err(e) => {
                tracing::error!(segment, offset, error = %e, "cannot set aside the unreadable rest of an intake log segment")
            }
        }
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write done before this call durable (flush + fsync), sharing the fsync
    /// with concurrent callers.
    pub async fn commit(&self) -> Result<(), StoreError> {
        // A write into a store directory that was deleted or replaced would be acknowledged
        // and then lost: nothing is durable there any more.
        self.location_intact()?;
        self.committer
            .commit()
            .await
            .map_err(StoreError::Durability)
    }

    /// [`commit`](Self::commit) on the calling thread, unshared (checkpoints, start-up).
    fn commit_blocking(&self) -> Result<(), StoreError> {
        self.location_intact()?;
        self.db.flush()?;
        let log = self.path.join("db");
        std::fs::File::open(&log)
            .and_then(|f| f.sync_data())
            .map_err(|e| StoreError::Durability(format!("{}: {e}", log.display())))
    }

    /// Whether the directory this store opened is still the one at its path (not removed,
    /// not replaced). When it is not, nothing written can become durable and only a
    /// restart helps.
    pub fn location_intact(&self) -> Result<(), StoreError> {
        let now = directory_identity(&self.path);
        if now.is_some() && now == self.identity {
            return Ok(());
        }
        Err(StoreError::Io {
            path: self.path.clone(),
            message: MOVED_AWAY.into(),
        })
    }

    /// The maintained counts.
    pub fn stats(&self) -> crate::store::StatsSnapshot {
        self.stats.snapshot()
    }

    /// Writes a probe value (synced by the caller): whether the store takes writes.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        self.meta
            .insert(b"probe", &crate::clock::now_ms().to_be_bytes())?;
        Ok(())
    }

    /// The stored SHA-256 of the generated admin token, if one was generated.
    pub fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .meta
            .get(ADMIN_HASH)?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// Stores the SHA-256 of a newly generated admin token (synced by the caller).
    pub fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        self.meta.insert(ADMIN_HASH, &hash)?;
        Ok(())
    }
}

/// How long to wait for sled's file lock: a process that is just exiting (a restart) lets go
/// of it a moment later.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled locks its files; its message is the only sign of that.
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Io {
                        path: path.to_owned(),
                        message: "the store is in use by another bb2tc process (run one per store)"
                            .into(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => return Err(StoreError::Sled(other)),
        }
    }
}

/// The store is bb2tc's alone: the directory 0700, its files 0600 (sled creates them with
/// the umask's mode; files it adds later sit inside the closed directory).
fn restrict_permissions(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_error(path, e))
        };
        set(dir, 0o700)?;
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let path = entry.map_err(|e| io_error(dir, e))?.path();
            set(&path, if path.is_dir() { 0o700 } else { 0o600 })?;
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Why nothing is written to a store whose directory was removed or replaced.
pub(super) const MOVED_AWAY: &str = "the store directory was removed or replaced while bb2tc \
    ran; nothing written now would last. Restore it and restart bb2tc";

/// (device, inode) of a directory; `None` when it is gone (or off Unix, always `Some(0, 0)`
/// while it exists).
pub(super) fn directory_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The key under which a record of `tree` is set aside.
fn unreadable_key(tree: &str, key: &[u8]) -> Vec<u8> {
    [tree.as_bytes(), b"\0", key].concat()
}

/// A key for a log line: text when it is text, else hex (job ids, hashes).
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(|c| c != '\0' && c.is_control()) => text.replace('\0', "/"),
        _ => hex::encode(key),
    }
}

const STORE_ID: &[u8] = b"store_id";

fn store_id(meta: &sled::Tree) -> Result<String, StoreError> {
    if let Some(id) = meta.get(STORE_ID)? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let id = hex::encode(rand::random::<[u8; 4]>());
    meta.insert(STORE_ID, id.as_bytes())?;
    meta.flush()?;
    Ok(id)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// How many times each named operation still fails.
    #[derive(Debug, Default)]
    pub struct Faults(Mutex<HashMap<&'static str, usize>>);

    impl Faults {
        /// The next `times` calls of `operation` fail with an I/O error.
        pub fn fail(&self, operation: &'static str, times: usize) {
            self.0.lock().unwrap().insert(operation, times);
        }

        /// An error if `operation` is to fail now.
        pub(in crate::store::sled) fn check(&self, operation: &str) -> Result<(), StoreError> {
            let mut faults = self.0.lock().unwrap();
            match faults.get_mut(operation) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Err(StoreError::Io {
                        path: PathBuf::from("(test)"),
                        message: format!("{operation}: injected failure"),
                    })
                }
                _ => Ok(()),
            }
        }
    }

    /// A sled store in a fresh temp dir (kept alive by the returned guard).
    pub fn temp_sled() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        let store = SledStore::open(&settings).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Secret;
    use crate::store::test_support::temp_sled;

    #[tokio::test]
    async fn wrong_master_key_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let first = StorageSettings {
            path: path.clone(),
            master_key: Some(Secret::new(TokenCipher::generate_key())),
            intake_segment_bytes: crate::config::DEFAULT_INTAKE_SEGMENT_BYTES,
            postgres: None,
        };
        drop(SledStore::open(&first).unwrap());
        let second = StorageSettings {
            path,
            master_key: Some(Secret::new(TokenCipher::generate_key())),
            intake_segment_bytes: crate::config::DEFAULT_INTAKE_SEGMENT_BYTES,
            postgres: None,
        };
        let err = SledStore::open(&second).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey(_)), "{err}");
        assert!(err.to_string().contains("master key does not match"));
    }

    #[cfg(unix)]
    #[test]
    fn the_store_directory_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = temp_sled();
        drop(store);
        let data = dir.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for name in ["db", "conf", "master.key"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn a_store_in_use_is_refused_clearly() {
        let (dir, store) = temp_sled();
        let settings = crate::store::test_support::settings(dir.path());
        let err = SledStore::open(&settings).unwrap_err().to_string();
        assert!(err.contains("in use by another bb2tc process"), "{err}");
        drop(store);
        assert!(SledStore::open(&settings).is_ok());
    }

    #[tokio::test]
    async fn commit_is_shared_and_succeeds() {
        let (_dir, store) = temp_sled();
        let store = std::sync::Arc::new(store);
        let mut waits = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            waits.push(tokio::spawn(async move {
                store.probe_write().unwrap();
                store.commit().await
            }));
        }
        for wait in waits {
            wait.await.unwrap().unwrap();
        }
    }
}
