//! How stored values are written: a format version, then the record (SPEC §7).
//!
//! Every record starts with one byte, its format version, followed by the postcard encoding
//! of that version's layout. postcard is positional — a field added to a struct changes
//! what every old record means — so a layout never changes under a version: a new layout
//! gets the next version, and [`Record::decode_version`] turns each older version into the
//! current type (migration on read). Writes always use the current version.
//!
//! Version 0 is the unversioned postcard of bb2tc up to commit a84aaec, which had no leading
//! byte; such records are only found in a store whose `meta` has no format version, and
//! `migrate` rewrites all of them at the first start of a newer bb2tc.
//!
//! | record | version | layout |
//! |---|---|---|
//! | job | 0, 1 | [`JobV1`]: no pull request, `cancel_superseded`, `supersedes`, `purpose` |
//! | job | 2 | [`Job`] as it is |
//! | delivery | 0, 1 | [`DeliveryRecordV1`]: no user, no repository |
//! | delivery | 2 | [`DeliveryRecord`] as it is |
//! | session | 0, 1 | [`Session`] as it is |
//! | token | 0 | [`StoredTokenV0`]: no `revision` |
//! | token | 1 | [`StoredToken`]: `revision` counts replacements |
//! | de-duplication mark | 0 | 8 bytes, big-endian ms; 1: the same after the version byte |
//!
//! De-duplication marks are keyed by what they stand for: a delivery id, or (since 551746f)
//! a build — [`Job::dedup_key`]. Older releases keyed changes by (source, repository, ref,
//! commit); such marks are still looked at until they expire (24 h), never written.

use super::job_v1::{DeliveryRecordV1, JobV1};
use super::tokens::{StoredToken, StoredTokenV0};
use crate::job::Job;
use crate::store::{DeliveryRecord, Session, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value kept in the store under a format version.
pub(super) trait Record: Serialize + DeserializeOwned {
    /// What it is, for error messages.
    const KIND: &'static str;
    /// The version written now.
    const VERSION: u8;

    /// Decodes a record body written at `version` into the current type.
    fn decode_version(version: u8, body: &[u8]) -> Result<Self, String> {
        if version <= Self::VERSION {
            postcard::from_bytes(body).map_err(|e| e.to_string())
        } else {
            Err(unknown_version(version))
        }
    }
}

fn unknown_version(version: u8) -> String {
    format!("format version {version} is newer than this bb2tc knows")
}

impl Record for Job {
    const KIND: &'static str = "job";
    const VERSION: u8 = 2;

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, String> {
        match version {
            0 | 1 => postcard::from_bytes::<JobV1>(body)
                .map(Job::from)
                .map_err(|e| e.to_string()),
            2 => postcard::from_bytes(body).map_err(|e| e.to_string()),
            other => Err(unknown_version(other)),
        }
    }
}

impl Record for DeliveryRecord {
    const KIND: &'static str = "delivery";
    const VERSION: u8 = 2;

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, String> {
        match version {
            0 | 1 => postcard::from_bytes::<DeliveryRecordV1>(body)
                .map(DeliveryRecord::from)
                .map_err(|e| e.to_string()),
            2 => postcard::from_bytes(body).map_err(|e| e.to_string()),
            other => Err(unknown_version(other)),
        }
    }
}

impl Record for Session {
    const KIND: &'static str = "session";
    const VERSION: u8 = 1;
}

impl Record for StoredToken {
    const KIND: &'static str = "token";
    const VERSION: u8 = 1;

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, String> {
        match version {
            0 => postcard::from_bytes::<StoredTokenV0>(body)
                .map(StoredToken::from)
                .map_err(|e| e.to_string()),
            1 => postcard::from_bytes(body).map_err(|e| e.to_string()),
            other => Err(unknown_version(other)),
        }
    }
}

/// The current encoding of `value`: version byte, then postcard.
pub(super) fn encode<T: Record>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![T::VERSION];
    postcard::to_io(value, &mut out)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a {}: {e}", T::KIND)))?;
    Ok(out)
}

/// Decodes a versioned record.
pub(super) fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Corrupt(format!("empty {} record", T::KIND)))?;
    // Version 0 has no version byte; it is never found after the migration.
    if version == 0 {
        return Err(StoreError::Corrupt(format!(
            "{} record with format version 0 in a migrated store",
            T::KIND
        )));
    }
    T::decode_version(version, body)
        .map_err(|e| StoreError::Corrupt(format!("{} record: {e}", T::KIND)))
}

/// Decodes a record of bb2tc up to a84aaec (no version byte).
pub(super) fn decode_unversioned<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode_version(0, bytes).map_err(|e| StoreError::Corrupt(format!("{} record: {e}", T::KIND)))
}

/// Version of a de-duplication mark written now.
const MARK_VERSION: u8 = 1;

/// A de-duplication mark: when the change or delivery was first seen.
pub(super) fn encode_mark(first_seen_ms: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = MARK_VERSION;
    out[1..].copy_from_slice(&first_seen_ms.to_be_bytes());
    out
}

/// The time in a mark; `None` when it is not one this bb2tc can read.
pub(super) fn decode_mark(bytes: &[u8]) -> Option<u64> {
    match bytes.split_first() {
        Some((&MARK_VERSION, rest)) => <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// A mark of bb2tc up to a84aaec: the 8 bytes alone.
pub(super) fn decode_unversioned_mark(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::job;

    #[test]
    fn records_carry_their_version_and_round_trip() {
        let job = job("main", 'a');
        let bytes = encode(&job).unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(decode::<Job>(&bytes).unwrap(), job);
    }

    #[test]
    fn jobs_of_version_1_and_0_read_as_pushes_without_cancellation() {
        let job = job("main", 'a');
        let mut old = vec![1];
        postcard::to_io(&JobV1::from(job.clone()), &mut old).unwrap();
        let read = decode::<Job>(&old).unwrap();
        assert_eq!(read, job);
        assert_eq!((read.pull_request, read.cancel_superseded), (None, false));
        assert!(read.supersedes.is_empty());
        // The unversioned form of a84aaec is version 1's layout without the byte.
        assert_eq!(decode_unversioned::<Job>(&old[1..]).unwrap(), job);
    }

    #[test]
    fn deliveries_of_version_1_read_without_user_or_repository() {
        let mut delivery = crate::store::test_support::delivery("d");
        delivery.user = Some("jdoe".into());
        delivery.repository = Some("PROJ/repo".into());
        let mut old = vec![1];
        postcard::to_io(&DeliveryRecordV1::from(delivery.clone()), &mut old).unwrap();
        let read = decode::<DeliveryRecord>(&old).unwrap();
        assert_eq!((read.user, read.repository), (None, None));
        assert_eq!(
            (read.id, read.received_at),
            (delivery.id.clone(), delivery.received_at)
        );
        assert_eq!(
            decode::<DeliveryRecord>(&encode(&delivery).unwrap()).unwrap(),
            delivery
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        let mut bytes = encode(&job("main", 'a')).unwrap();
        bytes[0] = 9;
        let err = decode::<Job>(&bytes).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
        assert!(decode::<Job>(&[]).is_err());
        assert!(decode::<Job>(&[1, 0xff, 0xff]).is_err());
        assert!(decode::<Job>(&[0, 1, 2]).is_err());
    }

    #[test]
    fn marks_are_versioned() {
        let mark = encode_mark(1234);
        assert_eq!(decode_mark(&mark), Some(1234));
        assert_eq!(decode_mark(&1234u64.to_be_bytes()), None);
        assert_eq!(decode_unversioned_mark(&1234u64.to_be_bytes()), Some(1234));
    }
}
