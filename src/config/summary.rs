//! A readable account of what a config means, for `bb2tc check-config`.

use super::{BranchNaming, Config, TriggerMode};
use std::fmt::Write;

impl Config {
    /// Sources, servers and routes, one line each, saying which repositories and branches
    /// go where.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "listen: {} (public URL {})",
            self.http.listen, self.http.public_url
        );
        let _ = writeln!(out, "store: {}", self.storage.path.display());
        let _ = writeln!(out, "sources:");
        for s in &self.sources {
            let signing = if s.secrets.is_empty() {
                "unsigned".to_string()
            } else {
                format!("{} secret(s)", s.secrets.len())
            };
            let _ = writeln!(
                out,
                "  {} ({}): webhook URL {}/hooks/bitbucket/{}, {signing}",
                s.id,
                s.kind.as_str(),
                self.http.public_url,
                s.id
            );
        }
        let _ = writeln!(out, "teamcity servers:");
        for t in &self.servers {
            let _ = writeln!(
                out,
                "  {}: {} — {}/s, burst {}, {} in flight, timeout {}s, {} retries{}",
                t.id,
                t.base_url(),
                t.rate_per_second,
                t.burst,
                t.max_in_flight,
                t.timeout.as_secs(),
                t.retry_schedule.len(),
                if t.service_token.is_some() {
                    ", service token set"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(out, "routes:");
        for r in &self.routes {
            let target = match r.mode {
                TriggerMode::Build => format!(
                    "build {}",
                    r.build_types
                        .iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TriggerMode::CheckForChanges => "check for changes (commit hook)".into(),
            };
            let mut refs = format!("branches {}", r.branches.as_written().join(", "));
            if !r.exclude_branches.as_written().is_empty() {
                let _ = write!(
                    refs,
                    " except {}",
                    r.exclude_branches.as_written().join(", ")
                );
            }
            if r.tags {
                let _ = write!(refs, "; tags {}", r.tag_patterns.as_written().join(", "));
            }
            let naming = match r.branch_name {
                BranchNaming::Logical => "",
                BranchNaming::Full => " (full ref names)",
            };
            let _ = writeln!(
                out,
                "  route[{}]: {} repositories {} ({refs}) -> {} {target}{naming}",
                r.index,
                r.source,
                r.repository.as_written().join(", "),
                r.teamcity
            );
        }
        out
    }
}
