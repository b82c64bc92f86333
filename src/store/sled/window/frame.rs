//! The window's files: a run of framed entries, each
//! `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`, where the body is
//! `[kind: u8][intake sequence number: u64 LE][received at, ms: u64 LE][key length: u16 LE]
//! [key][record]`.
//!
//! Entries are written with positional writes and made durable by the fsync of a
//! checkpoint, so a crash can leave the end of the newest file torn; reading stops at the
//! first frame that does not check out, and what follows it was never synced.

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A delivery whose id de-duplicates its redeliveries; the record follows the key (its
    /// id).
    MarkedDelivery = 1,
    /// A delivery kept for the listing only (no id from Bitbucket, or answered without
    /// jobs: ignored, rejected, duplicate); the record follows the key.
    Delivery = 2,
    /// A change's de-duplication mark; no record.
    Change = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::MarkedDelivery),
            2 => Some(Self::Delivery),
            3 => Some(Self::Change),
            _ => None,
        }
    }

    /// Whether its key de-duplicates (is in the index).
    pub fn is_mark(self) -> bool {
        matches!(self, Self::MarkedDelivery | Self::Change)
    }

    /// Whether it carries a delivery record.
    pub fn is_delivery(self) -> bool {
        matches!(self, Self::MarkedDelivery | Self::Delivery)
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The intake-log sequence number it came from; 0 when it did not (a delivery answered
    /// without jobs, a migrated or loaded store).
    pub seq: u64,
    pub received_at: u64,
    pub key: Vec<u8>,
    /// The encoded [`DeliveryRecord`](crate::store::DeliveryRecord), for deliveries.
    pub record: Vec<u8>,
}

pub const HEADER_BYTES: usize = 8;
const FIXED_BODY: usize = 1 + 8 + 8 + 2;

/// A key longer than this is not kept (Bitbucket's request ids are UUIDs; marks are a
/// source, repository, ref, commit and build).
pub const MAX_KEY: usize = u16::MAX as usize;

/// A body longer than this is damage, not an entry.
const MAX_BODY: u32 = 16 << 20;

/// Appends the frame of an entry to `out`; its offset is `out.len()` before.
pub fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    seq: u64,
    received_at: u64,
    key: &[u8],
    record: &[u8],
) {
    let key = &key[..key.len().min(MAX_KEY)];
    let start = out.len();
    let body_len = FIXED_BODY + key.len() + record.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received_at.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(record);
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a frame header announces, if it could be one.
pub fn body_len(header: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?);
    (len as usize >= FIXED_BODY && len <= MAX_BODY).then_some(len as usize)
}

/// Decodes the frame at the start of `bytes`: the entry and the frame's length, or why it
/// does not read.
pub fn decode(bytes: &[u8]) -> Result<(Entry, usize), &'static str> {
    let header = bytes
        .get(..HEADER_BYTES)
        .ok_or("a frame header cut short")?;
    let len = body_len(header).ok_or("a frame length out of range")?;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let body = bytes
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or("a frame cut short")?;
    if crc32fast::hash(body) != crc {
        return Err("a frame whose checksum does not match");
    }
    let kind = Kind::from_byte(body[0]).ok_or("an entry of a kind this bb2tc does not know")?;
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let seq = u64_at(1);
    let received_at = u64_at(9);
    let key_len = usize::from(u16::from_le_bytes([body[17], body[18]]));
    let key = body
        .get(FIXED_BODY..FIXED_BODY + key_len)
        .ok_or("a key longer than its frame")?;
    Ok((
        Entry {
            kind,
            seq,
            received_at,
            key: key.to_vec(),
            record: body[FIXED_BODY + key_len..].to_vec(),
        },
        HEADER_BYTES + len,
    ))
}

/// The entries of a file's bytes with their offsets, and where the readable part ends.
pub fn read_all(bytes: &[u8]) -> (Vec<(u32, Entry)>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((entry, len)) => {
                entries.push((at as u32, entry));
                at += len;
            }
            Err(_) => break,
        }
    }
    (entries, at)
}

/// The fingerprint of a mark in the in-memory index: 32 bits, so a match is confirmed
/// against the file (the index never decides alone).
pub fn fingerprint(kind: Kind, key: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind as u8]);
    hasher.update(&key[..key.len().min(MAX_KEY)]);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_a_torn_or_damaged_one_ends_the_file() {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            Kind::MarkedDelivery,
            7,
            1000,
            b"id-1",
            b"\x02record",
        );
        let second = bytes.len();
        encode(
            &mut bytes,
            Kind::Change,
            7,
            1000,
            b"dc\0repo\0ref\0sha",
            b"",
        );
        let (entries, end) = read_all(&bytes);
        assert_eq!(end, bytes.len());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0 as usize, second);
        assert_eq!(entries[0].1.key, b"id-1");
        assert_eq!(entries[0].1.record, b"\x02record");
        assert_eq!(entries[1].1.kind, Kind::Change);
        assert_eq!((entries[1].1.seq, entries[1].1.received_at), (7, 1000));
        // Torn: the last frame cut short.
        let (entries, end) = read_all(&bytes[..bytes.len() - 3]);
        assert_eq!((entries.len(), end), (1, second));
        // Damaged: a flipped bit in the second frame's key.
        let mut damaged = bytes.clone();
        damaged[second + HEADER_BYTES + 20] ^= 1;
        let (entries, end) = read_all(&damaged);
        assert_eq!((entries.len(), end), (1, second));
        // Zeros (a file extended, never written) read as the end.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(read_all(&zeros).1, bytes.len());
    }
}
