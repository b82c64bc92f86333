//! Deliveries into PostgreSQL: one transaction per group of concurrent deliveries (see
//! `group_commit`) — marks, jobs (coalesced as [`lifecycle::enqueue`] says), the delivery
//! records, and a `NOTIFY` — committed before the 202s.

use super::jobs::{advisory_key, apply_writes};
use super::{PgStore, big, pg_error, retrying, schema, to_record};
use crate::job::{Job, lifecycle};
use crate::store::dump::delivery_mark;
use crate::store::jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome, new_jobs};
use crate::store::{DEDUP_WINDOW_MS, StoreError};
use std::collections::{HashMap, HashSet};
use tokio::sync::mpsc;

/// The channel other instances learn of new jobs on; the payload is `<instance> <id>,<id>…`.
pub const JOBS_CHANNEL: &str = "bb2tc_jobs";

/// Job ids per notification (each at most 20 digits and a comma).
const NOTIFY_IDS: usize = 300;

/// Takes the marks of a group of deliveries in one statement, under the advisory locks of
/// every coalescing key their jobs may touch (`$1`, sorted): the delivery ids' marks (`$2`,
/// first seen `$3`), then the builds' (`$5`, first seen `$7`) of the deliveries that are not
/// duplicates (`$6`: the delivery mark a build mark depends on, null when its delivery is
/// not de-duplicated by id). A mark is new unless it was first seen less than `$4` ms before.
/// A mark another transaction is inserting makes this wait for its end, so "seen" is only
/// ever answered about a committed mark. Returns the locks taken, the delivery marks that
/// were new, the build marks that were, and `$8` new job ids.
const TAKE_MARKS: &str = "WITH locked AS (SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k), \
     delivery AS (INSERT INTO bb2tc_marks (key, first_seen) \
         SELECT d.k, d.t FROM unnest($2::bytea[], $3::bigint[]) AS d(k, t) ORDER BY d.k \
         ON CONFLICT (key) DO UPDATE SET first_seen = EXCLUDED.first_seen \
         WHERE bb2tc_marks.first_seen <= EXCLUDED.first_seen - $4 RETURNING key), \
     fresh AS (INSERT INTO bb2tc_marks (key, first_seen) \
         SELECT w.k, min(w.t) FROM unnest($5::bytea[], $6::bytea[], $7::bigint[]) AS w(k, d, t) \
         WHERE w.d IS NULL OR w.d IN (SELECT key FROM delivery) GROUP BY w.k ORDER BY w.k \
         ON CONFLICT (key) DO UPDATE SET first_seen = EXCLUDED.first_seen \
         WHERE bb2tc_marks.first_seen <= EXCLUDED.first_seen - $4 RETURNING key) \
     SELECT (SELECT count(*) FROM locked), ARRAY(SELECT key FROM delivery), ARRAY(SELECT key FROM fresh), \
         ARRAY(SELECT nextval('bb2tc_job_ids') FROM generate_series(1::bigint, $8::bigint))";

/// The newest job of each coalescing key in `$1` (read after [`TAKE_MARKS`] took the locks).
const NEWEST_JOBS: &str = "SELECT l.key, j.format, j.record FROM bb2tc_latest_jobs l \
     JOIN bb2tc_jobs j ON j.id = l.id WHERE l.key = ANY($1)";

/// The deliveries' records, in order, and the notification of their jobs (`$5` on channel
/// `$6`; none when null).
const INSERT_DELIVERIES: &str = "WITH d AS (INSERT INTO bb2tc_deliveries (id, received_at, format, record) \
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::jsonb[]) RETURNING 1) \
     SELECT (SELECT count(*) FROM d), CASE WHEN $5::text IS NOT NULL THEN pg_notify($6, $5) END";

/// A delivery on its way into the database (see `group_commit`).
pub(super) struct Push {
    pub delivery: DeliveryRecord,
    pub dedup_id: bool,
    pub changes: Vec<ChangeJobs>,
}

/// What one transaction needs besides the pushes: who claims, and where jobs are announced.
#[derive(Clone)]
pub(super) struct Intake {
    pub instance: String,
    pub lease_ms: i64,
    pub events: mpsc::UnboundedSender<Applied>,
}

impl Intake {
    /// Records a group of deliveries and their jobs in one transaction, committed when this
    /// returns, as if one after the other in their order: a delivery is `Duplicate` when its
    /// id was seen within the window (and `dedup_id`); builds already asked for, in the
    /// database or by an earlier delivery of the group, are skipped. The jobs are announced
    /// to this instance's workers, and to the other instances by `NOTIFY`.
    ///
    /// The group's delivery ids (of those de-duplicated by id) must differ.
    pub async fn record(
        &self,
        pool: &deadpool_postgres::Pool,
        pushes: &[&Push],
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        let (outcomes, applied) = retrying(|| async {
            let client = pool.get().await.map_err(super::pool_error)?;
            let done = self.record_once(&client, pushes).await;
            // Committed, or else nothing: whatever was begun is rolled back before the
            // connection goes back to the pool (or it is dropped).
            if !matches!(done, Ok((_, _, true))) && client.batch_execute("ROLLBACK").await.is_err()
            {
                drop(deadpool_postgres::Object::take(client));
            }
            done.map(|(outcomes, applied, _)| (outcomes, applied))
        })
        .await?;
        if !applied.jobs.is_empty() || !applied.coalesced.is_empty() {
            let _ = self.events.send(applied);
        }
        Ok(outcomes)
    }

