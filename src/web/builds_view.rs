//! The token page's builds: the signed-in user's recent triggers with what became of them,
//! a **Run again** button on each, and the **Run a build** form (SPEC §6.3). maud escapes
//! every value, as in `html.rs`.

use crate::ids::UserKey;
use crate::job::{Job, JobState};
use crate::store::{DeliveryRecord, Principal};
use maud::{Markup, html};

/// How many of a user's triggers the page lists.
pub const RECENT: usize = 50;

/// A push (or pull request) of the user's that built nothing, and why.
#[derive(Debug, Clone)]
pub struct NotBuilt {
    /// The repository.
    pub repository: String,
    /// The ref.
    pub reference: String,
    /// Why, as the webhook's answer said it.
    pub reason: String,
    /// When it arrived (RFC 3339).
    pub at: String,
}

/// The `principal`'s deliveries (newest first) that made no build for a reason the user can
/// do something about: no token, or a token TeamCity refused.
pub fn not_built(deliveries: &[DeliveryRecord], principal: &Principal) -> Vec<NotBuilt> {
    deliveries
        .iter()
        .filter(|d| {
            let user = d.user.as_deref().and_then(UserKey::parse);
            principal.owns(&d.source, user.as_ref()) && user.is_some()
        })
        .flat_map(|d| {
            d.skipped
                .iter()
                .filter(|s| {
                    s.reason.starts_with("no token for")
                        || s.reason.contains("rejected by TeamCity")
                })
                .map(|s| NotBuilt {
                    repository: d.repository.clone().unwrap_or_default(),
                    reference: s.reference.clone(),
                    reason: s.reason.clone(),
                    at: crate::clock::rfc3339(d.received_at),
                })
        })
        .take(RECENT)
        .collect()
}

/// The section: `runs` says whether the viewer may run builds (users, not the admin).
pub fn builds_section(jobs: &[Job], not_built: &[NotBuilt], csrf: &str, runs: bool) -> Markup {
    html! {
        section.builds aria-labelledby="builds-title" {
            h2 #builds-title { @if runs { "Your builds" } @else { "Recent builds" } }
            @if runs { (run_form(csrf)) }
            @if !not_built.is_empty() {
                table.not-built {
                    caption { "Pushes of yours that built nothing" }
                    thead {
                        tr {
                            th scope="col" { "Repository" }
                            th scope="col" { "Ref" }
                            th scope="col" { "When" }
                            th scope="col" { "Why, and what to do" }
                        }
                    }
                    tbody {
                        @for skip in not_built {
                            tr {
                                td { (skip.repository) }
                                td { (skip.reference.strip_prefix("refs/heads/").unwrap_or(&skip.reference)) }
                                td { (skip.at) }
                                td {
                                    span.status.failed { "not built" } " " (skip.reason)
                                    br;
                                    span.advice { "Add a TeamCity token for that server above; the next push builds." }
                                }
                            }
                        }
                    }
                }
            }
            @if jobs.is_empty() {
                p.empty { "No builds yet: a push to a repository bb2tc routes builds here." }
            } @else {
                table.builds {
                    thead {
                        tr {
                            @if !runs { th scope="col" { "User" } }
                            th scope="col" { "Repository" }
                            th scope="col" { "Branch" }
                            th scope="col" { "Commit" }
                            th scope="col" { "Build" }
                            th scope="col" { "Result" }
                            @if runs { th scope="col" { span.visually-hidden { "Actions" } } }
                        }
                    }
                    tbody {
                        @for job in jobs { (row(job, csrf, runs)) }
                    }
                }
            }
        }
    }
}

fn row(job: &Job, csrf: &str, runs: bool) -> Markup {
    let build_type = job
        .build_type
        .as_ref()
        .map_or("(commit hook)", |b| b.as_str());
    html! {
        tr {
            @if !runs { td { (job.user) } }
            td { (job.repository) }
            td { (job.branch) }
            td { code { (job.sha.short()) } }
            td { (build_type) " " span.muted { "on " (job.server.as_str()) } }
            td { (outcome(job)) }
            @if runs {
                td {
                    form method="post" action={ "/builds/" (job.id) "/again" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" aria-label={ "Run " (build_type) " on " (job.branch) " again" } { "Run again" }
                    }
                }
            }
        }
    }
}

/// What became of a job: queued, running, passed, failed, cancelled — with the TeamCity
/// link — or why it did not build, with what to do.
fn outcome(job: &Job) -> Markup {
    let (class, text) = match (job.state, job.build.as_ref()) {
        (JobState::Pending, _) => ("pending", "waiting to be sent".to_owned()),
        (JobState::Inflight, _) => ("pending", "being sent".to_owned()),
        (JobState::Dead, _) => ("failed", "not built".to_owned()),
        (JobState::Done, Some(build)) => match build.result() {
            Some("success") => ("success", "passed".to_owned()),
            Some("cancelled") => ("cancelled", "cancelled".to_owned()),
            Some("failed_to_start") => ("failed", "failed to start".to_owned()),
            Some(_) => ("failed", "failed".to_owned()),
            None => ("pending", build.state.clone()),
        },
        (JobState::Done, None) => ("success", "queued".to_owned()),
    };
    let detail = match (job.state, job.build.as_ref()) {
        (JobState::Dead, _) => job.last_error.as_deref().map(advice),
        (_, Some(build)) => build.status_text.clone().or_else(|| build.stopped.clone()),
        _ => None,
    };
    html! {
        span class={ "status " (class) } { (text) }
        @if let Some(number) = job.build.as_ref().and_then(|b| b.number.as_deref()) {
            " #" (number)
        }
        @if let Some(url) = &job.web_url {
            " " a href=(url) { "in TeamCity" }
        }
        @if let Some(detail) = detail {
            br;
            span.advice { (detail) }
        }
    }
}

/// A dead job's error, with what the user can do about it.
fn advice(error: &str) -> String {
    if error.contains("(401)") {
        format!("{error} — TeamCity no longer accepts your token: add a new one above.")
    } else if error.contains("removed before the call") {
        format!("{error} — add a token for this server above, then run it again.")
    } else if error.contains("answered 403") {
        format!("{error} — ask your TeamCity administrator for permission to run it.")
    } else {
        error.to_owned()
    }
}

fn run_form(csrf: &str) -> Markup {
    html! {
        details.run {
            summary { "Run a build" }
            form.stack method="post" action="/builds" {
                p.muted {
                    "Queues the builds a push of this branch would, with your own token."
                }
                input type="hidden" name="csrf" value=(csrf);
                label for="run-repository" { "Repository" }
                input #run-repository name="repository" placeholder="PROJECT/repo or workspace/repo" required;
                label for="run-branch" { "Branch" }
                input #run-branch name="branch" placeholder="main" required;
                label for="run-commit" { "Commit" }
                input #run-commit name="commit" placeholder="empty: the branch's head";
                button.primary type="submit" { "Run" }
            }
        }
    }
}
