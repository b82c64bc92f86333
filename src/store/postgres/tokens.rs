//! Tokens in PostgreSQL: one row per (source, user key, server), the token sealed under the
//! master key with the row id as associated data — as in sled, so `copy-store` moves the
//! sealed values between backends without opening them.

use super::{PgStore, big, pg_error, retrying, unbig};
use crate::clock;
use crate::ids::{ServerId, SourceId, TeamCityToken, UserKey};
use crate::store::StoreError;
use crate::store::dump::DumpedToken;
use crate::store::tokens::{NewToken, TokenFilter, TokenInfo, TokenStatus};

const COLUMNS: &str = "id, source, user_name, server, teamcity, teamcity_user, added_at, \
                       last_authenticated_at, status";

/// The `status` column's value.
pub(super) fn status_from(text: &str) -> Option<TokenStatus> {
    Some(match text {
        "valid" => TokenStatus::Valid,
        "invalid" => TokenStatus::Invalid,
        "unverified" => TokenStatus::Unverified,
        _ => return None,
    })
}

fn info(row: &tokio_postgres::Row) -> TokenInfo {
    TokenInfo {
        id: row.get(0),
        source: SourceId::new(row.get::<_, String>(1)),
        user: row.get(2),
        server: ServerId::new(row.get::<_, String>(3)),
        teamcity: row.get(4),
        teamcity_user: row.get(5),
        added_at: clock::rfc3339(unbig(row.get(6))),
        last_authenticated_at: row
            .get::<_, Option<i64>>(7)
            .map(|t| clock::rfc3339(unbig(t))),
        status: status_from(row.get(8)).unwrap_or(TokenStatus::Unverified),
    }
}