    /// One try of [`record`](Self::record), in three round trips: `BEGIN`, the marks (and
    /// new job ids) and the newest jobs of the keys, pipelined; then the writes
    /// [`lifecycle::enqueue`] decides, the records with their `NOTIFY`, and `COMMIT`,
    /// pipelined. Whether it committed.
    async fn record_once(
        &self,
        client: &deadpool_postgres::Object,
        pushes: &[&Push],
    ) -> Result<(Vec<RecordOutcome>, Applied, bool), StoreError> {
        // Every statement is prepared before anything is sent: a pipelined statement must go
        // out on its first poll, in order, or it could follow the COMMIT.
        let (take, newest, insert, notify_more) = (
            super::cached(client, TAKE_MARKS).await?,
            super::cached(client, NEWEST_JOBS).await?,
            super::cached(client, INSERT_DELIVERIES).await?,
            super::cached(client, "SELECT pg_notify($1, $2)").await?,
        );
        let writing = super::jobs::WriteStatements::prepare(client).await?;
        let marks = GroupMarks::of(pushes);
        let take_params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &marks.locks,
            &marks.deliveries,
            &marks.delivery_times,
            &big(DEDUP_WINDOW_MS),
            &marks.builds,
            &marks.build_deliveries,
            &marks.build_times,
            &marks.job_ids,
        ];
        let newest_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&marks.keys];
        let ((), taken, newest) = tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&take, &take_params),
            client.query(&newest, &newest_params),
        )
        .map_err(pg_error)?;
        let new_deliveries: HashSet<Vec<u8>> =
            taken.get::<_, Vec<Vec<u8>>>(1).into_iter().collect();
        let mut fresh: HashSet<Vec<u8>> = taken.get::<_, Vec<Vec<u8>>>(2).into_iter().collect();
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
        let mut outcomes = Vec::with_capacity(pushes.len());
        let mut records = Vec::new();
        let mut applied = Applied::default();
        let mut writes = Vec::new();
        for push in pushes {
            if push.dedup_id && !new_deliveries.contains(&delivery_mark(&push.delivery.id)) {
                outcomes.push(RecordOutcome::Duplicate);
                continue;
            }
            let mut record = push.delivery.clone();
            let jobs = new_jobs(
                &mut record,
                &push.changes,
                |_, job| Ok(fresh.remove(&job.dedup_key())),
                || {
                    ids.next()
                        .map(super::unbig)
                        .ok_or_else(|| StoreError::Postgres("fewer job ids than asked for".into()))
                },
            )?;
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
            records.push(record.clone());
            outcomes.push(RecordOutcome::Recorded {
                jobs,
                delivery: record,
            });
        }
        if records.is_empty() {
            // Duplicates only: nothing to write.
            return Ok((outcomes, applied, false));
        }
        let ids: Vec<u64> = applied.jobs.iter().map(|j| j.id).collect();
        // A group with more jobs than one payload holds notifies the rest separately.
        let (first, rest) = ids.split_at(ids.len().min(NOTIFY_IDS));
        let notify = (!first.is_empty()).then(|| notification(&self.instance, first));
        let saved = records
            .iter()
            .map(to_record)
            .collect::<Result<Vec<_>, _>>()?;
        let delivery_ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let received: Vec<i64> = records.iter().map(|r| big(r.received_at)).collect();
        let formats = vec![schema::RECORD_FORMAT; records.len()];
        let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &delivery_ids,
            &received,
            &formats,
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
                apply_writes(client, &writing, &writes, &self.instance, self.lease_ms),
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
        Ok((outcomes, applied, true))
    }
}

/// The parameters of [`TAKE_MARKS`] for a group.
struct GroupMarks {
    /// The advisory locks of every coalescing key, sorted.
    locks: Vec<i64>,
    /// Every coalescing key, sorted (for [`NEWEST_JOBS`]).
    keys: Vec<Vec<u8>>,
    /// The marks of the delivery ids de-duplicated by id, and when each arrived.
    deliveries: Vec<Vec<u8>>,
    delivery_times: Vec<i64>,
    /// The build marks, each with the mark of its delivery (when de-duplicated by id) and
    /// when that arrived.
    builds: Vec<Vec<u8>>,
    build_deliveries: Vec<Option<Vec<u8>>>,
    build_times: Vec<i64>,
    /// How many job ids to take.
    job_ids: i64,
}

impl GroupMarks {
    fn of(pushes: &[&Push]) -> Self {
        let mut marks = Self {
            locks: Vec::new(),
            keys: Vec::new(),
            deliveries: Vec::new(),
            delivery_times: Vec::new(),
            builds: Vec::new(),
            build_deliveries: Vec::new(),
            build_times: Vec::new(),
            job_ids: 0,
        };
        for push in pushes {
            let arrived = big(push.delivery.received_at);
            let delivery = push.dedup_id.then(|| delivery_mark(&push.delivery.id));
            if let Some(mark) = &delivery {
                marks.deliveries.push(mark.clone());
                marks.delivery_times.push(arrived);
            }
            for change in &push.changes {
                for job in &change.jobs {
                    marks.keys.push(job.coalescing_key());
                    marks.job_ids += 1;
                    if change.deduplicate {
                        marks.builds.push(job.dedup_key());
                        marks.build_deliveries.push(delivery.clone());
                        marks.build_times.push(arrived);
                    }
                }
            }
        }
        marks.keys.sort();
        marks.keys.dedup();
        marks.locks = marks.keys.iter().map(|k| advisory_key(k)).collect();
        marks.locks.sort_unstable();
        marks.locks.dedup();
        marks
    }
}

impl PgStore {
    /// Records a delivery and its jobs, committed when this returns (with the concurrent
    /// deliveries it is grouped with): `Duplicate` when its id was seen within the window
    /// (and `dedup_id`), builds already asked for skipped.
    pub async fn record_push(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<RecordOutcome, StoreError> {
        self.intake
            .record(Push {
                delivery,
                dedup_id,
                changes,
            })
            .await
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
