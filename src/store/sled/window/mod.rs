//! The de-duplication window of the sled backend: every delivery id and change mark of the
//! last 24 h, and the delivery records the listing shows, in files of their own beside
//! sled's (`window/`), not in sled's trees (store format 5; issue "ingest at the speed of an
//! fsync'd log").
//!
//! In sled, each delivery cost two more inserts (its record and each change's mark), and the
//! 24 h window at 100 deliveries/s would have been 17 million keys in sled's page table and
//! files. Here:
//!
//! - **Files.** Entries (`frame`) are appended to the newest of a run of slice files
//!   `window/<n>.keys`, one for at most 15 minutes of deliveries or 64 MiB. Writes are
//!   positional and not synced one by one: the intake log holds every delivery until a
//!   checkpoint has synced this file too ([`Window::sync`]), and each entry carries its
//!   intake sequence number, so the replay at start-up adds again exactly what is missing
//!   ([`Window::max_seq`]: the newest delivery whose record reads, the marks written
//!   before a record counting only with it). A slice that takes no more entries is synced, and its index is
//!   written beside it (`<n>.idx`), so a start-up reads 8 bytes per mark, not the entries.
//! - **Memory.** Each slice keeps an [`index::Index`] of its marks: a 32-bit fingerprint and
//!   the entry's offset, 8 bytes a mark. A lookup reads the entries whose fingerprint
//!   matches (about one lookup in a thousand at 24 h × 100/s, besides true duplicates) and
//!   compares the key: an answer is exact, never a guess. The newest [`RECENT`] delivery
//!   records are kept in memory for the listing.
//! - **Expiry.** A slice whose newest entry is older than the window is deleted
//!   ([`Window::prune`]); an older entry in a newer slice is skipped by the lookup, which
//!   checks each entry's time.

mod frame;
mod index;

use super::records::{decode, encode};
use crate::store::dump::delivery_mark;
use crate::store::{DEDUP_WINDOW_MS, DeliveryRecord, StoreError};
pub use frame::Entry;
pub use frame::Kind;
use frame::fingerprint;
use index::Index;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The directory of the window, inside the store's.
pub const DIR: &str = "window";

/// A slice takes entries received within this time of its first.
const SLICE_SPAN_MS: u64 = 15 * 60 * 1000;

/// A slice takes no more entries once its file is this long.
const SLICE_MAX_BYTES: u64 = 64 << 20;

/// How many delivery records the listing can show (the admin API's largest `limit`).
pub const RECENT: usize = 10_000;

/// One entry to add.
#[derive(Debug, Clone, Copy)]
pub struct New<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub received_at: u64,
    pub key: &'a [u8],
    pub record: &'a [u8],
}

#[derive(Debug)]
struct Slice {
    number: u64,
    file: Arc<File>,
    /// Bytes of entries in the file (the rest, if any, is not read).
    len: u64,
    index: Index,
    /// When its first entry was received (`None`: it has none yet).
    first_at: Option<u64>,
    newest_at: u64,
    max_seq: u64,
    marks: u64,
    deliveries: u64,
    /// Synced, its index written: it takes no more entries.
    sealed: bool,
}

impl Slice {
    /// A slice that takes entries, with none counted yet: `len` bytes of the file hold
    /// entries, to be [`add`](Self::add)ed by whoever read them.
    fn unsealed(number: u64, file: File, len: u64) -> Self {
        Self {
            number,
            file: Arc::new(file),
            len,
            index: Index::default(),
            first_at: None,
            newest_at: 0,
            max_seq: 0,
            marks: 0,
            deliveries: 0,
            sealed: false,
        }
    }

    /// Whether it takes an entry received at `received_at` (`by_time`: only within
    /// [`SLICE_SPAN_MS`] of its first).
    fn takes(&self, received_at: u64, by_time: bool) -> bool {
        !self.sealed
            && self.len < SLICE_MAX_BYTES
            && (!by_time
                || self
                    .first_at
                    .is_none_or(|first| received_at < first.saturating_add(SLICE_SPAN_MS)))
    }

    fn add(&mut self, new: &New<'_>, offset: u32) {
        if new.kind.is_mark() {
            self.index.push(fingerprint(new.kind, new.key), offset);
            self.marks += 1;
        }
        if new.kind.is_delivery() {
            self.deliveries += 1;
        }
        self.first_at.get_or_insert(new.received_at);
        self.newest_at = self.newest_at.max(new.received_at);
        self.max_seq = self.max_seq.max(new.seq);
    }
}

