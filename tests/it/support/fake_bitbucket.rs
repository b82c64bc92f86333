//! A fake Bitbucket for the token page's sign-in, answering as Data Center and Cloud do:
//!
//! - OAuth 2.0: Data Center `/rest/oauth2/latest/authorize` + `/token` (client credentials
//!   as parameters), Cloud `/site/oauth2/authorize` + `/access_token` (Basic auth). The
//!   authorize endpoint stands for the consent screen: it approves as the user set with
//!   [`FakeBitbucket::consent_as`] and redirects back with `code` and `state`. The token
//!   endpoint checks the client, the redirect URI and the PKCE verifier (S256).
//! - Data Center identity: `/rest/api/latest/application-properties` answers with
//!   `X-AUSERNAME` (percent-encoded) and `X-AUSERID`; `/rest/api/latest/users?filter=`.
//! - Cloud identity: `/2.0/user` with a Bearer token or Basic email + API token.
//! - Cloud commits: `/2.0/repositories/{workspace}/{slug}/commit/{hash}` with a repository
//!   (or workspace) access token as Bearer; a short hash finds the commit it begins, as
//!   Cloud's does; errors are Cloud's JSON (`{"type": "error", "error": {"message"}}`).
//! - Build statuses: Data Center `POST /rest/api/latest/projects/{key}/repos/{slug}/commits/
//!   {sha}/builds` (204; `key`, `state`, `url` required; `key`, `name`, `description` at most
//!   255 characters, `url` 450; states INPROGRESS, SUCCESSFUL, FAILED) and Cloud `POST
//!   /2.0/repositories/{workspace}/{slug}/commit/{sha}/statuses/build` (201; `key` at most
//!   40 characters; states INPROGRESS, SUCCESSFUL, FAILED, STOPPED), each with an access
//!   token for that repository as Bearer. [`FakeBitbucket::fail_statuses`] answers the next
//!   ones 503.
//! - `/rest/capabilities` links `/rest/api/latest/build/capabilities`, which lists
//!   `cancelledStatus` once [`FakeBitbucket::take_cancelled_status`] was called (then DC
//!   statuses may be CANCELLED).
//! - `/forged?action=…`: a page of another origin with a form that posts to bb2tc without a
//!   CSRF value, for the browser test.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "bb2tc-client";
pub const CLIENT_SECRET: &str = "bb2tc-client-secret";

/// A Bitbucket account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Data Center login name (Cloud: the nickname, unused as a key).
    pub name: String,
    pub id: u64,
    pub display_name: String,
    /// Data Center `NORMAL` / `SERVICE`; Cloud `user` / `app_user`.
    pub kind: String,
    pub active: bool,
    /// Cloud only.
    pub uuid: String,
    /// Cloud only: the email an API token is used with.
    pub email: String,
    /// Data Center: whether its tokens may look users up (those of repository access tokens'
    /// service users may not).
    pub may_list_users: bool,
}

impl Account {
    /// An active, normal Data Center user.
    pub fn datacenter(name: &str, id: u64, display_name: &str) -> Self {
        Self {
            name: name.into(),
            id,
            display_name: display_name.into(),
            kind: "NORMAL".into(),
            active: true,
            uuid: String::new(),
            email: String::new(),
            may_list_users: true,
        }
    }

    /// An active Cloud user.
    pub fn cloud(uuid: &str, email: &str, display_name: &str) -> Self {
        Self {
            name: display_name.to_lowercase().replace(' ', ""),
            id: 0,
            display_name: display_name.into(),
            kind: "user".into(),
            active: true,
            uuid: uuid.into(),
            email: email.into(),
            may_list_users: true,
        }
    }
}

