//! Shared by the benchmarks: the real `bb2tc` binary as a child process, a fake TeamCity
//! (the tests' own), a keep-alive HTTP/1 load generator, and /proc readings.
#![allow(dead_code)] // each benchmark uses part of this

#[path = "../../tests/it/support/fake_server.rs"]
pub mod fake_server;
#[path = "../../tests/it/support/fake_teamcity.rs"]
pub mod fake_teamcity;
#[path = "../../tests/it/support/process.rs"]
pub mod process;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-secret";
pub const ADMIN_TOKEN: &str = "bench-admin";
pub const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A config for one Data Center source `dc` and one server `main` at `tc_url`.
pub fn config(store: &Path, tc_url: &str, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_connections = 4096
[storage]
path = {store:?}
master_key = "{MASTER_KEY}"
[admin]
token = "{ADMIN_TOKEN}"
[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["{SECRET}"]
[[teamcity]]
id = "main"
url = "{tc_url}"
{server_extra}
[[route]]
repository = "*"
teamcity = "main"
build_types = ["Bench_Build"]
"#,
        store = store.display().to_string()
    )
}

/// A running `bb2tc serve` (the tests' own child-process wrapper).
pub use process::Bridge;

/// Writes `config_text` to `dir/bb2tc.toml` and starts bb2tc with it; also returns the time
/// from spawn to its "bb2tc ready" line.
pub fn start_bridge(dir: &Path, config_text: &str) -> (Bridge, Duration) {
    let path = dir.join("bb2tc.toml");
    std::fs::write(&path, config_text).unwrap();
    let started = Instant::now();
    let bridge = Bridge::start(&path, "export RUST_LOG=warn,bb2tc=info");
    (bridge, started.elapsed())
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time a process has used (user + system), in seconds (Linux: `/proc/<pid>/stat`,
/// in clock ticks of 1/100 s).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes used by the files under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.is_dir() {
                todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// A Data Center push of `changes` distinct branches, made distinct by `n`.
pub fn push_body(n: u64, changes: usize) -> Vec<u8> {
    let changes: Vec<serde_json::Value> = (0..changes)
        .map(|c| {
            serde_json::json!({
                "ref": {"id": format!("refs/heads/b{n}-{c}"), "displayId": format!("b{n}-{c}"), "type": "BRANCH"},
                "refId": format!("refs/heads/b{n}-{c}"),
                "fromHash": "0".repeat(40),
                "toHash": format!("{:016x}{:08x}{:016x}", n | 1 << 63, c, n),
                "type": "UPDATE",
            })
        })
        .collect();
    serde_json::json!({
        "eventKey": "repo:refs_changed",
        "date": "2026-11-28T10:00:00+0000",
        "actor": {"name": "bench", "slug": "bench", "displayName": "Bench"},
        "repository": {"slug": "repo", "project": {"key": "PROJ"},
            "links": {"clone": [{"href": "https://bitbucket.example.com/scm/proj/repo.git", "name": "http"}]}},
        "changes": changes,
    })
    .to_string()
    .into_bytes()
}

/// One signed delivery request.
pub fn delivery(n: u64, changes: usize) -> (Vec<u8>, String) {
    let body = push_body(n, changes);
    let signature = bb2tc::bitbucket::signature::sign(SECRET.as_bytes(), &body);
    (body, signature)
}

/// The signed `repo:refs_changed` POST of delivery `n` with `changes` changes to a bridge
/// at `url`.
pub fn push_request(
    http: &reqwest::Client,
    url: &str,
    n: u64,
    changes: usize,
) -> reqwest::RequestBuilder {
    let (body, signature) = delivery(n, changes);
    http.post(format!("{url}/hooks/bitbucket/dc"))
        .header("x-event-key", "repo:refs_changed")
        .header("x-hub-signature", signature)
        .body(body)
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub requests: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u64>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index] as f64 / 1000.0
    }
}

/// Sends signed deliveries over `lanes` keep-alive connections for `duration`; with
/// `rate`, paced to that many requests per second in total (open loop per lane).
pub async fn load(
    url: &str,
    lanes: usize,
    duration: Duration,
    rate: Option<f64>,
    counter: Arc<AtomicU64>,
) -> LoadResult {
    let addr = url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let addr = addr.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let interval = rate.map(|r| Duration::from_secs_f64(lanes as f64 / r));
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(lane as f64 / lanes as f64));
            let (mut done, mut bad, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                    next += interval;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (body, signature) = delivery(n, 1);
                let request = hyper::Request::post("/hooks/bitbucket/dc")
                    .header("host", "bench")
                    .header("x-event-key", "repo:refs_changed")
                    .header("x-hub-signature", signature)
                    .header("x-request-id", format!("bench-{n}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let sent = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                let ok = response.status().is_success();
                let _ = response.into_body().collect().await;
                latencies.push(sent.elapsed().as_micros() as u64);
                done += 1;
                if !ok {
                    bad += 1;
                }
            }
            (done, bad, latencies)
        }));
    }
    let mut result = LoadResult {
        requests: 0,
        non_2xx: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (done, bad, latencies) = task.await.unwrap();
        result.requests += done;
        result.non_2xx += bad;
        result.latencies_us.extend(latencies);
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// A number from the environment variable `name`, or `default` when unset or unreadable.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs a benchmark on tokio with two workers (the machine's two cores).
pub fn block_on<F: std::future::Future>(benchmark: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(benchmark)
}

/// The median of some figures.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Registers the bench user's token through the admin API.
pub async fn register_token(url: &str, token: &str) {
    let response = reqwest::Client::new()
        .post(format!("{url}/api/v1/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"user": "bench", "teamcity": "main", "token": token, "verify": false}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}
