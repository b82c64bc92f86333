//! Scale and idle: start-up time and idle memory; 100 000 jobs queued while TeamCity is down
//! (store size, resident memory, the time `/metrics` and `/readyz` take); restart to ready and
//! to the first dispatched call; drain rate with the limit off.
//!
//! `cargo bench --bench scale` (BB2TC_BENCH_JOBS, default 100000)

mod common;

use common::fake_teamcity::FakeTeamCity;
use common::*;
use std::time::{Duration, Instant};

fn main() {
    let jobs: usize = env_number("BB2TC_BENCH_JOBS", 100_000);
    block_on(run(jobs));
}

async fn run(jobs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    // TeamCity is down: its port is reserved and closed.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tc_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let tc_url = format!("http://{tc_addr}");

    // Idle: a fresh store.
    let (bridge, ready_after) = start_bridge(
        dir.path(),
        &config(&store, &tc_url, "rate_per_second = 0.001\nburst = 1"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "| idle | start-up to ready | {:.0} ms |",
        ready_after.as_secs_f64() * 1000.0
    );
    println!(
        "| idle | resident memory | {:.1} MiB |",
        rss_mib(bridge.pid())
    );

    // Enqueue: deliveries of 100 changes each, 8 at a time.
    register_token(&bridge.url, "bench-token").await;
    let started = Instant::now();
    let http = reqwest::Client::new();
    let per_delivery = 100;
    let deliveries = jobs / per_delivery;
    let mut sent = 0;
    while sent < deliveries {
        let batch: Vec<_> = (sent..(sent + 8).min(deliveries))
            .map(|n| {
                let request = push_request(&http, &bridge.url, n as u64, per_delivery);
                tokio::spawn(request.send())
            })
            .collect();
        for response in batch {
            assert_eq!(response.await.unwrap().unwrap().status(), 202);
        }
        sent = (sent + 8).min(deliveries);
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "| {jobs} queued | enqueue time | {enqueue_secs:.1} s ({:.0} jobs/s) |",
        jobs as f64 / enqueue_secs
    );
    println!(
        "| {jobs} queued | resident memory | {:.1} MiB |",
        rss_mib(bridge.pid())
    );
    println!(
        "| {jobs} queued | store on disk | {:.1} MiB |",
        disk_usage(&store) as f64 / 1048576.0
    );
    for path in ["/metrics", "/readyz"] {
        let (p50, max) = time_requests(&http, &format!("{}{path}", bridge.url), 200).await;
        println!(
            "| {jobs} queued | `GET {path}`, 200 requests | p50 {p50:.2} ms, max {max:.2} ms |"
        );
    }
    bridge.terminate();

    // TeamCity comes up; bb2tc restarts with the limit off.
    let tc = FakeTeamCity::serve(tokio::net::TcpListener::bind(tc_addr).await.unwrap());
    tc.add_token("bench-token", "bench");
    let spawned = Instant::now();
    let (bridge, ready_after) = start_bridge(
        dir.path(),
        &config(
            &store,
            &tc_url,
            "rate_per_second = 1000000.0\nburst = 1000000\nmax_in_flight = 32",
        ),
    );
    println!(
        "| restart with {jobs} queued | start-up to ready | {:.0} ms |",
        ready_after.as_secs_f64() * 1000.0
    );
    let first = tc.wait_for_builds(1).await;
    println!(
        "| restart with {jobs} queued | start-up to first dispatched call | {:.0} ms |",
        (first[0].at.into_std() - spawned).as_secs_f64() * 1000.0
    );
    let drain_started = Instant::now();
    let mut last = 0;
    while last < jobs {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = tc.build_calls().len();
        assert!(
            drain_started.elapsed() < Duration::from_secs(1800),
            "drain stalled at {last}"
        );
    }
    let drain = drain_started.elapsed().as_secs_f64();
    println!(
        "| drain, limit off | rate | {:.0} calls/s ({jobs} in {drain:.1} s) |",
        jobs as f64 / drain
    );
    println!(
        "| drain, limit off | resident memory at the end | {:.1} MiB |",
        rss_mib(bridge.pid())
    );
    bridge.terminate();
}

/// `n` sequential GETs of `url` (each must answer 200): median and largest time in ms.
async fn time_requests(http: &reqwest::Client, url: &str, n: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n - 1])
}
