//! Bitbucket Cloud pull-request events: `pullrequest:created`, `pullrequest:updated` and the
//! ends `pullrequest:fulfilled`, `pullrequest:rejected`.
//!
//! Cloud sends the head commit as a 12-digit hash (`source.commit.hash`); it is kept
//! abbreviated here and made whole through the Cloud API where that is possible
//! ([`super::cloud_api`]). `pullrequest:updated` also fires for title and description edits
//! and carries no previous head: a head bb2tc already built is recognised by its
//! de-duplication mark.

use super::cloud::{Repository, User, actor_of, clone_urls};
use super::pull_request::{Action, PullRequest};
use super::{PayloadError, RefChange};
use crate::ids::Sha;
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    actor: Option<User>,
    pullrequest: Pr,
    repository: Repository,
}

#[derive(Deserialize)]
struct Pr {
    id: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    draft: bool,
    source: Side,
    destination: Side,
    author: Option<User>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Side {
    branch: Branch,
    commit: Option<Commit>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Branch {
    name: String,
}

#[derive(Deserialize)]
struct Commit {
    hash: String,
}

#[derive(Deserialize)]
struct Links {
    html: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

/// Parses a Cloud pull-request event of `event_key`.
pub fn parse(event_key: &str, body: &[u8]) -> Result<PullRequest, PayloadError> {
    let payload: Payload = serde_json::from_slice(body).map_err(PayloadError::from_json)?;
    let pr = payload.pullrequest;
    let head = pr
        .source
        .commit
        .as_ref()
        .ok_or(PayloadError::Missing("pullrequest.source.commit.hash"))?;
    let head = Sha::parse_abbreviated(&head.hash)
        .ok_or(PayloadError::Invalid("pullrequest.source.commit.hash"))?;
    let action = match event_key {
        "pullrequest:created" | "pullrequest:updated" => Action::Build,
        "pullrequest:fulfilled" => Action::Ended("merged"),
        "pullrequest:rejected" => Action::Ended("declined"),
        _ => return Err(PayloadError::Invalid("X-Event-Key for a pull request")),
    };
    let repository = payload.repository.full_name;
    let source_repository = pr
        .source
        .repository
        .map_or_else(|| repository.clone(), |r| r.full_name);
    Ok(PullRequest {
        id: pr.id,
        title: pr.title,
        url: pr.links.and_then(|l| l.html).map(|l| l.href),
        author: pr.author.map(|a| a.name()).unwrap_or_default(),
        actor: payload.actor.map(actor_of),
        clone_urls: clone_urls(&repository),
        repository,
        source_repository,
        source: RefChange::from_full_ref(
            format!("refs/heads/{}", pr.source.branch.name),
            Some(head),
        ),
        target_branch: pr.destination.branch.name,
        draft: pr.draft,
        action,
    })
}
