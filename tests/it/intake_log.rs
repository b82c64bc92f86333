//! The intake log across a crash, with the real binary: a write cut short by `kill -9` (a
//! torn last entry) is dropped at the next start, and everything acknowledged before it is
//! built exactly once; so is everything acknowledged around checkpoints that a `kill -9`
//! interrupts.

use crate::support::process::Bridge;
use crate::support::*;
use std::time::Duration;

const PUSHES: u32 = 20;

/// Push `n` (branch `t{n}`, delivery id `torn-{n}`); its status, or the error when the
/// connection died with the process.
async fn try_push(http: &reqwest::Client, url: &str, n: u32) -> Result<u16, reqwest::Error> {
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[(&format!("refs/heads/t{n}"), &sha(n), "UPDATE")],
    );
    http.post(format!("{url}/hooks/bitbucket/dc"))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body),
        )
        .header("X-Request-Id", format!("torn-{n}"))
        .body(body)
        .send()
        .await
        .map(|response| response.status().as_u16())
}

async fn push(http: &reqwest::Client, url: &str, n: u32) -> u16 {
    try_push(http, url, n).await.unwrap()
}

/// Where the entries of an intake log segment end (frames: u32 length, u32 CRC, payload;
/// the rest of the segment is the zeros it was allocated with).
fn end_of_entries(bytes: &[u8]) -> usize {
    let mut at = 0;
    while at + 8 <= bytes.len() && bytes[at..at + 8] != [0; 8] {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    at
}

#[tokio::test]
async fn a_write_torn_by_kill_9_is_dropped_and_every_202_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    // First nothing is sent (the jobs wait), so the crash finds them all queued.
    let paused = standard_config(&tc.url, "")
        .replace("rate_per_second = 1000.0", "rate_per_second = 0.001")
        .replace("burst = 1000", "burst = 1");
    let (config, store) = write_process_config(dir.path(), &paused);
    let bridge = Bridge::start(&config, "");
    register_token_at(&bridge.url, "jdoe", "t").await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for n in 1..=PUSHES {
        statuses.push(push(&http, &bridge.url, n).await);
    }
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    bridge.kill();

    // The crash cut the next write short: a frame header and part of its payload.
    let newest = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("intake-") && name.ends_with(".log")
        })
        .max()
        .expect("an intake log segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let end = end_of_entries(&bytes);
    assert!(end > 0, "the acknowledged deliveries are in the log");
    bytes.resize(bytes.len().max(end + 64), 0);
    bytes[end..end + 8].copy_from_slice(&[180, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    bytes[end + 8..end + 60].fill(b'x');
    std::fs::write(&newest, bytes).unwrap();

    // Started again, now sending: the torn entry is dropped, every push built once.
    let (config, _) = write_process_config(dir.path(), &standard_config(&tc.url, ""));
    let bridge = Bridge::start(&config, "");
    tc.wait_for_builds(PUSHES as usize).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_branch = tc.builds_per_branch();
    for n in 1..=PUSHES {
        assert_eq!(
            per_branch.get(&format!("t{n}")),
            Some(&1),
            "push {n}: {per_branch:?}"
        );
    }
    assert_eq!(per_branch.len(), PUSHES as usize);
    assert!(
        bridge
            .log()
            .contains("dropped a torn entry at the end of the intake log"),
        "{}",
        bridge.log()
    );
    // Bitbucket's redelivery of an acknowledged push is still a duplicate.
    assert_eq!(push(&http, &bridge.url, 7).await, 200);
    assert!(bridge.terminate().success());
}

const CHECKPOINT: &str = "intake log checkpoint: sled synced, segments removed";

#[tokio::test]
async fn kill_9_amid_checkpoints_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    // The smallest segments (64 KiB, a few dozen deliveries each): while pushes stream in
    // and their jobs are sent, a segment is closed and checkpointed (sled flushed and
    // fsynced, the segment deleted) many times a second.
    let (config, store) = write_process_config(dir.path(), &standard_config(&tc.url, ""));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[storage]\n", "[storage]\nintake_segment_bytes = 65536\n");
    std::fs::write(&config, text).unwrap();
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut next = 1u32;
    for cycle in 0..3 {
        let bridge = Bridge::start(&config, "");
        if cycle == 0 {
            register_token_at(&bridge.url, "jdoe", "t").await;
        }
        // 8 senders until the connection dies; bb2tc is killed once it has checkpointed
        // twice in this run, so the kill falls among checkpoints.
        let first = next;
        next += 8 * 400;
        let mut senders = Vec::new();
        for lane in 0..8u32 {
            let (http, url) = (http.clone(), bridge.url.clone());
            senders.push(tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in (first..first + 8 * 400).filter(|n| n % 8 == lane) {
                    match try_push(&http, &url, n).await {
                        Ok(202) => accepted.push(n),
                        Ok(other) => panic!("push {n} answered {other}"),
                        Err(_) => break, // the process is gone: this one was not accepted
                    }
                }
                accepted
            }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while bridge.log().matches(CHECKPOINT).count() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no checkpoints: {}",
                bridge.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bridge.kill();
        for sender in senders {
            accepted.extend(sender.await.unwrap());
        }
    }
    assert!(accepted.len() > 100, "{} accepted", accepted.len());

    // Started once more: every acknowledged push is built exactly once, none twice.
    let bridge = Bridge::start(&config, "");
    tc.wait_for_builds(accepted.len()).await;
    wait_until_drained(&bridge.url).await;
    let branches: Vec<String> = accepted.iter().map(|n| format!("t{n}")).collect();
    assert_built_exactly_once(&tc, &branches);
    // The checkpoints removed what sled held: a few segments are left, not one per 64 KiB.
    let segments = std::fs::read_dir(&store)
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.starts_with("intake-") && name.ends_with(".log")
        })
        .count();
    assert!(segments <= 4, "{segments} segments left");
    assert!(bridge.terminate().success());
}
