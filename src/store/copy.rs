//! `bb2tc copy-store --from A --to B` (SPEC §7.1): every token, session, job, mark and
//! delivery record from one store to another — sled to PostgreSQL or back — with the bridge
//! stopped, into an empty destination, verified by counting what arrived.

use super::dump::Counts;
use super::{Store, StoreError};
use std::sync::Arc;

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source is still served.
    #[error(
        "the source store is in use (an instance holds a dispatch lease); stop every bb2tc first"
    )]
    InUse,
    /// The destination holds records already.
    #[error("the destination store is not empty ({0:?}); copy into a new store")]
    NotEmpty(Counts),
    /// What arrived does not match what left.
    #[error("the copy is incomplete: read {read:?}, the destination holds {written:?}")]
    Mismatch {
        /// Counted in the source.
        read: Counts,
        /// Counted in the destination.
        written: Counts,
    },
}

/// Copies everything from `from` into the empty `to`; what was copied.
pub async fn copy_store(from: &Store, to: &Store) -> Result<Counts, CopyError> {
    if from.in_use().await? {
        return Err(CopyError::InUse);
    }
    let already = to.counts().await?;
    if already != Counts::default() {
        return Err(CopyError::NotEmpty(already));
    }
    let dump = Arc::new(from.dump().await?);
    let read = dump.counts();
    to.load(dump).await?;
    let written = to.counts().await?;
    // sled keeps a delivery id's mark as its delivery record: a mark copied from PostgreSQL
    // without a record gets one, so there may be more records than were read.
    let complete = written.tokens == read.tokens
        && written.sessions == read.sessions
        && written.jobs == read.jobs
        && written.marks == read.marks
        && written.deliveries >= read.deliveries;
    if !complete {
        return Err(CopyError::Mismatch { read, written });
    }
    Ok(read)
}
