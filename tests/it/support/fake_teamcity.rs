//! A fake TeamCity server that behaves as SPEC §6 describes: Bearer checks (401 in plain
//! text), JSON on success, plain-text errors. It records every request and can be told to
//! fail the next calls or to hang.
//!
//! Queued builds live as TeamCity's do: with [`FakeTeamCity::agents`] they leave the queue
//! (start) a while after being queued and finish later; `GET /app/rest/buildQueue` lists
//! only those still queued, and `GET /app/rest/builds` follows TeamCity's build locator —
//! without `state:any` (or `queued`/`running`) only finished builds, and without
//! `defaultFilter:false` only builds of the default branch (when no `branch` is given).
//! [`FakeTeamCity::start_queued`] starts every queued build at once, as free agents would.
//!
//! `GET /app/rest/buildQueue/id:N` finds a build in any state (TeamCity's queue endpoint
//! follows a build after it started). `POST /app/rest/buildQueue/id:N` with a
//! `buildCancelRequest` (`{"comment": "<text>", "readdIntoQueue": false}` — `comment` is a
//! string in TeamCity's schema) removes a build **still queued**: it is then finished,
//! status UNKNOWN, with `canceledInfo`; a started build is not in the queue (404), so this
//! endpoint never stops one. A user may cancel only builds queued with their own token.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One request as TeamCity received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }

    /// The decoded `locator` query parameter.
    pub fn locator(&self) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "locator")
            .map(|(_, v)| v.into_owned())
    }
}

/// A build TeamCity has (queued, running or finished, by the time since it was queued).
#[derive(Debug, Clone)]
struct Build {
    id: u64,
    build_type: String,
    branch: Option<String>,
    comment: Option<String>,
    queued_at: Instant,
    /// The TeamCity user whose token queued it.
    triggered_by: String,
    /// Started by [`FakeTeamCity::start_queued`].
    started: bool,
    /// Removed from the queue, with this comment.
    canceled: Option<String>,
    /// Finished by [`FakeTeamCity::finish_all`].
    finished: bool,
}

#[derive(Default)]
struct State {
    builds: Vec<Build>,
    /// (queued → running, running → finished); `None`: builds stay queued.
    agents: Option<(Duration, Duration)>,
    /// Time each build-queue POST takes to answer.
    post_delay: Duration,
    /// Bytes of padding in the next build-queue answer (a misbehaving proxy, say).
    pad_next_answer: usize,
    tokens: HashMap<String, String>,
    requests: Vec<Recorded>,
    failures: VecDeque<(u16, String, Option<String>)>,
    vcs_root_urls: Vec<String>,
    next_build_id: u64,
    answer_branch: Option<String>,
    hang: bool,
    /// How finished builds ended: (`SUCCESS`/`FAILURE`, status text).
    finish_as: Option<(String, String)>,
}

/// A running fake TeamCity on 127.0.0.1.
#[derive(Clone)]
pub struct FakeTeamCity {
    pub url: String,
    state: Arc<Mutex<State>>,
    recorded: Arc<Notify>,
}

const UNAUTHORIZED_TEXT: &str =
    "Authentication required\nTo login manually go to \"/login.html\" page";

impl FakeTeamCity {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Serves on an already bound listener (to come up on a known port later).
    pub fn serve(listener: TcpListener) -> Self {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self {
            url,
            state: Arc::new(Mutex::new(State {
                next_build_id: 100,
                ..State::default()
            })),
            recorded: Arc::new(Notify::new()),
        };
        let server = fake.clone();
        super::fake_server::serve_http(listener, move |parts, body| {
            let fake = server.clone();
            async move { fake.answer(parts, body).await }
        });
        fake
    }

