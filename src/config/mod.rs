//! Loading and validating the TOML config (SPEC §3).
//!
//! Text → `${VAR}` interpolation of every string ([`interpolate`]) → the file format
//! (`raw`, which rejects unknown keys) → the validated [`Config`] used by the rest of the
//! crate. Every error names the table and key it is about, e.g.
//! `teamcity[0] (id "main").rate_per_second: must be greater than 0`.

mod interpolate;
mod raw;
mod summary;

pub use interpolate::{InterpolateError, interpolate};

use crate::ids::{BuildTypeId, Secret, ServerId, SourceId, TeamCityToken};
use crate::routing::Patterns;
use raw::{RawConfig, RawRoute, RawSource, RawTeamCity};
use reqwest::Url;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// One or more keys have bad values; one line per problem, each naming the key.
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Bitbucket Cloud's REST API: a Cloud source's `url` when none is given.
pub const CLOUD_API: &str = "https://api.bitbucket.org";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: the HTTP listener.
    pub http: HttpSettings,
    /// `[storage]`: where the sled store lives and how tokens are encrypted.
    pub storage: StorageSettings,
    /// `[admin] token`: the admin API token; `None` means generate one at first start.
    pub admin_token: Option<Secret>,
    /// `[web]`: the token page's sessions and sign-in.
    pub web: WebSettings,
    /// `[[bitbucket]]` tables.
    pub sources: Vec<Source>,
    /// `[[teamcity]]` tables.
    pub servers: Vec<TeamCityServer>,
    /// `[[route]]` tables, in file order.
    pub routes: Vec<Route>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Larger request bodies get 413.
    pub max_body_bytes: u64,
    /// Time allowed for a whole request (headers and body).
    pub read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// How users reach bb2tc; defaults to `http://{listen}`.
    pub public_url: String,
    /// Whether `public_url` was given (else it follows the address actually listened on).
    pub public_url_configured: bool,
    /// A delivery that would make more jobs is refused (202, nothing queued).
    pub max_jobs_per_delivery: usize,
    /// Webhook bodies held in memory at once, in bytes.
    pub body_budget_bytes: u64,
}

impl HttpSettings {
    /// Makes a default `public_url` name the address bb2tc really listens on (which differs
    /// from `listen` when that asks for port 0).
    pub fn follow_bound_address(&mut self, bound: SocketAddr) {
        if !self.public_url_configured {
            self.public_url = format!("http://{bound}");
        }
    }
}

/// `[web]`: the token page (sessions and sign-in).
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Mark the session cookie `Secure` (only sent over HTTPS, or to a loopback address).
    pub cookie_secure: bool,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
    /// Sign-in attempts allowed per client address and minute.
    pub sign_in_attempts_per_minute: NonZeroU32,
}

/// `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// The sled directory.
    pub path: PathBuf,
    /// Base64 of 32 bytes; `None` means use or create `<path>/master.key`.
    pub master_key: Option<Secret>,
    /// How long an intake log segment grows before a new one begins (and the old one can
    /// be checkpointed away); each is allocated in full when it is begun.
    pub intake_segment_bytes: u64,
    /// `None`: the embedded sled store at `path` (the default). `Some`: PostgreSQL (§7.1).
    pub postgres: Option<PostgresSettings>,
}

/// `[storage] backend = "postgres"`: several bb2tc instances share one database.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/db?sslmode=…` (it may hold a password: redacted).
    pub url: Secret,
    /// The connection pool's size.
    pub max_connections: usize,
    /// How long a claimed job stays this instance's before another may take it back
    /// (longer than every server's `timeout_secs`, see `job_lease_for`).
    pub job_lease: Duration,
}

/// A claimed job's lease: twice the longest TeamCity timeout, plus 10 s for the store
/// writes after the call. It is renewed right before the call (which the timeout ends), so a
/// job is taken back only when its instance surely stopped.
pub fn job_lease_for(longest_timeout: Duration) -> Duration {
    longest_timeout * 2 + Duration::from_secs(10)
}

/// `storage.intake_segment_bytes` by default.
pub const DEFAULT_INTAKE_SEGMENT_BYTES: u64 = 8 << 20;

/// Whether a source is Bitbucket Data Center/Server or Bitbucket Cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Bitbucket Data Center or Server.
    DataCenter,
    /// Bitbucket Cloud.
    Cloud,
}

impl SourceKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::DataCenter => "datacenter",
            SourceKind::Cloud => "cloud",
        }
    }
}

/// `[[bitbucket]]`: one Bitbucket instance or Cloud workspace sending webhooks.
#[derive(Debug, Clone)]
pub struct Source {
    /// The id in the webhook URL `/hooks/bitbucket/{id}`.
    pub id: SourceId,
    /// Data Center or Cloud: decides the payload format and the user key.
    pub kind: SourceKind,
    /// Webhook secrets; a signature made with any of them is accepted (rotation).
    pub secrets: Vec<Secret>,
    /// Accept deliveries without a signature (only when no secret is configured).
    pub allow_unsigned: bool,
    /// The Bitbucket base URL for the token page's sign-in (Data Center: the instance; Cloud:
    /// the REST API, by default `https://api.bitbucket.org`).
    pub url: Option<Url>,
    /// OAuth client id for "Sign in with Bitbucket", when configured.
    pub oauth_client_id: Option<String>,
    /// OAuth client secret.
    pub oauth_client_secret: Option<Secret>,
    /// Bearer credential for Bitbucket's REST API: reading commits (Cloud: a pull request's
    /// 12-digit hash made whole) and, later, posting build statuses.
    pub status_token: Option<Secret>,
}

