//! Ingest: signed `repo:refs_changed` deliveries with distinct commits against bb2tc (each 202
//! durably queued, a fake TeamCity answering at once) and against a bare hyper server that
//! only reads the body, checks the HMAC and answers 202 — same machine, same run, alternating.
//!
//! `cargo bench --bench ingest` (BB2TC_BENCH_SECS per run, default 5; 3 rounds).

mod common;

use bytes::Bytes;
use common::fake_teamcity::FakeTeamCity;
use common::*;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

const LANES: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 3;

fn main() {
    if std::env::var_os("BB2TC_BENCH_BASELINE").is_some() {
        return baseline_server();
    }
    let secs: u64 = std::env::var("BB2TC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(Duration::from_secs(secs)));
}

async fn run(duration: Duration) {
    let tc = FakeTeamCity::start().await;
    tc.add_token("bench-token", "bench");
    let dir = tempfile::tempdir().unwrap();
    // BB2TC_BENCH_SERVER replaces the [[teamcity]] settings, e.g. "rate_per_second = 0.001"
    // to measure ingest alone, without dispatching.
    let server = std::env::var("BB2TC_BENCH_SERVER").unwrap_or_else(|_| {
        "rate_per_second = 1000000.0\nburst = 1000000\nmax_in_flight = 16".into()
    });
    let (bridge, _) = start_bridge(
        dir.path(),
        &config(&dir.path().join("data"), &tc.url, &server),
    );
    register_token(&bridge.url, "bench-token").await;
    let mut baseline = Command::new(std::env::current_exe().unwrap())
        .env("BB2TC_BENCH_BASELINE", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(baseline.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let baseline_url = format!("http://{}", line.trim());

    let counter = Arc::new(AtomicU64::new(0));
    let mut results: BTreeMap<(usize, &str), Vec<LoadResult>> = BTreeMap::new();
    let mut accepted_by_bridge = 0;
    for round in 0..ROUNDS {
        for lanes in LANES {
            for (name, url) in [("baseline", &baseline_url), ("bb2tc", &bridge.url)] {
                let result = load(url, lanes, duration, None, counter.clone()).await;
                eprintln!(
                    "round {round} lanes {lanes:>2} {name:>8}: {:>8.0} req/s p50 {:.2} ms p99 {:.2} ms non-2xx {}",
                    result.rps(),
                    result.percentile_ms(0.5),
                    result.percentile_ms(0.99),
                    result.non_2xx
                );
                if name == "bb2tc" {
                    accepted_by_bridge += result.requests - result.non_2xx;
                }
                results.entry((lanes, name)).or_default().push(result);
            }
        }
    }
    println!(
        "\n| connections | baseline req/s | bb2tc req/s | ratio | baseline p50 / p99 ms | bb2tc p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    let mut max_bridge: f64 = 0.0;
    for lanes in LANES {
        let figures = |name: &str| {
            let runs = &results[&(lanes, name)];
            (
                median(runs.iter().map(LoadResult::rps).collect()),
                median(runs.iter().map(|r| r.percentile_ms(0.5)).collect()),
                median(runs.iter().map(|r| r.percentile_ms(0.99)).collect()),
            )
        };
        let (b_rps, b50, b99) = figures("baseline");
        let (x_rps, x50, x99) = figures("bb2tc");
        max_bridge = max_bridge.max(x_rps);
        println!(
            "| {lanes} | {b_rps:.0} | {x_rps:.0} | {:.2} | {b50:.2} / {b99:.2} | {x50:.2} / {x99:.2} |",
            x_rps / b_rps
        );
    }

    let half = max_bridge / 2.0;
    let paced = load(&bridge.url, 64, duration, Some(half), counter.clone()).await;
    accepted_by_bridge += paced.requests - paced.non_2xx;
    println!(
        "\nbb2tc at half its maximum rate ({half:.0} req/s offered, {:.0} achieved, 64 connections): p50 {:.2} ms, p99 {:.2} ms",
        paced.rps(),
        paced.percentile_ms(0.5),
        paced.percentile_ms(0.99)
    );

    // Every 202 was a durably queued job: the bridge's own count agrees.
    let metrics = reqwest::get(format!("{}/metrics", bridge.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let enqueued: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"bb2tc_jobs_enqueued_total{server="main"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!("202 answers: {accepted_by_bridge}; jobs durably enqueued: {enqueued}");
    let _ = baseline.kill();
    let _ = baseline.wait();
    bridge.terminate();
}

/// The bare hyper baseline: read the body, check the HMAC, answer 202.
fn baseline_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let secrets = Arc::new(vec![bb2tc::ids::Secret::new(SECRET)]);
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let secrets = secrets.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let secrets = secrets.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = Limited::new(body, 1 << 20)
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let signature =
                                parts.headers.get("x-hub-signature").map(|v| v.as_bytes());
                            let status = match bb2tc::bitbucket::signature::verify(
                                &secrets, signature, &body,
                            ) {
                                Ok(()) => 202,
                                Err(_) => 401,
                            };
                            let response = hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(br#"{"result":"accepted"}"#)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
