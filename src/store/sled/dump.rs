//! The whole sled store out and in, for `bb2tc copy-store` (see [`crate::store::dump`]).

use super::Trees;
use super::records::{decode, decode_mark, encode, encode_mark};
use crate::job::Job;
use crate::store::dump::{Counts, Dump, delivery_mark, delivery_of_mark};
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
        for item in self
            .records::<Job>(&self.jobs)
            .chain(self.records::<Job>(&self.finished))
        {
            dump.jobs.push(item?.1);
        }
        for item in self.latest.iter() {
            let (key, id) = item?;
            if let Ok(id) = <[u8; 8]>::try_from(id.as_ref()) {
                dump.latest.push((key.to_vec(), u64::from_be_bytes(id)));
            }
        }
        for item in self.seen_changes.iter() {
            let (key, value) = item?;
            if let Some(first_seen) = decode_mark(&value) {
                dump.marks.push((key.to_vec(), first_seen));
            }
        }
        // A delivery recorded under its bare id is what de-duplicates its redelivery.
        for item in self.records::<DeliveryRecord>(&self.deliveries) {
            let (key, record) = item?;
            if key.as_ref() == record.id.as_bytes() {
                dump.marks
                    .push((delivery_mark(&record.id), record.received_at));
            }
            dump.deliveries.push(record);
        }
        Ok(dump)
    }

    /// What it holds, counted as [`Dump::counts`] counts.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let ids = self
            .deliveries
            .iter()
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| !k.contains(&b'#')))
            .count();
        Ok(Counts {
            tokens: self.tokens.len(),
            sessions: self.sessions.len(),
            jobs: self.jobs.len() + self.finished.len(),
            marks: self.seen_changes.len() + ids,
            deliveries: self.deliveries.len(),
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
        let mut delivery_marks = HashMap::new();
        for (key, first_seen) in &dump.marks {
            match delivery_of_mark(key) {
                Some(id) => {
                    delivery_marks.insert(id.to_owned(), *first_seen);
                }
                None => {
                    self.seen_changes
                        .insert(key.as_slice(), &encode_mark(*first_seen))?;
                }
            }
        }
        // The record of a marked delivery goes under its bare id (sled's mark), the others
        // beside it; a mark without its record gets one.
        for record in &dump.deliveries {
            let key = if delivery_marks.remove(&record.id).is_some() {
                record.id.clone()
            } else {
                format!("{}#{}", record.id, record.result)
            };
            self.deliveries.insert(key.as_bytes(), encode(record)?)?;
        }
        for (id, received_at) in delivery_marks {
            let record = DeliveryRecord {
                id: id.clone(),
                source: crate::ids::SourceId::new(""),
                event: String::new(),
                result: "accepted".into(),
                jobs: 0,
                skipped: Vec::new(),
                received_at,
                user: None,
                repository: None,
            };
            self.deliveries.insert(id.as_bytes(), encode(&record)?)?;
        }
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