/// `[[teamcity]]`: one TeamCity server and how hard bb2tc may call it.
#[derive(Debug, Clone)]
pub struct TeamCityServer {
    /// The id routes refer to.
    pub id: ServerId,
    /// Base URL, without a trailing slash (TeamCity may live under a path).
    pub url: Url,
    /// Sustained trigger calls per second.
    pub rate_per_second: f64,
    /// Calls allowed at once after idle time.
    pub burst: u32,
    /// Concurrent requests to this server.
    pub max_in_flight: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Waits before each retry; after the last one the job is dead.
    pub retry_schedule: Vec<Duration>,
    /// Extra PEM roots for a self-signed TeamCity.
    pub ca_file: Option<PathBuf>,
    /// Token used when the pusher has none (see SPEC §7).
    pub service_token: Option<TeamCityToken>,
    /// Use `service_token` in build mode too.
    pub fallback_to_service_token: bool,
}

impl TeamCityServer {
    /// `url` joined with a REST path such as `app/rest/buildQueue`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The base URL as text, normalised (lower-case scheme and host, no trailing slash):
    /// the form tokens are registered and listed under.
    pub fn base_url(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }
}

/// The event kinds a route can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A push of branches or tags.
    Push,
    /// A pull request opened, updated or made ready for review (SPEC §5.4).
    PullRequest,
}

/// How a route triggers TeamCity (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerMode {
    /// `POST /app/rest/buildQueue` per build type.
    Build,
    /// `POST /app/rest/vcs-root-instances/commitHookNotification` per clone URL.
    CheckForChanges,
}

/// What a route reports to Bitbucket as build statuses (SPEC §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    /// Nothing.
    #[default]
    Off,
    /// One status per trigger: queued as the user, or why no build will run.
    Triggers,
    /// As `Triggers`, then the followed build's state until it finishes.
    Builds,
}

/// Whether TeamCity gets `feature/x` or `refs/heads/feature/x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchNaming {
    /// `refs/heads/x` → `x`, `refs/tags/v1` → `v1`.
    Logical,
    /// The full ref.
    Full,
}

/// `[[route]]`: repositories of a source → build types on a server.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the file, for messages.
    pub index: usize,
    /// The source whose pushes this route takes.
    pub source: SourceId,
    /// Glob over `PROJECTKEY/repo-slug` or `workspace/repo-slug`, case-insensitive.
    pub repository: Patterns,
    /// The server builds run on.
    pub teamcity: ServerId,
    /// One job per build type.
    pub build_types: Vec<BuildTypeId>,
    /// Branch globs over the logical name.
    pub branches: Patterns,
    /// Branches excluded even when `branches` matches.
    pub exclude_branches: Patterns,
    /// Whether tag pushes trigger.
    pub tags: bool,
    /// Tag globs (when `tags`).
    pub tag_patterns: Patterns,
    /// Event kinds acted on.
    pub events: Vec<EventKind>,
    /// Build or check-for-changes.
    pub mode: TriggerMode,
    /// Logical or full branch names.
    pub branch_name: BranchNaming,
    /// VCS root to pin the pushed commit on, through `revisions`.
    pub vcs_root_id: Option<String>,
    /// Extra build parameters.
    pub properties: Vec<(String, String)>,
    /// Pull requests: globs over the target branch's logical name.
    pub target_branches: Patterns,
    /// Pull requests: build drafts too.
    pub draft_pull_requests: bool,
    /// Pull requests: build those whose source is another repository.
    pub fork_pull_requests: bool,
    /// Pull requests: send the `bitbucket.pr.*` build parameters.
    pub pr_properties: bool,
    /// A newer commit on a branch cancels this route's older builds still in TeamCity's queue.
    pub cancel_superseded: bool,
    /// Build statuses posted to Bitbucket (SPEC §6.2).
    pub report_status: ReportStatus,
}

impl Config {
    /// Reads and validates the file at `path`, interpolating from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &|name| std::env::var(name).ok())
    }

    /// Validates config text, looking `${VAR}`s up with `env`.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut problems = Vec::new();
        interpolate_all(&mut value, String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Invalid(vec![format!("{path}: {}", e.into_inner())])
        })?;
        Validator::default().validate(raw)
    }

    /// The source with this id.
    pub fn source(&self, id: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.id.as_str() == id)
    }

    /// The server with this id.
    pub fn server(&self, id: &ServerId) -> Option<&TeamCityServer> {
        self.servers.iter().find(|s| &s.id == id)
    }

    /// The server named by id or by URL (scheme, case and trailing slash ignored).
    pub fn server_by_id_or_url(&self, name: &str) -> Option<&TeamCityServer> {
        let name = name.trim();
        if let Some(server) = self.servers.iter().find(|s| s.id.as_str() == name) {
            return Some(server);
        }
        let wanted = Url::parse(name).ok()?;
        let wanted = wanted.as_str().trim_end_matches('/');
        self.servers.iter().find(|s| s.base_url() == wanted)
    }
}

