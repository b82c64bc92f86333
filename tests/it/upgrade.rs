//! A store written by an older release opens with this one, nothing lost (SPEC §7).
//!
//! `tests/upgrade/store-a84aaec/` was written by bb2tc at commit a84aaec, the last release
//! whose records carried no format version; `tests/upgrade/store-96cd6c8/` by commit
//! 96cd6c8, the last release of store format 1 (versioned records, no intake log). Both hold
//! the same things, as does `tests/upgrade/store-551746f/` (format 2, with an intake log
//! left by a crash), and `tests/upgrade/store-3a2b10f/` (format 3: every job in one tree,
//! the intake log left by a crash) with two done jobs more, as does
//! `tests/upgrade/store-08992d1/` (format 4: delivery records and marks in sled's trees,
//! the intake log left by a crash) and `tests/upgrade/store-95337e3/` (format 5: every job
//! in sled's trees, none in chunks of fresh jobs, the intake log left by a crash;
//! `tests/upgrade/regenerate.sh` rebuilds them from those commits), and the same test opens
//! each. Every later format
//! change adds its own store here. Each store's `written_at_ms.txt` says when it was
//! written: bb2tc opens it with its clock set to an hour after that (see [`open_old`]).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the old store of `release` is kept.
fn fixture(release: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/upgrade/store-{release}"))
}

/// A copy of the old store to open (bb2tc writes to it), and the session cookie it holds.
fn old_store(dir: &Path, release: &str) -> (PathBuf, String) {
    let from = fixture(release);
    let to = dir.join("data");
    std::fs::create_dir_all(&to).unwrap();
    copy_dir(&from.join("data"), &to);
    let session = std::fs::read_to_string(from.join("session.txt")).unwrap();
    (to, session.trim().to_owned())
}

/// Copies the files of `from` into `to`, and those of its directories (a format-5 store's
/// `window/`); sled's `blobs/` is empty here, and so not in git.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Starts bb2tc (the binary, in a process of its own) on the copy of the old store of
/// `release`, its wall clock set to an hour after the store was written
/// (`written_at_ms.txt`): the 24 h de-duplication window and the sessions hold as they
/// would for an upgrade made that day, whenever the test runs.
async fn open_old(config: &str, store: &Path, release: &str) -> TestApp {
    let written: i64 = std::fs::read_to_string(fixture(release).join("written_at_ms.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let offset = written + 3_600_000 - now;
    let prelude = format!("export {}={offset}", bb2tc::clock::TEST_OFFSET_VAR);
    TestApp::spawn_process_on(config, store, &prelude).await
}

fn branches(calls: &[fake_teamcity::Recorded]) -> Vec<String> {
    let mut branches: Vec<String> = calls
        .iter()
        .map(|c| c.json()["branchName"].as_str().unwrap().to_owned())
        .collect();
    branches.sort();
    branches
}

#[tokio::test]
async fn a_store_of_a84aaec_opens_with_nothing_lost() {
    opens_with_nothing_lost("a84aaec").await;
}

#[tokio::test]
async fn a_store_of_96cd6c8_opens_with_nothing_lost() {
    opens_with_nothing_lost("96cd6c8").await;
}

/// Format 2, left as a crash leaves it: its intake log (frames of version 1, job records of
/// version 1) is replayed at the first start.
#[tokio::test]
async fn a_store_of_551746f_opens_with_nothing_lost() {
    opens_with_nothing_lost("551746f").await;
}

/// Format 3, left as a crash leaves it, with a done job whose build is no longer followed
/// and one whose build is: the first moves to the tree of finished jobs (format 4), and
/// both are still listed and counted.
#[tokio::test]
async fn a_store_of_3a2b10f_opens_with_nothing_lost_and_its_finished_job_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _tc) = open_and_check(dir.path(), "3a2b10f").await;
    let done = app.api_jobs("?state=done&limit=100").await;
    let done_branch = |branch: &str| {
        done.iter()
            .find(|j| j["branch"] == branch)
            .unwrap_or_else(|| panic!("no done job for {branch}: {done:?}"))
            .clone()
    };
    assert_eq!(done_branch("finished")["build_id"], 7, "{done:?}");
    assert_eq!(done_branch("followed")["build_id"], 8, "{done:?}");
    // The finished jobs are counted after start-up; the count catches up with the list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = app.api_jobs("?state=done&limit=100").await.len() as f64;
        let counted = metric_value(
            &app.metrics().await,
            r#"bb2tc_queue_depth{server="main",state="done"}"#,
        );
        if counted == Some(listed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{counted:?} counted, {listed} listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished_key = job_key(&done, "finished");
    let (_, store) = app.stop().await;
    let db = sled::open(&store).unwrap();
    let finished = db.open_tree("finished_jobs").unwrap();
    assert!(finished.get(finished_key).unwrap().is_some());
    let jobs = db.open_tree("jobs").unwrap();
    assert!(jobs.get(finished_key).unwrap().is_none());
    assert_moved_into_window(&db, &store);
}

/// A store of format 4 (08992d1, the intake log left by a crash): its delivery records and
/// marks move out of sled into the window (format 5), where the checks above find them —
/// each delivery listed once, though the replay after the move saw it again in the log.
#[tokio::test]
async fn a_store_of_08992d1_opens_with_nothing_lost_and_its_marks_moved_into_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _tc) = open_and_check(dir.path(), "08992d1").await;
    let deliveries = app.api_deliveries(100).await;
    for n in 1..=5 {
        let id = format!("old-delivery-{n}");
        let listed = deliveries
            .iter()
            .filter(|d| d["id"] == id.as_str() && d["result"] == "accepted")
            .count();
        assert_eq!(listed, 1, "{id} in {deliveries:?}");
    }
    let (_, store) = app.stop().await;
    let db = sled::open(&store).unwrap();
    assert_moved_into_window(&db, &store);
}

