//! Sessions in sled: `sessions`, keyed by the SHA-256 of the cookie value.

use super::Trees;
use super::records::{decode, encode};
use crate::clock;
use crate::store::StoreError;
use crate::store::sessions::{Principal, Session};
use sha2::{Digest, Sha256};

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Trees {
    /// Starts a session for `principal` lasting `ttl_ms`; returns the cookie value and the
    /// session (synced by the caller).
    pub fn create_session(
        &self,
        principal: Principal,
        ttl_ms: u64,
    ) -> Result<(String, Session), StoreError> {
        let (id, session) = Session::start(principal, ttl_ms);
        self.sessions.insert(session_key(&id), encode(&session)?)?;
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

    /// Ends a session (sign-out; synced by the caller).
    pub fn end_session(&self, id: &str) -> Result<(), StoreError> {
        self.sessions.remove(session_key(id))?;
        Ok(())
    }

    /// Drops every expired session (with the periodic pruning, so abandoned sessions do not
    /// pile up); how many went.
    pub fn purge_expired_sessions(&self, now: u64) -> Result<usize, StoreError> {
        // A record that cannot be read cannot be used either.
        super::jobs::prune_tree(&self.sessions, |_, bytes| {
            decode::<Session>(bytes).map_or(true, |s| s.expires_at <= now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SourceId, UserKey};
    use crate::store::test_support::temp_sled;

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
        let (_dir, store) = temp_sled();
        let (id, session) = store.create_session(user(), 60_000).unwrap();
        assert_eq!(id.len(), 43);
        let found = store.session(&id).unwrap().unwrap();
        assert_eq!(found.principal, user());
        assert_eq!(found.csrf, session.csrf);
        assert!(store.session("not-a-session").unwrap().is_none());
        store.end_session(&id).unwrap();
        assert!(store.session(&id).unwrap().is_none());

        let (expired, _) = store
            .create_session(
                Principal::Admin {
                    token_fingerprint: "f".into(),
                },
                0,
            )
            .unwrap();
        assert!(store.session(&expired).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_store_keeps_only_a_hash_of_the_cookie() {
        let (_dir, store) = temp_sled();
        let (id, _) = store.create_session(user(), 60_000).unwrap();
        assert!(store.sessions.get(id.as_bytes()).unwrap().is_none());
        assert!(store.sessions.get(session_key(&id)).unwrap().is_some());
    }

    #[tokio::test]
    async fn pruning_purges_expired_sessions() {
        let (_dir, store) = temp_sled();
        for _ in 0..3 {
            store.create_session(user(), 0).unwrap();
        }
        store.create_session(user(), 60_000).unwrap();
        assert_eq!(store.purge_expired_sessions(clock::now_ms()).unwrap(), 3);
        assert_eq!(store.sessions.len(), 1);
    }
}
