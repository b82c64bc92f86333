//! Tokens in sled: `tokens` (id → record, the token sealed under the master key with the
//! record id as associated data) and `token_index` (`source \0 user key \0 server` → id).

use super::Trees;
use super::records::{decode, encode};
use crate::clock;
use crate::ids::{ServerId, SourceId, TeamCityToken, UserKey};
use crate::store::StoreError;
use crate::store::dump::DumpedToken;
use crate::store::tokens::{NewToken, TokenChoice, TokenFilter, TokenInfo, TokenStatus};
use serde::{Deserialize, Serialize};
use sled::Transactional;

/// The stored record (format version 1, see `records`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredToken {
    pub(super) id: String,
    source: SourceId,
    user: String,
    user_key: UserKey,
    server: ServerId,
    teamcity: String,
    teamcity_user: Option<String>,
    added_at: u64,
    last_authenticated_at: Option<u64>,
    status: TokenStatus,
    pub(super) sealed: String,
    /// How often the token under this id was replaced: TeamCity's verdict on a call counts
    /// only for the revision that was sent (a replacement keeps the id).
    revision: u64,
}

/// The token record of bb2tc up to a84aaec (format version 0): no revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredTokenV0 {
    id: String,
    source: SourceId,
    user: String,
    user_key: UserKey,
    server: ServerId,
    teamcity: String,
    teamcity_user: Option<String>,
    added_at: u64,
    last_authenticated_at: Option<u64>,
    status: TokenStatus,
    sealed: String,
}

impl StoredToken {
    pub(super) fn status(&self) -> TokenStatus {
        self.status
    }
}

impl From<StoredTokenV0> for StoredToken {
    fn from(v0: StoredTokenV0) -> Self {
        Self {
            id: v0.id,
            source: v0.source,
            user: v0.user,
            user_key: v0.user_key,
            server: v0.server,
            teamcity: v0.teamcity,
            teamcity_user: v0.teamcity_user,
            added_at: v0.added_at,
            last_authenticated_at: v0.last_authenticated_at,
            status: v0.status,
            sealed: v0.sealed,
            revision: 0,
        }
    }
}

impl From<&StoredToken> for TokenInfo {
    fn from(t: &StoredToken) -> Self {
        Self {
            id: t.id.clone(),
            source: t.source.clone(),
            user: t.user.clone(),
            teamcity: t.teamcity.clone(),
            teamcity_user: t.teamcity_user.clone(),
            added_at: clock::rfc3339(t.added_at),
            last_authenticated_at: t.last_authenticated_at.map(clock::rfc3339),
            status: t.status,
            server: t.server.clone(),
        }
    }
}

