//! Every queued build is followed until it finishes (SPEC §6.1): what TeamCity says of it is
//! kept with the job, shown by the jobs API and counted, and following resumes after a
//! restart. Polls come every 5–10 s, so these tests take that long.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

/// Polls the jobs API until job `n` of the list satisfies `done`; 40 s at most.
async fn wait_for_job(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        if let Some(job) = app.api_jobs("").await.into_iter().find(|j| done(j)) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no job as expected: {:?}", app.api_jobs("").await);
}

fn build_state(job: &Value) -> &str {
    job["build"]["state"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_queued_build_is_followed_until_it_finishes_and_counted() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("tc-jdoe", "jdoe");
    tc.agents(Duration::from_secs(1), Duration::from_secs(2));
    tc.finish_as("FAILURE", "Tests failed: 2 (1 new), passed: 40");
    let app = TestApp::spawn(&standard_config(&tc.url, "")).await;
    app.register_token("dc", "jdoe", "main", "tc-jdoe").await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    assert_eq!(app.dc_push(&push, "f-1").await.0, 202);
    let job = wait_for_job(&app, |j| build_state(j) == "finished").await;
    assert_eq!(job["build"]["status"], "FAILURE");
    assert_eq!(
        job["build"]["status_text"],
        "Tests failed: 2 (1 new), passed: 40"
    );
    assert_eq!(job["build"]["number"], "1");
    assert!(
        job["build"]["next_poll_at"].is_null(),
        "no longer followed: {job}"
    );
    assert!(
        job["web_url"].as_str().unwrap().contains("viewLog.html"),
        "{job}"
    );
    // The polls: the queue's endpoint for the build, with SPEC §6.1's fields, as the pusher.
    let id = job["build_id"].as_u64().unwrap();
    let polls: Vec<_> = tc
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == format!("/app/rest/buildQueue/id:{id}"))
        .collect();
    assert!(!polls.is_empty());
    for poll in &polls {
        assert_eq!(poll.authorization.as_deref(), Some("Bearer tc-jdoe"));
        let query = poll.query.as_deref().unwrap_or("");
        let fields: String = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "fields")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert_eq!(
            fields,
            "id,state,status,statusText,number,webUrl,branchName,failedToStart,canceledInfo(text)"
        );
    }
    // Polled at most every 5 s: over the build's ~3 s, once or twice.
    assert!(polls.len() <= 2, "{} polls", polls.len());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"bb2tc_builds_total{server="main",result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn following_resumes_after_a_restart() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("tc-jdoe", "jdoe");
    let config = standard_config(&tc.url, "");
    let app = TestApp::spawn(&config).await;
    app.register_token("dc", "jdoe", "main", "tc-jdoe").await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(2), "UPDATE")],
    );
    assert_eq!(app.dc_push(&push, "r-1").await.0, 202);
    // The build stays queued; the first poll sees that.
    let job = wait_for_job(&app, |j| j["build"]["polls"].as_u64() >= Some(1)).await;
    assert_eq!(build_state(&job), "queued");
    let (temp, store) = app.stop().await;
    // While bb2tc is down, the build runs and finishes.
    tc.start_queued();
    tc.finish_all();
    let app = TestApp::spawn_on(&config, &store).await;
    let job = wait_for_job(&app, |j| build_state(j) == "finished").await;
    assert_eq!(job["build"]["status"], "SUCCESS");
    assert_eq!(tc.build_calls().len(), 1, "followed, not sent again");
    app.stop().await;
    drop(temp);
}
