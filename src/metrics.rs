//! Prometheus metrics (SPEC §10; the names are the contract).
//!
//! Counters and the call-duration histogram are updated where things happen; queue depth,
//! the oldest pending job's age, the token counts and the records set aside come from the
//! store's maintained counts when scraped (counted from the store at start, changed with each
//! write), so they are right after a restart and a scrape costs the same at any queue length.

use crate::config::Config;
use crate::store::{JobState, Store, StoreError, TokenStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    source: String,
    event: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    server: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusPostLabels {
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    server: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    server: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    method: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

type DurationFamily = Family<ServerLabels, Histogram, fn() -> Histogram>;

/// Every metric bb2tc exports.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    signature_failures: Family<SourceLabels, Counter>,
    jobs_enqueued: Family<ServerLabels, Counter>,
    jobs_coalesced: Family<ServerLabels, Counter>,
    triggers: Family<TriggerLabels, Counter>,
    builds_cancelled: Family<TriggerLabels, Counter>,
    builds: Family<ResultLabels, Counter>,
    status_posts: Family<StatusPostLabels, Counter>,
    trigger_duration: DurationFamily,
    queue_depth: Family<DepthLabels, Gauge>,
    queue_oldest_age: Family<ServerLabels, Gauge<f64, AtomicU64>>,
    tokens: Family<StatusLabels, Gauge>,
    sign_ins: Family<SignInLabels, Counter>,
    unreadable: Gauge,
    intake_backlog: Gauge,
    too_large: Family<SourceLabels, Counter>,
    dispatch_lease: Family<ServerLabels, Gauge>,
    claim_duration: DurationFamily,
    pool: Family<PoolLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: String,
}

fn claim_histogram() -> Histogram {
    // 0.1 ms … ~0.4 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 13))
}

/// How someone signed in to the token page (the `method` label of `bb2tc_sign_ins_total`).
#[derive(Debug, Clone, Copy)]
pub enum SignInMethod {
    /// "Sign in with Bitbucket".
    OAuth,
    /// A pasted Bitbucket token.
    BitbucketToken,
    /// The admin token.
    Admin,
}

/// How a sign-in attempt ended (the `result` label).
#[derive(Debug, Clone, Copy)]
pub enum SignInResult {
    /// Signed in.
    Ok,
    /// Bitbucket or bb2tc refused the credentials.
    Refused,
    /// Over the per-address rate limit.
    Limited,
}

impl SignInMethod {
    const ALL: [SignInMethod; 3] = [
        SignInMethod::OAuth,
        SignInMethod::BitbucketToken,
        SignInMethod::Admin,
    ];

    fn label(self) -> &'static str {
        match self {
            SignInMethod::OAuth => "oauth",
            SignInMethod::BitbucketToken => "bitbucket_token",
            SignInMethod::Admin => "admin",
        }
    }
}

impl SignInResult {
    const ALL: [SignInResult; 3] = [
        SignInResult::Ok,
        SignInResult::Refused,
        SignInResult::Limited,
    ];

    fn label(self) -> &'static str {
        match self {
            SignInResult::Ok => "ok",
            SignInResult::Refused => "refused",
            SignInResult::Limited => "limited",
        }
    }
}

