//! The intake log: accepted deliveries are made durable in an append-only log of their own,
//! and reach sled's trees a moment later, in batches (issue "ingest at the speed of an
//! fsync'd log", SPEC §7, §11).
//!
//! sled's transactions and its flush path (a `sync_file_range` per sealed buffer, its io
//! threads) cost about half a millisecond of CPU per delivery when every 202 waits for them.
//! Here a delivery costs: a look at the de-duplication marks (those not yet in sled are in
//! memory, in [`Pending`]; the rest are read from sled), one framed entry, and its share of
//! one `write` + `fdatasync` per group of concurrent deliveries (`writer`). The 202 is sent
//! then. The writer hands each durable delivery, in order, to the applier thread
//! (`applier`), which writes batches of them into sled in one transaction each (at most
//! one every 2 ms while deliveries queue up) — jobs coalesced there as before, the last
//! applied sequence number in the same transaction — and announces the new jobs to the
//! workers. The applier gives way to the request path (a lower thread priority); the writer
//! waits for it when it is more than `backlog::LIMIT` jobs behind (`backlog`).
//!
//! The worker's in-flight mark goes into the same log ([`Entry::Claim`]): the claim is
//! written to sled first, and the call waits only for the log's fsync.
//!
//! **Checkpoints.** A segment is closed at `storage.intake_segment_bytes` (8 MiB by default).
//! Once sled holds every delivery in a closed segment, a thread of its own syncs sled (flush
//! + fsync) and the window, and deletes the segment (`checkpoint`).
//!
//! **Start-up** (`replay`): every delivery after the last applied sequence number is applied
//! again (a torn last entry — a crash mid-write, never acknowledged — is dropped), claims
//! are replayed onto jobs still pending at the attempt before, sled is synced and the
//! segments deleted. So a crash at any point loses no acknowledged delivery, and applies
//! none twice.
//!
//! **Ordering that the guarantees rest on.** Sequence numbers are given, and entries queued
//! for the writer, under one lock, so the log's order is the order of the de-duplication
//! decisions. A delivery that skipped a change because an earlier, not yet durable delivery
//! had it, is written after that one: it cannot be durable unless the earlier one is. When
//! a group fails, the writer removes its reservations and fails everything queued behind
//! it under the same lock, so no later delivery relies on one that was refused.

mod applier;
mod backlog;
mod checkpoint;
mod replay;
pub mod segment;
mod writer;

use super::Trees;
use crate::job::Job;
use crate::store::StoreError;
use crate::store::jobs::{Applied, ChangeJobs, DeliveryRecord, RecordOutcome, new_jobs};
use segment::{Accepted, Entry};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

/// Deliveries and change marks written to the log but not yet applied to sled.
#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    /// The sequence number of the last delivery queued (for [`Intake::catch_up`]).
    last_delivery: u64,
    /// Deliveries queued and not yet applied or refused.
    unapplied: usize,
    /// Delivery id → when it becomes durable (a duplicate waits for it).
    deliveries: HashMap<String, Durable>,
    /// Change marks (`source \0 repository \0 ref \0 sha`).
    marks: HashSet<Vec<u8>>,
}

impl Pending {
    /// Forgets what a delivery reserved (applied to sled, or refused).
    fn release(&mut self, accepted: &Accepted) {
        self.unapplied = self.unapplied.saturating_sub(1);
        if accepted.dedup_id {
            self.deliveries.remove(&accepted.delivery.id);
        }
        for mark in &accepted.marks {
            self.marks.remove(mark);
        }
    }
}

type Shared = Arc<Mutex<Pending>>;

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A closed segment, until a checkpoint deletes it.
#[derive(Debug)]
pub struct Closed {
    /// Its file.
    pub path: PathBuf,
    /// The last delivery in it (0: none): sled must hold it before the file can go.
    pub last_delivery: u64,
}

/// Sets the outcome of one entry.
pub struct Settle(watch::Sender<Option<Result<(), String>>>);

