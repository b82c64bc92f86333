//! Sessions in PostgreSQL, keyed by the SHA-256 of the cookie value: shared, so the token
//! page works whichever instance serves a request.

use super::{PgStore, big, from_record, pg_error, schema, to_record};
use crate::clock;
use crate::ids::SourceId;
use crate::store::StoreError;
use crate::store::sessions::{Principal, Session};
use sha2::{Digest, Sha256};

fn session_key(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

impl PgStore {
    /// Starts a session for `principal` lasting `ttl_ms`: the cookie value and the session.
    pub async fn create_session(
        &self,
        principal: Principal,
        ttl_ms: u64,
    ) -> Result<(String, Session), StoreError> {
        let (id, session) = Session::start(principal, ttl_ms);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bb2tc_sessions (key, expires_at, format, record) VALUES ($1, $2, $3, $4)",
                &[&session_key(&id), &big(session.expires_at), &schema::RECORD_FORMAT, &to_record(&session)?],
            )
            .await
            .map_err(pg_error)?;
        Ok((id, session))
    }

    /// The live session behind a cookie value; an expired one is removed and `None`.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let key = session_key(id);
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT format, record FROM bb2tc_sessions WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let session: Session = from_record(row.get(0), row.get(1)).map_err(StoreError::Corrupt)?;
        if session.expires_at <= clock::now_ms() {
            client
                .execute("DELETE FROM bb2tc_sessions WHERE key = $1", &[&key])
                .await
                .map_err(pg_error)?;
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Ends a session (sign-out).
    pub async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM bb2tc_sessions WHERE key = $1",
                &[&session_key(id)],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

impl PgStore {
    /// Keeps an OAuth sign-in under way until `expires_at` (ms), its PKCE verifier sealed:
    /// the browser may come back to another instance.
    pub async fn put_oauth_sign_in(
        &self,
        state: &str,
        source: &SourceId,
        verifier: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let key = session_key(state);
        let sealed = self.cipher.seal(&key, verifier.as_bytes())?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bb2tc_oauth_sign_ins (key, source, verifier, expires_at) \
                 VALUES ($1, $2, $3, $4)",
                &[&key, &source.as_str(), &sealed, &big(expires_at)],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// Takes the sign-in under way for `state` (once): its source and verifier, unless
    /// unknown or expired.
    pub async fn take_oauth_sign_in(
        &self,
        state: &str,
    ) -> Result<Option<(SourceId, String)>, StoreError> {
        let key = session_key(state);
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "DELETE FROM bb2tc_oauth_sign_ins WHERE key = $1 RETURNING source, verifier, expires_at",
                &[&key],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        if super::unbig(row.get(2)) <= clock::now_ms() {
            return Ok(None);
        }
        let verifier = self.cipher.open(&key, row.get(1))?;
        let verifier = String::from_utf8(verifier).map_err(|_| StoreError::Crypto)?;
        Ok(Some((SourceId::new(row.get::<_, String>(0)), verifier)))
    }
}
