//! Signing in to the token page and out again.
//!
//! - "Sign in with Bitbucket": OAuth 2.0 authorization code with PKCE (S256) and a `state`
//!   bound to the browser by a cookie; the access token identifies the user once and is
//!   dropped.
//! - A pasted Bitbucket token (where OAuth is not set up): used once the same way, never kept.
//! - The admin token: an administrator's session.
//!
//! Every attempt counts against the client address's sign-in rate limit.

use super::cookies::{self, SameSite};
use super::error::PageError;
use super::forms::Form;
use super::html::{self, Banner};
use super::oauth::PENDING_TTL;
use super::{respond, session};
use crate::app::App;
use crate::bitbucket::identity::{BitbucketClient, Credential, IdentityError};
use crate::config::SourceKind;
use crate::http::response::Body;
use crate::ids::Secret;
use crate::metrics::{SignInMethod, SignInResult};
use crate::store::Principal;
use crate::store::sessions::random_token;
use hyper::body::Incoming;
use hyper::header::SET_COOKIE;
use hyper::{HeaderMap, Request, Response, StatusCode};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// The OAuth callback's path; the state cookie is only sent there.
const CALLBACK_PATH: &str = "/oauth/callback";

/// How long the sign-in forms' CSRF cookie lasts.
const SIGN_IN_COOKIE_SECS: u64 = 3600;

