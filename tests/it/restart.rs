//! Jobs stored before the 202 survive a restart and are sent after it.

use crate::support::*;

#[tokio::test]
async fn pending_jobs_are_sent_after_a_restart() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    // So slow that only the first job can go before the stop.
    let slow = standard_config(&tc.url, "")
        .replace("rate_per_second = 1000.0", "rate_per_second = 0.001")
        .replace("burst = 1000", "burst = 1");
    let app = TestApp::spawn(&slow).await;
    app.register_token("dc", "jdoe", "main", "t").await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[
            ("refs/heads/a", &sha(1), "UPDATE"),
            ("refs/heads/b", &sha(2), "UPDATE"),
            ("refs/heads/c", &sha(3), "UPDATE"),
        ],
    );
    let (status, answer) = app.dc_push(&push, "before-restart").await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(3)));
    tc.wait_for_builds(1).await;
    let (temp, store_dir) = app.stop().await;
    assert_eq!(tc.build_calls().len(), 1);

    let fast = standard_config(&tc.url, "");
    let app = TestApp::spawn_on(&fast, &store_dir).await;
    let calls = tc.wait_for_builds(3).await;
    let mut branches: Vec<String> = calls
        .iter()
        .map(|c| c.json()["branchName"].as_str().unwrap().to_owned())
        .collect();
    branches.sort();
    assert_eq!(branches, vec!["a", "b", "c"], "each job exactly once");
    // The token registered before the restart is still usable (same master key).
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some("Bearer t"))
    );
    // Same delivery again after the restart: still a duplicate.
    let (status, _) = app.dc_push(&push, "before-restart").await;
    assert_eq!(status, 200);
    app.stop().await;
    drop(temp);
}