/// The store is of format 6: no delivery records or marks left in sled, a window beside it.
fn assert_moved_into_window(db: &sled::Db, store: &Path) {
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(
        meta.get("format_version").unwrap().as_deref(),
        Some(&[6u8][..])
    );
    let names: Vec<Vec<u8>> = db.tree_names().iter().map(|n| n.to_vec()).collect();
    assert!(!names.contains(&b"deliveries".to_vec()), "{names:?}");
    assert!(!names.contains(&b"seen_changes".to_vec()), "{names:?}");
    assert!(store.join("window").is_dir());
    assert!(!store.join("window.import").exists());
}

/// A store of format 5 (95337e3, the intake log left by a crash): its jobs stay where they
/// are, each with its entry in `latest_jobs`, and what the replay and later pushes add goes
/// into chunks of fresh jobs (format 6). A newer push of a branch whose job the old store
/// holds still pending replaces it; one of a branch built before builds again, once.
#[tokio::test]
async fn a_store_of_95337e3_opens_with_nothing_lost_and_new_jobs_go_into_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (app, tc) = open_and_check(dir.path(), "95337e3").await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[
            ("refs/heads/finished", &"9".repeat(40), "UPDATE"),
            ("refs/heads/after-upgrade", &"8".repeat(40), "ADD"),
        ],
    );
    let (status, answer) = app.dc_push(&push, "after-upgrade-1").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(2)),
        "{answer}"
    );
    let calls = tc.wait_for_builds(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tc.build_calls().len(), 6, "{calls:?}");
    let built = branches(&tc.build_calls());
    for branch in ["finished", "after-upgrade"] {
        assert_eq!(
            built.iter().filter(|b| *b == branch).count(),
            1,
            "{built:?}"
        );
    }
    let (_, store) = app.stop().await;
    let db = sled::open(&store).unwrap();
    assert_moved_into_window(&db, &store);
    let names: Vec<Vec<u8>> = db.tree_names().iter().map(|n| n.to_vec()).collect();
    assert!(names.contains(&b"fresh_jobs".to_vec()), "{names:?}");
}

