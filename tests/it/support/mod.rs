//! Test helpers: a real bb2tc on 127.0.0.1:0 with a real sled store in a temp dir, a fake
//! TeamCity, signed deliveries and payload builders.

pub mod browser;
pub mod fake_bitbucket;
pub mod fake_server;
pub mod fake_teamcity;
pub mod page_client;
pub mod postgres;
pub mod process;

use bb2tc::config::Config;
pub use fake_bitbucket::{Account, FakeBitbucket};
pub use fake_teamcity::FakeTeamCity;
pub use page_client::PageClient;
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// A fixed master key, so a test can restart the bridge on the same store.
pub const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// The secret of the published Data Center vector (`dc-refs_changed-branch-update.json`).
pub const DC_SECRET: &str = "password";
/// The secret of the second published Data Center vector (`dc-pr-comment-added-signed.json`).
pub const DC_SECRET_2: &str = "mysecret";
/// The secret of the published Cloud vector (`cloud-push-branch-create-signed.json`).
pub const CLOUD_SECRET: &str = "Gkvl$k$wyNpQAF42";

/// Writes `<dir>/bb2tc.toml` for the real binary: its store in `<dir>/data` (with a generated
/// key file), listening on 127.0.0.1:0, then `body`. Returns the config's path and the store's.
pub fn write_process_config(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let store = dir.join("data");
    let config_path = dir.join("bb2tc.toml");
    let text = format!(
        "[storage]\npath = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n{body}",
        store.display().to_string()
    );
    std::fs::write(&config_path, text).unwrap();
    (config_path, store)
}

/// The store a black-box test runs on: both, for the delivery and token tests.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// A fresh sled store in a temp dir.
    Sled,
    /// A fresh database on the test PostgreSQL (`support::postgres`).
    Postgres,
}

/// Declares each `async fn name(backend: Backend)` as two tests, `name::sled` and
/// `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    super::$name($crate::support::Backend::Sled).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}

/// The `[storage]` table of a bridge on the PostgreSQL database at `url`.
pub fn postgres_storage(url: &str) -> String {
    format!(
        "[storage]\nbackend = \"postgres\"\nurl = {url:?}\nmax_connections = 8\nmaster_key = \"{MASTER_KEY}\"\n"
    )
}

/// Registers TeamCity token `token` for Data Center user `user` on server `main` through the
/// admin API of a bridge at `url` (the real binary, for example), verified.
pub async fn register_token_at(url: &str, user: &str, token: &str) {
    let registered = reqwest::Client::new()
        .post(format!("{url}/api/v1/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &serde_json::json!({"source": "dc", "user": user, "teamcity": "main", "token": token}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
}

/// Data Center push `n`: branch `b{n}` to commit `sha(n)` by `jdoe`, signed with
/// [`DC_SECRET`]; the body and its signature.
pub fn signed_push(n: u32) -> (Vec<u8>, String) {
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[(&format!("refs/heads/b{n}"), &sha(n), "UPDATE")],
    );
    let signature = bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body);
    (body, signature)
}

