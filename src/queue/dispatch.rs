//! One TeamCity call for one job, and what its answer means for the job (SPEC §6).

use super::cancel::cancel_superseded;
use super::rate_limit::RateLimit;
use super::retry;
use super::trigger::Trigger;
use crate::config::TriggerMode;
use crate::ids::TeamCityToken;
use crate::job::Purpose;
use crate::log_text::Escaped;
use crate::metrics::Metrics;
use crate::store::{Finish, Job, Store, TokenRef};
use crate::teamcity::{BuildRequest, FoundBuild, TeamCityError};
use std::time::Duration;

/// Sends `job` and decides its fate. `jitter` is in [-1, 1]; `pace` is the server's rate
/// limit, which the cancellations after the call pass too.
pub async fn dispatch<T: Trigger>(
    store: &Store,
    teamcity: &T,
    metrics: &Metrics,
    job: &Job,
    jitter: f64,
    pace: &RateLimit,
) -> Finish {
    if job.purpose == Purpose::CancelQueued {
        return cancel_only(store, teamcity, metrics, job, pace).await;
    }
    let retry_or_dead = |error: String, retry_after: Option<Duration>, check_first: bool| {
        let schedule = &teamcity.server().retry_schedule;
        match retry::next_delay(schedule, job.attempts, retry_after, jitter) {
            Some(delay) => Finish::Retry {
                delay,
                error,
                check_first,
            },
            None => Finish::Dead {
                error: format!("gave up after {} attempts: {error}", job.attempts),
            },
        }
    };
    let (token, revision) = match resolve_token(store, teamcity, job).await {
        Ok(found) => found,
        Err(TokenProblem::Gone(reason)) => {
            let finish = Finish::Dead { error: reason };
            record_call(job, &finish, None, metrics);
            return finish;
        }
        // The store failing for a moment is no reason to give the job up.
        Err(TokenProblem::Store(e)) => {
            let finish = retry_or_dead(format!("cannot read the token: {e}"), None, false);
            record_call(job, &finish, None, metrics);
            return finish;
        }
    };
    let started = tokio::time::Instant::now();
    let result = match job.mode {
        TriggerMode::Build => queue_build(teamcity, &token, job, store.id()).await,
        TriggerMode::CheckForChanges => notify_commit_hook(teamcity, &token, job).await,
    };
    let elapsed = started.elapsed();
    if let (TokenRef::User(id), Some(revision)) = (&job.token, revision) {
        let verdict = match &result {
            Ok(_) => Some(true),
            Err(TeamCityError::Unauthorized(_)) => Some(false),
            Err(_) => None,
        };
        if let Some(accepted) = verdict
            && let Err(e) = store.mark_token(id.clone(), revision, accepted).await
        {
            tracing::warn!(error = %e, "could not update the token's status");
        }
    }
    let finish = match result {
        Ok(finish) => finish,
        Err(error) if error.is_retryable() => {
            // A build call TeamCity answered 2xx may have queued the build.
            let check_first =
                job.mode == TriggerMode::Build && matches!(error, TeamCityError::AnswerUnread(_));
            retry_or_dead(error.to_string(), error.retry_after(), check_first)
        }
        Err(error) => Finish::Dead {
            error: error.to_string(),
        },
    };
    record_call(job, &finish, Some(elapsed), metrics);
    match finish {
        Finish::Done {
            build_id,
            web_url,
            warning,
        } if !job.supersedes.is_empty() => {
            let comment = format!("superseded by {} (bb2tc)", job.sha.as_str());
            let notes =
                cancel_superseded(store, teamcity, metrics, pace, job, Some(&token), &comment)
                    .await;
            Finish::Done {
                build_id,
                web_url,
                warning: join_notes(warning, notes),
            }
        }
        finish => finish,
    }
}

/// A job that only cancels (its pull request ended): no build of its own.
async fn cancel_only<T: Trigger>(
    store: &Store,
    teamcity: &T,
    metrics: &Metrics,
    job: &Job,
    pace: &RateLimit,
) -> Finish {
    let token = resolve_token(store, teamcity, job)
        .await
        .ok()
        .map(|(t, _)| t);
    let comment = match job.pull_request {
        Some(id) => format!("pull request #{id} ended (bb2tc)"),
        None => "its branch ended (bb2tc)".into(),
    };
    let notes = cancel_superseded(
        store,
        teamcity,
        metrics,
        pace,
        job,
        token.as_ref(),
        &comment,
    )
    .await;
    let warning = if notes.is_empty() {
        Some("nothing was queued to cancel".into())
    } else {
        join_notes(None, notes)
    };
    Finish::Done {
        build_id: None,
        web_url: None,
        warning,
    }
}

