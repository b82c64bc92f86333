//! The durable job queue's moving part: one worker (`worker.rs`) per TeamCity server.
//!
//! Jobs live in the store; the queue only tells each server's worker which job ids to send
//! and when. On start, jobs left pending or in flight are resumed.

mod cancel;
mod dispatch;
mod follow;
pub mod lease;
pub mod rate_limit;
pub mod retry;
pub mod status_worker;
mod trigger;
mod worker;

pub use trigger::Trigger;

use crate::clock;
use crate::ids::ServerId;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Job, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
pub use worker::{Scheduled, Work};

struct WorkerHandle {
    inbox: mpsc::UnboundedSender<Scheduled>,
    task: AbortHandle,
    /// Whether this instance holds the server's dispatch lease (PostgreSQL only).
    lease: Option<lease::LeaseGate>,
}

/// Hands jobs to the running workers.
pub struct Queue {
    workers: HashMap<ServerId, WorkerHandle>,
    /// The status worker of each source that has a `status_token`, and whether this
    /// instance holds that source's status lease (PostgreSQL only).
    status_workers:
        HashMap<crate::ids::SourceId, (mpsc::UnboundedSender<Scheduled>, Option<lease::LeaseGate>)>,
}

/// What shutdown waits for: the worker tasks and their in-flight calls.
pub struct QueueTasks {
    workers: Vec<(JoinHandle<()>, Arc<Semaphore>, usize)>,
}

impl Queue {
    /// Starts a worker per server and hands each the jobs the store still holds for it.
    /// `jitter` gives each retry's jitter in [-1, 1] ([`retry::random_jitter`] in production).
    pub async fn start<T: Trigger>(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        servers: &[T],
        statuses: Vec<status_worker::StatusSource>,
        shutdown: Shutdown,
        jitter: fn() -> f64,
    ) -> Result<(Self, QueueTasks), StoreError> {
        let mut workers = HashMap::new();
        let mut tasks = QueueTasks {
            workers: Vec::new(),
        };
        for teamcity in servers {
            let server = teamcity.server();
            let (inbox, receiver) = mpsc::unbounded_channel();
            let slots = Arc::new(Semaphore::new(server.max_in_flight));
            // Several instances: the server's jobs go out only while its lease is held here.
            let lease = store.is_shared().then(|| {
                let leased = lease::Leased::Server(server.id.clone());
                keep_lease(&store, &metrics, leased, &inbox, &shutdown, &mut tasks)
            });
            let worker = worker::Worker {
                store: store.clone(),
                metrics: metrics.clone(),
                teamcity: teamcity.clone(),
                jitter,
                admit: rate_limit::RateLimit::new(server.rate_per_second, server.burst),
                pace: Arc::new(rate_limit::RateLimit::new(
                    server.rate_per_second,
                    server.burst,
                )),
                slots: slots.clone(),
                inbox: receiver,
                outbox: inbox.clone(),
                shutdown: shutdown.clone(),
                poll_slot: None,
                sending: Arc::default(),
                lease: lease.clone(),
            };
            let task = tokio::spawn(worker.run());
            workers.insert(
                server.id.clone(),
                WorkerHandle {
                    inbox,
                    task: task.abort_handle(),
                    lease,
                },
            );
            tasks.workers.push((task, slots, server.max_in_flight));
        }
        let mut status_workers = HashMap::new();
        for source in statuses {
            let Ok(client) = crate::bitbucket::build_status::StatusClient::new() else {
                tracing::error!(source = %source.source.id, "cannot set up the Bitbucket status client; statuses of this source wait");
                continue;
            };
            let (inbox, receiver) = mpsc::unbounded_channel();
            status_workers.insert(source.source.id.clone(), (inbox.clone(), None));
            let lease = store.is_shared().then(|| {
                let leased = lease::Leased::Statuses(source.source.id.clone());
                keep_lease(&store, &metrics, leased, &inbox, &shutdown, &mut tasks)
            });
            if let Some(entry) = status_workers.get_mut(&source.source.id) {
                entry.1 = lease.clone();
            }
            let worker = status_worker::StatusWorker {
                store: store.clone(),
                metrics: metrics.clone(),
                client,
                source,
                limit: rate_limit::RateLimit::new(
                    status_worker::RATE_PER_SECOND,
                    status_worker::BURST,
                ),
                inbox: receiver,
                outbox: inbox,
                shutdown: shutdown.clone(),
                jitter,
                cancelled_status: None,
                lease,
            };
            tasks
                .workers
                .push((tokio::spawn(worker.run()), Arc::new(Semaphore::new(1)), 1));
        }
        let queue = Self {
            workers,
            status_workers,
        };
        let resumed = store.resume_jobs(clock::now_ms()).await?;
        if !resumed.is_empty() {
            tracing::info!(jobs = resumed.len(), "resuming queued jobs");
        }
        for job in &resumed {
            queue.schedule(job);
        }
        Ok((queue, tasks))
    }

