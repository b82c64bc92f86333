//! Deliveries into PostgreSQL: one transaction each — marks, jobs (coalesced as
//! [`lifecycle::enqueue`] says), the delivery record, and a `NOTIFY` — committed before the
//! 202.

use super::jobs::advisory_key;
use super::{PgStore, big, pg_error, retrying, schema, to_record};
use crate::job::{Job, Purpose, lifecycle};
use crate::store::dump::delivery_mark;
use crate::store::jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome, already_seen};
use crate::store::{DEDUP_WINDOW_MS, StoreError};
use std::collections::HashMap;

/// The channel other instances learn of new jobs on; the payload is `<instance> <id>,<id>…`.
pub const JOBS_CHANNEL: &str = "bb2tc_jobs";

/// Job ids per notification (each at most 20 digits and a comma).
const NOTIFY_IDS: usize = 300;

/// Takes the marks of a delivery in one statement, under the advisory locks of every
/// coalescing key its jobs may touch (`$1`, sorted): the delivery id's mark (`$2`, when `$4`)
/// and the builds' (`$6`), first seen `$3` unless seen after `$5`. A mark another
/// transaction is inserting makes this wait for its end, so "seen" is only ever answered
/// about a committed mark. Returns the locks taken, whether the delivery is new, the build
/// marks that were, and `$7` new job ids.
const TAKE_MARKS: &str = "WITH locked AS (SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k), \
     delivery AS (INSERT INTO bb2tc_marks (key, first_seen) SELECT $2, $3 WHERE $4 \
         ON CONFLICT (key) DO UPDATE SET first_seen = EXCLUDED.first_seen \
         WHERE bb2tc_marks.first_seen <= $5 RETURNING 1), \
     fresh AS (INSERT INTO bb2tc_marks (key, first_seen) SELECT k, $3 FROM unnest($6::bytea[]) AS k \
         ON CONFLICT (key) DO UPDATE SET first_seen = EXCLUDED.first_seen \
         WHERE bb2tc_marks.first_seen <= $5 RETURNING key) \
     SELECT (SELECT count(*) FROM locked), (SELECT count(*) FROM delivery), ARRAY(SELECT key FROM fresh), \
         ARRAY(SELECT nextval('bb2tc_job_ids') FROM generate_series(1::bigint, $7::bigint))";

/// The newest job of each coalescing key in `$1` (read after [`TAKE_MARKS`] took the locks).
const NEWEST_JOBS: &str = "SELECT l.key, j.format, j.record FROM bb2tc_latest_jobs l \
     JOIN bb2tc_jobs j ON j.id = l.id WHERE l.key = ANY($1)";

/// The delivery's record, and the notification of its jobs (`$5` on channel `$6`; none
/// when null).
const INSERT_DELIVERY: &str = "WITH d AS (INSERT INTO bb2tc_deliveries (id, received_at, format, record) \
     VALUES ($1, $2, $3, $4) RETURNING 1) \
     SELECT (SELECT count(*) FROM d), CASE WHEN $5::text IS NOT NULL THEN pg_notify($6, $5) END";