/// Replaces `${VAR}` in every string of the document, recording problems by key path.
fn interpolate_all(
    value: &mut toml::Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) {
    match value {
        toml::Value::String(text) => match interpolate(text, env) {
            Ok(done) => *text = done,
            Err(e) => problems.push(format!("{path}: {e}")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_all(item, format!("{path}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                interpolate_all(item, child, env, problems);
            }
        }
        _ => {}
    }
}

/// Largest values the numeric keys take (far beyond any real use, well within what the
/// runtime can hold).
const MAX_BODY_BYTES: u64 = 1 << 30;
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
const MAX_SESSION_SECS: u64 = 366 * 24 * 3600;
const MAX_CONNECTIONS: u64 = 1_000_000;
const MAX_IN_FLIGHT: u64 = 10_000;
const MAX_BURST: u64 = 1_000_000;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_JOBS_PER_DELIVERY: u64 = 1_000_000;
const MAX_BODY_BUDGET: u64 = 1 << 36;
const MAX_POOL_CONNECTIONS: u64 = 1_000;

/// Collects every problem instead of stopping at the first, so an operator fixes them in one go.
#[derive(Default)]
struct Validator {
    problems: Vec<String>,
}

impl Validator {
    fn problem(&mut self, key: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.problems.push(format!("{key}: {message}"));
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = match raw.server.listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem("server.listen", "expected an address like 127.0.0.1:8080");
                None
            }
        };
        self.within(
            "server.max_body_bytes",
            raw.server.max_body_bytes,
            1,
            MAX_BODY_BYTES,
        );
        self.within(
            "server.read_timeout_secs",
            raw.server.read_timeout_secs,
            1,
            MAX_TIMEOUT_SECS,
        );
        self.within(
            "server.max_connections",
            raw.server.max_connections as u64,
            1,
            MAX_CONNECTIONS,
        );
        self.within(
            "server.body_budget_bytes",
            raw.server.body_budget_bytes,
            1024,
            MAX_BODY_BUDGET,
        );
        self.within(
            "storage.intake_segment_bytes",
            raw.storage.intake_segment_bytes,
            64 << 10,
            1 << 30,
        );
        self.within(
            "server.max_jobs_per_delivery",
            raw.server.max_jobs_per_delivery,
            1,
            MAX_JOBS_PER_DELIVERY,
        );
        self.within(
            "server.shutdown_grace_secs",
            raw.server.shutdown_grace_secs,
            0,
            MAX_TIMEOUT_SECS,
        );
        let public_url = match (&listen, raw.server.public_url.trim()) {
            (_, url) if !url.is_empty() => {
                if let Some(parsed) = self.http_url("server.public_url", url)
                    && (parsed.query().is_some() || parsed.fragment().is_some())
                {
                    self.problem(
                        "server.public_url",
                        "must not have a query or fragment (webhook and sign-in URLs are built on it)",
                    );
                }
                url.trim_end_matches('/').to_owned()
            }
            (Some(addr), _) => format!("http://{addr}"),
            (None, _) => String::new(),
        };
        let sign_in_attempts_per_minute = NonZeroU32::new(raw.web.sign_in_attempts_per_minute);
        if sign_in_attempts_per_minute.is_none() {
            self.problem("web.sign_in_attempts_per_minute", "must be at least 1");
        }
        self.within(
            "web.session_ttl_secs",
            raw.web.session_ttl_secs,
            1,
            MAX_SESSION_SECS,
        );
        let postgres = self.postgres(&raw.storage, &raw.teamcity);

        self.unique_ids("bitbucket", raw.bitbucket.iter().map(|s| s.id.as_str()));
        self.unique_ids("teamcity", raw.teamcity.iter().map(|s| s.id.as_str()));
        let sources: Vec<Source> = raw
            .bitbucket
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.source(i, s))
            .collect();
        let servers: Vec<TeamCityServer> = raw
            .teamcity
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.server(i, s))
            .collect();
        let routes: Vec<Route> = raw
            .route
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &sources, &servers))
            .collect();

        match (
            self.problems.is_empty(),
            listen,
            sign_in_attempts_per_minute,
        ) {
            (true, Some(listen), Some(sign_in_attempts_per_minute)) => Ok(Config {
                http: HttpSettings {
                    listen,
                    max_body_bytes: raw.server.max_body_bytes,
                    read_timeout: Duration::from_secs(raw.server.read_timeout_secs),
                    max_connections: raw.server.max_connections,
                    shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
                    public_url,
                    public_url_configured: !raw.server.public_url.trim().is_empty(),
                    max_jobs_per_delivery: raw.server.max_jobs_per_delivery as usize,
                    body_budget_bytes: raw.server.body_budget_bytes,
                },
                storage: StorageSettings {
                    path: PathBuf::from(raw.storage.path),
                    master_key: non_empty(raw.storage.master_key).map(Secret::new),
                    intake_segment_bytes: raw.storage.intake_segment_bytes,
                    postgres,
                },
                admin_token: non_empty(raw.admin.token).map(Secret::new),
                web: WebSettings {
                    cookie_secure: raw.web.cookie_secure,
                    session_ttl: Duration::from_secs(raw.web.session_ttl_secs),
                    sign_in_attempts_per_minute,
                },
                sources,
                servers,
                routes,
            }),
            _ => Err(ConfigError::Invalid(self.problems)),
        }
    }

    /// A number within `min..=max`, else a problem naming the key and the range: values the
    /// runtime cannot hold (a semaphore of 2^62 permits, an `Instant` 2^63 s away) would
    /// panic later instead.
    /// `[storage]`'s backend: `None` for sled (its path checked), the PostgreSQL settings
    /// otherwise (a URL, a pool size, and a master key every instance shares).
    fn postgres(
        &mut self,
        storage: &raw::RawStorage,
        servers: &[raw::RawTeamCity],
    ) -> Option<PostgresSettings> {
        match storage.backend.as_str() {
            "sled" => {
                if storage.path.trim().is_empty() {
                    self.problem("storage.path", "must not be empty");
                }
                None
            }
            "postgres" => {
                let url = storage.url.trim();
                if url.is_empty() {
                    self.problem(
                        "storage.url",
                        "must be set with backend = \"postgres\" (postgres://user:password@host:5432/db)",
                    );
                } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    self.problem(
                        "storage.url",
                        "must start with postgres:// or postgresql://",
                    );
                } else if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    // The driver's message names no password.
                    self.problem("storage.url", format!("is not a PostgreSQL URL: {e}"));
                }
                if storage.master_key.trim().is_empty() {
                    self.problem(
                        "storage.master_key",
                        "must be set with backend = \"postgres\": every instance needs the same key (there is no key file)",
                    );
                }
                self.within(
                    "storage.max_connections",
                    storage.max_connections,
                    2,
                    MAX_POOL_CONNECTIONS,
                );
                let longest = servers.iter().map(|s| s.timeout_secs).max().unwrap_or(10);
                Some(PostgresSettings {
                    url: Secret::new(url),
                    max_connections: usize::try_from(storage.max_connections).unwrap_or(16),
                    job_lease: job_lease_for(Duration::from_secs(longest)),
                })
            }
            _ => {
                self.problem("storage.backend", "must be \"sled\" or \"postgres\"");
                None
            }
        }
    }

    fn within(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if value < min {
            self.problem(key, format!("must be at least {min}"));
        } else if value > max {
            self.problem(key, format!("{value} is too large: must be at most {max}"));
        }
    }

    fn http_url(&mut self, key: &str, text: &str) -> Option<Url> {
        match Url::parse(text) {
            // The credential is not repeated in the message.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                self.problem(
                    key,
                    format!(
                        "{:?} must not hold a user name or password: bb2tc authenticates each call itself (for TeamCity with the pusher's own token), and a credential in the URL would be sent instead and shown wherever the URL is",
                        shown.as_str()
                    ),
                );
                None
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                self.problem(key, format!("{text:?} must be an http or https URL"));
                None
            }
            Err(e) => {
                self.problem(key, format!("{text:?} is not a URL ({e})"));
                None
            }
        }
    }

    fn unique_ids<'a>(&mut self, table: &str, ids: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id) {
                self.problem(format!("{table}.id"), format!("{id:?} is used twice"));
            }
        }
    }

    fn id(&mut self, key: &str, id: &str) {
        let ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            self.problem(
                key,
                format!("{id:?} must be non-empty letters, digits, '-', '_' or '.'"),
            );
        }
    }

    fn source(&mut self, i: usize, raw: RawSource) -> Option<Source> {
        let table = format!("bitbucket[{i}] (id {:?})", raw.id);
        self.id(&format!("{table}.id"), &raw.id);
        let kind = match raw.kind.as_str() {
            "datacenter" => Some(SourceKind::DataCenter),
            "cloud" => Some(SourceKind::Cloud),
            other => {
                self.problem(
                    format!("{table}.kind"),
                    format!("{other:?} must be \"datacenter\" or \"cloud\""),
                );
                None
            }
        };
        let secrets: Vec<Secret> = raw
            .secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect();
        if secrets.is_empty() && !raw.allow_unsigned {
            self.problem(
                format!("{table}.secrets"),
                "needs at least one non-empty secret (or allow_unsigned = true)",
            );
        }
        let url = match (raw.url.trim(), kind) {
            ("", Some(SourceKind::Cloud)) => Url::parse(CLOUD_API).ok(),
            ("", _) => None,
            (text, _) => self.http_url(&format!("{table}.url"), text),
        };
        let oauth_client_id = non_empty(raw.oauth_client_id);
        let oauth_client_secret = non_empty(raw.oauth_client_secret).map(Secret::new);
        if oauth_client_id.is_some() != oauth_client_secret.is_some() {
            self.problem(
                format!("{table}.oauth_client_secret"),
                "oauth_client_id and oauth_client_secret are set together or not at all",
            );
        }
        if oauth_client_id.is_some() && url.is_none() {
            self.problem(
                format!("{table}.url"),
                "is needed for \"Sign in with Bitbucket\" (the Data Center base URL)",
            );
        }
        let status_token = non_empty(raw.status_token);
        if let Some(token) = &status_token
            && !token.bytes().all(|b| b.is_ascii_graphic())
        {
            // Not repeated: it is a credential.
            self.problem(
                format!("{table}.status_token"),
                "must be printable ASCII without spaces (it is sent as a Bearer header)",
            );
        }
        Some(Source {
            id: SourceId::new(raw.id),
            kind: kind?,
            secrets,
            allow_unsigned: raw.allow_unsigned,
            url,
            oauth_client_id,
            oauth_client_secret,
            status_token: status_token.map(Secret::new),
        })
    }

    fn server(&mut self, i: usize, raw: RawTeamCity) -> Option<TeamCityServer> {
        let table = format!("teamcity[{i}] (id {:?})", raw.id);
        self.id(&format!("{table}.id"), &raw.id);
        let url = self.http_url(&format!("{table}.url"), raw.url.trim());
        if !(raw.rate_per_second.is_finite() && raw.rate_per_second > 0.0) {
            self.problem(format!("{table}.rate_per_second"), "must be greater than 0");
        }
        if raw.rate_per_second > MAX_RATE {
            self.problem(
                format!("{table}.rate_per_second"),
                format!("must be at most {MAX_RATE}"),
            );
        }
        self.within(
            &format!("{table}.burst"),
            u64::from(raw.burst),
            1,
            MAX_BURST,
        );
        self.within(
            &format!("{table}.max_in_flight"),
            raw.max_in_flight as u64,
            1,
            MAX_IN_FLIGHT,
        );
        self.within(
            &format!("{table}.timeout_secs"),
            raw.timeout_secs,
            1,
            MAX_TIMEOUT_SECS,
        );
        // Seconds; fractions are allowed (tests and fast local setups use them).
        let mut retry_schedule = Vec::with_capacity(raw.retry_schedule_secs.len());
        for (n, secs) in raw.retry_schedule_secs.iter().enumerate() {
            match Duration::try_from_secs_f64(*secs) {
                Ok(step) if step <= Duration::from_secs(7 * 24 * 3600) => retry_schedule.push(step),
                _ => self.problem(
                    format!("{table}.retry_schedule_secs[{n}]"),
                    format!("{secs} must be between 0 and 604800 seconds"),
                ),
            }
        }
        let ca_file = non_empty(raw.ca_file).map(PathBuf::from);
        if let Some(path) = &ca_file
            && !path.is_file()
        {
            self.problem(
                format!("{table}.ca_file"),
                format!("{} is not a readable file", path.display()),
            );
        }
        Some(TeamCityServer {
            id: ServerId::new(raw.id),
            url: url?,
            rate_per_second: raw.rate_per_second,
            burst: raw.burst,
            max_in_flight: raw.max_in_flight,
            timeout: Duration::from_secs(raw.timeout_secs),
            retry_schedule,
            ca_file,
            service_token: non_empty(raw.service_token).map(TeamCityToken::new),
            fallback_to_service_token: raw.fallback_to_service_token,
        })
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        sources: &[Source],
        servers: &[TeamCityServer],
    ) -> Option<Route> {
        let table = format!("route[{i}]");
        let source = match (&raw.source, sources) {
            (Some(id), _) => {
                if !sources.iter().any(|s| s.id.as_str() == id) {
                    self.problem(
                        format!("{table}.source"),
                        format!("no [[bitbucket]] with id {id:?}"),
                    );
                }
                SourceId::new(id.clone())
            }
            (None, [only]) => only.id.clone(),
            (None, _) => {
                self.problem(
                    format!("{table}.source"),
                    "required when there is not exactly one [[bitbucket]] source",
                );
                SourceId::new("")
            }
        };
        if !servers.iter().any(|s| s.id.as_str() == raw.teamcity) {
            self.problem(
                format!("{table}.teamcity"),
                format!("no [[teamcity]] with id {:?}", raw.teamcity),
            );
        }
        if raw.build_types.is_empty() || raw.build_types.iter().any(|b| b.trim().is_empty()) {
            self.problem(
                format!("{table}.build_types"),
                "needs at least one non-empty build type id",
            );
        }
        let repository = self.patterns(&table, "repository", &[raw.repository], true);
        let branches = self.patterns(&table, "branches", &raw.branches, false);
        let exclude_branches =
            self.patterns(&table, "exclude_branches", &raw.exclude_branches, false);
        let tag_patterns = self.patterns(&table, "tag_patterns", &raw.tag_patterns, false);
        let target_branches = self.patterns(&table, "target_branches", &raw.target_branches, false);
        let mut events = Vec::new();
        for event in &raw.events {
            match event.as_str() {
                "push" => events.push(EventKind::Push),
                "pull_request" => events.push(EventKind::PullRequest),
                other => self.problem(
                    format!("{table}.events"),
                    format!("{other:?} must be \"push\" or \"pull_request\""),
                ),
            }
        }
        let mode = match raw.mode.as_str() {
            "build" => Some(TriggerMode::Build),
            "check-for-changes" => Some(TriggerMode::CheckForChanges),
            other => {
                self.problem(
                    format!("{table}.mode"),
                    format!("{other:?} must be \"build\" or \"check-for-changes\""),
                );
                None
            }
        };
        let branch_name = match raw.branch_name.as_str() {
            "logical" => Some(BranchNaming::Logical),
            "full" => Some(BranchNaming::Full),
            other => {
                self.problem(
                    format!("{table}.branch_name"),
                    format!("{other:?} must be \"logical\" or \"full\""),
                );
                None
            }
        };
        let report_status = match raw.report_status.as_str() {
            "off" => Some(ReportStatus::Off),
            "triggers" => Some(ReportStatus::Triggers),
            "builds" => Some(ReportStatus::Builds),
            other => {
                self.problem(
                    format!("{table}.report_status"),
                    format!("{other:?} must be \"off\", \"triggers\" or \"builds\""),
                );
                None
            }
        };
        if report_status.is_some_and(|r| r != ReportStatus::Off)
            && mode == Some(TriggerMode::CheckForChanges)
        {
            self.problem(
                format!("{table}.report_status"),
                "needs mode = \"build\": a commit-hook call has no build to report",
            );
        }
        if raw.cancel_superseded && mode == Some(TriggerMode::CheckForChanges) {
            self.problem(
                format!("{table}.cancel_superseded"),
                "needs mode = \"build\": a commit-hook call queues no build bb2tc could cancel",
            );
        }
        Some(Route {
            index: i,
            source,
            repository: repository?,
            teamcity: ServerId::new(raw.teamcity),
            build_types: raw.build_types.into_iter().map(BuildTypeId::new).collect(),
            branches: branches?,
            exclude_branches: exclude_branches?,
            tags: raw.tags,
            tag_patterns: tag_patterns?,
            events,
            mode: mode?,
            branch_name: branch_name?,
            vcs_root_id: non_empty(raw.vcs_root_id),
            properties: raw.properties.into_iter().collect(),
            target_branches: target_branches?,
            draft_pull_requests: raw.draft_pull_requests,
            fork_pull_requests: raw.fork_pull_requests,
            pr_properties: raw.pr_properties,
            cancel_superseded: raw.cancel_superseded,
            report_status: report_status?,
        })
    }

    fn patterns(&mut self, table: &str, key: &str, globs: &[String], ci: bool) -> Option<Patterns> {
        match Patterns::compile(globs, ci) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(format!("{table}.{key}"), format!("bad glob: {e}"));
                None
            }
        }
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.trim().is_empty()).then_some(text)
}