/// Sends [`signed_push`] `n` (request id `{prefix}-{n}`) until a bridge answers it with
/// something other than 503, trying `urls` in turn from the `first`: a connection error
/// means that bridge was killed, and Bitbucket would redeliver the same request id (a load
/// balancer, to another instance). Returns the answer's status.
pub async fn deliver_push(
    http: &reqwest::Client,
    urls: &std::sync::Mutex<Vec<String>>,
    first: usize,
    prefix: &str,
    n: u32,
) -> u16 {
    let (body, signature) = signed_push(n);
    for attempt in 0..2000 {
        let target = {
            let urls = urls.lock().unwrap();
            urls[(first + attempt) % urls.len()].clone()
        };
        let sent = http
            .post(format!("{target}/hooks/bitbucket/dc"))
            .header("X-Event-Key", "repo:refs_changed")
            .header("X-Hub-Signature", &signature)
            .header("X-Request-Id", format!("{prefix}-{n}"))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status() != 503 => return response.status().as_u16(),
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    panic!("push {n} was never answered");
}

/// `GET {url}/api/v1{path}` with the admin token: the JSON answer.
pub async fn admin_get(url: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{url}/api/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// How many jobs of a bridge at `url` are in any of `states`.
pub async fn jobs_in(url: &str, states: &[&str]) -> usize {
    let mut count = 0;
    for state in states {
        let jobs = admin_get(url, &format!("/jobs?state={state}&limit=10000")).await;
        count += jobs["jobs"].as_array().unwrap().len();
    }
    count
}

/// Waits (at most 30 s) until the bridge at `url` has no pending, in-flight or dead job.
pub async fn wait_until_drained(url: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while jobs_in(url, &["pending", "inflight", "dead"]).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Every accepted push's branch was built exactly once, and no branch twice.
pub fn assert_built_exactly_once(tc: &FakeTeamCity, accepted_branches: &[String]) {
    let per_branch = tc.builds_per_branch();
    for branch in accepted_branches {
        assert_eq!(
            per_branch.get(branch),
            Some(&1),
            "the push to {branch} was lost or doubled"
        );
    }
    assert!(
        per_branch.values().all(|&count| count == 1),
        "a push was built twice: {per_branch:?}"
    );
}

/// Fails if any file under `dir` contains one of `secrets`.
pub fn assert_no_file_holds(dir: &Path, secrets: &[&str]) {
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret}",
                path.display()
            );
        }
    }
}

/// A fixture from `tests/fixtures/bitbucket/`, byte for byte.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bitbucket")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The standard config: a Data Center source `dc` and a Cloud source `cloud`, one TeamCity
/// server `main`, a route per source. `extra` is appended (more servers and routes).
pub fn standard_config(tc_url: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["rotated-old", "{DC_SECRET}", "{DC_SECRET_2}"]

[[bitbucket]]
id = "cloud"
kind = "cloud"
secrets = ["{CLOUD_SECRET}"]

[[teamcity]]
id = "main"
url = "{tc_url}"
rate_per_second = 1000.0
burst = 1000
retry_schedule_secs = [1, 1]
timeout_secs = 5

[[route]]
source = "dc"
repository = "*"
teamcity = "main"
build_types = ["Proj_Build"]

[[route]]
source = "cloud"
repository = "*"
teamcity = "main"
build_types = ["Cloud_Build"]
{extra}
"#
    )
}

/// The token page's world: a fake TeamCity, a fake Bitbucket with these accounts, and a
/// bridge whose Data Center source `dc` and Cloud source `cloud` sign in against it.
///
/// | who | Bitbucket token | TeamCity token |
/// |---|---|---|
/// | Data Center `jdoe` ("Jane Doe") | `bb-jdoe` | `tc-jdoe` |
/// | Data Center `mallory` | `bb-mallory` | `tc-mallory` |
/// | Data Center `j.müller` ("Jürgen Müller") | `bb-muller` | — |
/// | Data Center service user `deploy-bot` | `bb-bot` | — |
/// | Data Center service user `repo-token-bot`, may not look users up | `bb-repo-bot` | — |
/// | Data Center deactivated `left` | `bb-left` | — |
/// | Cloud "Ada Lovelace", `ada@example.com` | `bb-cloud-ada` | `tc-ada` |
/// | Cloud app user `bot@example.com` | `bb-cloud-bot` | — |
///
/// A second TeamCity server, `offline`, cannot be reached.
pub struct PageWorld {
    pub app: TestApp,
    pub teamcity: FakeTeamCity,
    pub bitbucket: FakeBitbucket,
}

pub const ADA_UUID: &str = "{a1a1a1a1-2222-3333-4444-555555555555}";

impl PageWorld {
    /// Starts the world; `web` is the config's `[web]` table body.
    pub async fn start(web: &str) -> Self {
        Self::start_on(None, web).await
    }

