//! A branch's head commit, asked of Bitbucket with the source's `status_token`: for a build
//! run from the token page without a commit.
//!
//! - Data Center: `GET {url}/rest/api/latest/projects/{key}/repos/{slug}/branches?filterText=
//!   {branch}` — the branch whose `displayId` is the name, its `latestCommit`.
//! - Cloud: `GET {api}/2.0/repositories/{workspace}/{slug}/refs/branches/{name}` — its
//!   `target.hash`.

use crate::config::{Source, SourceKind};
use crate::ids::{Secret, Sha};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Asks Bitbucket for branch heads.
#[derive(Debug, Clone)]
pub struct BranchHeads {
    http: reqwest::Client,
}

impl BranchHeads {
    /// A client with a short timeout (see `api_client`).
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            http: super::api_client(TIMEOUT).map_err(|e| e.to_string())?,
        })
    }

    /// The head of `branch` of `repository` (`owner/slug`) at `source`; the error says why
    /// not, for the user.
    pub async fn head(
        &self,
        source: &Source,
        token: &Secret,
        repository: &str,
        branch: &str,
    ) -> Result<Sha, String> {
        let base = source
            .url
            .as_ref()
            .ok_or("the Bitbucket source has no url")?;
        let (owner, slug) = repository
            .split_once('/')
            .ok_or("the repository is not owner/slug")?;
        let path: &[&str] = match source.kind {
            SourceKind::DataCenter => &[
                "rest", "api", "latest", "projects", owner, "repos", slug, "branches",
            ],
            SourceKind::Cloud => &[
                "2.0",
                "repositories",
                owner,
                slug,
                "refs",
                "branches",
                branch,
            ],
        };
        let mut url = super::api_url(base, path).ok_or("the source's url cannot have a path")?;
        if source.kind == SourceKind::DataCenter {
            url.query_pairs_mut()
                .append_pair("filterText", branch)
                .append_pair("limit", "100");
        }
        let bearer = super::bearer(token).ok_or("the status_token cannot be a header")?;
        let response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, bearer)
            .send()
            .await
            .map_err(|e| format!("Bitbucket could not be asked: {}", e.without_url()))?;
        let status = response.status();
        let body = crate::answer::read_limited(response, MAX_ANSWER_BYTES).await?;
        if status.as_u16() == 404 {
            return Err(format!("Bitbucket has no branch {branch} in {repository}"));
        }
        if !status.is_success() {
            return Err(format!("Bitbucket answered {status}"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not Bitbucket's answer: {e}"))?;
        let head = match source.kind {
            SourceKind::DataCenter => value["values"]
                .as_array()
                .and_then(|branches| {
                    branches.iter().find(|b| {
                        b["displayId"] == branch || b["id"] == format!("refs/heads/{branch}")
                    })
                })
                .and_then(|b| b["latestCommit"].as_str()),
            SourceKind::Cloud => value["target"]["hash"].as_str(),
        };
        match head {
            Some(hash) => {
                Sha::parse(hash).ok_or_else(|| format!("Bitbucket answered a head {hash:?}"))
            }
            None => Err(format!("Bitbucket has no branch {branch} in {repository}")),
        }
    }
}