struct Grant {
    account: usize,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct State {
    accounts: Vec<Account>,
    /// Bearer tokens (personal and OAuth access tokens) → account.
    tokens: HashMap<String, usize>,
    consent: Option<usize>,
    grants: HashMap<String, Grant>,
    /// (path, query) of every request.
    requests: Vec<(String, String)>,
    /// Access tokens → the repository (`workspace/slug`) or workspace (`workspace/*`) they
    /// may read.
    access_tokens: HashMap<String, String>,
    /// Commits: (repository, whole hash).
    commits: Vec<(String, String)>,
    /// Statuses taken.
    statuses: Vec<PostedStatus>,
    /// Branch heads: (repository, branch, commit).
    branches: Vec<(String, String, String)>,
    /// Data Center: whether build statuses may be CANCELLED (`cancelledStatus`).
    cancelled_status: bool,
    /// How many status posts to answer 503 first.
    failing_statuses: usize,
}

/// A build status as Bitbucket took it.
#[derive(Debug, Clone)]
pub struct PostedStatus {
    /// `datacenter` or `cloud`.
    pub kind: &'static str,
    /// `KEY/slug` or `workspace/slug`.
    pub repository: String,
    pub sha: String,
    pub body: serde_json::Value,
    pub authorization: String,
}

/// A running fake Bitbucket on 127.0.0.1.
#[derive(Clone)]
pub struct FakeBitbucket {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeBitbucket {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            state: Arc::default(),
        };
        let server = fake.clone();
        super::fake_server::serve_http(listener, move |parts, body| {
            let fake = server.clone();
            async move { fake.answer(parts, body).await }
        });
        fake
    }

    /// Adds an account that `token` (a personal or API token) authenticates.
    pub fn add_account(&self, account: Account, token: &str) {
        let mut state = self.state.lock().unwrap();
        state.accounts.push(account);
        let index = state.accounts.len() - 1;
        state.tokens.insert(token.into(), index);
    }

    /// A repository (`workspace/slug`) or workspace (`workspace/*`) access token.
    pub fn add_access_token(&self, token: &str, scope: &str) {
        let mut state = self.state.lock().unwrap();
        state.access_tokens.insert(token.into(), scope.into());
    }

    /// Data Center takes the CANCELLED build state: its build-status capabilities (linked
    /// from `/rest/capabilities`) list `cancelledStatus`.
    pub fn take_cancelled_status(&self) {
        self.state.lock().unwrap().cancelled_status = true;
    }

    /// Branch `branch` of `repository` is at `sha`.
    pub fn add_branch(&self, repository: &str, branch: &str, sha: &str) {
        let mut state = self.state.lock().unwrap();
        state
            .branches
            .push((repository.into(), branch.into(), sha.into()));
    }

    /// The statuses taken so far.
    pub fn statuses(&self) -> Vec<PostedStatus> {
        self.state.lock().unwrap().statuses.clone()
    }

    /// The next `n` status posts are answered 503.
    pub fn fail_statuses(&self, n: usize) {
        self.state.lock().unwrap().failing_statuses = n;
    }

    /// Waits (15 s at most) for `n` statuses taken.
    pub async fn wait_for_statuses(&self, n: usize) -> Vec<PostedStatus> {
        for _ in 0..1500 {
            let statuses = self.statuses();
            if statuses.len() >= n {
                return statuses;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("expected {n} statuses, got {:#?}", self.statuses());
    }

    /// A commit of a Cloud repository.
    pub fn add_commit(&self, repository: &str, sha: &str) {
        let mut state = self.state.lock().unwrap();
        state.commits.push((repository.into(), sha.into()));
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.requests.iter().filter(|(p, _)| p == path).count()
    }

    /// The consent screen approves as the account named `name` (Data Center name or Cloud
    /// display name); `None`: the user clicks "Deny".
    pub fn consent_as(&self, name: Option<&str>) {
        let mut state = self.state.lock().unwrap();
        state.consent = name.map(|n| {
            state
                .accounts
                .iter()
                .position(|a| a.name == n || a.display_name == n)
                .expect("known account")
        });
    }

    /// The query of the first request for `path`, if there was one.
    pub fn asked(&self, path: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, query)| query.clone())
    }

