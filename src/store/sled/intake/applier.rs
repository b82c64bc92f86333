//! The applier thread: durable deliveries, in log order, into the de-duplication window
//! (their records and marks) and sled (their jobs, a batch per transaction) — then the new
//! jobs announced and closed segments handed on to be checkpointed (`checkpoint`).
//!
//! **It gives way to the request path.** Its thread runs [`NICE`] steps nicer than the rest
//! of the process (Linux). A transaction takes CPU that the two cores of a small machine
//! would otherwise spend taking the next deliveries in and answering them: while requests
//! keep the CPU busy, the applier's batches grow instead (and fewer transactions cost less);
//! at a lighter load it runs at once. The writer waits for it when it falls too far behind
//! (`backlog`). The in-memory maps are released a few deliveries at a time: the request path
//! waits for their lock, and a thread of low priority must not hold it long.
//!
//! A batch sled refuses (a full disk) is tried again every second: it is in the log, so
//! nothing is lost meanwhile, and the store is reopened by the healer (`reopen`) if sled
//! stays broken, which replays the log.

use super::backlog::Backlog;
use super::checkpoint::Checkpointer;
use super::segment::Accepted;
use super::{Closed, Shared, lock};
use crate::store::jobs::Applied;
use crate::store::sled::Trees;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// At most this many deliveries go into one sled transaction.
const BATCH: usize = 1024;

/// A transaction takes no more deliveries once the next would bring it beyond this many jobs
/// (a delivery is never split). sled keeps every node version a transaction replaces until
/// the transaction ends: 1 024 queued deliveries of 100 changes made one transaction of
/// 100 000 jobs, and ~900 MiB of resident memory (`cargo bench --bench scale`: 742 MiB with
/// 100 000 jobs queued, 101 MiB with at most 4 096 jobs a transaction, 88 MiB with 1 024).
pub(super) const BATCH_JOBS: usize = 1024;

/// The shortest time between two of the applier's transactions while deliveries queue up
/// for it. sled 0.34 seals and writes its io buffer twice per transaction (a `pwrite` +
/// `sync_file_range` on its thread pool, waking all its io threads each time), whatever the
/// transaction holds: with a transaction per handful of deliveries, that was a quarter of
/// bb2tc's CPU under load.
const PACE: Duration = Duration::from_millis(2);

/// Deliveries released from the in-memory maps per hold of their lock.
const RELEASE_CHUNK: usize = 32;

/// How much nicer the applier's thread is than the process (whose threads, the request
/// path's among them, keep its own nice value, 0 unless started with another).
const NICE: i32 = 5;

/// How long a batch sled refused waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Applier {
    trees: Arc<Trees>,
    stop: Arc<AtomicBool>,
    /// Why the last batch could not be applied, until one is.
    problem: Problem,
    /// The highest delivery sequence number applied, for those who wait for it.
    applied: watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why the applier's last batch failed (`None`: it did not).
type Problem = Arc<Mutex<Option<String>>>;

struct Run {
    trees: Arc<Trees>,
    problem: Problem,
    pending: Shared,
    backlog: Arc<Backlog>,
    events: mpsc::UnboundedSender<Applied>,
    stop: Arc<AtomicBool>,
    applied: watch::Sender<u64>,
    /// Told how far sled holds the log (closed segments are checkpointed there).
    checkpoints: Checkpointer,
}

