//! Build statuses for Bitbucket (SPEC §6.2), as pure functions: which status a job's trigger
//! or its followed build calls for. The status is then a job of its own
//! ([`super::Purpose::ReportStatus`]), posted by its source's status worker.
//!
//! `report_status = "triggers"`: one status per trigger — `SUCCESSFUL` "queued as <user>"
//! (linking the queued build), or `FAILED` with why no build will run. (A trigger that
//! worked is reported as successful so that it does not hold a merge check forever; use
//! `"builds"` to gate merges on the build.) `"builds"`: `INPROGRESS` once queued and while
//! running, then `SUCCESSFUL`, `FAILED` or `CANCELLED` as the build ended.

use super::{BuildProgress, Finish, Job, Purpose};
use crate::config::ReportStatus;
use serde::{Deserialize, Serialize};

/// A Bitbucket build state. Data Center shows `CANCELLED` only since its `cancelledStatus`
/// capability; the client sends `FAILED` there, and Cloud `STOPPED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Queued or running.
    Inprogress,
    /// Passed (or, for `"triggers"`, queued).
    Successful,
    /// Failed, or no build will run.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// Where a status links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The build in TeamCity.
    Build(String),
    /// bb2tc's token page: where a user adds or renews a token.
    TokenPage,
    /// The TeamCity server (when there is no build to link).
    TeamCity,
}

/// One status to post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The state.
    pub state: State,
    /// What it says, e.g. `Queued in TeamCity as jdoe`.
    pub description: String,
    /// Where it links.
    pub link: Link,
    /// The trigger job it is about.
    pub of_job: u64,
}

/// The status of a trigger that just ended with `finish` (`job` as it is afterwards).
pub fn after_trigger(job: &Job, finish: &Finish) -> Option<StatusReport> {
    if job.report_status == ReportStatus::Off || job.purpose != Purpose::Build {
        return None;
    }
    let report = |state, description: String, link| {
        Some(StatusReport {
            state,
            description,
            link,
            of_job: job.id,
        })
    };
    match finish {
        Finish::Done { warning, .. } => {
            if let Some(fell_back) = warning.as_deref().filter(|w| w.contains("TeamCity queued")) {
                return report(
                    State::Failed,
                    format!("Not this branch: {fell_back}"),
                    build_link(job),
                );
            }
            let state = match job.report_status {
                ReportStatus::Builds => State::Inprogress,
                _ => State::Successful,
            };
            report(
                state,
                format!("Queued in TeamCity as {}", job.user),
                build_link(job),
            )
        }
        Finish::Dead { error } => {
            let (description, link) = if error.contains("(401)") {
                (
                    format!(
                        "No build: TeamCity refused the token of {} (401); add a new one on bb2tc's token page",
                        job.user
                    ),
                    Link::TokenPage,
                )
            } else if error.contains("answered 403") {
                (
                    format!(
                        "No build: {} may not run this build configuration in TeamCity (403)",
                        job.user
                    ),
                    Link::TeamCity,
                )
            } else if error.contains("answered 404") {
                (
                    "No build: TeamCity has no such build configuration (404)".to_owned(),
                    Link::TeamCity,
                )
            } else {
                (format!("No build: {error}"), Link::TeamCity)
            };
            report(State::Failed, description, link)
        }
        Finish::Retry { .. } => None,
    }
}

/// The status of a job that was not made because its user has no token (`job` is the job it
/// would have been).
pub fn no_token(job: &Job, reason: &str) -> Option<StatusReport> {
    (job.report_status != ReportStatus::Off).then(|| StatusReport {
        state: State::Failed,
        description: format!("No build: {reason}; add a TeamCity token on bb2tc's token page"),
        link: Link::TokenPage,
        of_job: 0,
    })
}

/// The status of a followed build whose progress went from `before` to `job.build`
/// (`"builds"` only): when it started, and when it ended.
pub fn after_poll(before: Option<&BuildProgress>, job: &Job) -> Option<StatusReport> {
    let after = job.build.as_ref()?;
    if job.report_status != ReportStatus::Builds || before.is_some_and(|b| b.state == after.state) {
        return None;
    }
    let text = after
        .status_text
        .as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    let number = after
        .number
        .as_deref()
        .map(|n| format!(" #{n}"))
        .unwrap_or_default();
    let (state, description) = match (after.state.as_str(), after.result()) {
        ("running", _) => (
            State::Inprogress,
            format!("Running{number} as {}", job.user),
        ),
        ("finished", Some("success")) => (
            State::Successful,
            format!("Build{number} by {} passed{text}", job.user),
        ),
        ("finished", Some("cancelled")) => (
            State::Cancelled,
            format!("Build{number} by {} was cancelled", job.user),
        ),
        ("finished", _) => (
            State::Failed,
            format!("Build{number} by {} failed{text}", job.user),
        ),
        _ => return None,
    };
    Some(StatusReport {
        state,
        description,
        link: build_link(job),
        of_job: job.id,
    })
}

fn build_link(job: &Job) -> Link {
    job.web_url.clone().map_or(Link::TeamCity, Link::Build)
}

/// The status job for `report` about `job` (its id and time set by the store).
pub fn status_job(job: &Job, report: StatusReport) -> Job {
    Job {
        id: 0,
        state: super::JobState::Pending,
        purpose: Purpose::ReportStatus,
        status: Some(report),
        attempts: 0,
        next_attempt_at: 0,
        last_error: None,
        interrupted: false,
        build_id: None,
        web_url: None,
        warning: None,
        finished_at: None,
        supersedes: Vec::new(),
        build: None,
        cancel_superseded: false,
        ..job.clone()
    }
}
