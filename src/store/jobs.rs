//! Jobs (pending TeamCity calls) and delivery records.
//!
//! A job is written in the same sled transaction as its delivery record and the
//! change-de-duplication marks, and made durable by [`Store::commit`] before the webhook is
//! answered. Its lifecycle: `pending` → `inflight` → `done`, or back to `pending` with a later
//! `next_attempt_at` (retry), or `dead` with the last error.
//!
//! Coalescing (SPEC §5.3): `pending_index` maps a coalescing key — (server, build type,
//! branch), or (server, repository) for commit-hook jobs — to the one job still waiting for
//! it. A newer push replaces that job; a job leaves the index when it is claimed for sending.

use super::{DEDUP_WINDOW_MS, Store, StoreError, decode, encode};
use crate::clock;
use crate::config::TriggerMode;
use crate::ids::{BuildTypeId, ServerId, Sha, SourceId};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::collections::{BTreeMap, HashMap};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

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
}

impl Job {
    /// The coalescing key: one waiting job per (server, build type, branch), or per
    /// (server, repository) for commit-hook jobs, which check every branch anyway.
    pub fn coalescing_key(&self) -> Vec<u8> {
        match (&self.mode, &self.build_type) {
            (TriggerMode::Build, Some(build_type)) => {
                format!("{}\0build\0{}\0{}", self.server, build_type, self.branch)
            }
            _ => format!(
                "{}\0hook\0{}",
                self.server,
                self.repository.to_ascii_lowercase()
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
            map.insert("id".into(), self.id.to_string().into());
        }
        value
    }
}

/// A change that was not turned into a job, and why (shown in the 202 and the delivery log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The ref, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Why, e.g. `no token for jdoe on main`.
    pub reason: String,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Bitbucket's request id, or a generated one.
    pub id: String,
    /// Source id.
    pub source: SourceId,
    /// `X-Event-Key`.
    pub event: String,
    /// accepted, ignored, duplicate or rejected.
    pub result: String,
    /// Jobs made.
    pub jobs: usize,
    /// Changes not turned into jobs.
    pub skipped: Vec<Skipped>,
    /// When it arrived (ms).
    pub received_at: u64,
}

/// The jobs one ref change asks for, with its de-duplication mark.
#[derive(Debug, Clone)]
pub struct ChangeJobs {
    /// The ref, for `skipped`.
    pub reference: String,
    /// `source \0 repository \0 ref \0 sha`.
    pub seen_key: Vec<u8>,
    /// Jobs to create (their `id` is assigned here).
    pub jobs: Vec<Job>,
}

/// Result of recording a push.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// This delivery id was already recorded within the de-duplication window.
    Duplicate,
    /// Recorded (not yet durable: call [`Store::commit`]).
    Recorded {
        /// The jobs created, with ids.
        jobs: Vec<Job>,
        /// Pending jobs replaced by newer ones: (server, old job id).
        coalesced: Vec<(ServerId, u64)>,
        /// The delivery record as stored (with changes skipped as already seen).
        delivery: DeliveryRecord,
    },
}

/// How many jobs of one server are in one state, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStat {
    /// Number of jobs.
    pub count: usize,
    /// Creation time (ms) of the oldest.
    pub oldest_created_at: u64,
}

/// How a TeamCity call ended, for [`Store::finish_job`].
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
    },
    /// Give up.
    Dead {
        /// What went wrong.
        error: String,
    },
}

fn job_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn read_job(tree: &TransactionalTree, id: u64) -> TxResult<Option<Job>> {
    match tree.get(job_key(id))? {
        Some(bytes) => decode(&bytes).map(Some).map_err(abort),
        None => Ok(None),
    }
}

fn write_job(tree: &TransactionalTree, job: &Job) -> TxResult<()> {
    tree.insert(&job_key(job.id), encode(job).map_err(abort)?)?;
    Ok(())
}

