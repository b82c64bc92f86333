//! Who is signing in to the token page: Bitbucket's OAuth 2.0 endpoints, and the calls that
//! turn a Bitbucket credential (an OAuth access token or a pasted personal token) into the
//! same user key that webhooks carry (SPEC §1).
//!
//! - Data Center has no user-info endpoint: any authenticated REST call answers with the
//!   caller's login in `X-AUSERNAME` (percent-encoded) and id in `X-AUSERID`; a second call
//!   (`/rest/api/latest/users?filter=`) tells whether that is an active, normal user and not
//!   a service user (the identity behind project and repository access tokens).
//! - Cloud: `GET /2.0/user` gives the `uuid` (the user key) and the account's type and status.
//!
//! The credential is used for these calls only and then dropped; it is never stored.

use crate::config::{CLOUD_API, Source, SourceKind};
use crate::ids::{Secret, UserKey};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use std::time::Duration;

/// How long a call to Bitbucket may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Bitbucket Cloud's OAuth endpoints live on the web host, not the API host.
const CLOUD_WEB: &str = "https://bitbucket.org";

/// Data Center scope asked for: read access ("Repositories: Read"). bb2tc only reads who the
/// user is, but the user lookup needs an authenticated read scope; "no scope"
/// (`PUBLIC_REPOS`) only reaches public resources.
const DATACENTER_SCOPE: &str = "REPO_READ";

/// A Bitbucket credential to identify its owner with.
pub enum Credential {
    /// An OAuth access token or a Data Center HTTP access token.
    Bearer(Secret),
    /// A Bitbucket Cloud API token, used with the account's email address.
    EmailAndToken {
        /// The Atlassian account's email.
        email: String,
        /// The API token.
        token: Secret,
    },
}

/// A proven Bitbucket identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Data Center login name or Cloud uuid (with braces): what the page registers tokens
    /// under.
    pub user: UserKey,
    /// The user's other keys that webhooks match too (SPEC §1): Data Center slug, Cloud
    /// account id.
    pub aliases: Vec<UserKey>,
    /// A name to greet the user with.
    pub display_name: String,
}

/// Why identifying a user failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Bitbucket did not accept the credential or the OAuth code.
    #[error("Bitbucket did not accept the sign-in: {0}")]
    Rejected(String),
    /// The credential belongs to something other than an active, normal user account.
    #[error("{0}")]
    NotAUser(String),
    /// Bitbucket could not be reached or answered with a server error.
    #[error("cannot reach Bitbucket: {0}")]
    Unreachable(String),
    /// Bitbucket answered something bb2tc does not understand.
    #[error("unexpected answer from Bitbucket: {0}")]
    BadResponse(String),
    /// The source has no URL or no OAuth client.
    #[error("signing in to source {0} is not set up")]
    NotConfigured(String),
}

