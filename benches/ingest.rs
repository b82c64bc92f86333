//! Ingest: signed `repo:refs_changed` deliveries with distinct commits against three servers
//! — same machine, same load generator, same run, alternating:
//! - `bare`: a hyper server that reads the body, checks the HMAC and answers 202;
//! - `durable`: the minimal durable receiver of SPEC §11 — the same, but it appends the body
//!   to a file and answers after a group-committed `fdatasync` (one per group of concurrent
//!   requests);
//! - `bb2tc` (each 202 durably queued, a fake TeamCity answering its calls at once).
//!
//! `cargo bench --bench ingest` (BB2TC_BENCH_SECS per run, default 5; 3 rounds).
//! `BB2TC_BENCH_OTHER=<path to a bb2tc binary>` adds that build as a fourth contender, in
//! the same rounds (two commits side by side on this noisy VM); `BB2TC_BENCH_LANES=16,64`
//! picks the connection counts.

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

const LANES: &str = "1,16,64";
const ROUNDS: usize = 3;

fn main() {
    match std::env::var("BB2TC_BENCH_BASELINE").as_deref() {
        Ok("bare") => return baseline_server(None),
        Ok(path) if !path.is_empty() => return baseline_server(Some(path.into())),
        _ => {}
    }
    let secs: u64 = env_number("BB2TC_BENCH_SECS", 5);
    block_on(run(Duration::from_secs(secs)));
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
    // Another build, side by side in the same rounds, with a store of its own.
    let other_dir = tempfile::tempdir().unwrap();
    let other = std::env::var("BB2TC_BENCH_OTHER").ok().map(|binary| {
        let path = other_dir.path().join("bb2tc.toml");
        let text = config(&other_dir.path().join("data"), &tc.url, &server);
        std::fs::write(&path, text).unwrap();
        Bridge::start_binary(&binary, &path, "export RUST_LOG=warn,bb2tc=info")
    });
    if let Some(other) = &other {
        register_token(&other.url, "bench-token").await;
    }
    let lanes_list: Vec<usize> = std::env::var("BB2TC_BENCH_LANES")
        .unwrap_or_else(|_| LANES.into())
        .split(',')
        .map(|n| n.trim().parse().expect("BB2TC_BENCH_LANES: numbers"))
        .collect();
    let (mut bare, bare_url) = start_baseline("bare");
    let log = dir.path().join("durable-receiver.log");
    let (mut durable, durable_url) = start_baseline(log.to_str().unwrap());

    let counter = Arc::new(AtomicU64::new(0));
    if std::env::var_os("BB2TC_BENCH_SERVER").is_none() {
        push_to_call(&bridge.url, &tc, &counter).await;
    }
    let mut results: BTreeMap<(usize, &str), Vec<LoadResult>> = BTreeMap::new();
    let mut cpu_us: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut accepted_by_bridge = 0;
    // The intake log's backlog (deliveries durable, not yet in sled), sampled while bb2tc runs.
    let backlog_peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(sample_backlog(
        bridge.url.clone(),
        backlog_peak.clone(),
        sampling.clone(),
    ));
    for round in 0..ROUNDS {
        for &lanes in &lanes_list {
            let mut contenders = vec![
                ("bare", &bare_url, bare.id()),
                ("durable", &durable_url, durable.id()),
                ("bb2tc", &bridge.url, bridge.pid()),
            ];
            if let Some(other) = &other {
                contenders.push(("other", &other.url, other.pid()));
            }
            for (name, url, pid) in contenders {
                sampling.store(name == "bb2tc", std::sync::atomic::Ordering::Relaxed);
                let cpu_before = cpu_seconds(pid);
                let result = load(url, lanes, duration, None, counter.clone()).await;
                let cpu = cpu_seconds(pid) - cpu_before;
                sampling.store(false, std::sync::atomic::Ordering::Relaxed);
                // The server's own CPU per request (steadier than req/s on a shared VM).
                cpu_us
                    .entry((lanes, name))
                    .or_default()
                    .push(cpu * 1e6 / result.requests.max(1) as f64);
                eprintln!(
                    "round {round} lanes {lanes:>2} {name:>8}: {:>8.0} req/s p50 {:.2} ms p99 {:.2} ms non-2xx {} cpu {:.0} µs/req",
                    result.rps(),
                    result.percentile_ms(0.5),
                    result.percentile_ms(0.99),
                    result.non_2xx,
                    cpu * 1e6 / result.requests.max(1) as f64
                );
                if name == "bb2tc" {
                    accepted_by_bridge += result.requests - result.non_2xx;
                }
                results.entry((lanes, name)).or_default().push(result);
            }
        }
    }
    let other_columns = if other.is_some() {
        (
            " other req/s | other / durable | other p50 / p99 ms |",
            "---|---|---|",
        )
    } else {
        ("", "")
    };
    println!(
        "\n| connections | bare req/s | durable req/s | bb2tc req/s | bb2tc / durable (target ≥ 0.5) | bb2tc / bare | bare p50 / p99 ms | durable p50 / p99 ms | bb2tc p50 / p99 ms |{}",
        other_columns.0
    );
    println!("|---|---|---|---|---|---|---|---|---|{}", other_columns.1);
    let mut max_bridge: f64 = 0.0;
    for &lanes in &lanes_list {
        let figures = |name: &str| {
            let runs = &results[&(lanes, name)];
            (
                median(runs.iter().map(LoadResult::rps).collect()),
                median(runs.iter().map(|r| r.percentile_ms(0.5)).collect()),
                median(runs.iter().map(|r| r.percentile_ms(0.99)).collect()),
            )
        };
        let (b_rps, b50, b99) = figures("bare");
        let (d_rps, d50, d99) = figures("durable");
        let (x_rps, x50, x99) = figures("bb2tc");
        max_bridge = max_bridge.max(x_rps);
        let other_figures = if other.is_some() {
            let (o_rps, o50, o99) = figures("other");
            format!(
                " {o_rps:.0} | **{:.2}** | {o50:.2} / {o99:.2} |",
                o_rps / d_rps
            )
        } else {
            String::new()
        };
        println!(
            "| {lanes} | {b_rps:.0} | {d_rps:.0} | {x_rps:.0} | **{:.2}** | {:.2} | {b50:.2} / {b99:.2} | {d50:.2} / {d99:.2} | {x50:.2} / {x99:.2} |{other_figures}",
            x_rps / d_rps,
            x_rps / b_rps
        );
    }
    // CPU per request, medians: what each server spends, whatever the VM's neighbours do.
    let names: &[&str] = if other.is_some() {
        &["bare", "durable", "bb2tc", "other"]
    } else {
        &["bare", "durable", "bb2tc"]
    };
    println!(
        "\n| connections | server CPU µs per request: {} |",
        names.join(" | ")
    );
    println!("|---|{}", "---|".repeat(names.len()));
    for &lanes in &lanes_list {
        let row: Vec<String> = names
            .iter()
            .map(|name| format!("{:.0}", median(cpu_us[&(lanes, *name)].clone())))
            .collect();
        println!("| {lanes} | {} |", row.join(" | "));
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

    // The same offered rate as bb2tc's, so that the p99s compare: the durable receiver's is
    // the floor this machine's `fdatasync` sets.
    let mut same_rate = vec![("durable", durable_url.as_str())];
    if let Some(other) = &other {
        same_rate.push(("other", other.url.as_str()));
    }
    for (name, url) in same_rate {
        let paced = load(url, 64, duration, Some(half), counter.clone()).await;
        println!(
            "{name} at the same rate ({half:.0} req/s offered, {:.0} achieved, 64 connections): p50 {:.2} ms, p99 {:.2} ms",
            paced.rps(),
            paced.percentile_ms(0.5),
            paced.percentile_ms(0.99)
        );
    }

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
    println!(
        "intake backlog (bb2tc_intake_backlog, sampled every 50 ms during the bb2tc runs): peak {} deliveries",
        backlog_peak.load(std::sync::atomic::Ordering::Relaxed)
    );
    for baseline in [&mut bare, &mut durable] {
        let _ = baseline.kill();
        let _ = baseline.wait();
    }
    bridge.terminate();
    if let Some(other) = other {
        other.terminate();
    }
}

/// Samples `bb2tc_intake_backlog` every 50 ms while `sampling` is set; keeps the peak.
async fn sample_backlog(
    url: String,
    peak: Arc<AtomicU64>,
    sampling: Arc<std::sync::atomic::AtomicBool>,
) {
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !sampling.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        let Ok(response) = http.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        if let Some(n) = text
            .lines()
            .find_map(|l| l.strip_prefix("bb2tc_intake_backlog "))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// SPEC §11 "push to TeamCity call, unloaded": one signed push at a time, timed from just
/// before it is sent to the moment the fake TeamCity (in this process) receives the build
/// call.
async fn push_to_call(url: &str, tc: &FakeTeamCity, counter: &AtomicU64) {
    const PUSHES: usize = 300;
    let http = reqwest::Client::new();
    let mut latencies_us = Vec::with_capacity(PUSHES);
    let before = tc.build_calls().len();
    for i in 0..PUSHES {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = tokio::time::Instant::now();
        let response = push_request(&http, url, n, 1).send().await.unwrap();
        assert_eq!(response.status(), 202);
        let call = tc.wait_for_builds(before + i + 1).await.pop().unwrap();
        latencies_us.push((call.at - sent).as_micros() as u64);
    }
    let result = LoadResult {
        requests: PUSHES as u64,
        non_2xx: 0,
        seconds: 1.0,
        latencies_us,
    };
    println!(
        "push → TeamCity call, unloaded ({PUSHES} pushes one at a time): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        result.percentile_ms(0.5),
        result.percentile_ms(0.9),
        result.percentile_ms(0.99)
    );
}

/// Starts this benchmark again as a baseline server (`bare`, or durable into the file at
/// `mode`); the process and its URL.
fn start_baseline(mode: &str) -> (std::process::Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("BB2TC_BENCH_BASELINE", mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, format!("http://{}", line.trim()))
}

type Reply = tokio::sync::oneshot::Sender<()>;

/// The minimal durable receiver's log: a thread that writes every body waiting in its
/// channel with one write, `fdatasync`s once, and answers them all (group commit).
fn durable_log(path: std::path::PathBuf) -> tokio::sync::mpsc::UnboundedSender<(Bytes, Reply)> {
    use std::io::Write;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, Reply)>();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while let Ok(next) = rx.try_recv() {
                group.push(next);
            }
            buf.clear();
            for (body, _) in &group {
                buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
                buf.extend_from_slice(body);
            }
            file.write_all(&buf).unwrap();
            file.sync_data().unwrap();
            for (_, reply) in group {
                let _ = reply.send(());
            }
        }
    });
    tx
}

/// A baseline: read the body, check the HMAC, (with `log`: append it durably), answer 202.
fn baseline_server(log: Option<std::path::PathBuf>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let secrets = Arc::new(vec![bb2tc::ids::Secret::new(SECRET)]);
        let log = log.map(durable_log);
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let secrets = secrets.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let secrets = secrets.clone();
                        let log = log.clone();
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
                            if let (202, Some(log)) = (status, &log) {
                                let (reply, written) = tokio::sync::oneshot::channel();
                                log.send((body, reply)).unwrap();
                                written.await.unwrap();
                            }
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
