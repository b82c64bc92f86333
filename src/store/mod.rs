//! The store boundary: everything the rest of bb2tc keeps — deliveries with their jobs and
//! de-duplication marks, the job queue, tokens, sessions, counts — as one async interface,
//! [`Store`], whatever the backend.
//!
//! The backend is sled (`store/sled/`, embedded, the default). Its calls block — sled's own work
//! and every fsync — so [`Store`] runs them on tokio's blocking pool, never on a worker
//! thread; the exceptions are a few reads of small hot trees (a pusher's token, whether a
//! job exists) and taking a delivery into the intake log, which only read, lock and queue.
//! The second backend, PostgreSQL (`store/postgres/`, SPEC §7.1), is async throughout and
//! shared by several instances. `http/`, `queue/` and `web/` only ever see [`Store`]. What happens to a job is decided by
//! [`crate::job::lifecycle`], not here.
//!
//! The types that cross the boundary live beside it: [`jobs`] (deliveries and their
//! outcome), [`tokens`], [`sessions`], [`stats`]; [`TokenCipher`] seals tokens for every
//! backend.

pub mod copy;
mod crypto;
pub mod dump;
pub mod jobs;
pub(crate) mod postgres;
mod reopen;
pub mod sessions;
pub(crate) mod sled;
pub mod stats;
pub mod tokens;

pub use crate::job::{Finish, Job, JobState, TokenRef};
pub use crypto::TokenCipher;
pub use jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome, Skipped, Unchanged};
pub use sessions::{Principal, Session};
pub use stats::{QueueStat, StatsSnapshot};
pub use tokens::{NewToken, TokenChoice, TokenFilter, TokenInfo, TokenStatus};

use crate::config::StorageSettings;
use crate::ids::{Secret, ServerId, SourceId, TeamCityToken, UserKey};
use std::path::PathBuf;
use std::sync::Arc;

/// How long a delivery id or a (repository, ref, sha) change is remembered for de-duplication,
/// and how long finished jobs and delivery records are kept for the admin API.
pub const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, corruption).
    #[error("store error: {0}")]
    Sled(#[from] ::sled::Error),
    /// A file next to the store could not be used.
    #[error("store I/O error at {path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The master key does not open the tokens already stored.
    #[error(
        "the master key does not match the one this store was created with \
         (check storage.master_key or {0}/master.key)"
    )]
    WrongMasterKey(String),
    /// A sealed value could not be opened (wrong key or damaged record).
    #[error("a stored token could not be decrypted")]
    Crypto,
    /// A record could not be decoded.
    #[error("store record is damaged: {0}")]
    Corrupt(String),
    /// The flush + fsync of a durable write failed.
    #[error("durable write failed: {0}")]
    Durability(String),
    /// PostgreSQL refused a statement or could not be reached (no password in the text).
    #[error("database error: {0}")]
    Postgres(String),
    /// A transaction lost a deadlock or serialisation race with another one (it is run
    /// again; seen only when that kept happening).
    #[error("database error: concurrent updates kept conflicting")]
    Conflict,
}

impl From<::sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: ::sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            ::sled::transaction::TransactionError::Abort(inner) => inner,
            ::sled::transaction::TransactionError::Storage(inner) => StoreError::Sled(inner),
        }
    }
}

/// How long a read waits for the sled intake log's applier to catch up (it takes well under
/// a millisecond when idle; only a failing disk holds it back longer).
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `work` on `store` on tokio's blocking pool.
async fn on_blocking_pool<R, F>(
    store: std::sync::Arc<sled::SledStore>,
    work: F,
) -> Result<R, StoreError>
where
    R: Send + 'static,
    F: FnOnce(&sled::SledStore) -> Result<R, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))?
}

/// The backends.
#[derive(Debug)]
enum Backend {
    Sled(reopen::SledHandle),
    Postgres(Arc<postgres::PgStore>),
}

/// The open store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    id: String,
    /// Jobs as they reach the queue's store, until the bridge takes the receiver.
    applied: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Applied>>>,
    /// Where the PostgreSQL backend announces jobs (also those of other instances).
    events: tokio::sync::mpsc::UnboundedSender<Applied>,
}

