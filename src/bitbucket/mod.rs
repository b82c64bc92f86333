//! Everything about Bitbucket's webhooks: the signature, the event keys, and parsing Data
//! Center and Cloud payloads into one normalised [`Push`] or [`PullRequest`]; and the one
//! Cloud API call a pull request may need ([`cloud_api`]).

pub mod branch_head;
pub mod build_status;
mod cloud;
pub mod cloud_api;
mod cloud_pull_request;
mod datacenter;
mod datacenter_pull_request;
pub mod identity;
mod pull_request;
mod push;
pub mod signature;

pub use pull_request::{Action as PullRequestAction, PullRequest};
pub use push::{Actor, Push, RefChange, RefKind};

use crate::config::SourceKind;

/// What an `X-Event-Key` asks bb2tc to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `diagnostics:ping`, Bitbucket's "Test connection" (unsigned).
    Ping,
    /// A push: Data Center `repo:refs_changed` / `mirror:repo_synchronized`, Cloud `repo:push`.
    Push,
    /// A pull request opened, updated, made ready, or ended (SPEC §5.4).
    PullRequest,
    /// Anything else.
    Other,
}

/// Classifies an event key for a source kind.
pub fn classify(kind: SourceKind, event_key: &str) -> EventClass {
    match (kind, event_key) {
        (_, "diagnostics:ping") => EventClass::Ping,
        (SourceKind::DataCenter, "repo:refs_changed" | "mirror:repo_synchronized") => {
            EventClass::Push
        }
        (
            SourceKind::DataCenter,
            "pr:opened"
            | "pr:from_ref_updated"
            | "pr:modified"
            | "pr:merged"
            | "pr:declined"
            | "pr:deleted",
        ) => EventClass::PullRequest,
        (SourceKind::Cloud, "repo:push") => EventClass::Push,
        (
            SourceKind::Cloud,
            "pullrequest:created"
            | "pullrequest:updated"
            | "pullrequest:fulfilled"
            | "pullrequest:rejected",
        ) => EventClass::PullRequest,
        _ => EventClass::Other,
    }
}

/// Why a payload could not be used; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape (serde names the field and position).
    #[error("payload does not fit its event: {0}")]
    Json(String),
    /// A field the event needs is absent.
    #[error("payload lacks {0}")]
    Missing(&'static str),
    /// A field is present but unusable (e.g. a hash that is not 40 hex digits).
    #[error("payload has an invalid {0}")]
    Invalid(&'static str),
}

impl PayloadError {
    fn from_json(e: serde_json::Error) -> Self {
        PayloadError::Json(e.to_string())
    }
}

/// Parses a push body of a source of `kind`.
pub fn parse_push(kind: SourceKind, body: &[u8]) -> Result<Push, PayloadError> {
    match kind {
        SourceKind::DataCenter => datacenter::parse_push(body),
        SourceKind::Cloud => cloud::parse_push(body),
    }
}

/// `Bearer <token>` for an `Authorization` header, marked sensitive (so it never shows in a
/// request's debug output); `None` when the token cannot be a header value.
fn bearer(token: &crate::ids::Secret) -> Option<reqwest::header::HeaderValue> {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `base` with the REST path `segments` after it (each percent-encoded as a segment, a
/// trailing slash of `base` dropped); `None` for a URL that cannot have a path.
fn api_url(base: &reqwest::Url, segments: &[&str]) -> Option<reqwest::Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(segments);
    Some(url)
}

/// A client for Bitbucket's REST API: a timeout, no redirects (they would carry the
/// credential elsewhere), no cookies.
fn api_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bb2tc/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Parses a pull-request event of `event_key` (one [`classify`] calls a pull request).
pub fn parse_pull_request(
    kind: SourceKind,
    event_key: &str,
    body: &[u8],
) -> Result<PullRequest, PayloadError> {
    match kind {
        SourceKind::DataCenter => datacenter_pull_request::parse(event_key, body),
        SourceKind::Cloud => cloud_pull_request::parse(event_key, body),
    }
}

#[cfg(test)]
mod tests;
