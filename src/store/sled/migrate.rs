//! The store's format version, and the one-pass migrations: of a store written before
//! records carried one (bb2tc up to a84aaec), of the finished jobs into their own tree
//! (format 4), and of the delivery records and marks out of sled into the de-duplication
//! window (format 5, [`move_into_window`]); format 6 (fresh jobs, see `fresh`) moves nothing.
//!
//! `meta` holds `format_version`; a store without it is either new (empty) or from a84aaec.
//! The migration rewrites every record of the record trees with a version byte, in batches;
//! each batch is one transaction with a cursor in `meta` saying how far it got, so a crash
//! in the middle resumes where it stopped and never rewrites a record twice. A record that
//! cannot be read is set aside into the `unreadable` tree. The format version is written
//! last, after a flush of everything before it (sled's log keeps writes in order).

use super::records::{
    Record, decode, decode_mark, decode_unversioned, decode_unversioned_mark, encode, encode_mark,
};
use super::tokens::StoredToken;
use super::window::{self, Kind, New, Window};
use crate::job::Job;
use crate::store::{DeliveryRecord, Session, StoreError};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

/// The store format this bb2tc writes: 1 = every record starts with its version byte;
/// 2 = the same records, and deliveries reach them through the intake log (`intake-*.log`
/// beside sled's files; `meta` keeps the last delivery applied and the next job id). A
/// bb2tc of format 1 would not read that log, so it must refuse a format-2 store; 3 = job
/// and delivery records of version 2 and intake-log frames of version 2 (pull requests,
/// cancellation, followed builds, statuses; a delivery's user and repository),
/// which a bb2tc of format 2 would set aside as unreadable — so it must refuse them too;
/// 4 = finished jobs in `finished_jobs`, not `jobs` (a bb2tc of format 3 would not see
/// them); 5 = delivery records and marks in `window/`, not in sled's `deliveries` and
/// `seen_changes` (a bb2tc of format 4 would find none: every redelivery would build
/// again); 6 = the jobs the intake applies in chunks of `fresh_jobs` until their first change,
/// their coalescing-index entries with them (a bb2tc of format 5 would not see those jobs,
/// and would build a newer push twice beside them). Format 5 needs nothing moved: its jobs
/// stay where they are and every later one is written the new way. Formats 1 and 2 need no rewrite: their jobs and frames are read into the current
/// types. Every format before 4 has its finished jobs moved ([`move_finished_jobs`]), every
/// format before 5 its records and marks ([`move_into_window`]).
pub const FORMAT_VERSION: u8 = 6;

const FORMAT_KEY: &[u8] = b"format_version";
const CURSOR_KEY: &[u8] = b"migration_cursor";
const BATCH: usize = 500;

/// The record trees, in the order they are migrated, with how to rewrite each value.
/// Rewrites one stored value in the current format.
type Rewrite = fn(&[u8]) -> Result<Vec<u8>, StoreError>;

const TREES: [(&str, Rewrite); 5] = [
    ("tokens", rewrite::<StoredToken>),
    ("jobs", rewrite::<Job>),
    ("deliveries", rewrite::<DeliveryRecord>),
    ("sessions", rewrite::<Session>),
    ("seen_changes", rewrite_mark),
];

fn rewrite<T: Record>(old: &[u8]) -> Result<Vec<u8>, StoreError> {
    encode(&decode_unversioned::<T>(old)?)
}

fn rewrite_mark(old: &[u8]) -> Result<Vec<u8>, StoreError> {
    decode_unversioned_mark(old)
        .map(|ms| encode_mark(ms).to_vec())
        .ok_or_else(|| StoreError::Corrupt("de-duplication mark is not 8 bytes".into()))
}

