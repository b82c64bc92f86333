//! Everything about Bitbucket's webhooks: the signature, the event keys, and parsing Data
//! Center and Cloud payloads into one normalised [`Push`].

mod cloud;
mod datacenter;
pub mod identity;
mod push;
pub mod signature;

pub use push::{Actor, Push, RefChange, RefKind};

use crate::config::SourceKind;

/// What an `X-Event-Key` asks bb2tc to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `diagnostics:ping`, Bitbucket's "Test connection" (unsigned).
    Ping,
    /// A push: Data Center `repo:refs_changed` / `mirror:repo_synchronized`, Cloud `repo:push`.
    Push,
    /// Pull request opened or updated; not acted on yet.
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
        (SourceKind::DataCenter, "pr:opened" | "pr:from_ref_updated") => EventClass::PullRequest,
        (SourceKind::Cloud, "repo:push") => EventClass::Push,
        (SourceKind::Cloud, "pullrequest:created" | "pullrequest:updated") => {
            EventClass::PullRequest
        }
        _ => EventClass::Other,
    }
}

/// Why a payload could not be used; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape (serde names the field and position).
    #[error("payload is not a valid push: {0}")]
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

#[cfg(test)]
mod tests;
