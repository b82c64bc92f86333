//! Jobs in PostgreSQL: each change reads what its [`lifecycle`] transition needs and writes
//! what it returns, in one transaction (see the module doc of `postgres`).

use super::{
    JobRow, PgStore, big, from_record, pg_error, purpose_str, retrying, schema, to_record, unbig,
};
use crate::ids::{ServerId, SourceId};
use crate::job::lifecycle::{self, Refused, Transition, Write};
use crate::job::{Finish, Job, JobState, Purpose, follow, status};
use crate::store::StoreError;
use crate::store::jobs::{Applied, Unchanged};
use deadpool_postgres::{GenericClient, Transaction};
use sha2::{Digest, Sha256};

/// The `state` column's value.
pub(super) fn state_from(text: &str) -> Option<JobState> {
    Some(match text {
        "pending" => JobState::Pending,
        "inflight" => JobState::Inflight,
        "dead" => JobState::Dead,
        "done" => JobState::Done,
        _ => return None,
    })
}

/// A transition of a job, given the newest job id of its key and, when another, that job.
type Decide<'a> =
    dyn Fn(&Job, Option<u64>, Option<&Job>) -> Result<Transition, Refused> + Sync + 'a;

/// The status report a transition calls for, from the job before and after.
type Report<'a> = dyn Fn(&Job, &Job) -> Option<status::StatusReport> + Sync + 'a;

/// The statements a transition's writes use, prepared.
pub(super) struct WriteStatements {
    pub(super) put: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    set_latest: tokio_postgres::Statement,
    clear_latest: tokio_postgres::Statement,
}

impl WriteStatements {
    pub(super) async fn prepare<C: GenericClient + Sync>(tx: &C) -> Result<Self, StoreError> {
        Ok(Self {
            put: super::cached(
                tx,
                "INSERT INTO bb2tc_jobs (id, server, source, state, purpose, token_id, created_at, \
                 next_attempt_at, finished_at, followed, owner, lease_until, format, record) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                 CASE WHEN $11::text IS NULL THEN NULL ELSE now() + $12::bigint * interval '1 millisecond' END, \
                 $13, $14) \
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, \
                 next_attempt_at = EXCLUDED.next_attempt_at, finished_at = EXCLUDED.finished_at, \
                 followed = EXCLUDED.followed, owner = EXCLUDED.owner, \
                 lease_until = EXCLUDED.lease_until, format = EXCLUDED.format, \
                 record = EXCLUDED.record",
            )
            .await?,
            delete: super::cached(tx, "DELETE FROM bb2tc_jobs WHERE id = $1").await?,
            set_latest: super::cached(
                tx,
                "INSERT INTO bb2tc_latest_jobs (key, id) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id",
            )
            .await?,
            clear_latest: super::cached(tx, "DELETE FROM bb2tc_latest_jobs WHERE key = $1")
                .await?,
        })
    }
}

/// Who may change an in-flight job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// Anyone (an admin's removal, a claim of a pending job).
    None,
    /// Only the instance whose claim it is (what follows the call).
    Owner,
    /// Only once the claim's lease ran out (taking it back).
    Expired,
}

