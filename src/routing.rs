//! Which routes a ref change triggers (SPEC §3 `[[route]]`, §5.3).

use crate::bitbucket::{RefChange, RefKind};
use crate::config::{EventKind, Route};
use crate::ids::SourceId;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A compiled list of globs; a string matches when any glob does. `*` also matches `/`.
#[derive(Debug, Clone)]
pub struct Patterns {
    set: GlobSet,
    source: Vec<String>,
}

impl Patterns {
    /// Compiles `patterns`; `case_insensitive` for repository names, not for git refs.
    pub fn compile(patterns: &[String], case_insensitive: bool) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(
                GlobBuilder::new(pattern)
                    .case_insensitive(case_insensitive)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()?,
            );
        }
        Ok(Self {
            set: builder.build()?,
            source: patterns.to_vec(),
        })
    }

    /// Whether any glob matches the whole of `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The globs as written in the config.
    pub fn as_written(&self) -> &[String] {
        &self.source
    }
}

impl Route {
    /// Whether this route wants builds for `change` of `repository` pushed to `source`.
    /// Deletions are never routed (callers filter them first).
    pub fn matches(
        &self,
        source: &SourceId,
        event: EventKind,
        repository: &str,
        change: &RefChange,
    ) -> bool {
        if &self.source != source || !self.events.contains(&event) {
            return false;
        }
        if !self.repository.matches(repository) {
            return false;
        }
        let name = change.logical_name();
        match change.kind {
            RefKind::Branch => self.branches.matches(name) && !self.exclude_branches.matches(name),
            RefKind::Tag => self.tags && self.tag_patterns.matches(name),
            RefKind::Other => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str], ci: bool) -> Patterns {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Patterns::compile(&owned, ci).unwrap()
    }

    #[test]
    fn star_crosses_slashes() {
        let p = patterns(&["*"], false);
        assert!(p.matches("feature/foo/bar"));
        let p = patterns(&["release/*"], false);
        assert!(p.matches("release/1.2/hotfix"));
        assert!(!p.matches("main"));
    }

    #[test]
    fn repository_globs_ignore_case_branches_do_not() {
        let repo = patterns(&["PROJ/*"], true);
        assert!(repo.matches("proj/Repo-One"));
        assert!(!repo.matches("OTHER/repo"));
        let branch = patterns(&["Main"], false);
        assert!(!branch.matches("main"));
    }

    #[test]
    fn several_globs_any_matches() {
        let p = patterns(&["main", "release/*"], false);
        assert!(p.matches("main"));
        assert!(p.matches("release/x"));
        assert!(!p.matches("feature/x"));
    }
}
