//! Ingest on PostgreSQL (SPEC §11: ≥ 1 500 deliveries/s at 64 connections with two
//! instances on this machine): signed `repo:refs_changed` deliveries with distinct commits,
//! each committed before its 202, against one bb2tc instance and then two instances on one
//! database (the connections split between them, as a load balancer would), same load
//! generator, same run. Dispatch is slowed to a trickle (`rate_per_second = 0.001`) so the
//! figures are ingest's own.
//!
//! PostgreSQL: `BB2TC_TEST_DATABASE_URL`, or a throw-away cluster started from Debian's
//! `postgresql` as the tests do. `cargo bench --bench postgres` (BB2TC_BENCH_SECS per run,
//! default 5; 3 rounds).

mod common;

#[path = "../tests/it/support/postgres.rs"]
mod postgres;

use common::fake_teamcity::FakeTeamCity;
use common::*;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

const ROUNDS: usize = 3;
const LANES: [usize; 2] = [16, 64];

fn main() {
    let secs: u64 = env_number("BB2TC_BENCH_SECS", 5);
    block_on(run(Duration::from_secs(secs)));
}

/// The bench config on the PostgreSQL database at `url`.
fn pg_config(dir: &std::path::Path, url: &str, tc_url: &str) -> String {
    let store = dir.join("unused");
    config(&store, tc_url, "rate_per_second = 0.001").replace(
        &format!("path = {:?}", store.display().to_string()),
        &format!("backend = \"postgres\"\nurl = {url:?}\nmax_connections = 16"),
    )
}

/// Starts a bridge on `url` with its config in `dir/<name>`.
fn bridge(dir: &std::path::Path, name: &str, url: &str, tc_url: &str) -> Bridge {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    start_bridge(&sub, &pg_config(&sub, url, tc_url)).0
}

async fn run(duration: Duration) {
    let Some(one_db) = postgres::database("bench one instance").await else {
        return;
    };
    let Some(two_db) = postgres::database("bench two instances").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    tc.add_token("bench-token", "bench");
    let dir = tempfile::tempdir().unwrap();
    let single = bridge(dir.path(), "single", &one_db, &tc.url);
    register_token(&single.url, "bench-token").await;
    let pair = [
        bridge(dir.path(), "a", &two_db, &tc.url),
        bridge(dir.path(), "b", &two_db, &tc.url),
    ];
    register_token(&pair[0].url, "bench-token").await;

    let counter = Arc::new(AtomicU64::new(0));
    let mut one: Vec<Vec<(f64, f64)>> = vec![Vec::new(); LANES.len()];
    let mut two: Vec<Vec<(f64, f64)>> = vec![Vec::new(); LANES.len()];
    let mut accepted = 0;
    for round in 0..ROUNDS {
        for (i, lanes) in LANES.into_iter().enumerate() {
            let r = load(&single.url, lanes, duration, None, counter.clone()).await;
            accepted += r.requests - r.non_2xx;
            eprintln!(
                "round {round} lanes {lanes:>2} one instance: {:>7.0} req/s p99 {:.2} ms non-2xx {}",
                r.rps(),
                r.percentile_ms(0.99),
                r.non_2xx
            );
            one[i].push((r.rps(), r.percentile_ms(0.99)));
            let (a, b) = tokio::join!(
                load(&pair[0].url, lanes / 2, duration, None, counter.clone()),
                load(&pair[1].url, lanes / 2, duration, None, counter.clone()),
            );
            accepted += a.requests - a.non_2xx + b.requests - b.non_2xx;
            let p99 = a.percentile_ms(0.99).max(b.percentile_ms(0.99));
            eprintln!(
                "round {round} lanes {lanes:>2} two instances: {:>7.0} req/s ({:.0} + {:.0}) p99 {:.2} ms non-2xx {}",
                a.rps() + b.rps(),
                a.rps(),
                b.rps(),
                p99,
                a.non_2xx + b.non_2xx
            );
            two[i].push((a.rps() + b.rps(), p99));
        }
    }
    println!(
        "\n| connections | one instance req/s | p99 ms | two instances req/s (target ≥ 1 500 at 64) | p99 ms |"
    );
    println!("|---|---|---|---|---|");
    for (i, lanes) in LANES.into_iter().enumerate() {
        let m =
            |runs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {lanes} | {:.0} | {:.2} | **{:.0}** | {:.2} |",
            m(&one[i], |r| r.0),
            m(&one[i], |r| r.1),
            m(&two[i], |r| r.0),
            m(&two[i], |r| r.1)
        );
    }
    // Every 202 is a committed job: the databases agree.
    let mut enqueued = 0;
    for url in [&one_db, &two_db] {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT count(*) FROM bb2tc_jobs", &[])
            .await
            .unwrap();
        enqueued += row.get::<_, i64>(0) as u64;
    }
    println!("202 answers: {accepted}; jobs in the databases: {enqueued}");
    single.terminate();
    for bridge in pair {
        bridge.terminate();
    }
}
