//! The token page (SPEC §4, `GET /` and the page's own paths): each Bitbucket user signs in
//! and manages their own TeamCity access tokens in the browser; the admin sees everyone's.
//!
//! Plain server-rendered HTML and one stylesheet, no script. Every page carries a strict
//! Content-Security-Policy; every form carries a CSRF value (the session's, or before
//! sign-in a `SameSite=Strict` cookie's); sign-in attempts are rate-limited per client
//! address. Sessions live in the store (only a hash of the cookie), so they survive a
//! restart and end at expiry or sign-out.
//!
//! - `mod.rs`: the page's paths and the shared state
//! - `sign_in.rs`: sign-in by OAuth, by a pasted Bitbucket token, as the admin; sign-out
//! - `token_page.rs`: the token list, adding and deleting tokens
//! - `oauth.rs`: OAuth sign-ins under way (state, PKCE)
//! - `html.rs` + `style.css`: rendering; `respond.rs`: headers; `cookies.rs`, `forms.rs`
//! - `error.rs`: failures and their status codes

mod builds;
mod builds_view;
mod cookies;
mod error;
mod forms;
mod html;
mod oauth;
mod respond;
mod sign_in;
mod token_page;

pub use error::PageError;

use crate::app::App;
use crate::bitbucket::identity::{BitbucketClient, IdentityError};
use crate::config::Config;
use crate::http::response::Body;
use crate::store::{Principal, Session};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// What the token page keeps between requests (besides the sessions in the store).
pub struct WebState {
    bitbucket: BitbucketClient,
    pending: oauth::PendingSignIns,
    sign_in_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Token checks per signed-in user, so the page cannot be used to flood TeamCity with
    /// `users/current` calls (or to try tokens against it).
    token_check_limiter: DefaultKeyedRateLimiter<String>,
    /// Builds run from the page per signed-in user.
    run_limiter: DefaultKeyedRateLimiter<String>,
}

/// Builds a user may run from the page per minute (each queues TeamCity builds).
const RUNS_PER_MINUTE: NonZeroU32 = NonZeroU32::new(10).unwrap();

/// Tokens a user may add (each checked with TeamCity) per minute.
const TOKEN_CHECKS_PER_MINUTE: NonZeroU32 = NonZeroU32::new(10).unwrap();

impl WebState {
    /// The state for `config`.
    pub fn new(config: &Config) -> Result<Self, IdentityError> {
        Ok(Self {
            bitbucket: BitbucketClient::new()?,
            pending: oauth::PendingSignIns::default(),
            sign_in_limiter: RateLimiter::keyed(Quota::per_minute(
                config.web.sign_in_attempts_per_minute,
            )),
            token_check_limiter: RateLimiter::keyed(Quota::per_minute(TOKEN_CHECKS_PER_MINUTE)),
            run_limiter: RateLimiter::keyed(Quota::per_minute(RUNS_PER_MINUTE)),
        })
    }

    /// Forgets the rate-limit state of addresses that have been quiet (called now and then
    /// so the limiter does not grow with every address ever seen).
    pub fn forget_quiet_addresses(&self) {
        self.sign_in_limiter.retain_recent();
        self.token_check_limiter.retain_recent();
        self.run_limiter.retain_recent();
    }
}

/// Whether a path (split at `/`) belongs to the token page.
pub fn is_page_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        [""] | ["tokens", ..]
            | ["builds", ..]
            | ["signin", ..]
            | ["signout"]
            | ["oauth", "callback"]
            | ["static", ..]
    )
}

/// Answers a request for one of the page's paths.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    peer: IpAddr,
    segments: &[&str],
) -> Response<Body> {
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    let post = request.method() == Method::POST;
    let result = match segments {
        [""] if get => token_page::show(app, &request).await,
        ["tokens"] if post => token_page::add(app, request).await,
        ["tokens", id, "delete"] if post => token_page::delete(app, request, id).await,
        ["builds"] if post => builds::run(app, request).await,
        ["builds", id, "again"] if post => builds::run_again(app, request, id).await,
        ["signin"] if get => sign_in::page(app, &request).await,
        ["signin", "token"] if post => sign_in::with_bitbucket_token(app, request, peer).await,
        ["signin", "admin"] if post => sign_in::as_admin(app, request, peer).await,
        ["signin", "oauth", source] if get => sign_in::start_oauth(app, peer, source).await,
        ["oauth", "callback"] if get => sign_in::finish_oauth(app, &request, peer).await,
        ["signout"] if post => sign_in::sign_out(app, request).await,
        ["static", "bb2tc.css"] if get => Ok(respond::stylesheet(html::STYLESHEET)),
        [""]
        | ["tokens"]
        | ["tokens", _, "delete"]
        | ["builds"]
        | ["builds", _, "again"]
        | ["signin"]
        | ["signin", "token" | "admin"]
        | ["signin", "oauth", _]
        | ["oauth", "callback"]
        | ["signout"]
        | ["static", "bb2tc.css"] => Err(PageError::MethodNotAllowed),
        _ => Err(PageError::NotFound("There is no such page.".into())),
    };
    result.unwrap_or_else(PageError::into_response)
}

/// The live session behind the request's cookie, with the cookie's value. An admin session
/// of an admin token that has since been replaced counts as none.
async fn session(app: &App, headers: &HeaderMap) -> Result<Option<(String, Session)>, PageError> {
    let Some(id) = cookies::get(headers, cookies::SESSION, app.config.web.cookie_secure) else {
        return Ok(None);
    };
    let session = app
        .store
        .session(id.to_owned())
        .await?
        .filter(|s| match &s.principal {
            Principal::Admin { token_fingerprint } => {
                *token_fingerprint == app.admin_token_fingerprint()
            }
            Principal::User { .. } => true,
        });
    Ok(session.map(|s| (id.to_owned(), s)))
}

/// The signed-in user's source and key, if `limiter` lets them act once more (else
/// `too_many`); the administrator is refused with `not_for_admin`.
fn user_within_limit<'a>(
    session: &'a Session,
    limiter: &DefaultKeyedRateLimiter<String>,
    too_many: PageError,
    not_for_admin: &str,
) -> Result<(&'a crate::ids::SourceId, &'a crate::ids::UserKey), PageError> {
    let Principal::User { source, user, .. } = &session.principal else {
        return Err(PageError::Forbidden(not_for_admin.into()));
    };
    if limiter.check_key(&format!("{source}\0{user}")).is_err() {
        return Err(too_many);
    }
    Ok((source, user))
}

/// The session, or [`PageError::SignInRequired`].
async fn require_session(app: &App, headers: &HeaderMap) -> Result<(String, Session), PageError> {
    session(app, headers)
        .await?
        .ok_or(PageError::SignInRequired)
}