impl Settle {
    fn new() -> (Self, Durable) {
        let (tx, rx) = watch::channel(None);
        (Self(tx), Durable(rx))
    }

    /// The entry is durable (`Ok`) or was refused.
    pub fn set(self, result: Result<(), String>) {
        let _ = self.0.send(Some(result));
    }
}

/// Tells when an entry is durable.
#[derive(Debug, Clone)]
pub struct Durable(watch::Receiver<Option<Result<(), String>>>);

impl Durable {
    /// Already durable.
    fn ready() -> Self {
        Self(watch::channel(Some(Ok(()))).1)
    }

    /// Test-only: whether the outcome is known.
    #[cfg(test)]
    pub fn is_settled(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Waits until the entry is on disk, or fails with why it never will be.
    pub async fn wait(mut self) -> Result<(), StoreError> {
        let outcome = match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        outcome
            .unwrap_or_else(|| Err("the intake log stopped".into()))
            .map_err(StoreError::Durability)
    }
}

/// The intake log of one store: its writer and applier threads.
#[derive(Debug)]
pub struct Intake {
    pending: Shared,
    #[cfg(test)]
    backlog: Arc<backlog::Backlog>,
    // Dropped before the applier: what it still writes reaches the applier, which then
    // drains its queue into sled and stops.
    writer: writer::Writer,
    applier: applier::Applier,
}

impl Intake {
    /// Replays the store's log into sled, then starts the writer and the applier.
    pub fn start(
        trees: Arc<Trees>,
        segment_bytes: u64,
        events: mpsc::UnboundedSender<Applied>,
    ) -> Result<Self, StoreError> {
        let replayed = replay::replay(&trees)?;
        trees
            .next_job_id
            .store(replayed.next_job_id, std::sync::atomic::Ordering::SeqCst);
        if !replayed.jobs.is_empty() {
            let _ = events.send(Applied {
                jobs: replayed.jobs,
                coalesced: Vec::new(),
            });
        }
        let pending: Shared = Arc::new(Mutex::new(Pending {
            next_seq: replayed.next_seq,
            ..Pending::default()
        }));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let backlog = Arc::new(backlog::Backlog::default());
        let (to_applier, applier_queue) = mpsc::unbounded_channel();
        let dir = trees.path().to_owned();
        let identity = trees.identity;
        let applier = applier::Applier::start(
            trees,
            applier_queue,
            pending.clone(),
            closed.clone(),
            backlog.clone(),
            events,
        )
        .map_err(|e| super::io_error(&dir, e))?;
        let writer = writer::Writer::start(
            &dir,
            identity,
            replayed.next_seq,
            segment_bytes,
            writer::ToApplier {
                queue: to_applier,
                backlog: backlog.clone(),
            },
            closed,
            pending.clone(),
        )
        .map_err(|e| super::io_error(&dir, e))?;
        Ok(Self {
            pending,
            #[cfg(test)]
            backlog,
            writer,
            applier,
        })
    }

