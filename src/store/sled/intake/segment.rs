//! The intake log's files: segments `intake-<first sequence number>.log` in the store
//! directory, each a run of framed entries.
//!
//! A frame is `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`, and the
//! payload is a format version byte followed by the postcard encoding of
//! `(sequence number, Entry)`. The version says what the entry's layout is (like the store's
//! records, see `records`): version 1 (up to 551746f) holds jobs and deliveries of record
//! version 1, version 2 those of record version 2; a version-1 frame is read into the
//! current types.
//!
//! A segment is allocated with zeros before use, so its entries end where a frame header of
//! zeros begins. A crash can leave the last frame of the newest segment cut short (torn):
//! it was never acknowledged, and reading stops before it. Anything else that does not read — a frame
//! whose checksum fails in the middle of a segment — is damage, reported with its place.

use super::super::job_v1::{DeliveryRecordV1, JobV1};
use crate::job::Job;
use crate::store::{DeliveryRecord, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The layout of entries written now.
const ENTRY_VERSION: u8 = 2;

/// Frame header: length and checksum.
pub const HEADER_BYTES: usize = 8;

/// A frame longer than this is damage, not an entry (a delivery is at most
/// `server.max_jobs_per_delivery` jobs of a few hundred bytes each).
const MAX_PAYLOAD: u32 = 256 << 20;

/// One thing the log keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// An accepted delivery: its record, its new de-duplication marks and its jobs, with
    /// their ids. Applied to sled by the applier, and again at start-up if it was not.
    Delivery(Box<Accepted>),
    /// Job `job` went in flight for attempt `attempt` (already written to sled, not yet
    /// synced there): replayed only onto a job still pending at `attempt - 1`.
    Claim {
        /// The job.
        job: u64,
        /// Its attempt number once claimed.
        attempt: u32,
    },
    /// Written by the store's health probe (`/readyz`, healing); nothing to replay.
    Probe,
}

/// An accepted delivery as the log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The delivery record (with the changes skipped as already seen).
    pub delivery: DeliveryRecord,
    /// Whether the delivery id is a de-duplication mark (Bitbucket sent one).
    pub dedup_id: bool,
    /// The de-duplication marks of the changes that made jobs.
    pub marks: Vec<Vec<u8>>,
    /// The jobs, ids assigned.
    pub jobs: Vec<Job>,
}

/// [`Entry`] as frame version 1 laid it out: its jobs of record version 1.
#[derive(Serialize, Deserialize)]
enum EntryV1 {
    Delivery(AcceptedV1),
    Claim { job: u64, attempt: u32 },
    Probe,
}

#[derive(Serialize, Deserialize)]
struct AcceptedV1 {
    delivery: DeliveryRecordV1,
    dedup_id: bool,
    marks: Vec<Vec<u8>>,
    jobs: Vec<JobV1>,
}

impl From<EntryV1> for Entry {
    fn from(old: EntryV1) -> Self {
        match old {
            EntryV1::Delivery(a) => Entry::Delivery(Box::new(Accepted {
                delivery: a.delivery.into(),
                dedup_id: a.dedup_id,
                marks: a.marks,
                jobs: a.jobs.into_iter().map(Job::from).collect(),
            })),
            EntryV1::Claim { job, attempt } => Entry::Claim { job, attempt },
            EntryV1::Probe => Entry::Probe,
        }
    }
}

/// Frames `entry` with sequence number `seq`.
pub fn frame(seq: u64, entry: &Entry) -> Result<Vec<u8>, StoreError> {
    // Room for a push's delivery at once: postcard writes a byte or a field at a time.
    let mut out = Vec::with_capacity(1024);
    out.resize(HEADER_BYTES, 0);
    out.push(ENTRY_VERSION);
    postcard::to_io(&(seq, entry), &mut out)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode an intake entry: {e}")))?;
    let payload_len = u32::try_from(out.len() - HEADER_BYTES)
        .ok()
        .filter(|n| *n <= MAX_PAYLOAD)
        .ok_or_else(|| StoreError::Corrupt("intake entry too large".into()))?;
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub struct Read {
    /// The entries, in order.
    pub entries: Vec<(u64, Entry)>,
    /// Where the readable frames end.
    pub good_bytes: u64,
    /// Set when something follows them that does not read: why.
    pub bad_tail: Option<String>,
}

/// Reads the frames of a segment's bytes, stopping at the first that does not read.
pub fn read(bytes: &[u8]) -> Read {
    let mut read = Read::default();
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes[at..].iter().take(HEADER_BYTES).all(|&b| b == 0) {
            // The zeros a segment is allocated with: nothing was written from here on.
            break;
        }
        match next(&bytes[at..]) {
            Ok((seq, entry, len)) => {
                read.entries.push((seq, entry));
                at += len;
            }
            Err(why) => {
                read.bad_tail = Some(why);
                break;
            }
        }
    }
    read.good_bytes = at as u64;
    read
}

