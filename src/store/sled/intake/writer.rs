//! The intake log's writer thread: one `write` and one `fdatasync` per group of entries.
//!
//! Entries arrive in sequence order on a channel. The thread takes every entry waiting,
//! writes their frames with one write, syncs once, and settles them all; deliveries then go
//! on to the applier, in order. While it syncs, new entries queue and form the next group, so
//! throughput grows with concurrency while syncs stay bounded by the disk.
//!
//! A group whose write or sync fails is cut off the file again before anything else is
//! written, so an entry answered with an error never comes back at the next start. If even
//! that fails, the writer refuses everything until the store is reopened (`reopen`). A
//! segment that reaches [`SEGMENT_BYTES`] is closed and a new one begun; the applier deletes
//! closed segments once sled holds what they hold (a checkpoint).

use super::segment::{self, Accepted};
use super::{Closed, Settle, Shared, lock};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A segment this long is closed and a new one begun.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// One entry to write.
pub struct Append {
    /// Its sequence number (the channel carries them in order).
    pub seq: u64,
    /// The framed bytes.
    pub frame: Vec<u8>,
    /// Told the outcome.
    pub settle: Settle,
    /// A delivery, handed to the applier once it is durable.
    pub delivery: Option<Accepted>,
}

/// The writer thread; dropping it writes what is queued and stops the thread.
#[derive(Debug)]
pub struct Writer {
    entries: Option<mpsc::UnboundedSender<Append>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
    /// The last delivery written to it (0: none).
    last_delivery: u64,
}

fn create(dir: &Path, first_seq: u64) -> std::io::Result<Segment> {
    let path = segment::path(dir, first_seq);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path)?;
    segment::sync_dir(dir)?;
    Ok(Segment {
        file,
        path,
        len: 0,
        last_delivery: 0,
    })
}

impl Writer {
    /// Begins a segment at `first_seq` in `dir` and starts the thread. Durable deliveries go
    /// to `applier`; closed segments are listed in `closed`.
    pub fn start(
        dir: &Path,
        first_seq: u64,
        applier: mpsc::UnboundedSender<(u64, Accepted)>,
        closed: Arc<Mutex<Vec<Closed>>>,
        pending: Shared,
    ) -> std::io::Result<Self> {
        let segment = create(dir, first_seq)?;
        let (entries, mut rx) = mpsc::unbounded_channel::<Append>();
        let dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("bb2tc-intake-log".into())
            .spawn(move || {
                let mut state = State {
                    dir,
                    segment,
                    broken: None,
                    last_seq: first_seq.saturating_sub(1),
                    applier,
                    closed,
                    pending,
                };
                let mut buf = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while let Ok(next) = rx.try_recv() {
                        group.push(next);
                    }
                    state.write_group(group, &mut buf, &mut rx);
                }
            })?;
        Ok(Self {
            entries: Some(entries),
            thread: Some(thread),
        })
    }

    /// Queues an entry. Entries must be queued in sequence order.
    pub fn append(&self, append: Append) {
        match self.entries.as_ref() {
            Some(entries) => {
                if let Err(unsent) = entries.send(append) {
                    unsent.0.settle.set(Err("the intake log is closed".into()));
                }
            }
            None => append.settle.set(Err("the intake log is closed".into())),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.entries.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    dir: PathBuf,
    segment: Segment,
    /// Why nothing can be written until the store is reopened.
    broken: Option<String>,
    /// The last sequence number written.
    last_seq: u64,
    applier: mpsc::UnboundedSender<(u64, Accepted)>,
    closed: Arc<Mutex<Vec<Closed>>>,
    pending: Shared,
}

impl State {
    fn write_group(
        &mut self,
        group: Vec<Append>,
        buf: &mut Vec<u8>,
        queue: &mut mpsc::UnboundedReceiver<Append>,
    ) {
        buf.clear();
        for append in &group {
            buf.extend_from_slice(&append.frame);
        }
        #[cfg(test)]
        crate::store::sled::group_commit::hold::wait_while_held(&self.dir);
        let result = match &self.broken {
            Some(why) => Err(why.clone()),
            None => self.write(buf),
        };
        match &result {
            Ok(()) => {
                self.last_seq = group.last().map_or(self.last_seq, |a| a.seq);
                for append in group {
                    if let Some(delivery) = append.delivery {
                        self.segment.last_delivery = append.seq;
                        let _ = self.applier.send((append.seq, delivery));
                    }
                    append.settle.set(Ok(()));
                }
                self.rotate_when_full();
            }
            Err(e) => {
                tracing::error!(error = %e, "intake log write failed");
                // Entries queued behind the group may rest on it (a change skipped because
                // a delivery in it had it): refused too, and their reservations released
                // while nothing new can be queued.
                let mut refused = group;
                let mut pending = lock(&self.pending);
                while let Ok(next) = queue.try_recv() {
                    refused.push(next);
                }
                for append in &refused {
                    if let Some(delivery) = &append.delivery {
                        pending.release(delivery);
                    }
                }
                drop(pending);
                for append in refused {
                    append.settle.set(Err(e.clone()));
                }
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let start = self.segment.len;
        let written = self
            .segment
            .file
            .write_all(bytes)
            .and_then(|()| self.segment.file.sync_data())
            .map_err(|e| e.to_string());
        #[cfg(test)]
        let written =
            written.and_then(|()| crate::store::sled::group_commit::hold::failure(&self.dir));
        match written {
            Ok(()) => {
                self.segment.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut the group off again: it was answered with an error and must not be
                // found at the next start.
                let file = &mut self.segment.file;
                let cut = file
                    .set_len(start)
                    .and_then(|()| file.seek(SeekFrom::Start(start)).map(|_| ()))
                    .and_then(|()| file.sync_data());
                if let Err(cut) = cut {
                    let why = format!(
                        "the intake log could not be cut back after a failed write ({cut}); \
                         nothing is accepted until the store is reopened"
                    );
                    tracing::error!("{why}");
                    self.broken = Some(why);
                }
                Err(e)
            }
        }
    }

    fn rotate_when_full(&mut self) {
        if self.segment.len < SEGMENT_BYTES {
            return;
        }
        // Named after one past the last entry written, which every later entry exceeds.
        match create(&self.dir, self.last_seq + 1) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.segment, fresh);
                self.closed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Closed {
                        path: old.path,
                        last_delivery: old.last_delivery,
                    });
            }
            // Keep writing to the full one; the next group tries again.
            Err(e) => tracing::warn!(error = %e, "cannot begin a new intake log segment"),
        }
    }

}
