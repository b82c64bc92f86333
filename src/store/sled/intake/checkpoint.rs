//! Checkpoints, on a thread of their own: once sled holds every delivery of a closed
//! segment, sled is synced (flush + fsync), then the window, and the segment is deleted.
//!
//! sled's flush takes from a few to a few hundred milliseconds, with the writes since the
//! last one. Done by the applier between two batches, it held the applier back for that
//! long, and with it — once the applier is as far behind as `backlog` allows — every
//! delivery waiting for its 202. Here the applier only says how far it has applied.

use super::Closed;
use super::segment;
use crate::store::sled::Trees;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The checkpoint thread; dropping it finishes the checkpoint due and stops the thread.
#[derive(Debug)]
pub struct Checkpointer {
    applied: Option<mpsc::Sender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread for the segments listed in `closed`.
    pub fn start(trees: Arc<Trees>, closed: Arc<Mutex<Vec<Closed>>>) -> std::io::Result<Self> {
        let (applied, due) = mpsc::channel::<u64>();
        let thread = std::thread::Builder::new()
            .name("bb2tc-checkpoint".into())
            .spawn(move || {
                while let Ok(mut applied) = due.recv() {
                    // Only the furthest point matters.
                    while let Ok(further) = due.try_recv() {
                        applied = further;
                    }
                    checkpoint(&trees, &closed, applied);
                }
            })?;
        Ok(Self {
            applied: Some(applied),
            thread: Some(thread),
        })
    }

    /// sled holds every delivery up to `seq`.
    pub fn applied(&self, seq: u64) {
        if let Some(applied) = &self.applied {
            let _ = applied.send(seq);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.applied.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(closed: &Mutex<Vec<Closed>>) -> std::sync::MutexGuard<'_, Vec<Closed>> {
    closed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Deletes the closed segments whose deliveries sled holds (up to `applied`), once sled and
/// the window are synced.
fn checkpoint(trees: &Trees, closed: &Mutex<Vec<Closed>>, applied: u64) {
    let done: Vec<Closed> = {
        let mut closed = lock(closed);
        let n = closed
            .iter()
            .take_while(|c| c.last_delivery <= applied)
            .count();
        closed.drain(..n).collect()
    };
    if done.is_empty() {
        return;
    }
    let started = Instant::now();
    if let Err(e) = trees.commit_blocking().and_then(|()| trees.sync_window()) {
        tracing::warn!(error = %e, "checkpoint postponed: the store could not be synced");
        lock(closed).splice(0..0, done);
        return;
    }
    for segment in &done {
        if let Err(e) = std::fs::remove_file(&segment.path) {
            tracing::warn!(segment = %segment.path.display(), error = %e, "cannot delete an intake log segment; it is replayed (harmlessly) at the next start");
        }
    }
    if let Err(e) = segment::sync_dir(trees.path()) {
        tracing::warn!(error = %e, "cannot sync the store directory after a checkpoint");
    }
    tracing::info!(
        segments = done.len(),
        ms = started.elapsed().as_millis() as u64,
        "intake log checkpoint: sled synced, segments removed"
    );
}