fn next(bytes: &[u8]) -> Result<(u64, Entry, usize), String> {
    let header = bytes
        .get(..HEADER_BYTES)
        .ok_or("a frame header cut short")?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
    if len == 0 || len > MAX_PAYLOAD {
        return Err(format!("a frame length of {len} bytes"));
    }
    let end = HEADER_BYTES + len as usize;
    let payload = bytes.get(HEADER_BYTES..end).ok_or("a frame cut short")?;
    if crc32fast::hash(payload) != crc {
        return Err("a frame whose checksum does not match".into());
    }
    match payload.split_first() {
        Some((&ENTRY_VERSION, body)) => postcard::from_bytes::<(u64, Entry)>(body)
            .map(|(seq, entry)| (seq, entry, end))
            .map_err(|e| format!("an entry that does not decode: {e}")),
        Some((1, body)) => postcard::from_bytes::<(u64, EntryV1)>(body)
            .map(|(seq, entry)| (seq, entry.into(), end))
            .map_err(|e| format!("an entry of format version 1 that does not decode: {e}")),
        Some((version, _)) => Err(format!(
            "an entry of format version {version}, newer than this bb2tc knows"
        )),
        None => Err("an empty frame".into()),
    }
}

/// The file name of the segment whose first entry is `first_seq`.
pub fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("intake-{first_seq:020}.log"))
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("intake-") && name.ends_with(".log") {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Makes the directory entries of `dir` durable (a segment created or removed).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::job;

    fn accepted(id: &str) -> Entry {
        Entry::Delivery(Box::new(Accepted {
            delivery: DeliveryRecord {
                id: id.into(),
                source: crate::ids::SourceId::new("dc"),
                event: "repo:refs_changed".into(),
                result: "accepted".into(),
                jobs: 1,
                skipped: vec![],
                received_at: 7,
                user: None,
                repository: None,
            },
            dedup_id: true,
            marks: vec![b"dc\0p/r\0refs/heads/main\0aaa".to_vec()],
            jobs: vec![job("main", 'a')],
        }))
    }

    #[test]
    fn frames_round_trip_and_a_torn_tail_stops_reading() {
        let mut bytes = frame(1, &accepted("a")).unwrap();
        bytes.extend(frame(2, &Entry::Claim { job: 3, attempt: 1 }).unwrap());
        let whole = bytes.len() as u64;
        let third = frame(3, &accepted("b")).unwrap();
        bytes.extend(&third[..third.len() - 5]);
        let read = read(&bytes);
        assert_eq!(read.entries.len(), 2);
        assert_eq!(read.entries[0], (1, accepted("a")));
        assert_eq!(read.entries[1], (2, Entry::Claim { job: 3, attempt: 1 }));
        assert_eq!(read.good_bytes, whole);
        assert_eq!(read.bad_tail.as_deref(), Some("a frame cut short"));
    }

    #[test]
    fn damage_is_found_not_misread() {
        let mut bytes = frame(1, &accepted("a")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let read = read(&bytes);
        assert!(read.entries.is_empty());
        assert_eq!(read.good_bytes, 0);
        assert!(read.bad_tail.unwrap().contains("checksum"));
        // A newer layout is refused by its version, not decoded as this one.
        let mut newer = frame(1, &accepted("a")).unwrap();
        newer[HEADER_BYTES] = 9;
        let crc = crc32fast::hash(&newer[HEADER_BYTES..]);
        newer[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(super::read(&newer).bad_tail.unwrap().contains("version 9"));
        assert!(super::read(&[0xff; 8]).bad_tail.is_some());
        // The zeros of a segment allocated ahead are its end, not damage.
        let mut allocated = frame(1, &accepted("a")).unwrap();
        allocated.extend([0u8; 64]);
        let read = super::read(&allocated);
        assert_eq!((read.entries.len(), read.bad_tail), (1, None));
        assert!(super::read(&[1, 0, 0]).bad_tail.is_some());
    }

    #[test]
    fn frames_of_version_1_read_into_the_current_entries() {
        let Entry::Delivery(current) = accepted("a") else {
            unreachable!()
        };
        let old = EntryV1::Delivery(AcceptedV1 {
            delivery: current.delivery.clone().into(),
            dedup_id: true,
            marks: current.marks.clone(),
            jobs: current.jobs.iter().cloned().map(JobV1::from).collect(),
        });
        let mut payload = vec![1];
        postcard::to_io(&(4u64, &old), &mut payload).unwrap();
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend(crc32fast::hash(&payload).to_le_bytes());
        bytes.extend(&payload);
        let read = read(&bytes);
        assert_eq!(read.bad_tail, None);
        assert_eq!(read.entries, vec![(4, accepted("a"))]);
    }
}
