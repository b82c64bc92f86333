//! Jobs as the intake applied them, a few to a sled value (store format 6).
//!
//! Each job a delivery makes used to cost the applier two sled inserts — its record in
//! `jobs` and its entry in `latest_jobs` — about 18 µs a delivery, the gap left to SPEC
//! §11's ingest target (BENCHMARKS.md). Now the applier writes the new jobs of a batch into
//! `fresh_jobs`, [`CHUNK`] to a value (key: the batch's last intake sequence number, then
//! the chunk's index), and this module keeps in memory ([`Index`]) which of them are still
//! as they arrived, and which one is the newest of its coalescing key. Until its first
//! change a job is read from its chunk.
//!
//! **Leaving.** The first change of a fresh job — claimed, coalesced away by a newer push,
//! removed — takes it out of its chunk: the changed job goes to `jobs` or `finished_jobs`
//! as any job does (or nowhere, when deleted), and `fresh_gone` gets `chunk key ++ job id`,
//! in the same transaction. When the last job of a chunk leaves, the chunk and its
//! `fresh_gone` keys are removed instead.
//!
//! **The coalescing index** is this overlay first, `latest_jobs` after. A fresh job that is
//! the newest of its key is named by the overlay only (its chunk says so: `sets_latest`).
//! When it leaves, its entry moves into `latest_jobs`, as the applier would have written it
//! before; a transaction that writes `latest_jobs` for a key whose newest job is still
//! fresh first moves that job out of its chunk (unchanged), so that start-up, which rebuilds
//! the overlay from the chunks, never brings back an entry a later write replaced.
//!
//! **Locking.** Every transaction over the job trees holds the index's lock from before it
//! starts until the index has taken the transaction's [`Change`], so the two never
//! disagree; a transaction that sled retries starts again from an empty change.
//!
//! Start-up reads only the chunks' headers and `fresh_gone`'s keys: each entry names its
//! job's id and coalescing key before the record.

use super::records::{decode, encode};
use crate::job::Job;
use crate::store::StoreError;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The tree of chunks.
pub(super) const CHUNKS: &str = "fresh_jobs";
/// The tree of the jobs that left a chunk still stored.
pub(super) const GONE: &str = "fresh_gone";
/// Jobs per chunk. A sled leaf holds up to 17 values before it splits, and a node of more
/// than 128 KiB is written to a file of its own; 16 jobs of ~0.4 KB keep a leaf under that.
pub(super) const CHUNK: usize = 16;

/// A chunk's key: the intake sequence number of its batch, then its index in the batch.
pub(super) type ChunkKey = [u8; 10];

fn chunk_key(seq: u64, index: u16) -> ChunkKey {
    let mut key = [0; 10];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn gone_key(chunk: &ChunkKey, id: u64) -> [u8; 18] {
    let mut key = [0; 18];
    key[..10].copy_from_slice(chunk);
    key[10..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The layout of a chunk: this byte, the entry count (u16), then each entry: job id (u64),
/// whether it is the newest of its key as written (u8), coalescing key length (u16) and
/// key, record length (u32) and the job's record ([`encode`]). Big-endian throughout.
const CHUNK_VERSION: u8 = 1;

/// One job in a chunk.
struct Entry<'a> {
    id: u64,
    sets_latest: bool,
    key: &'a [u8],
    record: &'a [u8],
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("a chunk of fresh jobs is cut short or of an unknown layout".into())
}

/// The entries of a chunk.
fn entries(bytes: &[u8]) -> Result<Vec<Entry<'_>>, StoreError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if bytes.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut rest = bytes;
    if take(&mut rest, 1)? != [CHUNK_VERSION] {
        return Err(corrupt());
    }
    let count = u16::from_be_bytes(take(&mut rest, 2)?.try_into().map_err(|_| corrupt())?);
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let id = u64::from_be_bytes(take(&mut rest, 8)?.try_into().map_err(|_| corrupt())?);
        let sets_latest = take(&mut rest, 1)? == [1];
        let key_len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().map_err(|_| corrupt())?);
        let key = take(&mut rest, usize::from(key_len))?;
        let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().map_err(|_| corrupt())?);
        let record = take(&mut rest, usize::try_from(len).map_err(|_| corrupt())?)?;
        out.push(Entry {
            id,
            sets_latest,
            key,
            record,
        });
    }
    Ok(out)
}

/// A job added in the transaction under way, encoded already.
struct New {
    id: u64,
    sets_latest: bool,
    key: Vec<u8>,
    record: Vec<u8>,
}

