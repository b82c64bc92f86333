//! The job and delivery records of version 1 (store formats 1 and 2, up to commit 551746f),
//! read from old records and old intake-log frames and turned into the current [`Job`] and
//! [`DeliveryRecord`].
//!
//! postcard is positional, so this copy must keep the fields exactly as they were.

use crate::config::TriggerMode;
use crate::ids::{BuildTypeId, ServerId, Sha, SourceId};
use crate::job::{Job, JobState, Purpose, TokenRef};
use crate::store::{DeliveryRecord, Skipped};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// [`Job`] as record version 1 laid it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct JobV1 {
    id: u64,
    state: JobState,
    source: SourceId,
    delivery: String,
    server: ServerId,
    mode: TriggerMode,
    build_type: Option<BuildTypeId>,
    repository: String,
    full_ref: String,
    branch: String,
    sha: Sha,
    user: String,
    token: TokenRef,
    properties: BTreeMap<String, String>,
    vcs_root_id: Option<String>,
    clone_urls: Vec<String>,
    attempts: u32,
    created_at: u64,
    next_attempt_at: u64,
    last_error: Option<String>,
    interrupted: bool,
    build_id: Option<u64>,
    web_url: Option<String>,
    warning: Option<String>,
    finished_at: Option<u64>,
}

impl From<JobV1> for Job {
    /// A version-1 job was made by a push, on a route without `cancel_superseded`; its
    /// build (if done) was not followed, and is not followed now.
    fn from(old: JobV1) -> Self {
        Job {
            id: old.id,
            state: old.state,
            source: old.source,
            delivery: old.delivery,
            server: old.server,
            mode: old.mode,
            build_type: old.build_type,
            repository: old.repository,
            full_ref: old.full_ref,
            branch: old.branch,
            sha: old.sha,
            user: old.user,
            token: old.token,
            properties: old.properties,
            vcs_root_id: old.vcs_root_id,
            clone_urls: old.clone_urls,
            attempts: old.attempts,
            created_at: old.created_at,
            next_attempt_at: old.next_attempt_at,
            last_error: old.last_error,
            interrupted: old.interrupted,
            build_id: old.build_id,
            web_url: old.web_url,
            warning: old.warning,
            finished_at: old.finished_at,
            pull_request: None,
            cancel_superseded: false,
            supersedes: Vec::new(),
            purpose: Purpose::Build,
            build: None,
            report_status: crate::config::ReportStatus::Off,
            status: None,
        }
    }
}

#[cfg(test)]
impl From<Job> for JobV1 {
    /// What bb2tc up to 551746f would have written for `job` (its new fields dropped).
    fn from(job: Job) -> Self {
        JobV1 {
            id: job.id,
            state: job.state,
            source: job.source,
            delivery: job.delivery,
            server: job.server,
            mode: job.mode,
            build_type: job.build_type,
            repository: job.repository,
            full_ref: job.full_ref,
            branch: job.branch,
            sha: job.sha,
            user: job.user,
            token: job.token,
            properties: job.properties,
            vcs_root_id: job.vcs_root_id,
            clone_urls: job.clone_urls,
            attempts: job.attempts,
            created_at: job.created_at,
            next_attempt_at: job.next_attempt_at,
            last_error: job.last_error,
            interrupted: job.interrupted,
            build_id: job.build_id,
            web_url: job.web_url,
            warning: job.warning,
            finished_at: job.finished_at,
        }
    }
}

/// [`DeliveryRecord`] as record version 1 laid it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct DeliveryRecordV1 {
    id: String,
    source: SourceId,
    event: String,
    result: String,
    jobs: usize,
    skipped: Vec<Skipped>,
    received_at: u64,
}

impl From<DeliveryRecordV1> for DeliveryRecord {
    /// Version 1 kept no user nor repository.
    fn from(old: DeliveryRecordV1) -> Self {
        DeliveryRecord {
            id: old.id,
            source: old.source,
            event: old.event,
            result: old.result,
            jobs: old.jobs,
            skipped: old.skipped,
            received_at: old.received_at,
            user: None,
            repository: None,
        }
    }
}

#[cfg(test)]
impl From<DeliveryRecord> for DeliveryRecordV1 {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryRecordV1 {
            id: d.id,
            source: d.source,
            event: d.event,
            result: d.result,
            jobs: d.jobs,
            skipped: d.skipped,
            received_at: d.received_at,
        }
    }
}
