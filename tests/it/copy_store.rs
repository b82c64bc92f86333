//! `bb2tc copy-store` (SPEC §7.1): a sled store moved to PostgreSQL and back, with the
//! bridge stopped — tokens (usable), jobs, de-duplication marks and delivery records intact.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn write_config(path: &Path, storage: &str, tc_url: &str) {
    std::fs::write(path, format!("{storage}{}", standard_config(tc_url, ""))).unwrap();
}

fn copy_store(from: &Path, to: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bb2tc"))
        .arg("copy-store")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn push_body(n: u32) -> Vec<u8> {
    dc_payload(
        "jdoe",
        "PROJ/repo",
        &[(&format!("refs/heads/b{n}"), &sha(n), "UPDATE")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_to_postgres_and_back() {
    let Some(url) = postgres::database("a_sled_store_moves_to_postgres_and_back").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("secret-t", "jdoe");
    let config = standard_config(&tc.url, "");
    let sled_dir = dir.path().join("sled");
    let app = TestApp::spawn_on(&config, &sled_dir).await;
    let token = app.register_token("dc", "jdoe", "main", "secret-t").await;
    let (status, _) = app.dc_push(&push_body(1), "copied-1").await;
    assert_eq!(status, 202);
    tc.wait_for_builds(1).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.api_jobs("?state=done").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let jobs_before = app.api_jobs("").await;
    app.stop().await;

    let sled_config = dir.path().join("sled.toml");
    write_config(
        &sled_config,
        &format!(
            "[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\n",
            sled_dir.display().to_string()
        ),
        &tc.url,
    );
    let pg_config = dir.path().join("pg.toml");
    write_config(&pg_config, &postgres_storage(&url), &tc.url);
    let (ok, out) = copy_store(&sled_config, &pg_config);
    assert!(ok, "{out}");
    assert!(
        out.contains("copied 1 token(s)") && out.contains("1 job(s)"),
        "{out}"
    );
    assert!(out.contains("counts verified"), "{out}");
    // rotate-key is sled's: with PostgreSQL it says what to do instead, and touches nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_bb2tc"))
        .args(["rotate-key", "--config"])
        .arg(&pg_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("copy-store into a new database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Into a store that holds something: refused, nothing written.
    let (ok, out) = copy_store(&sled_config, &pg_config);
    assert!(!ok && out.contains("not empty"), "{out}");

    let app = TestApp::spawn_postgres(&config, &url).await;
    let tokens = app.api_tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], token["id"]);
    assert_eq!(tokens[0]["status"], "valid");
    let jobs = app.api_jobs("").await;
    assert_eq!(jobs.len(), jobs_before.len());
    assert_eq!(jobs[0]["id"], jobs_before[0]["id"]);
    assert_eq!(jobs[0]["state"], "done");
    // The delivery and its build were seen before the move.
    let (status, again) = app.dc_push(&push_body(1), "copied-1").await;
    assert_eq!(
        (status, again["result"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    let (status, seen) = app.dc_push(&push_body(1), "copied-1-redone").await;
    assert_eq!(status, 202);
    assert_eq!(seen["jobs"], 0, "{seen}");
    assert!(
        seen["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("already seen"),
        "{seen}"
    );
    // The token still opens, under the new store: a new push is built as jdoe.
    let (status, _) = app.dc_push(&push_body(2), "copied-2").await;
    assert_eq!(status, 202);
    let builds = tc.wait_for_builds(2).await;
    assert_eq!(builds[1].authorization.as_deref(), Some("Bearer secret-t"));
    let comment = builds[1].json()["comment"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = builds[0].json()["comment"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let store_id = |c: &str| {
        c.rsplit_once("(bb2tc job ")
            .unwrap()
            .1
            .split('-')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        store_id(&comment),
        store_id(&first),
        "the store id moved with the jobs"
    );
    app.stop().await;

    // And back, into a new sled store.
    let back_dir = dir.path().join("back");
    let back_config = dir.path().join("back.toml");
    write_config(
        &back_config,
        &format!(
            "[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\n",
            back_dir.display().to_string()
        ),
        &tc.url,
    );
    let (ok, out) = copy_store(&pg_config, &back_config);
    assert!(ok, "{out}");
    assert!(out.contains("2 job(s)"), "{out}");
    let app = TestApp::spawn_on(&config, &back_dir).await;
    assert_eq!(app.api_tokens().await[0]["id"], token["id"]);
    assert_eq!(app.api_jobs("").await.len(), 2);
    let (status, again) = app.dc_push(&push_body(2), "copied-2").await;
    assert_eq!(
        (status, again["result"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    let (status, _) = app.dc_push(&push_body(3), "copied-3").await;
    assert_eq!(status, 202);
    let builds = tc.wait_for_builds(3).await;
    assert_eq!(builds[2].authorization.as_deref(), Some("Bearer secret-t"));
    assert_no_file_holds(&back_dir, &["secret-t"]);
    app.stop().await;
}