/// Takes `id` out of the coalescing index if it is the job waiting for `key`.
fn unindex(index: &TransactionalTree, key: &[u8], id: u64) -> TxResult<()> {
    if index.get(key)?.as_deref() == Some(&job_key(id)[..]) {
        index.remove(key)?;
    }
    Ok(())
}

fn fresh(stamp: Option<sled::IVec>, now: u64) -> bool {
    stamp
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .is_some_and(|b| now.saturating_sub(u64::from_be_bytes(b)) < DEDUP_WINDOW_MS)
}

impl Store {
    /// Records a delivery and its jobs in one transaction: skips it when its id was seen
    /// (when `dedup_id`), skips changes already seen, and coalesces pending jobs.
    pub fn record_push(
        &self,
        delivery: &DeliveryRecord,
        dedup_id: bool,
        changes: &[ChangeJobs],
    ) -> Result<RecordOutcome, StoreError> {
        let now = delivery.received_at;
        let outcome = (
            &self.deliveries,
            &self.seen_changes,
            &self.jobs,
            &self.pending_index,
        )
            .transaction(|(deliveries, seen, jobs, index)| {
                if dedup_id
                    && let Some(old) = deliveries.get(delivery.id.as_bytes())?
                    && decode::<DeliveryRecord>(&old)
                        .is_ok_and(|d| now.saturating_sub(d.received_at) < DEDUP_WINDOW_MS)
                {
                    return Ok(RecordOutcome::Duplicate);
                }
                let mut record = delivery.clone();
                let mut created = Vec::new();
                let mut coalesced = Vec::new();
                for change in changes {
                    if fresh(seen.get(change.seen_key.as_slice())?, now) {
                        record.skipped.push(Skipped {
                            reference: change.reference.clone(),
                            reason: "already seen: same ref and commit within 24 h".into(),
                        });
                        continue;
                    }
                    seen.insert(change.seen_key.as_slice(), &now.to_be_bytes())?;
                    for template in &change.jobs {
                        let mut job = template.clone();
                        job.id = jobs.generate_id()?;
                        let key = job.coalescing_key();
                        if let Some(old_id) = index.get(key.as_slice())? {
                            let old_id = u64::from_be_bytes(
                                <[u8; 8]>::try_from(old_id.as_ref()).unwrap_or_default(),
                            );
                            if let Some(old) = read_job(jobs, old_id)?
                                && old.state == JobState::Pending
                            {
                                jobs.remove(&job_key(old_id))?;
                                coalesced.push((old.server, old_id));
                            }
                        }
                        index.insert(key.as_slice(), &job_key(job.id))?;
                        write_job(jobs, &job)?;
                        created.push(job);
                    }
                }
                record.jobs = created.len();
                deliveries.insert(delivery.id.as_bytes(), encode(&record).map_err(abort)?)?;
                Ok(RecordOutcome::Recorded {
                    jobs: created,
                    coalesced,
                    delivery: record,
                })
            })?;
        Ok(outcome)
    }

    /// Records a delivery that made no jobs (ignored, rejected, duplicate), for the admin
    /// API. Not made durable on its own: it is bookkeeping, not a promise.
    pub fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError> {
        let key = format!("{}#{}", delivery.id, delivery.result);
        self.deliveries.insert(key.as_bytes(), encode(delivery)?)?;
        Ok(())
    }

