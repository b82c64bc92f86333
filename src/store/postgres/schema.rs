//! The PostgreSQL schema, versioned: embedded migrations applied at start-up, one instance
//! at a time (under an advisory lock), each in its own transaction with the version it
//! reaches. A database whose schema is newer than this bb2tc knows is refused.
//!
//! Records (jobs, deliveries, sessions) are JSON in a `record` column with a `format`
//! column beside it (SPEC §7): a layout change gets a new format and a reader for the old
//! one, as in sled. The columns beside the record are what queries select on.

use super::pg_error;
use crate::store::StoreError;

/// The advisory lock migrations run under (any fixed number unique to bb2tc).
const MIGRATION_LOCK: i64 = 0x6262_3274_6300_0001;

/// The format of the JSON records written now.
pub const RECORD_FORMAT: i16 = 1;

/// Each migration takes the schema from the version before to its own.
///
/// | version | adds |
/// |---|---|
/// | 1 | jobs, marks, deliveries, tokens, sessions, dispatch leases, meta |
/// | 2 | OAuth sign-ins under way (`oauth_sign_ins`), so any instance finishes one |
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE bb2tc_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE bb2tc_job_ids;
CREATE TABLE bb2tc_jobs (
    id bigint PRIMARY KEY,
    server text NOT NULL,
    source text NOT NULL,
    state text NOT NULL,
    purpose text NOT NULL,
    token_id text,
    created_at bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    finished_at bigint,
    followed boolean NOT NULL,
    owner text,
    lease_until timestamptz,
    format smallint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX bb2tc_jobs_by_state ON bb2tc_jobs (state, server);
CREATE INDEX bb2tc_jobs_claims ON bb2tc_jobs (lease_until) WHERE state = 'inflight';
CREATE INDEX bb2tc_jobs_followed ON bb2tc_jobs (server) WHERE followed;
CREATE TABLE bb2tc_latest_jobs (
    key bytea PRIMARY KEY,
    id bigint NOT NULL
);
CREATE TABLE bb2tc_marks (
    key bytea PRIMARY KEY,
    first_seen bigint NOT NULL
);
CREATE INDEX bb2tc_marks_by_age ON bb2tc_marks (first_seen);
CREATE TABLE bb2tc_deliveries (
    seq bigserial PRIMARY KEY,
    id text NOT NULL,
    received_at bigint NOT NULL,
    format smallint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX bb2tc_deliveries_by_age ON bb2tc_deliveries (received_at);
CREATE TABLE bb2tc_tokens (
    id text PRIMARY KEY,
    source text NOT NULL,
    user_key text NOT NULL,
    server text NOT NULL,
    user_name text NOT NULL,
    teamcity text NOT NULL,
    teamcity_user text,
    added_at bigint NOT NULL,
    last_authenticated_at bigint,
    status text NOT NULL,
    sealed text NOT NULL,
    revision bigint NOT NULL,
    UNIQUE (source, user_key, server)
);
CREATE TABLE bb2tc_sessions (
    key bytea PRIMARY KEY,
    expires_at bigint NOT NULL,
    format smallint NOT NULL,
    record jsonb NOT NULL
);
CREATE TABLE bb2tc_unreadable (
    kind text NOT NULL,
    key text NOT NULL,
    record jsonb NOT NULL,
    reason text NOT NULL,
    set_aside_at bigint NOT NULL
);
CREATE TABLE bb2tc_dispatch_leases (
    server text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE bb2tc_oauth_sign_ins (
    key bytea PRIMARY KEY,
    source text NOT NULL,
    verifier text NOT NULL,
    expires_at bigint NOT NULL
);
"#,
    ),
];

/// The schema version this bb2tc writes.
pub fn current_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Brings the schema to [`current_version`]; two instances starting together migrate once.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = migrate_locked(client).await;
    // Unlocked also when the migration failed; a lost connection unlocks by itself.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<i32, StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS bb2tc_schema (version integer NOT NULL)")
        .await
        .map_err(pg_error)?;
    let row = client
        .query_opt("SELECT max(version) FROM bb2tc_schema", &[])
        .await
        .map_err(pg_error)?;
    let mut version: i32 = row.and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0);
    if version > current_version() {
        return Err(StoreError::Corrupt(format!(
            "the database's bb2tc schema is version {version}, newer than this bb2tc knows ({}); \
             run the newer bb2tc",
            current_version()
        )));
    }
    let from = version;
    for (target, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("INSERT INTO bb2tc_schema (version) VALUES ($1)", &[target])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = target, "PostgreSQL schema migrated");
        version = *target;
    }
    Ok(version)
}