    /// [`start`](Self::start), on the PostgreSQL database at `postgres` when given.
    pub async fn start_on(postgres: Option<&str>, web: &str) -> Self {
        let teamcity = FakeTeamCity::start().await;
        for (token, user) in [
            ("tc-jdoe", "jdoe"),
            ("tc-mallory", "mallory"),
            ("tc-ada", "ada"),
        ] {
            teamcity.add_token(token, user);
        }
        let bitbucket = FakeBitbucket::start().await;
        let mut service = Account::datacenter("deploy-bot", 4, "Deploy bot");
        service.kind = "SERVICE".into();
        let mut repository_bot = Account::datacenter("repo-token-bot", 6, "Repository token");
        repository_bot.kind = "SERVICE".into();
        repository_bot.may_list_users = false;
        let mut left = Account::datacenter("left", 5, "Gone Away");
        left.active = false;
        let mut cloud_bot = Account::cloud(
            "{b0b0b0b0-0000-0000-0000-000000000000}",
            "bot@example.com",
            "Bot",
        );
        cloud_bot.kind = "app_user".into();
        for (account, token) in [
            (Account::datacenter("jdoe", 1, "Jane Doe"), "bb-jdoe"),
            (Account::datacenter("mallory", 3, "Mallory"), "bb-mallory"),
            (
                Account::datacenter("j.müller", 2, "Jürgen Müller"),
                "bb-muller",
            ),
            (service, "bb-bot"),
            (repository_bot, "bb-repo-bot"),
            (left, "bb-left"),
            (
                Account::cloud(ADA_UUID, "ada@example.com", "Ada Lovelace"),
                "bb-cloud-ada",
            ),
            (cloud_bot, "bb-cloud-bot"),
        ] {
            bitbucket.add_account(account, token);
        }
        let config = page_config(&bitbucket.url, &teamcity.url, web);
        let app = match postgres {
            Some(url) => TestApp::spawn_postgres(&config, url).await,
            None => TestApp::spawn(&config).await,
        };
        Self {
            app,
            teamcity,
            bitbucket,
        }
    }

    /// A fresh cookie-keeping client for this bridge.
    pub fn client(&self) -> PageClient {
        PageClient::new(&self.app.url)
    }

    /// The tokens the admin API lists.
    pub async fn api_tokens(&self) -> Vec<serde_json::Value> {
        self.app.api_tokens().await
    }
}

/// The token page's config: sources `dc` and `cloud` signing in against the Bitbucket at
/// `bitbucket` (OAuth client of the fake), servers `main` at `teamcity` and an unreachable
/// `offline`, a route for `dc`; `web` is the `[web]` table's body.
pub fn page_config(bitbucket: &str, teamcity: &str, web: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[web]
{web}

[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["{DC_SECRET}"]
url = "{bb}"
oauth_client_id = "{client}"
oauth_client_secret = "{secret}"

[[bitbucket]]
id = "cloud"
kind = "cloud"
secrets = ["{CLOUD_SECRET}"]
url = "{bb}"
oauth_client_id = "{client}"
oauth_client_secret = "{secret}"

[[teamcity]]
id = "main"
url = "{tc}"
rate_per_second = 1000.0
burst = 1000
timeout_secs = 5

[[teamcity]]
id = "offline"
url = "http://127.0.0.1:1"
timeout_secs = 2

[[route]]
source = "dc"
repository = "*"
teamcity = "main"
build_types = ["Proj_Build"]
"#,
        bb = bitbucket,
        tc = teamcity,
        client = fake_bitbucket::CLIENT_ID,
        secret = fake_bitbucket::CLIENT_SECRET,
    )
}

/// A running bridge.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    store_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), bb2tc::Error>>>,
    /// Set when it runs as the real binary, in a process of its own.
    process: Option<process::Bridge>,
}