/// `GET /signin`: the sign-in page (or the token page, for someone already signed in).
pub async fn page(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, PageError> {
    if session(app, request.headers()).await?.is_some() {
        return Ok(respond::redirect("/"));
    }
    sign_in_form(app, request.headers(), None)
}

/// The sign-in page with `failure` (status and message) shown above the forms.
fn sign_in_form(
    app: &App,
    headers: &HeaderMap,
    failure: Option<(StatusCode, String)>,
) -> Result<Response<Body>, PageError> {
    let existing = cookies::get(headers, cookies::SIGN_IN, app.config.web.cookie_secure)
        .filter(|v| v.len() == 43);
    let csrf = existing.map_or_else(random_token, str::to_owned);
    let (status, banner) = match failure {
        Some((status, message)) => (status, Some(Banner::Error(message))),
        None => (StatusCode::OK, None),
    };
    let mut response = respond::html(
        status,
        html::sign_in_page(&app.config, &csrf, banner.as_ref()),
    );
    if existing.is_none() {
        response.headers_mut().append(
            SET_COOKIE,
            cookies::set(
                cookies::SIGN_IN,
                &csrf,
                "/",
                SIGN_IN_COOKIE_SECS,
                SameSite::Strict,
                app.config.web.cookie_secure,
            ),
        );
    }
    Ok(response)
}

/// `POST /signin/token`: sign in with a pasted Bitbucket token (and email, for Cloud).
pub async fn with_bitbucket_token(
    app: &App,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, PageError> {
    let method = SignInMethod::BitbucketToken;
    let (headers, form) = sign_in_post(app, request, peer, method).await?;
    let source_id = form.require("source")?;
    let source = app
        .config
        .source(source_id)
        .ok_or_else(|| PageError::BadRequest(format!("unknown Bitbucket source {source_id:?}")))?;
    let token = Secret::new(form.require("token")?);
    let credential = match source.kind {
        SourceKind::DataCenter => Credential::Bearer(token),
        SourceKind::Cloud => Credential::EmailAndToken {
            email: form.require("email")?.to_owned(),
            token,
        },
    };
    let identity = app.web.bitbucket.identify(source, &credential).await;
    count(app, method, identity.is_ok());
    match identity {
        Ok(identity) => {
            tracing::info!(source = %source.id, user = %identity.user, "signed in with a Bitbucket token");
            start_session(
                app,
                Principal::User {
                    source: source.id.clone(),
                    user: identity.user,
                    aliases: identity.aliases,
                    display_name: identity.display_name,
                },
                respond::redirect("/"),
            )
            .await
        }
        Err(e) => {
            tracing::info!(source = %source.id, error = %e, "Bitbucket token sign-in refused");
            sign_in_form(app, &headers, Some(refusal(&e)))
        }
    }
}

/// `POST /signin/admin`: sign in with the admin token.
pub async fn as_admin(
    app: &App,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, PageError> {
    let method = SignInMethod::Admin;
    let (headers, form) = sign_in_post(app, request, peer, method).await?;
    let accepted = app.is_admin_token(form.get("admin_token").unwrap_or(""));
    count(app, method, accepted);
    if !accepted {
        tracing::warn!(%peer, "admin sign-in with a wrong token");
        return sign_in_form(
            app,
            &headers,
            Some((
                StatusCode::UNAUTHORIZED,
                "That is not bb2tc's admin token.".into(),
            )),
        );
    }
    tracing::info!(%peer, "administrator signed in");
    let principal = Principal::Admin {
        token_fingerprint: app.admin_token_fingerprint(),
    };
    start_session(app, principal, respond::redirect("/")).await
}

/// `GET /signin/oauth/{source}`: off to Bitbucket's consent screen.
pub async fn start_oauth(
    app: &App,
    peer: IpAddr,
    source_id: &str,
) -> Result<Response<Body>, PageError> {
    limit(app, peer, SignInMethod::OAuth)?;
    let source = app
        .config
        .source(source_id)
        .filter(|s| s.oauth_client_id.is_some())
        .ok_or_else(|| {
            PageError::NotFound(format!(
                "Signing in with Bitbucket is not set up for {source_id:?}."
            ))
        })?;
    let client = super::oauth::client_key(peer);
    let started = app
        .web
        .pending
        .start(source.id.clone(), client)
        .ok_or_else(|| {
            PageError::Unavailable("Too many sign-ins are under way; try again in a minute.".into())
        })?;
    // Several instances: the browser may come back to another one.
    let expires_at = crate::clock::now_ms() + PENDING_TTL.as_millis() as u64;
    app.store
        .put_oauth_sign_in(&started.state, &source.id, &started.verifier, expires_at)
        .await?;
    let url = BitbucketClient::authorize_url(
        source,
        &redirect_uri(app),
        &started.state,
        &started.challenge,
    )
    .map_err(|e| PageError::NotFound(e.to_string()))?;
    let mut response = respond::redirect(&url);
    response.headers_mut().append(
        SET_COOKIE,
        cookies::set(
            cookies::OAUTH_STATE,
            &started.state,
            CALLBACK_PATH,
            PENDING_TTL.as_secs(),
            SameSite::Lax,
            app.config.web.cookie_secure,
        ),
    );
    Ok(response)
}

/// `GET /oauth/callback?code=&state=`: Bitbucket sends the browser back here.
pub async fn finish_oauth(
    app: &App,
    request: &Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, PageError> {
    let method = SignInMethod::OAuth;
    limit(app, peer, method)?;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let state = param("state").unwrap_or("");
    let cookie = cookies::get(
        request.headers(),
        cookies::OAUTH_STATE,
        app.config.web.cookie_secure,
    )
    .unwrap_or("");
    let bound: bool = state.as_bytes().ct_eq(cookie.as_bytes()).into();
    if !bound || state.is_empty() {
        return Err(PageError::Forbidden(
            "This sign-in was not started in this browser (or it is from an old tab). Start \
             again from the sign-in page."
                .into(),
        ));
    }
    // Several instances: the store says whether it is under way (it may have started on
    // another one, or been finished there), and the copy here only counts toward its limits.
    let local = app
        .web
        .pending
        .finish(state)
        .map(|p| (p.source, p.verifier));
    let pending = match app.store.is_shared() {
        true => app.store.take_oauth_sign_in(state).await?,
        false => local,
    };
    let (pending_source, verifier) = pending.ok_or_else(|| {
        PageError::BadRequest(
            "This sign-in has expired or was already used. Start again from the sign-in page."
                .into(),
        )
    })?;
    let headers = request.headers();
    if let Some(error) = param("error") {
        count(app, method, false);
        let failure = format!("Bitbucket did not grant access ({error}).");
        return sign_in_form(app, headers, Some((StatusCode::FORBIDDEN, failure)));
    }
    let (Some(code), Some(source)) = (param("code"), app.config.source(pending_source.as_str()))
    else {
        return Err(PageError::BadRequest(
            "Bitbucket's answer has no authorization code.".into(),
        ));
    };
    let bitbucket = &app.web.bitbucket;
    let identity = match bitbucket
        .exchange_code(source, code, &redirect_uri(app), &verifier)
        .await
    {
        Ok(access) => {
            bitbucket
                .identify(source, &Credential::Bearer(access))
                .await
        }
        Err(e) => Err(e),
    };
    count(app, method, identity.is_ok());
    match identity {
        Ok(identity) => {
            tracing::info!(source = %source.id, user = %identity.user, "signed in with Bitbucket (OAuth)");
            let principal = Principal::User {
                source: source.id.clone(),
                user: identity.user,
                aliases: identity.aliases,
                display_name: identity.display_name,
            };
            let mut response = respond::html(StatusCode::OK, html::continue_page());
            response.headers_mut().append(
                SET_COOKIE,
                cookies::clear(
                    cookies::OAUTH_STATE,
                    CALLBACK_PATH,
                    app.config.web.cookie_secure,
                ),
            );
            start_session(app, principal, response).await
        }
        Err(e) => {
            tracing::info!(source = %source.id, error = %e, "OAuth sign-in refused");
            sign_in_form(app, headers, Some(refusal(&e)))
        }
    }
}

/// `POST /signout`.
pub async fn sign_out(app: &App, request: Request<Incoming>) -> Result<Response<Body>, PageError> {
    let (headers, form) = Form::read(request, app.config.http.read_timeout).await?;
    let mut response = respond::redirect("/signin");
    if let Some((id, session)) = session(app, &headers).await? {
        form.check_csrf(&session.csrf)?;
        app.store.end_session(id).await?;
    }
    response.headers_mut().append(
        SET_COOKIE,
        cookies::clear(cookies::SESSION, "/", app.config.web.cookie_secure),
    );
    Ok(response)
}

/// Stores a session for `principal` and adds its cookie to `response`.
async fn start_session(
    app: &App,
    principal: Principal,
    mut response: Response<Body>,
) -> Result<Response<Body>, PageError> {
    let ttl = app.config.web.session_ttl;
    let (id, _) = app
        .store
        .create_session(principal, ttl.as_millis() as u64)
        .await?;
    let secure = app.config.web.cookie_secure;
    let headers = response.headers_mut();
    headers.append(
        SET_COOKIE,
        cookies::set(
            cookies::SESSION,
            &id,
            "/",
            ttl.as_secs(),
            SameSite::Strict,
            secure,
        ),
    );
    headers.append(SET_COOKIE, cookies::clear(cookies::SIGN_IN, "/", secure));
    Ok(response)
}

/// A sign-in form's post: counted against the rate limit, read, and checked against the
/// browser's sign-in cookie.
async fn sign_in_post(
    app: &App,
    request: Request<Incoming>,
    peer: IpAddr,
    method: SignInMethod,
) -> Result<(HeaderMap, Form), PageError> {
    limit(app, peer, method)?;
    let (headers, form) = Form::read(request, app.config.http.read_timeout).await?;
    form.check_csrf(
        cookies::get(&headers, cookies::SIGN_IN, app.config.web.cookie_secure).unwrap_or(""),
    )?;
    Ok((headers, form))
}

/// Counts an attempt against the client address's limit.
fn limit(app: &App, peer: IpAddr, method: SignInMethod) -> Result<(), PageError> {
    if app
        .web
        .sign_in_limiter
        .check_key(&super::oauth::client_key(peer))
        .is_ok()
    {
        return Ok(());
    }
    app.metrics.sign_in(method, SignInResult::Limited);
    Err(PageError::TooManyAttempts)
}

/// Records the outcome of an attempt that got past the limit.
fn count(app: &App, method: SignInMethod, ok: bool) {
    let result = if ok {
        SignInResult::Ok
    } else {
        SignInResult::Refused
    };
    app.metrics.sign_in(method, result);
}

fn redirect_uri(app: &App) -> String {
    format!("{}{CALLBACK_PATH}", app.config.http.public_url)
}

/// How a refused sign-in is answered: its status and what the user reads.
fn refusal(e: &IdentityError) -> (StatusCode, String) {
    match e {
        IdentityError::Rejected(_) => (
            StatusCode::UNAUTHORIZED,
            format!("{e}. Check the token (and email) and try again."),
        ),
        IdentityError::NotAUser(_) => (StatusCode::FORBIDDEN, format!("{e}.")),
        IdentityError::Unreachable(_) | IdentityError::BadResponse(_) => (
            StatusCode::BAD_GATEWAY,
            format!("{e}. Try again in a moment; if it keeps failing, tell your build engineers."),
        ),
        IdentityError::NotConfigured(_) => (StatusCode::NOT_FOUND, format!("{e}.")),
    }
}
