//! Bitbucket Data Center pull-request events: `pr:opened`, `pr:from_ref_updated`,
//! `pr:modified` and the ends `pr:merged`, `pr:declined`, `pr:deleted`.
//!
//! Timestamps (epoch milliseconds, ISO strings since Data Center 10) are not read. `draft`
//! exists since Data Center 9 (absent: not a draft); `previousDraft` comes with
//! `pr:modified`, `previousFromHash` with `pr:from_ref_updated`.

use super::datacenter::{Href, Repository, User, actor_of};
use super::pull_request::{Action, PullRequest};
use super::{PayloadError, RefChange};
use crate::ids::Sha;
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    actor: Option<User>,
    #[serde(rename = "pullRequest")]
    pull_request: Pr,
    #[serde(rename = "previousFromHash")]
    previous_from_hash: Option<String>,
    #[serde(rename = "previousDraft")]
    previous_draft: Option<bool>,
}

#[derive(Deserialize)]
struct Pr {
    id: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    draft: bool,
    #[serde(rename = "fromRef")]
    from_ref: PrRef,
    #[serde(rename = "toRef")]
    to_ref: PrRef,
    author: Option<Participant>,
    #[serde(default)]
    links: PrLinks,
}

#[derive(Deserialize)]
struct PrRef {
    id: String,
    #[serde(rename = "latestCommit")]
    latest_commit: Option<String>,
    repository: Repository,
}

#[derive(Deserialize)]
struct Participant {
    user: User,
}

#[derive(Deserialize, Default)]
struct PrLinks {
    #[serde(rename = "self", default)]
    self_links: Vec<Href>,
}

/// Parses a Data Center pull-request event of `event_key`.
pub fn parse(event_key: &str, body: &[u8]) -> Result<PullRequest, PayloadError> {
    let payload: Payload = serde_json::from_slice(body).map_err(PayloadError::from_json)?;
    let pr = payload.pull_request;
    let head = pr
        .from_ref
        .latest_commit
        .as_deref()
        .ok_or(PayloadError::Missing("pullRequest.fromRef.latestCommit"))?;
    let head = Sha::parse(head).ok_or(PayloadError::Invalid("pullRequest.fromRef.latestCommit"))?;
    let action = match event_key {
        "pr:opened" => Action::Build,
        "pr:from_ref_updated" => match payload.previous_from_hash.as_deref() {
            Some(previous) if previous.eq_ignore_ascii_case(head.as_str()) => {
                Action::Nothing("the source branch's head did not change".into())
            }
            _ => Action::Build,
        },
        "pr:modified" => {
            if payload.previous_draft == Some(true) && !pr.draft {
                Action::Build
            } else {
                Action::Nothing(
                    "the pull request was modified, not made ready for review (only that builds)"
                        .into(),
                )
            }
        }
        "pr:merged" => Action::Ended("merged"),
        "pr:declined" => Action::Ended("declined"),
        "pr:deleted" => Action::Ended("deleted"),
        _ => return Err(PayloadError::Invalid("X-Event-Key for a pull request")),
    };
    let target = RefChange::from_full_ref(pr.to_ref.id, None);
    Ok(PullRequest {
        id: pr.id,
        title: pr.title,
        url: pr.links.self_links.into_iter().next().map(|h| h.href),
        author: pr.author.map(|a| a.user.name).unwrap_or_default(),
        actor: payload.actor.map(actor_of),
        repository: pr.to_ref.repository.name(),
        source_repository: pr.from_ref.repository.name(),
        source: RefChange::from_full_ref(pr.from_ref.id, Some(head)),
        target_branch: target.logical_name().to_owned(),
        draft: pr.draft,
        clone_urls: pr.to_ref.repository.clone_urls(),
        action,
    })
}
