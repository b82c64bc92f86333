//! From a parsed push to the jobs it asks for (SPEC §5.2, §5.3): for every ref change, every
//! matching route, the pusher's token for the route's server, one job per build type.

use crate::bitbucket::{Push, RefChange, RefKind};
use crate::clock;
use crate::config::{BranchNaming, Config, EventKind, Route, Source, TeamCityServer, TriggerMode};
use crate::ids::{ServerId, Sha};
use crate::store::jobs::ChangeJobs;
use crate::store::{Job, JobState, Skipped, Store, StoreError, TokenInfo, TokenRef, TokenStatus};
use std::collections::HashMap;

/// The jobs of a delivery, per change, and the changes (or route/change pairs) left out.
#[derive(Debug, Default)]
pub struct Plan {
    /// Changes with at least one job.
    pub changes: Vec<ChangeJobs>,
    /// What was deliberately not turned into a job, and why.
    pub skipped: Vec<Skipped>,
    /// Set (to how many it would make) when the delivery asks for more jobs than
    /// `server.max_jobs_per_delivery`: then `changes` is empty.
    pub too_many_jobs: Option<usize>,
}

/// Works out the jobs for `push` from `source`, delivered as `delivery`.
pub async fn plan(
    config: &Config,
    store: &Store,
    source: &Source,
    push: &Push,
    delivery: &str,
) -> Result<Plan, StoreError> {
    let ctx = Context {
        source,
        push,
        delivery,
        now: clock::now_ms(),
    };
    let mut plan = Plan::default();
    // The pusher's token per server, looked up once per delivery, not once per change.
    let mut tokens: HashMap<ServerId, Option<TokenInfo>> = HashMap::new();
    if push.ref_limit_exceeded {
        plan.skipped.push(Skipped {
            reference: "*".into(),
            reason: "Bitbucket did not list the changes (mirror ref limit exceeded)".into(),
        });
    }
    let mut planned = 0;
    for change in &push.changes {
        let skip = |reason: String| Skipped {
            reference: change.full_ref.clone(),
            reason,
        };
        let Some(sha) = &change.target else {
            plan.skipped.push(skip("deleted".into()));
            continue;
        };
        if change.kind == RefKind::Other {
            plan.skipped.push(skip("not a branch or tag".into()));
            continue;
        }
        if change.logical_name().is_empty() {
            // `refs/heads/` alone: TeamCity would get `branchName: ""` (its default branch).
            plan.skipped.push(skip("empty branch or tag name".into()));
            continue;
        }
        let routes: Vec<&Route> = config
            .routes
            .iter()
            .filter(|r| r.matches(&source.id, EventKind::Push, &push.repository, change))
            .collect();
        if routes.is_empty() {
            let what = match change.kind {
                RefKind::Tag => "tag",
                _ => "branch",
            };
            plan.skipped.push(skip(format!(
                "no route for {} {what} {}",
                push.repository,
                change.logical_name()
            )));
            continue;
        }
        let mut jobs = Vec::new();
        for route in routes {
            let Some(server) = config.server(&route.teamcity) else {
                continue;
            };
            match token_for(&mut tokens, store, source, push, server, route).await? {
                Ok(token) => jobs.extend(route_jobs(&ctx, route, server, change, sha, &token)),
                Err(reason) => plan.skipped.push(skip(reason)),
            }
        }
        planned += jobs.len();
        if planned > config.http.max_jobs_per_delivery {
            // Over the limit: count on, but keep no more jobs (memory stays bounded).
            plan.changes.clear();
            continue;
        }
        if !jobs.is_empty() {
            plan.changes.push(ChangeJobs {
                reference: change.full_ref.clone(),
                seen_key: format!(
                    "{}\0{}\0{}\0{}",
                    source.id,
                    push.repository.to_lowercase(),
                    change.full_ref,
                    sha.as_str()
                )
                .into_bytes(),
                jobs,
            });
        }
    }
    if planned > config.http.max_jobs_per_delivery {
        plan.too_many_jobs = Some(planned);
        plan.skipped.push(Skipped {
            reference: "*".into(),
            reason: format!(
                "this delivery would make {planned} jobs, more than server.max_jobs_per_delivery = {}; nothing was queued",
                config.http.max_jobs_per_delivery
            ),
        });
    }
    Ok(plan)
}

/// The token a route's jobs use, or why there is none.
async fn token_for(
    tokens: &mut HashMap<ServerId, Option<TokenInfo>>,
    store: &Store,
    source: &Source,
    push: &Push,
    server: &TeamCityServer,
    route: &Route,
) -> Result<Result<TokenRef, String>, StoreError> {
    let found = match tokens.get(&server.id) {
        Some(found) => found.clone(),
        None => {
            let found = match &push.actor {
                Some(actor) => {
                    store
                        .find_token(source.id.clone(), actor.keys.clone(), server.id.clone())
                        .await?
                }
                None => None,
            };
            tokens.insert(server.id.clone(), found.clone());
            found
        }
    };
    let service_allowed = server.service_token.is_some()
        && (route.mode == TriggerMode::CheckForChanges || server.fallback_to_service_token);
    let user = push
        .actor
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or("(unknown pusher)");
    Ok(match found {
        Some(token) if token.status != TokenStatus::Invalid => Ok(TokenRef::User(token.id)),
        _ if service_allowed => Ok(TokenRef::Service),
        Some(_) => Err(format!(
            "the token of {user} on {} was rejected by TeamCity; register a new one",
            server.id
        )),
        None => Err(format!("no token for {user} on {}", server.id)),
    })
}

/// The delivery a plan is made for.
struct Context<'a> {
    source: &'a Source,
    push: &'a Push,
    delivery: &'a str,
    now: u64,
}

fn route_jobs(
    ctx: &Context<'_>,
    route: &Route,
    server: &TeamCityServer,
    change: &RefChange,
    sha: &Sha,
    token: &TokenRef,
) -> Vec<Job> {
    let Context {
        source,
        push,
        delivery,
        now,
    } = *ctx;
    let branch = match route.branch_name {
        BranchNaming::Logical => change.logical_name().to_owned(),
        BranchNaming::Full => change.full_ref.clone(),
    };
    let template = Job {
        id: 0,
        state: JobState::Pending,
        source: source.id.clone(),
        delivery: delivery.to_owned(),
        server: server.id.clone(),
        mode: route.mode,
        build_type: None,
        repository: push.repository.clone(),
        full_ref: change.full_ref.clone(),
        branch,
        sha: sha.clone(),
        user: push
            .actor
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| "unknown".into()),
        token: token.clone(),
        properties: route.properties.iter().cloned().collect(),
        vcs_root_id: route.vcs_root_id.clone(),
        clone_urls: Vec::new(),
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
        last_error: None,
        interrupted: false,
        build_id: None,
        web_url: None,
        warning: None,
        finished_at: None,
    };
    match route.mode {
        TriggerMode::Build => route
            .build_types
            .iter()
            .map(|build_type| Job {
                build_type: Some(build_type.clone()),
                ..template.clone()
            })
            .collect(),
        TriggerMode::CheckForChanges => vec![Job {
            clone_urls: push.clone_urls.clone(),
            ..template
        }],
    }
}
