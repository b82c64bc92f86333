//! Bitbucket Cloud `repo:push` payloads.
//!
//! The user key is the actor's `uuid` (with braces) or `account_id`; `nickname` and
//! `display_name` are not unique and are only used to name the pusher in comments.

use super::{Actor, PayloadError, Push, RefChange};
use crate::ids::{Sha, UserKey};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    actor: Option<User>,
    repository: Repository,
    push: PushBody,
}

#[derive(Deserialize)]
pub(super) struct User {
    uuid: Option<String>,
    account_id: Option<String>,
    display_name: Option<String>,
    nickname: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Repository {
    pub full_name: String,
}

#[derive(Deserialize)]
struct PushBody {
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    new: Option<RefState>,
    old: Option<RefState>,
    #[serde(default)]
    closed: bool,
}

#[derive(Deserialize)]
struct RefState {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    target: Target,
}

#[derive(Deserialize)]
struct Target {
    hash: String,
}

/// Parses a Cloud push body.
pub fn parse_push(body: &[u8]) -> Result<Push, PayloadError> {
    let payload: Payload = serde_json::from_slice(body).map_err(PayloadError::from_json)?;
    let mut changes = Vec::with_capacity(payload.push.changes.len());
    for change in payload.push.changes {
        let (state, deleted) = match (change.new, change.old) {
            (Some(new), _) if !change.closed => (new, false),
            (_, Some(old)) => (old, true),
            (Some(new), None) => (new, true),
            (None, None) => return Err(PayloadError::Missing("push.changes[].new or .old")),
        };
        let full_ref = match state.kind.as_str() {
            "branch" => format!("refs/heads/{}", state.name),
            "tag" | "annotated_tag" => format!("refs/tags/{}", state.name),
            // Mercurial-era kinds ("named_branch", "bookmark"): kept unrouteable.
            other => format!("{other}:{}", state.name),
        };
        let target = if deleted {
            None
        } else {
            Some(
                Sha::parse(&state.target.hash)
                    .ok_or(PayloadError::Invalid("push.changes[].new.target.hash"))?,
            )
        };
        changes.push(RefChange::from_full_ref(full_ref, target));
    }
    let actor = payload.actor.map(actor_of);
    let full_name = payload.repository.full_name;
    Ok(Push {
        clone_urls: clone_urls(&full_name),
        repository: full_name,
        actor,
        changes,
        ref_limit_exceeded: false,
    })
}

/// The clone URLs of a Cloud repository, for check-for-changes mode.
pub(super) fn clone_urls(full_name: &str) -> Vec<String> {
    vec![
        format!("https://bitbucket.org/{full_name}.git"),
        format!("git@bitbucket.org:{full_name}.git"),
    ]
}

/// The user a token is looked up for (uuid, then account id), named for comments.
pub(super) fn actor_of(user: User) -> Actor {
    Actor {
        name: user.name(),
        keys: [user.uuid.as_deref(), user.account_id.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(UserKey::parse)
            .collect(),
    }
}

impl User {
    /// How to name the user: display name, nickname, uuid.
    pub fn name(&self) -> String {
        self.display_name
            .clone()
            .or_else(|| self.nickname.clone())
            .or_else(|| self.uuid.clone())
            .unwrap_or_else(|| "unknown".into())
    }
}
