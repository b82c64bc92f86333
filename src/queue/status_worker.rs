//! The status worker of one Bitbucket source (SPEC §6.2): posts the status jobs of that
//! source, one at a time, within the source's own rate limit, and retries along a schedule
//! of its own — apart from every TeamCity worker, so that statuses never delay a trigger.

use super::rate_limit::RateLimit;
use super::retry;
use super::worker::{Scheduled, Work};
use crate::bitbucket::build_status::{StatusClient, StatusError};
use crate::config::Source;
use crate::ids::{Secret, ServerId};
use crate::job::status::Link;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Finish, Store};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Status posts per second to one source, and how many may go at once after idle time.
pub const RATE_PER_SECOND: f64 = 5.0;
/// See [`RATE_PER_SECOND`].
pub const BURST: u32 = 10;

/// Waits between the attempts of a status post; then it is dead.
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [1, 5, 30, 120, 600, 1800, 3600];

/// What a status worker needs to know about its source.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// The source (kind, url).
    pub source: Source,
    /// Its `status_token`.
    pub token: Secret,
    /// bb2tc's token page, for statuses that say to add a token.
    pub token_page: String,
    /// Each TeamCity server's base URL, for statuses with no build to link.
    pub teamcity: HashMap<ServerId, String>,
}

pub(super) struct StatusWorker {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub client: StatusClient,
    pub source: StatusSource,
    pub limit: RateLimit,
    pub inbox: mpsc::UnboundedReceiver<Scheduled>,
    pub outbox: mpsc::UnboundedSender<Scheduled>,
    pub shutdown: Shutdown,
    pub jitter: fn() -> f64,
    /// Whether the (Data Center) source takes `CANCELLED`, once asked.
    pub cancelled_status: Option<bool>,
    /// With PostgreSQL: whether this instance holds the source's status lease. Not
    /// holding it, the worker posts nothing and drops what it is handed.
    pub lease: Option<super::lease::LeaseGate>,
}

impl StatusWorker {
    pub async fn run(mut self) {
        let mut schedule: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        loop {
            if let Some(gate) = self.lease.as_mut()
                && !gate.held()
            {
                schedule.clear();
                match super::lease::idle(gate, &mut self.shutdown, &mut self.inbox).await {
                    super::lease::Idle::Stop => break,
                    super::lease::Idle::Gained => {
                        self.limit = RateLimit::empty(RATE_PER_SECOND, BURST);
                    }
                    super::lease::Idle::Waiting => {}
                }
                continue;
            }
            let next = schedule.peek().map(|Reverse((due, _))| *due);
            if next.is_some_and(|due| due <= Instant::now()) {
                let Some(Reverse((_, id))) = schedule.pop() else {
                    continue;
                };
                tokio::select! {
                    biased;
                    _ = self.shutdown.wait() => break,
                    _ = self.limit.ready() => {}
                }
                self.post(id).await;
                continue;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                message = self.inbox.recv() => match message {
                    Some(s) => schedule.push(Reverse((s.due, s.id))),
                    None => break,
                },
                _ = super::worker::sleep_until(next), if next.is_some() => {}
            }
        }
    }

    /// Posts status job `id` and records how it went. A status lost between the post and
    /// the record (a crash) is posted again: Bitbucket keeps one status per key and commit.
    async fn post(&mut self, id: u64) {
        let job = match self.store.claim_job(id).await {
            Ok(Ok(job)) => job,
            Ok(Err(crate::store::Unchanged::NotDue { at })) => {
                let wait = at.saturating_sub(crate::clock::now_ms());
                self.again(id, Duration::from_millis(wait));
                return;
            }
            Ok(Err(_)) => return, // replaced by a newer status, or removed
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot claim a status job; will look again");
                self.again(id, Duration::from_secs(5));
                return;
            }
        };
        let Some(report) = job.status.clone() else {
            let dead = Finish::Dead {
                error: "a status job without a status".into(),
            };
            let _ = self
                .store
                .finish_job(id, dead, crate::clock::now_ms())
                .await;
            return;
        };
        let url = match &report.link {
            Link::Build(url) => url.clone(),
            Link::TokenPage => self.source.token_page.clone(),
            Link::TeamCity => self
                .source
                .teamcity
                .get(&job.server)
                .cloned()
                .unwrap_or_else(|| self.source.token_page.clone()),
        };
        let cancelled = match (report.state, self.source.source.kind) {
            (crate::job::status::State::Cancelled, crate::config::SourceKind::DataCenter) => {
                self.takes_cancelled().await
            }
            _ => false,
        };
        let answer = self
            .client
            .post(
                &self.source.source,
                &self.source.token,
                &job,
                &report,
                &url,
                cancelled,
            )
            .await;
        let finish = match &answer {
            Ok(()) => Finish::Done {
                build_id: None,
                web_url: None,
                warning: None,
            },
            Err(StatusError::Unavailable(why)) => {
                let schedule: Vec<Duration> = RETRY_SCHEDULE_SECS
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect();
                match retry::next_delay(&schedule, job.attempts, None, (self.jitter)()) {
                    Some(delay) => Finish::Retry {
                        delay,
                        error: why.clone(),
                        check_first: false,
                    },
                    None => Finish::Dead {
                        error: format!("gave up after {} attempts: {why}", job.attempts),
                    },
                }
            }
            Err(StatusError::Refused(why)) => Finish::Dead { error: why.clone() },
        };
        let outcome = match &finish {
            Finish::Done { .. } => "posted",
            Finish::Retry { .. } => "retry",
            Finish::Dead { .. } => "dead",
        };
        self.metrics
            .status_post(self.source.source.id.as_str(), outcome);
        tracing::info!(
            job = id, source = %self.source.source.id, of_job = report.of_job,
            state = ?report.state, outcome, error = answer.as_ref().err().map(|e| e.to_string()),
            "build status"
        );
        let retry_in = match &finish {
            Finish::Retry { delay, .. } => Some(*delay),
            _ => None,
        };
        match self
            .store
            .finish_job(id, finish, crate::clock::now_ms())
            .await
        {
            Ok(Ok(Some(_))) => {
                if let Some(delay) = retry_in {
                    self.again(id, delay);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot record a status post; it is posted again");
                let _ = self.store.interrupt_job(id, crate::clock::now_ms()).await;
                self.again(id, Duration::from_secs(5));
            }
        }
    }

    /// Whether the Data Center source takes `CANCELLED`: asked once, then remembered.
    async fn takes_cancelled(&mut self) -> bool {
        if let Some(known) = self.cancelled_status {
            return known;
        }
        let known = self
            .client
            .takes_cancelled(&self.source.source, &self.source.token)
            .await;
        self.cancelled_status = Some(known);
        known
    }

    fn again(&self, id: u64, delay: Duration) {
        let _ = self.outbox.send(Scheduled {
            id,
            due: Instant::now() + delay,
            work: Work::Send,
        });
    }
}
