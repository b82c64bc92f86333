//! Running builds from the token page (SPEC §6.3): **Run again** on one of the user's recent
//! triggers, and **Run a build** for a repository, a branch and a commit, matched against
//! the routes like a push. Both queue with the signed-in user's own token — the user comes
//! from the session, never from the form — are POSTs with the session's CSRF value, and are
//! limited per user. Someone else's job is answered as an unknown one; the administrator
//! has no TeamCity token of their own and runs nothing.

use super::error::PageError;
use super::forms::Form;
use super::{require_session, respond};
use crate::app::App;
use crate::bitbucket::{Actor, Push, RefChange};
use crate::clock;
use crate::config::Source;
use crate::http::response::Body;
use crate::ids::{Sha, UserKey};
use crate::ingest;
use crate::job::{Job, JobState, TokenRef};
use crate::store::{ChangeJobs, DeliveryRecord, Principal, Session};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// The signed-in user, their source, and the check of the per-user limit.
fn runner<'a>(app: &'a App, session: &'a Session) -> Result<(&'a Source, Actor), PageError> {
    let (source, user) = super::user_within_limit(
        session,
        &app.web.run_limiter,
        PageError::TooManyRuns,
        "The administrator has no TeamCity token to run builds with; users run their own.",
    )?;
    let (aliases, display_name) = match &session.principal {
        Principal::User {
            aliases,
            display_name,
            ..
        } => (aliases.as_slice(), display_name.as_str()),
        Principal::Admin { .. } => (&[][..], ""),
    };
    let source = app.config.source(source.as_str()).ok_or_else(|| {
        PageError::Forbidden("Your Bitbucket source is no longer configured; sign in again.".into())
    })?;
    let mut keys = vec![user.clone()];
    keys.extend(aliases.iter().cloned());
    // As pushes name their pusher: the display name, else the user key.
    let name = if display_name.trim().is_empty() {
        user.to_string()
    } else {
        display_name.to_owned()
    };
    Ok((source, Actor { keys, name }))
}

