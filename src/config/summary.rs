//! A readable account of what a config means, for `bb2tc check-config`.

use super::{BranchNaming, Config, EventKind, ReportStatus, SourceKind, TriggerMode};
use std::fmt::Write;

/// The secret the shipped config falls back to: public, so anyone could sign webhooks.
const SHIPPED_SECRET: &str = "change-me";

impl Config {
    /// What is allowed but probably a mistake: shown by `check-config` and logged at start.
    /// Never holds a secret.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.web.cookie_secure && plain_http_beyond_loopback(&self.http.public_url) {
            out.push(
                "public_url is plain HTTP beyond loopback; browsers drop Secure cookies there, \
                 so nobody can sign in. Serve bb2tc over HTTPS (e.g. a reverse proxy) or set \
                 [web] cookie_secure = false."
                    .to_string(),
            );
        }
        for source in &self.sources {
            if source.secrets.iter().any(|s| s.expose() == SHIPPED_SECRET) {
                out.push(format!(
                    "bitbucket source {:?} uses the shipped webhook secret {SHIPPED_SECRET:?}, \
                     which anyone can read: set BB2TC_WEBHOOK_SECRET (or secrets) to a random value",
                    source.id.as_str()
                ));
            }
        }
        for route in &self.routes {
            let without_token = self
                .sources
                .iter()
                .any(|s| s.id == route.source && s.status_token.is_none());
            if route.report_status != ReportStatus::Off && without_token {
                out.push(format!(
                    "route[{}] has report_status, but source {:?} has no status_token: no build \
                     statuses are posted",
                    route.index,
                    route.source.as_str()
                ));
            }
            let takes_pull_requests = route.events.contains(&EventKind::PullRequest);
            let cloud_without_token = self.sources.iter().any(|s| {
                s.id == route.source && s.kind == SourceKind::Cloud && s.status_token.is_none()
            });
            if takes_pull_requests && cloud_without_token {
                out.push(format!(
                    "route[{}] builds pull requests of Cloud source {:?}, which has no \
                     status_token: their 12-digit head commit cannot be made whole, so they are \
                     triggered by branch only{} (set status_token to a repository or workspace \
                     access token)",
                    route.index,
                    route.source.as_str(),
                    if route.vcs_root_id.is_some() {
                        ", without pinning the commit through vcs_root_id"
                    } else {
                        ""
                    }
                ));
            }
        }
        if self.storage.postgres.is_some()
            && !self.storage.path.as_os_str().is_empty()
            && self.storage.path != std::path::Path::new("data")
        {
            out.push("storage.path is not used with backend = \"postgres\"".into());
        }
        if self.storage.master_key.is_none() {
            let key_file = self.storage.path.join("master.key");
            if let Some(mode) = file_mode(&key_file)
                && mode & 0o077 != 0
            {
                out.push(format!(
                    "{} is readable by others (mode {mode:o}): chmod 600 it",
                    key_file.display()
                ));
            }
        }
        out
    }

    /// Sources, servers and routes, one line each, saying which repositories and branches
    /// go where.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "listen: {} (public URL {})",
            self.http.listen, self.http.public_url
        );
        match &self.storage.postgres {
            None => {
                let _ = writeln!(out, "store: sled at {}", self.storage.path.display());
            }
            Some(pg) => {
                let _ = writeln!(
                    out,
                    "store: PostgreSQL {} (pool of {}; claims held {} s) — several instances may share it",
                    redacted_url(pg.url.expose()),
                    pg.max_connections,
                    pg.job_lease.as_secs()
                );
            }
        }
        let _ = writeln!(out, "sources:");
        for s in &self.sources {
            let signing = if s.secrets.is_empty() {
                "unsigned".to_string()
            } else {
                format!("{} secret(s)", s.secrets.len())
            };
            let sign_in = match (&s.url, &s.oauth_client_id) {
                (None, _) => "no token-page sign-in (no url)".to_string(),
                (Some(url), None) => format!("sign-in with a pasted token at {url}"),
                (Some(url), Some(_)) => format!("sign-in with Bitbucket (OAuth) at {url}"),
            };
            let _ = writeln!(
                out,
                "  {} ({}): webhook URL {}/hooks/bitbucket/{}, {signing}; {sign_in}",
                s.id,
                s.kind.as_str(),
                self.http.public_url,
                s.id
            );
        }
        let _ = writeln!(
            out,
            "token page: {}/ — sessions last {}s, {} sign-in attempts per minute per address, \
             cookies {}",
            self.http.public_url,
            self.web.session_ttl.as_secs(),
            self.web.sign_in_attempts_per_minute,
            if self.web.cookie_secure {
                "Secure"
            } else {
                "NOT Secure (plain HTTP)"
            }
        );
        for warning in self.warnings() {
            let _ = writeln!(out, "  warning: {warning}");
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
            if r.events.contains(&EventKind::PullRequest) {
                let _ = write!(
                    refs,
                    "; pull requests into {}{}{}{}",
                    r.target_branches.as_written().join(", "),
                    if r.draft_pull_requests {
                        ", drafts too"
                    } else {
                        ""
                    },
                    if r.fork_pull_requests {
                        ", forks too"
                    } else {
                        ""
                    },
                    if r.pr_properties {
                        ", with bitbucket.pr.* parameters"
                    } else {
                        ""
                    },
                );
                if !r.events.contains(&EventKind::Push) {
                    refs.push_str(" (no pushes)");
                }
            }
            if r.cancel_superseded {
                refs.push_str("; newer commits cancel queued builds");
            }
            match r.report_status {
                ReportStatus::Off => {}
                ReportStatus::Triggers => refs.push_str("; trigger statuses to Bitbucket"),
                ReportStatus::Builds => refs.push_str("; build statuses to Bitbucket"),
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

/// Whether browsers reach `url` over plain HTTP on a host other than loopback (where they
/// refuse `Secure` cookies).
fn plain_http_beyond_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !loopback
}

/// The permission bits of a file, where the platform has them.
fn file_mode(path: &std::path::Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// A database URL without its password, for the summary.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(url)".into();
    };
    match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;
    use crate::config::Config;

    fn summary(extra: &str) -> String {
        let text = format!(
            "{extra}\n[[bitbucket]]\nid = \"dc\"\nkind = \"datacenter\"\nsecrets = [\"s\"]\n\
             url = \"https://bb.example.com\"\noauth_client_id = \"c\"\noauth_client_secret = \"x\"\n\
             [[bitbucket]]\nid = \"cloud\"\nkind = \"cloud\"\nsecrets = [\"s\"]\n"
        );
        Config::from_toml_str(&text, &|_| None).unwrap().summary()
    }

    #[test]
    fn warns_about_the_shipped_secret_and_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[storage]\npath = {:?}\n[[bitbucket]]\nid = \"dc\"\nkind = \"datacenter\"\nsecrets = [\"change-me\"]\n",
            dir.path().display().to_string()
        );
        let config = Config::from_toml_str(&text, &|_| None).unwrap();
        let warnings = config.warnings().join("\n");
        assert!(warnings.contains("shipped webhook secret"), "{warnings}");
        assert!(!warnings.contains("readable by others"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("master.key");
            std::fs::write(&key, "k").unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let warnings = config.warnings().join("\n");
            assert!(
                warnings.contains("readable by others (mode 644)"),
                "{warnings}"
            );
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(!config.warnings().join("\n").contains("readable by others"));
        }
    }

    #[test]
    fn says_which_routes_build_pull_requests_and_warns_when_cloud_cannot_pin_them() {
        let text = summary(
            "[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com\"\n\
             [[route]]\nsource = \"cloud\"\nrepository = \"*\"\nteamcity = \"main\"\nbuild_types = [\"B\"]\n\
             events = [\"pull_request\"]\ntarget_branches = [\"main\"]\nvcs_root_id = \"Root\"\ncancel_superseded = true\n",
        );
        assert!(
            text.contains(
                "pull requests into main (no pushes); newer commits cancel queued builds"
            ),
            "{text}"
        );
        assert!(
            text.contains("has no status_token") && text.contains("without pinning the commit"),
            "{text}"
        );
        let text = summary(
            "[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com\"\n\
             [[route]]\nsource = \"dc\"\nrepository = \"*\"\nteamcity = \"main\"\nbuild_types = [\"B\"]\n\
             report_status = \"builds\"\n",
        );
        assert!(text.contains("; build statuses to Bitbucket"), "{text}");
        assert!(text.contains("no build statuses are posted"), "{text}");
    }

    #[test]
    fn says_how_each_source_signs_in_and_warns_about_plain_http() {
        let plain = summary("[server]\npublic_url = \"http://bb2tc.example.com\"");
        assert!(plain.contains("sign-in with Bitbucket (OAuth) at https://bb.example.com/"));
        assert!(plain.contains("sign-in with a pasted token at https://api.bitbucket.org/"));
        assert!(
            plain.contains("warning: public_url is plain HTTP"),
            "{plain}"
        );
        for fine in [
            "[server]\npublic_url = \"https://bb2tc.example.com\"",
            "",
            "[server]\npublic_url = \"http://bb2tc.example.com\"\n[web]\ncookie_secure = false",
        ] {
            assert!(!summary(fine).contains("warning"), "{fine}");
        }
    }

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(
            redacted_url("postgres://bb2tc:s3cr3t@db.example:5432/bb2tc?sslmode=require"),
            "postgres://bb2tc:***@db.example:5432/bb2tc?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgres://db.example/bb2tc"),
            "postgres://db.example/bb2tc"
        );
    }
}