impl Applier {
    pub fn start(
        trees: Arc<Trees>,
        mut queue: mpsc::UnboundedReceiver<(u64, Accepted)>,
        pending: Shared,
        closed: Arc<Mutex<Vec<Closed>>>,
        backlog: Arc<Backlog>,
        events: mpsc::UnboundedSender<Applied>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (watermark, applied) = watch::channel(0);
        let problem = Problem::default();
        let run = Run {
            trees: trees.clone(),
            problem: problem.clone(),
            pending,
            backlog,
            events,
            stop: stop.clone(),
            applied: watermark,
            checkpoints: Checkpointer::start(trees.clone(), closed)?,
        };
        let thread = std::thread::Builder::new()
            .name("bb2tc-intake-apply".into())
            .spawn(move || {
                give_way_to_requests();
                let mut batch = Vec::with_capacity(BATCH);
                let mut last_applied: Option<Instant> = None;
                // A delivery that did not fit the last batch: it starts the next.
                let mut carried: Option<(u64, Accepted)> = None;
                loop {
                    let loaded = carried.is_some() || !queue.is_empty();
                    let Some(first) = carried.take().or_else(|| queue.blocking_recv()) else {
                        return;
                    };
                    let mut jobs = first.1.jobs.len();
                    batch.push(first);
                    // Under load (more deliveries already waiting), a transaction at most
                    // every PACE: the deliveries meanwhile join the batch. A delivery alone
                    // (one push at a time, or after a pause) is applied at once.
                    if (loaded || !queue.is_empty())
                        && let Some(wait) = last_applied
                            .and_then(|at| (at + PACE).checked_duration_since(Instant::now()))
                    {
                        std::thread::sleep(wait);
                    }
                    while batch.len() < BATCH {
                        match queue.try_recv() {
                            Ok(next) if jobs + next.1.jobs.len() > BATCH_JOBS => {
                                carried = Some(next);
                                break;
                            }
                            Ok(next) => {
                                jobs += next.1.jobs.len();
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    if !run.apply(&batch) {
                        return;
                    }
                    last_applied = Some(Instant::now());
                    batch.clear();
                }
            })?;
        Ok(Self {
            trees,
            stop,
            problem,
            applied,
            thread: Some(thread),
        })
    }

    /// The trees it applies to.
    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    /// The highest delivery sequence number applied, as it changes.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Why accepted deliveries cannot reach sled right now (they wait in the log, and the
    /// log waits once they are too many: `backlog`); `None` while they do.
    pub fn problem(&self) -> Option<String> {
        lock_problem(&self.problem).clone()
    }
}

fn lock_problem(problem: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    problem
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Applier {
    fn drop(&mut self) {
        // The writer is gone: the queue ends after what is in it.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Run {
    /// Applies a batch (retrying while sled refuses it); `false` when stopped first.
    fn apply(&self, batch: &[(u64, Accepted)]) -> bool {
        #[cfg(test)]
        crate::store::sled::group_commit::hold::wait_while_applier_held(self.trees.path());
        let applied = loop {
            // The window first: adding it again after sled refused adds nothing.
            match self
                .trees
                .window_accepted(batch)
                .and_then(|()| self.trees.apply_accepted(batch))
            {
                Ok(applied) => break applied,
                Err(e) => {
                    *lock_problem(&self.problem) = Some(e.to_string());
                    tracing::error!(error = %e, "cannot apply accepted deliveries to the store; they are safe in the intake log, trying again");
                    if self.stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        };
        lock_problem(&self.problem).take();
        // A few at a time: the request path waits for this lock.
        for chunk in batch.chunks(RELEASE_CHUNK) {
            let mut pending = lock(&self.pending);
            for (_, accepted) in chunk {
                pending.release(accepted);
            }
        }
        self.backlog
            .applied(batch.iter().map(|(_, a)| Backlog::weight(a)).sum());
        let last = batch.last().map_or(0, |(seq, _)| *seq);
        let _ = self.events.send(applied);
        self.applied.send_replace(last);
        self.checkpoints.applied(last);
        true
    }
}

/// Lowers the calling thread's priority by [`NICE`] (to at most 19, the lowest); where that
/// fails, it keeps the process's (and only gives way less under load).
fn give_way_to_requests() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        let lowered = getpriority_process(thread)
            .and_then(|now| setpriority_process(thread, (now + NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "cannot lower the applier thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_applier_thread_runs_at_a_lower_priority_than_the_rest() {
        use rustix::process::getpriority_process;
        use rustix::thread::gettid;
        let (before, after) = std::thread::spawn(|| {
            let before = getpriority_process(Some(gettid())).unwrap();
            super::give_way_to_requests();
            (before, getpriority_process(Some(gettid())).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + super::NICE).min(19));
        // Only that thread: this one keeps the process's priority.
        assert_eq!(getpriority_process(Some(gettid())).unwrap(), before);
    }
}
