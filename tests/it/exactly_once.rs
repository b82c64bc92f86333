//! Exactly once across crashes (SPEC §6, §7), with the real binary: a TeamCity whose idle
//! agents take each build out of the queue 10 ms after it was queued, calls that take 20 ms,
//! 1 000 signed pushes from several senders that retry on connection errors, `kill -9`
//! several times during the stream and once while the backlog drains — and every push that
//! got a 202 (or, redelivered, a `duplicate`) is exactly one build. The intake log's
//! segments are small (64 KiB), so checkpoints run all through the stream and kills land
//! before, during and after them.

use crate::support::process::Bridge;
use crate::support::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PUSHES: u32 = 1000;
const SENDERS: u32 = 8;
/// The stream is killed after this many answers each time.
const KILL_AFTER: [usize; 4] = [150, 350, 600, 850];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_teamcity_starts_builds_at_once_doubles_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    tc.agents(Duration::from_millis(10), Duration::from_millis(200));
    tc.post_delay(Duration::from_millis(20));
    let (config, _) = write_process_config(
        dir.path(),
        &standard_config(&tc.url, "").replace(
            "retry_schedule_secs = [1, 1]",
            "retry_schedule_secs = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]",
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[server]", "intake_segment_bytes = 65536\n[server]", 1),
    )
    .unwrap();
    let bridge = Bridge::start(&config, "");
    let http = reqwest::Client::new();
    register_token_at(&bridge.url, "jdoe", "t").await;

    let url = Arc::new(Mutex::new(vec![bridge.url.clone()]));
    let answered = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(HashMap::<u32, u16>::new()));
    let mut senders = Vec::new();
    for lane in 0..SENDERS {
        let (http, url, answered, answers) =
            (http.clone(), url.clone(), answered.clone(), answers.clone());
        senders.push(tokio::spawn(async move {
            for n in (1..=PUSHES).filter(|n| n % SENDERS == lane) {
                let status = deliver_push(&http, &url, 0, "exactly-once", n).await;
                answers.lock().unwrap().insert(n, status);
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut bridge = bridge;
    let mut recovered = 0;
    let mut checkpoints = 0;
    let recoveries = |log: &str| log.matches("found in TeamCity; not posted again").count();
    let checkpointed = |log: &str| log.matches("intake log checkpoint").count();
    for threshold in KILL_AFTER {
        while answered.load(Ordering::SeqCst) < threshold {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        recovered += recoveries(&bridge.log());
        checkpoints += checkpointed(&bridge.log());
        bridge.kill();
        bridge = Bridge::start(&config, "");
        *url.lock().unwrap() = vec![bridge.url.clone()];
    }
    for sender in senders {
        sender.await.unwrap();
    }
    // Once more while the backlog drains: some calls are under way.
    let before = tc.builds().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tc.builds().len() < before + 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    recovered += recoveries(&bridge.log());
    checkpoints += checkpointed(&bridge.log());
    bridge.kill();
    let bridge = Bridge::start(&config, "");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while jobs_in(&bridge.url, &["pending", "inflight"]).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), PUSHES as usize);
    for (n, status) in &answers {
        assert!(matches!(status, 202 | 200), "push {n} answered {status}");
    }
    let mut per_branch: HashMap<String, usize> = HashMap::new();
    for (_, _, branch, _) in tc.builds() {
        *per_branch.entry(branch.unwrap_or_default()).or_default() += 1;
    }
    let lost: Vec<u32> = (1..=PUSHES)
        .filter(|n| !per_branch.contains_key(&format!("b{n}")))
        .collect();
    let doubled: Vec<(&String, &usize)> = per_branch.iter().filter(|(_, c)| **c > 1).collect();
    assert!(lost.is_empty(), "pushes never built: {lost:?}");
    assert!(doubled.is_empty(), "pushes built twice: {doubled:?}");
    // The kills did happen while calls were under way: jobs whose call had reached
    // TeamCity were found among its builds (most already out of the queue) instead of
    // being posted again.
    recovered += recoveries(&bridge.log());
    checkpoints += checkpointed(&bridge.log());
    eprintln!("interrupted jobs found in TeamCity: {recovered}; checkpoints: {checkpoints}");
    assert!(recovered > 0, "no kill caught a call under way");
    assert!(checkpoints > 0, "the intake log was never checkpointed");
    assert!(bridge.terminate().success());
}
