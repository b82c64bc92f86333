//! Rate-limit accuracy: 1 000 jobs queued at once for one server limited to 20/s, burst 5;
//! the fake TeamCity records when each call arrives.
//!
//! `cargo bench --bench rate_limit`

mod common;

use common::fake_teamcity::FakeTeamCity;
use common::*;

const JOBS: usize = 1000;
const RATE: f64 = 20.0;
const BURST: usize = 5;

fn main() {
    block_on(async {
        let tc = FakeTeamCity::start().await;
        tc.add_token("bench-token", "bench");
        let dir = tempfile::tempdir().unwrap();
        let (bridge, _) = start_bridge(
            dir.path(),
            &config(
                &dir.path().join("data"),
                &tc.url,
                &format!("rate_per_second = {RATE}\nburst = {BURST}\nmax_in_flight = 8"),
            ),
        );
        register_token(&bridge.url, "bench-token").await;
        let http = reqwest::Client::new();
        for n in 0..(JOBS / 100) as u64 {
            let response = push_request(&http, &bridge.url, n, 100)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
        let calls = tc
            .wait_for_within(JOBS, std::time::Duration::from_secs(120), |r| {
                r.method == "POST" && r.path == "/app/rest/buildQueue"
            })
            .await;
        let t0 = calls[0].at;
        let times: Vec<f64> = calls.iter().map(|c| (c.at - t0).as_secs_f64()).collect();
        let mut worst = 0;
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|t| **t < start + 1.0).count();
            worst = worst.max(in_window);
        }
        let sustained = (JOBS - BURST) as f64 / times[JOBS - 1];
        println!(
            "| jobs | rate | burst | max calls in any 1 s | allowed (burst + rate × 1 s) | achieved rate | error vs rate | total time |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {JOBS} | {RATE} | {BURST} | {worst} | {} | {sustained:.3}/s | {:+.2} % | {:.1} s |",
            BURST as f64 + RATE,
            (sustained - RATE) / RATE * 100.0,
            times[JOBS - 1]
        );
        bridge.terminate();
    });
}
