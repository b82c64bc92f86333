//! Deliveries into PostgreSQL: one transaction each — marks, jobs (coalesced as
//! [`lifecycle::enqueue`] says), the delivery record, and a `NOTIFY` — committed before the
//! 202.

use super::jobs::{lock_key, newest_job};
use super::{PgStore, big, pg_error, retrying, schema, to_record};
use crate::job::{Job, Purpose, lifecycle};
use crate::store::dump::delivery_mark;
use crate::store::jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome, already_seen};
use crate::store::{DEDUP_WINDOW_MS, StoreError};
use deadpool_postgres::Transaction;

/// The channel other instances learn of new jobs on; the payload is `<instance> <id>,<id>…`.
pub const JOBS_CHANNEL: &str = "bb2tc_jobs";

/// Job ids per notification (each at most 20 digits and a comma).
const NOTIFY_IDS: usize = 300;

/// Sets mark `key` first seen `now` unless it was seen within the window: `true` when it
/// was not (new, or expired and renewed). A concurrent transaction inserting the same key
/// makes this wait for its end, so "seen" is only ever answered about a committed mark.
async fn take_mark(tx: &Transaction<'_>, key: &[u8], now: u64) -> Result<bool, StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO bb2tc_marks (key, first_seen) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET first_seen = EXCLUDED.first_seen \
             WHERE bb2tc_marks.first_seen <= $3 RETURNING 1",
        )
        .await
        .map_err(pg_error)?;
    let expired_before = big(now.saturating_sub(DEDUP_WINDOW_MS));
    let row = tx
        .query_opt(&stmt, &[&key, &big(now), &expired_before])
        .await
        .map_err(pg_error)?;
    Ok(row.is_some())
}

impl PgStore {
    /// Records a delivery and its jobs in one transaction, committed when this returns:
    /// `Duplicate` when its id was seen within the window (and `dedup_id`), builds already
    /// asked for skipped. The jobs are announced to this instance's workers, and to the
    /// other instances by `NOTIFY`.
    pub async fn record_push(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<RecordOutcome, StoreError> {
        let (outcome, applied) = retrying(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let now = delivery.received_at;
            if dedup_id && !take_mark(&tx, &delivery_mark(&delivery.id), now).await? {
                return Ok((RecordOutcome::Duplicate, Applied::default()));
            }
            let mut record = delivery.clone();
            let mut jobs: Vec<Job> = Vec::new();
            for change in &changes {
                let mut seen = Vec::new();
                let mut made = 0;
                for job in &change.jobs {
                    if change.deduplicate && !take_mark(&tx, &job.dedup_key(), now).await? {
                        seen.push(job.clone());
                        continue;
                    }
                    let mut job = job.clone();
                    job.id = self.next_job_id(&tx).await?;
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
            let applied = self.enqueue(&tx, &jobs).await?;
            tx.execute(
                "INSERT INTO bb2tc_deliveries (id, received_at, format, record) VALUES ($1, $2, $3, $4)",
                &[&record.id, &big(record.received_at), &schema::RECORD_FORMAT, &to_record(&record)?],
            )
            .await
            .map_err(pg_error)?;
            let ids: Vec<u64> = applied.jobs.iter().map(|j| j.id).collect();
            self.notify_in(&tx, &ids).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok((
                RecordOutcome::Recorded {
                    jobs,
                    delivery: record,
                },
                applied,
            ))
        })
        .await?;
        if !applied.jobs.is_empty() || !applied.coalesced.is_empty() {
            let _ = self.events.send(applied);
        }
        Ok(outcome)
    }

    /// Enqueues new jobs: their keys locked in order (so two deliveries never wait on each
    /// other in a cycle), each coalesced with the newest job of its key.
    async fn enqueue(&self, tx: &Transaction<'_>, jobs: &[Job]) -> Result<Applied, StoreError> {
        let mut keys: Vec<Vec<u8>> = jobs.iter().map(Job::coalescing_key).collect();
        keys.sort();
        keys.dedup();
        for key in &keys {
            lock_key(tx, key).await?;
        }
        let mut applied = Applied::default();
        for job in jobs {
            let newest = newest_job(self, tx, &job.coalescing_key()).await?;
            let t = lifecycle::enqueue(job.clone(), newest.as_ref());
            self.apply(tx, &t.writes).await?;
            if let Some(old) = &t.coalesced {
                applied.coalesced.push((old.server.clone(), old.id));
            }
            applied.jobs.extend(t.job);
        }
        Ok(applied)
    }

    /// Tells the other instances, once `tx` commits, that these jobs are pending.
    async fn notify_in(&self, tx: &Transaction<'_>, ids: &[u64]) -> Result<(), StoreError> {
        // A payload must stay under PostgreSQL's 8000 bytes.
        for ids in ids.chunks(NOTIFY_IDS) {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&JOBS_CHANNEL, &notification(&self.instance, ids)],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(())
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
