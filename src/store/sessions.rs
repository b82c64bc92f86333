//! Token-page sessions: who is signed in behind a session cookie.
//!
//! The cookie carries a random id; the store keeps only its SHA-256, so the store's files do
//! not hold anything a browser could present. Sessions are durable: they survive a restart
//! and end at their expiry or at sign-out.

use crate::ids::{SourceId, UserKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// A Bitbucket user, proven by OAuth or by a personal access token.
    User {
        /// The Bitbucket source they signed in to.
        source: SourceId,
        /// The same key webhooks carry (SPEC §1); tokens added on the page use it.
        user: UserKey,
        /// The user's other keys (Data Center slug, Cloud account id): tokens an admin
        /// registered under one of them are the user's too.
        aliases: Vec<UserKey>,
        /// What to call them on the page.
        display_name: String,
    },
    /// Someone who presented the admin token.
    Admin {
        /// Which admin token it was (a fingerprint of its hash): a session of a replaced
        /// admin token is void.
        token_fingerprint: String,
    },
}

/// A signed-in session.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// Who is signed in.
    pub principal: Principal,
    /// The value every form of this session must carry.
    pub csrf: String,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

impl Session {
    /// A new session of `principal` lasting `ttl_ms` from now, and the cookie value that
    /// names it (stores keep only its SHA-256).
    pub fn start(principal: Principal, ttl_ms: u64) -> (String, Session) {
        let session = Session {
            principal,
            csrf: random_token(),
            expires_at: crate::clock::now_ms().saturating_add(ttl_ms),
        };
        (random_token(), session)
    }
}

/// The CSRF value is a secret of the session: redacted.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal)
            .field("csrf", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A fresh random value for a cookie, a CSRF token or an OAuth `state`: 32 bytes, base64url.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Principal {
    /// Whether a token registered for (`source`, `user`) belongs to this principal: the
    /// admin's are all; a user's are those under any of their keys on their source.
    pub fn owns(&self, source: &SourceId, user: Option<&UserKey>) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::User {
                source: own_source,
                user: own,
                aliases,
                ..
            } => own_source == source && user.is_some_and(|u| u == own || aliases.contains(u)),
        }
    }
}