/// Runs the sled arm of a call, or the PostgreSQL one.
macro_rules! either {
    ($self:ident, sled: $sled:expr, pg($pg:ident) => $pg_call:expr) => {
        match &$self.backend {
            Backend::Sled(_) => $sled,
            Backend::Postgres($pg) => $pg_call,
        }
    };
}

impl Store {
    /// Opens (creating if missing) the sled store `settings` name, migrating an older format
    /// and replaying what its intake log holds.
    pub fn open(settings: &StorageSettings) -> Result<Self, StoreError> {
        let (events, applied) = tokio::sync::mpsc::unbounded_channel();
        let store = sled::SledStore::start(settings, events.clone())?;
        let id = store.id().to_owned();
        Ok(Self {
            backend: Backend::Sled(reopen::SledHandle::new(
                store,
                settings.clone(),
                events.clone(),
            )),
            id,
            applied: std::sync::Mutex::new(Some(applied)),
            events,
        })
    }

    /// Opens the backend `settings` name: sled (on the blocking pool) or PostgreSQL
    /// (connected, its schema migrated, the master key checked).
    pub async fn connect(settings: &StorageSettings) -> Result<Self, StoreError> {
        let Some(pg) = &settings.postgres else {
            let settings = settings.clone();
            return tokio::task::spawn_blocking(move || Self::open(&settings))
                .await
                .map_err(|e| StoreError::Corrupt(format!("opening the store failed: {e}")))?;
        };
        let (events, applied) = tokio::sync::mpsc::unbounded_channel();
        let store =
            postgres::PgStore::connect(pg, settings.master_key.as_ref(), events.clone()).await?;
        Ok(Self {
            id: store.id().to_owned(),
            backend: Backend::Postgres(Arc::new(store)),
            applied: std::sync::Mutex::new(Some(applied)),
            events,
        })
    }