/// The advisory lock number of a coalescing key: the first 8 bytes of its SHA-256.
pub(super) fn advisory_key(key: &[u8]) -> i64 {
    let digest = Sha256::digest(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The advisory lock standing for a coalescing key: every transaction that reads or moves
/// the newest job of a key holds it, taken before any row lock.
pub(super) async fn lock_key(tx: &Transaction<'_>, key: &[u8]) -> Result<(), StoreError> {
    tx.execute(
        &super::cached(tx, "SELECT pg_advisory_xact_lock($1)").await?,
        &[&advisory_key(key)],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// The newest job id of `key`.
pub(super) async fn latest_id(tx: &Transaction<'_>, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let row = tx
        .query_opt(
            &super::cached(tx, "SELECT id FROM bb2tc_latest_jobs WHERE key = $1").await?,
            &[&key],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.map(|r| unbig(r.get(0))))
}

/// A job row, locked; an unreadable one is set aside and reads as absent.
async fn read_job_row(
    store: &PgStore,
    tx: &Transaction<'_>,
    id: u64,
    lock: bool,
) -> Result<Option<JobRow>, StoreError> {
    let sql = if lock {
        "SELECT format, record, owner, coalesce(lease_until < now(), false) FROM bb2tc_jobs \
         WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT format, record, owner, coalesce(lease_until < now(), false) FROM bb2tc_jobs \
         WHERE id = $1"
    };
    let Some(row) = tx
        .query_opt(&super::cached(tx, sql).await?, &[&big(id)])
        .await
        .map_err(pg_error)?
    else {
        return Ok(None);
    };
    match from_record::<Job>(row.get(0), row.get(1)) {
        Ok(job) => Ok(Some((job, row.get(2), row.get(3)))),
        Err(reason) => {
            store.set_aside_job(tx, id, &reason).await?;
            Ok(None)
        }
    }
}

/// The newest job of `key`, read inside the transaction.
pub(super) async fn newest_job(
    store: &PgStore,
    tx: &Transaction<'_>,
    key: &[u8],
) -> Result<Option<Job>, StoreError> {
    match latest_id(tx, key).await? {
        Some(id) => Ok(read_job_row(store, tx, id, true)
            .await?
            .map(|(job, ..)| job)),
        None => Ok(None),
    }
}

impl PgStore {
    /// Moves an unreadable job row to `unreadable`, logged (counted by the stats).
    async fn set_aside_job(
        &self,
        tx: &Transaction<'_>,
        id: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            &super::cached(
                tx,
                "WITH gone AS (DELETE FROM bb2tc_jobs WHERE id = $1 RETURNING record) \
             INSERT INTO bb2tc_unreadable (kind, key, record, reason, set_aside_at) \
             SELECT 'job', $2, record, $3, $4 FROM gone",
            )
            .await?,
            &[
                &big(id),
                &id.to_string(),
                &reason,
                &big(crate::clock::now_ms()),
            ],
        )
        .await
        .map_err(pg_error)?;
        tracing::error!(
            job = id,
            reason,
            "set aside a job row that cannot be read (table bb2tc_unreadable)"
        );
        Ok(())
    }

    /// Applies a transition's writes, pipelined (sent together, run in order: each
    /// statement is prepared first, so each write is sent on its first poll); an in-flight
    /// job is claimed by this instance.
    pub(super) async fn apply<C: GenericClient + Sync>(
        &self,
        tx: &C,
        writes: &[Write],
    ) -> Result<(), StoreError> {
        let st = WriteStatements::prepare(tx).await?;
        apply_writes(tx, &st, writes, &self.instance, self.lease_ms()).await
    }

    /// A claim's lease, in milliseconds from now.
    pub(super) fn lease_ms(&self) -> i64 {
        lease_ms(&self.settings)
    }
}

/// A claim's lease under `settings`, in milliseconds.
pub(super) fn lease_ms(settings: &crate::config::PostgresSettings) -> i64 {
    big(u64::try_from(settings.job_lease.as_millis()).unwrap_or(u64::MAX))
}

/// [`PgStore::apply`] with the statements prepared: every write is sent on the first poll,
/// so writes pipelined with a `COMMIT` all go before it. An in-flight job is claimed by
/// `owner` for `lease_ms`.
pub(super) async fn apply_writes<C: GenericClient + Sync>(
    tx: &C,
    st: &WriteStatements,
    writes: &[Write],
    owner: &str,
    lease_ms: i64,
) -> Result<(), StoreError> {
    let sent = writes.iter().map(|write| async move {
        let done = match write {
            Write::Put(job) => return put_job_as(tx, &st.put, job, owner, lease_ms).await,
            Write::Delete(id) => tx.execute(&st.delete, &[&big(*id)]).await,
            Write::SetLatest { key, id } => tx.execute(&st.set_latest, &[key, &big(*id)]).await,
            Write::ClearLatest { key } => tx.execute(&st.clear_latest, &[key]).await,
        };
        done.map(drop).map_err(pg_error)
    });
    futures_util::future::try_join_all(sent).await?;
    Ok(())
}

/// Writes job `job`'s row; in flight, it is claimed by `owner` for `lease_ms` from now
/// (negative: a claim whose lease ran out already).
pub(super) async fn put_job_as<C: GenericClient + Sync>(
    tx: &C,
    stmt: &tokio_postgres::Statement,
    job: &Job,
    owner: &str,
    lease_ms: i64,
) -> Result<(), StoreError> {
    let record = to_record(job)?;
    let token = match &job.token {
        crate::job::TokenRef::User(id) => Some(id.as_str()),
        crate::job::TokenRef::Service => None,
    };
    let owner = (job.state == JobState::Inflight).then_some(owner);
    tx.execute(
        stmt,
        &[
            &big(job.id),
            &job.server.as_str(),
            &job.source.as_str(),
            &job.state.as_str(),
            &purpose_str(job.purpose),
            &token,
            &big(job.created_at),
            &big(job.next_attempt_at),
            &job.finished_at.map(big),
            &follow::is_followed(job),
            &owner,
            &lease_ms,
            &schema::RECORD_FORMAT,
            &record,
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    /// Reads job `id` under its key's lock, checks `fence`, runs `decide` (given the newest
    /// job id of the key and, when another, that job), adds the status job `report` asks
    /// for, and applies the writes. The job before, and the transition.
    async fn transition(
        &self,
        id: u64,
        fence: Fence,
        decide: &Decide<'_>,
        report: &Report<'_>,
        now: u64,
    ) -> Result<Result<(Job, Transition), Unchanged>, StoreError> {
        retrying(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let Some((peek, ..)) = read_job_row(self, &tx, id, false).await? else {
                return Ok(Err(Unchanged::Gone));
            };
            let key = peek.coalescing_key();
            lock_key(&tx, &key).await?;
            let Some((job, owner, expired)) = read_job_row(self, &tx, id, true).await? else {
                tx.commit().await.map_err(pg_error)?;
                return Ok(Err(Unchanged::Gone));
            };
            let fenced = job.state == JobState::Inflight
                && match fence {
                    Fence::None => false,
                    Fence::Owner => owner.as_deref() != Some(self.instance.as_str()),
                    Fence::Expired => !expired,
                };
            if fenced {
                return Ok(Err(Unchanged::InState(JobState::Inflight)));
            }
            let latest = latest_id(&tx, &key).await?;
            let newest = match latest.filter(|&l| l != id) {
                Some(other) => read_job_row(self, &tx, other, true).await?.map(|(j, ..)| j),
                None => None,
            };
            let mut t = match decide(&job, latest, newest.as_ref()) {
                Ok(t) => t,
                Err(Refused::WrongState(state)) => return Ok(Err(Unchanged::InState(state))),
            };
            if let Some(after) = t.job.clone()
                && let Some(report) = report(&job, &after)
            {
                let mut made = status::status_job(&after, report);
                made.id = self.next_job_id(&tx).await?;
                made.created_at = now;
                made.next_attempt_at = now;
                let status_key = made.coalescing_key();
                lock_key(&tx, &status_key).await?;
                let waiting = newest_job(self, &tx, &status_key).await?;
                t.writes
                    .extend(lifecycle::enqueue(made, waiting.as_ref()).writes);
            }
            self.apply(&tx, &t.writes).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(Ok((job, t)))
        })
        .await
    }

    /// [`transition`](Self::transition) of a change that calls for no status report.
    async fn change(
        &self,
        id: u64,
        fence: Fence,
        decide: &Decide<'_>,
        now: u64,
    ) -> Result<Result<Transition, Unchanged>, StoreError> {
        let t = self
            .transition(id, fence, decide, &|_, _| None, now)
            .await?;
        Ok(t.map(|(_, t)| t))
    }

    /// The next job id.
    pub(super) async fn next_job_id(&self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        let row = tx
            .query_one(
                &super::cached(tx, "SELECT nextval('bb2tc_job_ids')").await?,
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(unbig(row.get(0)))
    }

    /// Hands the pending status jobs a transition made to this instance's workers, and
    /// tells the others (the holder of the source's status lease may be another).
    async fn announce_statuses(&self, t: &Transition) -> Result<(), StoreError> {
        let jobs: Vec<Job> = t
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Put(job)
                    if job.purpose == Purpose::ReportStatus && job.state == JobState::Pending =>
                {
                    Some(job.as_ref().clone())
                }
                _ => None,
            })
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        let _ = self.events.send(Applied {
            jobs,
            coalesced: Vec::new(),
        });
        self.notify_jobs(&ids).await
    }

    /// A job this instance had in flight and that is pending again (put back, interrupted,
    /// to be retried) is told to the other instances: the holder of its server's lease may be
    /// another one now, which did not see it pending when it took the lease.
    async fn hand_back(
        &self,
        job: Result<Option<Job>, Unchanged>,
    ) -> Result<Option<Job>, Unchanged> {
        if let Ok(Some(pending)) = &job
            && pending.state == JobState::Pending
            && let Err(e) = self.notify_jobs(&[pending.id]).await
        {
            tracing::warn!(job = pending.id, error = %e, "cannot tell the other instances of a job pending again");
        }
        job
    }

    /// A pending job that is due goes in flight, claimed by this instance. One not due yet
    /// is left as it is (another instance scheduled it too, or it was rescheduled since).
    pub async fn claim_job(&self, id: u64) -> Result<Result<Job, Unchanged>, StoreError> {
        let now = crate::clock::now_ms();
        let t = self
            .transition(
                id,
                Fence::None,
                &|job, _, _| {
                    if job.state == JobState::Pending && job.next_attempt_at > now + DUE_SLACK_MS {
                        return Err(Refused::WrongState(JobState::Pending));
                    }
                    lifecycle::claim(job)
                },
                &|_, _| None,
                now,
            )
            .await?;
        match t {
            Err(Unchanged::InState(JobState::Pending)) => Ok(match self.job(id).await? {
                Some(job) if job.state == JobState::Pending => Err(Unchanged::NotDue {
                    at: job.next_attempt_at,
                }),
                Some(job) => Err(Unchanged::InState(job.state)),
                None => Err(Unchanged::Gone),
            }),
            t => Ok(t.and_then(|(_, t)| t.job.ok_or(Unchanged::Gone))),
        }
    }

    /// Right before the call: whether the claim is still this instance's (its lease then
    /// renewed). `false`: it was taken back, and the call must not be made.
    pub async fn confirm_claim(&self, id: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let lease_ms = self.lease_ms();
        let n = client
            .execute(
                "UPDATE bb2tc_jobs SET lease_until = now() + $3::bigint * interval '1 millisecond' \
                 WHERE id = $1 AND state = 'inflight' AND owner = $2",
                &[&big(id), &self.instance, &lease_ms],
            )
            .await
            .map_err(pg_error)?;
        Ok(n == 1)
    }

    /// A claimed job goes back unsent; `Ok(None)` when dropped as superseded.
    pub async fn release_job(&self, id: u64) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self
            .change(
                id,
                Fence::Owner,
                &|job, latest, _| lifecycle::release(job, latest),
                crate::clock::now_ms(),
            )
            .await?;
        Ok(self.hand_back(t.map(|t| t.job)).await)
    }

    /// A job whose call may have reached TeamCity goes back, flagged for the check first.
    pub async fn interrupt_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self
            .change(
                id,
                Fence::Owner,
                &|job, latest, _| lifecycle::interrupted(job, latest, now),
                now,
            )
            .await?;
        Ok(self.hand_back(t.map(|t| t.job)).await)
    }

    /// How a call ended (fenced: only this instance's claim).
    pub async fn finish_job(
        &self,
        id: u64,
        finish: &Finish,
        now: u64,
    ) -> Result<Result<Option<Job>, Unchanged>, StoreError> {
        let t = self
            .transition(
                id,
                Fence::Owner,
                &|job, latest, newest| lifecycle::sent(job, finish, latest, newest, now),
                &|_, after| status::after_trigger(after, finish),
                now,
            )
            .await?;
        if let Ok((_, t)) = &t
            && let Err(e) = self.announce_statuses(t).await
        {
            // Committed: the holder of the status lease finds it when it next resumes.
            tracing::warn!(error = %e, "cannot tell the other instances of a new status post");
        }
        Ok(self.hand_back(t.map(|(_, t)| t.job)).await)
    }

    /// What TeamCity answered about a done job's build.
    pub async fn observe_build(
        &self,
        id: u64,
        seen: &follow::Seen,
        now: u64,
    ) -> Result<Result<Job, Unchanged>, StoreError> {
        let t = self
            .transition(
                id,
                Fence::None,
                &|job, _, _| lifecycle::followed(job, seen, now),
                &|before, after| status::after_poll(before.build.as_ref(), after),
                now,
            )
            .await?;
        if let Ok((_, t)) = &t
            && let Err(e) = self.announce_statuses(t).await
        {
            // Committed: the holder of the status lease finds it when it next resumes.
            tracing::warn!(error = %e, "cannot tell the other instances of a new status post");
        }
        Ok(t.and_then(|(_, t)| t.job.ok_or(Unchanged::Gone)))
    }

    /// A dead job becomes pending again, due `now`; the lease holder is told.
    pub async fn revive_job(
        &self,
        id: u64,
        now: u64,
    ) -> Result<Result<Job, Unchanged>, StoreError> {
        let t = self
            .change(
                id,
                Fence::None,
                &|job, _, newest| lifecycle::revive(job, newest, now),
                now,
            )
            .await?;
        let job = t.and_then(|t| t.job.ok_or(Unchanged::Gone));
        if let Ok(job) = &job {
            self.notify_jobs(&[job.id]).await?;
        }
        Ok(job)
    }

    /// Deletes a job in any state; `false` when there was none.
    pub async fn remove_job(&self, id: u64) -> Result<bool, StoreError> {
        let t = self
            .change(
                id,
                Fence::None,
                &|job, latest, _| Ok(lifecycle::remove(job, latest)),
                crate::clock::now_ms(),
            )
            .await?;
        Ok(t.is_ok())
    }

    /// Claims of `servers`' jobs and of `sources`' status posts whose lease ran out —
    /// their instance stopped or lost the database — become pending again, flagged so that
    /// TeamCity is asked first. The jobs taken back.
    pub async fn sweep_claims(
        &self,
        servers: &[ServerId],
        sources: &[SourceId],
        now: u64,
    ) -> Result<Vec<Job>, StoreError> {
        let servers: Vec<&str> = servers.iter().map(ServerId::as_str).collect();
        let sources: Vec<&str> = sources.iter().map(SourceId::as_str).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM bb2tc_jobs WHERE state = 'inflight' AND lease_until < now() \
                 AND CASE WHEN purpose = 'report_status' THEN source = ANY($2) \
                 ELSE server = ANY($1) END ORDER BY id LIMIT 500",
                &[&servers, &sources],
            )
            .await
            .map_err(pg_error)?;
        drop(client);
        let mut back = Vec::new();
        for row in rows {
            let id = unbig(row.get(0));
            let t = self
                .change(
                    id,
                    Fence::Expired,
                    &|job, latest, _| lifecycle::interrupted(job, latest, now),
                    now,
                )
                .await?;
            if let Ok(t) = t
                && let Some(job) = t.job
            {
                tracing::warn!(job = job.id, server = %job.server, "took back a claim whose instance stopped; TeamCity is asked before it is sent again");
                back.push(job);
            }
        }
        Ok(back)
    }

    /// The pending status posts of `source`.
    pub async fn resume_status_jobs(&self, source: &SourceId) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE state = 'pending' \
                 AND purpose = 'report_status' AND source = $1 ORDER BY id",
                &[&source.as_str()],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }

    /// Every pending job, and every done one whose build is still followed — of one server
    /// (no status posts), or of all. Claims in flight are left to [`sweep_claims`](Self::sweep_claims): another
    /// instance may be making their calls.
    pub async fn resume_jobs(&self, server: Option<&ServerId>) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let server = server.map(ServerId::as_str);
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE (state = 'pending' OR followed) \
                 AND ($1::text IS NULL OR (server = $1 AND purpose <> 'report_status')) ORDER BY id",
                &[&server],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }

    /// The jobs of these rows (`format`, `record`); unreadable ones are logged and left out
    /// (the next change of such a job sets it aside).
    pub(super) fn readable_jobs(&self, rows: Vec<tokio_postgres::Row>) -> Vec<Job> {
        rows.into_iter()
            .filter_map(|row| match from_record::<Job>(row.get(0), row.get(1)) {
                Ok(job) => Some(job),
                Err(reason) => {
                    tracing::error!(reason, "a job row cannot be read; left out");
                    None
                }
            })
            .collect()
    }

    /// Whether a job is still stored.
    pub async fn job_exists(&self, id: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT 1 FROM bb2tc_jobs WHERE id = $1", &[&big(id)])
            .await
            .map_err(pg_error)?;
        Ok(row.is_some())
    }

    /// Jobs by id (those that still exist).
    pub async fn jobs_by_id(&self, ids: &[u64]) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|&id| big(id)).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }

    /// One job.
    pub async fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        Ok(self.jobs_by_id(&[id]).await?.pop())
    }

    /// Jobs, newest first, optionally of one state.
    pub async fn list_jobs(
        &self,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let state = state.map(JobState::as_str);
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE ($1::text IS NULL OR state = $1) \
                 ORDER BY id DESC LIMIT $2",
                &[&state, &big(limit as u64)],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }

    /// The newest build jobs sent with one of `tokens` (all: `None`).
    pub async fn recent_builds(
        &self,
        tokens: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE purpose = 'build' \
                 AND ($1::text[] IS NULL OR token_id = ANY($1)) ORDER BY id DESC LIMIT $2",
                &[&tokens, &big(limit as u64)],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }
}

/// How early a claim may come for a job due later (clock steps between instances).
const DUE_SLACK_MS: u64 = 50;
