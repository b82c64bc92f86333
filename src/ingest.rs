//! From a parsed push or pull request to the jobs it asks for (SPEC §5.2–5.4): for every
//! ref change, every matching route, the pusher's token for the route's server, one job per
//! build type. A pull request is its source branch at its head commit — the same jobs a
//! push of that commit makes, so that the store's de-duplication makes one build of both.

use crate::bitbucket::{Actor, PullRequest, PullRequestAction, Push, RefChange, RefKind};
use crate::clock;
use crate::config::{BranchNaming, Config, EventKind, Route, Source, TeamCityServer, TriggerMode};
use crate::ids::{ServerId, Sha};
use crate::job::Purpose;
use crate::store::jobs::ChangeJobs;
use crate::store::{Job, JobState, Skipped, Store, StoreError, TokenChoice, TokenRef, TokenStatus};
use std::collections::{BTreeMap, HashMap};

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
        delivery,
        now: clock::now_ms(),
        repository: &push.repository,
        actor: push.actor.as_ref(),
        clone_urls: &push.clone_urls,
        pull_request: None,
    };
    let mut plan = Plan::default();
    // The pusher's token per server, looked up once per delivery, not once per change.
    let mut tokens: HashMap<ServerId, Option<TokenChoice>> = HashMap::new();
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
            match token_for(&mut tokens, store, &ctx, server, route).await? {
                Ok(token) => jobs.extend(route_jobs(&ctx, route, server, change, sha, &token)),
                Err(reason) => {
                    jobs.extend(no_token_statuses(&ctx, route, server, change, sha, &reason));
                    plan.skipped.push(skip(reason));
                }
            }
        }
        planned += jobs.len();
        if planned > config.http.max_jobs_per_delivery {
            // Over the limit: count on, but keep no more jobs (memory stays bounded).
            plan.changes.clear();
            continue;
        }
        if !jobs.is_empty() {
            plan.changes.push(change_jobs(&ctx, change, sha, jobs));
        }
    }
    limit_jobs(config, &mut plan, planned);
    Ok(plan)
}

/// The jobs of one change, with the mark bb2tc up to 551746f kept for it.
fn change_jobs(ctx: &Context<'_>, change: &RefChange, sha: &Sha, jobs: Vec<Job>) -> ChangeJobs {
    ChangeJobs {
        reference: change.full_ref.clone(),
        legacy_mark: sha.is_full().then(|| {
            format!(
                "{}\0{}\0{}\0{}",
                ctx.source.id,
                ctx.repository.to_lowercase(),
                change.full_ref,
                sha.as_str()
            )
            .into_bytes()
        }),
        jobs,
        deduplicate: true,
    }
}

/// Over `server.max_jobs_per_delivery`: nothing is queued, and the answer says why.
fn limit_jobs(config: &Config, plan: &mut Plan, planned: usize) {
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
}

/// Works out the jobs for pull-request event `pr` from `source`, delivered as `delivery`
/// (SPEC §5.4): the source branch at the head commit, for every route that takes pull
/// requests and lets this one through its filters.
pub async fn plan_pull_request(
    config: &Config,
    store: &Store,
    source: &Source,
    pr: &PullRequest,
    delivery: &str,
) -> Result<Plan, StoreError> {
    let ctx = Context {
        source,
        delivery,
        now: clock::now_ms(),
        repository: &pr.repository,
        actor: pr.actor.as_ref(),
        clone_urls: &pr.clone_urls,
        pull_request: Some(pr),
    };
    let change = &pr.source;
    let mut plan = Plan::default();
    let skip = |reason: String| Skipped {
        reference: change.full_ref.clone(),
        reason,
    };
    if let PullRequestAction::Nothing(reason) = &pr.action {
        plan.skipped
            .push(skip(format!("pull request #{}: {reason}", pr.id)));
        return Ok(plan);
    }
    let Some(sha) = &change.target else {
        plan.skipped.push(skip("no head commit".into()));
        return Ok(plan);
    };
    if change.kind != RefKind::Branch || change.logical_name().is_empty() {
        plan.skipped.push(skip(format!(
            "pull request #{}: its source {} is not a branch; TeamCity builds pull requests from their source branch",
            pr.id, change.full_ref
        )));
        return Ok(plan);
    }
    let routes: Vec<&Route> = config
        .routes
        .iter()
        .filter(|r| r.matches(&source.id, EventKind::PullRequest, &pr.repository, change))
        .collect();
    if routes.is_empty() {
        plan.skipped.push(skip(format!(
            "no route for pull requests of {} from branch {}",
            pr.repository,
            change.logical_name()
        )));
        return Ok(plan);
    }
    let mut tokens: HashMap<ServerId, Option<TokenChoice>> = HashMap::new();
    let mut jobs = Vec::new();
    for route in routes {
        let Some(server) = config.server(&route.teamcity) else {
            continue;
        };
        let name = format!("route[{}]", route.index);
        if !route.target_branches.matches(&pr.target_branch) {
            plan.skipped.push(skip(format!(
                "pull request #{} targets {}, which {name}'s target_branches does not match",
                pr.id, pr.target_branch
            )));
            continue;
        }
        if let PullRequestAction::Ended(how) = pr.action {
            if route.cancel_superseded {
                // The cancellation uses the token that queued each build; the actor's is
                // only a fallback, so one without a token still cancels.
                let token = token_for(&mut tokens, store, &ctx, server, route)
                    .await?
                    .unwrap_or(TokenRef::Service);
                jobs.extend(
                    route_jobs(&ctx, route, server, change, sha, &token)
                        .into_iter()
                        .map(|job| Job {
                            purpose: Purpose::CancelQueued,
                            ..job
                        }),
                );
            } else {
                plan.skipped.push(skip(format!(
                    "pull request #{} {how}: nothing to build ({name} does not cancel_superseded)",
                    pr.id
                )));
            }
            continue;
        }
        if pr.draft && !route.draft_pull_requests {
            plan.skipped.push(skip(format!(
                "pull request #{} is a draft ({name} builds drafts with draft_pull_requests = true)",
                pr.id
            )));
            continue;
        }
        if pr.is_fork() && !route.fork_pull_requests {
            plan.skipped.push(skip(format!(
                "pull request #{} comes from the fork {} ({name} builds forks with fork_pull_requests = true)",
                pr.id, pr.source_repository
            )));
            continue;
        }
        match token_for(&mut tokens, store, &ctx, server, route).await? {
            Ok(token) => jobs.extend(route_jobs(&ctx, route, server, change, sha, &token)),
            Err(reason) => {
                jobs.extend(no_token_statuses(&ctx, route, server, change, sha, &reason));
                plan.skipped.push(skip(reason));
            }
        }
    }
    let planned = jobs.len();
    if !jobs.is_empty() && planned <= config.http.max_jobs_per_delivery {
        let mut change_jobs = change_jobs(&ctx, change, sha, jobs);
        if matches!(pr.action, PullRequestAction::Ended(_)) {
            // Older releases' marks stand for builds; an end cancels, whatever was built.
            change_jobs.legacy_mark = None;
        }
        plan.changes.push(change_jobs);
    }
    limit_jobs(config, &mut plan, planned);
    Ok(plan)
}