    /// Takes a delivery in: de-duplicates it against what sled and the log hold, gives its
    /// jobs ids and queues it for the log. The outcome, and when it is durable (for a
    /// duplicate: when the first delivery is).
    pub fn record(
        &self,
        delivery: DeliveryRecord,
        dedup_id: bool,
        changes: Vec<ChangeJobs>,
    ) -> Result<(RecordOutcome, Durable), StoreError> {
        let trees = self.applier.trees();
        let now = delivery.received_at;
        // Each job's mark is made before the lock is taken: every delivery waits for it.
        let keys: Vec<Vec<Vec<u8>>> = changes
            .iter()
            .map(|c| c.jobs.iter().map(Job::dedup_key).collect())
            .collect();
        let mut pending = lock(&self.pending);
        if dedup_id {
            // The log before sled: the applier removes an entry only after sled has it.
            if let Some(first) = pending.deliveries.get(&delivery.id) {
                return Ok((RecordOutcome::Duplicate, first.clone()));
            }
            if trees.delivery_seen(&delivery.id, now)? {
                return Ok((RecordOutcome::Duplicate, Durable::ready()));
            }
        }
        // A change marked by bb2tc up to 551746f (per ref, not per build) still counts.
        let legacy_seen = changes
            .iter()
            .map(|c| match &c.legacy_mark {
                Some(mark) if c.deduplicate => trees.change_seen(mark, now),
                _ => Ok(false),
            })
            .collect::<Result<Vec<bool>, StoreError>>()?;
        let mut record = delivery;
        let mut marks: Vec<Vec<u8>> = Vec::new();
        let jobs = new_jobs(
            &mut record,
            &changes,
            |(c, j), _| {
                let mark = &keys[c][j];
                if legacy_seen[c]
                    || pending.marks.contains(mark)
                    || marks.contains(mark)
                    || trees.change_seen(mark, now)?
                {
                    return Ok::<_, StoreError>(false);
                }
                marks.push(mark.clone());
                Ok(true)
            },
            // Under the lock, so that ids follow the log's order.
            || Ok(trees.take_job_id()),
        )?;
        let accepted = Accepted {
            delivery: record,
            dedup_id,
            marks,
            jobs,
        };
        let seq = pending.next_seq;
        // Framed in place, then taken back for the writer: no copy of the jobs.
        let entry = Entry::Delivery(Box::new(accepted));
        let frame = segment::frame(seq, &entry)?;
        let Entry::Delivery(accepted) = entry else {
            return Err(StoreError::Corrupt(
                "an intake entry changed kind while it was framed".into(),
            ));
        };
        pending.next_seq += 1;
        pending.last_delivery = seq;
        pending.unapplied += 1;
        let (settle, durable) = Settle::new();
        if dedup_id {
            pending
                .deliveries
                .insert(accepted.delivery.id.clone(), durable.clone());
        }
        pending.marks.extend(accepted.marks.iter().cloned());
        let outcome = RecordOutcome::Recorded {
            jobs: accepted.jobs.clone(),
            delivery: accepted.delivery.clone(),
        };
        self.writer.append(writer::Append {
            seq,
            frame,
            settle,
            delivery: Some(*accepted),
        });
        Ok((outcome, durable))
    }

    /// Deliveries taken in and not yet applied to sled (nor refused): what the in-memory
    /// de-duplication maps hold.
    pub fn backlog(&self) -> usize {
        lock(&self.pending).unapplied
    }

    /// Why accepted deliveries cannot be applied to sled right now (`None`: they are).
    pub fn apply_problem(&self) -> Option<String> {
        self.applier.problem()
    }

    /// Queues a job's in-flight mark for the log.
    pub fn log_claim(&self, job: u64, attempt: u32) -> Result<Durable, StoreError> {
        self.log(&Entry::Claim { job, attempt })
    }

    /// Queues a probe entry (whether the log takes writes).
    pub fn log_probe(&self) -> Result<Durable, StoreError> {
        self.log(&Entry::Probe)
    }

    /// Queues an entry that holds no delivery.
    fn log(&self, entry: &Entry) -> Result<Durable, StoreError> {
        let mut pending = lock(&self.pending);
        let seq = pending.next_seq;
        let frame = segment::frame(seq, entry)?;
        pending.next_seq += 1;
        let (settle, durable) = Settle::new();
        self.writer.append(writer::Append {
            seq,
            frame,
            settle,
            delivery: None,
        });
        Ok(durable)
    }

    /// What to wait on until sled holds every delivery taken in before this call.
    pub fn catch_up(&self) -> CatchUp {
        CatchUp {
            last: lock(&self.pending).last_delivery,
            applied: self.applier.applied(),
        }
    }

    /// Test-only: whether the writer waits for the applier to catch up (`backlog`).
    #[cfg(test)]
    pub fn waits_for_applier(&self) -> bool {
        self.backlog.is_waiting()
    }

