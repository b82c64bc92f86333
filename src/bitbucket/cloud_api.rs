//! The Bitbucket Cloud API call a pull request may need: its head commit made whole.
//!
//! Cloud's pull-request payloads carry a 12-digit hash; TeamCity can pin only a whole one
//! (`revisions`, with a route's `vcs_root_id`). `GET {api}/2.0/repositories/{workspace}/
//! {slug}/commit/{hash}` answers the commit, whose `hash` is whole; it is asked with the
//! source's `status_token` as Bearer (a repository or workspace access token with read
//! access to the repository).

use crate::ids::{Secret, Sha};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use std::time::Duration;

/// How long Bitbucket may take: the webhook's answer waits for it.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read (a commit with a long message is a few KiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why the commit could not be made whole.
#[derive(Debug, thiserror::Error)]
pub enum CloudApiError {
    /// Bitbucket could not be reached or answered 5xx.
    #[error("Bitbucket Cloud could not be asked: {0}")]
    Unreachable(String),
    /// Bitbucket answered, but not with the commit (401, 403, 404, …).
    #[error("Bitbucket Cloud answered {0}")]
    Refused(String),
    /// The answer was not a commit with a whole hash that begins with the short one.
    #[error("Bitbucket Cloud's answer is not the commit: {0}")]
    BadAnswer(String),
}

/// Calls the Cloud API.
#[derive(Debug, Clone)]
pub struct CloudApi {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct CommitAnswer {
    hash: String,
}

impl CloudApi {
    /// A client with a short timeout (see `api_client`).
    pub fn new() -> Result<Self, CloudApiError> {
        let http =
            super::api_client(TIMEOUT).map_err(|e| CloudApiError::Unreachable(e.to_string()))?;
        Ok(Self { http })
    }

    /// The whole id of commit `short` of `repository` (`workspace/slug`), asked of the API
    /// at `api` (the source's `url`) with `token`.
    pub async fn full_commit(
        &self,
        api: &reqwest::Url,
        repository: &str,
        short: &Sha,
        token: &Secret,
    ) -> Result<Sha, CloudApiError> {
        let (workspace, slug) = repository.split_once('/').ok_or_else(|| {
            CloudApiError::BadAnswer(format!("{repository:?} is not workspace/slug"))
        })?;
        let url = super::api_url(
            api,
            &[
                "2.0",
                "repositories",
                workspace,
                slug,
                "commit",
                short.as_str(),
            ],
        )
        .ok_or_else(|| CloudApiError::BadAnswer("the source's url cannot have a path".into()))?;
        let bearer = super::bearer(token).ok_or_else(|| {
            CloudApiError::Refused("nothing: the status_token cannot be a header".into())
        })?;
        let response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, bearer)
            .send()
            .await
            .map_err(|e| CloudApiError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let body = crate::answer::read_limited(response, MAX_ANSWER_BYTES)
            .await
            .map_err(CloudApiError::Unreachable)?;
        if !status.is_success() {
            // Cloud's errors are JSON: {"type": "error", "error": {"message": "…"}}.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let detail = format!("{status} {}", message.chars().take(200).collect::<String>());
            return Err(if status.is_server_error() {
                CloudApiError::Unreachable(detail)
            } else {
                CloudApiError::Refused(detail.trim_end().to_owned())
            });
        }
        let answer: CommitAnswer =
            serde_json::from_slice(&body).map_err(|e| CloudApiError::BadAnswer(e.to_string()))?;
        Sha::parse(&answer.hash)
            .filter(|full| full.as_str().starts_with(short.as_str()))
            .ok_or_else(|| {
                CloudApiError::BadAnswer(format!("hash {:?} for {}", answer.hash, short.as_str()))
            })
    }
}
