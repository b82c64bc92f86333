//! Newtypes for values that are easy to mix up, and for secrets that must never be printed.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Id of a configured Bitbucket instance or Cloud workspace (`[[bitbucket]] id`).
    SourceId
);
string_id!(
    /// Id of a configured TeamCity server (`[[teamcity]] id`).
    ServerId
);
string_id!(
    /// A TeamCity build configuration id (`buildType.id`).
    BuildTypeId
);

/// Who pushed, normalised for lookups: Data Center login name or slug, Cloud uuid or
/// account id. Lower-cased, because Data Center matches names case-insensitively and the
/// Cloud identifiers are case-insensitive hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserKey(String);

impl UserKey {
    /// Normalises a user name, slug, uuid or account id; `None` when it is empty.
    pub fn parse(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            None
        } else {
            Some(Self(trimmed.to_lowercase()))
        }
    }

    /// The normalised key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A git object id, stored lower-case: in full — 40 (SHA-1) or 64 (SHA-256) hex digits — or,
/// where Bitbucket Cloud sends no more and it could not be looked up, abbreviated
/// ([`Sha::parse_abbreviated`], at least 7 digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sha(String);

impl Sha {
    /// Accepts a full hex object id; anything else (short ids, junk) is `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = matches!(raw.len(), 40 | 64) && raw.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(raw.to_ascii_lowercase()))
    }

    /// Accepts a full id or an abbreviated one of at least 7 hex digits (Bitbucket Cloud's
    /// pull-request payloads carry 12).
    pub fn parse_abbreviated(raw: &str) -> Option<Self> {
        let ok = (7..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(raw.to_ascii_lowercase()))
    }

    /// Whether this is the whole id (TeamCity can pin only a whole one).
    pub fn is_full(&self) -> bool {
        matches!(self.0.len(), 40 | 64)
    }

    /// The first twelve digits (or all, when fewer): what a full id and Cloud's abbreviated
    /// one of the same commit share, for de-duplication.
    pub fn prefix12(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }

    /// True for git's "no object" id (all zeros), which Bitbucket sends for deletions.
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }

    /// The first seven digits, as git and TeamCity show them.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }

    /// The full id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Its `Debug` prints `[redacted]` and it has no `Display`, so it cannot end up in a log
        /// line or an error message by accident.
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Wraps the secret text.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret itself, for the one place that must use it.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret!(
    /// A TeamCity access token (sent as `Authorization: Bearer …`).
    TeamCityToken
);
secret!(
    /// A Bitbucket webhook secret or the admin token.
    Secret
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_accepts_full_hex_only() {
        assert!(Sha::parse("2f46e2fa1a1a067bd1b87e7aa16d7e0caf90d801").is_some());
        assert_eq!(
            Sha::parse("2F46E2FA1A1A067BD1B87E7AA16D7E0CAF90D801").map(|s| s.short().to_owned()),
            Some("2f46e2f".to_owned())
        );
        assert!(Sha::parse("2f46e2fa1a1").is_none());
        let short = Sha::parse_abbreviated("D31DF3425C5B").unwrap();
        assert_eq!((short.as_str(), short.is_full()), ("d31df3425c5b", false));
        assert!(Sha::parse_abbreviated("d31df3").is_none());
        assert!(Sha::parse_abbreviated("d31df3425c5g").is_none());
        let full = Sha::parse("2f46e2fa1a1a067bd1b87e7aa16d7e0caf90d801").unwrap();
        assert_eq!((full.prefix12(), full.is_full()), ("2f46e2fa1a1a", true));
        assert!(Sha::parse("zz46e2fa1a1a067bd1b87e7aa16d7e0caf90d801").is_none());
        assert!(Sha::parse(&"0".repeat(40)).is_some_and(|s| s.is_zero()));
    }

    #[test]
    fn user_keys_are_case_insensitive() {
        assert_eq!(UserKey::parse("JDoe"), UserKey::parse("jdoe "));
        assert_eq!(UserKey::parse("  "), None);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let token = TeamCityToken::new("eyJ0eXAiOiAiVENWMiJ9.secret");
        assert_eq!(format!("{token:?}"), "[redacted]");
        assert_eq!(
            format!("{:?}", Some(Secret::new("s3cr3t"))),
            "Some([redacted])"
        );
    }
}