/// Calls Bitbucket on behalf of someone signing in.
#[derive(Debug, Clone)]
pub struct BitbucketClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct DataCenterUsers {
    #[serde(default)]
    values: Vec<DataCenterUser>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenterUser {
    name: String,
    slug: Option<String>,
    id: Option<u64>,
    display_name: Option<String>,
    #[serde(default)]
    active: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct CloudUser {
    #[serde(rename = "type")]
    kind: Option<String>,
    uuid: Option<String>,
    account_id: Option<String>,
    display_name: Option<String>,
    account_status: Option<String>,
}

impl BitbucketClient {
    /// A client with a timeout that follows no redirects (they would carry the credential
    /// elsewhere) and keeps no cookies.
    pub fn new() -> Result<Self, IdentityError> {
        let http =
            super::api_client(TIMEOUT).map_err(|e| IdentityError::Unreachable(e.to_string()))?;
        Ok(Self { http })
    }

    /// Where to send the browser to ask for consent: the authorization-code flow with PKCE
    /// (S256) and `state`.
    pub fn authorize_url(
        source: &Source,
        redirect_uri: &str,
        state: &str,
        code_challenge: &str,
    ) -> Result<String, IdentityError> {
        let (endpoint, client_id, _) = oauth(source, "authorize", "authorize")?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        if source.kind == SourceKind::DataCenter {
            query.append_pair("scope", DATACENTER_SCOPE);
        }
        Ok(format!("{endpoint}?{}", query.finish()))
    }

    /// Trades the authorization code for an access token.
    pub async fn exchange_code(
        &self,
        source: &Source,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Secret, IdentityError> {
        let (endpoint, client_id, client_secret) = oauth(source, "token", "access_token")?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
        ];
        let request = self.http.post(endpoint).header(ACCEPT, "application/json");
        // Data Center takes the client's credentials as parameters, Cloud as Basic auth.
        let request = match source.kind {
            SourceKind::DataCenter => {
                form.push(("client_id", client_id));
                form.push(("client_secret", client_secret.expose()));
                request
            }
            SourceKind::Cloud => request.basic_auth(client_id, Some(client_secret.expose())),
        };
        let response = request.form(&form).send().await.map_err(transport)?;
        let answer: TokenAnswer = json(checked(response).await?).await?;
        Ok(Secret::new(answer.access_token))
    }

    /// Who the credential belongs to; refuses service users and inactive accounts.
    pub async fn identify(
        &self,
        source: &Source,
        credential: &Credential,
    ) -> Result<Identity, IdentityError> {
        let base = api_base(source)?;
        match source.kind {
            SourceKind::DataCenter => self.identify_datacenter(base, credential).await,
            SourceKind::Cloud => self.identify_cloud(base, credential).await,
        }
    }

    async fn identify_datacenter(
        &self,
        base: &str,
        credential: &Credential,
    ) -> Result<Identity, IdentityError> {
        let url = format!("{base}/rest/api/latest/application-properties");
        let response = self.get(url, credential).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .filter(|v| !v.trim().is_empty())
        };
        let Some(name) = header("x-ausername") else {
            return Err(IdentityError::Rejected(
                "Bitbucket answered without naming a user (X-AUSERNAME): the token is not a \
                 user's token"
                    .into(),
            ));
        };
        let id = header("x-auserid").and_then(|v| v.trim().parse::<u64>().ok());

        let mut url = reqwest::Url::parse(&format!("{base}/rest/api/latest/users"))
            .map_err(|e| IdentityError::BadResponse(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("filter", &name)
            .append_pair("limit", "1000");
        let users: DataCenterUsers = match self.get(url.to_string(), credential).await {
            Ok(response) => json(response).await?,
            // Service users may not look up users at all; nor may a token without read scope.
            Err(IdentityError::Rejected(_)) => {
                return Err(IdentityError::NotAUser(format!(
                    "Bitbucket would not show the account {name:?}, so bb2tc cannot tell \
                     whether it is a person: service users (such as the ones behind project and \
                     repository access tokens) cannot sign in. If this is your own account, the \
                     token needs read permission (for \"Sign in with Bitbucket\": the \
                     application link needs Repositories: Read)"
                )));
            }
            Err(other) => return Err(other),
        };
        let user = users
            .values
            .into_iter()
            .find(|u| id.is_some_and(|id| u.id == Some(id)) || u.name.eq_ignore_ascii_case(&name));
        let Some(user) = user else {
            return Err(not_a_user(&name));
        };
        if user.kind.as_deref().is_some_and(|k| k != "NORMAL") {
            return Err(not_a_user(&name));
        }
        if !user.active {
            return Err(IdentityError::NotAUser(format!(
                "the Bitbucket account {name:?} is deactivated"
            )));
        }
        let user_key = UserKey::parse(&user.name)
            .ok_or_else(|| IdentityError::BadResponse("empty user name".into()))?;
        Ok(Identity {
            aliases: aliases(&user_key, user.slug.as_deref()),
            display_name: user.display_name.unwrap_or_else(|| user.name.clone()),
            user: user_key,
        })
    }

    async fn identify_cloud(
        &self,
        base: &str,
        credential: &Credential,
    ) -> Result<Identity, IdentityError> {
        let url = format!("{base}/2.0/user");
        let response = self.get(url, credential).await?;
        let user: CloudUser = json(response).await?;
        let name = user.display_name.clone().unwrap_or_default();
        if user.kind.as_deref() != Some("user") {
            return Err(not_a_user(&name));
        }
        if user
            .account_status
            .as_deref()
            .is_some_and(|s| s != "active")
        {
            return Err(IdentityError::NotAUser(format!(
                "the Bitbucket account {name:?} is not active"
            )));
        }
        let user_key = user
            .uuid
            .as_deref()
            .and_then(UserKey::parse)
            .ok_or_else(|| IdentityError::BadResponse("the user has no uuid".into()))?;
        Ok(Identity {
            aliases: aliases(&user_key, user.account_id.as_deref()),
            display_name: if name.is_empty() {
                user_key.to_string()
            } else {
                name
            },
            user: user_key,
        })
    }

    /// An authenticated `GET`; a non-2xx answer is an error.
    async fn get(
        &self,
        url: String,
        credential: &Credential,
    ) -> Result<reqwest::Response, IdentityError> {
        let request = self.http.get(url).header(ACCEPT, "application/json");
        let request = match credential {
            Credential::Bearer(token) => request.header(
                AUTHORIZATION,
                super::bearer(token).ok_or_else(bad_characters)?,
            ),
            Credential::EmailAndToken { email, token } => {
                if token.expose().chars().any(char::is_control) {
                    return Err(bad_characters());
                }
                request.basic_auth(email, Some(token.expose()))
            }
        };
        checked(request.send().await.map_err(transport)?).await
    }
}

/// The source's REST base URL, without a trailing slash.
fn api_base(source: &Source) -> Result<&str, IdentityError> {
    source
        .url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/'))
        .ok_or_else(|| IdentityError::NotConfigured(source.id.to_string()))
}

/// An OAuth endpoint (Data Center name, Cloud name) with the client's id and secret.
fn oauth<'a>(
    source: &'a Source,
    datacenter: &str,
    cloud: &str,
) -> Result<(String, &'a str, &'a Secret), IdentityError> {
    let not_configured = || IdentityError::NotConfigured(source.id.to_string());
    let client_id = source
        .oauth_client_id
        .as_deref()
        .ok_or_else(not_configured)?;
    let client_secret = source
        .oauth_client_secret
        .as_ref()
        .ok_or_else(not_configured)?;
    let base = api_base(source)?;
    let endpoint = match source.kind {
        SourceKind::DataCenter => format!("{base}/rest/oauth2/latest/{datacenter}"),
        // Any other URL is a proxy or a test double serving both parts.
        SourceKind::Cloud if base == CLOUD_API => format!("{CLOUD_WEB}/site/oauth2/{cloud}"),
        SourceKind::Cloud => format!("{base}/site/oauth2/{cloud}"),
    };
    Ok((endpoint, client_id, client_secret))
}

/// `other` as a further key of `user`, unless it is the same.
fn aliases(user: &UserKey, other: Option<&str>) -> Vec<UserKey> {
    other
        .and_then(UserKey::parse)
        .filter(|alias| alias != user)
        .into_iter()
        .collect()
}

fn not_a_user(name: &str) -> IdentityError {
    IdentityError::NotAUser(format!(
        "{name:?} is not a Bitbucket user account: service users (such as the ones behind \
         project and repository access tokens) cannot sign in"
    ))
}

fn bad_characters() -> IdentityError {
    IdentityError::Rejected("the token contains characters not allowed in an HTTP header".into())
}

fn transport(e: reqwest::Error) -> IdentityError {
    IdentityError::Unreachable(e.without_url().to_string())
}

async fn checked(response: reqwest::Response) -> Result<reqwest::Response, IdentityError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let detail = format!("{status}: {}", text.trim());
    Err(match status.as_u16() {
        400 | 401 | 403 => IdentityError::Rejected(detail),
        500..=599 => IdentityError::Unreachable(detail),
        _ => IdentityError::BadResponse(detail),
    })
}

async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, IdentityError> {
    response
        .json()
        .await
        .map_err(|e| IdentityError::BadResponse(e.without_url().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SourceId;

    fn source(kind: SourceKind, url: &str) -> Source {
        Source {
            id: SourceId::new("s"),
            kind,
            secrets: vec![],
            allow_unsigned: true,
            url: Some(reqwest::Url::parse(url).unwrap()),
            oauth_client_id: Some("client id".into()),
            oauth_client_secret: Some(Secret::new("secret")),
            status_token: None,
        }
    }

    #[test]
    fn authorize_urls_follow_each_product() {
        let dc = source(SourceKind::DataCenter, "https://bb.example.com/bitbucket/");
        let url = BitbucketClient::authorize_url(&dc, "https://b/cb", "st", "ch").unwrap();
        assert_eq!(
            url,
            "https://bb.example.com/bitbucket/rest/oauth2/latest/authorize?response_type=code\
             &client_id=client+id&redirect_uri=https%3A%2F%2Fb%2Fcb&state=st&code_challenge=ch\
             &code_challenge_method=S256&scope=REPO_READ"
        );
        let cloud = source(SourceKind::Cloud, CLOUD_API);
        let url = BitbucketClient::authorize_url(&cloud, "https://b/cb", "st", "ch").unwrap();
        assert!(url.starts_with("https://bitbucket.org/site/oauth2/authorize?response_type=code"));
        assert!(!url.contains("scope="));
        let double = source(SourceKind::Cloud, "http://127.0.0.1:9/");
        let url = BitbucketClient::authorize_url(&double, "x", "s", "c").unwrap();
        assert!(url.starts_with("http://127.0.0.1:9/site/oauth2/authorize?"));
    }

    #[test]
    fn oauth_needs_a_client() {
        let mut dc = source(SourceKind::DataCenter, "https://bb.example.com");
        dc.oauth_client_id = None;
        assert!(matches!(
            BitbucketClient::authorize_url(&dc, "x", "s", "c"),
            Err(IdentityError::NotConfigured(_))
        ));
    }
}
