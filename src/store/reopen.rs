//! The sled backend behind a handle that can be reopened, so the store heals by itself.
//!
//! After an I/O error (a full disk, files made read-only) sled keeps failing every later
//! call, even once writing works again. So when a durable write fails, the handle is marked
//! failing, and [`SledHandle::heal`] — run every few seconds by the bridge — probes the store
//! and, while it still fails, closes it and opens it again from its files: what was
//! acknowledged was fsynced and comes back; what was not acknowledged (answered 503) may not.
//! While it is closed, calls fail with a store error (503) instead of waiting.

use super::StoreError;
use super::jobs::Applied;
use super::sled::SledStore;
use crate::config::StorageSettings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a reopen waits for calls still using the old store to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The open sled store, replaceable.
#[derive(Debug)]
pub struct SledHandle {
    current: RwLock<Option<Arc<SledStore>>>,
    settings: StorageSettings,
    /// Where every store it opens announces applied jobs.
    events: mpsc::UnboundedSender<Applied>,
    failing: AtomicBool,
    reopening: tokio::sync::Mutex<()>,
}

impl SledHandle {
    pub fn new(
        store: SledStore,
        settings: StorageSettings,
        events: mpsc::UnboundedSender<Applied>,
    ) -> Self {
        Self {
            current: RwLock::new(Some(Arc::new(store))),
            settings,
            events,
            failing: AtomicBool::new(false),
            reopening: tokio::sync::Mutex::new(()),
        }
    }

    /// The store to call; an error while it is being reopened.
    pub fn current(&self) -> Result<Arc<SledStore>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Io {
                path: self.settings.path.clone(),
                message: "the store is being reopened after a write failed".into(),
            })
    }

    /// What the store is opened with.
    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    /// A durable write failed: [`heal`](Self::heal) will look at it.
    pub fn mark_failing(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    /// Whether a write failed since the store last proved it works.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// If a write failed: probes the store, and when it still fails, reopens it. `Ok(true)`
    /// when the store works (again).
    pub async fn heal(&self) -> Result<bool, StoreError> {
        if !self.is_failing() {
            return Ok(true);
        }
        let _one_at_a_time = self.reopening.lock().await;
        if let Ok(store) = self.current() {
            // A directory removed or replaced is not healed by reopening: that would open
            // (or create) another store at the path and drop what this one holds.
            store.location_intact()?;
            if probe(&store).await.is_ok() {
                self.failing.store(false, Ordering::SeqCst);
                return Ok(true);
            }
        }
        if !self.settings.path.is_dir() {
            return Err(StoreError::Io {
                path: self.settings.path.clone(),
                message: "the store directory is gone; not reopening (it would start empty)".into(),
            });
        }
        let old = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // sled locks its files: the old store must be closed before the new one opens.
            let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
            while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::task::spawn_blocking(move || drop(old))
                .await
                .map_err(|e| StoreError::Corrupt(format!("closing the store failed: {e}")))?;
        }
        let (settings, events) = (self.settings.clone(), self.events.clone());
        let reopened = tokio::task::spawn_blocking(move || SledStore::start(&settings, events))
            .await
            .map_err(|e| StoreError::Corrupt(format!("reopening the store failed: {e}")))?;
        let store = Arc::new(reopened?);
        let works = probe(&store).await;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
        match works {
            Ok(()) => {
                self.failing.store(false, Ordering::SeqCst);
                tracing::warn!(
                    "the store was reopened after a failed write and takes writes again"
                );
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

/// A write and its fsync, in sled and in the intake log; and the intake log's applier
/// getting its deliveries into sled.
pub(super) async fn probe(store: &Arc<SledStore>) -> Result<(), StoreError> {
    // Deliveries accepted and not reaching sled: a reopen replays them.
    store.applying()?;
    // The log's sync overlaps sled's, so the probe costs one sync's time, not two.
    let logged = store.log_probe()?;
    let probing = store.clone();
    tokio::task::spawn_blocking(move || probing.probe_write())
        .await
        .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))??;
    store.commit().await?;
    logged.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::settings;

    #[tokio::test]
    async fn a_failing_store_is_reopened_and_works_again() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let handle = SledHandle::new(
            SledStore::open(&settings).unwrap(),
            settings,
            mpsc::unbounded_channel().0,
        );
        assert!(handle.heal().await.unwrap(), "nothing to heal");
        handle.mark_failing();
        let before = handle.current().unwrap();
        drop(before);
        assert!(handle.heal().await.unwrap());
        assert!(!handle.is_failing());
        assert!(handle.current().is_ok());
    }

    #[tokio::test]
    async fn a_removed_directory_is_not_replaced_by_a_new_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let handle = SledHandle::new(
            SledStore::open(&settings).unwrap(),
            settings.clone(),
            mpsc::unbounded_channel().0,
        );
        std::fs::rename(&settings.path, dir.path().join("moved")).unwrap();
        handle.mark_failing();
        assert!(handle.heal().await.is_err());
        assert!(
            !settings.path.exists(),
            "no new store was created at the path"
        );
        assert!(handle.is_failing());
    }
}