fn encode_chunk(jobs: &[&New]) -> Result<Vec<u8>, StoreError> {
    let size: usize = jobs.iter().map(|n| 19 + n.key.len() + n.record.len()).sum();
    let mut out = Vec::with_capacity(3 + size);
    out.push(CHUNK_VERSION);
    let count = u16::try_from(jobs.len()).map_err(|_| corrupt())?;
    out.extend_from_slice(&count.to_be_bytes());
    for new in jobs {
        let key_len = u16::try_from(new.key.len())
            .map_err(|_| StoreError::Corrupt("a coalescing key of over 64 KiB".into()))?;
        out.extend_from_slice(&new.id.to_be_bytes());
        out.push(u8::from(new.sets_latest));
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(&new.key);
        let len = u32::try_from(new.record.len()).map_err(|_| corrupt())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&new.record);
    }
    Ok(out)
}

/// A chunk, as the index knows it.
#[derive(Debug)]
struct ChunkState {
    /// Its jobs.
    len: usize,
    /// Those that have left it (each has its `fresh_gone` key).
    gone: Vec<u64>,
}

/// What is fresh, in memory.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Fresh job → its chunk.
    by_id: HashMap<u64, ChunkKey>,
    chunks: HashMap<ChunkKey, ChunkState>,
    /// Coalescing key → the fresh job that is its newest.
    latest: HashMap<Box<[u8]>, u64>,
}

impl Index {
    /// Reads the index from the chunks and the jobs gone from them (at open). A chunk that
    /// cannot be read is left out and returned, to be set aside.
    fn load(chunks: &sled::Tree, gone: &sled::Tree) -> Result<(Self, Vec<Unreadable>), StoreError> {
        let mut gone_ids: HashMap<ChunkKey, Vec<u64>> = HashMap::new();
        for item in gone.iter() {
            let (key, _) = item?;
            let (Ok(chunk), Ok(id)) = (
                ChunkKey::try_from(&key[..key.len().min(10)]),
                <[u8; 8]>::try_from(&key[key.len().min(10)..]),
            ) else {
                return Err(corrupt());
            };
            gone_ids
                .entry(chunk)
                .or_default()
                .push(u64::from_be_bytes(id));
        }
        let mut index = Self::default();
        let mut unreadable = Vec::new();
        for item in chunks.iter() {
            let (key, bytes) = item?;
            let (chunk, entries) = match ChunkKey::try_from(key.as_ref()).map_err(|_| corrupt()) {
                Ok(chunk) => match entries(&bytes) {
                    Ok(entries) => (chunk, entries),
                    Err(e) => {
                        unreadable.push((key.to_vec(), bytes.to_vec(), e));
                        continue;
                    }
                },
                Err(e) => {
                    unreadable.push((key.to_vec(), bytes.to_vec(), e));
                    continue;
                }
            };
            let gone = gone_ids.remove(&chunk).unwrap_or_default();
            for entry in &entries {
                let left = gone.contains(&entry.id);
                if !left {
                    index.by_id.insert(entry.id, chunk);
                }
                // In the order written: a later newest replaces an earlier one; one that
                // left has handed its entry to `latest_jobs`.
                if entry.sets_latest {
                    if left {
                        if index.latest.get(entry.key) == Some(&entry.id) {
                            index.latest.remove(entry.key);
                        }
                    } else {
                        index.latest.insert(entry.key.into(), entry.id);
                    }
                }
            }
            index.chunks.insert(
                chunk,
                ChunkState {
                    len: entries.len(),
                    gone,
                },
            );
        }
        Ok((index, unreadable))
    }

    /// Takes what a committed transaction changed.
    fn apply(&mut self, change: Change) {
        for (chunk, ids) in change.left {
            for id in &ids {
                self.by_id.remove(id);
            }
            if let Some(state) = self.chunks.get_mut(&chunk) {
                state.gone.extend(ids);
                if state.gone.len() >= state.len {
                    self.chunks.remove(&chunk);
                }
            }
        }
        for (chunk, ids) in change.added {
            for &id in &ids {
                self.by_id.insert(id, chunk);
            }
            self.chunks.insert(
                chunk,
                ChunkState {
                    len: ids.len(),
                    gone: Vec::new(),
                },
            );
        }
        for (key, newest) in change.latest {
            match newest {
                Some(id) => self.latest.insert(key.into_boxed_slice(), id),
                None => self.latest.remove(key.as_slice()),
            };
        }
    }

    /// How many jobs are fresh.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether job `id` is fresh.
    pub fn holds(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Every fresh job, in the order the intake applied them.
    pub fn jobs(&self, chunks: &sled::Tree) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::with_capacity(self.by_id.len());
        for item in chunks.iter() {
            let (key, bytes) = item?;
            let Some(state) = ChunkKey::try_from(key.as_ref())
                .ok()
                .and_then(|key| self.chunks.get(&key))
            else {
                continue;
            };
            for entry in entries(&bytes)? {
                if !state.gone.contains(&entry.id)
                    && let Some(job) = decode_job(entry.id, entry.record)
                {
                    out.push(job);
                }
            }
        }
        Ok(out)
    }

