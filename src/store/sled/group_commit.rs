//! Durable writes shared between concurrent callers ("group commit").
//!
//! sled's own `flush` writes its log with `sync_file_range`, which pushes the pages to the
//! device but does not flush the drive's cache or the file's metadata: it is not an fsync.
//! A 202 must mean the jobs survive power loss (SPEC §7), so every durable write is followed
//! by `flush` *and* `fsync` of sled's log file.
//!
//! One fsync costs milliseconds; doing one per webhook would cap ingest at a few hundred
//! deliveries per second. Instead a single committer thread takes every request waiting in its
//! channel, runs one flush + fsync for all of them, and answers them all. While it syncs, new
//! requests queue up and form the next group, so the number of fsyncs per second stays bounded
//! by the disk while throughput grows with concurrency.

use std::fs::File;
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the committer thread. Dropping it stops the thread (after it answered every
/// waiting caller) and waits for it, so the store's files are closed when the store is.
#[derive(Debug)]
pub struct GroupCommit {
    requests: Option<mpsc::UnboundedSender<Reply>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the committer for `db`, whose log file is `<dir>/db`.
    pub fn start(db: sled::Db, dir: &Path) -> std::io::Result<Self> {
        let log = File::open(dir.join("db"))?;
        #[cfg(test)]
        let held_dir = dir.to_owned();
        // The directory entry of a newly created store must be durable too.
        File::open(dir)?.sync_all()?;
        let (requests, mut rx) = mpsc::unbounded_channel::<Reply>();
        let thread = std::thread::Builder::new()
            .name("bb2tc-group-commit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while let Ok(next) = rx.try_recv() {
                        group.push(next);
                    }
                    #[cfg(test)]
                    hold::wait_while_held(&held_dir);
                    let result = db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                        .and_then(|()| log.sync_data().map_err(|e| e.to_string()));
                    #[cfg(test)]
                    let result = result.and_then(|()| hold::failure(&held_dir));
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "durable write failed");
                    }
                    for waiter in group {
                        let _ = waiter.send(result.clone());
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Returns once everything written to the store before this call is on disk.
    pub async fn commit(&self) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or_else(|| "store committer stopped".to_string())?
            .send(reply)
            .map_err(|_| "store committer stopped".to_string())?;
        done.await
            .map_err(|_| "store committer stopped".to_string())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Test-only: holds back the commits of one store directory, so that a test can see what
/// waits for a delivery to be durable.
#[cfg(test)]
pub(crate) mod hold {
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex};

    static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static RELEASED: Condvar = Condvar::new();
    static FAILING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Commits of the store at `dir` fail (as on a full disk) until the guard is dropped.
    pub fn fail(dir: &Path) -> Failing {
        FAILING.lock().unwrap().push(dir.to_owned());
        Failing(dir.to_owned())
    }

    /// Lets commits succeed again on drop.
    pub struct Failing(PathBuf);

    impl Drop for Failing {
        fn drop(&mut self) {
            FAILING.lock().unwrap().retain(|d| d != &self.0);
        }
    }

    pub(in crate::store::sled) fn failure(dir: &Path) -> Result<(), String> {
        if FAILING.lock().unwrap().iter().any(|d| d == dir) {
            Err("No space left on device (os error 28)".into())
        } else {
            Ok(())
        }
    }

    /// Commits of the store at `dir` wait until the returned guard is dropped.
    pub fn hold(dir: &Path) -> Held {
        HELD.lock().unwrap().push(dir.to_owned());
        Held(dir.to_owned())
    }

    /// Releases the commits on drop.
    pub struct Held(PathBuf);

    impl Drop for Held {
        fn drop(&mut self) {
            HELD.lock().unwrap().retain(|d| d != &self.0);
            RELEASED.notify_all();
        }
    }

    /// The intake applier of the store at `dir` waits before its next batch until the guard
    /// is dropped.
    pub fn hold_applier(dir: &Path) -> Held {
        hold(&dir.join(APPLIER))
    }

    /// What [`hold_applier`] holds, beside the commits of `dir`.
    const APPLIER: &str = "#intake-applier";

    pub(in crate::store::sled) fn wait_while_applier_held(dir: &Path) {
        wait_while_held(&dir.join(APPLIER));
    }

    pub(in crate::store::sled) fn wait_while_held(dir: &Path) {
        let mut held = HELD.lock().unwrap();
        while held.iter().any(|d| d == dir) {
            held = RELEASED.wait(held).unwrap();
        }
    }
}