    async fn answer(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        let authorization = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut state = self.state.lock().unwrap();
        state.requests.push((path.clone(), query.clone()));
        match (parts.method.as_str(), path.as_str()) {
            ("GET", "/rest/oauth2/latest/authorize" | "/site/oauth2/authorize") => {
                authorize(&mut state, &params)
            }
            ("POST", "/rest/oauth2/latest/token") => {
                let client = (form.get("client_id"), form.get("client_secret"));
                let client_ok =
                    client == (Some(&CLIENT_ID.to_owned()), Some(&CLIENT_SECRET.to_owned()));
                token(&mut state, &form, client_ok)
            }
            ("POST", "/site/oauth2/access_token") => {
                let expected = format!(
                    "Basic {}",
                    STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
                );
                token(&mut state, &form, authorization == expected)
            }
            ("GET", "/rest/api/latest/application-properties") => {
                let Some(account) = bearer(&state, &authorization) else {
                    return unauthorized();
                };
                let name: String = percent_encoding::utf8_percent_encode(
                    &account.name,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string();
                Response::builder()
                    .header("content-type", "application/json")
                    .header("x-ausername", name)
                    .header("x-auserid", account.id.to_string())
                    .body(Full::new(Bytes::from(
                        r#"{"version":"9.4.3","buildNumber":"9004003","displayName":"Bitbucket"}"#,
                    )))
                    .unwrap()
            }
            ("GET", "/rest/api/latest/users") => {
                if !bearer(&state, &authorization).is_some_and(|a| a.may_list_users) {
                    return unauthorized();
                }
                let filter = params.get("filter").cloned().unwrap_or_default();
                let values: Vec<serde_json::Value> = state
                    .accounts
                    .iter()
                    .filter(|a| a.uuid.is_empty() && a.name.contains(&filter))
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name, "id": a.id, "displayName": a.display_name,
                            "slug": a.name.replace('.', "_"), "active": a.active, "type": a.kind,
                        })
                    })
                    .collect();
                json(
                    200,
                    serde_json::json!({"size": values.len(), "isLastPage": true, "values": values}),
                )
            }
            ("GET", "/2.0/user") => {
                let account =
                    bearer(&state, &authorization).or_else(|| basic(&state, &authorization));
                let Some(a) = account else {
                    return unauthorized();
                };
                json(
                    200,
                    serde_json::json!({
                        "type": a.kind, "uuid": a.uuid, "account_id": format!("5f{}", a.id),
                        "display_name": a.display_name, "nickname": a.name,
                        "account_status": if a.active { "active" } else { "inactive" },
                    }),
                )
            }
            ("POST", p)
                if (p.starts_with("/rest/api/latest/projects/") && p.ends_with("/builds"))
                    || (p.starts_with("/2.0/repositories/") && p.ends_with("/statuses/build")) =>
            {
                post_status(&mut state, p, &authorization, &body)
            }
            ("GET", p)
                if p.starts_with("/rest/api/latest/projects/") && p.ends_with("/branches") =>
            {
                let parts: Vec<&str> = p.split('/').collect();
                let repository = format!("{}/{}", parts[5], parts[7]);
                let scope = authorization
                    .strip_prefix("Bearer ")
                    .and_then(|t| state.access_tokens.get(t));
                if !scope.is_some_and(|s| *s == repository || *s == format!("{}/*", parts[5])) {
                    return unauthorized();
                }
                let filter = params.get("filterText").cloned().unwrap_or_default();
                let values: Vec<serde_json::Value> = state
                    .branches
                    .iter()
                    .filter(|(r, b, _)| *r == repository && b.contains(&filter))
                    .map(|(_, b, sha)| {
                        serde_json::json!({"id": format!("refs/heads/{b}"), "displayId": b,
                            "type": "BRANCH", "latestCommit": sha, "isDefault": false})
                    })
                    .collect();
                json(
                    200,
                    serde_json::json!({"size": values.len(), "isLastPage": true, "values": values}),
                )
            }
            ("GET", p) if p.starts_with("/2.0/repositories/") && p.contains("/refs/branches/") => {
                let (repo_part, name) = p
                    .trim_start_matches("/2.0/repositories/")
                    .split_once("/refs/branches/")
                    .unwrap();
                let scope = authorization
                    .strip_prefix("Bearer ")
                    .and_then(|t| state.access_tokens.get(t));
                let (ws, _) = repo_part.split_once('/').unwrap_or((repo_part, ""));
                if !scope.is_some_and(|s| *s == repo_part || *s == format!("{ws}/*")) {
                    return cloud_error(
                        401,
                        "Token is invalid, expired, or not supported for this endpoint.",
                    );
                }
                let name = percent_decode(name);
                match state
                    .branches
                    .iter()
                    .find(|(r, b, _)| r == repo_part && *b == name)
                {
                    Some((_, b, sha)) => json(
                        200,
                        serde_json::json!({"type": "branch", "name": b, "target": {"type": "commit", "hash": sha}}),
                    ),
                    None => cloud_error(404, &format!("Branch \"{name}\" not found")),
                }
            }
            ("GET", p) if p.starts_with("/2.0/repositories/") => {
                let parts: Vec<&str> = p
                    .trim_start_matches("/2.0/repositories/")
                    .split('/')
                    .collect();
                let [workspace, slug, "commit", hash] = parts.as_slice() else {
                    return cloud_error(404, "Resource not found");
                };
                let repository = format!("{workspace}/{slug}");
                let scope = authorization
                    .strip_prefix("Bearer ")
                    .and_then(|t| state.access_tokens.get(t));
                let allowed = scope.is_some_and(|scope| {
                    *scope == repository || *scope == format!("{workspace}/*")
                });
                if scope.is_none() {
                    return cloud_error(
                        401,
                        "Token is invalid, expired, or not supported for this endpoint.",
                    );
                }
                if !allowed {
                    return cloud_error(
                        403,
                        "Your credentials lack one or more required privilege scopes.",
                    );
                }
                let found = state
                    .commits
                    .iter()
                    .find(|(r, sha)| *r == repository && hash.len() >= 4 && sha.starts_with(hash));
                match found {
                    Some((_, sha)) => json(
                        200,
                        serde_json::json!({"type": "commit", "hash": sha, "message": "a commit\n",
                            "repository": {"full_name": repository}}),
                    ),
                    None => cloud_error(404, &format!("Commit not found: {hash}")),
                }
            }
            ("GET", "/rest/capabilities") => json(
                200,
                serde_json::json!({"application": "bitbucket", "capabilities": {
                    "build-status": format!("{}/rest/api/latest/build/capabilities", self.url),
                    "webhooks": format!("{}/rest/api/latest/webhooks", self.url)}}),
            ),
            ("GET", "/rest/api/latest/build/capabilities") => {
                let mut listed = vec!["richBuildStatus"];
                if state.cancelled_status {
                    listed.push("cancelledStatus");
                }
                json(200, serde_json::json!({"buildStatus": listed}))
            }
            ("GET", "/forged") => {
                let action = params.get("action").cloned().unwrap_or_default();
                let page = format!(
                    "<!DOCTYPE html><html><body><h1>You won a prize</h1>\
                     <form method=\"post\" action=\"{action}\">\
                     <input type=\"hidden\" name=\"teamcity\" value=\"main\">\
                     <button id=\"claim\" type=\"submit\">Claim</button></form></body></html>"
                );
                Response::builder()
                    .header("content-type", "text/html")
                    .body(Full::new(Bytes::from(page)))
                    .unwrap()
            }
            _ => json(
                404,
                serde_json::json!({"errors": [{"message": "not found"}]}),
            ),
        }
    }
}

