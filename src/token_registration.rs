//! Registering a TeamCity token: verify it with TeamCity (SPEC §6, `users/current`), then
//! store it. Shared by the admin API and the token page, which word the failures differently.

use crate::app::App;
use crate::config::{Source, TeamCityServer};
use crate::ids::TeamCityToken;
use crate::store::tokens::NewToken;
use crate::store::{StoreError, TokenInfo, TokenStatus};
use crate::teamcity::TeamCityError;

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// TeamCity answered the check with an error (401: not accepted; others: refused).
    #[error("TeamCity {server_url} refused the token: {error}")]
    Refused {
        /// The server's URL.
        server_url: String,
        /// TeamCity's answer.
        error: TeamCityError,
    },
    /// TeamCity could not be asked.
    #[error("could not verify the token with TeamCity {server_url}: {error}")]
    Unreachable {
        /// The server's URL.
        server_url: String,
        /// What went wrong.
        error: TeamCityError,
    },
    /// The text cannot be a TeamCity token (it would not fit in an HTTP header).
    #[error(
        "a TeamCity token is one line of printable ASCII (no spaces, line breaks or other characters); check what was pasted"
    )]
    Malformed,
    /// The store did not take the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `text` can be a TeamCity access token: it travels as `Authorization: Bearer`,
/// so it is visible ASCII only. Checked with and without `verify`, so that an unverified
/// token cannot make every job die later with a confusing error.
fn well_formed(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Verifies `token` with `server` (unless `verify` is false) and stores it for (`source`,
/// `user`, `server`), replacing an earlier one. Returns the record and whether it replaced one.
pub async fn register(
    app: &App,
    source: &Source,
    user: &str,
    server: &TeamCityServer,
    token: &TeamCityToken,
    verify: bool,
) -> Result<(TokenInfo, bool), RegistrationError> {
    if !well_formed(token.expose()) {
        return Err(RegistrationError::Malformed);
    }
    let (status, teamcity_user) = if verify {
        let checked = match app.client(server) {
            Some(client) => client.current_user(token).await,
            None => Err(TeamCityError::Setup(format!(
                "no client for server {}",
                server.id
            ))),
        };
        match checked {
            Ok(name) => (TokenStatus::Valid, Some(name)),
            Err(error @ (TeamCityError::Unauthorized(_) | TeamCityError::Rejected { .. })) => {
                return Err(RegistrationError::Refused {
                    server_url: server.base_url().to_owned(),
                    error,
                });
            }
            Err(error) => {
                return Err(RegistrationError::Unreachable {
                    server_url: server.base_url().to_owned(),
                    error,
                });
            }
        }
    } else {
        (TokenStatus::Unverified, None)
    };
    let (info, replaced) = app
        .store
        .upsert_token(NewToken {
            source: source.id.clone(),
            user: user.to_owned(),
            server: server.id.clone(),
            teamcity: server.base_url().to_owned(),
            token: token.clone(),
            status,
            teamcity_user,
        })
        .await?;
    tracing::info!(
        source = %source.id, user, server = %server.id, replaced,
        status = status.as_str(), "token registered"
    );
    Ok((info, replaced))
}
