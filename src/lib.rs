#![forbid(unsafe_code)]
//! # bb2tc — Bitbucket pushes to TeamCity builds, as the pusher
//!
//! bb2tc receives Bitbucket's signed webhooks (Data Center or Cloud), works out who pushed
//! what, and queues rate-limited TeamCity build triggers authenticated with *that user's own*
//! TeamCity access token. The contract is `SPEC.md`; the README explains how to run it.
//!
//! ## The life of a push
//!
//! 1. [`http::serve`] accepts the connection; the router sends
//!    `POST /hooks/bitbucket/{source}` to the webhook endpoint.
//! 2. The body is read within the size and time limits, the `X-Hub-Signature` HMAC is
//!    checked against the source's secrets ([`bitbucket::signature`]), and the payload is
//!    parsed into one normalised [`bitbucket::Push`] — or a [`bitbucket::PullRequest`], whose
//!    source branch at its head commit is treated as a push of it (a Cloud one's 12-digit
//!    head made whole through [`bitbucket::cloud_api`]).
//! 3. [`ingest::plan`] (or [`ingest::plan_pull_request`]) matches every ref change against
//!    the routes ([`routing`]) and looks up the pusher's token for each route's server: one
//!    job per build type, or a reason why not.
//!    (Developers register those tokens themselves on the token page, [`web`], after signing
//!    in with Bitbucket; admins can through the API.)
//! 4. The [`store`] checks the de-duplication marks (one per build: a push and a pull request
//!    of one commit make one build), gives the jobs ids and appends the
//!    delivery to its intake log — one `write` + `fdatasync` shared by all concurrent
//!    deliveries — and only then is the 202 sent. A moment later the log's applier writes it
//!    into sled's trees in a batch (coalescing older pending jobs for the same branch, as
//!    [`job::lifecycle`] decides) and hands the jobs to the workers. (With PostgreSQL: one
//!    transaction, committed before the 202, and a `NOTIFY` for the other instances.)
//! 5. The [`queue`] worker of each TeamCity server takes due jobs through its token bucket
//!    and in-flight limit, and [`teamcity`] makes the `buildQueue` (or commit-hook) call with
//!    `Authorization: Bearer <pusher's token>`. The answer decides: done, retry later, or dead.
//!    A route's `cancel_superseded` then cancels the branch's older builds still in
//!    TeamCity's queue ([`job::lifecycle`] says which).
//! 6. The queued build is followed until it finishes ([`job::follow`]: polls behind the
//!    triggers), and with a route's `report_status` its trigger and build are reported to
//!    Bitbucket as build statuses ([`job::status`] decides; a status worker per source posts
//!    them through [`bitbucket::build_status`]). The token page lists each user's builds and
//!    runs new ones as them ([`web`]).
//!
//! ## Layout
//!
//! - `main.rs` calls [`cli`] — the command line: parsing and one function per command.
//! - [`config`] — the TOML file: `${VAR}` interpolation, defaults, validation.
//! - [`ids`] — newtypes for ids and for secrets (redacted `Debug`).
//! - [`bitbucket`] — signature, event keys, Data Center and Cloud payloads → [`bitbucket::Push`]
//!   or [`bitbucket::PullRequest`]; the REST calls bb2tc makes to Bitbucket (a Cloud pull
//!   request's head commit, build statuses, a branch's head).
//! - [`routing`] — globs and which routes a change matches.
//! - [`ingest`] — from a push to jobs and skip reasons.
//! - [`job`] — jobs, and their lifecycle as pure functions of (job, event, now); when a build
//!   is asked about (`follow`) and which status it calls for (`status`).
//! - [`store`] — the async store boundary (deliveries, jobs, tokens, sessions, counts) and the
//!   two backends behind it: sled (embedded, the default: the intake log, finished jobs
//!   apart, versioned records, migration, group commit, encryption) and PostgreSQL (several
//!   instances on one database: a transaction per group of concurrent deliveries, fenced job
//!   claims, dispatch leases, `LISTEN`/`NOTIFY`, embedded schema migrations); `copy-store`
//!   between them.
//! - [`queue`] — per-server workers, rate limit, retry schedule, one call per job, the
//!   cancellation of superseded queued builds, following builds; a status worker per source;
//!   with PostgreSQL, the dispatch lease each worker sends under.
//! - [`teamcity`] — the REST client.
//! - [`http`] — server, router, one file per endpoint group.
//! - [`web`] — the token page: sign-in (Bitbucket OAuth, pasted token, admin), sessions,
//!   each user's TeamCity tokens, their builds and running builds (maud templates);
//!   [`bitbucket::identity`] proves who signs in.
//! - [`token_registration`] — checking a token with TeamCity and keeping it (API and page).
//! - [`metrics`] — the Prometheus metrics of SPEC §10; [`log_text`] — payload text in logs;
//!   [`log_output`] — log lines to standard error, in batches.
//! - [`admin_client`] — the admin API's client side, for `bb2tc token …` and `bb2tc jobs …`.
//! - [`answer`] — reading TeamCity's and Bitbucket's answers within a size limit.
//! - [`app`] — the state the handlers share; [`shutdown`], [`clock`] — small helpers.
//!
//! Outside `src/`: `tests/it/` (black-box tests against a fake TeamCity and a fake Bitbucket,
//! and browser tests of the token page in headless Chromium), `benches/`
//! (benchmarks, see `BENCHMARKS.md`), `fuzz/` (cargo-fuzz targets), `deploy/`.