    /// Marks a pending job in flight and takes it out of the coalescing index; `None` when
    /// it is gone (coalesced, removed) or not pending.
    pub fn claim_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let claimed = (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
            let Some(mut job) = read_job(jobs, id)? else {
                return Ok(None);
            };
            if job.state != JobState::Pending {
                return Ok(None);
            }
            unindex(index, &job.coalescing_key(), id)?;
            job.state = JobState::Inflight;
            job.attempts += 1;
            write_job(jobs, &job)?;
            Ok(Some(job))
        })?;
        Ok(claimed)
    }

    /// Puts a claimed job back, unsent (on shutdown, before its call was made).
    pub fn release_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let released = (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
            let Some(mut job) = read_job(jobs, id)? else {
                return Ok(None);
            };
            if job.state != JobState::Inflight {
                return Ok(None);
            }
            let key = job.coalescing_key();
            if index.get(key.as_slice())?.is_some() {
                // A newer push for the same branch is waiting: it replaces this one.
                jobs.remove(&job_key(id))?;
                return Ok(None);
            }
            index.insert(key.as_slice(), &job_key(id))?;
            job.state = JobState::Pending;
            job.attempts = job.attempts.saturating_sub(1);
            write_job(jobs, &job)?;
            Ok(Some(job))
        })?;
        Ok(released)
    }

    /// Stores how a call ended. A job to retry goes back to pending — unless a newer push
    /// for the same key is already waiting, which then replaces it (returns `None`).
    pub fn finish_job(&self, id: u64, finish: Finish) -> Result<Option<Job>, StoreError> {
        let now = clock::now_ms();
        let updated = (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
            let Some(mut job) = read_job(jobs, id)? else {
                return Ok(None);
            };
            job.interrupted = false;
            match &finish {
                Finish::Done {
                    build_id,
                    web_url,
                    warning,
                } => {
                    job.state = JobState::Done;
                    job.build_id = *build_id;
                    job.web_url = web_url.clone();
                    job.warning = warning.clone();
                    job.finished_at = Some(now);
                }
                Finish::Dead { error } => {
                    job.state = JobState::Dead;
                    job.last_error = Some(error.clone());
                    job.finished_at = Some(now);
                }
                Finish::Retry { delay, error } => {
                    let key = job.coalescing_key();
                    if index.get(key.as_slice())?.is_some() {
                        jobs.remove(&job_key(id))?;
                        return Ok(None);
                    }
                    index.insert(key.as_slice(), &job_key(id))?;
                    job.state = JobState::Pending;
                    job.next_attempt_at =
                        now + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    job.last_error = Some(error.clone());
                }
            }
            write_job(jobs, &job)?;
            Ok(Some(job))
        })?;
        Ok(updated)
    }

    /// On start: jobs left in flight by a stopped process become pending again (flagged
    /// `interrupted`). Returns every pending job.
    pub fn resume_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut pending = Vec::new();
        for item in self.jobs.iter() {
            let (_, bytes) = item?;
            let job: Job = decode(&bytes)?;
            match job.state {
                JobState::Pending => pending.push(job),
                JobState::Inflight => {
                    let resumed =
                        (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
                            let Some(mut job) = read_job(jobs, job.id)? else {
                                return Ok(None);
                            };
                            job.state = JobState::Pending;
                            job.interrupted = true;
                            let key = job.coalescing_key();
                            if index.get(key.as_slice())?.is_none() {
                                index.insert(key.as_slice(), &job_key(job.id))?;
                            }
                            write_job(jobs, &job)?;
                            Ok(Some(job))
                        })?;
                    pending.extend(resumed);
                }
                JobState::Dead | JobState::Done => {}
            }
        }
        Ok(pending)
    }

    /// Makes a dead job pending again, due now, with a fresh attempt count. `Ok(None)` when
    /// there is no such job; `Err(state)` when it is not dead. A newer pending job for the
    /// same branch takes precedence: the revived job then replaces nothing and is dropped
    /// only if it was coalesced away later, like any other.
    pub fn revive_job(&self, id: u64) -> Result<Option<Result<Job, JobState>>, StoreError> {
        let now = clock::now_ms();
        let revived = (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
            let Some(mut job) = read_job(jobs, id)? else {
                return Ok(None);
            };
            if job.state != JobState::Dead {
                return Ok(Some(Err(job.state)));
            }
            job.state = JobState::Pending;
            job.attempts = 0;
            job.next_attempt_at = now;
            job.finished_at = None;
            let key = job.coalescing_key();
            if index.get(key.as_slice())?.is_none() {
                index.insert(key.as_slice(), &job_key(id))?;
            }
            write_job(jobs, &job)?;
            Ok(Some(Ok(job)))
        })?;
        Ok(revived)
    }

    /// Deletes a job in any state; `false` when there was none.
    pub fn remove_job(&self, id: u64) -> Result<bool, StoreError> {
        let removed = (&self.jobs, &self.pending_index).transaction(|(jobs, index)| {
            let Some(job) = read_job(jobs, id)? else {
                return Ok(false);
            };
            unindex(index, &job.coalescing_key(), id)?;
            jobs.remove(&job_key(id))?;
            Ok(true)
        })?;
        Ok(removed)
    }

    /// Jobs per (server, state), with the oldest creation time of each group.
    pub fn queue_stats(&self) -> Result<HashMap<(ServerId, JobState), QueueStat>, StoreError> {
        let mut stats: HashMap<(ServerId, JobState), QueueStat> = HashMap::new();
        for item in self.jobs.iter() {
            let (_, bytes) = item?;
            let job: Job = decode(&bytes)?;
            let stat = stats.entry((job.server, job.state)).or_insert(QueueStat {
                count: 0,
                oldest_created_at: u64::MAX,
            });
            stat.count += 1;
            stat.oldest_created_at = stat.oldest_created_at.min(job.created_at);
        }
        Ok(stats)
    }

    /// Whether a job is still stored (cheaper than reading it).
    pub fn job_exists(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.jobs.contains_key(job_key(id))?)
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.jobs.get(job_key(id))?.map(|b| decode(&b)).transpose()
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for item in self.jobs.iter().rev() {
            let (_, bytes) = item?;
            let job: Job = decode(&bytes)?;
            if state.is_none_or(|s| s == job.state) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Recent deliveries, newest first.
    pub fn list_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.deliveries.iter() {
            let (_, bytes) = item?;
            out.push(decode::<DeliveryRecord>(&bytes)?);
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.received_at));
        out.truncate(limit);
        Ok(out)
    }

    /// Drops de-duplication marks, delivery records and done jobs older than the window.
    pub fn prune(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.seen_changes.iter() {
            let (key, stamp) = item?;
            if !fresh(Some(stamp), now) {
                self.seen_changes.remove(key)?;
                removed += 1;
            }
        }
        for item in self.deliveries.iter() {
            let (key, bytes) = item?;
            let old = decode::<DeliveryRecord>(&bytes)
                .map(|d| now.saturating_sub(d.received_at) >= DEDUP_WINDOW_MS)
                .unwrap_or(true);
            if old {
                self.deliveries.remove(key)?;
                removed += 1;
            }
        }
        for item in self.jobs.iter() {
            let (key, bytes) = item?;
            let job: Job = decode(&bytes)?;
            if job.state == JobState::Done
                && now.saturating_sub(job.finished_at.unwrap_or(0)) >= DEDUP_WINDOW_MS
            {
                self.jobs.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{job, temp_store};

    fn delivery(id: &str) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            source: SourceId::new("dc"),
            event: "repo:refs_changed".into(),
            result: "accepted".into(),
            jobs: 0,
            skipped: vec![],
            received_at: clock::now_ms(),
        }
    }

    fn change(branch: &str, sha: char) -> ChangeJobs {
        ChangeJobs {
            reference: format!("refs/heads/{branch}"),
            seen_key: format!("dc\0p/r\0{branch}\0{sha}").into_bytes(),
            jobs: vec![job(branch, sha)],
        }
    }

    fn recorded(outcome: RecordOutcome) -> (Vec<Job>, Vec<(ServerId, u64)>, DeliveryRecord) {
        match outcome {
            RecordOutcome::Recorded {
                jobs,
                coalesced,
                delivery,
            } => (jobs, coalesced, delivery),
            RecordOutcome::Duplicate => panic!("unexpected duplicate"),
        }
    }

    #[test]
    fn duplicate_delivery_and_change_are_skipped() {
        let (_dir, store) = temp_store();
        let (jobs, _, record) = recorded(
            store
                .record_push(&delivery("a"), true, &[change("main", 'a')])
                .unwrap(),
        );
        assert_eq!((jobs.len(), record.jobs), (1, 1));
        assert_eq!(
            store
                .record_push(&delivery("a"), true, &[change("main", 'a')])
                .unwrap(),
            RecordOutcome::Duplicate
        );
        let (jobs, _, record) = recorded(
            store
                .record_push(&delivery("b"), true, &[change("main", 'a')])
                .unwrap(),
        );
        assert!(jobs.is_empty());
        assert_eq!(record.skipped[0].reference, "refs/heads/main");
        assert_eq!(store.list_jobs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn newer_push_replaces_pending_job_but_not_inflight() {
        let (_dir, store) = temp_store();
        let (first, ..) = recorded(
            store
                .record_push(&delivery("1"), true, &[change("main", 'a')])
                .unwrap(),
        );
        let (second, coalesced, _) = recorded(
            store
                .record_push(&delivery("2"), true, &[change("main", 'b')])
                .unwrap(),
        );
        assert_eq!(coalesced, vec![(ServerId::new("main"), first[0].id)]);
        assert!(store.job(first[0].id).unwrap().is_none());
        assert!(store.claim_job(first[0].id).unwrap().is_none());

        let claimed = store.claim_job(second[0].id).unwrap().unwrap();
        assert_eq!((claimed.state, claimed.attempts), (JobState::Inflight, 1));
        let (third, coalesced, _) = recorded(
            store
                .record_push(&delivery("3"), true, &[change("main", 'c')])
                .unwrap(),
        );
        assert!(coalesced.is_empty(), "an in-flight job is not replaced");
        // The in-flight job fails and would retry, but a newer one waits: it is dropped.
        let retry = Finish::Retry {
            delay: std::time::Duration::ZERO,
            error: "503".into(),
        };
        assert!(store.finish_job(second[0].id, retry).unwrap().is_none());
        assert_eq!(
            store.list_jobs(Some(JobState::Pending), 10).unwrap()[0].id,
            third[0].id
        );
    }

    #[test]
    fn retry_done_dead_and_resume() {
        let (_dir, store) = temp_store();
        let (jobs, ..) = recorded(
            store
                .record_push(
                    &delivery("1"),
                    true,
                    &[change("a", 'a'), change("b", 'b'), change("c", 'c')],
                )
                .unwrap(),
        );
        for job in &jobs {
            store.claim_job(job.id).unwrap().unwrap();
        }
        let retried = store
            .finish_job(
                jobs[0].id,
                Finish::Retry {
                    delay: std::time::Duration::from_secs(42),
                    error: "timeout".into(),
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(retried.state, JobState::Pending);
        assert!(retried.next_attempt_at >= clock::now_ms() + 41_000);
        let done = Finish::Done {
            build_id: Some(7),
            web_url: None,
            warning: None,
        };
        assert_eq!(
            store.finish_job(jobs[1].id, done).unwrap().unwrap().state,
            JobState::Done
        );
        // jobs[2] stays in flight, as if the process died during the call.
        let resumed = store.resume_jobs().unwrap();
        let ids: Vec<u64> = resumed.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![jobs[0].id, jobs[2].id]);
        assert!(resumed[1].interrupted && !resumed[0].interrupted);
        let dead = Finish::Dead {
            error: "400 bad".into(),
        };
        store.claim_job(jobs[0].id).unwrap().unwrap();
        let dead = store.finish_job(jobs[0].id, dead).unwrap().unwrap();
        assert_eq!(dead.last_error.as_deref(), Some("400 bad"));
        assert_eq!(store.list_jobs(Some(JobState::Dead), 10).unwrap().len(), 1);
    }
}
