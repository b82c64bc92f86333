//! Jobs: one TeamCity call each, what they hold and where they are in their life.
//!
//! [`lifecycle`] decides every change of state as a pure function; the store only applies
//! the writes it returns.

pub mod follow;
pub mod lifecycle;
pub mod status;

use crate::clock;
use crate::config::TriggerMode;
use crate::ids::{BuildTypeId, ServerId, Sha, SourceId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its time, the rate limit or a free slot.
    Pending,
    /// The call to TeamCity is under way.
    Inflight,
    /// Failed for good; kept until an admin retries or removes it.
    Dead,
    /// TeamCity accepted it.
    Done,
}

impl JobState {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Inflight => "inflight",
            Self::Dead => "dead",
            Self::Done => "done",
        }
    }

    /// Parses the API spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "inflight" => Some(Self::Inflight),
            "dead" => Some(Self::Dead),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// Whose TeamCity token a job is sent with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRef {
    /// The pusher's registered token (by record id, never the token itself).
    User(String),
    /// The server's `service_token`.
    Service,
}

/// What a job asks of TeamCity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Queue a build (or notify the commit hook), then cancel what it supersedes.
    #[default]
    Build,
    /// Only cancel what it supersedes: a pull request ended (merged, declined, deleted).
    CancelQueued,
    /// Post a build status to Bitbucket (its `status`), for the job `status.of_job`.
    ReportStatus,
}

/// An older build of a job's branch, queued in TeamCity, that the job cancels once its own
/// build is queued — if TeamCity still holds it in the queue (a started build runs on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseded {
    /// The job that queued it.
    pub job: u64,
    /// TeamCity's id of the queued build.
    pub build_id: u64,
    /// The token that queued it: TeamCity lets a user cancel what they queued.
    pub token: TokenRef,
}

/// What bb2tc learned of a queued build by following it (SPEC §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuildProgress {
    /// `queued`, `running` or `finished`, as TeamCity said last.
    pub state: String,
    /// A finished build's `SUCCESS`, `FAILURE` or `UNKNOWN` (cancelled).
    pub status: Option<String>,
    /// TeamCity's status text, e.g. `Tests passed: 120`.
    pub status_text: Option<String>,
    /// The build number, once it started.
    pub number: Option<String>,
    /// Cancelled (in the queue or while running), with TeamCity's reason.
    pub canceled: Option<String>,
    /// TeamCity could not start it.
    pub failed_to_start: bool,
    /// Times it was asked about.
    pub polls: u32,
    /// When to ask next (ms); `None`: no longer followed.
    pub next_poll_at: Option<u64>,
    /// Why following stopped before the build finished (24 h passed, the build is gone).
    pub stopped: Option<String>,
}

impl BuildProgress {
    /// The outcome for `bb2tc_builds_total` and the page: `success`, `failure`,
    /// `cancelled`, `failed_to_start`, or `None` while it is not finished.
    pub fn result(&self) -> Option<&'static str> {
        if self.state != "finished" {
            return None;
        }
        Some(if self.canceled.is_some() {
            "cancelled"
        } else if self.failed_to_start {
            "failed_to_start"
        } else {
            match self.status.as_deref() {
                Some("SUCCESS") => "success",
                Some("FAILURE" | "ERROR") => "failure",
                _ => "unknown",
            }
        })
    }
}

/// One pending or finished TeamCity call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Assigned by the store.
    pub id: u64,
    /// Lifecycle state.
    pub state: JobState,
    /// Bitbucket source of the push.
    pub source: SourceId,
    /// The delivery that made it.
    pub delivery: String,
    /// TeamCity server.
    pub server: ServerId,
    /// Build or commit-hook notification.
    pub mode: TriggerMode,
    /// Build configuration (build mode only).
    pub build_type: Option<BuildTypeId>,
    /// `PROJECT/repo` or `workspace/repo`.
    pub repository: String,
    /// The full ref pushed, e.g. `refs/heads/main`.
    pub full_ref: String,
    /// The `branchName` to send (logical or full, per route).
    pub branch: String,
    /// The pushed commit.
    pub sha: Sha,
    /// The pusher's name, for the build comment.
    pub user: String,
    /// Which token to send.
    pub token: TokenRef,
    /// Extra build parameters.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// VCS root to pin the revision on.
    pub vcs_root_id: Option<String>,
    /// Clone URLs (commit-hook mode).
    #[serde(default)]
    pub clone_urls: Vec<String>,
    /// Calls made so far.
    pub attempts: u32,
    /// Creation time (ms).
    pub created_at: u64,
    /// Not before this time (ms).
    pub next_attempt_at: u64,
    /// The last failure, with TeamCity's text.
    pub last_error: Option<String>,
    /// Set when the job was in flight when bb2tc stopped.
    #[serde(default)]
    pub interrupted: bool,
    /// TeamCity's queued build id.
    pub build_id: Option<u64>,
    /// TeamCity's link to the build.
    pub web_url: Option<String>,
    /// Something to know about a job that succeeded (e.g. TeamCity used another branch).
    pub warning: Option<String>,
    /// When it finished (done or dead), ms.
    pub finished_at: Option<u64>,
    /// The pull request it builds, when a pull-request event made it (the comment names it).
    pub pull_request: Option<u64>,
    /// Its route's `cancel_superseded`: a newer commit on the branch cancels this job's build
    /// while TeamCity still holds it queued.
    pub cancel_superseded: bool,
    /// Older builds of its branch this job cancels (filled as it is enqueued).
    pub supersedes: Vec<Superseded>,
    /// Build, or only cancel.
    pub purpose: Purpose,
    /// The queued build as it is followed (build jobs TeamCity gave an id).
    pub build: Option<BuildProgress>,
    /// Its route's `report_status`.
    pub report_status: crate::config::ReportStatus,
    /// A status job's status.
    pub status: Option<status::StatusReport>,
}