impl PgStore {
    /// Registers a token, replacing (and keeping the id of) the one for the same source,
    /// user and server.
    pub async fn upsert_token(&self, new: &NewToken) -> Result<(TokenInfo, bool), StoreError> {
        let user_key =
            UserKey::parse(&new.user).ok_or_else(|| StoreError::Corrupt("empty user".into()))?;
        retrying(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let existing = tx
                .query_opt(
                    "SELECT id FROM bb2tc_tokens WHERE source = $1 AND user_key = $2 AND server = $3 \
                     FOR UPDATE",
                    &[&new.source.as_str(), &user_key.as_str(), &new.server.as_str()],
                )
                .await
                .map_err(pg_error)?;
            let replaced = existing.is_some();
            let id: String = existing
                .map(|r| r.get(0))
                .unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
            let sealed = self
                .cipher
                .seal(id.as_bytes(), new.token.expose().as_bytes())?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO bb2tc_tokens (id, source, user_key, server, user_name, teamcity, \
                         teamcity_user, added_at, last_authenticated_at, status, sealed, revision) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, 0) \
                         ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, \
                         teamcity = EXCLUDED.teamcity, teamcity_user = EXCLUDED.teamcity_user, \
                         added_at = EXCLUDED.added_at, last_authenticated_at = NULL, \
                         status = EXCLUDED.status, sealed = EXCLUDED.sealed, \
                         revision = bb2tc_tokens.revision + 1 RETURNING {COLUMNS}"
                    ),
                    &[
                        &id,
                        &new.source.as_str(),
                        &user_key.as_str(),
                        &new.server.as_str(),
                        &new.user.trim(),
                        &new.teamcity,
                        &new.teamcity_user,
                        &big(clock::now_ms()),
                        &new.status.as_str(),
                        &sealed,
                    ],
                )
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok((info(&row), replaced))
        })
        .await
    }

    /// The token a pusher registered for `server`, trying each of their keys in order.
    pub async fn find_token(
        &self,
        source: &SourceId,
        keys: &[UserKey],
        server: &ServerId,
    ) -> Result<Option<TokenInfo>, StoreError> {
        let names: Vec<&str> = keys.iter().map(UserKey::as_str).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, user_key FROM bb2tc_tokens WHERE source = $1 AND server = $2 \
                 AND user_key = ANY($3)"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&source.as_str(), &server.as_str(), &names])
            .await
            .map_err(pg_error)?;
        Ok(names.iter().find_map(|key| {
            rows.iter()
                .find(|row| row.get::<_, &str>(9) == *key)
                .map(info)
        }))
    }

    /// Decrypts a token for a call, with its revision.
    pub async fn token_secret(&self, id: &str) -> Result<Option<(TeamCityToken, u64)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT sealed, revision FROM bb2tc_tokens WHERE id = $1")
            .await
            .map_err(pg_error)?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await.map_err(pg_error)? else {
            return Ok(None);
        };
        let plain = self.cipher.open(id.as_bytes(), row.get(0))?;
        let text = String::from_utf8(plain).map_err(|_| StoreError::Crypto)?;
        Ok(Some((TeamCityToken::new(text), unbig(row.get(1)))))
    }

    /// One token's record.
    pub async fn token(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM bb2tc_tokens WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.as_ref().map(info))
    }

    /// Lists tokens, oldest first.
    pub async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenInfo>, StoreError> {
        let client = self.client().await?;
        let source = filter.source.as_ref().map(SourceId::as_str);
        let user = filter.user.as_ref().map(UserKey::as_str);
        let server = filter.server.as_ref().map(ServerId::as_str);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM bb2tc_tokens WHERE ($1::text IS NULL OR source = $1) \
                     AND ($2::text IS NULL OR user_key = $2) AND ($3::text IS NULL OR server = $3) \
                     ORDER BY added_at, id"
                ),
                &[&source, &user, &server],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(info).collect())
    }

    /// Forgets a token; `false` when there was none.
    pub async fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM bb2tc_tokens WHERE id = $1", &[&id])
            .await
            .map_err(pg_error)?;
        Ok(n > 0)
    }

    /// TeamCity's verdict on `revision` of a token after a call (a replaced revision's is
    /// dropped).
    pub async fn mark_token(
        &self,
        id: &str,
        revision: u64,
        accepted: bool,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let status = if accepted {
            TokenStatus::Valid
        } else {
            TokenStatus::Invalid
        };
        client
            .execute(
                "UPDATE bb2tc_tokens SET status = $3, last_authenticated_at = \
                 CASE WHEN $4 THEN $5 ELSE last_authenticated_at END \
                 WHERE id = $1 AND revision = $2",
                &[
                    &id,
                    &big(revision),
                    &status.as_str(),
                    &accepted,
                    &big(clock::now_ms()),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

impl PgStore {
    /// Every token, opened (for `copy-store`).
    pub(super) async fn dump_tokens(&self) -> Result<Vec<DumpedToken>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, source, user_name, user_key, server, teamcity, teamcity_user, \
                 added_at, last_authenticated_at, status, revision, sealed FROM bb2tc_tokens \
                 ORDER BY added_at, id",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let mut out = Vec::new();
        for row in rows {
            let id: String = row.get(0);
            let plain = self.cipher.open(id.as_bytes(), row.get(11))?;
            let secret = String::from_utf8(plain).map_err(|_| StoreError::Crypto)?;
            out.push(DumpedToken {
                source: SourceId::new(row.get::<_, String>(1)),
                user: row.get(2),
                user_key: UserKey::parse(row.get(3))
                    .ok_or_else(|| StoreError::Corrupt(format!("token {id} has no user")))?,
                server: ServerId::new(row.get::<_, String>(4)),
                teamcity: row.get(5),
                teamcity_user: row.get(6),
                added_at: unbig(row.get(7)),
                last_authenticated_at: row.get::<_, Option<i64>>(8).map(unbig),
                status: status_from(row.get(9)).unwrap_or(TokenStatus::Unverified),
                revision: unbig(row.get(10)),
                secret: TeamCityToken::new(secret),
                id,
            });
        }
        Ok(out)
    }

    /// Stores dumped tokens, sealed under this store's key, in `tx`.
    pub(super) async fn load_tokens(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tokens: &[DumpedToken],
    ) -> Result<(), StoreError> {
        for t in tokens {
            let sealed = self
                .cipher
                .seal(t.id.as_bytes(), t.secret.expose().as_bytes())?;
            tx.execute(
                "INSERT INTO bb2tc_tokens (id, source, user_key, server, user_name, teamcity, \
                 teamcity_user, added_at, last_authenticated_at, status, sealed, revision) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &t.id,
                    &t.source.as_str(),
                    &t.user_key.as_str(),
                    &t.server.as_str(),
                    &t.user,
                    &t.teamcity,
                    &t.teamcity_user,
                    &big(t.added_at),
                    &t.last_authenticated_at.map(big),
                    &t.status.as_str(),
                    &sealed,
                    &big(t.revision),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(())
    }
}
