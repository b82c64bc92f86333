//! Start-up: what the intake log holds that sled may not, applied again.
//!
//! Deliveries after the last sequence number sled applied (kept in the same transaction as
//! the deliveries themselves) are applied in log order, and those after the last one the
//! de-duplication window holds are added to it (each of its entries carries its sequence
//! number); claims go onto jobs still pending at
//! the attempt before (the claim reached sled's files or it did not; a job that moved on
//! since is left alone). Then sled is synced and the segments are deleted. Running it twice
//! — a crash during the replay — changes nothing more.

use super::applier::BATCH_JOBS;
use super::segment::{self, Accepted, Entry};
use crate::job::Job;
use crate::store::StoreError;
use crate::store::sled::{Trees, io_error};

/// Deliveries per transaction during the replay; a transaction also ends once it holds
/// `BATCH_JOBS` jobs, as the applier's do.
const BATCH: usize = 256;

/// What the replay leaves for the log that starts after it.
#[derive(Debug)]
pub struct Replayed {
    /// The next sequence number to give.
    pub next_seq: u64,
    /// The next job id to give.
    pub next_job_id: u64,
    /// Jobs the replay queued (for the workers, when the store is reopened while running).
    pub jobs: Vec<Job>,
}

pub fn replay(trees: &Trees) -> Result<Replayed, StoreError> {
    let dir = trees.path().to_owned();
    let applied = trees.applied_seq()?;
    let in_window = trees.window_seq();
    let segments = segment::list(&dir).map_err(|e| io_error(&dir, e))?;
    let mut last_seq = applied;
    let mut last_job = 0;
    let mut batch: Vec<(u64, Accepted)> = Vec::new();
    let mut batch_jobs = 0;
    let mut jobs = Vec::new();
    let (mut deliveries, mut claims) = (0usize, 0usize);
    let mut flush = |batch: &mut Vec<(u64, Accepted)>| -> Result<(), StoreError> {
        if !batch.is_empty() {
            trees.window_accepted(batch)?;
            batch.retain(|(seq, _)| *seq > applied);
            if !batch.is_empty() {
                jobs.extend(trees.apply_accepted(batch)?.jobs);
            }
            batch.clear();
        }
        Ok(())
    };
    for (i, path) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let read = segment::read(&bytes);
        for (seq, entry) in read.entries {
            last_seq = last_seq.max(seq);
            match entry {
                Entry::Delivery(accepted) => {
                    last_job = accepted.jobs.iter().map(|j| j.id).fold(last_job, u64::max);
                    if seq > applied.min(in_window) {
                        deliveries += usize::from(seq > applied);
                        batch_jobs += accepted.jobs.len();
                        batch.push((seq, *accepted));
                        if batch.len() >= BATCH || batch_jobs >= BATCH_JOBS {
                            batch_jobs = 0;
                            flush(&mut batch)?;
                        }
                    }
                }
                Entry::Probe => {}
                Entry::Claim { job, attempt } => {
                    // After the deliveries before it: the job may be one of them.
                    batch_jobs = 0;
                    flush(&mut batch)?;
                    claims += usize::from(trees.replay_claim(job, attempt)?);
                }
            }
        }
        if let Some(why) = read.bad_tail {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if i + 1 == segments.len() {
                // The last write before a crash, cut short: never acknowledged.
                tracing::warn!(segment = %name, offset = read.good_bytes, reason = %why, "dropped a torn entry at the end of the intake log (a write cut short by a crash; it was never acknowledged)");
            } else {
                let rest = &bytes[usize::try_from(read.good_bytes).unwrap_or(bytes.len())..];
                trees.set_aside_log_tail(&name, read.good_bytes, rest, &why);
            }
        }
    }
    flush(&mut batch)?;
    // A segment being prepared when bb2tc stopped holds nothing.
    let _ = std::fs::remove_file(super::writer::prepared_path(&dir));
    if !segments.is_empty() {
        trees.commit_blocking()?;
        trees.sync_window()?;
        for path in &segments {
            std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
        }
        segment::sync_dir(&dir).map_err(|e| io_error(&dir, e))?;
        if deliveries + claims > 0 {
            tracing::info!(deliveries, claims, "replayed the intake log into the store");
        }
    }
    Ok(Replayed {
        next_seq: last_seq + 1,
        next_job_id: trees.next_job_id(last_job)?,
        jobs,
    })
}