    /// `sled` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        either!(self, sled: "sled", pg(_pg) => "postgres")
    }

    /// Whether several instances share this store (PostgreSQL): each TeamCity server's
    /// jobs are then sent only by the holder of its dispatch lease.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The jobs recorded deliveries made, each announced once the queue's store holds it
    /// (shortly after the delivery's 202): the workers are handed them from here. Also
    /// the jobs replayed when the store is reopened, and with PostgreSQL those other
    /// instances made. `None` after the first call.
    pub fn take_applied(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Applied>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn handle(&self) -> Result<&reopen::SledHandle, StoreError> {
        match &self.backend {
            Backend::Sled(handle) => Ok(handle),
            Backend::Postgres(_) => Err(StoreError::Corrupt(
                "a sled-only operation was asked of the PostgreSQL store".into(),
            )),
        }
    }

    /// Runs `work` on the sled backend, on tokio's blocking pool.
    async fn blocking<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&sled::SledStore) -> Result<R, StoreError> + Send + 'static,
    {
        on_blocking_pool(self.handle()?.current()?, work).await
    }

    /// Runs `work`, then makes it durable **on the same store instance**: a write taken by
    /// a store that is reopened meanwhile (see `reopen`) is never reported durable by the
    /// new one.
    async fn write_durably<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&sled::SledStore) -> Result<R, StoreError> + Send + 'static,
    {
        let handle = self.handle()?;
        let store = handle.current()?;
        let written = match on_blocking_pool(store.clone(), work).await {
            Ok(written) => store.commit().await.map(|()| written),
            Err(e) => Err(e),
        };
        if written.is_err() {
            handle.mark_failing();
        }
        written
    }

    /// Test-only: the next `times` calls of a backend operation fail.
    #[cfg(test)]
    pub(crate) fn fail_next(&self, operation: &'static str, times: usize) {
        if let Ok(store) = self.handle().and_then(|h| h.current()) {
            store.faults.fail(operation, times);
        }
    }

    /// Test-only: waits until the queue's store holds every delivery recorded so far.
    #[cfg(test)]
    pub(crate) async fn wait_applied(&self) {
        let store = self.handle().unwrap().current().unwrap();
        tokio::task::spawn_blocking(move || store.wait_applied())
            .await
            .unwrap();
    }

    /// This store's id (random, made once): build comments carry it with the job id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// With PostgreSQL, the store itself (for the tasks only that backend has).
    pub(crate) fn postgres(&self) -> Option<&Arc<postgres::PgStore>> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sled(_) => None,
        }
    }

    /// Where jobs are announced to this instance's workers.
    pub(crate) fn events(&self) -> tokio::sync::mpsc::UnboundedSender<Applied> {
        self.events.clone()
    }

    /// After a durable write failed: reopens the store if it still fails (sled does not
    /// recover from an I/O error by itself). `Ok(true)` when it takes writes (again).
    /// The bridge calls this every few seconds. PostgreSQL's pool heals by itself.
    pub async fn heal(&self) -> Result<bool, StoreError> {
        either!(self, sled: self.handle()?.heal().await, pg(_pg) => Ok(true))
    }

    /// Makes every write done before this call durable (flush + fsync), sharing the fsync
    /// with concurrent callers. PostgreSQL commits every write.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let Backend::Sled(handle) = &self.backend else {
            return Ok(());
        };
        let result = handle.current()?.commit().await;
        if result.is_err() {
            handle.mark_failing();
        }
        result
    }

    /// `Err` when the store can no longer make anything durable and only a restart helps
    /// (its directory was removed or replaced): `/healthz` fails on it.
    pub fn fatal_problem(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(handle) => match handle.current() {
                Ok(store) => store.location_intact(),
                Err(_) => Ok(()), // being reopened: not fatal
            },
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Writes and syncs a probe value: whether the store takes writes (for `/readyz`).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let handle = match &self.backend {
            Backend::Sled(handle) => handle,
            Backend::Postgres(pg) => return pg.probe_write().await,
        };
        let result = reopen::probe(&handle.current()?).await;
        if result.is_err() {
            handle.mark_failing();
        }
        result
    }

    /// `Some(why)` when the sled store's filesystem has less room than one intake log
    /// segment (`storage.intake_segment_bytes`: the next one could not be allocated).
    /// `/readyz` fails then, before the writes do: a probe's few bytes may still fit on a
    /// full disk. PostgreSQL watches its own disk.
    pub fn space_problem(&self) -> Option<String> {
        let Backend::Sled(handle) = &self.backend else {
            return None;
        };
        let needed = handle.settings().intake_segment_bytes;
        match handle.current().ok()?.free_bytes() {
            Ok(free) if free < needed => Some(format!(
                "the store's filesystem has {} KiB free, less than one intake log segment \
                 ({} KiB)",
                free >> 10,
                needed >> 10
            )),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The stored SHA-256 of the generated admin token, if one was generated.
    pub async fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        either!(self, sled: self.blocking(|s| s.admin_token_hash()).await,
            pg(pg) => pg.admin_token_hash().await)
    }

    /// Stores the SHA-256 of a newly generated admin token (durably).
    pub async fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        either!(self, sled: self.write_durably(move |s| s.set_admin_token_hash(hash)).await,
            pg(pg) => pg.set_admin_token_hash(hash).await)
    }

    /// Records a delivery and its jobs — `Duplicate` when its id was seen (and
    /// `dedup_id`), changes already seen skipped — and waits until it is durable (for a
    /// duplicate: until the first delivery is). The outcome, and apart from it whether it
    /// is durable: a delivery that is not is never built, and a redelivery is taken anew.
    /// The jobs reach the workers through [`take_applied`](Self::take_applied).
    ///
    /// sled: runs on the calling task, not the blocking pool: it takes a lock, reads
    /// de-duplication marks (from memory, or sled's cache), and queues one log entry.
    /// PostgreSQL: one transaction, committed when this returns.
    pub async fn record_push(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<(RecordOutcome, Result<(), StoreError>), StoreError> {
        let handle = match &self.backend {
            Backend::Sled(handle) => handle,
            Backend::Postgres(pg) => {
                return Ok((pg.record_push(delivery, dedup_id, changes).await?, Ok(())));
            }
        };
        let recorded = handle.current()?.record_push(delivery, dedup_id, changes);
        let (outcome, durable) = match recorded {
            Ok(recorded) => recorded,
            Err(e) => {
                handle.mark_failing();
                return Err(e);
            }
        };
        let durable = durable.wait().await;
        if durable.is_err() {
            handle.mark_failing();
        }
        Ok((outcome, durable))
    }

    /// Makes a claimed job's in-flight mark durable (before its call, SPEC §7). With
    /// PostgreSQL the claim was committed; this checks it is still this instance's.
    pub async fn persist_claim(&self, job: &Job) -> Result<(), StoreError> {
        let handle = match &self.backend {
            Backend::Sled(handle) => handle,
            Backend::Postgres(_) => return Ok(()),
        };
        let result = match handle.current()?.log_claim(job.id, job.attempts) {
            Ok(durable) => durable.wait().await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            handle.mark_failing();
        }
        result
    }

    /// Right before a job's call: whether its claim is still this instance's (PostgreSQL:
    /// a claim whose lease ran out was taken back, and its call must not be made).
    pub async fn confirm_claim(&self, job: &Job) -> Result<bool, StoreError> {
        either!(self, sled: Ok(true), pg(pg) => pg.confirm_claim(job.id).await)
    }

    /// Records a delivery that made no jobs, for the admin API (bookkeeping, not synced).
    pub async fn record_delivery(&self, delivery: DeliveryRecord) -> Result<(), StoreError> {
        either!(self, sled: self.blocking(move |s| s.record_delivery(&delivery)).await,
            pg(pg) => pg.record_delivery(&delivery).await)
    }

    /// A pending job goes in flight (one more attempt).
    pub async fn claim_job(&self, id: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.claim_job(id)).await,
            pg(pg) => pg.claim_job(id).await)
    }

    /// A claimed job goes back unsent; `Ok(None)` when dropped as superseded.
    pub async fn release_job(&self, id: u64) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.release_job(id)).await,
            pg(pg) => pg.release_job(id).await)
    }

    /// A job whose call may have reached TeamCity goes back, flagged for the check first.
    pub async fn interrupt_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.interrupt_job(id, now)).await,
            pg(pg) => pg.interrupt_job(id, now).await)
    }

    /// How a call ended; `Ok(None)` when a job to retry was dropped as superseded.
    pub async fn finish_job(
        &self,
        id: u64,
        finish: Finish,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.finish_job(id, &finish, now)).await,
            pg(pg) => pg.finish_job(id, &finish, now).await)
    }

    /// At start: every pending job, and every done one whose build is still followed.
    /// sled: jobs left in flight become pending (flagged) first. PostgreSQL: claims in
    /// flight are left to [`sweep_claims`](Self::sweep_claims) (another instance may be
    /// making the call).
    pub async fn resume_jobs(&self, now: u64) -> Result<Vec<Job>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.resume_jobs(now)).await,
            pg(pg) => pg.resume_jobs(None).await)
    }

    /// [`resume_jobs`](Self::resume_jobs) of one server: what a new holder of its dispatch
    /// lease schedules.
    pub async fn resume_server_jobs(&self, server: &ServerId) -> Result<Vec<Job>, StoreError> {
        either!(self, sled: {
            let server = server.clone();
            let now = crate::clock::now_ms();
            Ok(self.resume_jobs(now).await?.into_iter().filter(|j| j.server == server).collect())
        }, pg(pg) => pg.resume_jobs(Some(server)).await)
    }

    /// [`resume_jobs`](Self::resume_jobs) of one source's status posts: what a new holder
    /// of its status lease schedules.
    pub async fn resume_status_jobs(&self, source: &SourceId) -> Result<Vec<Job>, StoreError> {
        either!(self, sled: {
            let now = crate::clock::now_ms();
            Ok(self
                .resume_jobs(now)
                .await?
                .into_iter()
                .filter(|j| j.purpose == crate::job::Purpose::ReportStatus && &j.source == source)
                .collect())
        }, pg(pg) => pg.resume_status_jobs(source).await)
    }

    /// PostgreSQL: claims of `servers`' jobs and of `sources`' status posts whose lease ran
    /// out become pending again, flagged for the check first. The jobs taken back (sled:
    /// none).
    pub async fn sweep_claims(
        &self,
        servers: &[ServerId],
        sources: &[SourceId],
        now: u64,
    ) -> Result<Vec<Job>, StoreError> {
        either!(self, sled: Ok(Vec::new()), pg(pg) => pg.sweep_claims(servers, sources, now).await)
    }

    /// Takes or renews dispatch lease `name` (a server id, or `status:<source>`) for `ttl`
    /// (sled: always held).
    pub async fn take_dispatch_lease(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        either!(self, sled: Ok(true), pg(pg) => pg.take_dispatch_lease(name, ttl).await)
    }

    /// Gives up dispatch lease `name` (shutdown).
    pub async fn give_up_dispatch_lease(&self, name: &str) -> Result<(), StoreError> {
        either!(self, sled: Ok(()), pg(pg) => pg.give_up_dispatch_lease(name).await)
    }

    /// Keeps what TeamCity answered about done job `id`'s build (SPEC §6.1). Not synced on
    /// its own: a poll lost in a crash is asked again.
    pub async fn observe_build(
        &self,
        id: u64,
        seen: crate::job::follow::Seen,
        now: u64,
    ) -> Result<Result<Job, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.observe_build(id, &seen, now)).await,
            pg(pg) => pg.observe_build(id, &seen, now).await)
    }

    /// A dead job becomes pending again, due `now`.
    pub async fn revive_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Job, Unchanged>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.revive_job(id, now)).await,
            pg(pg) => pg.revive_job(id, now).await)
    }

    /// Deletes a job in any state; `false` when there was none.
    pub async fn remove_job(&self, id: u64) -> Result<bool, StoreError> {
        either!(self, sled: self.blocking(move |s| s.remove_job(id)).await,
            pg(pg) => pg.remove_job(id).await)
    }

    /// Whether a job is still stored.
    pub async fn job_exists(&self, id: u64) -> Result<bool, StoreError> {
        // One key lookup: on the calling task.
        either!(self, sled: self.handle()?.current()?.job_exists(id),
            pg(pg) => pg.job_exists(id).await)
    }

    /// With sled, waits (at most [`CATCH_UP`], on the calling task, not on the blocking pool)
    /// until the trees hold every delivery answered before the call: the lists the API and
    /// the token page show then hold every job answered 202 before they were asked for.
    /// PostgreSQL answers 202 after its commit, so there is nothing to wait for.
    async fn caught_up(&self) {
        let Backend::Sled(handle) = &self.backend else {
            return;
        };
        let Ok(store) = handle.current() else {
            return; // being reopened: the read reports that itself
        };
        if !store.catch_up().wait(CATCH_UP).await {
            tracing::debug!(
                "the store has not applied every accepted delivery yet; reading what it holds"
            );
        }
    }

    /// One job.
    pub async fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.job(id)).await, pg(pg) => pg.job(id).await)
    }

    /// Jobs, newest first, optionally of one state.
    pub async fn list_jobs(
        &self,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.caught_up().await;
        either!(self, sled: self.blocking(move |s| s.list_jobs(state, limit)).await,
            pg(pg) => pg.list_jobs(state, limit).await)
    }

    /// The newest build jobs sent with one of `tokens` (all: `None`), at most `limit`.
    pub async fn recent_builds(
        &self,
        tokens: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.caught_up().await;
        either!(self,
            sled: self.blocking(move |s| s.recent_builds(tokens.as_deref(), limit)).await,
            pg(pg) => pg.recent_builds(tokens.as_deref(), limit).await)
    }

    /// Recent deliveries, newest first.
    pub async fn list_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.caught_up().await;
        either!(self, sled: self.blocking(move |s| s.list_deliveries(limit)).await,
            pg(pg) => pg.list_deliveries(limit).await)
    }

    /// Drops expired de-duplication marks, delivery records, done jobs and sessions, in
    /// batches; how many records went.
    pub async fn prune(&self, now: u64) -> Result<usize, StoreError> {
        either!(self,
            sled: self.blocking(move |s| Ok(s.prune(now)? + s.purge_expired_sessions(now)?)).await,
            pg(pg) => pg.prune(now).await)
    }

    /// Queue depths, oldest pending job, tokens per status, records set aside: maintained
    /// counts (sled) or counts read every few seconds (PostgreSQL), so this costs the same
    /// whatever the queue holds.
    pub fn stats(&self) -> StatsSnapshot {
        match &self.backend {
            Backend::Sled(handle) => handle.current().map(|s| s.stats()).unwrap_or_default(),
            Backend::Postgres(pg) => pg.stats(),
        }
    }

    /// PostgreSQL's connection pool: (open, idle, most).
    pub fn pool_status(&self) -> Option<(usize, usize, usize)> {
        self.postgres().map(|pg| pg.pool_status())
    }

    /// Registers a token, replacing (and keeping the id of) the one for the same source,
    /// user and server. Returns the record and whether it replaced one. Durable.
    pub async fn upsert_token(&self, new: NewToken) -> Result<(TokenInfo, bool), StoreError> {
        either!(self, sled: self.write_durably(move |s| s.upsert_token(&new)).await,
            pg(pg) => pg.upsert_token(&new).await)
    }

    /// The token a pusher registered for `server`, trying each of their keys in order.
    pub async fn find_token(
        &self,
        source: SourceId,
        keys: Vec<UserKey>,
        server: ServerId,
    ) -> Result<Option<TokenInfo>, StoreError> {
        // Two reads of small, hot trees: on the calling task, not worth a hop.
        either!(self, sled: self.handle()?.current()?.find_token(&source, &keys, &server),
            pg(pg) => pg.find_token(&source, &keys, &server).await)
    }

    /// Which token a pusher's delivery for `server` uses: [`find_token`](Self::find_token),
    /// remembered by the sled store until its tokens change.
    pub async fn token_choice(
        &self,
        source: SourceId,
        keys: Vec<UserKey>,
        server: ServerId,
    ) -> Result<Option<TokenChoice>, StoreError> {
        either!(self, sled: self.handle()?.current()?.token_choice(&source, &keys, &server),
            pg(pg) => Ok(pg
                .find_token(&source, &keys, &server)
                .await?
                .as_ref()
                .map(TokenChoice::from)))
    }

    /// Decrypts a token for a call, with the revision TeamCity's verdict will be about.
    pub async fn token_secret(
        &self,
        id: String,
    ) -> Result<Option<(TeamCityToken, u64)>, StoreError> {
        // Two reads and a decryption: on the calling task.
        either!(self, sled: self.handle()?.current()?.token_secret(&id),
            pg(pg) => pg.token_secret(&id).await)
    }

    /// One token's record.
    pub async fn token(&self, id: String) -> Result<Option<TokenInfo>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.token(&id)).await,
            pg(pg) => pg.token(&id).await)
    }

    /// Lists tokens, oldest first.
    pub async fn list_tokens(&self, filter: TokenFilter) -> Result<Vec<TokenInfo>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.list_tokens(&filter)).await,
            pg(pg) => pg.list_tokens(&filter).await)
    }

    /// Forgets a token; `false` when there was none. Durable.
    pub async fn remove_token(&self, id: String) -> Result<bool, StoreError> {
        either!(self, sled: self.write_durably(move |s| s.remove_token(&id)).await,
            pg(pg) => pg.remove_token(&id).await)
    }

    /// TeamCity's verdict on `revision` of a token after a call.
    pub async fn mark_token(
        &self,
        id: String,
        revision: u64,
        accepted: bool,
    ) -> Result<(), StoreError> {
        either!(self, sled: self.blocking(move |s| s.mark_token(&id, revision, accepted)).await,
            pg(pg) => pg.mark_token(&id, revision, accepted).await)
    }

    /// Starts a session; the cookie value and the session. Durable.
    pub async fn create_session(
        &self,
        principal: Principal,
        ttl_ms: u64,
    ) -> Result<(String, Session), StoreError> {
        either!(self, sled: self.write_durably(move |s| s.create_session(principal, ttl_ms)).await,
            pg(pg) => pg.create_session(principal, ttl_ms).await)
    }

    /// The live session behind a cookie value.
    pub async fn session(&self, id: String) -> Result<Option<Session>, StoreError> {
        either!(self, sled: self.blocking(move |s| s.session(&id)).await,
            pg(pg) => pg.session(&id).await)
    }

    /// Ends a session (sign-out). Durable.
    pub async fn end_session(&self, id: String) -> Result<(), StoreError> {
        either!(self, sled: self.write_durably(move |s| s.end_session(&id)).await,
            pg(pg) => pg.end_session(&id).await)
    }

    /// PostgreSQL: keeps an OAuth sign-in under way for the instance the browser comes back
    /// to (sled: the one instance keeps them in memory; nothing to do).
    pub async fn put_oauth_sign_in(
        &self,
        state: &str,
        source: &SourceId,
        verifier: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        either!(self, sled: Ok(()),
            pg(pg) => pg.put_oauth_sign_in(state, source, verifier, expires_at).await)
    }

    /// PostgreSQL: takes the sign-in under way for `state`, once (sled: `None`).
    pub async fn take_oauth_sign_in(
        &self,
        state: &str,
    ) -> Result<Option<(SourceId, String)>, StoreError> {
        either!(self, sled: Ok(None), pg(pg) => pg.take_oauth_sign_in(state).await)
    }

    /// Everything the store holds (`copy-store`, bridge stopped).
    pub async fn dump(&self) -> Result<dump::Dump, StoreError> {
        either!(self, sled: self.blocking(|s| s.dump()).await, pg(pg) => pg.dump().await)
    }

    /// How many records of each kind it holds.
    pub async fn counts(&self) -> Result<dump::Counts, StoreError> {
        either!(self, sled: self.blocking(|s| s.counts()).await, pg(pg) => pg.counts().await)
    }

    /// Writes a dump into this empty store, durably (`copy-store`).
    pub async fn load(&self, dump: Arc<dump::Dump>) -> Result<(), StoreError> {
        either!(self, sled: self.blocking(move |s| s.load(&dump)).await,
            pg(pg) => pg.load(&dump).await)
    }

    /// Whether an instance on this store looks alive (PostgreSQL: a dispatch lease still
    /// runs; sled's own lock keeps a second process out).
    pub async fn in_use(&self) -> Result<bool, StoreError> {
        either!(self, sled: Ok(false), pg(pg) => pg.leases_held().await)
    }

    /// Re-seals every token under `new_key` (`bb2tc rotate-key`, bridge stopped; sled).
    pub async fn rotate_master_key(
        &self,
        new_key: &Secret,
        uses_key_file: bool,
    ) -> Result<usize, StoreError> {
        self.handle()?
            .current()?
            .rotate_master_key(new_key, uses_key_file)
            .await
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::TriggerMode;
    use crate::ids::{BuildTypeId, ServerId, Sha, SourceId};
    use std::collections::BTreeMap;

    pub use super::sled::test_support::temp_sled;

    /// A store in a fresh temp dir (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        let store = Store::open(&settings).unwrap();
        (dir, store)
    }

    /// An accepted delivery record `id` from source `dc`, received now, with no jobs yet.
    pub fn delivery(id: &str) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            source: SourceId::new("dc"),
            event: "repo:refs_changed".into(),
            result: "accepted".into(),
            jobs: 0,
            skipped: vec![],
            received_at: crate::clock::now_ms(),
            user: None,
            repository: None,
        }
    }

    /// A change of `branch` to a commit of all `sha` digits, asking for one build job.
    pub fn change(branch: &str, sha: char) -> ChangeJobs {
        ChangeJobs {
            reference: format!("refs/heads/{branch}"),
            legacy_mark: None,
            deduplicate: true,
            jobs: vec![job(branch, sha)],
        }
    }

    /// [`settings_in`] with the default segment size.
    pub fn settings(dir: &std::path::Path) -> StorageSettings {
        settings_in(dir, crate::config::DEFAULT_INTAKE_SEGMENT_BYTES)
    }

    /// Store settings for `<dir>/data`, key file beside it, segments of `segment_bytes`.
    pub fn settings_in(dir: &std::path::Path, segment_bytes: u64) -> StorageSettings {
        StorageSettings {
            path: dir.join("data"),
            master_key: None,
            intake_segment_bytes: segment_bytes,
            postgres: None,
        }
    }

    /// A pending build job for `branch` at a commit of all `sha` digits.
    pub fn job(branch: &str, sha: char) -> Job {
        Job {
            id: 0,
            state: JobState::Pending,
            source: SourceId::new("dc"),
            delivery: "d".into(),
            server: ServerId::new("main"),
            mode: TriggerMode::Build,
            build_type: Some(BuildTypeId::new("Bt")),
            repository: "P/r".into(),
            full_ref: format!("refs/heads/{branch}"),
            branch: branch.into(),
            sha: Sha::parse(&sha.to_string().repeat(40)).unwrap(),
            user: "jdoe".into(),
            token: TokenRef::Service,
            properties: BTreeMap::new(),
            vcs_root_id: None,
            clone_urls: vec![],
            attempts: 0,
            created_at: 0,
            next_attempt_at: 0,
            last_error: None,
            interrupted: false,
            build_id: None,
            web_url: None,
            warning: None,
            finished_at: None,
            pull_request: None,
            cancel_superseded: false,
            supersedes: Vec::new(),
            purpose: crate::job::Purpose::Build,
            build: None,
            report_status: crate::config::ReportStatus::Off,
            status: None,
        }
    }
}
