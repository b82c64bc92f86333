//! The OAuth sign-ins under way: `state` → (source, PKCE verifier), kept in memory for ten
//! minutes. A restart forgets them; the user then simply starts the sign-in again. With
//! several instances (PostgreSQL) each is also kept in the store, so the instance Bitbucket
//! sends the browser back to can finish it; the limits here stay per instance.

use crate::ids::SourceId;
use crate::store::sessions::random_token;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;
// tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

/// How long a user has to come back from Bitbucket's consent screen.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// At most this many sign-ins wait at once, so a flood of sign-in starts cannot grow memory.
const MAX_PENDING: usize = 10_000;

/// Sign-ins under way from one client (address, or IPv6 /64): enough for a few tabs, and
/// one client cannot fill the table for everyone.
const MAX_PENDING_PER_CLIENT: usize = 10;

/// One sign-in waiting for Bitbucket's redirect back.
#[derive(Clone)]
pub struct Pending {
    /// The source the user signs in to.
    pub source: SourceId,
    /// The PKCE code verifier.
    pub verifier: String,
    client: IpAddr,
    started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("source", &self.source)
            .field("verifier", &"[redacted]")
            .field("client", &self.client)
            .finish()
    }
}

/// The sign-ins under way, by `state` (which is a secret: it is not in `Debug`).
#[derive(Default)]
pub struct PendingSignIns {
    by_state: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for PendingSignIns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.by_state.lock().map_or(0, |p| p.len());
        write!(f, "PendingSignIns({count} under way)")
    }
}

/// What a new sign-in sends to Bitbucket.
#[derive(Clone)]
pub struct Started {
    /// The `state` parameter (and the browser cookie's value).
    pub state: String,
    /// The PKCE S256 code challenge.
    pub challenge: String,
    /// The PKCE verifier (kept in the shared store too when there are several instances).
    pub verifier: String,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Started([redacted])")
    }
}

impl PendingSignIns {
    /// Starts a sign-in for `client` (see [`client_key`]); `None` when too many are under
    /// way, in all or from that client.
    pub fn start(&self, source: SourceId, client: IpAddr) -> Option<Started> {
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        let mut pending = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING
            || pending.values().filter(|p| p.client == client).count() >= MAX_PENDING_PER_CLIENT
        {
            return None;
        }
        pending.insert(
            state.clone(),
            Pending {
                source,
                verifier: verifier.clone(),
                client,
                started: Instant::now(),
            },
        );
        Some(Started {
            state,
            challenge,
            verifier,
        })
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

/// Who a client is for limits: its IPv4 address, or the /64 of an IPv6 one (a single host
/// commonly has a whole /64 to pick addresses from).
pub fn client_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn one_client_cannot_fill_the_table_for_everyone() {
        let pending = PendingSignIns::default();
        let flooder: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        for n in 0..MAX_PENDING_PER_CLIENT {
            // Other addresses of the same /64 count as the same client.
            let address: IpAddr = format!("2001:db8:1:2::{:x}", n + 1).parse().unwrap();
            assert!(
                pending
                    .start(SourceId::new("dc"), client_key(address))
                    .is_some()
            );
        }
        assert!(
            pending
                .start(SourceId::new("dc"), client_key(flooder))
                .is_none()
        );
        assert!(
            pending
                .start(SourceId::new("dc"), client_key(here()))
                .is_some()
        );
        let text = format!("{pending:?}");
        assert_eq!(text, "PendingSignIns(11 under way)");
    }

    #[test]
    fn client_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1234".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), IpAddr::from([10, 1, 2, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sign_in_expires_after_ten_minutes() {
        let pending = PendingSignIns::default();
        let late = pending.start(SourceId::new("dc"), here()).unwrap();
        let in_time = pending.start(SourceId::new("dc"), here()).unwrap();
        tokio::time::advance(PENDING_TTL - Duration::from_secs(1)).await;
        assert!(pending.finish(&in_time.state).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pending.finish(&late.state).is_none());
    }

    #[tokio::test]
    async fn a_sign_in_finishes_once_with_a_matching_challenge() {
        let pending = PendingSignIns::default();
        let started = pending.start(SourceId::new("dc"), here()).unwrap();
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
