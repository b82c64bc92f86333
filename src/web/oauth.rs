//! The OAuth sign-ins under way: `state` → (source, PKCE verifier), kept in memory for ten
//! minutes. A restart forgets them; the user then simply starts the sign-in again.

use crate::ids::SourceId;
use crate::store::sessions::random_token;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
// tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

/// How long a user has to come back from Bitbucket's consent screen.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// At most this many sign-ins wait at once, so a flood of sign-in starts cannot grow memory.
const MAX_PENDING: usize = 10_000;

/// One sign-in waiting for Bitbucket's redirect back.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The source the user signs in to.
    pub source: SourceId,
    /// The PKCE code verifier.
    pub verifier: String,
    started: Instant,
}

/// The sign-ins under way.
#[derive(Debug, Default)]
pub struct PendingSignIns {
    by_state: Mutex<HashMap<String, Pending>>,
}

/// What a new sign-in sends to Bitbucket.
#[derive(Debug, Clone)]
pub struct Started {
    /// The `state` parameter (and the browser cookie's value).
    pub state: String,
    /// The PKCE S256 code challenge.
    pub challenge: String,
}

impl PendingSignIns {
    /// Starts a sign-in; `None` when too many are under way.
    pub fn start(&self, source: SourceId) -> Option<Started> {
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        let mut pending = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING {
            return None;
        }
        pending.insert(
            state.clone(),
            Pending {
                source,
                verifier,
                started: Instant::now(),
            },
        );
        Some(Started { state, challenge })
    }

    /// Takes the sign-in for `state` (each can be finished once); `None` when unknown or
    /// expired.
    pub fn finish(&self, state: &str) -> Option<Pending> {
        let mut pending = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sign_in_expires_after_ten_minutes() {
        let pending = PendingSignIns::default();
        let late = pending.start(SourceId::new("dc")).unwrap();
        let in_time = pending.start(SourceId::new("dc")).unwrap();
        tokio::time::advance(PENDING_TTL - Duration::from_secs(1)).await;
        assert!(pending.finish(&in_time.state).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pending.finish(&late.state).is_none());
    }

    #[tokio::test]
    async fn a_sign_in_finishes_once_with_a_matching_challenge() {
        let pending = PendingSignIns::default();
        let started = pending.start(SourceId::new("dc")).unwrap();
        let taken = pending.finish(&started.state).unwrap();
        assert_eq!(taken.source, SourceId::new("dc"));
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(taken.verifier.as_bytes())),
            started.challenge
        );
        assert!(pending.finish(&started.state).is_none());
        assert!(pending.finish("made-up").is_none());
    }
}
