//! The master key at start-up, and rotating it (`bb2tc rotate-key`).
//!
//! The first start seals a known value under the key; later starts must open it, so a wrong
//! key fails start-up clearly instead of producing garbage later. A rotation re-seals every
//! token and the check value in one transaction. With a key file it first writes the new key
//! to `master.key.new`, then rotates the store, then renames the file over `master.key`; a
//! start that finds the store already under the new key completes that rename.

use super::records::{decode, encode};
use super::{Trees, io_error, tokens::StoredToken};
use crate::config::StorageSettings;
use crate::ids::Secret;
use crate::store::{StoreError, TokenCipher};
use sled::Transactional;

const KEY_CHECK: &[u8] = b"key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"bb2tc master key check";

/// Loads the master key and checks it against the store.
pub(super) fn open_cipher(
    settings: &StorageSettings,
    meta: &sled::Tree,
) -> Result<TokenCipher, StoreError> {
    let dir = &settings.path;
    let key_file_existed = TokenCipher::key_file(dir).exists();
    let cipher = TokenCipher::load(settings.master_key.as_ref(), dir)?;
    match key_matches(meta, &cipher)? {
        Some(true) => Ok(cipher),
        None => {
            let sealed = cipher.seal(KEY_CHECK, KEY_CHECK_PLAINTEXT)?;
            meta.insert(KEY_CHECK, sealed.as_bytes())?;
            meta.flush()?;
            Ok(cipher)
        }
        Some(false) => {
            let pending = TokenCipher::new_key_file(dir);
            if settings.master_key.is_none() && pending.exists() {
                let next = TokenCipher::from_key_file(&pending)?;
                if key_matches(meta, &next)? == Some(true) {
                    let current = TokenCipher::key_file(dir);
                    std::fs::rename(&pending, &current).map_err(|e| io_error(&current, e))?;
                    sync_dir(dir)?;
                    tracing::warn!("completed an interrupted master key rotation");
                    return Ok(next);
                }
            }
            if settings.master_key.is_none() && !key_file_existed {
                // A key file made just now for a store sealed under another key is useless:
                // leave none behind to be mistaken for the right one.
                let made = TokenCipher::key_file(dir);
                std::fs::remove_file(&made).map_err(|e| io_error(&made, e))?;
            }
            Err(StoreError::WrongMasterKey(dir.display().to_string()))
        }
    }
}

/// Whether `cipher` opens the check value; `None` when the store has none yet.
fn key_matches(meta: &sled::Tree, cipher: &TokenCipher) -> Result<Option<bool>, StoreError> {
    let Some(sealed) = meta.get(KEY_CHECK)? else {
        return Ok(None);
    };
    let sealed =
        std::str::from_utf8(&sealed).map_err(|_| StoreError::Corrupt("key check value".into()))?;
    Ok(Some(
        cipher
            .open(KEY_CHECK, sealed)
            .is_ok_and(|plain| plain == KEY_CHECK_PLAINTEXT),
    ))
}

fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl Trees {
    /// Re-seals every token under `new_key` (base64 of 32 bytes). With a configured key the
    /// caller must then configure `new_key`; with a key file, `master.key` is replaced.
    /// Returns how many tokens were re-sealed. Run with the bridge stopped (sled's lock
    /// ensures no other process has the store open).
    pub async fn rotate_master_key(
        &self,
        new_key: &Secret,
        uses_key_file: bool,
    ) -> Result<usize, StoreError> {
        let next = TokenCipher::from_base64(new_key.expose())?;
        let pending = TokenCipher::new_key_file(self.path());
        if uses_key_file {
            if pending.exists() {
                std::fs::remove_file(&pending).map_err(|e| io_error(&pending, e))?;
            }
            TokenCipher::write_key_file(&pending, new_key.expose())?;
        }
        let mut resealed = Vec::new();
        for item in self.tokens.iter() {
            let (id, bytes) = item?;
            let mut record: StoredToken = decode(&bytes)?;
            let plain = self.cipher.open(record.id.as_bytes(), &record.sealed)?;
            record.sealed = next.seal(record.id.as_bytes(), &plain)?;
            resealed.push((id, encode(&record)?));
        }
        let check = next.seal(KEY_CHECK, KEY_CHECK_PLAINTEXT)?;
        (&self.tokens, &self.meta).transaction(|(tokens, meta)| {
            for (id, bytes) in &resealed {
                tokens.insert(id, bytes.as_slice())?;
            }
            meta.insert(KEY_CHECK, check.as_bytes())?;
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        self.commit().await?;
        if uses_key_file {
            let current = TokenCipher::key_file(self.path());
            std::fs::rename(&pending, &current).map_err(|e| io_error(&current, e))?;
            sync_dir(self.path())?;
        }
        Ok(resealed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ServerId, SourceId, TeamCityToken};
    use crate::store::sled::SledStore;
    use crate::store::tokens::{NewToken, TokenStatus};

    async fn with_tokens(settings: &StorageSettings) -> Vec<String> {
        let store = SledStore::open(settings).unwrap();
        let mut ids = Vec::new();
        for user in ["a", "b", "c"] {
            let token = TeamCityToken::new(format!("token-of-{user}"));
            let (info, _) = store
                .upsert_token(&NewToken {
                    source: SourceId::new("dc"),
                    user: user.to_owned(),
                    server: ServerId::new("main"),
                    teamcity: "https://tc".into(),
                    token,
                    status: TokenStatus::Valid,
                    teamcity_user: None,
                })
                .unwrap();
            ids.push(info.id);
        }
        ids
    }

    #[tokio::test]
    async fn rotation_with_a_key_file_keeps_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        let ids = with_tokens(&settings).await;
        let old_key = std::fs::read_to_string(settings.path.join("master.key")).unwrap();
        {
            let store = SledStore::open(&settings).unwrap();
            let new_key = Secret::new(TokenCipher::generate_key());
            assert_eq!(store.rotate_master_key(&new_key, true).await.unwrap(), 3);
        }
        assert_ne!(
            std::fs::read_to_string(settings.path.join("master.key")).unwrap(),
            old_key
        );
        assert!(!settings.path.join("master.key.new").exists());
        let store = SledStore::open(&settings).unwrap();
        for (id, user) in ids.iter().zip(["a", "b", "c"]) {
            assert_eq!(
                store.token_secret(id).unwrap().unwrap().0.expose(),
                format!("token-of-{user}")
            );
        }
    }

    #[tokio::test]
    async fn an_interrupted_rotation_is_completed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        let ids = with_tokens(&settings).await;
        let new_key = TokenCipher::generate_key();
        {
            // Rotate the store, but "crash" before the key file is renamed.
            let store = SledStore::open(&settings).unwrap();
            store
                .rotate_master_key(&Secret::new(new_key.clone()), false)
                .await
                .unwrap();
            TokenCipher::write_key_file(&settings.path.join("master.key.new"), &new_key).unwrap();
        }
        let store = SledStore::open(&settings).unwrap();
        assert_eq!(
            store.token_secret(&ids[0]).unwrap().unwrap().0.expose(),
            "token-of-a"
        );
        assert_eq!(
            std::fs::read_to_string(settings.path.join("master.key"))
                .unwrap()
                .trim(),
            new_key
        );
    }

    #[tokio::test]
    async fn a_missing_key_file_is_not_replaced_by_a_useless_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::test_support::settings(dir.path());
        with_tokens(&settings).await;
        let key = TokenCipher::key_file(&settings.path);
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            SledStore::open(&settings).unwrap_err(),
            StoreError::WrongMasterKey(_)
        ));
        assert!(!key.exists(), "no fresh key file left behind");
    }

    #[tokio::test]
    async fn rotation_with_a_configured_key() {
        let dir = tempfile::tempdir().unwrap();
        let old = StorageSettings {
            path: dir.path().join("data"),
            master_key: Some(Secret::new(TokenCipher::generate_key())),
            intake_segment_bytes: crate::config::DEFAULT_INTAKE_SEGMENT_BYTES,
            postgres: None,
        };
        let ids = with_tokens(&old).await;
        let new_key = Secret::new(TokenCipher::generate_key());
        SledStore::open(&old)
            .unwrap()
            .rotate_master_key(&new_key, false)
            .await
            .unwrap();
        assert!(matches!(
            SledStore::open(&old).unwrap_err(),
            StoreError::WrongMasterKey(_)
        ));
        let new = StorageSettings {
            path: old.path.clone(),
            master_key: Some(new_key),
            intake_segment_bytes: crate::config::DEFAULT_INTAKE_SEGMENT_BYTES,
            postgres: None,
        };
        let store = SledStore::open(&new).unwrap();
        assert_eq!(
            store.token_secret(&ids[2]).unwrap().unwrap().0.expose(),
            "token-of-c"
        );
    }
}
