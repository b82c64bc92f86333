//! Posting build statuses to Bitbucket (SPEC §6.2), with the source's `status_token` as
//! Bearer, under bb2tc's own key `bb2tc-<build type>` — never TeamCity's Commit Status
//! Publisher's key (on Cloud only a status's creator may overwrite it, and on Data Center
//! the publisher holds back its own "queued" status when it finds a foreign one on its key).
//!
//! - Data Center: `POST {url}/rest/api/latest/projects/{key}/repos/{slug}/commits/{sha}/builds`
//!   `{"key", "parent", "state", "name", "description", "url", "ref"}`, answered 204.
//! - Cloud: `POST {api}/2.0/repositories/{workspace}/{slug}/commit/{sha}/statuses/build`
//!   `{"key", "state", "name", "description", "url", "refname"}`, answered 201 (or 200).

use crate::config::{Source, SourceKind};
use crate::ids::Secret;
use crate::job::Job;
use crate::job::status::{State, StatusReport};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long Bitbucket may take to answer a status.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Cloud's limit on a status key.
const CLOUD_KEY_MAX: usize = 40;

/// Bitbucket's limit on a name or description (Data Center's columns; Cloud takes more).
const TEXT_MAX: usize = 255;

/// Why a status was not posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// Bitbucket is down, busy or slow (5xx, 429, timeouts): post again later.
    #[error("Bitbucket could not take the status: {0}")]
    Unavailable(String),
    /// Bitbucket refused it (400, 401, 403, 404): posting again will not help.
    #[error("Bitbucket refused the status: {0}")]
    Refused(String),
}

/// Posts statuses; no redirects (they would carry the token elsewhere), no cookies.
#[derive(Debug, Clone)]
pub struct StatusClient {
    http: reqwest::Client,
}

impl StatusClient {
    /// A client with a timeout.
    pub fn new() -> Result<Self, StatusError> {
        let http =
            super::api_client(TIMEOUT).map_err(|e| StatusError::Unavailable(e.to_string()))?;
        Ok(Self { http })
    }

    /// Whether a Data Center source takes the `CANCELLED` state: its `/rest/capabilities`
    /// (or the build-status capabilities it links, on the same server) list
    /// `cancelledStatus`. Anything else — an older Bitbucket, an error — counts as no.
    pub async fn takes_cancelled(&self, source: &Source, token: &Secret) -> bool {
        let Some(base) = &source.url else {
            return false;
        };
        let root = format!("{}/rest/capabilities", base.as_str().trim_end_matches('/'));
        let Some(capabilities) = self.get_json(&root, token).await else {
            return false;
        };
        if mentions(&capabilities, "cancelledStatus") {
            return true;
        }
        // A capability may be a link to its own document on the same server.
        let same_server = |link: &&str| link.starts_with(base.as_str().trim_end_matches('/'));
        for link in capabilities["capabilities"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|v| v.as_str())
            .filter(same_server)
        {
            if let Some(document) = self.get_json(link, token).await
                && mentions(&document, "cancelledStatus")
            {
                return true;
            }
        }
        false
    }

