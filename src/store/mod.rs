//! The embedded sled store: tokens (encrypted), jobs, deliveries and de-duplication marks.
//!
//! Trees:
//! - `tokens`: token id → the token record (the token itself sealed, see `crypto`)
//! - `token_index`: `source \0 user key \0 server` → token id
//! - `jobs`: job id (u64, big-endian, so iteration is oldest first) → [`jobs::Job`]
//! - `pending_index`: coalescing key → id of the job still waiting for that key
//! - `deliveries`: delivery id → [`jobs::DeliveryRecord`]
//! - `seen_changes`: `source \0 repository \0 ref \0 sha` → first-seen time (u64 ms)
//! - `sessions`: SHA-256 of a token-page session cookie → [`sessions::Session`]
//! - `meta`: the master-key check value and the admin token hash
//!
//! Writes that must survive a crash go through [`Store::commit`] (flush + fsync, shared
//! between concurrent callers; see `group_commit`).

mod crypto;
mod group_commit;
pub mod jobs;
mod key_rotation;
pub mod sessions;
pub mod tokens;

pub use crypto::TokenCipher;
pub use jobs::{DeliveryRecord, Finish, Job, JobState, RecordOutcome, Skipped, TokenRef};
pub use sessions::{Principal, Session};
pub use tokens::{TokenFilter, TokenInfo, TokenStatus};

use crate::config::StorageSettings;
use group_commit::GroupCommit;
use std::path::{Path, PathBuf};

/// sled's page cache. Its default (1 GiB) would let a large backlog grow the process; jobs
/// are read once per attempt, so a small cache costs little.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// How long a delivery id or a (repository, ref, sha) change is remembered for de-duplication,
/// and how long finished jobs and delivery records are kept for the admin API.
pub const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;

const ADMIN_HASH: &[u8] = b"admin_token_sha256";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, corruption).
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// A file next to the store could not be used.
    #[error("store I/O error at {path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The master key does not open the tokens already stored.
    #[error(
        "the master key does not match the one this store was created with \
         (check storage.master_key or {0}/master.key)"
    )]
    WrongMasterKey(String),
    /// A sealed value could not be opened (wrong key or damaged record).
    #[error("a stored token could not be decrypted")]
    Crypto,
    /// A record could not be decoded.
    #[error("store record is damaged: {0}")]
    Corrupt(String),
    /// The flush + fsync of a durable write failed.
    #[error("durable write failed: {0}")]
    Durability(String),
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(inner) => inner,
            sled::transaction::TransactionError::Storage(inner) => StoreError::Sled(inner),
        }
    }
}

/// The open store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tokens: sled::Tree,
    token_index: sled::Tree,
    jobs: sled::Tree,
    pending_index: sled::Tree,
    deliveries: sled::Tree,
    seen_changes: sled::Tree,
    sessions: sled::Tree,
    meta: sled::Tree,
    cipher: TokenCipher,
    committer: GroupCommit,
}

impl Store {
    /// Opens (creating if missing) the store at `settings.path` and checks the master key.
    pub fn open(settings: &StorageSettings) -> Result<Self, StoreError> {
        let path = settings.path.clone();
        std::fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
        let db = open_sled(&path)?;
        let meta = db.open_tree("meta")?;
        let cipher = key_rotation::open_cipher(settings, &meta)?;
        let committer = GroupCommit::start(db.clone(), &path).map_err(|e| io_error(&path, e))?;
        let store = Self {
            tokens: db.open_tree("tokens")?,
            token_index: db.open_tree("token_index")?,
            jobs: db.open_tree("jobs")?,
            pending_index: db.open_tree("pending_index")?,
            deliveries: db.open_tree("deliveries")?,
            seen_changes: db.open_tree("seen_changes")?,
            sessions: db.open_tree("sessions")?,
            meta,
            path,
            cipher,
            committer,
        };
        Ok(store)
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write done before this call durable (flush + fsync), sharing the fsync
    /// with concurrent callers.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.committer
            .commit()
            .await
            .map_err(StoreError::Durability)
    }

    /// Writes and syncs a probe value: whether the store takes writes (for `/readyz`).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.meta
            .insert(b"probe", &crate::clock::now_ms().to_be_bytes())?;
        self.commit().await
    }

    /// The stored SHA-256 of the generated admin token, if one was generated.
    pub fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .meta
            .get(ADMIN_HASH)?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// Stores the SHA-256 of a newly generated admin token (durably).
    pub async fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        self.meta.insert(ADMIN_HASH, &hash)?;
        self.commit().await
    }
}

/// How long to wait for sled's file lock: a process that is just exiting (a restart) lets go
/// of it a moment later.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled locks its files; its message is the only sign of that.
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Io {
                        path: path.to_owned(),
                        message: "the store is in use by another bb2tc process (run one per store)"
                            .into(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => return Err(StoreError::Sled(other)),
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Records are stored as postcard, a compact binary form of the same serde types: about
/// half the bytes of JSON, which is what every durable write pays for.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::TriggerMode;
    use crate::ids::{BuildTypeId, ServerId, Sha, SourceId};
    use std::collections::BTreeMap;

    /// A store in a fresh temp dir (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings {
            path: dir.path().join("data"),
            master_key: None,
        };
        let store = Store::open(&settings).unwrap();
        (dir, store)
    }

    /// A pending build job for `branch` at a commit of all `sha` digits.
    pub fn job(branch: &str, sha: char) -> Job {
        Job {
            id: 0,
            state: JobState::Pending,
            source: SourceId::new("dc"),
            delivery: "d".into(),
            server: ServerId::new("main"),
            mode: TriggerMode::Build,
            build_type: Some(BuildTypeId::new("Bt")),
            repository: "P/r".into(),
            full_ref: format!("refs/heads/{branch}"),
            branch: branch.into(),
            sha: Sha::parse(&sha.to_string().repeat(40)).unwrap(),
            user: "jdoe".into(),
            token: TokenRef::Service,
            properties: BTreeMap::new(),
            vcs_root_id: None,
            clone_urls: vec![],
            attempts: 0,
            created_at: 0,
            next_attempt_at: 0,
            last_error: None,
            interrupted: false,
            build_id: None,
            web_url: None,
            warning: None,
            finished_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Secret;

    #[tokio::test]
    async fn wrong_master_key_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let first = StorageSettings {
            path: path.clone(),
            master_key: Some(Secret::new(TokenCipher::generate_key())),
        };
        drop(Store::open(&first).unwrap());
        let second = StorageSettings {
            path,
            master_key: Some(Secret::new(TokenCipher::generate_key())),
        };
        let err = Store::open(&second).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey(_)), "{err}");
        assert!(err.to_string().contains("master key does not match"));
    }

    #[tokio::test]
    async fn a_store_in_use_is_refused_clearly() {
        let (dir, store) = test_support::temp_store();
        let settings = StorageSettings {
            path: dir.path().join("data"),
            master_key: None,
        };
        let err = Store::open(&settings).unwrap_err().to_string();
        assert!(err.contains("in use by another bb2tc process"), "{err}");
        drop(store);
        assert!(Store::open(&settings).is_ok());
    }

    #[tokio::test]
    async fn commit_is_shared_and_succeeds() {
        let (_dir, store) = test_support::temp_store();
        let store = std::sync::Arc::new(store);
        let mut waits = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            waits.push(tokio::spawn(async move { store.probe_write().await }));
        }
        for wait in waits {
            wait.await.unwrap().unwrap();
        }
    }
}