fn index_key(source: &SourceId, user: &UserKey, server: &ServerId) -> Vec<u8> {
    format!("{source}\0{user}\0{server}").into_bytes()
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl Trees {
    /// Registers a token, replacing (and keeping the id of) the one for the same source, user
    /// and server. Returns the record and whether it replaced one (synced by the caller).
    pub fn upsert_token(&self, new: &NewToken) -> Result<(TokenInfo, bool), StoreError> {
        let user_key =
            UserKey::parse(&new.user).ok_or_else(|| StoreError::Corrupt("empty user".into()))?;
        let key = index_key(&new.source, &user_key, &new.server);
        let existing = self.token_index.get(&key)?;
        let replaced = existing.is_some();
        let (id, revision) = match existing {
            Some(id) => {
                let previous = self.stored_token(&id)?;
                let id = String::from_utf8_lossy(&id).into_owned();
                (id, previous.map_or(0, |p| p.revision.wrapping_add(1)))
            }
            None => (random_id(), 0),
        };
        let record = StoredToken {
            sealed: self
                .cipher
                .seal(id.as_bytes(), new.token.expose().as_bytes())?,
            id: id.clone(),
            source: new.source.clone(),
            user: new.user.trim().to_owned(),
            user_key,
            server: new.server.clone(),
            teamcity: new.teamcity.clone(),
            teamcity_user: new.teamcity_user.clone(),
            added_at: clock::now_ms(),
            last_authenticated_at: None,
            status: new.status,
            revision,
        };
        let bytes = encode(&record)?;
        let previous = (&self.tokens, &self.token_index).transaction(|(tokens, index)| {
            let previous = tokens.insert(id.as_bytes(), bytes.as_slice())?;
            index.insert(key.as_slice(), id.as_bytes())?;
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(previous)
        })?;
        self.token_cache.clear();
        let previous = previous.and_then(|b| decode::<StoredToken>(&b).ok());
        self.stats
            .token_changed(previous.map(|p| p.status), Some(record.status));
        Ok((TokenInfo::from(&record), replaced))
    }

    /// Which token a pusher's delivery for `server` uses ([`find_token`](Self::find_token),
    /// remembered until the next write to the tokens).
    pub fn token_choice(
        &self,
        source: &SourceId,
        keys: &[UserKey],
        server: &ServerId,
    ) -> Result<Option<TokenChoice>, StoreError> {
        let miss = match self.token_cache.get(source, keys, server) {
            Ok(found) => return Ok(found),
            Err(miss) => miss,
        };
        let found = self
            .find_token(source, keys, server)?
            .map(|t| TokenChoice::from(&t));
        self.token_cache.fill(miss, found.clone());
        Ok(found)
    }

    /// The token a pusher registered for `server`, trying each of their keys in order.
    pub fn find_token(
        &self,
        source: &SourceId,
        keys: &[UserKey],
        server: &ServerId,
    ) -> Result<Option<TokenInfo>, StoreError> {
        for user in keys {
            if let Some(id) = self.token_index.get(index_key(source, user, server))?
                && let Some(record) = self.stored_token(&id)?
            {
                return Ok(Some(TokenInfo::from(&record)));
            }
        }
        Ok(None)
    }

    /// Decrypts a token for a TeamCity call, with the revision to report TeamCity's verdict
    /// on; `None` when it was removed.
    pub fn token_secret(&self, id: &str) -> Result<Option<(TeamCityToken, u64)>, StoreError> {
        #[cfg(test)]
        self.faults.check("token_secret")?;
        let Some(record) = self.stored_token(id.as_bytes())? else {
            return Ok(None);
        };
        let plain = self.cipher.open(record.id.as_bytes(), &record.sealed)?;
        let text = String::from_utf8(plain).map_err(|_| StoreError::Crypto)?;
        Ok(Some((TeamCityToken::new(text), record.revision)))
    }

    /// One token's record.
    pub fn token(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        Ok(self
            .stored_token(id.as_bytes())?
            .as_ref()
            .map(TokenInfo::from))
    }

    /// Lists tokens, oldest first.
    pub fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenInfo>, StoreError> {
        let mut out = Vec::new();
        for item in self.records::<StoredToken>(&self.tokens) {
            let (_, record) = item?;
            let keep = filter.source.as_ref().is_none_or(|s| s == &record.source)
                && filter.user.as_ref().is_none_or(|u| u == &record.user_key)
                && filter.server.as_ref().is_none_or(|s| s == &record.server);
            if keep {
                out.push(TokenInfo::from(&record));
            }
        }
        out.sort_by(|a, b| a.added_at.cmp(&b.added_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Forgets a token; `false` when there was none with that id (synced by the caller).
    pub fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let Some(record) = self.stored_token(id.as_bytes())? else {
            return Ok(false);
        };
        let key = index_key(&record.source, &record.user_key, &record.server);
        let removed = (&self.tokens, &self.token_index).transaction(|(tokens, index)| {
            let removed = tokens.remove(id.as_bytes())?;
            if index.get(key.as_slice())?.as_deref() == Some(id.as_bytes()) {
                index.remove(key.as_slice())?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(removed)
        })?;
        self.token_cache.clear();
        if let Some(removed) = removed.and_then(|b| decode::<StoredToken>(&b).ok()) {
            self.stats.token_changed(Some(removed.status), None);
        }
        Ok(true)
    }

    /// Records TeamCity's verdict on a token after a call made with `revision` of it:
    /// accepted (stamps *last authenticated*) or rejected with 401. A verdict on a revision
    /// that was replaced since says nothing about the new token and is dropped.
    pub fn mark_token(&self, id: &str, revision: u64, accepted: bool) -> Result<(), StoreError> {
        let now = clock::now_ms();
        let mut change = None;
        self.tokens.fetch_and_update(id.as_bytes(), |old| {
            // A removed token stays removed; a record that cannot be read is left as it is.
            change = None;
            let old = old?;
            let Ok(mut record) = decode::<StoredToken>(old) else {
                return Some(old.to_vec());
            };
            if record.revision != revision {
                return Some(old.to_vec());
            }
            let before = record.status;
            if accepted {
                record.status = TokenStatus::Valid;
                record.last_authenticated_at = Some(now);
            } else {
                record.status = TokenStatus::Invalid;
            }
            change = Some((before, record.status));
            Some(encode(&record).unwrap_or_else(|_| old.to_vec()))
        })?;
        if let Some((before, after)) = change {
            if before != after {
                self.token_cache.clear();
            }
            self.stats.token_changed(Some(before), Some(after));
        }
        Ok(())
    }

    fn stored_token(&self, id: &[u8]) -> Result<Option<StoredToken>, StoreError> {
        self.read_record(&self.tokens, id)
    }
}

impl Trees {
    /// Every readable token, opened (for `copy-store`).
    pub(super) fn dump_tokens(&self) -> Result<Vec<DumpedToken>, StoreError> {
        let mut out = Vec::new();
        for item in self.records::<StoredToken>(&self.tokens) {
            let (_, t) = item?;
            let plain = self.cipher.open(t.id.as_bytes(), &t.sealed)?;
            let secret = String::from_utf8(plain).map_err(|_| StoreError::Crypto)?;
            out.push(DumpedToken {
                id: t.id,
                source: t.source,
                user: t.user,
                user_key: t.user_key,
                server: t.server,
                teamcity: t.teamcity,
                teamcity_user: t.teamcity_user,
                added_at: t.added_at,
                last_authenticated_at: t.last_authenticated_at,
                status: t.status,
                revision: t.revision,
                secret: TeamCityToken::new(secret),
            });
        }
        Ok(out)
    }

    /// Stores dumped tokens, sealed under this store's key (synced by the caller).
    pub(super) fn load_tokens(&self, tokens: &[DumpedToken]) -> Result<(), StoreError> {
        for t in tokens {
            let record = StoredToken {
                sealed: self
                    .cipher
                    .seal(t.id.as_bytes(), t.secret.expose().as_bytes())?,
                id: t.id.clone(),
                source: t.source.clone(),
                user: t.user.clone(),
                user_key: t.user_key.clone(),
                server: t.server.clone(),
                teamcity: t.teamcity.clone(),
                teamcity_user: t.teamcity_user.clone(),
                added_at: t.added_at,
                last_authenticated_at: t.last_authenticated_at,
                status: t.status,
                revision: t.revision,
            };
            self.tokens.insert(t.id.as_bytes(), encode(&record)?)?;
            self.token_index.insert(
                index_key(&t.source, &t.user_key, &t.server),
                t.id.as_bytes(),
            )?;
        }
        self.token_cache.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_sled;

    fn new_token(
        source: &SourceId,
        user: &str,
        server: &ServerId,
        token: &TeamCityToken,
    ) -> NewToken {
        NewToken {
            source: source.clone(),
            user: user.to_owned(),
            server: server.clone(),
            teamcity: "https://tc.example.com".into(),
            token: token.clone(),
            status: TokenStatus::Valid,
            teamcity_user: Some("jdoe".into()),
        }
    }

    #[tokio::test]
    async fn upsert_find_replace_remove() {
        let (_dir, store) = temp_sled();
        let (dc, main) = (SourceId::new("dc"), ServerId::new("main"));
        let first = TeamCityToken::new("first-token");
        let (info, replaced) = store
            .upsert_token(&new_token(&dc, "JDoe", &main, &first))
            .unwrap();
        assert!(!replaced);
        assert_eq!(info.user, "JDoe");
        let keys = [
            UserKey::parse("nobody").unwrap(),
            UserKey::parse("jdoe").unwrap(),
        ];
        let found = store.find_token(&dc, &keys, &main).unwrap().unwrap();
        assert_eq!(found.id, info.id);
        assert!(
            store
                .find_token(&dc, &keys, &ServerId::new("other"))
                .unwrap()
                .is_none()
        );

        let second = TeamCityToken::new("second-token");
        let (again, replaced) = store
            .upsert_token(&new_token(&dc, "jdoe", &main, &second))
            .unwrap();
        assert!(replaced);
        assert_eq!(again.id, info.id);
        assert_eq!(
            store.token_secret(&info.id).unwrap().unwrap().0.expose(),
            "second-token"
        );
        assert_eq!(store.list_tokens(&TokenFilter::default()).unwrap().len(), 1);

        // A 401 for the first token (revision 0), answered after it was replaced, says
        // nothing about the second one.
        store.mark_token(&info.id, 0, false).unwrap();
        assert_eq!(
            store.list_tokens(&TokenFilter::default()).unwrap()[0].status,
            TokenStatus::Valid
        );
        let revision = store.token_secret(&info.id).unwrap().unwrap().1;
        assert_eq!(revision, 1);
        store.mark_token(&info.id, revision, false).unwrap();
        assert_eq!(
            store.list_tokens(&TokenFilter::default()).unwrap()[0].status,
            TokenStatus::Invalid
        );
        assert_eq!(store.stats().tokens[&TokenStatus::Invalid], 1);
        store.mark_token(&info.id, revision, true).unwrap();
        let listed = store.list_tokens(&TokenFilter::default()).unwrap();
        assert_eq!(listed[0].status, TokenStatus::Valid);
        assert!(listed[0].last_authenticated_at.is_some());

        assert!(store.remove_token(&info.id).unwrap());
        assert!(!store.remove_token(&info.id).unwrap());
        assert!(store.find_token(&dc, &keys, &main).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_token_chosen_for_deliveries_follows_every_write() {
        let (_dir, store) = temp_sled();
        let (dc, main) = (SourceId::new("dc"), ServerId::new("main"));
        let keys = [UserKey::parse("jdoe").unwrap()];
        let choice = |store: &Trees| store.token_choice(&dc, &keys, &main).unwrap();
        // Asked before the pusher registered one: none (and that answer is remembered)...
        assert_eq!(choice(&store), None);
        assert_eq!(choice(&store), None);
        // ... until they register it.
        let token = TeamCityToken::new("the-token");
        let (info, _) = store
            .upsert_token(&new_token(&dc, "jdoe", &main, &token))
            .unwrap();
        let valid = TokenChoice {
            id: info.id.clone(),
            status: TokenStatus::Valid,
        };
        assert_eq!(choice(&store), Some(valid.clone()));
        // TeamCity accepting it again changes nothing chosen; rejecting it does.
        store.mark_token(&info.id, 0, true).unwrap();
        assert_eq!(choice(&store), Some(valid));
        store.mark_token(&info.id, 0, false).unwrap();
        assert_eq!(choice(&store).unwrap().status, TokenStatus::Invalid);
        store.mark_token(&info.id, 0, true).unwrap();
        assert_eq!(choice(&store).unwrap().status, TokenStatus::Valid);
        assert!(store.remove_token(&info.id).unwrap());
        assert_eq!(choice(&store), None);
        // A restored dump counts as a write too.
        let dumped = store.dump_tokens().unwrap();
        assert!(dumped.is_empty());
        store
            .upsert_token(&new_token(&dc, "jdoe", &main, &token))
            .unwrap();
        let dumped = store.dump_tokens().unwrap();
        let (_other_dir, other) = temp_sled();
        assert_eq!(choice(&other), None);
        other.load_tokens(&dumped).unwrap();
        assert_eq!(choice(&other).unwrap().id, dumped[0].id);
    }

    #[tokio::test]
    async fn token_text_never_reaches_the_files() {
        let (dir, store) = temp_sled();
        let token = TeamCityToken::new("eyJ0eXAiOiAiVENWMiJ9.UNIQUE-PLAINTEXT-MARKER");
        store
            .upsert_token(&new_token(
                &SourceId::new("dc"),
                "u",
                &ServerId::new("main"),
                &token,
            ))
            .unwrap();
        drop(store);
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            let needle = b"UNIQUE-PLAINTEXT-MARKER";
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains the token",
                entry.display()
            );
        }
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
