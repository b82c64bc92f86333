//! Bitbucket Data Center / Server push payloads: `repo:refs_changed` and
//! `mirror:repo_synchronized` (same `changes[]` shape).
//!
//! Only the fields bb2tc needs are read; everything else (timestamps in epoch milliseconds or,
//! since Data Center 10, ISO strings) is ignored.

use super::{Actor, PayloadError, Push, RefChange};
use crate::ids::{Sha, UserKey};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    actor: Option<User>,
    repository: Repository,
    #[serde(default)]
    changes: Vec<Change>,
    #[serde(rename = "toCommit")]
    to_commit: Option<Commit>,
    #[serde(rename = "refLimitExceeded", default)]
    ref_limit_exceeded: bool,
}

#[derive(Deserialize)]
pub(super) struct User {
    pub name: String,
    pub slug: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Repository {
    slug: String,
    project: Project,
    #[serde(default)]
    links: Links,
}

impl Repository {
    /// `PROJECTKEY/repo-slug`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.project.key, self.slug)
    }

    /// Its clone URLs.
    pub fn clone_urls(&self) -> Vec<String> {
        self.links.clone.iter().map(|h| h.href.clone()).collect()
    }
}

#[derive(Deserialize)]
struct Project {
    key: String,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    clone: Vec<Href>,
}

#[derive(Deserialize)]
pub(super) struct Href {
    pub href: String,
}

#[derive(Deserialize)]
struct Change {
    #[serde(rename = "ref")]
    reference: Option<Ref>,
    #[serde(rename = "refId")]
    ref_id: Option<String>,
    #[serde(rename = "toHash")]
    to_hash: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "toCommit")]
    to_commit: Option<Commit>,
}

#[derive(Deserialize)]
struct Ref {
    id: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
}

/// Parses a Data Center push body.
pub fn parse_push(body: &[u8]) -> Result<Push, PayloadError> {
    let Payload {
        actor,
        repository,
        changes: raw_changes,
        to_commit,
        ref_limit_exceeded,
    } = serde_json::from_slice(body).map_err(PayloadError::from_json)?;
    // An annotated tag's toHash is the tag object; toCommit (per change, or the payload's own
    // when it has a single change) is the commit TeamCity must build.
    let payload_commit = match raw_changes.len() {
        1 => to_commit.map(|c| c.id),
        _ => None,
    };
    let mut changes = Vec::with_capacity(raw_changes.len());
    for change in raw_changes {
        let full_ref = change
            .reference
            .map(|r| r.id)
            .or(change.ref_id)
            .ok_or(PayloadError::Missing("changes[].ref.id"))?;
        let to_hash =
            Sha::parse(&change.to_hash).ok_or(PayloadError::Invalid("changes[].toHash"))?;
        let deleted = change.kind.eq_ignore_ascii_case("DELETE") || to_hash.is_zero();
        let peeled = change
            .to_commit
            .map(|c| c.id)
            .or_else(|| payload_commit.clone())
            .and_then(|id| Sha::parse(&id));
        let target = (!deleted).then(|| peeled.unwrap_or(to_hash));
        changes.push(RefChange::from_full_ref(full_ref, target));
    }
    let actor = actor.map(actor_of);
    Ok(Push {
        repository: repository.name(),
        actor,
        changes,
        clone_urls: repository.clone_urls(),
        ref_limit_exceeded,
    })
}

/// The user a token is looked up for: by login name, then slug.
pub(super) fn actor_of(user: User) -> Actor {
    Actor {
        keys: [Some(user.name.as_str()), user.slug.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(UserKey::parse)
            .fold(Vec::new(), |mut keys, key| {
                if !keys.contains(&key) {
                    keys.push(key);
                }
                keys
            }),
        name: user.name,
    }
}
