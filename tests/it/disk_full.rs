//! A full disk, for real: the store on a small loop-mounted ext4 image, filled up while
//! signed pushes arrive. Deliveries get 503 (never a 202 that is not on disk), and once space
//! is freed the store heals by itself — no restart — and every 202 survives a `kill -9`.
//!
//! Needs root, `mkfs.ext4` and loop devices; where they are missing the test prints SKIPPED
//! and passes, unless `BB2TC_REQUIRE_LOOP_MOUNT=1` (set by `.ci/run`).

use crate::support::process::Bridge;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mounted ext4 image, unmounted on drop.
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(under: &Path, megabytes: u32) -> Result<Self, String> {
        let image = under.join("disk.img");
        let dir = under.join("mnt");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{megabytes}M"))
            .arg(&image))?;
        run(Command::new("mkfs.ext4").arg("-q").arg(&image))?;
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(&dir))?;
        Ok(Self { dir })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Appends zeros to `path` until the disk takes no more (1 MiB at a time, then 4 KiB).
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for size in [1 << 20, 4096] {
        let chunk = vec![0u8; size];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }
}

fn big_push(n: u32) -> Vec<u8> {
    let refs: Vec<(String, String)> = (0..50)
        .map(|i| (format!("refs/heads/p{n}-{i}"), sha(n * 100 + i)))
        .collect();
    let changes: Vec<(&str, &str, &str)> = refs
        .iter()
        .map(|(r, s)| (r.as_str(), s.as_str(), "UPDATE"))
        .collect();
    dc_payload("jdoe", "PROJ/repo", &changes)
}

async fn send(http: &reqwest::Client, url: &str, n: u32) -> u16 {
    let body = big_push(n);
    http.post(format!("{url}/hooks/bitbucket/dc"))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body),
        )
        .header("X-Request-Id", format!("full-{n}"))
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_disk_answers_503_heals_when_space_is_freed_and_loses_no_202() {
    let dir = tempfile::tempdir().unwrap();
    let mount = match LoopMount::new(dir.path(), 16) {
        Ok(mount) => mount,
        Err(why) => {
            assert!(
                std::env::var_os("BB2TC_REQUIRE_LOOP_MOUNT").is_none(),
                "BB2TC_REQUIRE_LOOP_MOUNT is set but no loop-mounted ext4 image: {why}"
            );
            eprintln!(
                "SKIPPED: a full disk needs root and loop devices ({})",
                why.trim()
            );
            return;
        }
    };
    // TeamCity is never called: the jobs stay queued, so the store only grows.
    let config = format!(
        // Small intake log segments: the log needs a new one (and so new space) soon.
        "{}\n[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\nintake_segment_bytes = 65536\n",
        "[server]\nlisten = \"127.0.0.1:0\"",
        mount.dir.join("data").display().to_string()
    ) + &standard_config("http://127.0.0.1:1", "")
        .replace("rate_per_second = 1000.0", "rate_per_second = 0.001")
        .replace("burst = 1000", "burst = 1")
        .replace(
            "id = \"main\"",
            "id = \"main\"\nservice_token = \"svc\"\nfallback_to_service_token = true",
        );
    let config_path = dir.path().join("bb2tc.toml");
    std::fs::write(&config_path, config).unwrap();
    let bridge = Bridge::start(&config_path, "");
    let http = reqwest::Client::new();

    // Fill the disk.
    let filler = mount.dir.join("filler");
    fill_up(&filler);
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 1..=2000 {
        match send(&http, &bridge.url, n).await {
            202 => accepted.push(n),
            503 => {
                refused = Some(n);
                break;
            }
            other => panic!("push {n} answered {other}"),
        }
    }
    let refused = refused.expect("the disk never filled up");
    // A refused write is cut off its file again, and a segment that could not be prepared
    // is removed: that frees a few blocks. Full again, to the last block: `/readyz` must
    // say so even where its probe's few bytes would still fit.
    fill_up(&filler);
    let ready = http
        .get(format!("{}/readyz", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the disk is full: {}",
        bridge.log()
    );

    // Space is freed: within seconds the store takes writes again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("{}/readyz", bridge.url))
            .send()
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store never healed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Bitbucket Cloud's retry of the refused delivery, and a new one.
    let retried = send(&http, &bridge.url, refused).await;
    assert!(
        matches!(retried, 200 | 202),
        "the retried delivery answered {retried}"
    );
    assert_eq!(send(&http, &bridge.url, 1000).await, 202);
    accepted.push(refused);
    accepted.push(1000);

    // Every delivery that got a 202 (or, retried, a duplicate) is on disk.
    let before = bridge.log();
    bridge.kill();
    let bridge = Bridge::start(&config_path, "");
    let listed = admin_get(&bridge.url, "/deliveries?limit=10000").await;
    let kept: std::collections::HashMap<String, u64> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["result"] == "accepted")
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    for n in &accepted {
        assert_eq!(
            kept.get(&format!("full-{n}")),
            Some(&50),
            "delivery {n} lost; the log before the kill:\n{before}\nand after:\n{}",
            bridge.log()
        );
    }
    eprintln!(
        "disk full after {} deliveries; healed; {} deliveries kept",
        accepted.len() - 2,
        kept.len()
    );
    bridge.terminate();
    drop(mount);
}
