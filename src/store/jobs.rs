//! Deliveries and what they made: the types recording a push passes through the store.

use crate::ids::{ServerId, SourceId};
use crate::job::{Job, JobState};
use crate::store::DEDUP_WINDOW_MS;
use serde::{Deserialize, Serialize};

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
    /// Whose push or pull request it was: the actor's first user key (for the token page,
    /// which lists a user's deliveries that built nothing, and why).
    pub user: Option<String>,
    /// The repository it was about.
    pub repository: Option<String>,
}

/// The jobs one ref change asks for. Each job's build is de-duplicated by its own mark
/// ([`Job::dedup_key`]), so a push and a pull request of one commit make one build.
#[derive(Debug, Clone)]
pub struct ChangeJobs {
    /// The ref, for `skipped`.
    pub reference: String,
    /// The change's mark as bb2tc up to 551746f wrote it, `source \0 repository \0 ref \0
    /// sha`: looked at (such marks live 24 h after an upgrade), never written.
    pub legacy_mark: Option<Vec<u8>>,
    /// Jobs to create (their `id` is assigned here).
    pub jobs: Vec<Job>,
    /// Whether builds asked for before are left out (and these marked). A build run again
    /// from the token page is not: it was asked for again on purpose.
    pub deduplicate: bool,
}

/// Result of recording a push.
// A return value, one at a time: the size of the `Recorded` arm costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// This delivery id was already recorded within the de-duplication window.
    Duplicate,
    /// Recorded.
    Recorded {
        /// The jobs created, with ids.
        jobs: Vec<Job>,
        /// The delivery record as stored (with changes skipped as already seen).
        delivery: DeliveryRecord,
    },
}

/// Jobs that reached the queue's store, for the workers (see [`Store::take_applied`]).
///
/// [`Store::take_applied`]: crate::store::Store::take_applied
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The jobs, as enqueued (a job coalesced by a later one in the same batch is among
    /// them; the worker finds it gone).
    pub jobs: Vec<Job>,
    /// Pending jobs replaced by newer ones: (server, old job id).
    pub coalesced: Vec<(ServerId, u64)>,
}

/// Why a job could not be changed as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// There is no such job (removed, replaced, or unreadable and set aside).
    Gone,
    /// It is in another state than the change needs.
    InState(JobState),
    /// It is pending but not due before `at` (ms): a claim came early (PostgreSQL, where
    /// several instances may have scheduled it).
    NotDue {
        /// When it is due.
        at: u64,
    },
}

/// The jobs a delivery's `changes` make, in order, each given an id by `next_id`: a build
/// of a de-duplicated change that `is_new` (given the change's index and the job's in it)
/// says was asked for already is left out, and noted in `record.skipped`. `record.jobs` counts the builds made (status reports are jobs too,
/// but not builds).
pub(crate) fn new_jobs<E>(
    record: &mut DeliveryRecord,
    changes: &[ChangeJobs],
    mut is_new: impl FnMut((usize, usize), &Job) -> Result<bool, E>,
    mut next_id: impl FnMut() -> Result<u64, E>,
) -> Result<Vec<Job>, E> {
    let mut jobs = Vec::new();
    for (c, change) in changes.iter().enumerate() {
        let mut seen = Vec::new();
        let mut made = 0;
        for (j, job) in change.jobs.iter().enumerate() {
            if change.deduplicate && !is_new((c, j), job)? {
                seen.push(job.clone());
                continue;
            }
            let mut job = job.clone();
            job.id = next_id()?;
            jobs.push(job);
            made += 1;
        }
        record
            .skipped
            .extend(already_seen(&change.reference, &seen, made == 0));
    }
    record.jobs = jobs
        .iter()
        .filter(|j| j.purpose != crate::job::Purpose::ReportStatus)
        .count();
    Ok(jobs)
}

/// What the answer says of a change's jobs whose build was already asked for (by a push or
/// a pull request, SPEC §5.4): one line for the change when none was left, else one per job.
pub(crate) fn already_seen(reference: &str, seen: &[Job], none_left: bool) -> Vec<Skipped> {
    let hours = DEDUP_WINDOW_MS / 3_600_000;
    let skip = |reason: String| Skipped {
        reference: reference.to_owned(),
        reason,
    };
    match seen {
        [] => Vec::new(),
        [first, ..] if none_left => vec![skip(format!(
            "already seen: same ref and commit within {hours} h (a push or pull request of {} asked for {} build{} already)",
            first.sha.short(),
            seen.len(),
            if seen.len() == 1 { "" } else { "s" }
        ))],
        _ => seen
            .iter()
            .map(|job| {
                skip(format!(
                    "already seen: {} on {} for {} within {hours} h",
                    job.build_type
                        .as_ref()
                        .map_or("commit hook", |b| b.as_str()),
                    job.server,
                    job.sha.short()
                ))
            })
            .collect(),
    }
}