/// What the window holds, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Delivery ids and change marks.
    pub marks: u64,
    /// Delivery records.
    pub deliveries: u64,
    /// Bytes of index in memory.
    pub index_bytes: u64,
    pub slices: usize,
}

/// The open window.
#[derive(Debug)]
pub struct Window {
    dir: PathBuf,
    /// Oldest first; the last is the one written to.
    slices: RwLock<Vec<Slice>>,
    /// One writer at a time; lookups go on meanwhile.
    writing: Mutex<()>,
    recent: Mutex<VecDeque<DeliveryRecord>>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    super::io_error(path, e)
}

fn keys_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.keys"))
}

fn idx_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.idx"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Window {
    /// Opens (creating if missing) the window in `dir`: each slice's index read from its
    /// index file, or rebuilt from its entries; a torn end cut off.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let name = item.map_err(|e| io(dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".keys")
                .and_then(|n| n.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut slices = Vec::with_capacity(numbers.len());
        for number in numbers {
            slices.push(open_slice(dir, number)?);
        }
        let window = Self {
            dir: dir.to_owned(),
            slices: RwLock::new(slices),
            writing: Mutex::new(()),
            recent: Mutex::new(VecDeque::new()),
        };
        window.fill_recent()?;
        Ok(window)
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Slice>> {
        self.slices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Slice>> {
        self.slices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest [`RECENT`] delivery records, from the newest slices back.
    fn fill_recent(&self) -> Result<(), StoreError> {
        let files: Vec<(u64, Arc<File>, u64)> = self
            .read()
            .iter()
            .rev()
            .map(|s| (s.number, s.file.clone(), s.len))
            .collect();
        let mut recent = VecDeque::new();
        for (number, file, len) in files {
            if recent.len() >= RECENT {
                break;
            }
            let bytes =
                read_prefix(&file, len).map_err(|e| io(&keys_path(&self.dir, number), e))?;
            let (entries, _) = frame::read_all(&bytes);
            let records: Vec<DeliveryRecord> = entries
                .into_iter()
                .filter(|(_, e)| e.kind.is_delivery())
                .filter_map(|(_, e)| decode(&e.record).ok())
                .collect();
            for record in records.into_iter().rev() {
                if recent.len() >= RECENT {
                    break;
                }
                recent.push_front(record);
            }
        }
        *lock(&self.recent) = recent;
        Ok(())
    }

    /// Whether `key` of `kind` was added within the window before `now`.
    pub fn seen(&self, kind: Kind, key: &[u8], now: u64) -> Result<bool, StoreError> {
        let key = &key[..key.len().min(frame::MAX_KEY)];
        let fp = fingerprint(kind, key);
        let slices = self.read();
        for slice in slices.iter().rev() {
            if slice.marks == 0 || now.saturating_sub(slice.newest_at) >= DEDUP_WINDOW_MS {
                continue;
            }
            for offset in slice.index.candidates(fp) {
                let entry = read_entry(&slice.file, offset)
                    .map_err(|e| io(&keys_path(&self.dir, slice.number), e))?;
                if entry.as_ref().is_some_and(|e| {
                    e.kind == kind
                        && e.key == key
                        && now.saturating_sub(e.received_at) < DEDUP_WINDOW_MS
                }) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether delivery `id` was recorded (as a mark) within the window.
    pub fn seen_delivery(&self, id: &str, now: u64) -> Result<bool, StoreError> {
        self.seen(Kind::MarkedDelivery, id.as_bytes(), now)
    }

    /// Whether a change's mark was added within the window.
    pub fn seen_change(&self, mark: &[u8], now: u64) -> Result<bool, StoreError> {
        self.seen(Kind::Change, mark, now)
    }

    /// The highest intake sequence number the window holds (0: none).
    pub fn max_seq(&self) -> u64 {
        self.read().iter().map(|s| s.max_seq).max().unwrap_or(0)
    }

    /// Appends entries (one write), and keeps the delivery records among them for the
    /// listing. Not synced: see [`sync`](Self::sync).
    pub fn add(&self, new: &[New<'_>]) -> Result<(), StoreError> {
        self.append(new, true)
    }

    /// [`add`](Self::add) for entries of any age, in any order (a migrated or loaded
    /// store): the slice is changed for size only, not to keep 15 minutes a slice.
    pub fn import(&self, new: &[New<'_>]) -> Result<(), StoreError> {
        self.append(new, false)
    }

    fn append(&self, new: &[New<'_>], by_time: bool) -> Result<(), StoreError> {
        let Some(first) = new.first() else {
            return Ok(());
        };
        let _one_writer = lock(&self.writing);
        let takes = self
            .read()
            .last()
            .is_some_and(|s| s.takes(first.received_at, by_time));
        if !takes {
            self.roll()?;
        }
        let (number, file, start) = {
            let slices = self.read();
            let last = slices.last().ok_or_else(|| {
                StoreError::Corrupt("the de-duplication window has no slice".into())
            })?;
            (last.number, last.file.clone(), last.len)
        };
        let mut bytes =
            Vec::with_capacity(new.iter().map(|n| 32 + n.key.len() + n.record.len()).sum());
        let mut offsets = Vec::with_capacity(new.len());
        for n in new {
            let offset = start + bytes.len() as u64;
            offsets.push(u32::try_from(offset).map_err(|_| {
                StoreError::Corrupt("a de-duplication window slice beyond 4 GiB".into())
            })?);
            frame::encode(&mut bytes, n.kind, n.seq, n.received_at, n.key, n.record);
        }
        let path = keys_path(&self.dir, number);
        file.write_all_at(&bytes, start).map_err(|e| io(&path, e))?;
        {
            let mut slices = self.write();
            if let Some(last) = slices.last_mut() {
                for (n, offset) in new.iter().zip(offsets) {
                    last.add(n, offset);
                }
                last.len = start + bytes.len() as u64;
            }
        }
        let mut recent = lock(&self.recent);
        for n in new.iter().filter(|n| n.kind.is_delivery()) {
            if let Ok(record) = decode::<DeliveryRecord>(n.record) {
                if recent.len() >= RECENT {
                    recent.pop_front();
                }
                recent.push_back(record);
            }
        }
        Ok(())
    }

    /// Adds a delivery record (`marked`: its id de-duplicates its redeliveries).
    pub fn add_delivery(
        &self,
        record: &DeliveryRecord,
        marked: bool,
        seq: u64,
    ) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        self.add(&[New {
            kind: if marked {
                Kind::MarkedDelivery
            } else {
                Kind::Delivery
            },
            seq,
            received_at: record.received_at,
            key: record.id.as_bytes(),
            record: &bytes,
        }])
    }

    /// Seals the newest slice (synced, its index written) and starts the next.
    fn roll(&self) -> Result<(), StoreError> {
        let newest = self
            .read()
            .last()
            .map(|s| (s.number, s.file.clone(), s.sealed));
        if let Some((number, file, sealed)) = &newest
            && !sealed
        {
            file.sync_data()
                .map_err(|e| io(&keys_path(&self.dir, *number), e))?;
            let header = {
                let mut slices = self.write();
                let last = slices.last_mut().ok_or_else(|| {
                    StoreError::Corrupt("the de-duplication window lost a slice".into())
                })?;
                last.index.seal();
                last.sealed = true;
                IdxHeader::of(last)
            };
            let slices = self.read();
            if let Some(last) = slices.last() {
                write_idx(&idx_path(&self.dir, *number), &header, last.index.sorted())
                    .map_err(|e| io(&idx_path(&self.dir, *number), e))?;
            }
        }
        let number = newest.map_or(1, |(n, _, _)| n + 1);
        let path = keys_path(&self.dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        self.write().push(Slice::unsealed(number, file, 0));
        Ok(())
    }

    /// Makes everything added so far durable (before the intake log lets go of it).
    pub fn sync(&self) -> Result<(), StoreError> {
        let _one_writer = lock(&self.writing);
        let newest = self.read().last().map(|s| (s.number, s.file.clone()));
        if let Some((number, file)) = newest {
            file.sync_data()
                .map_err(|e| io(&keys_path(&self.dir, number), e))?;
        }
        Ok(())
    }

    /// Deletes the slices whose every entry is older than the window (not the newest);
    /// returns how many marks and delivery records went (a marked delivery is both).
    pub fn prune(&self, now: u64) -> Result<u64, StoreError> {
        let _one_writer = lock(&self.writing);
        let gone: Vec<Slice> = {
            let mut slices = self.write();
            let newest = slices.last().map(|s| s.number);
            let (gone, kept) = std::mem::take(&mut *slices).into_iter().partition(|s| {
                Some(s.number) != newest && now.saturating_sub(s.newest_at) >= DEDUP_WINDOW_MS
            });
            *slices = kept;
            gone
        };
        let mut removed = 0;
        for slice in &gone {
            for path in [
                keys_path(&self.dir, slice.number),
                idx_path(&self.dir, slice.number),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path, e)),
                }
            }
            removed += slice.marks + slice.deliveries;
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        lock(&self.recent).retain(|d| now.saturating_sub(d.received_at) < DEDUP_WINDOW_MS);
        Ok(removed)
    }

    /// The newest delivery records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<DeliveryRecord> {
        let recent = lock(&self.recent);
        let mut out: Vec<DeliveryRecord> = recent.iter().rev().take(limit).cloned().collect();
        out.sort_by_key(|d| std::cmp::Reverse(d.received_at));
        out
    }

    /// Every entry, oldest slice first (for a dump of the store).
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let files: Vec<(u64, Arc<File>, u64)> = self
            .read()
            .iter()
            .map(|s| (s.number, s.file.clone(), s.len))
            .collect();
        let mut out = Vec::new();
        for (number, file, len) in files {
            let bytes =
                read_prefix(&file, len).map_err(|e| io(&keys_path(&self.dir, number), e))?;
            out.extend(frame::read_all(&bytes).0.into_iter().map(|(_, e)| e));
        }
        Ok(out)
    }

    /// The delivery record an entry of [`entries`](Self::entries) carries.
    pub fn record_of(bytes: &[u8]) -> Option<DeliveryRecord> {
        decode(bytes).ok()
    }

    /// Test-only: cuts the newest slice's file before its first entry after `seq`, as a
    /// crash before the window's sync would leave it (read at the next open).
    #[cfg(test)]
    pub fn forget_after(&self, seq: u64) {
        self.cut_newest_slice(|entries| entries.into_iter().find(|(_, e)| e.seq > seq));
    }

    /// Test-only: cuts the newest slice's file right before its last delivery record, so the
    /// marks written with that record stay (a write cut short by a crash).
    #[cfg(test)]
    pub fn cut_before_last_record(&self) {
        self.cut_newest_slice(|entries| {
            let record = entries.into_iter().rfind(|(_, e)| e.kind.is_delivery());
            assert!(record.is_some(), "the newest slice has no delivery record");
            record
        });
    }

    /// Test-only: cuts the newest slice's file at the entry `pick` chooses (none: keeps it).
    #[cfg(test)]
    fn cut_newest_slice(
        &self,
        pick: impl FnOnce(Vec<(u32, frame::Entry)>) -> Option<(u32, frame::Entry)>,
    ) {
        let slices = self.read();
        let last = slices.last().unwrap();
        let bytes = read_prefix(&last.file, last.len).unwrap();
        let cut = pick(frame::read_all(&bytes).0).map_or(last.len, |(offset, _)| u64::from(offset));
        last.file.set_len(cut).unwrap();
    }

    pub fn counts(&self) -> WindowCounts {
        let slices = self.read();
        WindowCounts {
            marks: slices.iter().map(|s| s.marks).sum(),
            deliveries: slices.iter().map(|s| s.deliveries).sum(),
            index_bytes: slices.iter().map(|s| s.index.heap_bytes() as u64).sum(),
            slices: slices.len(),
        }
    }
}

/// The mark a dump carries for an entry of [`Window::entries`], if it is one.
pub fn dump_mark(kind: Kind, key: &[u8]) -> Option<Vec<u8>> {
    match kind {
        Kind::MarkedDelivery => Some(delivery_mark(&String::from_utf8_lossy(key))),
        Kind::Change => Some(key.to_vec()),
        Kind::Delivery => None,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn read_prefix(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// The entry at `offset`; `None` when it does not read (damaged since it was indexed).
fn read_entry(file: &File, offset: u32) -> std::io::Result<Option<Entry>> {
    let mut header = [0; frame::HEADER_BYTES];
    file.read_exact_at(&mut header, u64::from(offset))?;
    let Some(len) = frame::body_len(&header) else {
        return Ok(None);
    };
    let mut bytes = vec![0; frame::HEADER_BYTES + len];
    file.read_exact_at(&mut bytes, u64::from(offset))?;
    Ok(frame::decode(&bytes).ok().map(|(e, _)| e))
}

/// Opens slice `number`: from its index file when that matches the entries, else by
/// reading them (cutting off a torn end).
fn open_slice(dir: &Path, number: u64) -> Result<Slice, StoreError> {
    let path = keys_path(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    let file_len = file.metadata().map_err(|e| io(&path, e))?.len();
    if let Some((header, sorted)) = read_idx(&idx_path(dir, number), file_len) {
        return Ok(Slice {
            number,
            file: Arc::new(file),
            len: header.keys_len,
            index: Index::from_sorted(sorted),
            first_at: Some(header.first_at),
            newest_at: header.newest_at,
            max_seq: header.max_seq,
            marks: header.marks,
            deliveries: header.deliveries,
            sealed: true,
        });
    }
    let bytes = read_prefix(&file, file_len).map_err(|e| io(&path, e))?;
    let (entries, end) = frame::read_all(&bytes);
    let mut slice = Slice::unsealed(number, file, end as u64);
    for (offset, e) in &entries {
        slice.add(
            &New {
                kind: e.kind,
                seq: e.seq,
                received_at: e.received_at,
                key: &e.key,
                record: &e.record,
            },
            *offset,
        );
    }
    // A delivery's marks are written before its record, in one write: a crash (`kill -9`
    // between two pages of that write, or a power loss before the window's sync) can leave
    // the marks of the last delivery without its record. So the slice counts as holding a
    // sequence number only once that delivery's record is in it: the replay then adds the
    // whole delivery again (its marks twice, which a lookup does not mind), and its record
    // is never lost.
    slice.max_seq = entries
        .iter()
        .filter(|(_, e)| e.kind.is_delivery())
        .map(|(_, e)| e.seq)
        .max()
        .unwrap_or(0);
    if (end as u64) < file_len {
        // Written after the last sync: the intake log still holds it.
        tracing::warn!(slice = %path.display(), offset = end, "cut off the unsynced end of a de-duplication window file (its deliveries are added again from the intake log)");
        slice.file.set_len(end as u64).map_err(|e| io(&path, e))?;
        slice.file.sync_all().map_err(|e| io(&path, e))?;
    }
    Ok(slice)
}

const IDX_MAGIC: &[u8; 8] = b"bb2tcwx1";
const IDX_HEADER: usize = 8 + 4 + 7 * 8;

/// What an index file says of its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdxHeader {
    keys_len: u64,
    first_at: u64,
    newest_at: u64,
    max_seq: u64,
    marks: u64,
    deliveries: u64,
}

impl IdxHeader {
    fn of(slice: &Slice) -> Self {
        Self {
            keys_len: slice.len,
            first_at: slice.first_at.unwrap_or(0),
            newest_at: slice.newest_at,
            max_seq: slice.max_seq,
            marks: slice.marks,
            deliveries: slice.deliveries,
        }
    }
}

/// `[magic][CRC-32 of the rest][keys length][first at][newest at][max seq][marks]
/// [deliveries][count][count × u64 LE]`, written to a temporary file, synced and renamed.
fn write_idx(path: &Path, header: &IdxHeader, sorted: &[u64]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(IDX_HEADER + sorted.len() * 8);
    out.extend_from_slice(IDX_MAGIC);
    out.extend_from_slice(&[0; 4]);
    for v in [
        header.keys_len,
        header.first_at,
        header.newest_at,
        header.max_seq,
        header.marks,
        header.deliveries,
        sorted.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in sorted {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("idx.tmp");
    {
        let file = File::create(&tmp)?;
        file.write_all_at(&out, 0)?;
        file.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// An index file's header and marks, when it is whole and matches a keys file of
/// `keys_len` bytes.
fn read_idx(path: &Path, keys_len: u64) -> Option<(IdxHeader, Vec<u64>)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < IDX_HEADER || &bytes[..8] != IDX_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    if crc32fast::hash(&bytes[12..]) != crc {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(12 + i * 8..20 + i * 8)?.try_into().ok()?,
        ))
    };
    let header = IdxHeader {
        keys_len: word(0)?,
        first_at: word(1)?,
        newest_at: word(2)?,
        max_seq: word(3)?,
        marks: word(4)?,
        deliveries: word(5)?,
    };
    let count = usize::try_from(word(6)?).ok()?;
    let body = &bytes[IDX_HEADER..];
    if header.keys_len != keys_len || body.len() != count.checked_mul(8)? {
        return None;
    }
    let sorted = body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Some((header, sorted))
}

#[cfg(test)]
mod tests;
