//! Dispatch leases — which instance sends a TeamCity server's jobs, until when — and the
//! `LISTEN` connection through which this instance learns of jobs other instances made.

use super::intake::{JOBS_CHANNEL, parse_notification};
use super::{PgStore, big, pg_error, unbig};
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use crate::store::jobs::Applied;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// How long to wait before connecting again after the `LISTEN` connection was lost.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// How many jobs one catch-up read hands over at most (the rest on the next).
const CATCH_UP_BATCH: i64 = 1000;

impl PgStore {
    /// Takes dispatch lease `name` for `ttl` if it is free, expired or already this
    /// instance's (then renewed). `true` when this instance holds it now.
    pub async fn take_dispatch_lease(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let ttl_ms = big(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let row = client
            .query_opt(
                "INSERT INTO bb2tc_dispatch_leases (server, holder, expires_at) \
                 VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (server) DO UPDATE SET holder = EXCLUDED.holder, \
                 expires_at = EXCLUDED.expires_at \
                 WHERE bb2tc_dispatch_leases.holder = EXCLUDED.holder \
                 OR bb2tc_dispatch_leases.expires_at < now() RETURNING holder",
                &[&name, &self.instance, &ttl_ms],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.is_some())
    }

    /// Gives up a lease this instance holds (at shutdown: another takes over at once).
    pub async fn give_up_dispatch_lease(&self, name: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM bb2tc_dispatch_leases WHERE server = $1 AND holder = $2",
                &[&name, &self.instance],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// Pending jobs with an id above `after`, oldest first (catching up on notifications
    /// missed while the `LISTEN` connection was down).
    async fn pending_after(&self, after: u64) -> Result<Vec<crate::job::Job>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT format, record FROM bb2tc_jobs WHERE id > $1 AND state = 'pending' \
                 ORDER BY id LIMIT $2",
                &[&big(after), &CATCH_UP_BATCH],
            )
            .await
            .map_err(pg_error)?;
        Ok(self.readable_jobs(rows))
    }

    /// The highest job id given so far.
    async fn last_job_id(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT coalesce(max(id), 0) FROM bb2tc_jobs", &[])
            .await
            .map_err(pg_error)?;
        Ok(unbig(row.get(0)))
    }
}

/// Hands the jobs other instances make to this one's workers (through `events`, as its own
/// are), until `stop`: `LISTEN` on a connection of its own, and after every (re)connect a
/// read of the pending jobs it may have missed. A worker not holding its server's lease
/// drops what it is handed; the holder claims it.
pub async fn listen_for_jobs(
    store: Arc<PgStore>,
    events: mpsc::UnboundedSender<Applied>,
    mut stop: Shutdown,
) {
    let mut last = store.last_job_id().await.unwrap_or(0);
    loop {
        if let Err(e) = listen_once(&store, &events, &mut last, &mut stop).await {
            tracing::warn!(error = %e, "the PostgreSQL LISTEN connection failed; connecting again");
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(RECONNECT_WAIT) => {}
        }
    }
}

async fn listen_once(
    store: &PgStore,
    events: &mpsc::UnboundedSender<Applied>,
    last: &mut u64,
    stop: &mut Shutdown,
) -> Result<(), StoreError> {
    let (client, mut connection) =
        tokio_postgres::connect(store.settings().url.expose(), super::tls()?)
            .await
            .map_err(pg_error)?;
    let (payloads, mut received) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if payloads.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the PostgreSQL LISTEN connection closed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
            .await
            .map_err(pg_error)?;
        // Listening now: whatever was made before is read once.
        loop {
            let missed = store.pending_after(*last).await?;
            let full = missed.len() as i64 >= CATCH_UP_BATCH;
            hand_over(events, last, missed);
            if !full {
                break;
            }
        }
        loop {
            let payload = tokio::select! {
                _ = stop.wait() => return Ok(()),
                payload = received.recv() => payload,
            };
            let Some(payload) = payload else {
                return Err(StoreError::Postgres("the LISTEN connection closed".into()));
            };
            let Some((from, ids)) = parse_notification(&payload) else {
                continue;
            };
            *last = ids.iter().copied().max().unwrap_or(0).max(*last);
            if from == store.instance() {
                continue; // announced already
            }
            let jobs = store.jobs_by_id(&ids).await?;
            hand_over(events, last, jobs);
        }
    }
    .await;
    driver.abort();
    result
}

fn hand_over(events: &mpsc::UnboundedSender<Applied>, last: &mut u64, jobs: Vec<crate::job::Job>) {
    if let Some(max) = jobs.iter().map(|j| j.id).max() {
        *last = (*last).max(max);
    }
    if !jobs.is_empty() {
        let _ = events.send(Applied {
            jobs,
            coalesced: Vec::new(),
        });
    }
}