/// `parts` joined by NUL bytes (the applier computes a key per job: no formatter).
fn joined(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            out.push(0);
        }
        out.extend_from_slice(part);
    }
    out
}

impl Job {
    /// The coalescing key: one waiting job per (server, build type, branch), or per
    /// (server, repository) for commit-hook jobs, which check every branch anyway.
    pub fn coalescing_key(&self) -> Vec<u8> {
        if self.purpose == Purpose::ReportStatus {
            // One status waiting per (source, repository, commit, build type): a newer one
            // replaces it.
            return joined(&[
                self.source.as_str().as_bytes(),
                b"status",
                self.repository.to_ascii_lowercase().as_bytes(),
                self.sha.as_str().as_bytes(),
                self.build_type
                    .as_ref()
                    .map_or("", |b| b.as_str())
                    .as_bytes(),
            ]);
        }
        match (&self.mode, &self.build_type) {
            (TriggerMode::Build, Some(build_type)) => joined(&[
                self.server.as_str().as_bytes(),
                b"build",
                build_type.as_str().as_bytes(),
                self.branch.as_bytes(),
            ]),
            _ => joined(&[
                self.server.as_str().as_bytes(),
                b"hook",
                self.repository.to_ascii_lowercase().as_bytes(),
            ]),
        }
    }

    /// The de-duplication mark of the build this job asks for: one build per (server, build
    /// type, branch, commit) whichever event asks first — a push or a pull request (SPEC
    /// §5.4). The commit is its first 12 digits, which Cloud's pull requests carry too.
    /// Commit-hook jobs are per (server, repository, ref, commit).
    pub fn dedup_key(&self) -> Vec<u8> {
        match (&self.purpose, &self.mode, &self.build_type) {
            (Purpose::ReportStatus, _, _) => {
                let mut key = b"report\0".to_vec();
                key.extend(self.coalescing_key());
                return key;
            }
            (Purpose::CancelQueued, _, build_type) => format!(
                "end\0{}\0{}\0{}\0{}",
                self.server,
                build_type.as_ref().map_or("", |b| b.as_str()),
                self.branch,
                self.sha.prefix12()
            ),
            (Purpose::Build, TriggerMode::Build, Some(build_type)) => format!(
                "build\0{}\0{}\0{}\0{}",
                self.server,
                build_type,
                self.branch,
                self.sha.prefix12()
            ),
            _ => format!(
                "hook\0{}\0{}\0{}\0{}",
                self.server,
                self.repository.to_ascii_lowercase(),
                self.full_ref,
                self.sha.prefix12()
            ),
        }
        .into_bytes()
    }

    /// The job as the admin API shows it: times in RFC 3339.
    pub fn to_api(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for key in ["created_at", "next_attempt_at", "finished_at"] {
                if let Some(ms) = map.get(key).and_then(|v| v.as_u64()) {
                    map.insert(key.into(), clock::rfc3339(ms).into());
                }
            }
            if let Some(build) = map.get_mut("build").and_then(|b| b.as_object_mut())
                && let Some(ms) = build.get("next_poll_at").and_then(|v| v.as_u64())
            {
                build.insert("next_poll_at".into(), clock::rfc3339(ms).into());
            }
            map.insert("id".into(), self.id.to_string().into());
        }
        value
    }
}

/// How a TeamCity call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// TeamCity accepted the call.
    Done {
        /// Queued build id.
        build_id: Option<u64>,
        /// Link to the build.
        web_url: Option<String>,
        /// E.g. TeamCity used a different branch.
        warning: Option<String>,
    },
    /// Try again after `delay`.
    Retry {
        /// Wait before the next attempt.
        delay: std::time::Duration,
        /// What went wrong.
        error: String,
        /// The call may have reached TeamCity (it answered 2xx but the answer could not be
        /// read): the next attempt asks TeamCity for the build first, as after a crash.
        check_first: bool,
    },
    /// Give up.
    Dead {
        /// What went wrong.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored `latest_jobs` entries are keyed by these bytes: they never change.
    #[test]
    fn coalescing_keys_are_the_bytes_stores_hold() {
        let mut job = crate::store::test_support::job("feature/x", 'a');
        job.repository = "PROJ/Repo".into();
        assert_eq!(job.coalescing_key(), b"main\0build\0Bt\0feature/x".to_vec());
        job.mode = TriggerMode::CheckForChanges;
        assert_eq!(job.coalescing_key(), b"main\0hook\0proj/repo".to_vec());
        job.purpose = Purpose::ReportStatus;
        let status = format!("dc\0status\0proj/repo\0{}\0Bt", "a".repeat(40));
        assert_eq!(job.coalescing_key(), status.into_bytes());
    }
}