    /// Hands a stored pending job — or a done one whose build is followed — to its
    /// server's worker.
    pub fn schedule(&self, job: &Job) {
        if job.purpose == crate::job::Purpose::ReportStatus {
            match self.status_workers.get(&job.source) {
                Some((inbox, _)) => hand_to(inbox, job),
                None => tracing::warn!(
                    job = job.id, source = %job.source,
                    "build status for a source without a status_token stays queued"
                ),
            }
            return;
        }
        match self.workers.get(&job.server) {
            Some(worker) => hand_to(&worker.inbox, job),
            None => tracing::warn!(
                job = job.id,
                server = %job.server,
                "job for a TeamCity server that is no longer configured stays queued"
            ),
        }
    }

    /// The servers whose jobs this instance sends: all of them, or with PostgreSQL those
    /// whose dispatch lease it holds.
    pub fn held_servers(&self) -> Vec<ServerId> {
        let mut out: Vec<ServerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.lease.as_ref().is_none_or(lease::LeaseGate::held))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// The sources whose build statuses this instance posts (see [`held_servers`]).
    ///
    /// [`held_servers`]: Self::held_servers
    pub fn held_status_sources(&self) -> Vec<crate::ids::SourceId> {
        let mut out: Vec<_> = self
            .status_workers
            .iter()
            .filter(|(_, (_, lease))| lease.as_ref().is_none_or(lease::LeaseGate::held))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Stops a worker as a crash would (for tests of readiness).
    #[cfg(test)]
    pub(crate) fn abort_worker(&self, server: &ServerId) {
        if let Some(worker) = self.workers.get(server) {
            worker.task.abort();
        }
    }

    /// Whether each server's worker is still running.
    pub fn liveness(&self) -> Vec<(ServerId, bool)> {
        let mut out: Vec<(ServerId, bool)> = self
            .workers
            .iter()
            .map(|(id, w)| (id.clone(), !w.task.is_finished()))
            .collect();
        out.sort();
        out
    }
}

/// Starts the keeper of one lease; the gate its worker looks at.
fn keep_lease(
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    leased: lease::Leased,
    inbox: &mpsc::UnboundedSender<Scheduled>,
    shutdown: &Shutdown,
    tasks: &mut QueueTasks,
) -> lease::LeaseGate {
    let (held, gate) = lease::gate();
    let keeper = lease::LeaseKeeper {
        store: store.clone(),
        metrics: metrics.clone(),
        leased,
        held,
        inbox: inbox.clone(),
        shutdown: shutdown.clone(),
    };
    tasks
        .workers
        .push((tokio::spawn(keeper.run()), Arc::new(Semaphore::new(1)), 1));
    gate
}

/// Hands a stored pending job — or a done one whose build is followed — to a worker.
fn hand_to(inbox: &mpsc::UnboundedSender<Scheduled>, job: &Job) {
    if let Some(at) = job.build.as_ref().and_then(|b| b.next_poll_at)
        && job.state == crate::job::JobState::Done
    {
        worker::follow_at(inbox, job.id, at);
        return;
    }
    let delay = Duration::from_millis(job.next_attempt_at.saturating_sub(clock::now_ms()));
    let _ = inbox.send(Scheduled {
        id: job.id,
        due: Instant::now() + delay,
        work: Work::Send,
    });
}

impl QueueTasks {
    /// After shutdown was triggered: waits for the workers to stop and for in-flight calls
    /// to finish, at most `grace`. Jobs not sent stay queued for the next start.
    pub async fn drain(self, grace: Duration) {
        let all_done = async {
            for (task, slots, max_in_flight) in self.workers {
                let _ = task.await;
                let _ = slots
                    .acquire_many(u32::try_from(max_in_flight).unwrap_or(u32::MAX))
                    .await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                "shutdown grace period over; calls still in flight resume at next start"
            );
        }
    }
}

#[cfg(test)]
mod tests;