fn authorize(state: &mut State, params: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID
        || get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
    {
        return json(400, serde_json::json!({"error": "invalid_request"}));
    }
    let redirect_uri = get("redirect_uri");
    let mut location = reqwest::Url::parse(&redirect_uri).expect("redirect_uri is a URL");
    match state.consent {
        Some(account) => {
            let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
            state.grants.insert(
                code.clone(),
                Grant {
                    account,
                    challenge: get("code_challenge"),
                    redirect_uri,
                },
            );
            location
                .query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &get("state"));
        }
        None => {
            location
                .query_pairs_mut()
                .append_pair("error", "access_denied")
                .append_pair("state", &get("state"));
        }
    }
    Response::builder()
        .status(302)
        .header("location", location.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn token(
    state: &mut State,
    form: &HashMap<String, String>,
    client_ok: bool,
) -> Response<Full<Bytes>> {
    if !client_ok {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let Some(grant) = state.grants.remove(&get("code")) else {
        return json(400, serde_json::json!({"error": "invalid_grant"}));
    };
    let verifier_ok =
        URL_SAFE_NO_PAD.encode(Sha256::digest(get("code_verifier").as_bytes())) == grant.challenge;
    if get("grant_type") != "authorization_code"
        || get("redirect_uri") != grant.redirect_uri
        || !verifier_ok
    {
        return json(400, serde_json::json!({"error": "invalid_grant"}));
    }
    let access = format!(
        "oauth-{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
    );
    state.tokens.insert(access.clone(), grant.account);
    json(
        200,
        serde_json::json!({"access_token": access, "token_type": "bearer", "expires_in": 3600,
                           "refresh_token": "r", "scopes": "REPO_READ"}),
    )
}

fn bearer<'a>(state: &'a State, authorization: &str) -> Option<&'a Account> {
    let token = authorization.strip_prefix("Bearer ")?;
    state.tokens.get(token).map(|&i| &state.accounts[i])
}

