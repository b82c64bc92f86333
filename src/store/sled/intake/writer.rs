//! The intake log's writer thread: one `write` and one `fdatasync` per group of entries.
//!
//! Entries arrive in sequence order on a channel. The thread takes every entry waiting,
//! writes their frames with one write, syncs once, and settles them all; deliveries then go
//! on to the applier, in order. While it syncs, new entries queue and form the next group, so
//! throughput grows with concurrency while syncs stay bounded by the disk.
//!
//! Before each group the writer makes sure the applier is not too far behind (`backlog`):
//! if it is, the group waits, and grows meanwhile.
//!
//! A group whose write or sync fails is cut off the file again before anything else is
//! written, so an entry answered with an error never comes back at the next start. If even
//! that fails, the writer refuses everything until the store is reopened (`reopen`). A
//! segment that reaches `storage.intake_segment_bytes` is closed and a new one begun; the
//! applier deletes closed segments once sled holds what they hold (a checkpoint).
//!
//! **The store directory is checked once per group, after its sync.** A directory removed
//! or replaced while bb2tc runs takes the open segment with it: its `fdatasync` succeeds,
//! and what it holds is gone at the next start. So before a group is settled, the store
//! directory must still be the one opened; if not, the group is refused (and cut off the
//! file it went to). One `statx` per group, not one per delivery. (Claims and probes are
//! also checked before they are queued, `SledStore::log_claim`: one refused only here would
//! take down with it the deliveries queued behind it, e.g. right after the directory is back.)
//!
//! **Segments are written in full before use.** An append that grows a file makes
//! `fdatasync` commit the file's new size to the filesystem journal as well; an overwrite of
//! blocks already written does not (≈ 0.1 ms less per sync on the development VM's ext4).
//! So each segment is filled with zeros and synced by a helper thread while the one before
//! it is in use (`intake-next.prep`), and renamed into place when its turn comes. Where
//! that fails (a full disk) a segment simply grows as it is written.

use super::backlog::Backlog;
use super::segment::{self, Accepted};
use super::{Closed, Settle, Shared, lock};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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

/// Where durable deliveries go: the applier's queue, and the count of what it has still to
/// apply (`backlog`).
pub struct ToApplier {
    pub queue: mpsc::UnboundedSender<(u64, Accepted)>,
    pub backlog: Arc<Backlog>,
}

impl ToApplier {
    fn send(&self, seq: u64, delivery: Accepted) {
        self.backlog.handed(Backlog::weight(&delivery));
        let _ = self.queue.send((seq, delivery));
    }
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

/// Where the next segment is prepared.
pub fn prepared_path(dir: &Path) -> PathBuf {
    dir.join("intake-next.prep")
}

fn open_new(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if truncate {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Fills `file` with `bytes` zeros and syncs it; the file is left positioned at its start.
fn fill_with_zeros(file: &mut File, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Prepares the next segment on a thread of its own; `None` when it could not.
fn prepare_next(dir: &Path, bytes: u64) -> std::sync::mpsc::Receiver<Option<File>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = prepared_path(dir);
    let spawned = std::thread::Builder::new()
        .name("bb2tc-intake-prep".into())
        .spawn(move || {
            let prepared = open_new(&path, true).and_then(|mut file| {
                fill_with_zeros(&mut file, bytes)?;
                Ok(file)
            });
            let _ = tx.send(match prepared {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare the next intake log segment; it grows as it is written instead");
                    let _ = std::fs::remove_file(&path);
                    None
                }
            });
        });
    if spawned.is_err() {
        tracing::warn!("cannot start the thread that prepares intake log segments");
    }
    rx
}

/// Begins the segment whose first entry is `first_seq`: the prepared file when there is
/// one, else a new file, filled with zeros when `fill` is set and there is room.
fn begin(
    dir: &Path,
    first_seq: u64,
    prepared: Option<File>,
    fill: u64,
) -> std::io::Result<Segment> {
    let path = segment::path(dir, first_seq);
    let file = match prepared {
        Some(file) => {
            std::fs::rename(prepared_path(dir), &path)?;
            file
        }
        None => {
            let mut file = open_new(&path, false)?;
            if fill > 0 && fill_with_zeros(&mut file, fill).is_err() {
                // No room to allocate it ahead: it grows as it is written.
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
            }
            file
        }
    };
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
        identity: Option<(u64, u64)>,
        first_seq: u64,
        segment_bytes: u64,
        applier: ToApplier,
        closed: Arc<Mutex<Vec<Closed>>>,
        pending: Shared,
    ) -> std::io::Result<Self> {
        let segment = begin(dir, first_seq, None, segment_bytes)?;
        let next = prepare_next(dir, segment_bytes);
        let (entries, mut rx) = mpsc::unbounded_channel::<Append>();
        let dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("bb2tc-intake-log".into())
            .spawn(move || {
                let mut state = State {
                    dir,
                    identity,
                    segment,
                    segment_bytes,
                    next,
                    broken: None,
                    last_seq: first_seq.saturating_sub(1),
                    applier,
                    closed,
                    pending,
                };
                let mut buf = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    // What queues meanwhile joins the group.
                    let applier = &state.applier;
                    applier
                        .backlog
                        .wait_for_room(|| rx.is_closed() || applier.queue.is_closed());
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
    /// The store directory's identity when it was opened (see the module).
    identity: Option<(u64, u64)>,
    segment: Segment,
    segment_bytes: u64,
    /// The next segment, being prepared.
    next: std::sync::mpsc::Receiver<Option<File>>,
    /// Why nothing can be written until the store is reopened.
    broken: Option<String>,
    /// The last sequence number written.
    last_seq: u64,
    applier: ToApplier,
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
                        self.applier.send(append.seq, delivery);
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
            .map_err(|e| e.to_string())
            .and_then(|()| self.directory_intact());
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

    /// Whether the store directory is still the one opened (see the module).
    fn directory_intact(&self) -> Result<(), String> {
        if crate::store::sled::directory_identity(&self.dir)
            .is_some_and(|now| Some(now) == self.identity)
        {
            return Ok(());
        }
        Err(crate::store::sled::MOVED_AWAY.into())
    }

    fn rotate_when_full(&mut self) {
        if self.segment.len < self.segment_bytes {
            return;
        }
        // It had a whole segment's time to get ready.
        let prepared = self.next.recv().ok().flatten();
        // Named after one past the last entry written, which every later entry exceeds.
        let begun = begin(&self.dir, self.last_seq + 1, prepared, 0);
        self.next = prepare_next(&self.dir, self.segment_bytes);
        match begun {
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
