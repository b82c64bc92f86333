//! The TeamCity REST client (SPEC §6): queue a build, notify a commit hook, check a token.
//!
//! One client per configured server, with that server's timeout and extra CA roots. No
//! cookies are kept: every call carries the pusher's `Authorization: Bearer` token.

use crate::config::TeamCityServer;
use crate::ids::{BuildTypeId, Sha, TeamCityToken};
use crate::job::follow::Observation;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use std::time::Duration;

/// Characters left as they are in the `locator` query parameter: RFC 3986 unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest TeamCity answer read (TeamCity's own are a few KiB); a larger one is a fault of
/// that call, retried.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Longest TeamCity error text kept in a job's `last_error`.
const MAX_ERROR_TEXT: usize = 500;

/// How a TeamCity call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamCityError {
    /// 401: the token is not (or no longer) accepted.
    #[error("TeamCity rejected the token (401): {0}")]
    Unauthorized(String),
    /// 400, 403, 404 and other answers that will not change by retrying.
    #[error("TeamCity answered {status}: {text}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// TeamCity's (plain-text) message.
        text: String,
    },
    /// 409, 429 and 5xx: TeamCity is busy or down.
    #[error("TeamCity answered {status}: {text}")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// TeamCity's message.
        text: String,
        /// The `Retry-After` header, when given in seconds or as an HTTP date.
        retry_after: Option<Duration>,
    },
    /// No answer within the server's `timeout_secs`.
    #[error("TeamCity did not answer in time")]
    Timeout,
    /// Could not connect or the connection broke.
    #[error("cannot reach TeamCity: {0}")]
    Connection(String),
    /// A 2xx answer that could not be read: cut off, too slow, larger than
    /// [`MAX_ANSWER_BYTES`], or not the JSON TeamCity sends. TeamCity may have done what was
    /// asked.
    #[error("TeamCity answered, but the answer could not be read: {0}")]
    AnswerUnread(String),
    /// The client could not be built (bad CA file).
    #[error("TeamCity client setup failed: {0}")]
    Setup(String),
}

impl TeamCityError {
    /// Whether trying again later may succeed (SPEC §6): 409, 429, 5xx, timeouts and
    /// connection errors do; 400, 401, 403, 404 do not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TeamCityError::Unavailable { .. }
                | TeamCityError::Timeout
                | TeamCityError::Connection(_)
                | TeamCityError::AnswerUnread(_)
        )
    }

    /// TeamCity's own `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TeamCityError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What to queue (build mode).
#[derive(Debug, Clone)]
pub struct BuildRequest<'a> {
    /// Build configuration.
    pub build_type: &'a BuildTypeId,
    /// `branchName` to send.
    pub branch: &'a str,
    /// The full ref, for `revisions`.
    pub full_ref: &'a str,
    /// The pushed commit.
    pub sha: &'a Sha,
    /// Build comment.
    pub comment: String,
    /// Extra build parameters.
    pub properties: &'a [(String, String)],
    /// VCS root to pin the revision on (adds `revisions`).
    pub vcs_root_id: Option<&'a str>,
}

impl BuildRequest<'_> {
    /// The JSON body of `POST /app/rest/buildQueue`.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "buildType": {"id": self.build_type.as_str()},
            "branchName": self.branch,
            "comment": {"text": self.comment},
        });
        if !self.properties.is_empty() {
            let property: Vec<_> = self
                .properties
                .iter()
                .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                .collect();
            body["properties"] = serde_json::json!({ "property": property });
        }
        if let Some(root) = self.vcs_root_id {
            body["revisions"] = serde_json::json!({
                "failOnMissingRevisions": false,
                "revision": [{
                    "version": self.sha.as_str(),
                    "vcsBranchName": self.full_ref,
                    "vcs-root-instance": {"vcs-root-id": root},
                }],
            });
        }
        body
    }
}

/// TeamCity's answer to a queued build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QueuedBuild {
    /// Queued build id.
    pub id: Option<u64>,
    /// Link to the build.
    #[serde(rename = "webUrl")]
    pub web_url: Option<String>,
    /// The branch TeamCity will build (it silently falls back to the default branch).
    #[serde(rename = "branchName")]
    pub branch_name: Option<String>,
}

/// A build as `GET /app/rest/builds` lists it (queued, running or finished).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FoundBuild {
    /// Build id (the queued build's id stays the build's id when it starts).
    pub id: Option<u64>,
    /// `queued`, `running` or `finished`.
    #[serde(default)]
    pub state: Option<String>,
    /// Branch, when not the default.
    #[serde(rename = "branchName")]
    pub branch_name: Option<String>,
    /// Link to the build.
    #[serde(rename = "webUrl")]
    pub web_url: Option<String>,
    /// The trigger comment.
    #[serde(default)]
    pub comment: Option<Comment>,
}