/// Brings the store at `db` (in directory `dir`) to [`FORMAT_VERSION`]; refuses a store of
/// a newer bb2tc (whose records this one would misread). Returns how many records were
/// rewritten or moved.
pub fn migrate(
    db: &sled::Db,
    meta: &sled::Tree,
    unreadable: &sled::Tree,
    dir: &std::path::Path,
) -> Result<usize, StoreError> {
    match meta.get(FORMAT_KEY)?.as_deref() {
        Some([FORMAT_VERSION]) => return Ok(0),
        Some([old @ (1..=5)]) => {
            // Versioned records already: older jobs and log frames are read as they are.
            let mut moved = if *old < 4 { move_finished_jobs(db)? } else { 0 };
            db.flush()?;
            if *old < 5 {
                moved += move_into_window(db, unreadable, dir)?;
            }
            meta.insert(FORMAT_KEY, &[FORMAT_VERSION])?;
            db.flush()?;
            tracing::info!(
                from = old,
                format = FORMAT_VERSION,
                finished_jobs_moved = moved,
                "store format raised"
            );
            return Ok(moved);
        }
        Some([newer]) if *newer > FORMAT_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "the store has format version {newer}, written by a newer bb2tc; this one \
                 reads up to {FORMAT_VERSION} (start the newer bb2tc, or restore a backup)"
            )));
        }
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "the store's format version {other:?} is not one bb2tc wrote"
            )));
        }
        None => {}
    }
    // Where an interrupted migration stopped: the tree it was in and the last key it did.
    let cursor = meta.get(CURSOR_KEY)?;
    let (start, mut resume_after) = cursor
        .as_deref()
        .and_then(split_cursor)
        .and_then(|(tree, key)| {
            let at = TREES.iter().position(|(name, _)| name.as_bytes() == tree)?;
            Some((at, Some(key.to_vec())))
        })
        .unwrap_or((0, None));
    let mut migrated = 0;
    for (name, rewrite) in TREES.into_iter().skip(start) {
        let tree = db.open_tree(name)?;
        migrated += migrate_tree(name, &tree, meta, unreadable, resume_after.take(), rewrite)?;
    }
    rebuild_latest(db)?;
    migrated += move_finished_jobs(db)?;
    db.flush()?;
    migrated += move_into_window(db, unreadable, dir)?;
    meta.insert(FORMAT_KEY, &[FORMAT_VERSION])?;
    meta.remove(CURSOR_KEY)?;
    db.flush()?;
    if migrated > 0 {
        tracing::info!(
            records = migrated,
            format = FORMAT_VERSION,
            "store migrated to the current format"
        );
    }
    Ok(migrated)
}

