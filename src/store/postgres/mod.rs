//! The PostgreSQL backend (SPEC §7.1): any number of bb2tc instances share one database.
//!
//! Tables (all `bb2tc_`-prefixed, created by `schema`):
//! - `jobs`: one row per job, the [`Job`](crate::job::Job) as JSON in `record`, and beside
//!   it what queries select on (server, state, purpose, due time, the claim's owner and
//!   lease); `latest_jobs`: coalescing key → newest job id; `job_ids`: the id sequence
//! - `marks`: de-duplication marks (a delivery id, or a build: [`Job::dedup_key`]) with
//!   when they were first seen, unique by key
//! - `deliveries`, `tokens` (the token sealed under the master key, as in sled),
//!   `sessions` (keyed by the SHA-256 of the cookie)
//! - `dispatch_leases`: which instance dispatches each TeamCity server's jobs, until when
//! - `oauth_sign_ins`: token-page sign-ins waiting for Bitbucket's redirect back (the PKCE
//!   verifier sealed), so that any instance finishes them
//! - `meta`: store id, the master-key canary, the admin token hash; `unreadable`: rows set
//!   aside; `schema`: the schema version
//!
//! **Intake** (`intake`, `group_commit`): one transaction per group of concurrent
//! deliveries — their marks inserted with `ON CONFLICT` (a concurrent insert of the same
//! mark waits for the first transaction, so a duplicate is answered only once the original
//! committed), their jobs and records — then a `NOTIFY` for the instances holding dispatch
//! leases; the 202s follow the commit (`synchronous_commit` on).
//!
//! **Jobs** (`jobs`): every change runs [`crate::job::lifecycle`] on the row read
//! `FOR UPDATE`, under an advisory lock on the job's coalescing key (taken before any row
//! lock, so two transactions never wait on each other in a cycle; PostgreSQL's deadlock and
//! serialisation failures are retried). A claim records this instance as the job's owner
//! with a lease longer than the TeamCity timeout; what follows the call is fenced by that
//! owner, and claims whose lease ran out are taken back as interrupted (`sweep_claims`), so
//! the new holder asks TeamCity first.
//!
//! **Leases** (`leases`): acquiring and renewing a server's dispatch lease, and the
//! `LISTEN` connection through which other instances' new jobs arrive.

mod dump;
mod group_commit;
mod intake;
mod jobs;
mod leases;
mod schema;
mod sessions;
mod tokens;

use crate::config::PostgresSettings;
use crate::job::{Job, JobState, Purpose};
use crate::store::crypto::TokenCipher;
use crate::store::jobs::Applied;
use crate::store::{StatsSnapshot, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;

pub use leases::listen_for_jobs;

/// How long a pool waits for a connection, or to open one, before the call fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How often the queue counts (`/metrics`, `/readyz`) are read from the database.
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// How often a transaction that lost a deadlock or a serialisation race is run again.
const CONFLICT_RETRIES: usize = 10;

const CANARY_CONTEXT: &[u8] = b"bb2tc master key canary";
const CANARY_TEXT: &[u8] = b"bb2tc";

/// TLS for the connections: webpki's roots, certificates and host names checked
/// (`sslmode=require` verifies here; `disable` uses none).
pub type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// An error of the driver, as a store error; deadlocks and serialisation failures (and a
/// unique key raced by two first inserts) are [`StoreError::Conflict`], run again.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::UNIQUE_VIOLATION =>
        {
            StoreError::Conflict
        }
        _ => StoreError::Postgres(e.as_db_error().map_or_else(
            || e.to_string(),
            |db| format!("{}: {}", db.code().code(), db.message()),
        )),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Postgres(format!("no database connection: {other}")),
    }
}

/// `sql` prepared once per connection (deadpool keeps the statement with it): a statement
/// costs one round trip and no parsing after the first.
async fn cached<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(pg_error)
}

/// Runs `once` again while it loses a deadlock or serialisation race.
async fn retrying<R, F, Fut>(mut once: F) -> Result<R, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, StoreError>>,
{
    let mut tries = 0;
    loop {
        match once().await {
            Err(StoreError::Conflict) if tries < CONFLICT_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(rand::random_range(
                    1..=10 * tries as u64,
                )))
                .await;
            }
            other => return other,
        }
    }
}

