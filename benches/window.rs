//! A long de-duplication window: deliveries at `BB2TC_BENCH_RATE` per second (default
//! 1 000: below what bb2tc dispatches while it ingests, so jobs are done rather than queued),
//! each dispatched to a TeamCity that answers at once, until the store holds
//! `BB2TC_BENCH_DELIVERIES` deliveries (default 300 000 — 50 min of the 24 h window at 100
//! deliveries/s) with their marks, delivery records and done jobs. Every 10 s: resident
//! memory, store size and rate, to show what grows with the window. Once every job is
//! called and the builds followed to their end (TeamCity no longer has them; at most 2
//! minutes more), a restart:
//! start-up to ready and to the first call, and the marks still answering (a redelivery is a
//! duplicate, a known commit is skipped).
//!
//! `cargo bench --bench window`

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SLICE: Duration = Duration::from_secs(10);
/// How long the builds are given to be followed to their end before the restart.
const SETTLE: Duration = Duration::from_secs(120);

fn main() {
    let deliveries: u64 = env_number("BB2TC_BENCH_DELIVERIES", 300_000);
    let rate: f64 = env_number("BB2TC_BENCH_RATE", 1000.0);
    block_on(run(deliveries, rate));
}

async fn run(target: u64, rate: f64) {
    let (tc_url, calls, polls) = counting_teamcity().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config_text = config(
        &store,
        &tc_url,
        "rate_per_second = 1000000.0\nburst = 1000000\nmax_in_flight = 16",
    );
    let config_path = dir.path().join("bb2tc.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    // Only what is not per delivery is logged (the wrapper keeps the whole log).
    let quiet = "export RUST_LOG=warn,bb2tc=info,bb2tc::http=warn,bb2tc::queue=warn";
    let bridge = Bridge::start(&config_path, quiet);
    register_token(&bridge.url, "bench-token").await;

    println!(
        "| deliveries stored | resident memory MiB | store on disk MiB | req/s in the last 10 s | TeamCity calls |"
    );
    println!("|---|---|---|---|---|");
    let counter = Arc::new(AtomicU64::new(0));
    let mut accepted = 0;
    while accepted < target {
        let slice = load(&bridge.url, 64, SLICE, Some(rate), counter.clone()).await;
        assert_eq!(slice.non_2xx, 0, "every delivery is accepted");
        accepted += slice.requests;
        println!(
            "| {accepted} | {:.1} | {:.1} | {:.0} | {} |",
            rss_mib(bridge.pid()),
            disk_usage(&store) as f64 / (1 << 20) as f64,
            slice.rps(),
            calls.load(Ordering::Relaxed)
        );
    }
    let drained = Instant::now();
    while calls.load(Ordering::Relaxed) < accepted {
        assert!(
            drained.elapsed() < Duration::from_secs(120),
            "jobs not drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "\nall {accepted} jobs called; resident memory after draining: {:.1} MiB",
        rss_mib(bridge.pid())
    );
    // Every build asked about once (and found gone): the window holds history only, as it
    // does long after its builds ran.
    // (bb2tc polls only while no trigger is due, so the polls trail the triggers.)
    let settling = Instant::now();
    while polls.load(Ordering::Relaxed) < accepted && settling.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "builds asked about (and found gone) {:.1} s later: {} of {accepted}; resident memory {:.1} MiB",
        settling.elapsed().as_secs_f64(),
        polls.load(Ordering::Relaxed),
        rss_mib(bridge.pid())
    );
    assert!(bridge.terminate().success());

    // Restart on the full window.
    let started = Instant::now();
    let bridge = Bridge::start(&config_path, quiet);
    let ready = started.elapsed();
    let before = calls.load(Ordering::Relaxed);
    let http = reqwest::Client::new();
    let fresh = counter.fetch_add(1, Ordering::Relaxed);
    let answer = send(&http, &bridge.url, fresh, &format!("bench-{fresh}")).await;
    assert_eq!(answer["jobs"], 1, "{answer}");
    while calls.load(Ordering::Relaxed) == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first_call = started.elapsed();
    // The window still answers: the first delivery again, and its commit under a new id.
    let again = send(&http, &bridge.url, 0, "bench-0").await;
    let known = send(&http, &bridge.url, 0, "redelivered-under-a-new-id").await;
    println!(
        "restart on the full window: ready after {:.0} ms, first call after {:.0} ms, resident memory {:.1} MiB",
        ready.as_secs_f64() * 1000.0,
        first_call.as_secs_f64() * 1000.0,
        rss_mib(bridge.pid())
    );
    println!(
        "delivery 0 again: {}; its commit under a new id: {} job(s), skipped: {}",
        again["result"], known["jobs"], known["skipped"][0]["reason"]
    );
    assert_eq!(again["result"], "duplicate");
    assert_eq!(known["jobs"], 0);
    bridge.terminate();
}

/// Sends delivery `n` (the load generator's body) with delivery id `id`; the answer.
async fn send(http: &reqwest::Client, url: &str, n: u64, id: &str) -> serde_json::Value {
    let response = push_request(http, url, n, 1)
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    // 202 when taken in, 200 for a duplicate (SPEC §5.1).
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

/// A TeamCity that only counts: every `POST /app/rest/buildQueue` is answered at once with a
/// queued build on the branch asked for (as TeamCity's JSON answer has it), anything else
/// with TeamCity's plain-text 404 — so a build followed (`GET /app/rest/buildQueue/id:N`,
/// counted too) is found gone, as one long finished and cleaned up is. The tests' fake
/// records every call, which a million calls would make the benchmark's own memory.
async fn counting_teamcity() -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let (counted, polled) = (calls.clone(), polls.clone());
    fake_server::serve_http(listener, move |head, body| {
        let (calls, polls) = (counted.clone(), polled.clone());
        async move { answer(&head, &body, &calls, &polls) }
    });
    (url, calls, polls)
}

fn answer(
    head: &hyper::http::request::Parts,
    body: &Bytes,
    calls: &AtomicU64,
    polls: &AtomicU64,
) -> hyper::Response<Full<Bytes>> {
    if head.method == hyper::Method::GET && head.uri.path().starts_with("/app/rest/buildQueue/id:")
    {
        polls.fetch_add(1, Ordering::Relaxed);
    }
    if head.method != hyper::Method::POST || head.uri.path() != "/app/rest/buildQueue" {
        return hyper::Response::builder()
            .status(404)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"Not found")))
            .unwrap();
    }
    let asked: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let id = calls.fetch_add(1, Ordering::Relaxed) + 1;
    let build = serde_json::json!({
        "id": id,
        "buildTypeId": asked["buildType"]["id"],
        "state": "queued",
        "branchName": asked["branchName"],
        "href": format!("/app/rest/buildQueue/id:{id}"),
        "webUrl": format!("http://teamcity.example/viewQueued.html?itemId={id}"),
    });
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(build.to_string())))
        .unwrap()
}
