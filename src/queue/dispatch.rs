//! One TeamCity call for one job, and what its answer means for the job (SPEC §6).

use super::retry;
use crate::clock;
use crate::config::TriggerMode;
use crate::ids::TeamCityToken;
use crate::store::{Finish, Job, Store, TokenRef};
use crate::teamcity::{BuildRequest, TeamCityClient, TeamCityError};
use std::time::Duration;

/// Sends `job` and decides its fate. `jitter` is in [-1, 1].
pub async fn dispatch(store: &Store, client: &TeamCityClient, job: &Job, jitter: f64) -> Finish {
    let server = client.server();
    let token = match resolve_token(store, client, job) {
        Ok(token) => token,
        Err(reason) => return Finish::Dead { error: reason },
    };
    let started = tokio::time::Instant::now();
    let result = match job.mode {
        TriggerMode::Build => queue_build(client, &token, job).await,
        TriggerMode::CheckForChanges => {
            match client.notify_commit_hook(&token, &job.clone_urls).await {
                Ok(true) => Ok(Finish::Done {
                    build_id: None,
                    web_url: None,
                    warning: None,
                }),
                Ok(false) => Ok(Finish::Dead {
                    error: format!(
                        "no VCS root in TeamCity matches the clone URLs of {}: {}",
                        job.repository,
                        job.clone_urls.join(", ")
                    ),
                }),
                Err(e) => Err(e),
            }
        }
    };
    let elapsed = started.elapsed();
    if let TokenRef::User(id) = &job.token {
        let verdict = match &result {
            Ok(_) => Some(true),
            Err(TeamCityError::Unauthorized(_)) => Some(false),
            Err(_) => None,
        };
        if let Some(accepted) = verdict
            && let Err(e) = store.mark_token(id, accepted)
        {
            tracing::warn!(error = %e, "could not update the token's status");
        }
    }
    let finish = match result {
        Ok(finish) => finish,
        Err(error) if error.is_retryable() => {
            match retry::next_delay(
                &server.retry_schedule,
                job.attempts,
                error.retry_after(),
                jitter,
            ) {
                Some(delay) => Finish::Retry {
                    at: clock::now_ms() + delay.as_millis() as u64,
                    error: error.to_string(),
                },
                None => Finish::Dead {
                    error: format!("gave up after {} attempts: {error}", job.attempts),
                },
            }
        }
        Err(error) => Finish::Dead {
            error: error.to_string(),
        },
    };
    log_call(job, &finish, elapsed);
    finish
}

fn resolve_token(
    store: &Store,
    client: &TeamCityClient,
    job: &Job,
) -> Result<TeamCityToken, String> {
    match &job.token {
        TokenRef::User(id) => match store.token_secret(id) {
            Ok(Some(token)) => Ok(token),
            Ok(None) => Err(format!(
                "the token of {} was removed before the call",
                job.user
            )),
            Err(e) => Err(format!("cannot read the token: {e}")),
        },
        TokenRef::Service => client
            .server()
            .service_token
            .clone()
            .ok_or_else(|| "the server's service_token is no longer configured".to_string()),
    }
}

async fn queue_build(
    client: &TeamCityClient,
    token: &TeamCityToken,
    job: &Job,
) -> Result<Finish, TeamCityError> {
    let Some(build_type) = &job.build_type else {
        return Ok(Finish::Dead {
            error: "build job without a build type".into(),
        });
    };
    let properties: Vec<(String, String)> = job.properties.clone().into_iter().collect();
    let request = BuildRequest {
        build_type,
        branch: &job.branch,
        full_ref: &job.full_ref,
        sha: &job.sha,
        comment: format!(
            "Bitbucket push by {}: {} {} {}",
            job.user,
            job.repository,
            job.branch,
            job.sha.short()
        ),
        properties: &properties,
        vcs_root_id: job.vcs_root_id.as_deref(),
    };
    let queued = client.queue_build(token, &request).await?;
    let warning = queued
        .branch_name
        .as_deref()
        .filter(|answered| *answered != job.branch)
        .map(|answered| {
            format!(
                "requested branch {:?} but TeamCity queued {:?} (is the branch in the VCS root's branch specification?)",
                job.branch, answered
            )
        });
    Ok(Finish::Done {
        build_id: queued.id,
        web_url: queued.web_url,
        warning,
    })
}

fn log_call(job: &Job, finish: &Finish, elapsed: Duration) {
    let build_type = job
        .build_type
        .as_ref()
        .map(|b| b.as_str())
        .unwrap_or("(commit hook)");
    let ms = elapsed.as_millis() as u64;
    match finish {
        Finish::Done {
            build_id, warning, ..
        } => tracing::info!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "queued", build_id, warning, duration_ms = ms,
            "TeamCity call"
        ),
        Finish::Retry { error, .. } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "retry", attempts = job.attempts, error,
            duration_ms = ms, "TeamCity call"
        ),
        Finish::Dead { error } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "dead", attempts = job.attempts, error,
            duration_ms = ms, "TeamCity call"
        ),
    }
}