/// A number that fits PostgreSQL's `bigint` (times in ms, ids).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unbig(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The TLS setup every connection uses.
pub fn tls() -> Result<Tls, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Postgres(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The open PostgreSQL store of one bb2tc instance.
pub struct PgStore {
    pool: Pool,
    cipher: TokenCipher,
    /// The store's id (shared by every instance: build comments carry it).
    id: String,
    /// This process: the holder of its leases and the owner of its claims.
    instance: String,
    settings: PostgresSettings,
    stats: Mutex<StatsSnapshot>,
    /// Where the jobs this instance made are announced to its workers.
    events: mpsc::UnboundedSender<Applied>,
    /// The committers deliveries go through.
    intake: group_commit::GroupCommit,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("id", &self.id)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, migrates the schema (one instance at a time), and checks that the master key
    /// opens the database's canary (set by the first instance).
    pub async fn connect(
        settings: &PostgresSettings,
        master_key: Option<&crate::ids::Secret>,
        events: mpsc::UnboundedSender<Applied>,
    ) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = settings
            .url
            .expose()
            .parse()
            .map_err(|e| StoreError::Postgres(format!("storage.url: {e}")))?;
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Postgres(format!("connection pool: {e}")))?;
        let key = master_key.ok_or_else(|| {
            StoreError::MasterKey("storage.master_key must be set with PostgreSQL".into())
        })?;
        let cipher = TokenCipher::from_base64(key.expose())?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let version = schema::migrate(&mut client).await?;
        drop(client);
        let instance = hex::encode(rand::random::<[u8; 8]>());
        let intake = group_commit::GroupCommit::start(
            pool.clone(),
            intake::Intake {
                instance: instance.clone(),
                lease_ms: jobs::lease_ms(settings),
                events: events.clone(),
            },
            group_commit::committers(settings.max_connections),
        );
        let store = Self {
            pool,
            cipher,
            id: String::new(),
            instance,
            settings: settings.clone(),
            stats: Mutex::new(StatsSnapshot::default()),
            events,
            intake,
        };
        store.check_canary().await?;
        let id = store
            .meta_or_insert("store_id", &hex::encode(rand::random::<[u8; 4]>()))
            .await?;
        let store = Self { id, ..store };
        store.refresh_stats().await?;
        tracing::info!(schema = version, instance = %store.instance, "PostgreSQL store open");
        Ok(store)
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This instance's id (lease holder, claim owner).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The connection settings (for the `LISTEN` connection).
    pub fn settings(&self) -> &PostgresSettings {
        &self.settings
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// The value of `key` in `meta`, inserting `value` if there is none.
    async fn meta_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bb2tc_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_one("SELECT value FROM bb2tc_meta WHERE key = $1", &[&key])
            .await
            .map_err(pg_error)?;
        Ok(row.get(0))
    }

    /// The first instance seals a known value; every later one must open it: instances with
    /// different master keys would each fail to read the other's tokens.
    async fn check_canary(&self) -> Result<(), StoreError> {
        let sealed = self.cipher.seal(CANARY_CONTEXT, CANARY_TEXT)?;
        let stored = self.meta_or_insert("master_key_canary", &sealed).await?;
        match self.cipher.open(CANARY_CONTEXT, &stored) {
            Ok(plain) if plain == CANARY_TEXT => Ok(()),
            _ => Err(StoreError::WrongMasterKey(
                "the PostgreSQL database (every instance needs the same storage.master_key)".into(),
            )),
        }
    }

    /// Whether the database takes a write (for `/readyz`): a committed update of `meta`.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let now = crate::clock::now_ms().to_string();
        client
            .execute(
                "INSERT INTO bb2tc_meta (key, value) VALUES ('probe', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&now],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// The stored SHA-256 of the generated admin token, if one was generated.
    pub async fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value FROM bb2tc_meta WHERE key = 'admin_token_sha256'",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(row
            .and_then(|r| hex::decode(r.get::<_, String>(0)).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()))
    }

    /// Stores the SHA-256 of a newly generated admin token. The first instance's wins: the
    /// token another instance printed at the same moment is then refused, and it says so.
    pub async fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        let stored = self
            .meta_or_insert("admin_token_sha256", &hex::encode(hash))
            .await?;
        if stored != hex::encode(hash) {
            return Err(StoreError::Corrupt(
                "another instance generated the admin token at the same time; restart this one \
                 (or set admin.token)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The queue counts as last read (every [`STATS_INTERVAL`], by [`refresh_stats`]).
    ///
    /// [`refresh_stats`]: Self::refresh_stats
    pub fn stats(&self) -> StatsSnapshot {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the queue counts: jobs per (server, state) with the oldest pending one, tokens
    /// per status, rows set aside. Off the request path: `/metrics` reads the copy.
    pub async fn refresh_stats(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let mut snapshot = StatsSnapshot::default();
        let rows = client
            .query(
                "SELECT server, state, count(*), coalesce(min(created_at), 0) FROM bb2tc_jobs \
                 WHERE purpose <> 'report_status' GROUP BY server, state",
                &[],
            )
            .await
            .map_err(pg_error)?;
        for row in rows {
            let Some(state) = jobs::state_from(row.get(1)) else {
                continue;
            };
            let oldest = if state == JobState::Pending {
                unbig(row.get(3))
            } else {
                0
            };
            snapshot.jobs.insert(
                (crate::ids::ServerId::new(row.get::<_, String>(0)), state),
                crate::store::QueueStat {
                    count: usize::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                    oldest_created_at: oldest,
                },
            );
        }
        for row in client
            .query(
                "SELECT status, count(*) FROM bb2tc_tokens GROUP BY status",
                &[],
            )
            .await
            .map_err(pg_error)?
        {
            if let Some(status) = tokens::status_from(row.get(0)) {
                snapshot
                    .tokens
                    .insert(status, usize::try_from(row.get::<_, i64>(1)).unwrap_or(0));
            }
        }
        let unreadable: i64 = client
            .query_one("SELECT count(*) FROM bb2tc_unreadable", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        snapshot.unreadable = usize::try_from(unreadable).unwrap_or(0);
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        Ok(())
    }

    /// The pool: connections open, idle, and the most it opens.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let status = self.pool.status();
        (status.size, status.available, status.max_size)
    }

    /// Drops expired de-duplication marks, delivery records, done jobs and sessions.
    pub async fn prune(&self, now: u64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let cutoff = big(now.saturating_sub(crate::store::DEDUP_WINDOW_MS));
        let mut removed = 0;
        for sql in [
            "DELETE FROM bb2tc_marks WHERE first_seen < $1",
            "DELETE FROM bb2tc_deliveries WHERE received_at < $1",
            "WITH gone AS (DELETE FROM bb2tc_jobs WHERE state = 'done' AND NOT followed \
             AND coalesce(finished_at, 0) < $1 RETURNING id) \
             DELETE FROM bb2tc_latest_jobs WHERE id IN (SELECT id FROM gone)",
        ] {
            removed += client.execute(sql, &[&cutoff]).await.map_err(pg_error)?;
        }
        for sql in [
            "DELETE FROM bb2tc_sessions WHERE expires_at <= $1",
            "DELETE FROM bb2tc_oauth_sign_ins WHERE expires_at <= $1",
        ] {
            removed += client.execute(sql, &[&big(now)]).await.map_err(pg_error)?;
        }
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}

/// The `purpose` column's spelling.
fn purpose_str(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Build => "build",
        Purpose::CancelQueued => "cancel_queued",
        Purpose::ReportStatus => "report_status",
    }
}

/// A JSON record column, or why it cannot be read.
fn from_record<T: serde::de::DeserializeOwned>(
    format: i16,
    record: serde_json::Value,
) -> Result<T, String> {
    if format != schema::RECORD_FORMAT {
        return Err(format!("record format {format} is unknown to this bb2tc"));
    }
    serde_json::from_value(record).map_err(|e| e.to_string())
}

fn to_record<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// A job row's record, for the transitions: `Job` with its columns' view of who owns it.
pub(super) type JobRow = (Job, Option<String>, bool);