/// The token a route's jobs use, or why there is none.
async fn token_for(
    tokens: &mut HashMap<ServerId, Option<TokenChoice>>,
    store: &Store,
    ctx: &Context<'_>,
    server: &TeamCityServer,
    route: &Route,
) -> Result<Result<TokenRef, String>, StoreError> {
    let found = match tokens.get(&server.id) {
        Some(found) => found.clone(),
        None => {
            let found = match ctx.actor {
                Some(actor) => {
                    store
                        .token_choice(ctx.source.id.clone(), actor.keys.clone(), server.id.clone())
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
    let user = ctx
        .actor
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
    delivery: &'a str,
    now: u64,
    /// `PROJECTKEY/repo` or `workspace/repo` (a pull request's target).
    repository: &'a str,
    /// Whose token is used.
    actor: Option<&'a Actor>,
    /// For check-for-changes mode.
    clone_urls: &'a [String],
    /// Set for a pull-request event.
    pull_request: Option<&'a PullRequest>,
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
        delivery,
        now,
        repository,
        actor,
        clone_urls,
        pull_request,
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
        repository: repository.to_owned(),
        full_ref: change.full_ref.clone(),
        branch,
        sha: sha.clone(),
        user: actor
            .map(|a| a.name.clone())
            .unwrap_or_else(|| "unknown".into()),
        token: token.clone(),
        properties: properties(route, pull_request),
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
        pull_request: pull_request.map(|pr| pr.id),
        cancel_superseded: route.cancel_superseded,
        supersedes: Vec::new(),
        purpose: Purpose::Build,
        build: None,
        // Only a source with a status token can be reported to.
        report_status: if source.status_token.is_some() {
            route.report_status
        } else {
            crate::config::ReportStatus::Off
        },
        status: None,
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
            clone_urls: clone_urls.to_vec(),
            ..template
        }],
    }
}

/// With `report_status`, the `FAILED` statuses that say why no build will run: one per
/// build type, as jobs of their own (SPEC §6.2).
fn no_token_statuses(
    ctx: &Context<'_>,
    route: &Route,
    server: &TeamCityServer,
    change: &RefChange,
    sha: &Sha,
    reason: &str,
) -> Vec<Job> {
    route_jobs(ctx, route, server, change, sha, &TokenRef::Service)
        .into_iter()
        .filter_map(|job| {
            crate::job::status::no_token(&job, reason)
                .map(|report| crate::job::status::status_job(&job, report))
        })
        .collect()
}

/// The route's build parameters, and with `pr_properties` the pull request's (SPEC §5.4).
fn properties(route: &Route, pull_request: Option<&PullRequest>) -> BTreeMap<String, String> {
    let mut properties: BTreeMap<String, String> = route.properties.iter().cloned().collect();
    if let (true, Some(pr)) = (route.pr_properties, pull_request) {
        for (name, value) in [
            ("bitbucket.pr.id", pr.id.to_string()),
            ("bitbucket.pr.title", pr.title.clone()),
            ("bitbucket.pr.url", pr.url.clone().unwrap_or_default()),
            (
                "bitbucket.pr.source.branch",
                pr.source.logical_name().to_owned(),
            ),
            ("bitbucket.pr.target.branch", pr.target_branch.clone()),
            ("bitbucket.pr.author", pr.author.clone()),
        ] {
            properties.insert(name.to_owned(), value);
        }
    }
    properties
}