fn basic<'a>(state: &'a State, authorization: &str) -> Option<&'a Account> {
    let decoded = STANDARD
        .decode(authorization.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (email, token) = text.split_once(':')?;
    let &index = state.tokens.get(token)?;
    let account = &state.accounts[index];
    (account.email == email).then_some(account)
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn post_status(
    state: &mut State,
    path: &str,
    authorization: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, repository, sha) = match parts.as_slice() {
        [
            "rest",
            "api",
            "latest",
            "projects",
            key,
            "repos",
            slug,
            "commits",
            sha,
            "builds",
        ] => ("datacenter", format!("{key}/{slug}"), sha.to_string()),
        [
            "2.0",
            "repositories",
            ws,
            slug,
            "commit",
            sha,
            "statuses",
            "build",
        ] => ("cloud", format!("{ws}/{slug}"), sha.to_string()),
        _ => {
            return json(
                404,
                serde_json::json!({"errors": [{"message": "not found"}]}),
            );
        }
    };
    let error = |status: u16, message: &str| match kind {
        "cloud" => cloud_error(status, message),
        _ => json(
            status,
            serde_json::json!({"errors": [{"message": message}]}),
        ),
    };
    let scope = authorization
        .strip_prefix("Bearer ")
        .and_then(|t| state.access_tokens.get(t));
    let (owner, _) = repository.split_once('/').unwrap();
    if !scope.is_some_and(|s| *s == repository || *s == format!("{owner}/*")) {
        return error(
            401,
            "Authentication failed. Please check your credentials and try again.",
        );
    }
    if state.failing_statuses > 0 {
        state.failing_statuses -= 1;
        return error(503, "Service Unavailable");
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(400, "the body is not JSON");
    };
    let text = |field: &str| value[field].as_str().map(str::to_owned);
    let (key_max, states): (usize, &[&str]) = match kind {
        "cloud" => (40, &["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"]),
        _ if state.cancelled_status => (255, &["INPROGRESS", "SUCCESSFUL", "FAILED", "CANCELLED"]),
        _ => (255, &["INPROGRESS", "SUCCESSFUL", "FAILED"]),
    };
    for field in ["key", "state", "url"] {
        if text(field).is_none_or(|v| v.is_empty()) {
            return error(400, &format!("{field} is required"));
        }
    }
    if text("key").unwrap().chars().count() > key_max {
        return error(400, &format!("key must be at most {key_max} characters"));
    }
    for (field, max) in [("name", 255), ("description", 255), ("url", 450)] {
        if text(field).is_some_and(|v| v.chars().count() > max) {
            return error(400, &format!("{field} must be at most {max} characters"));
        }
    }
    if !states.contains(&text("state").unwrap().as_str()) {
        return error(
            400,
            &format!("{} is not a build state", text("state").unwrap()),
        );
    }
    state.statuses.push(PostedStatus {
        kind,
        repository,
        sha,
        body: value.clone(),
        authorization: authorization.to_owned(),
    });
    match kind {
        "cloud" => json(
            201,
            serde_json::json!({"type": "commitstatus", "key": value["key"], "state": value["state"]}),
        ),
        _ => Response::builder()
            .status(204)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

fn cloud_error(status: u16, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"type": "error", "error": {"message": message}}),
    )
}

fn unauthorized() -> Response<Full<Bytes>> {
    json(
        401,
        serde_json::json!({"errors": [{"message": "Authentication failed. Please check your credentials and try again."}]}),
    )
}

fn json(status: u16, value: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}
