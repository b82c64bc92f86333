//! TeamCity access tokens, one per (source, user key, server) (SPEC §1, §8): what the API
//! shows ([`TokenInfo`], never the token) and what a registration gives.

use crate::ids::{ServerId, SourceId, TeamCityToken, UserKey};
use serde::{Deserialize, Serialize};

/// Whether TeamCity accepted the token the last time it was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    /// TeamCity accepted it.
    Valid,
    /// TeamCity answered 401.
    Invalid,
    /// Registered without verification and not used yet.
    Unverified,
}

impl TokenStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Valid => "valid",
            TokenStatus::Invalid => "invalid",
            TokenStatus::Unverified => "unverified",
        }
    }
}

/// A pusher's token for a server, as far as choosing it for a delivery's jobs goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChoice {
    /// The token record's id.
    pub id: String,
    /// valid, invalid or unverified.
    pub status: TokenStatus,
}

impl From<&TokenInfo> for TokenChoice {
    fn from(t: &TokenInfo) -> Self {
        Self {
            id: t.id.clone(),
            status: t.status,
        }
    }
}

/// A token record as the API shows it (SPEC §8); never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Record id.
    pub id: String,
    /// Bitbucket source id.
    pub source: SourceId,
    /// User as registered.
    pub user: String,
    /// TeamCity server URL.
    pub teamcity: String,
    /// TeamCity's name for the token's owner, when verified.
    pub teamcity_user: Option<String>,
    /// RFC 3339 UTC.
    pub added_at: String,
    /// RFC 3339 UTC, when TeamCity last accepted the token.
    pub last_authenticated_at: Option<String>,
    /// valid, invalid or unverified.
    pub status: TokenStatus,
    /// The configured server id (not in the SPEC record; convenient for scripts).
    pub server: ServerId,
}

/// A new registration.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Bitbucket source.
    pub source: SourceId,
    /// User as typed (name, slug, uuid or account id).
    pub user: String,
    /// Server id.
    pub server: ServerId,
    /// Server URL (normalised).
    pub teamcity: String,
    /// The token.
    pub token: TeamCityToken,
    /// valid when verified, unverified otherwise.
    pub status: TokenStatus,
    /// TeamCity's user name, from verification.
    pub teamcity_user: Option<String>,
}

/// Filters for listing; `None` matches all.
#[derive(Debug, Default, Clone)]
pub struct TokenFilter {
    /// Only this source.
    pub source: Option<SourceId>,
    /// Only this user (case-insensitive).
    pub user: Option<UserKey>,
    /// Only this server.
    pub server: Option<ServerId>,
}