/// `POST /builds/{id}/again`: the same build — server, build type, branch, commit — queued
/// once more with the user's current token for that server.
pub async fn run_again(
    app: &App,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, PageError> {
    let (_, session) = require_session(app, request.headers()).await?;
    let (_, form) = Form::read(request, app.config.http.read_timeout).await?;
    form.check_csrf(&session.csrf)?;
    let (source, actor) = runner(app, &session)?;
    let unknown = || PageError::NotFound("There is no such build of yours.".into());
    let id: u64 = id.parse().map_err(|_| unknown())?;
    let job = app.store.job(id).await?.ok_or_else(unknown)?;
    if !owns_job(app, &session, &job).await? {
        return Err(unknown());
    }
    let Some(token) = app
        .store
        .find_token(source.id.clone(), actor.keys.clone(), job.server.clone())
        .await?
    else {
        return Err(PageError::BadRequest(format!(
            "You have no TeamCity token for {} any more: add one above, then run it again.",
            job.server
        )));
    };
    let now = clock::now_ms();
    let delivery = page_delivery_id();
    let again = Job {
        id: 0,
        state: JobState::Pending,
        delivery: delivery.clone(),
        token: TokenRef::User(token.id),
        user: actor.name.clone(),
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
        last_error: None,
        interrupted: false,
        build_id: None,
        web_url: None,
        warning: None,
        finished_at: None,
        supersedes: Vec::new(),
        build: None,
        status: None,
        ..job
    };
    let reference = again.full_ref.clone();
    queue(
        app,
        source,
        &delivery,
        "page:run-again",
        vec![ChangeJobs {
            reference,
            legacy_mark: None,
            jobs: vec![again],
            // Asked for again on purpose: not "already seen".
            deduplicate: false,
        }],
    )
    .await?;
    Ok(respond::redirect("/?notice=queued"))
}

/// `POST /builds`: a repository, a branch and a commit, planned like a push of that commit
/// by the user.
pub async fn run(app: &App, request: Request<Incoming>) -> Result<Response<Body>, PageError> {
    let (_, session) = require_session(app, request.headers()).await?;
    let (_, form) = Form::read(request, app.config.http.read_timeout).await?;
    form.check_csrf(&session.csrf)?;
    let (source, actor) = runner(app, &session)?;
    let repository = form.require("repository")?.trim();
    if repository.split('/').count() != 2 || repository.split('/').any(str::is_empty) {
        return Err(PageError::BadRequest(
            "The repository is PROJECT/repo (Data Center) or workspace/repo (Cloud).".into(),
        ));
    }
    let branch = form
        .require("branch")?
        .trim()
        .trim_start_matches("refs/heads/");
    if branch.is_empty() || branch.chars().any(|c| c.is_control() || c == ' ') {
        return Err(PageError::BadRequest("That is not a branch name.".into()));
    }
    let commit = form.get("commit").unwrap_or("").trim();
    let sha = if commit.is_empty() {
        // The branch's head, as Bitbucket has it now.
        let token = source.status_token.as_ref().ok_or_else(|| {
            PageError::BadRequest(
                "Give the commit to build (its 40 hex digits): bb2tc has no status_token for \
                 this Bitbucket to look the branch's head up with."
                    .into(),
            )
        })?;
        app.branch_heads
            .head(source, token, repository, branch)
            .await
            .map_err(|why| {
                PageError::BadRequest(format!("Cannot find the branch's head: {why}."))
            })?
    } else {
        Sha::parse(commit).ok_or_else(|| {
            PageError::BadRequest(
                "A commit is its 40 hex digits; leave it empty for the branch's head.".into(),
            )
        })?
    };
    let push = Push {
        repository: repository.to_owned(),
        actor: Some(actor),
        changes: vec![RefChange::from_full_ref(
            format!("refs/heads/{branch}"),
            Some(sha),
        )],
        clone_urls: Vec::new(),
        ref_limit_exceeded: false,
    };
    let delivery = page_delivery_id();
    let plan = ingest::plan(&app.config, &app.store, source, &push, &delivery).await?;
    if plan.changes.is_empty() {
        let why: Vec<String> = plan.skipped.iter().map(|s| s.reason.clone()).collect();
        return Err(PageError::BadRequest(format!(
            "No build to run: {}.",
            if why.is_empty() {
                "no route takes this repository and branch".to_owned()
            } else {
                why.join("; ")
            }
        )));
    }
    let changes = plan
        .changes
        .into_iter()
        .map(|c| ChangeJobs {
            deduplicate: false,
            ..c
        })
        .collect();
    queue(app, source, &delivery, "page:run", changes).await?;
    Ok(respond::redirect("/?notice=queued"))
}

/// Whether `job` was sent with one of the session user's tokens.
async fn owns_job(app: &App, session: &Session, job: &Job) -> Result<bool, PageError> {
    let TokenRef::User(token) = &job.token else {
        return Ok(false);
    };
    Ok(app.store.token(token.clone()).await?.is_some_and(|t| {
        session
            .principal
            .owns(&t.source, UserKey::parse(&t.user).as_ref())
    }))
}

fn page_delivery_id() -> String {
    format!("page-{:016x}", rand::random::<u64>())
}

/// Stores the jobs durably, as delivery `delivery` of `event` from the page (the id their
/// jobs name).
async fn queue(
    app: &App,
    source: &Source,
    delivery: &str,
    event: &str,
    changes: Vec<ChangeJobs>,
) -> Result<(), PageError> {
    let record = DeliveryRecord {
        id: delivery.to_owned(),
        source: source.id.clone(),
        event: event.into(),
        result: "accepted".into(),
        jobs: 0,
        skipped: Vec::new(),
        received_at: clock::now_ms(),
        user: None,
        repository: None,
    };
    let (_, durable) = app.store.record_push(record, false, changes).await?;
    durable?;
    Ok(())
}
