//! `X-Hub-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body bytes (SPEC §5.1).

use crate::ids::Secret;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Why a delivery's signature was refused. All of them answer 401 the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature` header.
    #[error("signature header missing")]
    Missing,
    /// Not `sha256=` followed by 64 hex digits.
    #[error("signature header malformed")]
    Malformed,
    /// Well-formed, but made with none of the configured secrets.
    #[error("signature matches no configured secret")]
    Mismatch,
}

/// Checks `header` against `body` with every secret; any match is enough (secret rotation).
/// The comparison is constant-time (`Mac::verify_slice`).
pub fn verify(
    secrets: &[Secret],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let expected = parse_header(header.ok_or(SignatureError::Missing)?)?;
    let matched = secrets.iter().any(|secret| {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(secret.expose().as_bytes())
            .map(|mac| mac.chain_update(body).verify_slice(&expected).is_ok())
            .unwrap_or(false)
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header value Bitbucket would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let digest = HmacSha256::new_from_slice(secret)
        .map(|mac| mac.chain_update(body).finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!("sha256={}", hex::encode(digest))
}

/// `sha256=<64 hex>` → the 32 digest bytes. The algorithm name and hex are case-insensitive.
fn parse_header(raw: &[u8]) -> Result<[u8; 32], SignatureError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| SignatureError::Malformed)?
        .trim();
    let (algorithm, hex_digest) = text.split_once('=').ok_or(SignatureError::Malformed)?;
    if !algorithm.eq_ignore_ascii_case("sha256") || hex_digest.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn sign_and_verify_round_trip_with_rotation() {
        let body = br#"{"eventKey":"repo:refs_changed"}"#;
        let header = sign(b"new", body);
        assert!(header.starts_with("sha256=") && header.len() == 71);
        assert_eq!(
            verify(&secrets(&["old", "new"]), Some(header.as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&secrets(&["old"]), Some(header.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
        let upper = format!("SHA256={}", header[7..].to_uppercase());
        assert_eq!(
            verify(&secrets(&["new"]), Some(upper.as_bytes()), body),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let s = secrets(&["x"]);
        assert_eq!(verify(&s, None, b""), Err(SignatureError::Missing));
        for bad in [
            "",
            "sha256",
            "sha1=abcd",
            "sha256=zz",
            "sha256=abc",
            "md5=00",
        ] {
            assert_eq!(
                verify(&s, Some(bad.as_bytes()), b""),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(&s, Some(&[0xff, 0xfe]), b""),
            Err(SignatureError::Malformed)
        );
    }
}
