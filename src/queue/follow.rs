//! One poll of a followed build (SPEC §6.1), in a task of its own: ask TeamCity, keep what
//! it said, count a build that finished, and schedule the next poll.
//!
//! The poll uses the pusher's token — the one that queued the build — and, when there is
//! none any more or TeamCity refuses it (401, which marks that token invalid as a trigger's
//! 401 does), the server's `service_token` if one is configured; a 401 on the service token
//! marks nothing. The worker gave this poll a slot and a call of the server's bucket.

use super::dispatch::resolve_token;
use super::trigger::Trigger;
use super::worker::{Scheduled, follow_at};
use crate::job::follow::Seen;
use crate::job::{Job, TokenRef};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::teamcity::TeamCityError;
use std::sync::Arc;
use tokio::sync::mpsc;

pub(super) struct Poll<T: Trigger> {
    pub store: Arc<Store>,
    pub teamcity: T,
    pub metrics: Arc<Metrics>,
    pub outbox: mpsc::UnboundedSender<Scheduled>,
}

impl<T: Trigger> Poll<T> {
    pub async fn run(self, id: u64) {
        let job = match self.store.job(id).await {
            Ok(Some(job)) if crate::job::follow::is_followed(&job) => job,
            Ok(_) => return, // removed, or no longer followed
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot read a followed job; asking later");
                follow_at(
                    &self.outbox,
                    id,
                    crate::clock::now_ms() + crate::job::follow::SLOW_MS,
                );
                return;
            }
        };
        let seen = self.ask(&job).await;
        let before = job.build.as_ref().and_then(|b| b.result());
        match self
            .store
            .observe_build(id, seen, crate::clock::now_ms())
            .await
        {
            Ok(Ok(kept)) => {
                let progress = kept.build.as_ref();
                if let (None, Some(result)) = (before, progress.and_then(|b| b.result())) {
                    self.metrics.build_finished(kept.server.as_str(), result);
                    tracing::info!(
                        job = id, server = %kept.server, build_id = kept.build_id, result,
                        status_text = progress.and_then(|b| b.status_text.as_deref()),
                        "build finished"
                    );
                }
                if let Some(at) = progress.and_then(|b| b.next_poll_at) {
                    follow_at(&self.outbox, id, at);
                }
            }
            Ok(Err(_)) => {} // removed or changed meanwhile
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot keep what TeamCity said of a build; asking later");
                follow_at(
                    &self.outbox,
                    id,
                    crate::clock::now_ms() + crate::job::follow::SLOW_MS,
                );
            }
        }
    }

    /// Asks TeamCity about the job's build, with the pusher's token, then the service token.
    async fn ask(&self, job: &Job) -> Seen {
        let Some(build_id) = job.build_id else {
            return Seen::Gone("TeamCity gave the build no id".into());
        };
        let service = self.teamcity.server().service_token.clone();
        let users = match &job.token {
            TokenRef::User(_) => resolve_token(&self.store, &self.teamcity, job).await.ok(),
            TokenRef::Service => None,
        };
        if let Some((token, revision)) = &users {
            match self.teamcity.follow_build(token, build_id).await {
                Err(TeamCityError::Unauthorized(text)) => {
                    if let (TokenRef::User(id), Some(revision)) = (&job.token, revision)
                        && let Err(e) = self.store.mark_token(id.clone(), *revision, false).await
                    {
                        tracing::warn!(error = %e, "could not update the token's status");
                    }
                    if service.is_none() {
                        // Asking again with a refused token only earns more 401s.
                        return Seen::Gone(format!(
                            "TeamCity rejected the token that queued it (401: {text}), and {} has no service_token",
                            job.server
                        ));
                    }
                }
                answer => return seen(answer),
            }
        }
        match service {
            Some(token) => seen(self.teamcity.follow_build(&token, build_id).await),
            None => Seen::Gone(format!(
                "no token to follow it with (the token of {} is gone and {} has no service_token)",
                job.user, job.server
            )),
        }
    }
}

fn seen(answer: Result<crate::job::follow::Observation, TeamCityError>) -> Seen {
    match answer {
        Ok(observation) => Seen::Build(observation),
        Err(TeamCityError::Rejected { status: 404, text }) => {
            Seen::Gone(format!("TeamCity no longer has the build (404): {text}"))
        }
        Err(e) => Seen::NotNow(e.to_string()),
    }
}