fn migrate_tree(
    name: &str,
    tree: &sled::Tree,
    meta: &sled::Tree,
    unreadable: &sled::Tree,
    mut after: Option<Vec<u8>>,
    rewrite: Rewrite,
) -> Result<usize, StoreError> {
    let mut migrated = 0;
    loop {
        let batch = batch_after(tree, after.as_deref())?;
        let Some((last, _)) = batch.last() else {
            return Ok(migrated);
        };
        let cursor = [name.as_bytes(), b"\0", last].concat();
        type Rewritten<'a> = (&'a sled::IVec, &'a sled::IVec, Result<Vec<u8>, StoreError>);
        let rewritten: Vec<Rewritten<'_>> = batch
            .iter()
            .map(|(key, value)| (key, value, rewrite(value)))
            .collect();
        (tree, meta, unreadable).transaction(|(tree, meta, unreadable)| {
            for (key, old, new) in &rewritten {
                match new {
                    Ok(bytes) => {
                        tree.insert(key.as_ref(), bytes.as_slice())?;
                    }
                    Err(_) => {
                        unreadable.insert(super::unreadable_key(name, key), old.as_ref())?;
                        tree.remove(key.as_ref())?;
                    }
                }
            }
            meta.insert(CURSOR_KEY, cursor.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        for (key, _, new) in &rewritten {
            match new {
                Ok(_) => migrated += 1,
                Err(e) => tracing::error!(
                    tree = name, key = %super::printable(key), error = %e,
                    "set aside a record that cannot be read"
                ),
            }
        }
        after = Some(last.to_vec());
    }
}

/// a84aaec kept `pending_index` (key → the pending job); now `latest_jobs` holds the newest
/// job of every key, whatever its state. Job ids grow with time, so the newest is the
/// largest id. Recomputed from the jobs, so running it twice does no harm.
fn rebuild_latest(db: &sled::Db) -> Result<(), StoreError> {
    let jobs = db.open_tree("jobs")?;
    let latest = db.open_tree("latest_jobs")?;
    let mut newest: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    for item in jobs.iter() {
        let (_, bytes) = item?;
        if let Ok(job) = super::records::decode::<Job>(&bytes) {
            let id = newest.entry(job.coalescing_key()).or_insert(job.id);
            *id = (*id).max(job.id);
        }
    }
    for (key, id) in newest {
        latest.insert(key, &id.to_be_bytes())?;
    }
    db.drop_tree("pending_index")?;
    Ok(())
}

/// Moves the finished jobs (done, their build no longer followed) from `jobs` to
/// `finished_jobs`, a batch per transaction. Each move is whole, so a crash in the middle
/// leaves every job in one tree or the other, and running it again moves the rest.
/// Returns how many moved.
fn move_finished_jobs(db: &sled::Db) -> Result<usize, StoreError> {
    let jobs = db.open_tree("jobs")?;
    let finished = db.open_tree(super::FINISHED_JOBS)?;
    let mut moved = 0;
    let mut after: Option<sled::IVec> = None;
    loop {
        let batch = batch_after(&jobs, after.as_deref())?;
        let Some((last, _)) = batch.last() else {
            return Ok(moved);
        };
        after = Some(last.clone());
        // One that cannot be read stays, to be set aside when it is next read.
        let settled: Vec<&(sled::IVec, sled::IVec)> = batch
            .iter()
            .filter(|(_, bytes)| {
                super::records::decode::<Job>(bytes).is_ok_and(|job| super::finished::settled(&job))
            })
            .collect();
        (&jobs, &finished).transaction(|(jobs, finished)| {
            for (key, bytes) in &settled {
                finished.insert(key.as_ref(), bytes.as_ref())?;
                jobs.remove(key.as_ref())?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        moved += settled.len();
    }
}

/// Moves the delivery records (`deliveries`) and change marks (`seen_changes`) of sled into
/// the de-duplication window (`window`). The window is written in a directory of its own,
/// synced and renamed into place, and only then are the two trees dropped: a crash before
/// the rename starts over, one after it only drops the trees. Returns how many moved.
fn move_into_window(
    db: &sled::Db,
    unreadable: &sled::Tree,
    dir: &std::path::Path,
) -> Result<usize, StoreError> {
    let io = |path: &std::path::Path, e| super::io_error(path, e);
    let target = dir.join(window::DIR);
    let mut moved = 0;
    if !target.exists() {
        let building = dir.join("window.import");
        if building.exists() {
            std::fs::remove_dir_all(&building).map_err(|e| io(&building, e))?;
        }
        let imported = Window::open(&building)?;
        // Everything sled holds came from the intake log up to its last applied delivery:
        // the replay after this adds to the window only what comes after.
        let applied = db
            .open_tree("meta")?
            .get(super::jobs::APPLIED_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut batch: Vec<(Kind, u64, sled::IVec, Vec<u8>)> = Vec::new();
        let add = |batch: &mut Vec<(Kind, u64, sled::IVec, Vec<u8>)>| {
            let new: Vec<New<'_>> = batch
                .iter()
                .map(|(kind, at, key, record)| New {
                    kind: *kind,
                    seq: applied,
                    received_at: *at,
                    key,
                    record,
                })
                .collect();
            let done = imported.import(&new);
            batch.clear();
            done
        };
        for item in db.open_tree("seen_changes")?.iter() {
            let (key, value) = item?;
            match decode_mark(&value) {
                Some(at) => batch.push((Kind::Change, at, key, Vec::new())),
                None => set_aside(unreadable, "seen_changes", &key, &value)?,
            }
            if batch.len() >= BATCH {
                moved += batch.len();
                add(&mut batch)?;
            }
        }
        // A record under its bare id is the mark that de-duplicates its redelivery; the
        // others (`id#result`) are kept for the listing.
        let deliveries = db.open_tree("deliveries")?;
        for item in deliveries.iter() {
            let (key, value) = item?;
            match decode::<DeliveryRecord>(&value) {
                Ok(record) => {
                    let kind = if key.as_ref() == record.id.as_bytes() {
                        Kind::MarkedDelivery
                    } else {
                        Kind::Delivery
                    };
                    let bytes = encode(&record)?;
                    batch.push((kind, record.received_at, record.id.as_bytes().into(), bytes));
                }
                Err(_) => set_aside(unreadable, "deliveries", &key, &value)?,
            }
            if batch.len() >= BATCH {
                moved += batch.len();
                add(&mut batch)?;
            }
        }
        moved += batch.len();
        add(&mut batch)?;
        imported.sync()?;
        drop(imported);
        std::fs::rename(&building, &target).map_err(|e| io(&target, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    db.drop_tree("deliveries")?;
    db.drop_tree("seen_changes")?;
    db.flush()?;
    if moved > 0 {
        tracing::info!(
            records = moved,
            "delivery records and de-duplication marks moved out of sled into the window"
        );
    }
    Ok(moved)
}

fn set_aside(
    unreadable: &sled::Tree,
    tree: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    unreadable.insert(super::unreadable_key(tree, key), value)?;
    tracing::error!(tree, key = %super::printable(key), "set aside a record that cannot be read");
    Ok(())
}

/// The next [`BATCH`] entries of `tree` after key `after` (from the start: `None`).
fn batch_after(
    tree: &sled::Tree,
    after: Option<&[u8]>,
) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
    let range = match after {
        Some(key) => {
            tree.range::<&[u8], _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
        }
        None => tree.iter(),
    };
    Ok(range.take(BATCH).collect::<Result<_, _>>()?)
}

fn split_cursor(cursor: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = cursor.iter().position(|&b| b == 0)?;
    Some((&cursor[..at], &cursor[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SourceId;

    fn record(id: &str, result: &str, at: u64) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            source: SourceId::new("dc"),
            event: "repo:refs_changed".into(),
            result: result.into(),
            jobs: 0,
            skipped: Vec::new(),
            received_at: at,
            user: None,
            repository: None,
        }
    }

    /// A store of format 4: a mark, a marked delivery and one answered without jobs, in
    /// sled's trees.
    fn format_4_store(dir: &std::path::Path) -> sled::Db {
        let db = sled::open(dir).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(FORMAT_KEY, &[4])
            .unwrap();
        let (_, deliveries) = format_4_store_trees(&db);
        deliveries
            .insert(
                b"d2#ignored",
                encode(&record("d2", "ignored", 2_000)).unwrap(),
            )
            .unwrap();
        deliveries.insert(b"d3", &b"\x01\xff\xff"[..]).unwrap();
        db
    }

    fn migrate_store(db: &sled::Db, dir: &std::path::Path) -> usize {
        let meta = db.open_tree("meta").unwrap();
        let unreadable = db.open_tree("unreadable").unwrap();
        migrate(db, &meta, &unreadable, dir).unwrap()
    }

    fn check_moved(db: &sled::Db, dir: &std::path::Path) {
        let window = Window::open(&dir.join(window::DIR)).unwrap();
        assert!(
            window
                .seen_change(b"dc\0p/r\0refs/heads/main\0aaaa", 2_000)
                .unwrap()
        );
        assert!(window.seen_delivery("d1", 2_000).unwrap());
        assert!(!window.seen_delivery("d2", 2_000).unwrap(), "listed only");
        let listed: Vec<String> = window.recent(10).into_iter().map(|d| d.id).collect();
        assert_eq!(listed, ["d2", "d1"], "each once");
        let names = db.tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n.as_ref() == b"deliveries" || n.as_ref() == b"seen_changes")
        );
        assert_eq!(
            db.open_tree("unreadable")
                .unwrap()
                .get(b"deliveries\0d3")
                .unwrap()
                .as_deref(),
            Some(&b"\x01\xff\xff"[..]),
            "set aside"
        );
        assert_eq!(
            db.open_tree("meta")
                .unwrap()
                .get(FORMAT_KEY)
                .unwrap()
                .as_deref(),
            Some(&[FORMAT_VERSION][..])
        );
        assert!(!dir.join("window.import").exists());
    }

    #[test]
    fn records_and_marks_move_into_the_window_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = format_4_store(dir.path());
        assert_eq!(migrate_store(&db, dir.path()), 3);
        check_moved(&db, dir.path());
        // A second start changes nothing.
        assert_eq!(migrate_store(&db, dir.path()), 0);
        check_moved(&db, dir.path());
    }

    #[test]
    fn a_move_cut_short_by_a_crash_starts_over_or_only_drops_the_trees() {
        // Before the rename: a half-built window is thrown away and built again.
        let dir = tempfile::tempdir().unwrap();
        let db = format_4_store(dir.path());
        std::fs::create_dir(dir.path().join("window.import")).unwrap();
        std::fs::write(
            dir.path().join("window.import/0000000000000001.keys"),
            b"torn",
        )
        .unwrap();
        migrate_store(&db, dir.path());
        check_moved(&db, dir.path());

        // After the rename, before the trees were dropped: they are dropped, nothing is
        // added twice.
        let dir = tempfile::tempdir().unwrap();
        let db = format_4_store(dir.path());
        migrate_store(&db, dir.path());
        format_4_store_trees(&db);
        db.open_tree("meta")
            .unwrap()
            .insert(FORMAT_KEY, &[4])
            .unwrap();
        assert_eq!(migrate_store(&db, dir.path()), 0);
        check_moved(&db, dir.path());
    }

    /// A mark and a marked delivery in the trees format 4 kept them in.
    fn format_4_store_trees(db: &sled::Db) -> (sled::Tree, sled::Tree) {
        let marks = db.open_tree("seen_changes").unwrap();
        marks
            .insert(b"dc\0p/r\0refs/heads/main\0aaaa", &encode_mark(1_000))
            .unwrap();
        let deliveries = db.open_tree("deliveries").unwrap();
        deliveries
            .insert(b"d1", encode(&record("d1", "accepted", 1_000)).unwrap())
            .unwrap();
        (marks, deliveries)
    }
}