    /// Accepts `token` as belonging to TeamCity user `user`.
    pub fn add_token(&self, token: &str, user: &str) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.into(), user.into());
    }

    /// Forgets a token (as if it was revoked in TeamCity).
    pub fn revoke_token(&self, token: &str) {
        self.state.lock().unwrap().tokens.remove(token);
    }

    /// The next authenticated call is answered with `status` and `text` (plain text).
    pub fn fail_next(&self, status: u16, text: &str, retry_after: Option<&str>) {
        self.state.lock().unwrap().failures.push_back((
            status,
            text.into(),
            retry_after.map(str::to_owned),
        ));
    }

    /// A VCS root with this fetch URL exists (for commit-hook notifications).
    pub fn add_vcs_root(&self, url: &str) {
        self.state.lock().unwrap().vcs_root_urls.push(url.into());
    }

    /// Queued builds report this branch instead of the requested one.
    pub fn answer_with_branch(&self, branch: &str) {
        self.state.lock().unwrap().answer_branch = Some(branch.into());
    }

    /// Idle agents: each build starts `start` after it was queued and finishes `run` later.
    pub fn agents(&self, start: Duration, run: Duration) {
        self.state.lock().unwrap().agents = Some((start, run));
    }

    /// The next build is queued, but its answer carries `bytes` of padding.
    pub fn pad_next_answer(&self, bytes: usize) {
        self.state.lock().unwrap().pad_next_answer = bytes;
    }

    /// Each build-queue POST takes this long to answer.
    pub fn post_delay(&self, delay: Duration) {
        self.state.lock().unwrap().post_delay = delay;
    }

    /// Builds TeamCity has (queued, running or finished), as (id, build type, branch, comment).
    pub fn builds(&self) -> Vec<(u64, String, Option<String>, Option<String>)> {
        self.state
            .lock()
            .unwrap()
            .builds
            .iter()
            .map(|b| {
                (
                    b.id,
                    b.build_type.clone(),
                    b.branch.clone(),
                    b.comment.clone(),
                )
            })
            .collect()
    }

    /// How many builds TeamCity has of each branch (the default branch as "").
    pub fn builds_per_branch(&self) -> std::collections::HashMap<String, usize> {
        let mut per_branch = std::collections::HashMap::new();
        for (_, _, branch, _) in self.builds() {
            *per_branch.entry(branch.unwrap_or_default()).or_default() += 1;
        }
        per_branch
    }

    /// Finished builds report this status (`SUCCESS` or `FAILURE`) and status text
    /// (default: `SUCCESS`, "Success").
    pub fn finish_as(&self, status: &str, text: &str) {
        self.state.lock().unwrap().finish_as = Some((status.into(), text.into()));
    }

    /// Every build queued or running finishes now, as [`finish_as`](Self::finish_as) says.
    pub fn finish_all(&self) {
        let mut state = self.state.lock().unwrap();
        for build in &mut state.builds {
            build.finished = true;
        }
    }

    /// Free agents take every build still queued: they are running now.
    pub fn start_queued(&self) {
        let mut state = self.state.lock().unwrap();
        let queued: Vec<usize> = (0..state.builds.len())
            .filter(|&i| state.build_state(&state.builds[i]) == "queued")
            .collect();
        for i in queued {
            state.builds[i].started = true;
        }
    }

    /// The state of build `id` (`queued`, `running`, `finished`) and its cancel comment.
    pub fn build_state(&self, id: u64) -> (String, Option<String>) {
        let state = self.state.lock().unwrap();
        let build = state
            .builds
            .iter()
            .find(|b| b.id == id)
            .expect("known build");
        (state.build_state(build).to_owned(), build.canceled.clone())
    }

    /// Cancel requests received so far.
    pub fn cancel_calls(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.starts_with("/app/rest/buildQueue/id:"))
            .collect()
    }

    /// Accept requests but never answer them.
    pub fn hang(&self, hang: bool) {
        self.state.lock().unwrap().hang = hang;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Build-queue POSTs received so far.
    pub fn build_calls(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/app/rest/buildQueue")
            .collect()
    }

    /// Waits until at least `n` requests matching `filter` were recorded; panics after 15 s.
    pub async fn wait_for(&self, n: usize, filter: impl Fn(&Recorded) -> bool) -> Vec<Recorded> {
        self.wait_for_within(n, Duration::from_secs(15), filter)
            .await
    }

    /// [`wait_for`](Self::wait_for) with another limit.
    pub async fn wait_for_within(
        &self,
        n: usize,
        limit: Duration,
        filter: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.recorded.notified();
            let matching: Vec<Recorded> =
                self.requests().into_iter().filter(|r| filter(r)).collect();
            if matching.len() >= n {
                return matching;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} matching requests, got {}: {:#?}",
                    matching.len(),
                    self.requests()
                );
            }
        }
    }

    /// Waits for `n` build-queue POSTs.
    pub async fn wait_for_builds(&self, n: usize) -> Vec<Recorded> {
        self.wait_for(n, |r| {
            r.method == "POST" && r.path == "/app/rest/buildQueue"
        })
        .await
    }

    async fn answer(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let recorded = Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            authorization: header("authorization"),
            content_type: header("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        };
        let (hang, post_delay) = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(recorded.clone());
            (state.hang, state.post_delay)
        };
        self.recorded.notify_waiters();
        if hang {
            std::future::pending::<()>().await;
        }
        // TeamCity queues the build when it gets the call; the answer takes a while longer
        // (a client that dies meanwhile never learns that its build was queued).
        let response = self.respond(&recorded);
        if recorded.method == "POST" && !post_delay.is_zero() {
            tokio::time::sleep(post_delay).await;
        }
        response
    }

    fn respond(&self, r: &Recorded) -> Response<Full<Bytes>> {
        let mut state = self.state.lock().unwrap();
        let user = r
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| state.tokens.get(t))
            .cloned();
        let Some(user) = user else {
            return text(401, UNAUTHORIZED_TEXT, None);
        };
        if let Some((status, message, retry_after)) = state.failures.pop_front() {
            return text(status, &message, retry_after.as_deref());
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/app/rest/users/current") => {
                json(serde_json::json!({"username": user, "id": 1}))
            }
            ("POST", "/app/rest/buildQueue") => {
                let Ok(body) = serde_json::from_str::<serde_json::Value>(&r.body) else {
                    return text(400, "Error parsing build queue request body", None);
                };
                let Some(build_type) = body["buildType"]["id"].as_str() else {
                    return text(400, "Build type is not specified", None);
                };
                state.next_build_id += 1;
                let id = state.next_build_id;
                let branch = state
                    .answer_branch
                    .clone()
                    .or_else(|| body["branchName"].as_str().map(str::to_owned));
                state.builds.push(Build {
                    id,
                    build_type: build_type.to_owned(),
                    branch: branch.clone(),
                    comment: body["comment"]["text"].as_str().map(str::to_owned),
                    queued_at: Instant::now(),
                    triggered_by: user.clone(),
                    started: false,
                    canceled: None,
                    finished: false,
                });
                let padding = "x".repeat(std::mem::take(&mut state.pad_next_answer));
                json(serde_json::json!({
                    "id": id,
                    "buildTypeId": build_type,
                    "state": "queued",
                    "branchName": branch,
                    "href": format!("/app/rest/buildQueue/id:{id}"),
                    "webUrl": format!("{}/viewQueued.html?itemId={id}", self.url),
                    "padding": padding,
                }))
            }
            ("POST", "/app/rest/vcs-root-instances/commitHookNotification") => {
                let locator = r.locator().unwrap_or_default();
                let found = state.vcs_root_urls.iter().any(|url| {
                    locator
                        .to_lowercase()
                        .contains(&format!("value:{},", url.to_lowercase()))
                });
                if found {
                    text(
                        202,
                        "Scheduled checking for changes for 1 VCS root instances",
                        None,
                    )
                } else {
                    text(404, "No VCS roots are found for the provided locator", None)
                }
            }
            ("GET", "/app/rest/buildQueue") => {
                let locator = r.locator().unwrap_or_default();
                let dims = dimensions(&locator);
                let build_type = dims.get("buildType").map(|v| unwrap_id(v));
                let builds: Vec<serde_json::Value> = state
                    .builds
                    .iter()
                    .rev()
                    .filter(|b| state.build_state(b) == "queued")
                    .filter(|b| build_type.as_ref().is_none_or(|t| *t == b.build_type))
                    .map(|b| state.build_json(b, &self.url))
                    .collect();
                json(serde_json::json!({"count": builds.len(), "build": builds}))
            }
            ("GET", "/app/rest/builds") => {
                let locator = r.locator().unwrap_or_default();
                let dims = dimensions(&locator);
                let build_type = dims.get("buildType").map(|v| unwrap_id(v));
                let branch = dims.get("branch").map(|v| {
                    let inner = v.trim_start_matches('(').trim_end_matches(')');
                    inner.strip_prefix("name:").map(str::to_owned)
                });
                let wanted_state = dims.get("state").map_or("finished", String::as_str);
                let default_filter = dims.get("defaultFilter").map(String::as_str) != Some("false");
                let count: usize = dims
                    .get("count")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(100);
                let builds: Vec<serde_json::Value> = state
                    .builds
                    .iter()
                    .rev()
                    .filter(|b| build_type.as_ref().is_none_or(|t| *t == b.build_type))
                    .filter(|b| match &branch {
                        Some(Some(name)) => b.branch.as_deref() == Some(name.as_str()),
                        Some(None) => true, // branch:default:any
                        // The default filter: the default branch only.
                        None => !default_filter || b.branch.is_none(),
                    })
                    .filter(|b| wanted_state == "any" || state.build_state(b) == wanted_state)
                    .take(count)
                    .map(|b| state.build_json(b, &self.url))
                    .collect();
                json(serde_json::json!({"count": builds.len(), "build": builds}))
            }
            ("GET", path) if path.starts_with("/app/rest/buildQueue/id:") => {
                let Some(build) = build_by_id(&state.builds, path) else {
                    return not_found(path);
                };
                json(state.build_json(build, &self.url))
            }
            ("POST", path) if path.starts_with("/app/rest/buildQueue/id:") => {
                let Ok(body) = serde_json::from_str::<serde_json::Value>(&r.body) else {
                    return text(400, "Error parsing request body: not JSON", None);
                };
                // TeamCity's buildCancelRequest: `comment` is a string.
                let comment = match body.get("comment") {
                    None => String::new(),
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(_) => {
                        return text(
                            400,
                            "Error parsing request body: Cannot deserialize value of type `java.lang.String` from Object value (token `JsonToken.START_OBJECT`) at \"comment\"",
                            None,
                        );
                    }
                };
                if body.get("readdIntoQueue").and_then(|v| v.as_bool()) == Some(true) {
                    return text(400, "Cannot re-add a queued build into the queue", None);
                }
                let Some(index) = state
                    .builds
                    .iter()
                    .position(|b| Some(b.id) == build_id(path))
                else {
                    return not_found(path);
                };
                if state.build_state(&state.builds[index]) != "queued" {
                    // Not in the queue any more: the queue's locator does not find it.
                    return not_found(path);
                }
                if state.builds[index].triggered_by != user {
                    return text(
                        403,
                        &format!(
                            "You do not have enough permissions to cancel build with id: {}",
                            state.builds[index].id
                        ),
                        None,
                    );
                }
                state.builds[index].canceled = Some(comment);
                let build = state.builds[index].clone();
                json(state.build_json(&build, &self.url))
            }
            _ => text(404, "Not found", None),
        }
    }
}

