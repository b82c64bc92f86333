//! Encryption of TeamCity tokens at rest (SPEC §9): XChaCha20-Poly1305 with a random 24-byte
//! nonce per value, under the master key from `storage.master_key` or `<path>/master.key`.
//!
//! Each sealed value is bound to the id of the record that holds it (as associated data), so
//! a ciphertext copied into another record does not decrypt.

use super::StoreError;
use crate::ids::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::path::Path;

const NONCE_LEN: usize = 24;
const KEY_FILE: &str = "master.key";
const NEW_KEY_FILE: &str = "master.key.new";

/// Seals and opens token values.
pub struct TokenCipher {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher([redacted])")
    }
}

impl TokenCipher {
    /// Uses `configured` (base64 of 32 bytes) when given, else reads `<dir>/master.key`,
    /// creating it with mode 0600 on first start.
    pub fn load(configured: Option<&Secret>, dir: &Path) -> Result<Self, StoreError> {
        let key_bytes = match configured {
            Some(secret) => decode_key(secret.expose()).ok_or_else(|| {
                StoreError::MasterKey(
                    "storage.master_key must be base64 of exactly 32 bytes".into(),
                )
            })?,
            None => load_or_create_key_file(&dir.join(KEY_FILE))?,
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key_bytes)
            .map_err(|_| StoreError::MasterKey("master key must be 32 bytes".into()))?;
        Ok(Self { cipher })
    }

    /// A cipher for a base64-encoded 32-byte key.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let key = decode_key(text).ok_or_else(|| {
            StoreError::MasterKey("a master key must be base64 of exactly 32 bytes".into())
        })?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| StoreError::MasterKey("master key must be 32 bytes".into()))?;
        Ok(Self { cipher })
    }

    /// `<dir>/master.key`.
    pub fn key_file(dir: &Path) -> std::path::PathBuf {
        dir.join(KEY_FILE)
    }

    /// `<dir>/master.key.new`: the next key while a rotation is under way.
    pub fn new_key_file(dir: &Path) -> std::path::PathBuf {
        dir.join(NEW_KEY_FILE)
    }

    /// Reads a key file.
    pub fn from_key_file(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::from_base64(&text).map_err(|_| {
            StoreError::MasterKey(format!(
                "{} must hold base64 of exactly 32 bytes",
                path.display()
            ))
        })
    }

    /// Writes `encoded` to a new key file, mode 0600, synced.
    pub fn write_key_file(path: &Path, encoded: &str) -> Result<(), StoreError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| io(path, e))?;
        file.write_all(format!("{encoded}\n").as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| io(path, e))
    }

    /// A fresh random key, base64-encoded (for `storage.master_key` or key rotation).
    pub fn generate_key() -> String {
        BASE64.encode(rand::random::<[u8; 32]>())
    }

    /// Encrypts `plaintext` bound to `context` (the record id); base64 of nonce ‖ ciphertext.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<String, StoreError> {
        let nonce = XNonce::generate();
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// Decrypts a value made by [`seal`](Self::seal) with the same key and context.
    pub fn open(&self, context: &[u8], sealed: &str) -> Result<Vec<u8>, StoreError> {
        let raw = BASE64.decode(sealed).map_err(|_| StoreError::Crypto)?;
        if raw.len() < NONCE_LEN {
            return Err(StoreError::Crypto);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| StoreError::Crypto)?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Crypto)
    }
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text.trim()).ok().filter(|k| k.len() == 32)
}

fn load_or_create_key_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(&text).ok_or_else(|| {
            StoreError::MasterKey(format!(
                "{} must hold base64 of exactly 32 bytes",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let encoded = TokenCipher::generate_key();
            TokenCipher::write_key_file(path, &encoded)?;
            tracing::info!(path = %path.display(), "generated a new master key");
            decode_key(&encoded).ok_or(StoreError::Crypto)
        }
        Err(e) => Err(io(path, e)),
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::MasterKey(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = TokenCipher::load(None, dir.path()).unwrap();
        let a = cipher.seal(b"id-1", b"tc-token").unwrap();
        let b = cipher.seal(b"id-1", b"tc-token").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.contains("tc-token"));
        assert_eq!(cipher.open(b"id-1", &a).unwrap(), b"tc-token");
        assert!(cipher.open(b"id-2", &a).is_err());
        assert!(cipher.open(b"id-1", "AAAA").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = TokenCipher::load(None, dir.path()).unwrap();
        let sealed = first.seal(b"x", b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = TokenCipher::load(None, dir.path()).unwrap();
        assert_eq!(second.open(b"x", &sealed).unwrap(), b"secret");
    }

    #[test]
    fn configured_key_must_be_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TokenCipher::load(Some(&Secret::new("c2hvcnQ=")), dir.path()).is_err());
        let key = TokenCipher::generate_key();
        assert!(TokenCipher::load(Some(&Secret::new(key)), dir.path()).is_ok());
    }
}
