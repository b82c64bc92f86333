//! The whole PostgreSQL store out and in, for `bb2tc copy-store` (see
//! [`crate::store::dump`]).

use super::{PgStore, big, from_record, pg_error, schema, to_record, unbig};
use crate::store::StoreError;
use crate::store::dump::{Counts, Dump};

impl PgStore {
    /// Everything it holds.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        let mut dump = Dump {
            store_id: self.id.clone(),
            admin_token_hash: self.admin_token_hash().await?,
            tokens: self.dump_tokens().await?,
            ..Dump::default()
        };
        let client = self.client().await?;
        for row in client
            .query("SELECT key, format, record FROM bb2tc_sessions", &[])
            .await
            .map_err(pg_error)?
        {
            if let Ok(session) = from_record(row.get(1), row.get(2)) {
                dump.sessions.push((row.get(0), session));
            }
        }
        let rows = client
            .query("SELECT format, record FROM bb2tc_jobs ORDER BY id", &[])
            .await
            .map_err(pg_error)?;
        dump.jobs = self.readable_jobs(rows);
        for row in client
            .query("SELECT key, id FROM bb2tc_latest_jobs", &[])
            .await
            .map_err(pg_error)?
        {
            dump.latest.push((row.get(0), unbig(row.get(1))));
        }
        for row in client
            .query("SELECT key, first_seen FROM bb2tc_marks", &[])
            .await
            .map_err(pg_error)?
        {
            dump.marks.push((row.get(0), unbig(row.get(1))));
        }
        for row in client
            .query(
                "SELECT format, record FROM bb2tc_deliveries ORDER BY seq",
                &[],
            )
            .await
            .map_err(pg_error)?
        {
            if let Ok(record) = from_record(row.get(0), row.get(1)) {
                dump.deliveries.push(record);
            }
        }
        Ok(dump)
    }

    /// What it holds, counted as [`Dump::counts`] counts.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM bb2tc_tokens), (SELECT count(*) FROM bb2tc_sessions), \
                 (SELECT count(*) FROM bb2tc_jobs), (SELECT count(*) FROM bb2tc_marks), \
                 (SELECT count(*) FROM bb2tc_deliveries)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let n = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Counts {
            tokens: n(0),
            sessions: n(1),
            jobs: n(2),
            marks: n(3),
            deliveries: n(4),
        })
    }

    /// Writes `dump` into this (empty) database in one transaction, taking over its store
    /// id. A job that was in flight is left as a claim whose lease ran out: the holder of its
    /// server's lease takes it back and asks TeamCity first, as after a crash.
    pub async fn load(&self, dump: &Dump) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        self.load_tokens(&tx, &dump.tokens).await?;
        for (key, session) in &dump.sessions {
            tx.execute(
                "INSERT INTO bb2tc_sessions (key, expires_at, format, record) VALUES ($1, $2, $3, $4)",
                &[key, &big(session.expires_at), &schema::RECORD_FORMAT, &to_record(session)?],
            )
            .await
            .map_err(pg_error)?;
        }
        // A job in flight stays claimed by nobody alive, its lease already over.
        let writes = super::jobs::WriteStatements::prepare(&tx).await?;
        for job in &dump.jobs {
            super::jobs::put_job_as(&tx, &writes.put, job, "copy-store", -1000).await?;
        }
        for (key, id) in &dump.latest {
            tx.execute(
                "INSERT INTO bb2tc_latest_jobs (key, id) VALUES ($1, $2)",
                &[key, &big(*id)],
            )
            .await
            .map_err(pg_error)?;
        }
        for (key, first_seen) in &dump.marks {
            tx.execute(
                "INSERT INTO bb2tc_marks (key, first_seen) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET first_seen = greatest(bb2tc_marks.first_seen, EXCLUDED.first_seen)",
                &[key, &big(*first_seen)],
            )
            .await
            .map_err(pg_error)?;
        }
        for record in &dump.deliveries {
            tx.execute(
                "INSERT INTO bb2tc_deliveries (id, received_at, format, record) VALUES ($1, $2, $3, $4)",
                &[&record.id, &big(record.received_at), &schema::RECORD_FORMAT, &to_record(record)?],
            )
            .await
            .map_err(pg_error)?;
        }
        if let Some(hash) = dump.admin_token_hash {
            tx.execute(
                "INSERT INTO bb2tc_meta (key, value) VALUES ('admin_token_sha256', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&hex::encode(hash)],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.execute(
            "UPDATE bb2tc_meta SET value = $1 WHERE key = 'store_id'",
            &[&dump.store_id],
        )
        .await
        .map_err(pg_error)?;
        let next = dump.jobs.iter().map(|j| j.id).max().unwrap_or(0);
        if next > 0 {
            tx.execute("SELECT setval('bb2tc_job_ids', $1)", &[&big(next)])
                .await
                .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    /// Whether an instance holds a dispatch lease now (copy-store wants the bridge stopped).
    pub async fn leases_held(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM bb2tc_dispatch_leases WHERE expires_at > now()",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) > 0)
    }
}
