//! Build statuses for Bitbucket (SPEC §6.2), as pure functions: which status a job's trigger
//! or its followed build calls for. The status is then a job of its own
//! ([`super::Purpose::ReportStatus`]), posted by its source's status worker.
//!
//! `report_status = "triggers"`: one status per trigger — `SUCCESSFUL` "queued as `<user>`"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::job;

    fn reporting(mode: ReportStatus) -> Job {
        let mut job = job("main", 'a');
        job.id = 3;
        job.report_status = mode;
        job.web_url = Some("https://tc/viewQueued.html?itemId=9".into());
        job
    }

    fn done(warning: Option<&str>) -> Finish {
        Finish::Done {
            build_id: Some(9),
            web_url: None,
            warning: warning.map(str::to_owned),
        }
    }

    #[test]
    fn a_trigger_says_queued_or_why_no_build_will_run() {
        let triggers = reporting(ReportStatus::Triggers);
        let queued = after_trigger(&triggers, &done(None)).unwrap();
        assert_eq!((queued.state, queued.of_job), (State::Successful, 3));
        assert_eq!(queued.description, "Queued in TeamCity as jdoe");
        assert_eq!(
            queued.link,
            Link::Build("https://tc/viewQueued.html?itemId=9".into())
        );
        let builds = reporting(ReportStatus::Builds);
        assert_eq!(
            after_trigger(&builds, &done(None)).unwrap().state,
            State::Inprogress
        );
        let fell_back = after_trigger(
            &triggers,
            &done(Some("requested branch \"x\" but TeamCity queued \"main\"")),
        )
        .unwrap();
        assert_eq!(fell_back.state, State::Failed);
        for (error, says, link) in [
            (
                "TeamCity rejected the token (401): Authentication required",
                "(401)",
                Link::TokenPage,
            ),
            (
                "TeamCity answered 403: no permission",
                "(403)",
                Link::TeamCity,
            ),
            (
                "TeamCity answered 404: No build type",
                "(404)",
                Link::TeamCity,
            ),
        ] {
            let dead = Finish::Dead {
                error: error.into(),
            };
            let report = after_trigger(&triggers, &dead).unwrap();
            assert_eq!(report.state, State::Failed);
            assert!(report.description.contains(says), "{}", report.description);
            assert_eq!(report.link, link);
        }
        let retry = Finish::Retry {
            delay: std::time::Duration::from_secs(1),
            error: "503".into(),
            check_first: false,
        };
        assert_eq!(after_trigger(&triggers, &retry), None, "still trying");
        assert_eq!(
            after_trigger(&reporting(ReportStatus::Off), &done(None)),
            None
        );
    }

    #[test]
    fn a_followed_build_is_reported_when_it_starts_and_when_it_ends() {
        let mut job = reporting(ReportStatus::Builds);
        let queued = BuildProgress {
            state: "queued".into(),
            ..BuildProgress::default()
        };
        job.build = Some(BuildProgress {
            state: "running".into(),
            number: Some("12".into()),
            ..BuildProgress::default()
        });
        let running = after_poll(Some(&queued), &job).unwrap();
        assert_eq!(
            (running.state, running.description.as_str()),
            (State::Inprogress, "Running #12 as jdoe")
        );
        assert_eq!(
            after_poll(job.build.as_ref(), &job),
            None,
            "no change, no status"
        );
        let before = job.build.clone();
        job.build = Some(BuildProgress {
            state: "finished".into(),
            status: Some("UNKNOWN".into()),
            canceled: Some("superseded".into()),
            number: Some("12".into()),
            ..BuildProgress::default()
        });
        assert_eq!(
            after_poll(before.as_ref(), &job).unwrap().state,
            State::Cancelled
        );
        job.build.as_mut().unwrap().canceled = None;
        job.build.as_mut().unwrap().status = Some("SUCCESS".into());
        assert_eq!(
            after_poll(before.as_ref(), &job).unwrap().state,
            State::Successful
        );
        job.report_status = ReportStatus::Triggers;
        assert_eq!(
            after_poll(before.as_ref(), &job),
            None,
            "triggers report no builds"
        );
    }

    #[test]
    fn a_status_job_is_about_the_same_commit_and_replaces_a_waiting_one() {
        let trigger = reporting(ReportStatus::Triggers);
        let report = after_trigger(&trigger, &done(None)).unwrap();
        let status = status_job(&trigger, report);
        assert_eq!(status.purpose, Purpose::ReportStatus);
        assert_eq!(
            (status.sha.clone(), status.state),
            (trigger.sha.clone(), super::super::JobState::Pending)
        );
        assert_ne!(status.coalescing_key(), trigger.coalescing_key());
        assert_ne!(status.dedup_key(), trigger.dedup_key());
    }
}