fn duration_histogram() -> Histogram {
    // 5 ms … ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            webhooks: Family::default(),
            signature_failures: Family::default(),
            jobs_enqueued: Family::default(),
            jobs_coalesced: Family::default(),
            triggers: Family::default(),
            builds_cancelled: Family::default(),
            builds: Family::default(),
            status_posts: Family::default(),
            trigger_duration: Family::new_with_constructor(duration_histogram),
            queue_depth: Family::default(),
            queue_oldest_age: Family::default(),
            tokens: Family::default(),
            sign_ins: Family::default(),
            unreadable: Gauge::default(),
            intake_backlog: Gauge::default(),
            too_large: Family::default(),
            dispatch_lease: Family::default(),
            claim_duration: Family::new_with_constructor(claim_histogram),
            pool: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "bb2tc_webhooks",
            "Webhook deliveries by source, event and result",
            metrics.webhooks.clone(),
        );
        registry.register(
            "bb2tc_signature_failures",
            "Deliveries refused for a missing or wrong signature",
            metrics.signature_failures.clone(),
        );
        registry.register(
            "bb2tc_jobs_enqueued",
            "Jobs durably queued",
            metrics.jobs_enqueued.clone(),
        );
        registry.register(
            "bb2tc_jobs_coalesced",
            "Pending jobs replaced by a newer push to the same branch",
            metrics.jobs_coalesced.clone(),
        );
        registry.register(
            "bb2tc_triggers",
            "TeamCity calls by outcome (queued, retry, dead)",
            metrics.triggers.clone(),
        );
        registry.register(
            "bb2tc_builds",
            "Followed builds that finished, by result (success, failure, cancelled, failed_to_start, unknown)",
            metrics.builds.clone(),
        );
        registry.register(
            "bb2tc_status_posts",
            "Build statuses posted to Bitbucket, by source and outcome (posted, retry, dead)",
            metrics.status_posts.clone(),
        );
        registry.register(
            "bb2tc_builds_cancelled",
            "Superseded builds bb2tc tried to cancel in TeamCity's queue, by outcome (cancelled; started: TeamCity had started it, left running; failed)",
            metrics.builds_cancelled.clone(),
        );
        registry.register(
            "bb2tc_trigger_duration_seconds",
            "Duration of TeamCity calls",
            metrics.trigger_duration.clone(),
        );
        registry.register(
            "bb2tc_queue_depth",
            "Jobs by server and state",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "bb2tc_queue_oldest_age_seconds",
            "Age of the oldest pending job",
            metrics.queue_oldest_age.clone(),
        );
        registry.register(
            "bb2tc_tokens",
            "Registered tokens by status",
            metrics.tokens.clone(),
        );
        registry.register(
            "bb2tc_sign_ins",
            "Token-page sign-in attempts by method (oauth, bitbucket_token, admin) and result (ok, refused, limited)",
            metrics.sign_ins.clone(),
        );
        registry.register(
            "bb2tc_store_unreadable_records",
            "Stored records that could not be read and were set aside (tree \"unreadable\")",
            metrics.unreadable.clone(),
        );
        registry.register(
            "bb2tc_intake_backlog",
            "Accepted deliveries durable in the intake log and not yet applied to the store's trees",
            metrics.intake_backlog.clone(),
        );
        registry.register(
            "bb2tc_deliveries_too_large",
            "Deliveries that would have made more jobs than server.max_jobs_per_delivery (nothing queued)",
            metrics.too_large.clone(),
        );
        registry.register(
            "bb2tc_dispatch_lease",
            "1 while this instance holds the server's dispatch lease (PostgreSQL; sled: always 1)",
            metrics.dispatch_lease.clone(),
        );
        registry.register(
            "bb2tc_job_claim_duration_seconds",
            "How long taking a due job in flight took in the store",
            metrics.claim_duration.clone(),
        );
        registry.register(
            "bb2tc_store_pool_connections",
            "PostgreSQL connections by state (open, idle, max)",
            metrics.pool.clone(),
        );
        for method in SignInMethod::ALL {
            for result in SignInResult::ALL {
                drop(metrics.sign_ins.get_or_create(&SignInLabels {
                    method: method.label().into(),
                    result: result.label().into(),
                }));
            }
        }
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The metrics with a zero series for every configured source and server, so that
    /// alerts such as `increase(bb2tc_triggers_total{outcome="dead"}[15m])` see a series
    /// from the start instead of none.
    pub fn for_config(config: &Config) -> Self {
        let metrics = Self::default();
        for source in &config.sources {
            let source = SourceLabels {
                source: source.id.to_string(),
            };
            drop(metrics.signature_failures.get_or_create(&source));
            drop(metrics.too_large.get_or_create(&source));
        }
        for server in &config.servers {
            let labels = ServerLabels {
                server: server.id.to_string(),
            };
            drop(metrics.jobs_enqueued.get_or_create(&labels));
            drop(metrics.jobs_coalesced.get_or_create(&labels));
            drop(metrics.trigger_duration.get_or_create(&labels));
            drop(metrics.claim_duration.get_or_create(&labels));
            // sled: this instance sends every server's jobs; PostgreSQL: 0 until the lease.
            metrics
                .dispatch_lease
                .get_or_create(&labels)
                .set(i64::from(config.storage.postgres.is_none()));
            for outcome in ["queued", "retry", "dead"] {
                drop(metrics.triggers.get_or_create(&TriggerLabels {
                    server: server.id.to_string(),
                    outcome: outcome.into(),
                }));
            }
        }
        metrics
    }

    /// One delivery answered; `event` should be a known event key or `other`.
    pub fn webhook(&self, source: &str, event: &str, result: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                source: source.into(),
                event: event.into(),
                result: result.into(),
            })
            .inc();
    }

    /// A token-page sign-in attempt.
    pub fn sign_in(&self, method: SignInMethod, result: SignInResult) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                method: method.label().into(),
                result: result.label().into(),
            })
            .inc();
    }

    /// A delivery that would have made more jobs than allowed.
    pub fn delivery_too_large(&self, source: &str) {
        self.too_large
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc();
    }

    /// A delivery refused for its signature.
    pub fn signature_failure(&self, source: &str) {
        self.signature_failures
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc();
    }

    /// A job durably queued for `server`.
    pub fn job_enqueued(&self, server: &str) {
        self.jobs_enqueued
            .get_or_create(&ServerLabels {
                server: server.into(),
            })
            .inc();
    }

    /// A status post to Bitbucket source `source` ended with `outcome`.
    pub fn status_post(&self, source: &str, outcome: &str) {
        self.status_posts
            .get_or_create(&StatusPostLabels {
                source: source.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A followed build finished with `result`.
    pub fn build_finished(&self, server: &str, result: &str) {
        self.builds
            .get_or_create(&ResultLabels {
                server: server.into(),
                result: result.into(),
            })
            .inc();
    }

    /// A superseded build bb2tc tried to cancel: `cancelled`, `started` (left running) or
    /// `failed`.
    pub fn build_cancel(&self, server: &str, outcome: &str) {
        self.builds_cancelled
            .get_or_create(&TriggerLabels {
                server: server.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A pending job replaced by a newer one.
    pub fn job_coalesced(&self, server: &str) {
        self.jobs_coalesced
            .get_or_create(&ServerLabels {
                server: server.into(),
            })
            .inc();
    }

    /// A job's attempt ended with `outcome` (`queued`, `retry` or `dead`); `seconds` is the
    /// TeamCity call's duration, when a call was made.
    pub fn trigger(&self, server: &str, outcome: &str, seconds: Option<f64>) {
        self.triggers
            .get_or_create(&TriggerLabels {
                server: server.into(),
                outcome: outcome.into(),
            })
            .inc();
        if let Some(seconds) = seconds {
            self.trigger_duration
                .get_or_create(&ServerLabels {
                    server: server.into(),
                })
                .observe(seconds);
        }
    }

    /// Whether this instance holds `server`'s dispatch lease.
    pub fn dispatch_lease(&self, server: &str, held: bool) {
        self.dispatch_lease
            .get_or_create(&ServerLabels {
                server: server.into(),
            })
            .set(i64::from(held));
    }

    /// A claim of one of `server`'s jobs took `took`.
    pub fn job_claimed(&self, server: &str, took: std::time::Duration) {
        self.claim_duration
            .get_or_create(&ServerLabels {
                server: server.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the store-derived gauges refreshed from the store's
    /// maintained counts (no scan: the cost does not grow with the queue).
    pub fn render(&self, config: &Config, store: &Store) -> Result<String, StoreError> {
        let now = crate::clock::now_ms();
        let stats = store.stats();
        for server in &config.servers {
            for state in [
                JobState::Pending,
                JobState::Inflight,
                JobState::Dead,
                JobState::Done,
            ] {
                let count = stats
                    .jobs
                    .get(&(server.id.clone(), state))
                    .map_or(0, |s| s.count);
                self.queue_depth
                    .get_or_create(&DepthLabels {
                        server: server.id.to_string(),
                        state: state.as_str().into(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            let oldest = stats
                .jobs
                .get(&(server.id.clone(), JobState::Pending))
                .filter(|s| s.count > 0)
                .map_or(0.0, |s| {
                    now.saturating_sub(s.oldest_created_at) as f64 / 1000.0
                });
            self.queue_oldest_age
                .get_or_create(&ServerLabels {
                    server: server.id.to_string(),
                })
                .set(oldest);
        }
        for status in [
            TokenStatus::Valid,
            TokenStatus::Invalid,
            TokenStatus::Unverified,
        ] {
            let count = stats.tokens.get(&status).copied().unwrap_or(0);
            self.tokens
                .get_or_create(&StatusLabels {
                    status: status.as_str().into(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.unreadable
            .set(i64::try_from(stats.unreadable).unwrap_or(i64::MAX));
        self.intake_backlog
            .set(i64::try_from(stats.intake_backlog).unwrap_or(i64::MAX));
        if let Some((open, idle, max)) = store.pool_status() {
            for (state, n) in [("open", open), ("idle", idle), ("max", max)] {
                self.pool
                    .get_or_create(&PoolLabels {
                        state: state.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(text)
    }
}