/// A warning followed by notes, `; `-separated.
fn join_notes(warning: Option<String>, notes: Vec<String>) -> Option<String> {
    let all: Vec<String> = warning.into_iter().chain(notes).collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// The build comment: who pushed what (or which pull request, SPEC §5.4), ending with the
/// job's mark (SPEC §6), by which an interrupted job's build is recognised in TeamCity.
pub fn comment(job: &Job, store_id: &str) -> String {
    let what = match job.pull_request {
        Some(id) => format!(
            "Bitbucket pull request #{id} by {}: {} {} {}",
            job.user,
            job.repository,
            job.branch,
            job.sha.short()
        ),
        None => legacy_comment(job),
    };
    format!("{what} ({})", job_mark(job, store_id))
}

/// `bb2tc job <store id>-<job id>`: unique across bb2tc installations sharing a TeamCity.
pub fn job_mark(job: &Job, store_id: &str) -> String {
    format!("bb2tc job {store_id}-{}", job.id)
}

/// The comment of bb2tc up to a84aaec, without the job's mark: a job migrated from such a
/// store that was in flight is recognised by it.
fn legacy_comment(job: &Job) -> String {
    format!(
        "Bitbucket push by {}: {} {} {}",
        job.user,
        job.repository,
        job.branch,
        job.sha.short()
    )
}

pub(super) enum TokenProblem {
    /// The token (or service token) is no longer there: the job cannot be sent.
    Gone(String),
    /// The store could not be read; try again later.
    Store(crate::store::StoreError),
}

/// The token to send, and for a user's token the revision TeamCity's verdict is about.
pub(super) async fn resolve_token<T: Trigger>(
    store: &Store,
    teamcity: &T,
    job: &Job,
) -> Result<(TeamCityToken, Option<u64>), TokenProblem> {
    match &job.token {
        TokenRef::User(id) => match store.token_secret(id.clone()).await {
            Ok(Some((token, revision))) => Ok((token, Some(revision))),
            Ok(None) => Err(TokenProblem::Gone(format!(
                "the token of {} was removed before the call",
                job.user
            ))),
            Err(crate::store::StoreError::Crypto) => Err(TokenProblem::Gone(
                "the stored token could not be decrypted".into(),
            )),
            Err(e) => Err(TokenProblem::Store(e)),
        },
        TokenRef::Service => teamcity
            .server()
            .service_token
            .clone()
            .map(|token| (token, None))
            .ok_or_else(|| {
                TokenProblem::Gone("the server's service_token is no longer configured".into())
            }),
    }
}

async fn queue_build<T: Trigger>(
    teamcity: &T,
    token: &TeamCityToken,
    job: &Job,
    store_id: &str,
) -> Result<Finish, TeamCityError> {
    let Some(build_type) = &job.build_type else {
        return Ok(Finish::Dead {
            error: "build job without a build type".into(),
        });
    };
    // The call may have reached TeamCity before bb2tc stopped: if TeamCity has a build
    // carrying this job's mark — still queued or already started — it is this job's, and
    // posting again would double it.
    let mut recovery_note = None;
    if job.interrupted {
        match teamcity.recent_builds(token, build_type, &job.branch).await {
            Ok(builds) => {
                if let Some(found) = builds.iter().find(|b| is_this_jobs_build(b, job, store_id)) {
                    tracing::info!(
                        job = job.id,
                        build_id = found.id,
                        state = found.state.as_deref().unwrap_or("unknown"),
                        "interrupted job's build found in TeamCity; not posted again"
                    );
                    return Ok(Finish::Done {
                        build_id: found.id,
                        web_url: found.web_url.clone(),
                        warning: Some(
                            "found in TeamCity after a restart (the call had reached it)".into(),
                        ),
                    });
                }
            }
            Err(e) if e.is_retryable() => return Err(e),
            // Cannot tell (e.g. no permission to view builds): post, at least once.
            Err(e) => {
                tracing::warn!(
                    job = job.id, error = %e,
                    "cannot ask TeamCity whether the interrupted job's build exists; posting it again (at least once: it may be doubled)"
                );
                recovery_note = Some(format!(
                    "posted again after a restart without knowing whether the first call reached TeamCity, which could not be asked ({e}): the build may be doubled"
                ));
            }
        }
    }
    let properties: Vec<(String, String)> = job.properties.clone().into_iter().collect();
    // Only a whole commit id can be pinned (a Cloud pull request's may be 12 digits).
    let vcs_root_id = job.vcs_root_id.as_deref().filter(|_| job.sha.is_full());
    if job.vcs_root_id.is_some() && vcs_root_id.is_none() {
        recovery_note = join_notes(
            recovery_note,
            vec![format!(
                "the commit {} is abbreviated, so it was not pinned: TeamCity builds the branch's head",
                job.sha.as_str()
            )],
        );
    }
    let request = BuildRequest {
        build_type,
        branch: &job.branch,
        full_ref: &job.full_ref,
        sha: &job.sha,
        comment: comment(job, store_id),
        properties: &properties,
        vcs_root_id,
    };
    let queued = teamcity.queue_build(token, &request).await?;
    let branch_warning = queued
        .branch_name
        .as_deref()
        .filter(|answered| *answered != job.branch)
        .map(|answered| {
            format!(
                "requested branch {:?} but TeamCity queued {:?} (is the branch in the VCS root's branch specification?)",
                job.branch, answered
            )
        });
    let warning = join_notes(branch_warning, recovery_note.into_iter().collect());
    Ok(Finish::Done {
        build_id: queued.id,
        web_url: queued.web_url,
        warning,
    })
}

/// The build carries this job's mark — or, for a job from a store of bb2tc up to a84aaec,
/// that release's comment for the same push.
fn is_this_jobs_build(build: &FoundBuild, job: &Job, store_id: &str) -> bool {
    let Some(text) = build.comment.as_ref().and_then(|c| c.text.as_deref()) else {
        return false;
    };
    let mark = format!("({})", job_mark(job, store_id));
    text.trim_end().ends_with(&mark) || text == legacy_comment(job)
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

/// One log line and the metrics for each attempt. Branch names come from the payload and
/// are logged [`Escaped`], so a name with a line break cannot forge log lines.
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
            branch = %Escaped(&job.branch), outcome = "queued", build_id, warning, duration_ms = ms,
            "TeamCity call"
        ),
        Finish::Retry { error, delay, .. } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %Escaped(&job.branch), outcome = "retry", attempts = job.attempts, error,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            duration_ms = ms, "TeamCity call"
        ),
        Finish::Dead { error } => tracing::warn!(
            delivery = %job.delivery, job = job.id, server = %job.server, build_type,
            branch = %Escaped(&job.branch), outcome = "dead", attempts = job.attempts, error,
            duration_ms = ms, "TeamCity call"
        ),
    }
}
