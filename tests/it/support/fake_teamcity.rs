//! A fake TeamCity server that behaves as SPEC §6 describes: Bearer checks (401 in plain
//! text), JSON on success, plain-text errors. It records every request and can be told to
//! fail the next calls or to hang.

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

#[derive(Default)]
struct State {
    tokens: HashMap<String, String>,
    requests: Vec<Recorded>,
    failures: VecDeque<(u16, String, Option<String>)>,
    vcs_root_urls: Vec<String>,
    next_build_id: u64,
    answer_branch: Option<String>,
    hang: bool,
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
        let hang = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(recorded.clone());
            state.hang
        };
        self.recorded.notify_waiters();
        if hang {
            std::future::pending::<()>().await;
        }
        self.respond(&recorded)
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
                json(serde_json::json!({
                    "id": id,
                    "buildTypeId": build_type,
                    "state": "queued",
                    "branchName": branch,
                    "href": format!("/app/rest/buildQueue/id:{id}"),
                    "webUrl": format!("{}/viewQueued.html?itemId={id}", self.url),
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
            _ => text(404, "Not found", None),
        }
    }
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