fn build_id(path: &str) -> Option<u64> {
    path.strip_prefix("/app/rest/buildQueue/id:")?.parse().ok()
}

fn build_by_id<'a>(builds: &'a [Build], path: &str) -> Option<&'a Build> {
    let id = build_id(path)?;
    builds.iter().find(|b| b.id == id)
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    let locator = path.trim_start_matches("/app/rest/buildQueue/");
    text(
        404,
        &format!(
            "Responding with error, status code: 404 (Not Found).\nDetails: jetbrains.buildServer.server.rest.errors.NotFoundException: No queued build found by locator '{locator}'."
        ),
        None,
    )
}

impl State {
    fn build_state(&self, build: &Build) -> &'static str {
        if build.canceled.is_some() || build.finished {
            return "finished";
        }
        if build.started {
            return "running";
        }
        let Some((start, run)) = self.agents else {
            return "queued";
        };
        let waited = build.queued_at.elapsed();
        if waited < start {
            "queued"
        } else if waited < start + run {
            "running"
        } else {
            "finished"
        }
    }

    fn build_json(&self, build: &Build, url: &str) -> serde_json::Value {
        let state = self.build_state(build);
        let web_url = if state == "queued" {
            format!("{url}/viewQueued.html?itemId={}", build.id)
        } else {
            format!("{url}/viewLog.html?buildId={}", build.id)
        };
        let mut value = serde_json::json!({
            "id": build.id,
            "buildTypeId": build.build_type,
            "state": state,
            "branchName": build.branch,
            "webUrl": web_url,
        });
        if let Some(text) = &build.comment {
            value["comment"] = serde_json::json!({"text": text});
        }
        // A build removed from the queue never started, and has no number.
        if state != "queued" && build.canceled.is_none() {
            value["number"] = format!("{}", build.id - 100).into();
        }
        if let Some(text) = &build.canceled {
            value["status"] = "UNKNOWN".into();
            value["statusText"] = "Canceled".into();
            value["canceledInfo"] = serde_json::json!({"text": text});
        } else if state == "finished" {
            let (status, text) = self
                .finish_as
                .clone()
                .unwrap_or_else(|| ("SUCCESS".into(), "Success".into()));
            value["status"] = status.into();
            value["statusText"] = text.into();
        } else if state == "running" {
            value["status"] = "SUCCESS".into();
            value["statusText"] = "Running".into();
        }
        value
    }
}

/// A TeamCity locator's top-level dimensions: `a:(x:1,y:2),b:c` → {a: "(x:1,y:2)", b: "c"}.
fn dimensions(locator: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let (mut depth, mut start) = (0i32, 0);
    let bytes = locator.as_bytes();
    for i in 0..=bytes.len() {
        let at_end = i == bytes.len();
        match if at_end { b',' } else { bytes[i] } {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 => {
                let part = &locator[start..i];
                if let Some((name, value)) = part.split_once(':') {
                    out.insert(name.to_owned(), value.to_owned());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// `(id:X)` → `X`.
fn unwrap_id(value: &str) -> String {
    value
        .trim_start_matches('(')
        .trim_end_matches(')')
        .trim_start_matches("id:")
        .to_owned()
}

fn text(status: u16, body: &str, retry_after: Option<&str>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "text/plain;charset=UTF-8");
    if let Some(value) = retry_after {
        builder = builder.header("retry-after", value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}