/// Configs for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Config;

    /// One Data Center source `dc` (secret `s`) and the given `[[teamcity]]` tables.
    pub fn with_servers(teamcity: &str) -> Config {
        let text = format!(
            "[[bitbucket]]\nid = \"dc\"\nkind = \"datacenter\"\nsecrets = [\"s\"]\n{teamcity}"
        );
        Config::from_toml_str(&text, &|_| None).expect("test config is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems_of(text: &str) -> String {
        match Config::from_toml_str(text, &no_env) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    const MINIMAL: &str = "[[bitbucket]]\nid = \"dc\"\nkind = \"datacenter\"\nsecrets = [\"s\"]\n";

    #[test]
    fn the_postgres_backend_needs_a_url_and_a_shared_master_key() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let good = format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:p@db:5432/bb2tc\"\nmax_connections = 4\nmaster_key = \"{key}\"\n[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com\"\ntimeout_secs = 20\n{MINIMAL}"
        );
        let config = Config::from_toml_str(&good, &no_env).unwrap();
        let pg = config.storage.postgres.expect("postgres settings");
        assert_eq!(pg.max_connections, 4);
        assert_eq!(
            pg.job_lease,
            Duration::from_secs(50),
            "2 × the longest timeout + 10 s"
        );
        assert!(
            !format!("{pg:?}").contains(":p@"),
            "the URL's password is redacted"
        );
        assert!(
            Config::from_toml_str(MINIMAL, &no_env)
                .unwrap()
                .storage
                .postgres
                .is_none()
        );

        let err = problems_of(&format!("[storage]\nbackend = \"postgres\"\n{MINIMAL}"));
        assert!(
            err.contains("storage.url") && err.contains("storage.master_key"),
            "{err}"
        );
        let err = problems_of(&good.replace("postgres://u:p@db:5432/bb2tc", "mysql://db/x"));
        assert!(
            err.contains("storage.url") && err.contains("postgres://"),
            "{err}"
        );
        let err = problems_of(&good.replace("max_connections = 4", "max_connections = 1"));
        assert!(err.contains("storage.max_connections"), "{err}");
        let err = problems_of(&good.replace("backend = \"postgres\"", "backend = \"redis\""));
        assert!(err.contains("storage.backend"), "{err}");
    }

    #[test]
    fn pull_request_keys_are_read_and_checked() {
        let route = "[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com\"\n[[route]]\nrepository = \"*\"\nteamcity = \"main\"\nbuild_types = [\"B\"]\n";
        let config = Config::from_toml_str(
            &format!("{MINIMAL}status_token = \"bbtok\"\n{route}events = [\"pull_request\"]\ntarget_branches = [\"main\", \"release/*\"]\ndraft_pull_requests = true\nfork_pull_requests = true\npr_properties = true\ncancel_superseded = true\n"),
            &no_env,
        )
        .unwrap();
        let r = &config.routes[0];
        assert_eq!(r.events, vec![EventKind::PullRequest]);
        assert!(r.target_branches.matches("release/1.0") && !r.target_branches.matches("dev"));
        assert!(r.draft_pull_requests && r.fork_pull_requests && r.pr_properties);
        assert!(r.cancel_superseded);
        assert_eq!(
            config.sources[0].status_token.as_ref().map(|t| t.expose()),
            Some("bbtok")
        );
        assert_eq!(
            format!("{:?}", config.sources[0].status_token),
            "Some([redacted])"
        );
        // Defaults: every target, no drafts, no forks, no parameters, no cancelling.
        let config = Config::from_toml_str(&format!("{MINIMAL}{route}"), &no_env).unwrap();
        let r = &config.routes[0];
        assert!(r.target_branches.matches("anything/at/all"));
        assert!(!(r.draft_pull_requests || r.fork_pull_requests || r.pr_properties));
        assert!(!r.cancel_superseded && config.sources[0].status_token.is_none());
        // A commit hook queues nothing to cancel; a token that cannot be a header.
        let problems = problems_of(&format!(
            "{MINIMAL}status_token = \"two words\"\n{route}mode = \"check-for-changes\"\ncancel_superseded = true\ntarget_branches = [\"[\"]\n"
        ));
        assert!(
            problems.contains("route[0].cancel_superseded: needs mode = \"build\""),
            "{problems}"
        );
        assert!(
            problems.contains("status_token: must be printable ASCII"),
            "{problems}"
        );
        assert!(!problems.contains("two words"), "{problems}");
        assert!(
            problems.contains("route[0].target_branches: bad glob"),
            "{problems}"
        );
    }

    #[test]
    fn credentials_in_urls_are_refused_without_being_repeated() {
        let text = format!(
            "[server]\npublic_url = \"https://ops:hunter2@bb2tc.example.com\"\n{MINIMAL}url = \"https://svc:bbpass@bitbucket.example.com\"\n[[teamcity]]\nid = \"main\"\nurl = \"https://admin:tcpass@tc.example.com\"\n"
        );
        let problems = problems_of(&text);
        for key in [
            "server.public_url",
            "bitbucket[0] (id \"dc\").url",
            "teamcity[0] (id \"main\").url",
        ] {
            assert!(
                problems.contains(&format!("{key}: "))
                    && problems.contains("must not hold a user name or password"),
                "{key}: {problems}"
            );
        }
        for secret in ["hunter2", "bbpass", "tcpass", "ops", "svc", "admin:"] {
            assert!(!problems.contains(secret), "{secret} in {problems}");
        }
    }

    #[test]
    fn a_public_url_with_query_or_fragment_is_refused() {
        for url in [
            "https://bb2tc.example.com/?x=1",
            "https://bb2tc.example.com/#top",
        ] {
            let problems = problems_of(&format!("[server]\npublic_url = \"{url}\"\n{MINIMAL}"));
            assert!(
                problems.contains("must not have a query or fragment"),
                "{problems}"
            );
        }
    }

    #[test]
    fn numbers_the_runtime_cannot_hold_are_refused_naming_the_key() {
        let huge = "9223372036854775807";
        let text = format!(
            "[server]\nmax_connections = {huge}\nread_timeout_secs = {huge}\nmax_body_bytes = {huge}\nshutdown_grace_secs = {huge}\n[web]\nsession_ttl_secs = {huge}\n{MINIMAL}[[teamcity]]\nid = \"main\"\nurl = \"https://tc.example.com\"\nmax_in_flight = {huge}\ntimeout_secs = {huge}\nburst = 4294967295\nrate_per_second = 1e300\n"
        );
        let problems = problems_of(&text);
        for key in [
            "server.max_connections",
            "server.read_timeout_secs",
            "server.max_body_bytes",
            "server.shutdown_grace_secs",
            "web.session_ttl_secs",
            "teamcity[0] (id \"main\").max_in_flight",
            "teamcity[0] (id \"main\").timeout_secs",
            "teamcity[0] (id \"main\").burst",
            "teamcity[0] (id \"main\").rate_per_second",
        ] {
            assert!(problems.contains(&format!("{key}: ")), "{key}: {problems}");
        }
    }

    #[test]
    fn a_variable_nested_in_a_default_is_a_config_error() {
        let text = MINIMAL.replace("[\"s\"]", "[\"${SECRET:-${OTHER}}\"]");
        let problems = problems_of(&text);
        assert!(
            problems.contains("bitbucket[0].secrets[0]") && problems.contains("not supported"),
            "{problems}"
        );
    }

    #[test]
    fn token_page_settings_are_checked() {
        let text = r#"
            [web]
            session_ttl_secs = 0
            sign_in_attempts_per_minute = 0

            [[bitbucket]]
            id = "dc"
            kind = "datacenter"
            secrets = ["s"]
            oauth_client_id = "id"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, &no_env) else {
            panic!("invalid config accepted");
        };
        let text = problems.join("\n");
        for key in [
            "web.session_ttl_secs",
            "web.sign_in_attempts_per_minute",
            "bitbucket[0] (id \"dc\").oauth_client_secret",
            "bitbucket[0] (id \"dc\").url",
        ] {
            assert!(text.contains(key), "{key} not named in:\n{text}");
        }
    }

    #[test]
    fn token_page_defaults() {
        let config = Config::from_toml_str(GOOD, &no_env).unwrap();
        assert!(config.web.cookie_secure);
        assert_eq!(config.web.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.web.sign_in_attempts_per_minute.get(), 10);
        let cloud = Config::from_toml_str(
            "[[bitbucket]]\nid = \"c\"\nkind = \"cloud\"\nsecrets = [\"s\"]\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            cloud.sources[0].url.as_ref().map(|u| u.as_str()),
            Some("https://api.bitbucket.org/")
        );
    }

    const GOOD: &str = r#"
        [[bitbucket]]
        id = "dc"
        kind = "datacenter"
        secrets = ["${SECRET:-s3cret}"]

        [[teamcity]]
        id = "main"
        url = "https://TeamCity.example.com/"

        [[route]]
        repository = "PROJ/*"
        teamcity = "main"
        build_types = ["Proj_Build"]
    "#;

    #[test]
    fn defaults_and_single_source_route() {
        let config = Config::from_toml_str(GOOD, &no_env).unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.http.public_url, "http://127.0.0.1:8080");
        assert_eq!(config.storage.path, PathBuf::from("data"));
        assert!(config.admin_token.is_none());
        assert_eq!(config.sources[0].secrets[0].expose(), "s3cret");
        let server = &config.servers[0];
        assert_eq!(server.base_url(), "https://teamcity.example.com");
        assert_eq!(
            server.endpoint("app/rest/buildQueue"),
            "https://teamcity.example.com/app/rest/buildQueue"
        );
        assert_eq!(server.burst, 10);
        assert_eq!(server.retry_schedule.len(), 8);
        assert_eq!(config.routes[0].source.as_str(), "dc");
        assert!(config.routes[0].branches.matches("any/branch"));
        assert!(
            config
                .server_by_id_or_url("HTTPS://teamcity.EXAMPLE.com")
                .is_some()
        );
        assert!(
            config
                .server_by_id_or_url("https://other.example.com")
                .is_none()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = format!("{GOOD}\n[storage]\npaht = \"x\"\n");
        let err = Config::from_toml_str(&text, &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage") && err.contains("paht"), "{err}");
    }

    #[test]
    fn unset_variable_names_the_key() {
        let text = GOOD.replace("${SECRET:-s3cret}", "${SECRET}");
        let err = Config::from_toml_str(&text, &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bitbucket[0].secrets[0]") && err.contains("SECRET"),
            "{err}"
        );
        let env = |name: &str| (name == "SECRET").then(|| "from-env".to_string());
        let config = Config::from_toml_str(&text, &env).unwrap();
        assert_eq!(config.sources[0].secrets[0].expose(), "from-env");
    }

    #[test]
    fn validation_errors_name_table_and_key() {
        let text = r#"
            [[bitbucket]]
            id = "dc"
            kind = "gitlab"
            [[teamcity]]
            id = "main"
            url = "ftp://x"
            rate_per_second = 0.0
            burst = 0
            [[teamcity]]
            id = "main"
            url = "http://y"
            [[route]]
            source = "nope"
            repository = "[bad"
            teamcity = "other"
            build_types = []
        "#;
        let err = Config::from_toml_str(text, &no_env)
            .unwrap_err()
            .to_string();
        for expected in [
            "bitbucket[0] (id \"dc\").kind",
            "bitbucket[0] (id \"dc\").secrets",
            "teamcity[0] (id \"main\").url",
            "teamcity[0] (id \"main\").rate_per_second",
            "teamcity[0] (id \"main\").burst",
            "teamcity.id: \"main\" is used twice",
            "route[0].source",
            "route[0].teamcity",
            "route[0].build_types",
            "route[0].repository",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn wrong_types_name_the_path() {
        let text = GOOD.replace("id = \"main\"", "id = \"main\"\nburst = \"ten\"");
        let err = Config::from_toml_str(&text, &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("teamcity[0].burst"), "{err}");
    }
}
