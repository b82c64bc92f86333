//! Which token a pusher's deliveries use, remembered between deliveries: every delivery
//! asks, and the answer changes only when a token is registered, removed or turns
//! valid/invalid. Two sled reads per delivery (the index, then the record) were about 3 % of
//! bb2tc's CPU while ingesting (BENCHMARKS.md, issue 12).
//!
//! Only a token's id and status are kept (never the token: it stays sealed in sled). Every
//! write that changes what [`Trees::find_token`](super::Trees) would answer clears the
//! cache; a generation number keeps a lookup that read sled before such a write from
//! putting its (stale) answer back afterwards.

use crate::ids::{ServerId, SourceId, UserKey};
use crate::store::tokens::TokenChoice;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept at most; past this the cache starts again (each pusher × server is one).
const CAPACITY: usize = 16_384;

#[derive(Debug, Default)]
struct Entries {
    /// Bumped by every write that clears the cache.
    generation: u64,
    map: HashMap<Vec<u8>, Option<TokenChoice>>,
}

/// The remembered answers, keyed by source, the pusher's keys in order, and server.
#[derive(Debug, Default)]
pub struct TokenCache(Mutex<Entries>);

/// A lookup that missed: where its answer goes once sled gave it.
pub struct Miss {
    key: Vec<u8>,
    generation: u64,
}

impl TokenCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The remembered answer (`Ok`), or what to fill once sled answered (`Err`).
    pub fn get(
        &self,
        source: &SourceId,
        keys: &[UserKey],
        server: &ServerId,
    ) -> Result<Option<TokenChoice>, Miss> {
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(source.as_str().as_bytes());
        for user in keys {
            key.push(0);
            key.extend_from_slice(user.as_str().as_bytes());
        }
        // A server id never holds a control character: the key is unambiguous.
        key.push(1);
        key.extend_from_slice(server.as_str().as_bytes());
        let entries = self.entries();
        match entries.map.get(&key) {
            Some(found) => Ok(found.clone()),
            None => Err(Miss {
                key,
                generation: entries.generation,
            }),
        }
    }

    /// Remembers sled's answer to a lookup that missed, unless a write came in between.
    pub fn fill(&self, miss: Miss, found: Option<TokenChoice>) {
        let mut entries = self.entries();
        if entries.generation != miss.generation {
            return;
        }
        if entries.map.len() >= CAPACITY {
            entries.map.clear();
        }
        entries.map.insert(miss.key, found);
    }

    /// Forgets every answer: called after a write to the tokens.
    pub fn clear(&self) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenStatus;

    fn ids() -> (SourceId, Vec<UserKey>, ServerId) {
        (
            SourceId::new("dc"),
            vec![UserKey::parse("alice").unwrap()],
            ServerId::new("main"),
        )
    }

    #[test]
    fn an_answer_read_before_a_write_is_not_kept_after_it() {
        let cache = TokenCache::default();
        let (source, keys, server) = ids();
        let miss = cache.get(&source, &keys, &server).unwrap_err();
        cache.clear(); // a token registered while sled was read
        cache.fill(miss, None);
        assert!(
            cache.get(&source, &keys, &server).is_err(),
            "asks sled again"
        );
        let miss = cache.get(&source, &keys, &server).unwrap_err();
        let choice = TokenChoice {
            id: "t1".into(),
            status: TokenStatus::Valid,
        };
        cache.fill(miss, Some(choice.clone()));
        assert_eq!(cache.get(&source, &keys, &server).ok(), Some(Some(choice)));
        // Another server of the same pusher is another entry.
        assert!(cache.get(&source, &keys, &ServerId::new("other")).is_err());
    }
}
