//! The normalised pull request that Data Center and Cloud pull-request events are parsed
//! into (SPEC §5.4), and what the event asks of bb2tc.

use super::{Actor, RefChange};

/// One pull-request event: the pull request as it is now, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Its number in the target repository.
    pub id: u64,
    /// Its title.
    pub title: String,
    /// Its page in Bitbucket.
    pub url: Option<String>,
    /// Who opened it (named, for `bitbucket.pr.author`).
    pub author: String,
    /// Who caused this event (opened, pushed to it, made it ready): their token is used.
    pub actor: Option<Actor>,
    /// The target repository, the one whose webhook sent this: `PROJECTKEY/repo-slug` or
    /// `workspace/repo-slug`.
    pub repository: String,
    /// Where its commits come from: the same as `repository` unless it is a fork.
    pub source_repository: String,
    /// The source ref (`refs/heads/…`, or a tag on Data Center) at the head commit.
    pub source: RefChange,
    /// The target branch's logical name.
    pub target_branch: String,
    /// A draft (Data Center 9+, Cloud).
    pub draft: bool,
    /// Clone URLs of the target repository, for check-for-changes mode.
    pub clone_urls: Vec<String>,
    /// What the event asks for.
    pub action: Action,
}

/// What a pull-request event asks bb2tc to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build the source branch at the head commit.
    Build,
    /// Nothing to build, and why (e.g. the head did not move).
    Nothing(String),
    /// The pull request ended (merged, declined, deleted): cancel what is still queued.
    Ended(&'static str),
}

impl PullRequest {
    /// Whether its source is another repository than its target (case-insensitive, as
    /// Bitbucket's keys and slugs are).
    pub fn is_fork(&self) -> bool {
        !self
            .source_repository
            .eq_ignore_ascii_case(&self.repository)
    }
}