impl TestApp {
    /// Starts bb2tc with `config_toml` (its `[storage]` is set here) on a fresh store.
    pub async fn spawn(config_toml: &str) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let store_dir = temp.path().join("data");
        let mut app = Self::spawn_on(config_toml, &store_dir).await;
        app._temp = Some(temp);
        app
    }

    /// Starts bb2tc on an existing store directory.
    pub async fn spawn_on(config_toml: &str, store_dir: &Path) -> Self {
        let storage = format!(
            "[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\n",
            store_dir.display().to_string()
        );
        Self::spawn_with(&storage, config_toml, store_dir).await
    }

    /// Starts bb2tc with `config_toml` on a fresh store of `backend`; `None` (the test
    /// skips, with a notice) when that is PostgreSQL and there is none.
    pub async fn spawn_backend(backend: Backend, config_toml: &str) -> Option<Self> {
        match backend {
            Backend::Sled => Some(Self::spawn(config_toml).await),
            Backend::Postgres => {
                let url = postgres::database("a test on PostgreSQL").await?;
                Some(Self::spawn_postgres(config_toml, &url).await)
            }
        }
    }

    /// Starts bb2tc on the PostgreSQL database at `url`.
    pub async fn spawn_postgres(config_toml: &str, url: &str) -> Self {
        Self::spawn_with(&postgres_storage(url), config_toml, Path::new("")).await
    }

    async fn spawn_with(storage: &str, config_toml: &str, store_dir: &Path) -> Self {
        let text = format!("{storage}{config_toml}");
        let config = Config::from_toml_str(&text, &|_| None).expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bb2tc::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            http: reqwest::Client::new(),
            store_dir: store_dir.to_owned(),
            _temp: None,
            stop: Some(stop),
            task: Some(task),
            process: None,
        }
    }

    /// [`spawn_on`](Self::spawn_on), but as the real binary in a process of its own,
    /// started through `sh` with `prelude` first (e.g. an `export` of what only that
    /// process may see, such as `BB2TC_TEST_CLOCK_OFFSET_MS`).
    pub async fn spawn_process_on(config_toml: &str, store_dir: &Path, prelude: &str) -> Self {
        let text = format!(
            "[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\n[server]\nlisten = \"127.0.0.1:0\"\n{config_toml}",
            store_dir.display().to_string()
        );
        let config_path = store_dir.with_extension("toml");
        std::fs::write(&config_path, text).unwrap();
        let prelude = format!("{prelude}\nexport RUST_LOG=info");
        let bridge =
            tokio::task::spawn_blocking(move || process::Bridge::start(&config_path, &prelude))
                .await
                .unwrap();
        Self {
            url: bridge.url.clone(),
            http: reqwest::Client::new(),
            store_dir: store_dir.to_owned(),
            _temp: None,
            stop: None,
            task: None,
            process: Some(bridge),
        }
    }

    /// Stops the bridge as SIGTERM would and waits for it; returns the store's temp dir so
    /// the next bridge can reuse it.
    pub async fn stop(mut self) -> (Option<tempfile::TempDir>, PathBuf) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        if let Some(bridge) = self.process.take() {
            let (status, log) = tokio::task::spawn_blocking(move || bridge.terminate_and_log())
                .await
                .unwrap();
            assert!(status.success(), "bb2tc did not stop cleanly: {log}");
        }
        (self._temp.take(), self.store_dir.clone())
    }

    /// POSTs a webhook: signs it with `secret` when given.
    pub async fn webhook(
        &self,
        source: &str,
        event: Option<&str>,
        body: &[u8],
        secret: Option<&str>,
        request_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/hooks/bitbucket/{source}", self.url))
            .body(body.to_vec());
        if let Some(event) = event {
            request = request.header("X-Event-Key", event);
        }
        if let Some(secret) = secret {
            request = request.header(
                "X-Hub-Signature",
                bb2tc::bitbucket::signature::sign(secret.as_bytes(), body),
            );
        }
        if let Some(id) = request_id {
            request = request.header("X-Request-Id", id);
        }
        request.send().await.unwrap()
    }

    /// A signed Data Center push.
    pub async fn dc_push(&self, body: &[u8], request_id: &str) -> (u16, serde_json::Value) {
        let response = self
            .webhook(
                "dc",
                Some("repo:refs_changed"),
                body,
                Some(DC_SECRET),
                Some(request_id),
            )
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Calls the admin API.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// The tokens the admin API lists.
    pub async fn api_tokens(&self) -> Vec<serde_json::Value> {
        let answer: serde_json::Value = self
            .admin(reqwest::Method::GET, "/tokens")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["tokens"].as_array().unwrap().clone()
    }

    /// The newest `limit` deliveries the admin API lists.
    pub async fn api_deliveries(&self, limit: usize) -> Vec<serde_json::Value> {
        self.api_list(&format!("/deliveries?limit={limit}"), "deliveries")
            .await
    }

    /// The jobs the admin API lists for `query` (e.g. `?state=dead`).
    pub async fn api_jobs(&self, query: &str) -> Vec<serde_json::Value> {
        self.api_list(&format!("/jobs{query}"), "jobs").await
    }

    /// `GET /api/v1{path}`: checks the status; the array under `key`.
    async fn api_list(&self, path: &str, key: &str) -> Vec<serde_json::Value> {
        let response = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body[key].as_array().unwrap().clone()
    }

    /// `GET /metrics`: checks the status and the Prometheus content type; the text.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        response.text().await.unwrap()
    }

    /// Registers a token through the admin API (verified unless `verify` is false).
    pub async fn register_token(
        &self,
        source: &str,
        user: &str,
        teamcity: &str,
        token: &str,
    ) -> serde_json::Value {
        let response = self
            .admin(reqwest::Method::POST, "/tokens")
            .json(&serde_json::json!({"source": source, "user": user, "teamcity": teamcity, "token": token}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "registration failed: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A minimal Data Center `repo:refs_changed` body.
pub fn dc_payload(user: &str, repository: &str, changes: &[(&str, &str, &str)]) -> Vec<u8> {
    let (project, slug) = repository.split_once('/').unwrap();
    let changes: Vec<serde_json::Value> = changes
        .iter()
        .map(|(reference, to_hash, kind)| {
            serde_json::json!({
                "ref": {"id": reference, "displayId": reference.rsplit('/').next(),
                        "type": if reference.starts_with("refs/tags/") { "TAG" } else { "BRANCH" }},
                "refId": reference,
                "fromHash": "0".repeat(40),
                "toHash": to_hash,
                "type": kind,
            })
        })
        .collect();
    serde_json::json!({
        "eventKey": "repo:refs_changed",
        "date": "2026-11-28T10:00:00+0000",
        "actor": {"name": user, "slug": user.to_lowercase(), "displayName": user},
        "repository": {
            "slug": slug,
            "project": {"key": project},
            "links": {"clone": [
                {"href": format!("ssh://git@bitbucket.example.com:7999/{}/{slug}.git", project.to_lowercase()), "name": "ssh"},
                {"href": format!("https://bitbucket.example.com/scm/{}/{slug}.git", project.to_lowercase()), "name": "http"},
            ]},
        },
        "changes": changes,
    })
    .to_string()
    .into_bytes()
}

/// A 40-hex sha, distinct per `n` and never git's all-zero "no commit".
pub fn sha(n: u32) -> String {
    format!("{:08x}", n | 0x8000_0000).repeat(5)
}

/// The text of a build request's comment before its job mark, checking that the comment
/// ends with one (SPEC §6): `… (bb2tc job <8 hex store id>-<job id>)`.
pub fn comment_without_mark(request: &serde_json::Value) -> String {
    let text = request["comment"]["text"].as_str().expect("a comment");
    let (push, mark) = text
        .rsplit_once(" (bb2tc job ")
        .unwrap_or_else(|| panic!("no job mark in {text:?}"));
    let mark = mark.strip_suffix(')').expect("mark ends the comment");
    let (store, job) = mark.split_once('-').expect("store id and job id");
    assert!(
        store.len() == 8 && store.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
    assert!(job.parse::<u64>().is_ok(), "{text}");
    push.to_owned()
}
