//! The TeamCity calls a worker makes, as a trait: the real [`TeamCityClient`] in production,
//! a scripted in-memory server in the worker's paused-clock tests.

use crate::config::TeamCityServer;
use crate::ids::{BuildTypeId, TeamCityToken};
use crate::job::follow::Observation;
use crate::teamcity::{BuildRequest, FoundBuild, QueuedBuild, TeamCityClient, TeamCityError};
use std::future::Future;

/// What a worker needs from a TeamCity server.
pub trait Trigger: Clone + Send + Sync + 'static {
    /// The server's settings (rate limit, retry schedule, service token).
    fn server(&self) -> &TeamCityServer;

    /// `POST /app/rest/buildQueue`.
    fn queue_build(
        &self,
        token: &TeamCityToken,
        request: &BuildRequest<'_>,
    ) -> impl Future<Output = Result<QueuedBuild, TeamCityError>> + Send;

    /// Commit-hook notification; `Ok(false)` when no VCS root matched.
    fn notify_commit_hook(
        &self,
        token: &TeamCityToken,
        clone_urls: &[String],
    ) -> impl Future<Output = Result<bool, TeamCityError>> + Send;

    /// How a queued build is doing (SPEC §6.1).
    fn follow_build(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> impl Future<Output = Result<Observation, TeamCityError>> + Send;

    /// A queued build's state (`queued`, `running`, `finished`).
    fn build_state(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> impl Future<Output = Result<String, TeamCityError>> + Send;

    /// Removes a build still in the queue.
    fn cancel_queued(
        &self,
        token: &TeamCityToken,
        build_id: u64,
        comment: &str,
    ) -> impl Future<Output = Result<(), TeamCityError>> + Send;

    /// The latest builds of a build type on a branch, queued, running or finished.
    fn recent_builds(
        &self,
        token: &TeamCityToken,
        build_type: &BuildTypeId,
        branch: &str,
    ) -> impl Future<Output = Result<Vec<FoundBuild>, TeamCityError>> + Send;
}

impl Trigger for TeamCityClient {
    fn server(&self) -> &TeamCityServer {
        TeamCityClient::server(self)
    }

    fn queue_build(
        &self,
        token: &TeamCityToken,
        request: &BuildRequest<'_>,
    ) -> impl Future<Output = Result<QueuedBuild, TeamCityError>> + Send {
        TeamCityClient::queue_build(self, token, request)
    }

    fn notify_commit_hook(
        &self,
        token: &TeamCityToken,
        clone_urls: &[String],
    ) -> impl Future<Output = Result<bool, TeamCityError>> + Send {
        TeamCityClient::notify_commit_hook(self, token, clone_urls)
    }

    fn recent_builds(
        &self,
        token: &TeamCityToken,
        build_type: &BuildTypeId,
        branch: &str,
    ) -> impl Future<Output = Result<Vec<FoundBuild>, TeamCityError>> + Send {
        TeamCityClient::recent_builds(self, token, build_type, branch)
    }

    fn build_state(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> impl Future<Output = Result<String, TeamCityError>> + Send {
        TeamCityClient::build_state(self, token, build_id)
    }

    fn follow_build(
        &self,
        token: &TeamCityToken,
        build_id: u64,
    ) -> impl Future<Output = Result<Observation, TeamCityError>> + Send {
        TeamCityClient::follow_build(self, token, build_id)
    }

    fn cancel_queued(
        &self,
        token: &TeamCityToken,
        build_id: u64,
        comment: &str,
    ) -> impl Future<Output = Result<(), TeamCityError>> + Send {
        TeamCityClient::cancel_queued(self, token, build_id, comment)
    }
}