    /// The fresh jobs' ids, in no order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_id.keys().copied()
    }

    /// The highest fresh job id.
    pub fn max_id(&self) -> Option<u64> {
        self.by_id.keys().copied().max()
    }

    /// The overlay's entries (coalescing key, job id).
    pub fn latest(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.latest.iter().map(|(k, &id)| (k.as_ref(), id))
    }

    /// A fresh job, read from its chunk (outside a transaction).
    pub fn job(&self, chunks: &sled::Tree, id: u64) -> Result<Option<Job>, StoreError> {
        let Some(chunk) = self.by_id.get(&id) else {
            return Ok(None);
        };
        let bytes = chunks.get(chunk)?.ok_or_else(corrupt)?;
        job_in(&bytes, id)
    }
}

fn job_in(chunk: &[u8], id: u64) -> Result<Option<Job>, StoreError> {
    Ok(entries(chunk)?
        .into_iter()
        .find(|e| e.id == id)
        .and_then(|entry| decode_job(id, entry.record)))
}

/// A fresh job's record; one that cannot be read counts as absent (it is logged; its
/// chunk stays, as the others in it can be read).
fn decode_job(id: u64, record: &[u8]) -> Option<Job> {
    match decode::<Job>(record) {
        Ok(job) => Some(job),
        Err(error) => {
            tracing::error!(job = id, %error, "a fresh job's record cannot be read; it is skipped");
            None
        }
    }
}

/// A chunk that cannot be read: key, value, why.
pub(super) type Unreadable = (Vec<u8>, Vec<u8>, StoreError);

/// The fresh jobs and their lock.
#[derive(Debug)]
pub(super) struct Fresh {
    index: Mutex<Index>,
}

impl Fresh {
    /// The index as `fresh_jobs` and `fresh_gone` hold it, and the chunks that cannot be
    /// read (left out, to be set aside).
    pub fn load(
        chunks: &sled::Tree,
        gone: &sled::Tree,
    ) -> Result<(Self, Vec<Unreadable>), StoreError> {
        let (index, unreadable) = Index::load(chunks, gone)?;
        Ok((
            Self {
                index: Mutex::new(index),
            },
            unreadable,
        ))
    }

    /// The index, for a transaction (held until it has taken the change) or a read.
    pub fn lock(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a transaction changes of the index.
#[derive(Debug, Default)]
pub(super) struct Change {
    /// Fresh jobs that left, by chunk.
    left: HashMap<ChunkKey, Vec<u64>>,
    /// Chunks written.
    added: Vec<(ChunkKey, Vec<u64>)>,
    /// Overlay entries: the fresh job now newest of the key, or `None` (`latest_jobs` says).
    latest: HashMap<Vec<u8>, Option<u64>>,
}

impl Change {
    /// Hands the change to the index (after the transaction committed).
    pub fn apply_to(self, index: &mut Index) {
        index.apply(self);
    }
}

/// The fresh jobs inside one transaction: the index as committed, and this transaction's
/// change to it.
pub(super) struct FreshTx<'a> {
    chunks: &'a TransactionalTree,
    gone: &'a TransactionalTree,
    index: &'a Index,
    change: RefCell<Change>,
    /// Jobs added in this transaction, not in a chunk yet (`None`: left again), and where
    /// each is.
    new: RefCell<Vec<Option<New>>>,
    new_at: RefCell<HashMap<u64, usize>>,
}

impl<'a> FreshTx<'a> {
    pub fn new(
        chunks: &'a TransactionalTree,
        gone: &'a TransactionalTree,
        index: &'a Index,
    ) -> Self {
        Self {
            chunks,
            gone,
            index,
            change: RefCell::default(),
            new: RefCell::default(),
            new_at: RefCell::default(),
        }
    }

    fn left(&self, id: u64) -> bool {
        let change = self.change.borrow();
        self.index
            .by_id
            .get(&id)
            .is_some_and(|chunk| change.left.get(chunk).is_some_and(|ids| ids.contains(&id)))
    }

    /// Whether job `id` is fresh: in a chunk and not left, or added in this transaction.
    pub fn holds(&self, id: u64) -> bool {
        (self.index.by_id.contains_key(&id) && !self.left(id))
            || self.new_at.borrow().contains_key(&id)
    }

