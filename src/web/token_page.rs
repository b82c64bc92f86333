//! The token page itself: a signed-in user's tokens (or, for the admin, everyone's), adding
//! a token after TeamCity accepted it, and deleting one.
//!
//! A user only ever sees and changes tokens of their own (source, user key): the user comes
//! from the session, never from the form or the URL, and someone else's token id is
//! answered exactly like an unknown one.

use super::error::PageError;
use super::forms::Form;
use super::html::{self, Banner, TokensView};
use super::{require_session, respond};
use crate::app::App;
use crate::http::response::Body;
use crate::ids::{ServerId, TeamCityToken, UserKey};
use crate::store::{Principal, Session, TokenFilter, TokenInfo};
use crate::teamcity::TeamCityError;
use crate::token_registration::{self, RegistrationError};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

/// Longest token accepted (TeamCity's are a few hundred characters).
const MAX_TOKEN_CHARS: usize = 4096;

/// `GET /`: the token list.
pub async fn show(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, PageError> {
    let (_, session) = require_session(app, request.headers()).await?;
    let mut notice = None;
    let mut user_filter = None;
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            // Fixed texts only: nothing from the URL is echoed as a message.
            "notice" => notice = notice_text(&value),
            "user" if !value.trim().is_empty() => user_filter = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let banner = notice.map(|text| Banner::Notice(text.into()));
    render(
        app,
        &session,
        user_filter.as_deref(),
        banner.as_ref(),
        StatusCode::OK,
    )
    .await
}

/// `POST /tokens`: check the pasted token with TeamCity and keep it.
pub async fn add(app: &App, request: Request<Incoming>) -> Result<Response<Body>, PageError> {
    let (_, session) = require_session(app, request.headers()).await?;
    let (_, form) = Form::read(request, app.config.http.read_timeout).await?;
    form.check_csrf(&session.csrf)?;
    let (source, user) = super::user_within_limit(
        &session,
        &app.web.token_check_limiter,
        PageError::TooManyTokenChecks,
        "Administrators register tokens for users with `bb2tc token add` or the admin API; \
         users add their own here.",
    )?;
    let server_id = form.require("teamcity")?;
    let server = app
        .config
        .server(&ServerId::new(server_id))
        .ok_or_else(|| {
            PageError::BadRequest(format!("{server_id:?} is not a configured TeamCity server"))
        })?;
    let token = form.require("token")?;
    if token.chars().count() > MAX_TOKEN_CHARS {
        return Err(PageError::BadRequest(
            "That is too long to be a TeamCity token.".into(),
        ));
    }
    let source = app.config.source(source.as_str()).ok_or_else(|| {
        PageError::Forbidden("Your Bitbucket source is no longer configured; sign in again.".into())
    })?;
    let token = TeamCityToken::new(token);
    match token_registration::register(app, source, user.as_str(), server, &token, true).await {
        Ok((_, replaced)) => Ok(respond::redirect(if replaced {
            "/?notice=replaced"
        } else {
            "/?notice=added"
        })),
        Err(RegistrationError::Store(e)) => Err(e.into()),
        Err(e) => {
            let (status, text) = refusal(&e);
            render(app, &session, None, Some(&Banner::Error(text)), status).await
        }
    }
}

/// `POST /tokens/{id}/delete`.
pub async fn delete(
    app: &App,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, PageError> {
    let (_, session) = require_session(app, request.headers()).await?;
    let (_, form) = Form::read(request, app.config.http.read_timeout).await?;
    form.check_csrf(&session.csrf)?;
    let token = app
        .store
        .token(id.to_owned())
        .await?
        .filter(|t| may_see(&session.principal, t))
        .ok_or_else(|| {
            PageError::NotFound("There is no such token (it may already be deleted).".into())
        })?;
    app.store.remove_token(token.id.clone()).await?;
    tracing::info!(token = %token.id, by = %html::describe(&session.principal), "token deleted on the token page");
    Ok(respond::redirect("/?notice=deleted"))
}

async fn render(
    app: &App,
    session: &Session,
    user_filter: Option<&str>,
    banner: Option<&Banner>,
    status: StatusCode,
) -> Result<Response<Body>, PageError> {
    let filter = match &session.principal {
        Principal::User { source, .. } => TokenFilter {
            source: Some(source.clone()),
            ..TokenFilter::default()
        },
        Principal::Admin { .. } => TokenFilter {
            user: user_filter.and_then(UserKey::parse),
            ..TokenFilter::default()
        },
    };
    let mut tokens = app.store.list_tokens(filter).await?;
    tokens.retain(|t| may_see(&session.principal, t));
    // A user's builds are those sent with their tokens; the admin sees everyone's.
    let mine = match &session.principal {
        Principal::User { .. } => Some(tokens.iter().map(|t| t.id.clone()).collect()),
        Principal::Admin { .. } => None,
    };
    let builds = app
        .store
        .recent_builds(mine, super::builds_view::RECENT)
        .await?;
    let not_built = match &session.principal {
        Principal::User { .. } => super::builds_view::not_built(
            &app.store.list_deliveries(500).await?,
            &session.principal,
        ),
        Principal::Admin { .. } => Vec::new(),
    };
    let page = html::tokens_page(
        &app.config,
        &TokensView {
            principal: &session.principal,
            csrf: &session.csrf,
            tokens: &tokens,
            user_filter,
            banner,
            builds: &builds,
            not_built: &not_built,
        },
    );
    Ok(respond::html(status, page))
}

/// Whether `principal` may see and delete `token`.
fn may_see(principal: &Principal, token: &TokenInfo) -> bool {
    principal.owns(&token.source, UserKey::parse(&token.user).as_ref())
}

fn notice_text(key: &str) -> Option<&'static str> {
    match key {
        "added" => Some("Token added. TeamCity accepted it."),
        "replaced" => {
            Some("Token replaced: TeamCity accepted the new one, the old one is forgotten.")
        }
        "queued" => Some("Queued: it is listed under Your builds, with what becomes of it."),
        "deleted" => Some(
            "Token deleted from bb2tc. It still exists in TeamCity until you revoke it there \
             (My Profile → Access Tokens).",
        ),
        _ => None,
    }
}

/// How a failed registration is answered: its status and what the developer reads.
fn refusal(e: &RegistrationError) -> (StatusCode, String) {
    match e {
        RegistrationError::Refused {
            server_url,
            error: TeamCityError::Unauthorized(_),
        } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "TeamCity at {server_url} did not accept this token. Check that you copied all \
                 of it and that it has not expired or been revoked (TeamCity: My Profile → \
                 Access Tokens), then try again."
            ),
        ),
        RegistrationError::Refused { server_url, error } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("TeamCity at {server_url} refused the token check: {error}"),
        ),
        RegistrationError::Unreachable { server_url, error } => (
            StatusCode::BAD_GATEWAY,
            format!(
                "bb2tc could not reach TeamCity at {server_url} to check the token ({error}). \
                 Try again in a moment; if it keeps failing, tell your build engineers."
            ),
        ),
        RegistrationError::Malformed => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        RegistrationError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "bb2tc's store is unavailable; try again shortly.".into(),
        ),
    }
}
