//! Everything a store holds, in the shape both backends read and write: what
//! `bb2tc copy-store` moves from one backend to the other (SPEC §7.1), with the bridge
//! stopped.
//!
//! Tokens cross in the clear — in memory only, each sealed again under the destination's
//! master key — so the two stores need not share a key. De-duplication marks are keyed as
//! PostgreSQL keeps them: a build ([`Job::dedup_key`], or a change as bb2tc up to 551746f
//! marked it) or a delivery id ([`delivery_mark`]); sled keeps the latter as its delivery
//! record.

use crate::ids::{ServerId, SourceId, TeamCityToken, UserKey};
use crate::job::Job;
use crate::store::{DeliveryRecord, Session, TokenStatus};

/// One registered token, with the token itself.
#[derive(Debug, Clone)]
pub struct DumpedToken {
    /// Record id (kept: jobs refer to it).
    pub id: String,
    /// Source.
    pub source: SourceId,
    /// User as registered.
    pub user: String,
    /// Its key.
    pub user_key: UserKey,
    /// Server id.
    pub server: ServerId,
    /// Server URL.
    pub teamcity: String,
    /// TeamCity's name for its owner.
    pub teamcity_user: Option<String>,
    /// When added (ms).
    pub added_at: u64,
    /// When TeamCity last accepted it (ms).
    pub last_authenticated_at: Option<u64>,
    /// Status.
    pub status: TokenStatus,
    /// Replacements so far.
    pub revision: u64,
    /// The token.
    pub secret: TeamCityToken,
}

/// A store's contents.
#[derive(Debug, Default)]
pub struct Dump {
    /// The store's id (build comments carry it: kept, so that jobs in flight are found in
    /// TeamCity after the move).
    pub store_id: String,
    /// The generated admin token's SHA-256.
    pub admin_token_hash: Option<[u8; 32]>,
    /// Tokens.
    pub tokens: Vec<DumpedToken>,
    /// Sessions, by the SHA-256 of their cookie.
    pub sessions: Vec<(Vec<u8>, Session)>,
    /// Jobs in any state.
    pub jobs: Vec<Job>,
    /// Coalescing key → the newest job of it.
    pub latest: Vec<(Vec<u8>, u64)>,
    /// De-duplication marks → first seen (ms).
    pub marks: Vec<(Vec<u8>, u64)>,
    /// Delivery records.
    pub deliveries: Vec<DeliveryRecord>,
}

/// How many records of each kind a store holds: compared after a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Tokens.
    pub tokens: usize,
    /// Sessions.
    pub sessions: usize,
    /// Jobs.
    pub jobs: usize,
    /// De-duplication marks.
    pub marks: usize,
    /// Delivery records.
    pub deliveries: usize,
}

impl Dump {
    /// What it holds.
    pub fn counts(&self) -> Counts {
        Counts {
            tokens: self.tokens.len(),
            sessions: self.sessions.len(),
            jobs: self.jobs.len(),
            marks: self.marks.len(),
            deliveries: self.deliveries.len(),
        }
    }
}

/// The mark of a delivery id.
pub fn delivery_mark(id: &str) -> Vec<u8> {
    let mut key = b"delivery\0".to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The delivery id a mark stands for, if it is one.
pub fn delivery_of_mark(mark: &[u8]) -> Option<&str> {
    std::str::from_utf8(mark.strip_prefix(b"delivery\0")?).ok()
}