    async fn get_json(&self, url: &str, token: &Secret) -> Option<serde_json::Value> {
        let bearer = super::bearer(token)?;
        let response = self
            .http
            .get(url)
            .header(AUTHORIZATION, bearer)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = crate::answer::read_limited(response, 256 * 1024)
            .await
            .ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Posts `report` about the commit of status job `job` to `source`, linking `url`;
    /// `cancelled` says whether a Data Center source takes `CANCELLED` (else `FAILED`).
    pub async fn post(
        &self,
        source: &Source,
        token: &Secret,
        job: &Job,
        report: &StatusReport,
        url: &str,
        cancelled: bool,
    ) -> Result<(), StatusError> {
        let base = source
            .url
            .as_ref()
            .ok_or_else(|| StatusError::Refused(format!("source {} has no url", source.id)))?;
        let (owner, slug) = job.repository.split_once('/').ok_or_else(|| {
            StatusError::Refused(format!("{:?} is not owner/slug", job.repository))
        })?;
        let build_type = job
            .build_type
            .as_ref()
            .map_or("commit-hook", |b| b.as_str());
        let key = status_key(build_type, source.kind);
        let name = clip(&format!("TeamCity {build_type} (bb2tc)"), TEXT_MAX);
        let description = clip(&report.description, TEXT_MAX);
        let state = state_name(report.state, source.kind, cancelled);
        let sha = job.sha.as_str();
        let (path, body): (&[&str], _) = match source.kind {
            SourceKind::DataCenter => (
                &[
                    "rest", "api", "latest", "projects", owner, "repos", slug, "commits", sha,
                    "builds",
                ],
                serde_json::json!({
                    "key": key, "parent": key, "state": state, "name": name,
                    "description": description, "url": url, "ref": job.full_ref,
                }),
            ),
            SourceKind::Cloud => (
                &[
                    "2.0",
                    "repositories",
                    owner,
                    slug,
                    "commit",
                    sha,
                    "statuses",
                    "build",
                ],
                serde_json::json!({
                    "key": key, "state": state, "name": name, "description": description,
                    "url": url,
                    "refname": job.full_ref.strip_prefix("refs/heads/").unwrap_or(&job.full_ref),
                }),
            ),
        };
        let endpoint = super::api_url(base, path)
            .ok_or_else(|| StatusError::Refused("the source's url cannot have a path".into()))?;
        let bearer = super::bearer(token)
            .ok_or_else(|| StatusError::Refused("the status_token cannot be a header".into()))?;
        let response = self
            .http
            .post(endpoint)
            .header(AUTHORIZATION, bearer)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| StatusError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = crate::answer::read_limited(response, 16 * 1024)
            .await
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        let detail = format!("{status}: {}", text.trim());
        Err(match status.as_u16() {
            408 | 429 | 500..=599 => StatusError::Unavailable(detail),
            _ => StatusError::Refused(detail),
        })
    }
}

/// `bb2tc-<build type>`; on Cloud at most 40 characters, a long one shortened and made
/// unique again with a hash of the whole.
pub fn status_key(build_type: &str, kind: SourceKind) -> String {
    let key = format!("bb2tc-{build_type}");
    if kind == SourceKind::DataCenter || key.chars().count() <= CLOUD_KEY_MAX {
        return key;
    }
    let hash = hex::encode(&Sha256::digest(build_type.as_bytes())[..4]);
    let keep: String = build_type
        .chars()
        .take(CLOUD_KEY_MAX - "bb2tc-".len() - 9)
        .collect();
    format!("bb2tc-{keep}-{hash}")
}

fn state_name(state: State, kind: SourceKind, dc_cancelled: bool) -> &'static str {
    match (state, kind) {
        (State::Inprogress, _) => "INPROGRESS",
        (State::Successful, _) => "SUCCESSFUL",
        (State::Failed, _) => "FAILED",
        // Data Center knows CANCELLED only with its `cancelledStatus` capability.
        (State::Cancelled, SourceKind::DataCenter) if dc_cancelled => "CANCELLED",
        (State::Cancelled, SourceKind::DataCenter) => "FAILED",
        (State::Cancelled, SourceKind::Cloud) => "STOPPED",
    }
}

/// Whether `text` is a key or a string anywhere in `value`.
fn mentions(value: &serde_json::Value, text: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == text,
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, text)),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k == text || mentions(v, text)),
        _ => false,
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bb2tcs_own_and_fit_cloud() {
        assert_eq!(
            status_key("Proj_Build", SourceKind::Cloud),
            "bb2tc-Proj_Build"
        );
        let long = "Project_Subproject_Component_IntegrationTests";
        let dc = status_key(long, SourceKind::DataCenter);
        assert_eq!(dc, format!("bb2tc-{long}"));
        let cloud = status_key(long, SourceKind::Cloud);
        assert_eq!(cloud.chars().count(), 40, "{cloud}");
        assert!(
            cloud.starts_with("bb2tc-Project_Subproject_Compo"),
            "{cloud}"
        );
        assert_ne!(
            cloud,
            status_key("Project_Subproject_Component_UnitTests", SourceKind::Cloud)
        );
    }

    #[test]
    fn cancelled_is_sent_where_bitbucket_takes_it() {
        assert_eq!(
            state_name(State::Cancelled, SourceKind::Cloud, false),
            "STOPPED"
        );
        assert_eq!(
            state_name(State::Cancelled, SourceKind::DataCenter, false),
            "FAILED"
        );
        assert_eq!(
            state_name(State::Cancelled, SourceKind::DataCenter, true),
            "CANCELLED"
        );
        let listed = serde_json::json!({"buildStatus": ["richBuildStatus", "cancelledStatus"]});
        assert!(mentions(&listed, "cancelledStatus"));
        assert!(!mentions(
            &serde_json::json!({"buildStatus": ["richBuildStatus"]}),
            "cancelledStatus"
        ));
    }

    #[test]
    fn texts_are_clipped_to_bitbuckets_limit() {
        assert_eq!(clip("short", 255), "short");
        let long = "é".repeat(300);
        assert_eq!(clip(&long, 255).chars().count(), 255);
    }
}