/// A build comment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    /// Its text.
    pub text: Option<String>,
}

#[derive(Deserialize)]
struct Builds {
    #[serde(default)]
    build: Vec<FoundBuild>,
}

/// How many of a branch's latest builds recovery looks through.
const RECOVERY_BUILDS: u32 = 100;

#[derive(Deserialize)]
struct CurrentUser {
    username: String,
}

/// A client for one TeamCity server.
#[derive(Debug, Clone)]
pub struct TeamCityClient {
    http: reqwest::Client,
    server: TeamCityServer,
}

impl TeamCityClient {
    /// Builds the client for `server` (timeout, extra CA roots, no cookies, no redirects:
    /// a redirect would carry the token elsewhere).
    pub fn new(server: &TeamCityServer) -> Result<Self, TeamCityError> {
        let mut builder = reqwest::Client::builder()
            .timeout(server.timeout)
            .connect_timeout(server.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bb2tc/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &server.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| TeamCityError::Setup(format!("{}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| TeamCityError::Setup(format!("{}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| TeamCityError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            server: server.clone(),
        })
    }

    /// The server this client calls.
    pub fn server(&self) -> &TeamCityServer {
        &self.server
    }

    /// `POST /app/rest/buildQueue`.
    pub async fn queue_build(
        &self,
        token: &TeamCityToken,
        request: &BuildRequest<'_>,
    ) -> Result<QueuedBuild, TeamCityError> {
        let response = self
            .http
            .post(self.server.endpoint("app/rest/buildQueue"))
            .header(AUTHORIZATION, bearer(token)?)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(request.body().to_string())
            .send()
            .await
            .map_err(transport_error)?;
        read_json(check_status(response).await?).await
    }

    /// `POST /app/rest/vcs-root-instances/commitHookNotification` for each clone URL until
    /// TeamCity finds a VCS root for one. `Ok(false)` when no URL matched any root (404).
    pub async fn notify_commit_hook(
        &self,
        token: &TeamCityToken,
        clone_urls: &[String],
    ) -> Result<bool, TeamCityError> {
        for clone_url in clone_urls {
            let response = self
                .http
                .post(self.commit_hook_url(clone_url))
                .header(AUTHORIZATION, bearer(token)?)
                .header(ACCEPT, "text/plain, application/json")
                .send()
                .await
                .map_err(transport_error)?;
            if response.status() == StatusCode::NOT_FOUND {
                continue;
            }
            check_status(response).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The commit-hook URL for one clone URL: `locator` is one query parameter,
    /// percent-encoded as a whole.
    pub fn commit_hook_url(&self, clone_url: &str) -> String {
        let locator = format!(
            "vcsRoot:(type:jetbrains.git,property:(name:url,value:{clone_url},matchType:equals,ignoreCase:true),count:99999),count:99999"
        );
        format!(
            "{}?locator={}",
            self.server
                .endpoint("app/rest/vcs-root-instances/commitHookNotification"),
            utf8_percent_encode(&locator, QUERY_VALUE)
        )
    }

    /// `GET /app/rest/builds` with a locator for the latest builds of a build type on a
    /// branch **in any state** — queued, running or finished (SPEC §7). Without
    /// `defaultFilter:false` TeamCity lists only finished builds of the default branch, and
    /// without `state:any` no queued ones.
    pub async fn recent_builds(
        &self,
        token: &TeamCityToken,
        build_type: &BuildTypeId,
        branch: &str,
    ) -> Result<Vec<FoundBuild>, TeamCityError> {
        let url = format!(
            "{}?locator={}&fields={}",
            self.server.endpoint("app/rest/builds"),
            utf8_percent_encode(&recent_builds_locator(build_type, branch), QUERY_VALUE),
            utf8_percent_encode(
                "build(id,state,branchName,webUrl,comment(text))",
                QUERY_VALUE
            )
        );
        let builds: Builds = self.get_json(url, token).await?;
        Ok(builds.build)
    }

    /// Follows build `build_id` (SPEC §6.1): `GET /app/rest/buildQueue/id:N` — which finds
    /// the build after it started too — with the fields that say how it is doing.
    pub async fn follow_build(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> Result<Observation, TeamCityError> {
        let url = format!(
            "{}?fields={}",
            self.server
                .endpoint(&format!("app/rest/buildQueue/id:{build_id}")),
            utf8_percent_encode(FOLLOW_FIELDS, QUERY_VALUE)
        );
        let build: FollowedBuild = self.get_json(url, token).await?;
        Ok(Observation {
            state: build.state.unwrap_or_default(),
            status: build.status,
            status_text: build.status_text,
            number: build.number,
            web_url: build.web_url,
            failed_to_start: build.failed_to_start,
            canceled: build.canceled_info.map(|c| c.text.unwrap_or_default()),
        })
    }

    /// `GET /app/rest/buildQueue/id:N` (which finds the build after it started too): its
    /// `state` — `queued`, `running` or `finished`.
    pub async fn build_state(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> Result<String, TeamCityError> {
        let url = format!(
            "{}?fields=id,state",
            self.server
                .endpoint(&format!("app/rest/buildQueue/id:{build_id}"))
        );
        let build: BuildState = self.get_json(url, token).await?;
        Ok(build.state.unwrap_or_default())
    }

    /// `POST /app/rest/buildQueue/id:N` with a `buildCancelRequest`: removes a build that is
    /// still queued. A build that has started is no longer found there (404): the queue's
    /// endpoint never stops a running build.
    pub async fn cancel_queued(
        &self,
        token: &TeamCityToken,
        build_id: u64,
        comment: &str,
    ) -> Result<(), TeamCityError> {
        let response = self
            .http
            .post(
                self.server
                    .endpoint(&format!("app/rest/buildQueue/id:{build_id}")),
            )
            .header(AUTHORIZATION, bearer(token)?)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(cancel_request(comment).to_string())
            .send()
            .await
            .map_err(transport_error)?;
        check_status(response).await?;
        Ok(())
    }

    /// `GET /app/rest/users/current`: the TeamCity user name the token belongs to.
    pub async fn current_user(&self, token: &TeamCityToken) -> Result<String, TeamCityError> {
        let url = self.server.endpoint("app/rest/users/current");
        let user: CurrentUser = self.get_json(url, token).await?;
        Ok(user.username)
    }

    /// An authenticated `GET` of a JSON resource.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        token: &TeamCityToken,
    ) -> Result<T, TeamCityError> {
        let response = self
            .http
            .get(url)
            .header(AUTHORIZATION, bearer(token)?)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        read_json(check_status(response).await?).await
    }
}

/// TeamCity's `buildCancelRequest`: `comment` is a plain string (its REST schema), and a
/// queued build cannot be put back into the queue.
pub fn cancel_request(comment: &str) -> serde_json::Value {
    serde_json::json!({"comment": comment, "readdIntoQueue": false})
}

#[derive(serde::Deserialize)]
struct BuildState {
    state: Option<String>,
}

/// The fields asked for when following a build (SPEC §6.1).
pub const FOLLOW_FIELDS: &str =
    "id,state,status,statusText,number,webUrl,branchName,failedToStart,canceledInfo(text)";

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FollowedBuild {
    state: Option<String>,
    status: Option<String>,
    status_text: Option<String>,
    number: Option<String>,
    web_url: Option<String>,
    #[serde(default)]
    failed_to_start: bool,
    canceled_info: Option<CanceledInfo>,
}

#[derive(serde::Deserialize)]
struct CanceledInfo {
    text: Option<String>,
}

/// The locator of [`TeamCityClient::recent_builds`]. A branch name with parentheses would
/// break the locator's syntax: then every branch is listed (the job id in the comment is
/// what identifies the build anyway).
pub fn recent_builds_locator(build_type: &BuildTypeId, branch: &str) -> String {
    let branch = if branch.contains(['(', ')']) || branch.is_empty() {
        "branch:default:any".to_owned()
    } else {
        format!("branch:(name:{branch})")
    };
    format!(
        "buildType:(id:{build_type}),{branch},state:any,defaultFilter:false,count:{RECOVERY_BUILDS}"
    )
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, TeamCityError> {
    let body = read_limited(response)
        .await
        .map_err(TeamCityError::AnswerUnread)?;
    serde_json::from_slice(&body)
        .map_err(|e| TeamCityError::AnswerUnread(format!("not TeamCity's JSON: {e}")))
}

/// The body, at most [`MAX_ANSWER_BYTES`].
async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, String> {
    crate::answer::read_limited(response, MAX_ANSWER_BYTES).await
}

fn bearer(token: &TeamCityToken) -> Result<HeaderValue, TeamCityError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        // The message must not include the token.
        .map_err(|_| TeamCityError::Rejected {
            status: 0,
            text: "the token contains characters not allowed in an HTTP header".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

fn transport_error(e: reqwest::Error) -> TeamCityError {
    if e.is_timeout() {
        TeamCityError::Timeout
    } else {
        // Without the URL: it holds nothing secret, but the message stays short.
        TeamCityError::Connection(e.without_url().to_string())
    }
}

/// Maps a non-2xx answer to an error carrying TeamCity's text.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, TeamCityError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = read_limited(response).await.unwrap_or_default();
    let text = truncate(String::from_utf8_lossy(&body).trim(), MAX_ERROR_TEXT);
    Err(match status.as_u16() {
        401 => TeamCityError::Unauthorized(text),
        409 | 429 | 500..=599 => TeamCityError::Unavailable {
            status: status.as_u16(),
            text,
            retry_after,
        },
        other => TeamCityError::Rejected {
            status: other,
            text,
        },
    })
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::with_servers;

    fn client() -> TeamCityClient {
        let config =
            with_servers("[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com/teamcity/\"");
        TeamCityClient::new(&config.servers[0]).unwrap()
    }

    #[test]
    fn build_body_matches_the_spec() {
        let sha = Sha::parse("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678").unwrap();
        let build_type = BuildTypeId::new("Proj_Build");
        let properties = vec![("env.FROM_BB2TC".to_string(), "1".to_string())];
        let request = BuildRequest {
            build_type: &build_type,
            branch: "feature/foo",
            full_ref: "refs/heads/feature/foo",
            sha: &sha,
            comment: "Bitbucket push by jdoe: PROJ/repo feature/foo a1b2c3d".into(),
            properties: &properties,
            vcs_root_id: Some("Proj_GitRoot"),
        };
        assert_eq!(
            request.body(),
            serde_json::json!({
                "buildType": {"id": "Proj_Build"},
                "branchName": "feature/foo",
                "comment": {"text": "Bitbucket push by jdoe: PROJ/repo feature/foo a1b2c3d"},
                "properties": {"property": [{"name": "env.FROM_BB2TC", "value": "1"}]},
                "revisions": {"failOnMissingRevisions": false,
                  "revision": [{"version": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
                                "vcsBranchName": "refs/heads/feature/foo",
                                "vcs-root-instance": {"vcs-root-id": "Proj_GitRoot"}}]}
            })
        );
        let plain = BuildRequest {
            properties: &[],
            vcs_root_id: None,
            ..request
        };
        let body = plain.body();
        assert!(body.get("properties").is_none() && body.get("revisions").is_none());
    }

    #[test]
    fn commit_hook_locator_is_one_encoded_parameter() {
        let url = client().commit_hook_url("ssh://git@bb.example.com:7999/proj/repo.git");
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(
            base,
            "https://tc.example.com/teamcity/app/rest/vcs-root-instances/commitHookNotification"
        );
        let encoded = query.strip_prefix("locator=").unwrap();
        assert!(!encoded.contains([':', '(', ',', '/', '@']));
        let decoded = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .unwrap();
        assert_eq!(
            decoded,
            "vcsRoot:(type:jetbrains.git,property:(name:url,value:ssh://git@bb.example.com:7999/proj/repo.git,matchType:equals,ignoreCase:true),count:99999),count:99999"
        );
    }

    #[test]
    fn recovery_asks_for_builds_in_any_state_on_the_branch() {
        let bt = BuildTypeId::new("Proj_Build");
        assert_eq!(
            recent_builds_locator(&bt, "feature/foo"),
            "buildType:(id:Proj_Build),branch:(name:feature/foo),state:any,defaultFilter:false,count:100"
        );
        assert_eq!(
            recent_builds_locator(&bt, "fix(1)"),
            "buildType:(id:Proj_Build),branch:default:any,state:any,defaultFilter:false,count:100"
        );
    }

    #[test]
    fn retry_decisions() {
        let unavailable = TeamCityError::Unavailable {
            status: 503,
            text: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert!(unavailable.is_retryable());
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(7)));
        assert!(TeamCityError::Timeout.is_retryable());
        assert!(TeamCityError::Connection("refused".into()).is_retryable());
        assert!(!TeamCityError::Unauthorized(String::new()).is_retryable());
        for status in [400, 403, 404] {
            assert!(
                !TeamCityError::Rejected {
                    status,
                    text: String::new()
                }
                .is_retryable()
            );
        }
    }

    #[test]
    fn retry_after_formats() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}
