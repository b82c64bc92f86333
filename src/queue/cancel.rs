//! Cancelling superseded builds that TeamCity still holds in its queue (a route's
//! `cancel_superseded`, SPEC §3 and §5.4).
//!
//! For each build the job supersedes: `GET /app/rest/buildQueue/id:N` for its state, and
//! only while it is `queued`, `POST` the cancel request to the same path — the queue's
//! endpoint, which cannot stop a started build (TeamCity answers 404 for one that started
//! in between). Every call passes the server's rate limit. Each build is cancelled with the
//! token that queued it (TeamCity lets a user remove their own queued builds), else with the
//! job's own. A cancellation that fails is logged, counted and noted on the job; it is not
//! retried (the build then simply runs).

use super::rate_limit::RateLimit;
use super::trigger::Trigger;
use crate::ids::TeamCityToken;
use crate::job::{Job, Superseded, TokenRef};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::teamcity::TeamCityError;

/// What cancelling one build came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Cancelled,
    /// TeamCity had started (or finished) it: left alone.
    Started(String),
    Failed(String),
}

/// Cancels what `job` supersedes, with `comment` (TeamCity keeps it as the cancel reason);
/// `own_token` is the job's token, the fallback. Returns one note per build, for the job's
/// warning.
pub async fn cancel_superseded<T: Trigger>(
    store: &Store,
    teamcity: &T,
    metrics: &Metrics,
    pace: &RateLimit,
    job: &Job,
    own_token: Option<&TeamCityToken>,
    comment: &str,
) -> Vec<String> {
    let mut notes = Vec::new();
    for build in &job.supersedes {
        let outcome = match token_of(store, teamcity, build)
            .await
            .as_ref()
            .or(own_token)
        {
            Some(token) => cancel_one(teamcity, pace, token, build.build_id, comment).await,
            None => Outcome::Failed("no token to cancel it with".into()),
        };
        let (label, note) = match &outcome {
            Outcome::Cancelled => (
                "cancelled",
                format!("cancelled superseded build {}", build.build_id),
            ),
            Outcome::Started(state) => (
                "started",
                format!(
                    "superseded build {} was {state} already; left alone",
                    build.build_id
                ),
            ),
            Outcome::Failed(why) => (
                "failed",
                format!(
                    "could not cancel superseded build {}: {why}",
                    build.build_id
                ),
            ),
        };
        metrics.build_cancel(job.server.as_str(), label);
        tracing::info!(
            job = job.id, server = %job.server, build_id = build.build_id, of_job = build.job,
            outcome = label, note, "superseded build"
        );
        notes.push(note);
    }
    notes
}

async fn cancel_one<T: Trigger>(
    teamcity: &T,
    pace: &RateLimit,
    token: &TeamCityToken,
    build_id: u64,
    comment: &str,
) -> Outcome {
    pace.ready().await;
    match teamcity.build_state(token, build_id).await {
        Ok(state) if state == "queued" => {}
        Ok(state) => {
            return Outcome::Started(if state.is_empty() {
                "gone".into()
            } else {
                state
            });
        }
        Err(TeamCityError::Rejected { status: 404, .. }) => return Outcome::Started("gone".into()),
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    pace.ready().await;
    match teamcity.cancel_queued(token, build_id, comment).await {
        Ok(()) => Outcome::Cancelled,
        // It left the queue between the two calls.
        Err(TeamCityError::Rejected { status: 404, .. }) => Outcome::Started("started".into()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The token that queued `build`, if it is still there.
async fn token_of<T: Trigger>(
    store: &Store,
    teamcity: &T,
    build: &Superseded,
) -> Option<TeamCityToken> {
    match &build.token {
        TokenRef::User(id) => store
            .token_secret(id.clone())
            .await
            .ok()
            .flatten()
            .map(|(t, _)| t),
        TokenRef::Service => teamcity.server().service_token.clone(),
    }
}