impl PgStore {
    /// Records a delivery and its jobs in one transaction, committed when this returns:
    /// `Duplicate` when its id was seen within the window (and `dedup_id`), builds already
    /// asked for skipped. The jobs are announced to this instance's workers, and to the
    /// other instances by `NOTIFY`.
    ///
    /// Three round trips: `BEGIN` with the marks (and new job ids) and the newest jobs of
    /// the keys, pipelined; then the writes [`lifecycle::enqueue`] decides, the record with
    /// its `NOTIFY`, and `COMMIT`, pipelined.
    pub async fn record_push(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<RecordOutcome, StoreError> {
        let candidates: Vec<&Job> = changes.iter().flat_map(|c| &c.jobs).collect();
        let mut marks: Vec<Vec<u8>> = Vec::new();
        for change in changes.iter().filter(|c| c.deduplicate) {
            for job in &change.jobs {
                let key = job.dedup_key();
                if !marks.contains(&key) {
                    marks.push(key);
                }
            }
        }
        let mut keys: Vec<Vec<u8>> = candidates.iter().map(|j| j.coalescing_key()).collect();
        keys.sort();
        keys.dedup();
        let mut locks: Vec<i64> = keys.iter().map(|k| advisory_key(k)).collect();
        locks.sort_unstable();
        locks.dedup();
        let (outcome, applied) = retrying(|| async {
            let client = self.client().await?;
            let done = self
                .record_once(
                    &client, &delivery, dedup_id, &changes, &locks, &keys, &marks,
                )
                .await;
            // Committed, or else nothing: whatever was begun is rolled back before the
            // connection goes back to the pool (or it is dropped).
            if !matches!(done, Ok((_, _, true))) && client.batch_execute("ROLLBACK").await.is_err()
            {
                drop(deadpool_postgres::Object::take(client));
            }
            done.map(|(outcome, applied, _)| (outcome, applied))
        })
        .await?;
        if !applied.jobs.is_empty() || !applied.coalesced.is_empty() {
            let _ = self.events.send(applied);
        }
        Ok(outcome)
    }

    /// One try of [`record_push`](Self::record_push): `BEGIN` goes with the first batch
    /// and `COMMIT` with the second, so a delivery costs three round trips. Whether it
    /// committed.
    #[allow(clippy::too_many_arguments)]
    async fn record_once(
        &self,
        client: &deadpool_postgres::Object,
        delivery: &DeliveryRecord,
        dedup_id: bool,
        changes: &[ChangeJobs],
        locks: &[i64],
        keys: &[Vec<u8>],
        marks: &[Vec<u8>],
    ) -> Result<(RecordOutcome, Applied, bool), StoreError> {
        let now = delivery.received_at;
        let expired_before = big(now.saturating_sub(DEDUP_WINDOW_MS));
        let delivery_key = delivery_mark(&delivery.id);
        // Every statement is prepared before anything is sent: a pipelined statement must go
        // out on its first poll, in order, or it could follow the COMMIT.
        let (take, newest, insert, notify_more) = (
            super::cached(client, TAKE_MARKS).await?,
            super::cached(client, NEWEST_JOBS).await?,
            super::cached(client, INSERT_DELIVERY).await?,
            super::cached(client, "SELECT pg_notify($1, $2)").await?,
        );
        let writing = super::jobs::WriteStatements::prepare(client).await?;
        let wanted = big(changes.iter().map(|c| c.jobs.len() as u64).sum());
        let first_seen = big(now);
        let take_params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &locks,
            &delivery_key,
            &first_seen,
            &dedup_id,
            &expired_before,
            &marks,
            &wanted,
        ];
        let newest_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
        let ((), taken, newest) = tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&take, &take_params),
            client.query(&newest, &newest_params),
        )
        .map_err(pg_error)?;
        if dedup_id && taken.get::<_, i64>(1) == 0 {
            return Ok((RecordOutcome::Duplicate, Applied::default(), false));
        }
        let mut fresh: Vec<Vec<u8>> = taken.get(2);
        let mut ids = taken.get::<_, Vec<i64>>(3).into_iter();
        let mut latest: HashMap<Vec<u8>, Option<Job>> = HashMap::new();
        for row in newest {
            match super::from_record::<Job>(row.get(1), row.get(2)) {
                Ok(job) => {
                    latest.insert(row.get(0), Some(job));
                }
                Err(reason) => {
                    tracing::error!(
                        reason,
                        "the newest job of a key cannot be read; taken as none"
                    );
                }
            }
        }
        let mut record = delivery.clone();
        let mut jobs: Vec<Job> = Vec::new();
        for change in changes {
            let mut seen = Vec::new();
            let mut made = 0;
            for job in &change.jobs {
                if change.deduplicate {
                    match fresh.iter().position(|k| *k == job.dedup_key()) {
                        Some(i) => {
                            fresh.swap_remove(i);
                        }
                        None => {
                            seen.push(job.clone());
                            continue;
                        }
                    }
                }
                let mut job = job.clone();
                job.id =
                    super::unbig(ids.next().ok_or_else(|| {
                        StoreError::Postgres("fewer job ids than asked for".into())
                    })?);
                jobs.push(job);
                made += 1;
            }
            record
                .skipped
                .extend(already_seen(&change.reference, &seen, made == 0));
        }
        record.jobs = jobs
            .iter()
            .filter(|j| j.purpose != Purpose::ReportStatus)
            .count();
        let mut applied = Applied::default();
        let mut writes = Vec::new();
        for job in &jobs {
            let key = job.coalescing_key();
            let newest = latest.get(&key).cloned().flatten();
            let t = lifecycle::enqueue(job.clone(), newest.as_ref());
            writes.extend(t.writes);
            if let Some(old) = &t.coalesced {
                applied.coalesced.push((old.server.clone(), old.id));
            }
            latest.insert(key, t.job.clone());
            applied.jobs.extend(t.job);
        }
        let ids: Vec<u64> = applied.jobs.iter().map(|j| j.id).collect();
        // A delivery with more jobs than one payload holds notifies the rest separately.
        let (first, rest) = ids.split_at(ids.len().min(NOTIFY_IDS));
        let notify = (!first.is_empty()).then(|| notification(&self.instance, first));
        let saved = to_record(&record)?;
        let received = big(record.received_at);
        let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &record.id,
            &received,
            &schema::RECORD_FORMAT,
            &saved,
            &notify,
            &JOBS_CHANNEL,
        ];
        let more: Vec<String> = rest
            .chunks(NOTIFY_IDS)
            .map(|ids| notification(&self.instance, ids))
            .collect();
        let rest = futures_util::future::try_join_all(more.iter().map(|payload| {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&JOBS_CHANNEL, payload];
            let notify_more = &notify_more;
            async move { client.execute(notify_more, &params).await.map_err(pg_error) }
        }));
        let statements = async {
            tokio::try_join!(
                self.apply_prepared(client, &writing, &writes),
                async {
                    client
                        .query_one(&insert, &insert_params)
                        .await
                        .map_err(pg_error)
                },
                rest,
            )
        };
        // A statement that failed aborted the transaction: its COMMIT then rolls back, and
        // the failure is what is answered.
        let (written, committed) = tokio::join!(statements, async {
            client.batch_execute("COMMIT").await.map_err(pg_error)
        });
        written?;
        committed?;
        Ok((
            RecordOutcome::Recorded {
                jobs,
                delivery: record,
            },
            applied,
            true,
        ))
    }

    /// Tells the other instances that these jobs are pending (outside a transaction).
    pub(super) async fn notify_jobs(&self, ids: &[u64]) -> Result<(), StoreError> {
        let client = self.client().await?;
        for ids in ids.chunks(NOTIFY_IDS) {
            client
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&JOBS_CHANNEL, &notification(&self.instance, ids)],
                )
                .await
                .map_err(pg_error)?;
        }
        Ok(())
    }

    /// Records a delivery that made no jobs, for the admin API.
    pub async fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bb2tc_deliveries (id, received_at, format, record) VALUES ($1, $2, $3, $4)",
                &[&delivery.id, &big(delivery.received_at), &schema::RECORD_FORMAT, &to_record(delivery)?],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// Recent deliveries, newest first.
    pub async fn list_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_deliveries ORDER BY received_at DESC, seq DESC LIMIT $1",
                &[&big(limit as u64)],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| super::from_record(row.get(0), row.get(1)).ok())
            .collect())
    }
}

/// A notification's payload.
fn notification(instance: &str, ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("{instance} {}", ids.join(","))
}

/// A notification's sender and job ids; `None` when it is not one of bb2tc's.
pub fn parse_notification(payload: &str) -> Option<(&str, Vec<u64>)> {
    let (instance, ids) = payload.split_once(' ')?;
    let ids = ids
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<u64>, _>>()
        .ok()?;
    Some((instance, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_round_trip() {
        let text = notification("abc", &[1, 22, 333]);
        assert_eq!(parse_notification(&text), Some(("abc", vec![1, 22, 333])));
        assert_eq!(parse_notification("abc"), None);
        assert_eq!(parse_notification("abc x,1"), None);
    }
}
