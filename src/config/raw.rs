//! The config file as written (SPEC §3): serde types with the documented defaults.
//! Unknown keys are rejected by `deny_unknown_fields`; [`super::Config`] validates the values.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub web: RawWeb,
    #[serde(default)]
    pub bitbucket: Vec<RawSource>,
    #[serde(default)]
    pub teamcity: Vec<RawTeamCity>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub listen: String,
    pub max_body_bytes: u64,
    pub read_timeout_secs: u64,
    pub max_connections: usize,
    pub shutdown_grace_secs: u64,
    pub public_url: String,
    pub max_jobs_per_delivery: u64,
    pub body_budget_bytes: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1_048_576,
            read_timeout_secs: 10,
            max_connections: 1024,
            shutdown_grace_secs: 10,
            public_url: String::new(),
            max_jobs_per_delivery: 1000,
            body_budget_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWeb {
    pub cookie_secure: bool,
    pub session_ttl_secs: u64,
    pub sign_in_attempts_per_minute: u32,
}

impl Default for RawWeb {
    fn default() -> Self {
        Self {
            cookie_secure: true,
            session_ttl_secs: 12 * 3600,
            sign_in_attempts_per_minute: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    pub backend: String,
    pub path: String,
    pub url: String,
    pub max_connections: u64,
    pub master_key: String,
    pub intake_segment_bytes: u64,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: "sled".into(),
            path: "data".into(),
            url: String::new(),
            max_connections: 16,
            master_key: String::new(),
            intake_segment_bytes: super::DEFAULT_INTAKE_SEGMENT_BYTES,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub oauth_client_id: String,
    #[serde(default)]
    pub oauth_client_secret: String,
    #[serde(default)]
    pub status_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeamCity {
    pub id: String,
    pub url: String,
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule_secs: Vec<f64>,
    #[serde(default)]
    pub ca_file: String,
    #[serde(default)]
    pub service_token: String,
    #[serde(default)]
    pub fallback_to_service_token: bool,
}

fn default_rate() -> f64 {
    5.0
}
fn default_burst() -> u32 {
    10
}
fn default_max_in_flight() -> usize {
    4
}
fn default_timeout() -> u64 {
    10
}
fn default_retry_schedule() -> Vec<f64> {
    vec![1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 10800.0]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default)]
    pub source: Option<String>,
    pub repository: String,
    pub teamcity: String,
    pub build_types: Vec<String>,
    #[serde(default = "match_all")]
    pub branches: Vec<String>,
    #[serde(default)]
    pub exclude_branches: Vec<String>,
    #[serde(default)]
    pub tags: bool,
    #[serde(default = "match_all")]
    pub tag_patterns: Vec<String>,
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_branch_name")]
    pub branch_name: String,
    #[serde(default)]
    pub vcs_root_id: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default = "match_all")]
    pub target_branches: Vec<String>,
    #[serde(default)]
    pub draft_pull_requests: bool,
    #[serde(default)]
    pub fork_pull_requests: bool,
    #[serde(default)]
    pub pr_properties: bool,
    #[serde(default)]
    pub cancel_superseded: bool,
    #[serde(default = "default_report_status")]
    pub report_status: String,
}

fn match_all() -> Vec<String> {
    vec!["*".into()]
}
fn default_events() -> Vec<String> {
    vec!["push".into()]
}
fn default_report_status() -> String {
    "off".into()
}
fn default_mode() -> String {
    "build".into()
}
fn default_branch_name() -> String {
    "logical".into()
}
