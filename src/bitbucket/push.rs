//! The normalised push that both Data Center and Cloud payloads are parsed into.

use crate::ids::{Sha, UserKey};

/// One delivery's push: who, which repository, which refs moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `PROJECTKEY/repo-slug` (Data Center) or `workspace/repo-slug` (Cloud), as sent.
    pub repository: String,
    /// Who pushed; absent in some mirror-synchronisation payloads.
    pub actor: Option<Actor>,
    /// The ref changes, in payload order.
    pub changes: Vec<RefChange>,
    /// Clone URLs of the repository, for check-for-changes mode.
    pub clone_urls: Vec<String>,
    /// Data Center mirror sync with too many refs: `changes` is empty though refs moved.
    pub ref_limit_exceeded: bool,
}

/// The pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Keys a token may be registered under, in order of preference: Data Center login name
    /// then slug; Cloud uuid then account id.
    pub keys: Vec<UserKey>,
    /// How to name the pusher in build comments and logs.
    pub name: String,
}

/// Branch, tag, or some other ref (notes, pull-request refs), which never triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// `refs/heads/…`.
    Branch,
    /// `refs/tags/…`.
    Tag,
    /// Anything else.
    Other,
}

/// One ref that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefChange {
    /// The full ref, e.g. `refs/heads/feature/foo`.
    pub full_ref: String,
    /// Branch or tag.
    pub kind: RefKind,
    /// The commit the ref now points at; `None` when the ref was deleted.
    pub target: Option<Sha>,
}

impl RefChange {
    /// The branch or tag name without `refs/heads/` or `refs/tags/`.
    pub fn logical_name(&self) -> &str {
        let prefix = match self.kind {
            RefKind::Branch => "refs/heads/",
            RefKind::Tag => "refs/tags/",
            RefKind::Other => "",
        };
        self.full_ref.strip_prefix(prefix).unwrap_or(&self.full_ref)
    }

    /// Builds a change from a full ref, inferring the kind from its prefix when the payload's
    /// type is not conclusive.
    pub fn from_full_ref(full_ref: String, target: Option<Sha>) -> Self {
        let kind = if full_ref.starts_with("refs/heads/") {
            RefKind::Branch
        } else if full_ref.starts_with("refs/tags/") {
            RefKind::Tag
        } else {
            RefKind::Other
        };
        Self {
            full_ref,
            kind,
            target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_names_strip_the_namespace() {
        let b = RefChange::from_full_ref("refs/heads/feature/foo".into(), None);
        assert_eq!((b.kind, b.logical_name()), (RefKind::Branch, "feature/foo"));
        let t = RefChange::from_full_ref("refs/tags/v1.0".into(), None);
        assert_eq!((t.kind, t.logical_name()), (RefKind::Tag, "v1.0"));
        let o = RefChange::from_full_ref("refs/notes/commits".into(), None);
        assert_eq!(
            (o.kind, o.logical_name()),
            (RefKind::Other, "refs/notes/commits")
        );
    }
}