/// The sled key of the listed job for `branch`.
fn job_key(jobs: &[serde_json::Value], branch: &str) -> [u8; 8] {
    let job = jobs.iter().find(|j| j["branch"] == branch).unwrap();
    job["id"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        .to_be_bytes()
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

async fn opens_with_nothing_lost(release: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (app, _tc) = open_and_check(dir.path(), release).await;
    let (_, store) = app.stop().await;
    assert_moved_into_window(&sled::open(&store).unwrap(), &store);
}

/// Opens the old store of `release` in `dir` and checks that everything it holds is there
/// and works; the running bridge, and its TeamCity.
async fn open_and_check(dir: &Path, release: &str) -> (TestApp, FakeTeamCity) {
    let (store, session) = old_store(dir, release);
    let tc = FakeTeamCity::start().await;
    tc.add_token("tc-jdoe", "jdoe");
    tc.add_token("tc-asmith", "asmith");
    let app = open_old(&standard_config(&tc.url, ""), &store, release).await;

    // The two pending jobs and the one left in flight are each sent once, with jdoe's
    // token, which still decrypts under the same master key.
    let calls = tc.wait_for_builds(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_now = tc.build_calls();
    assert_eq!(
        branches(&calls_now),
        vec!["interrupted", "pending-a", "pending-b"],
        "{calls:?}"
    );
    assert!(
        calls_now
            .iter()
            .all(|c| c.authorization.as_deref() == Some("Bearer tc-jdoe"))
    );
    // The interrupted job was looked for in TeamCity before it was posted again.
    assert!(tc.requests().iter().any(|r| {
        r.path == "/app/rest/builds"
            && r.locator()
                .is_some_and(|l| l.contains("branch:(name:interrupted)"))
    }));

    // Tokens: both there, with their status and TeamCity user.
    let tokens = app.api_tokens().await;
    let status = |user: &str| {
        tokens
            .iter()
            .find(|t| t["user"] == user)
            .map(|t| (t["status"].clone(), t["teamcity_user"].clone()))
    };
    assert_eq!(
        status("jdoe"),
        Some((serde_json::json!("valid"), serde_json::json!("jdoe")))
    );
    assert_eq!(
        status("asmith"),
        Some((serde_json::json!("unverified"), serde_json::Value::Null))
    );

    // The dead job is there with its error and can be retried.
    let dead = app.api_jobs("?state=dead").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["last_error"].as_str().unwrap().contains("404"));
    let id = dead[0]["id"].as_str().unwrap();
    let retried = app
        .admin(reqwest::Method::POST, &format!("/jobs/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202);
    let calls = tc.wait_for_builds(4).await;
    assert!(branches(&calls).contains(&"dead".to_owned()));

    // De-duplication: the old delivery id is still a duplicate, and the old change marks
    // still hold under a new delivery id.
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/pending-a", &"a".repeat(40), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&push, "old-delivery-1").await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("duplicate"))
    );
    let (status, answer) = app.dc_push(&push, "new-delivery").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    assert!(
        answer["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("already seen")
    );

    // The token-page session is still signed in.
    let mut page = PageClient::new(&app.url);
    page.cookies.insert("__Host-bb2tc_session".into(), session);
    let home = page.get("/").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Jane Doe (jdoe) on dc"), "{}", home.body);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("bb2tc_store_unreadable_records 0"),
        "{metrics}"
    );
    assert_eq!(tc.build_calls().len(), 4, "nothing sent twice");
    (app, tc)
}

#[tokio::test]
async fn a_damaged_record_is_set_aside_counted_and_the_rest_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = old_store(dir.path(), "a84aaec");
    {
        // A job record that is not postcard of any Job, and one token record cut short.
        let db = sled::open(&store).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        jobs.insert(999u64.to_be_bytes(), &[0xff; 5][..]).unwrap();
        let tokens = db.open_tree("tokens").unwrap();
        let (id, bytes) = tokens.iter().next().unwrap().unwrap();
        tokens.insert(id, &bytes[..bytes.len() / 2]).unwrap();
        db.flush().unwrap();
    }
    let tc = FakeTeamCity::start().await;
    tc.add_token("tc-jdoe", "jdoe");
    tc.add_token("tc-asmith", "asmith");
    let app = TestApp::spawn_on(&standard_config(&tc.url, ""), &store).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("bb2tc_store_unreadable_records 2"),
        "{metrics}"
    );
    assert_eq!(app.api_tokens().await.len(), 1, "the other token is listed");
    assert!(
        !app.api_jobs("?state=dead").await.is_empty(),
        "listings work"
    );
    app.stop().await;
}
