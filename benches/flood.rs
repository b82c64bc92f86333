//! Memory under an unauthenticated flood (the hardening issue): 1 000 connections each
//! declaring and sending a 1 MiB body to the webhook, at once, with the shipped limits
//! (`max_connections = 1024`, `max_body_bytes = 1 MiB`, `body_budget_bytes = 64 MiB`).
//! Reports bb2tc's peak resident memory during the flood, its resident memory 5 s after
//! the sockets closed, and how long a signed push from another client took meanwhile.
//!
//! `cargo bench --bench flood` (`BB2TC_BENCH_FLOOD`, default 1000 connections;
//! `BB2TC_BENCH_BUDGET` sets `body_budget_bytes`, e.g. 68719476736 for no effective budget)

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: usize = 1024 * 1024;

fn main() {
    let connections: usize = env_number("BB2TC_BENCH_FLOOD", 1000);
    block_on(run(connections));
}

async fn run(connections: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let text = config(
        &store,
        "http://127.0.0.1:1",
        "rate_per_second = 0.001\nburst = 1",
    )
    .replace("max_connections = 4096", "max_connections = 1024");
    let text = match std::env::var("BB2TC_BENCH_BUDGET") {
        Ok(budget) => text.replace(
            "[storage]",
            &format!("body_budget_bytes = {budget}\n[storage]"),
        ),
        Err(_) => text,
    };
    let (bridge, _) = start_bridge(dir.path(), &text);
    let address = bridge.url.trim_start_matches("http://").to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_mib(bridge.pid());

    let pid = bridge.pid();
    let sampler = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let flood_started = Instant::now();
    let mut floods = Vec::new();
    for _ in 0..connections {
        let address = address.clone();
        floods.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
                return 0u16;
            };
            let head = format!(
                "POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\nContent-Length: {BODY}\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let _ = stream.write_all(&vec![b'x'; BODY]).await;
            let mut answer = vec![0; 64];
            let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut answer))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(0);
            String::from_utf8_lossy(&answer[..n])
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0)
        }));
    }
    // A signed push from another client while the flood is under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let push = push_request(&reqwest::Client::new(), &bridge.url, 1, 1)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let push_secs = started.elapsed().as_secs_f64();
    let mut codes = std::collections::BTreeMap::new();
    for flood in floods {
        *codes.entry(flood.await.unwrap()).or_insert(0) += 1;
    }
    let closed_after = flood_started.elapsed().as_secs_f64();
    let peak = sampler.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_mib(bridge.pid());
    println!("| idle before | resident memory | {idle:.1} MiB |");
    println!(
        "| flood of {connections} × 1 MiB | peak resident memory | {peak:.1} MiB (flood answered in {closed_after:.1} s; answers {codes:?}) |"
    );
    println!("| 5 s after the flood | resident memory | {after:.1} MiB |");
    println!(
        "| during the flood | a signed push from another client | {push} in {push_secs:.2} s |"
    );
    bridge.terminate();
}