    /// A fresh job (`None`: not fresh).
    pub fn get(&self, id: u64) -> TxResult<Option<Job>> {
        if let Some(&at) = self.new_at.borrow().get(&id) {
            return Ok(self.new.borrow()[at]
                .as_ref()
                .and_then(|n| decode_job(id, &n.record)));
        }
        let Some(chunk) = self.index.by_id.get(&id).filter(|_| !self.left(id)) else {
            return Ok(None);
        };
        let bytes = self
            .chunks
            .get(chunk)?
            .ok_or_else(|| ConflictableTransactionError::Abort(corrupt()))?;
        job_in(&bytes, id).map_err(ConflictableTransactionError::Abort)
    }

    /// The coalescing key of job `id` in `chunk`.
    fn key_of(&self, chunk: &ChunkKey, id: u64) -> TxResult<Option<Vec<u8>>> {
        let bytes = self
            .chunks
            .get(chunk)?
            .ok_or_else(|| ConflictableTransactionError::Abort(corrupt()))?;
        let entries = entries(&bytes).map_err(ConflictableTransactionError::Abort)?;
        Ok(entries
            .into_iter()
            .find(|e| e.id == id)
            .map(|e| e.key.to_vec()))
    }

    /// The fresh job that is the newest of `key`; `None`: `latest_jobs` says.
    pub fn newest(&self, key: &[u8]) -> Option<u64> {
        match self.change.borrow().latest.get(key) {
            Some(newest) => *newest,
            None => self.index.latest.get(key).copied(),
        }
    }

    /// Sets the overlay's entry for `key`.
    pub fn set_newest(&self, key: &[u8], newest: Option<u64>) {
        self.change.borrow_mut().latest.insert(key.to_vec(), newest);
    }

    /// Adds a job to the chunks this transaction writes ([`write_chunks`](Self::write_chunks)).
    pub fn add(&self, job: &Job, sets_latest: bool, key: Vec<u8>) -> TxResult<()> {
        let record = encode(job).map_err(ConflictableTransactionError::Abort)?;
        let mut new = self.new.borrow_mut();
        self.new_at.borrow_mut().insert(job.id, new.len());
        new.push(Some(New {
            id: job.id,
            sets_latest,
            key,
            record,
        }));
        Ok(())
    }

    /// Takes fresh job `id` out of its chunk (it changed or went). Returns its coalescing
    /// key when the overlay named it the newest of it (the entry is dropped: the caller
    /// writes it to `latest_jobs`).
    pub fn leave(&self, id: u64) -> TxResult<Option<Vec<u8>>> {
        let added = self.new_at.borrow_mut().remove(&id);
        if let Some(at) = added {
            // Added and replaced in one batch: it never reaches a chunk, and the newer
            // job takes its overlay entry.
            if let Some(new) = self.new.borrow_mut()[at].take()
                && self.newest(&new.key) == Some(id)
            {
                self.set_newest(&new.key, None);
            }
            return Ok(None);
        }
        let Some(chunk) = self.index.by_id.get(&id).copied() else {
            return Ok(None);
        };
        let key = self.key_of(&chunk, id)?;
        {
            let mut change = self.change.borrow_mut();
            let left = change.left.entry(chunk).or_default();
            left.push(id);
            let state = &self.index.chunks[&chunk];
            if state.gone.len() + left.len() >= state.len {
                // Its last job: the chunk goes, and what marked the others gone.
                self.chunks.remove(&chunk)?;
                for &gone in state.gone.iter().chain(left.iter()) {
                    self.gone.remove(&gone_key(&chunk, gone))?;
                }
            } else {
                self.gone.insert(&gone_key(&chunk, id), &[])?;
            }
        }
        let Some(key) = key else {
            return Ok(None);
        };
        if self.newest(&key) == Some(id) {
            self.set_newest(&key, None);
            Ok(Some(key))
        } else {
            Ok(None)
        }
    }

    /// Writes the jobs added in this transaction as chunks of batch `seq`.
    pub fn write_chunks(&self, seq: u64) -> TxResult<()> {
        let added = self.new.borrow();
        let new: Vec<&New> = added.iter().flatten().collect();
        for (index, jobs) in new.chunks(CHUNK).enumerate() {
            let key = chunk_key(seq, u16::try_from(index).unwrap_or(u16::MAX));
            let bytes = encode_chunk(jobs).map_err(ConflictableTransactionError::Abort)?;
            self.chunks.insert(&key, bytes)?;
            self.change
                .borrow_mut()
                .added
                .push((key, jobs.iter().map(|n| n.id).collect()));
        }
        Ok(())
    }

    /// What this transaction changed of the index.
    pub fn into_change(self) -> Change {
        self.change.into_inner()
    }
}
