//! The whole sled store out and in, for `bb2tc copy-store` (see [`crate::store::dump`]).

use super::Trees;
use super::records::{decode, encode};
use super::window;
use crate::job::Job;
use crate::store::dump::{Counts, Dump, delivery_of_mark};
use crate::store::{DeliveryRecord, Session, StoreError};
use std::collections::HashMap;

impl Trees {
    /// Everything it holds (records that cannot be read are set aside and left out).
    pub fn dump(&self) -> Result<Dump, StoreError> {
        let mut dump = Dump {
            store_id: self.id.clone(),
            admin_token_hash: self.admin_token_hash()?,
            tokens: self.dump_tokens()?,
            ..Dump::default()
        };
        for item in self.sessions.iter() {
            let (key, bytes) = item?;
            if let Ok(session) = decode::<Session>(&bytes) {
                dump.sessions.push((key.to_vec(), session));
            }
        }
        let index = self.fresh.lock();
        dump.jobs = index.jobs(&self.fresh_chunks)?;
        for item in self
            .records::<Job>(&self.jobs)
            .chain(self.records::<Job>(&self.finished))
        {
            dump.jobs.push(item?.1);
        }
        dump.jobs.sort_unstable_by_key(|job| job.id);
        // The overlay first: where it names a fresh job, `latest_jobs` is not read.
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for item in self.latest.iter() {
            let (key, id) = item?;
            if let Ok(id) = <[u8; 8]>::try_from(id.as_ref()) {
                latest.insert(key.to_vec(), u64::from_be_bytes(id));
            }
        }
        for (key, id) in index.latest() {
            latest.insert(key.to_vec(), id);
        }
        drop(index);
        dump.latest = latest.into_iter().collect();
        dump.latest.sort_unstable();
        for entry in self.window.entries()? {
            if let Some(mark) = window::dump_mark(entry.kind, &entry.key) {
                dump.marks.push((mark, entry.received_at));
            }
            if entry.kind.is_delivery()
                && let Some(record) = window::Window::record_of(&entry.record)
            {
                dump.deliveries.push(record);
            }
        }
        Ok(dump)
    }

    /// What it holds, counted as [`Dump::counts`] counts.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let window = self.window.counts();
        Ok(Counts {
            tokens: self.tokens.len(),
            sessions: self.sessions.len(),
            jobs: self.fresh.lock().len() + self.jobs.len() + self.finished.len(),
            marks: usize::try_from(window.marks).unwrap_or(usize::MAX),
            deliveries: usize::try_from(window.deliveries).unwrap_or(usize::MAX),
        })
    }

    /// Writes `dump` into this (empty) store and syncs it; its id becomes the dump's at
    /// the next start.
    pub fn load(&self, dump: &Dump) -> Result<(), StoreError> {
        self.load_tokens(&dump.tokens)?;
        for (key, session) in &dump.sessions {
            self.sessions.insert(key.as_slice(), encode(session)?)?;
        }
        for job in &dump.jobs {
            let tree = if super::finished::settled(job) {
                &self.finished
            } else {
                &self.jobs
            };
            tree.insert(job.id.to_be_bytes(), encode(job)?)?;
        }
        for (key, id) in &dump.latest {
            self.latest.insert(key.as_slice(), &id.to_be_bytes())?;
        }
        self.load_window(dump)?;
        if let Some(hash) = dump.admin_token_hash {
            self.set_admin_token_hash(hash)?;
        }
        let next = dump.jobs.iter().map(|j| j.id + 1).max().unwrap_or(1);
        self.meta
            .insert(super::jobs::NEXT_JOB_ID, &next.to_be_bytes())?;
        self.meta
            .insert(super::STORE_ID, dump.store_id.as_bytes())?;
        self.commit_blocking()
    }
}

impl Trees {
    /// The dump's marks and delivery records into the window: a marked delivery's record
    /// is its mark (as the window keeps it), a mark without its record gets one.
    fn load_window(&self, dump: &Dump) -> Result<(), StoreError> {
        let mut delivery_marks = HashMap::new();
        let mut new = Vec::new();
        for (key, first_seen) in &dump.marks {
            match delivery_of_mark(key) {
                Some(id) => {
                    delivery_marks.insert(id.to_owned(), *first_seen);
                }
                None => new.push(window::New {
                    kind: window::Kind::Change,
                    seq: 0,
                    received_at: *first_seen,
                    key,
                    record: &[],
                }),
            }
        }
        let mut records: Vec<(bool, Vec<u8>, &DeliveryRecord)> = Vec::new();
        for record in &dump.deliveries {
            let marked = delivery_marks.remove(&record.id).is_some();
            records.push((marked, encode(record)?, record));
        }
        let unrecorded: Vec<DeliveryRecord> = delivery_marks
            .into_iter()
            .map(|(id, received_at)| DeliveryRecord {
                id,
                source: crate::ids::SourceId::new(""),
                event: String::new(),
                result: "accepted".into(),
                jobs: 0,
                skipped: Vec::new(),
                received_at,
                user: None,
                repository: None,
            })
            .collect();
        for record in &unrecorded {
            records.push((true, encode(record)?, record));
        }
        for (marked, bytes, record) in &records {
            new.push(window::New {
                kind: if *marked {
                    window::Kind::MarkedDelivery
                } else {
                    window::Kind::Delivery
                },
                seq: 0,
                received_at: record.received_at,
                key: record.id.as_bytes(),
                record: bytes,
            });
        }
        for chunk in new.chunks(1000) {
            self.window.import(chunk)?;
        }
        self.window.sync()
    }
}