pub mod admin_client;
pub mod answer;
pub mod app;
pub mod bitbucket;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod job;
pub mod log_output;
pub mod log_text;
pub mod metrics;
pub mod queue;
pub mod routing;
pub mod shutdown;
pub mod store;
pub mod teamcity;
pub mod token_registration;
pub mod web;

use app::App;
use config::Config;
use queue::Queue;
use shutdown::Shutdown;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::{Store, StoreError};
use teamcity::{TeamCityClient, TeamCityError};
use tokio::net::TcpListener;

/// How often expired de-duplication marks, delivery records and done jobs are dropped.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Why the bridge could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A TeamCity client could not be set up (e.g. a bad `ca_file`).
    #[error(transparent)]
    TeamCity(#[from] TeamCityError),
    /// The token page's Bitbucket client could not be set up.
    #[error(transparent)]
    Bitbucket(#[from] bitbucket::identity::IdentityError),
    /// The Bitbucket Cloud API client could not be set up.
    #[error(transparent)]
    CloudApi(#[from] bitbucket::cloud_api::CloudApiError),
}

/// Runs the bridge on `listener` until `shutdown` resolves: opens the store, resumes queued
/// jobs, serves HTTP, then stops accepting, lets in-flight work finish within
/// `shutdown_grace_secs`, and closes the store. Jobs not yet sent stay queued.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if let Ok(bound) = listener.local_addr() {
        config.http.follow_bound_address(bound);
    }
    for warning in config.warnings() {
        tracing::warn!("config: {warning}");
    }
    // Opening reads (and at an upgrade rewrites) a sled store: off the runtime's threads.
    let store = Arc::new(Store::connect(&config.storage).await?);
    let admin_hash = app::admin_token_hash(config.admin_token.as_ref(), &store).await?;
    let clients = config
        .servers
        .iter()
        .map(TeamCityClient::new)
        .collect::<Result<Vec<_>, _>>()?;
    let (stop_workers, stopping) = Shutdown::new();
    let metrics = Arc::new(metrics::Metrics::for_config(&config));
    let statuses = status_sources(&config);
    let (queue, queue_tasks) = Queue::start(
        store.clone(),
        metrics.clone(),
        &clients,
        statuses,
        stopping.clone(),
        queue::retry::random_jitter,
    )
    .await?;
    let grace = config.http.shutdown_grace;
    let clients: HashMap<_, _> = clients
        .into_iter()
        .map(|c| (c.server().id.clone(), c))
        .collect();
    let web = web::WebState::new(&config)?;
    let app = Arc::new(App::new(
        config, store, queue, clients, metrics, web, admin_hash,
    )?);
    let applied = app.store.take_applied();
    let handing = tokio::spawn(hand_applied_jobs(app.clone(), applied, stopping.clone()));
    let pruner = tokio::spawn(prune_periodically(app.clone(), stopping.clone()));
    let healer = tokio::spawn(heal_periodically(app.store.clone(), stopping.clone()));
    let shared = shared_store_tasks(&app, &stopping);
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        sources = app.config.sources.len(),
        servers = app.config.servers.len(),
        routes = app.config.routes.len(),
        "bb2tc ready"
    );
    http::serve(listener, app.clone(), shutdown).await;
    tracing::info!("shutting down: no new requests; finishing calls in flight");
    stop_workers.trigger();
    queue_tasks.drain(grace).await;
    let _ = pruner.await;
    let _ = healer.await;
    for task in shared {
        let _ = task.await;
    }
    let _ = handing.await;
    let store = app.store.clone();
    drop(app);
    store.commit().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Hands the jobs of recorded deliveries to their workers as the store applies them