    /// Test-only: waits until the applier has applied every delivery recorded so far.
    #[cfg(test)]
    pub fn wait_applied(&self) {
        let catch_up = self.catch_up();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !catch_up.is_done() {
            assert!(
                std::time::Instant::now() < deadline,
                "the applier did not catch up"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Until sled holds the deliveries taken in before it was made (see [`Intake::catch_up`]).
#[derive(Debug)]
pub struct CatchUp {
    last: u64,
    applied: watch::Receiver<u64>,
}

impl CatchUp {
    /// Waits (at most `limit`, on the calling task) until sled holds them, so that a reader
    /// sees what was answered 202 before it asked; `false` when the limit passed first
    /// (sled is falling behind, or the last delivery was refused) or the store closed.
    pub async fn wait(mut self, limit: std::time::Duration) -> bool {
        let last = self.last;
        let applied = self.applied.wait_for(|at| *at >= last);
        matches!(tokio::time::timeout(limit, applied).await, Ok(Ok(_)))
    }

    /// Whether sled holds them already.
    #[cfg(test)]
    fn is_done(&self) -> bool {
        *self.applied.borrow() >= self.last
    }
}

#[cfg(test)]
mod tests {
    use crate::clock;
    use crate::config::StorageSettings;
    use crate::job::Job;
    use crate::job::JobState;
    use crate::store::DeliveryRecord;
    use crate::store::RecordOutcome;
    use crate::store::sled::SledStore;
    use crate::store::test_support::{change, delivery, settings_in};

    fn settings(dir: &std::path::Path) -> StorageSettings {
        settings_in(dir, 64 << 10)
    }

    fn push(store: &SledStore, id: &str, branch: &str, sha: char) -> RecordOutcome {
        store
            .record_now(&delivery(id), true, &[change(branch, sha)])
            .unwrap()
    }

    fn segments(store: &SledStore) -> Vec<std::path::PathBuf> {
        super::segment::list(store.path()).unwrap()
    }

    fn recorded(outcome: RecordOutcome) -> (Vec<Job>, DeliveryRecord) {
        match outcome {
            RecordOutcome::Recorded { jobs, delivery } => (jobs, delivery),
            RecordOutcome::Duplicate => panic!("a duplicate"),
        }
    }

    #[test]
    fn each_build_is_marked_so_a_push_and_a_pull_request_of_a_commit_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let (jobs, _) = recorded(push(&store, "push", "main", 'a'));
        assert_eq!(jobs.len(), 1);
        // The same build asked by another event (before or after sled has the first): none.
        let mut pull_request = change("main", 'a');
        pull_request.jobs[0].pull_request = Some(12);
        let (outcome, _) = store
            .record_push(delivery("pr"), true, vec![pull_request.clone()])
            .unwrap();
        let (jobs, record) = recorded(outcome);
        assert!(jobs.is_empty());
        assert!(
            record.skipped[0].reason.starts_with("already seen"),
            "{record:?}"
        );
        store.wait_applied();
        // A change asking for that build and another one: only the other one is made, and the
        // answer names the one left out.
        let mut both = change("main", 'a');
        let mut other = both.jobs[0].clone();
        other.build_type = Some(crate::ids::BuildTypeId::new("Other"));
        both.jobs.push(other);
        let (jobs, record) = recorded(store.record_now(&delivery("both"), true, &[both]).unwrap());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].build_type.as_ref().unwrap().as_str(), "Other");
        assert_eq!(
            record.skipped[0].reason,
            "already seen: Bt on main for aaaaaaa within 24 h"
        );
        // A Cloud pull request's 12-digit head is the same build as the whole commit.
        let mut short = change("main", 'a');
        short.jobs[0].sha = crate::ids::Sha::parse_abbreviated(&"a".repeat(12)).unwrap();
        let (jobs, _) = recorded(
            store
                .record_now(&delivery("cloud"), true, &[short])
                .unwrap(),
        );
        assert!(jobs.is_empty());
    }

    #[test]
    fn a_change_marked_by_an_older_release_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let legacy = b"dc\0p/r\0refs/heads/main\0aaaa".to_vec();
        store
            .trees
            .window
            .import(&[crate::store::sled::window::New {
                kind: crate::store::sled::window::Kind::Change,
                seq: 0,
                received_at: crate::clock::now_ms(),
                key: &legacy,
                record: &[],
            }])
            .unwrap();
        let mut marked = change("main", 'a');
        marked.legacy_mark = Some(legacy);
        let (jobs, record) = recorded(store.record_now(&delivery("d"), true, &[marked]).unwrap());
        assert!(jobs.is_empty());
        assert!(record.skipped[0].reason.starts_with("already seen"));
    }

