//! Token-page sessions: who is signed in behind a session cookie.
//!
//! The cookie carries a random id; the store keeps only its SHA-256, so the store's files do
//! not hold anything a browser could present. Sessions are durable: they survive a restart
//! and end at their expiry or at sign-out.

use super::records::{decode, encode};
use super::{Store, StoreError};
use crate::clock;
use crate::ids::{SourceId, UserKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Who is signed in.
    pub principal: Principal,
    /// The value every form of this session must carry.
    pub csrf: String,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

/// A fresh random value for a cookie, a CSRF token or an OAuth `state`: 32 bytes, base64url.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
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

impl Store {
    /// Starts a session for `principal` lasting `ttl_ms`; returns the cookie value and the
    /// session. Durable when it returns.
    pub async fn create_session(
        &self,
        principal: Principal,
        ttl_ms: u64,
    ) -> Result<(String, Session), StoreError> {
        self.purge_expired_sessions()?;
        let id = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            expires_at: clock::now_ms().saturating_add(ttl_ms),
        };
        self.sessions.insert(session_key(&id), encode(&session)?)?;
        self.commit().await?;
        Ok((id, session))
    }

    /// The live session behind a cookie value; an expired one is removed and `None`.
    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let key = session_key(id);
        let Some(bytes) = self.sessions.get(key)? else {
            return Ok(None);
        };
        let session: Session = decode(&bytes)?;
        if session.expires_at <= clock::now_ms() {
            self.sessions.remove(key)?;
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Ends a session (sign-out). Durable when it returns.
    pub async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        self.sessions.remove(session_key(id))?;
        self.commit().await
    }

    /// Drops every expired session; done at each sign-in so abandoned sessions do not pile up.
    fn purge_expired_sessions(&self) -> Result<(), StoreError> {
        let now = clock::now_ms();
        for item in self.sessions.iter() {
            let (key, bytes) = item?;
            // A record that cannot be read cannot be used either.
            let expired = decode::<Session>(&bytes).map_or(true, |s| s.expires_at <= now);
            if expired {
                self.sessions.remove(key)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    fn user() -> Principal {
        Principal::User {
            source: SourceId::new("dc"),
            user: UserKey::parse("jdoe").unwrap(),
            aliases: vec![],
            display_name: "Jane Doe".into(),
        }
    }

    #[tokio::test]
    async fn sessions_live_until_expiry_or_sign_out() {
        let (_dir, store) = temp_store();
        let (id, session) = store.create_session(user(), 60_000).await.unwrap();
        assert_eq!(id.len(), 43);
        let found = store.session(&id).unwrap().unwrap();
        assert_eq!(found.principal, user());
        assert_eq!(found.csrf, session.csrf);
        assert!(store.session("not-a-session").unwrap().is_none());
        store.end_session(&id).await.unwrap();
        assert!(store.session(&id).unwrap().is_none());

        let (expired, _) = store
            .create_session(
                Principal::Admin {
                    token_fingerprint: "f".into(),
                },
                0,
            )
            .await
            .unwrap();
        assert!(store.session(&expired).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_store_keeps_only_a_hash_of_the_cookie() {
        let (_dir, store) = temp_store();
        let (id, _) = store.create_session(user(), 60_000).await.unwrap();
        assert!(store.sessions.get(id.as_bytes()).unwrap().is_none());
        assert!(store.sessions.get(session_key(&id)).unwrap().is_some());
    }

    #[tokio::test]
    async fn signing_in_purges_expired_sessions() {
        let (_dir, store) = temp_store();
        for _ in 0..3 {
            store.create_session(user(), 0).await.unwrap();
        }
        store.create_session(user(), 60_000).await.unwrap();
        assert_eq!(store.sessions.len(), 1);
    }
}