/// (shortly after each 202), and counts the pending jobs they replaced.
/// The sources build statuses are posted to: those with a `status_token`.
fn status_sources(config: &Config) -> Vec<queue::status_worker::StatusSource> {
    config
        .sources
        .iter()
        .filter_map(|source| {
            Some(queue::status_worker::StatusSource {
                token: source.status_token.clone()?,
                source: source.clone(),
                token_page: format!("{}/", config.http.public_url.trim_end_matches('/')),
                teamcity: config
                    .servers
                    .iter()
                    .map(|s| (s.id.clone(), s.base_url().to_owned()))
                    .collect(),
            })
        })
        .collect()
}

async fn hand_applied_jobs(
    app: Arc<App>,
    applied: Option<tokio::sync::mpsc::UnboundedReceiver<store::Applied>>,
    mut stop: Shutdown,
) {
    let Some(mut applied) = applied else { return };
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.wait() => return,
            batch = applied.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        for job in &batch.jobs {
            app.queue.schedule(job);
        }
        for (server, old) in &batch.coalesced {
            app.metrics.job_coalesced(server.as_str());
            tracing::info!(server = %server, replaced_job = old, "pending job replaced by a newer push");
        }
    }
}

/// How often claims whose lease ran out are looked for (PostgreSQL).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The tasks only a store shared by several instances needs: jobs other instances made
/// handed to the workers, the queue counts read, and expired claims taken back.
fn shared_store_tasks(app: &Arc<App>, stop: &Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(pg) = app.store.postgres().cloned() else {
        return Vec::new();
    };
    let listener = tokio::spawn(store::postgres::listen_for_jobs(
        pg.clone(),
        app.store.events(),
        stop.clone(),
    ));
    let mut counting_stop = stop.clone();
    let counts = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = counting_stop.wait() => return,
                _ = tokio::time::sleep(store::postgres::STATS_INTERVAL) => {}
            }
            if let Err(e) = pg.refresh_stats().await {
                tracing::warn!(error = %e, "cannot read the queue counts from PostgreSQL");
            }
        }
    });
    let sweeping = app.clone();
    let mut sweeping_stop = stop.clone();
    let sweeper = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sweeping_stop.wait() => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            let servers = sweeping.queue.held_servers();
            let sources = sweeping.queue.held_status_sources();
            match sweeping
                .store
                .sweep_claims(&servers, &sources, clock::now_ms())
                .await
            {
                Ok(jobs) => {
                    for job in &jobs {
                        sweeping.queue.schedule(job);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for expired claims"),
            }
        }
    });
    vec![listener, counts, sweeper]
}

/// How often a store whose writes failed is looked at again (and reopened if need be).
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

async fn heal_periodically(store: Arc<Store>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(HEAL_INTERVAL) => {}
        }
        if let Err(e) = store.heal().await {
            tracing::warn!(error = %e, "the store still cannot take writes; trying again shortly");
        }
    }
}

async fn prune_periodically(app: Arc<App>, mut stop: Shutdown) {
    loop {
        app.web.forget_quiet_addresses();
        match app.store.prune(clock::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "pruned expired records"),
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}