    #[test]
    fn a_log_replayed_into_a_store_that_has_its_deliveries_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        for n in 0..3 {
            push(&store, &format!("d{n}"), &format!("b{n}"), 'a');
        }
        assert_eq!(segments(&store).len(), 1, "the log is still there");
        drop(store);
        // The same log again: sled applied it all, so the replay skips it and removes it.
        let store = SledStore::open(&settings(dir.path())).unwrap();
        assert!(segments(&store).len() == 1, "a fresh, empty segment");
        assert_eq!(store.list_jobs(None, 100).unwrap().len(), 3);
        assert_eq!(store.list_deliveries(100).unwrap().len(), 3);
        assert_eq!(push(&store, "d1", "b1", 'a'), RecordOutcome::Duplicate);
        let RecordOutcome::Recorded { jobs, .. } = push(&store, "d9", "b1", 'a') else {
            panic!("not a duplicate delivery")
        };
        assert!(jobs.is_empty(), "the change was seen");
    }

    #[test]
    fn deliveries_sled_lost_are_applied_again_from_the_log_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let mut ids = Vec::new();
        for n in 0..4 {
            let RecordOutcome::Recorded { jobs, .. } =
                push(&store, &format!("d{n}"), &format!("b{n}"), 'a')
            else {
                panic!()
            };
            ids.push(jobs[0].id);
        }
        // As if sled's files had kept only the first two batches' worth: the last two
        // deliveries' jobs gone, the applied sequence number back at two; and the window
        // only the first's records and marks.
        for id in ids.iter().skip(2) {
            store.jobs.remove(id.to_be_bytes()).unwrap();
        }
        store.window.forget_after(1);
        store
            .meta
            .insert(super::super::jobs::APPLIED_SEQ, &2u64.to_be_bytes())
            .unwrap();
        // A first-delivery job already moved on (done) must not be reset by the replay.
        store.claim_job(ids[0]).unwrap().unwrap();
        store
            .finish_job(
                ids[0],
                &crate::job::Finish::Done {
                    build_id: Some(1),
                    web_url: None,
                    warning: None,
                },
                clock::now_ms(),
            )
            .unwrap()
            .unwrap();
        drop(store);
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let jobs = store.list_jobs(None, 100).unwrap();
        let mut listed: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        listed.sort();
        assert_eq!(listed, ids, "each job once");
        assert_eq!(store.job(ids[0]).unwrap().unwrap().state, JobState::Done);
        assert_eq!(store.job(ids[3]).unwrap().unwrap().state, JobState::Pending);
        for n in 1..4 {
            assert_eq!(
                push(&store, &format!("d{n}"), "b9", 'a'),
                RecordOutcome::Duplicate
            );
            let RecordOutcome::Recorded { jobs, .. } =
                push(&store, &format!("e{n}"), &format!("b{n}"), 'a')
            else {
                panic!()
            };
            assert!(jobs.is_empty(), "the change of d{n} was seen");
        }
        assert_eq!(
            store.list_deliveries(100).unwrap().len(),
            7,
            "each record once"
        );
        // New ids go on after the replayed ones.
        let RecordOutcome::Recorded { jobs, .. } = push(&store, "d5", "b5", 'a') else {
            panic!()
        };
        assert!(jobs[0].id > ids[3]);
    }

    #[test]
    fn a_claim_sled_lost_is_replayed_so_the_job_is_checked_before_it_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let RecordOutcome::Recorded { jobs, .. } = push(&store, "d1", "main", 'a') else {
            panic!()
        };
        let claimed = store.claim_job(jobs[0].id).unwrap().unwrap();
        let durable = store.log_claim(claimed.id, claimed.attempts).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(durable.wait())
            .unwrap();
        // sled lost the claim (it was not synced there): the job reads pending again.
        store.release_job(claimed.id).unwrap().unwrap();
        drop(store);
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let job = store.job(claimed.id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Inflight, 1));
        let resumed = store.resume_jobs(clock::now_ms()).unwrap();
        assert!(resumed[0].interrupted, "TeamCity is asked first");
    }

    #[test]
    fn a_delivery_whose_window_write_was_cut_after_its_marks_is_added_again_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        push(&store, "d1", "b1", 'a');
        push(&store, "d2", "b2", 'a');
        store.wait_applied();
        // sled has both; the window's file kept d2's mark but not its record (`kill -9`
        // between two pages of the write).
        store.window.cut_before_last_record();
        drop(store);
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let mut listed: Vec<String> = store
            .list_deliveries(100)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        listed.sort();
        assert_eq!(listed, ["d1", "d2"], "d2's record is back");
        assert_eq!(store.list_jobs(None, 100).unwrap().len(), 2, "no job twice");
        assert_eq!(push(&store, "d2", "b9", 'a'), RecordOutcome::Duplicate);
        let (jobs, _) = recorded(push(&store, "e2", "b2", 'a'));
        assert!(jobs.is_empty(), "d2's change is still seen");
    }

    #[test]
    fn a_torn_last_entry_is_dropped_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        push(&store, "d1", "main", 'a');
        let segment = segments(&store).pop().unwrap();
        store
            .meta
            .insert(super::super::jobs::APPLIED_SEQ, &0u64.to_be_bytes())
            .unwrap();
        store.jobs.clear().unwrap();
        store.window.forget_after(0);
        drop(store);
        // A second write cut short by a crash: a header and part of its payload.
        let bytes = std::fs::read(&segment).unwrap();
        let end = super::segment::read(&bytes).good_bytes as usize;
        let mut torn = bytes.clone();
        torn[end..end + 8].copy_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4]);
        torn[end + 8..end + 50].fill(7);
        std::fs::write(&segment, torn).unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        assert_eq!(store.list_jobs(None, 10).unwrap().len(), 1);
        assert_eq!(store.stats().unreadable, 0, "torn, not damage");
        assert_eq!(push(&store, "d1", "main", 'a'), RecordOutcome::Duplicate);
    }

    #[test]
    fn a_backlog_of_large_deliveries_is_applied_whole_and_in_order_across_transactions() {
        // Held back together, six deliveries of 400 jobs reach the applier at once: more than
        // one transaction takes (`BATCH_JOBS`), so each batch ends with a delivery carried
        // over into the next.
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&crate::store::test_support::settings(dir.path())).unwrap();
        let held = crate::store::sled::group_commit::hold::hold(store.path());
        let mut durables = Vec::new();
        let mut made = Vec::new();
        for d in 0..6 {
            let changes = (0..400)
                .map(|b| change(&format!("d{d}-b{b}"), 'a'))
                .collect();
            let (outcome, durable) = store
                .record_push(delivery(&format!("d{d}")), true, changes)
                .unwrap();
            made.extend(recorded(outcome).0.into_iter().map(|job| job.id));
            durables.push(durable);
        }
        assert!(made.len() > 2 * super::applier::BATCH_JOBS);
        drop(held);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for durable in durables {
            runtime.block_on(durable.wait()).unwrap();
        }
        store.wait_applied();
        assert_eq!(store.stats().intake_backlog, 0);
        let listed = |store: &SledStore| {
            let mut ids: Vec<u64> = store
                .list_jobs(None, 10_000)
                .unwrap()
                .iter()
                .map(|job| job.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(listed(&store), made, "every job once");
        assert_eq!(store.list_deliveries(100).unwrap().len(), 6);
        drop(store);
        // Nothing of it is applied again at the next start.
        let store = SledStore::open(&crate::store::test_support::settings(dir.path())).unwrap();
        assert_eq!(listed(&store), made);
        assert_eq!(
            push(&store, "d5", "elsewhere", 'b'),
            RecordOutcome::Duplicate
        );
    }

    #[test]
    fn the_backlog_counts_deliveries_until_sled_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let held = crate::store::sled::group_commit::hold::hold(store.path());
        let (outcome, durable) = store
            .record_push(delivery("d1"), true, vec![change("main", 'a')])
            .unwrap();
        assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
        assert_eq!(store.stats().intake_backlog, 1);
        drop(held);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(durable.wait())
            .unwrap();
        store.wait_applied();
        assert_eq!(store.stats().intake_backlog, 0);
    }

    #[test]
    fn a_probe_into_a_moved_store_fails_at_once_and_nothing_queues_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let store = SledStore::open(&settings(&path)).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // The log's writer is held, so whatever is queued stays queued.
        let held = crate::store::sled::group_commit::hold::hold(store.path());
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        assert!(store.log_probe().is_err(), "refused at once, never queued");
        assert!(store.log_claim(1, 1).is_err());
        // A delivery is queued (its check is the writer's, once per group) and refused.
        let (_, moved) = store
            .record_push(delivery("while-moved"), true, vec![change("a", 'a')])
            .unwrap();
        drop(held);
        assert!(runtime.block_on(moved.wait()).is_err());
        // Back in place: the next delivery is taken, with nothing before it to fail it.
        std::fs::rename(dir.path().join("moved"), &path).unwrap();
        let (outcome, durable) = store
            .record_push(delivery("while-moved"), true, vec![change("a", 'a')])
            .unwrap();
        assert!(
            matches!(outcome, RecordOutcome::Recorded { .. }),
            "taken anew"
        );
        runtime.block_on(durable.wait()).unwrap();
        runtime.block_on(store.log_probe().unwrap().wait()).unwrap();
    }

    #[test]
    fn the_log_waits_for_an_applier_too_far_behind_and_goes_on_once_it_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let held = crate::store::sled::group_commit::hold::hold_applier(store.path());
        let changes =
            |n: usize| -> Vec<_> { (0..64).map(|c| change(&format!("b{n}-{c}"), 'a')).collect() };
        // 64 jobs a delivery: once this many are durable, the applier is behind by more than
        // the limit.
        let behind = super::backlog::LIMIT / 64 + 1;
        for n in 0..behind {
            let (_, durable) = store
                .record_push(delivery(&format!("d{n}")), true, changes(n))
                .unwrap();
            runtime.block_on(durable.wait()).unwrap();
        }
        let (outcome, one_more) = store
            .record_push(delivery("one-more"), true, changes(behind))
            .unwrap();
        assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store.intake_waits_for_applier() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer went on with the applier held {} jobs behind",
                super::backlog::LIMIT + 64
            );
            std::thread::yield_now();
        }
        assert!(
            !one_more.is_settled(),
            "written while the applier was behind"
        );
        drop(held);
        runtime.block_on(one_more.wait()).unwrap();
        store.wait_applied();
        assert!(!store.intake_waits_for_applier());
        assert_eq!(
            store.list_jobs(None, 100_000).unwrap().len(),
            (behind + 1) * 64,
            "every delivery's jobs, once"
        );
    }

    #[test]
    fn full_segments_are_checkpointed_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&settings(dir.path())).unwrap();
        // Each delivery is a few hundred bytes: 64 KiB segments fill every ~150.
        for n in 0..600 {
            push(&store, &format!("d{n}"), &format!("b{n}"), 'a');
        }
        store.wait_applied();
        // Checkpoints follow the applier on a thread of their own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let left = loop {
            let left = segments(&store);
            if left.len() <= 2 || std::time::Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(left.len() <= 2, "{left:?}");
        let first = super::segment::path(store.path(), 1);
        assert!(
            !left.contains(&first),
            "the first segment was checkpointed away"
        );
        drop(store);
        let store = SledStore::open(&settings(dir.path())).unwrap();
        assert_eq!(store.list_jobs(None, 1000).unwrap().len(), 600);
    }
}
