//! One TeamCity call for one job, and what its answer means for the job (SPEC §6).

use super::retry;
use super::trigger::Trigger;
use crate::config::TriggerMode;
use crate::ids::TeamCityToken;
use crate::metrics::Metrics;
use crate::store::{Finish, Job, Store, TokenRef};
use crate::teamcity::{BuildRequest, TeamCityError, WaitingBuild};
use std::time::Duration;

/// Sends `job` and decides its fate. `jitter` is in [-1, 1].
pub async fn dispatch<T: Trigger>(
    store: &Store,
    teamcity: &T,
    metrics: &Metrics,
    job: &Job,
    jitter: f64,
) -> Finish {
    let token = match resolve_token(store, teamcity, job) {
        Ok(token) => token,
        Err(reason) => {
            let finish = Finish::Dead { error: reason };
            record_call(job, &finish, None, metrics);
            return finish;
        }
    };
    let started = tokio::time::Instant::now();
    let result = match job.mode {
        TriggerMode::Build => queue_build(teamcity, &token, job).await,
        TriggerMode::CheckForChanges => notify_commit_hook(teamcity, &token, job).await,
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
            let schedule = &teamcity.server().retry_schedule;
            match retry::next_delay(schedule, job.attempts, error.retry_after(), jitter) {
                Some(delay) => Finish::Retry {
                    delay,
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
    record_call(job, &finish, Some(elapsed), metrics);
    finish
}

/// The build comment: who pushed what (SPEC §6); also how an interrupted job's build is
/// recognised in TeamCity's queue.
pub fn comment(job: &Job) -> String {
    format!(
        "Bitbucket push by {}: {} {} {}",
        job.user,
        job.repository,
        job.branch,
        job.sha.short()
    )
}

fn resolve_token<T: Trigger>(
    store: &Store,
    teamcity: &T,
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
        TokenRef::Service => teamcity
            .server()
            .service_token
            .clone()
            .ok_or_else(|| "the server's service_token is no longer configured".to_string()),
    }
}

async fn queue_build<T: Trigger>(
    teamcity: &T,
    token: &TeamCityToken,
    job: &Job,
) -> Result<Finish, TeamCityError> {
    let Some(build_type) = &job.build_type else {
        return Ok(Finish::Dead {
            error: "build job without a build type".into(),
        });
    };
    // The call may have reached TeamCity before bb2tc stopped: if TeamCity still has the
    // build queued, it is this job's, and posting again would double it.
    if job.interrupted {
        match teamcity.queued_builds(token, build_type).await {
            Ok(waiting) => {
                if let Some(found) = waiting.iter().find(|b| is_this_jobs_build(b, job)) {
                    tracing::info!(
                        job = job.id,
                        build_id = found.id,
                        "interrupted job was already queued in TeamCity"
                    );
                    return Ok(Finish::Done {
                        build_id: found.id,
                        web_url: found.web_url.clone(),
                        warning: Some("found already queued in TeamCity after a restart".into()),
                    });
                }
            }
            Err(e) if e.is_retryable() => return Err(e),
            // Cannot tell (e.g. no permission to view the queue): post, at least once.
            Err(e) => tracing::debug!(job = job.id, error = %e, "cannot check TeamCity's queue"),
        }
    }
    let properties: Vec<(String, String)> = job.properties.clone().into_iter().collect();
    let request = BuildRequest {
        build_type,
        branch: &job.branch,
        full_ref: &job.full_ref,
        sha: &job.sha,
        comment: comment(job),
        properties: &properties,
        vcs_root_id: job.vcs_root_id.as_deref(),
    };
    let queued = teamcity.queue_build(token, &request).await?;
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

/// Same branch, and the same commit: pinned revision when there is one, else our comment.
fn is_this_jobs_build(build: &WaitingBuild, job: &Job) -> bool {
    let same_branch = build.branch_name.as_deref() == Some(job.branch.as_str());
    let pinned: Vec<&str> = build
        .revisions
        .iter()
        .flat_map(|r| r.revision.iter())
        .filter_map(|r| r.version.as_deref())
        .collect();
    let same_commit = if pinned.is_empty() {
        build.comment.as_ref().and_then(|c| c.text.as_deref()) == Some(comment(job).as_str())
    } else {
        pinned
            .iter()
            .any(|v| v.eq_ignore_ascii_case(job.sha.as_str()))
    };
    same_branch && same_commit
}

async fn notify_commit_hook<T: Trigger>(
    teamcity: &T,
    token: &TeamCityToken,
    job: &Job,
) -> Result<Finish, TeamCityError> {
    Ok(
        if teamcity.notify_commit_hook(token, &job.clone_urls).await? {
            Finish::Done {
                build_id: None,
                web_url: None,
                warning: None,
            }
        } else {
            Finish::Dead {
                error: format!(
                    "no VCS root in TeamCity matches the clone URLs of {}: {}",
                    job.repository,
                    job.clone_urls.join(", ")
                ),
            }
        },
    )
}

/// One log line and the metrics for each attempt.
fn record_call(job: &Job, finish: &Finish, elapsed: Option<Duration>, metrics: &Metrics) {
    let build_type = job
        .build_type
        .as_ref()
        .map(|b| b.as_str())
        .unwrap_or("(commit hook)");
    let ms = elapsed.map_or(0, |e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX));
    let outcome = match finish {
        Finish::Done { .. } => "queued",
        Finish::Retry { .. } => "retry",
        Finish::Dead { .. } => "dead",
    };
    metrics.trigger(
        job.server.as_str(),
        outcome,
        elapsed.map(|e| e.as_secs_f64()),
    );
    match finish {
        Finish::Done {
            build_id, warning, ..
        } => tracing::info!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "queued", build_id, warning, duration_ms = ms,
            "TeamCity call"
        ),
        Finish::Retry { error, delay } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "retry", attempts = job.attempts, error,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            duration_ms = ms, "TeamCity call"
        ),
        Finish::Dead { error } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %job.branch, outcome = "dead", attempts = job.attempts, error,
            duration_ms = ms, "TeamCity call"
        ),
    }
}
