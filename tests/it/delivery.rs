//! What TeamCity's answers do to jobs (SPEC §6), coalescing (§5.3), isolation between servers
//! (§7) and the job admin API (§8). Retry schedules here are a few tens of milliseconds; the
//! exact waits, jitter and Retry-After arithmetic are unit-tested in `queue::retry`.

use crate::support::*;
use reqwest::Method;
use serde_json::Value;

const FAST_RETRIES: &str = "retry_schedule_secs = [0.02, 0.02, 0.02, 0.02]";

async fn app_with(backend: Backend, extra: &str) -> Option<(FakeTeamCity, TestApp)> {
    let tc = FakeTeamCity::start().await;
    let config =
        standard_config(&tc.url, extra).replace("retry_schedule_secs = [1, 1]", FAST_RETRIES);
    let app = TestApp::spawn_backend(backend, &config).await?;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    Some((tc, app))
}

async fn push(app: &TestApp, id: &str, branch: &str, n: u32) -> Value {
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[(&format!("refs/heads/{branch}"), &sha(n), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&body, id).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

/// Waits (by polling the API between yields) until a job reaches `state`.
async fn wait_for_state(app: &TestApp, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(job) = app
            .api_jobs(&format!("?state={state}"))
            .await
            .into_iter()
            .next()
        {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job reached {state}: {:#?}",
            app.api_jobs("").await
        );
        tokio::task::yield_now().await;
    }
}

async fn three_503s_then_200_is_exactly_one_build(backend: Backend) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    for _ in 0..3 {
        tc.fail_next(503, "TeamCity is starting", None);
    }
    push(&app, "retry", "main", 1).await;
    let calls = tc.wait_for_builds(4).await;
    let done = wait_for_state(&app, "done").await;
    assert_eq!(done["attempts"], 4);
    assert_eq!(
        done["last_error"],
        "TeamCity answered 503: TeamCity is starting"
    );
    assert!(done["build_id"].as_u64().is_some());
    assert!(
        done["web_url"]
            .as_str()
            .unwrap()
            .contains("viewQueued.html")
    );
    assert_eq!(tc.build_calls().len(), 4, "no call after success");
    for pair in calls.windows(2) {
        assert!(
            pair[1].at >= pair[0].at + std::time::Duration::from_millis(15),
            "waited for the schedule"
        );
    }
}

async fn client_errors_are_dead_at_once_with_teamcity_text(backend: Backend) {
    for (status, text) in [
        (400, "Build type is paused"),
        (403, "You do not have enough permissions to run builds"),
        (404, "No build type found by locator 'Proj_Build'"),
    ] {
        let Some((tc, app)) = app_with(backend, "").await else {
            return;
        };
        tc.fail_next(status, text, None);
        push(&app, "fail", "main", 1).await;
        let dead = wait_for_state(&app, "dead").await;
        assert_eq!(dead["attempts"], 1);
        assert_eq!(
            dead["last_error"],
            format!("TeamCity answered {status}: {text}")
        );
        assert_eq!(tc.build_calls().len(), 1);
    }
}

async fn exhausted_schedule_is_dead_and_admin_can_retry_or_remove(backend: Backend) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    for _ in 0..5 {
        tc.fail_next(502, "Bad Gateway", None);
    }
    push(&app, "exhaust", "main", 1).await;
    let dead = wait_for_state(&app, "dead").await;
    assert_eq!(dead["attempts"], 5);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 5 attempts")
    );
    let id = dead["id"].as_str().unwrap().to_owned();

    let response = app
        .admin(Method::POST, &format!("/jobs/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    tc.wait_for_builds(6).await;
    let done = wait_for_state(&app, "done").await;
    assert_eq!(done["id"], id);
    let again = app
        .admin(Method::POST, &format!("/jobs/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    let response = app
        .admin(Method::DELETE, &format!("/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(app.api_jobs("").await.is_empty());
    for (method, path) in [
        (Method::DELETE, format!("/jobs/{id}")),
        (Method::POST, "/jobs/999999/retry".into()),
        (Method::DELETE, "/jobs/abc".into()),
    ] {
        assert_eq!(app.admin(method, &path).send().await.unwrap().status(), 404);
    }
    assert_eq!(
        app.admin(Method::GET, "/jobs?state=weird")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

async fn retry_after_is_honoured(backend: Backend) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    // Step 0.02 s: Retry-After 1 is capped at twice the step (0.04 s), never below the step.
    tc.fail_next(429, "Too many requests", Some("1"));
    push(&app, "ra", "main", 1).await;
    let calls = tc.wait_for_builds(2).await;
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= std::time::Duration::from_millis(30), "{gap:?}");
    assert!(
        gap < std::time::Duration::from_millis(900),
        "capped at twice the step: {gap:?}"
    );
    wait_for_state(&app, "done").await;
}

async fn a_different_branch_in_the_answer_is_a_warning(backend: Backend) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    tc.answer_with_branch("main");
    push(&app, "warn", "feature/not-in-branch-spec", 1).await;
    let done = wait_for_state(&app, "done").await;
    let warning = done["warning"].as_str().unwrap();
    assert!(
        warning.contains("feature/not-in-branch-spec") && warning.contains("\"main\""),
        "{warning}"
    );
}

async fn quick_pushes_to_one_branch_coalesce_into_the_newest(backend: Backend) {
    // Two calls a second, burst 1: "first" goes at once, "blocker" waits for the bucket until
    // 0.5 s, and the three pushes to main meanwhile wait as pending jobs and coalesce; jobs
    // stay pending (replaceable) until the bucket admits them.
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = standard_config(&tc.url, "")
        .replace("rate_per_second = 1000.0", "rate_per_second = 2.0")
        .replace("burst = 1000", "burst = 1");
    let Some(app) = TestApp::spawn_backend(backend, &config).await else {
        return;
    };
    app.register_token("dc", "jdoe", "main", "t").await;
    push(&app, "first", "first", 1).await;
    push(&app, "blocker", "blocker", 2).await;
    for n in 3..=5 {
        let answer = push(&app, &format!("quick-{n}"), "main", n).await;
        assert_eq!(answer["jobs"], 1);
    }
    let pending: Vec<Value> = app
        .api_jobs("?state=pending")
        .await
        .into_iter()
        .filter(|j| j["branch"] == "main")
        .collect();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0]["sha"], sha(5));
    let calls = tc.wait_for_builds(3).await;
    let branches: Vec<&str> = calls
        .iter()
        .map(|c| c.json()["branchName"].as_str().unwrap().to_owned())
        .map(|b| match b.as_str() {
            "first" => "first",
            "blocker" => "blocker",
            _ => "main",
        })
        .collect();
    assert_eq!(branches, vec!["first", "blocker", "main"]);
    assert!(comment_without_mark(&calls[2].json()).ends_with(&sha(5)[..7]));
    // Each call's result is written just after it: wait for all three.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.api_jobs("?state=done").await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs never all done"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(tc.build_calls().len(), 3);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"bb2tc_jobs_coalesced_total{server="main"} 2"#),
        "{metrics}"
    );
}

async fn a_hung_server_does_not_delay_another(backend: Backend) {
    let hung = FakeTeamCity::start().await;
    hung.add_token("h", "jdoe");
    let extra = format!(
        r#"
[[teamcity]]
id = "hung"
url = "{}"
timeout_secs = 60
max_in_flight = 1

[[route]]
source = "dc"
repository = "*"
teamcity = "hung"
build_types = ["Stuck"]
"#,
        hung.url
    );
    let Some((tc, app)) = app_with(backend, &extra).await else {
        return;
    };
    app.register_token("dc", "jdoe", "hung", "h").await;
    hung.hang(true);
    // Every push makes a job on each server; the hung one takes the first and blocks.
    for n in 1..=5 {
        push(&app, &format!("iso-{n}"), &format!("b{n}"), n).await;
    }
    let healthy = tc.wait_for_builds(5).await;
    assert_eq!(healthy.len(), 5);
    // (With PostgreSQL each server's worker starts when it takes that server's lease.)
    hung.wait_for_builds(1).await;
    assert_eq!(
        hung.build_calls().len(),
        1,
        "max_in_flight = 1 on the hung server"
    );
    // The healthy server's jobs finish (their results are written just after the calls);
    // the hung server's one stays in flight.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let inflight = app.api_jobs("?state=inflight").await;
        if inflight.len() == 1 {
            assert_eq!(inflight[0]["server"], "hung");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{inflight:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn deliveries_are_listed_with_their_outcome(backend: Backend) {
    let Some((_tc, app)) = app_with(backend, "").await else {
        return;
    };
    push(&app, "listed-1", "main", 1).await;
    let strangers_push = dc_payload(
        "stranger",
        "PROJ/repo",
        &[("refs/heads/x", &sha(2), "UPDATE")],
    );
    app.dc_push(&strangers_push, "listed-2").await;
    app.dc_push(&strangers_push, "listed-2").await;
    app.webhook(
        "dc",
        Some("pr:reviewer:approved"),
        b"{}",
        Some(DC_SECRET),
        Some("listed-3"),
    )
    .await;
    let list = app.api_deliveries(10).await;
    let outcome = |id: &str, result: &str| {
        list.iter()
            .find(|d| d["id"] == id && d["result"] == result)
            .cloned()
    };
    assert_eq!(outcome("listed-1", "accepted").unwrap()["jobs"], 1);
    let skipped = outcome("listed-2", "accepted").unwrap();
    assert_eq!(
        skipped["skipped"][0]["reason"],
        "no token for stranger on main"
    );
    assert!(outcome("listed-2", "duplicate").is_some());
    assert!(outcome("listed-3", "ignored").is_some());
    assert_eq!(
        app.admin(Method::GET, "/deliveries?limit=0")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

async fn an_oversized_answer_to_a_queued_build_is_checked_in_teamcity_not_posted_twice(
    backend: Backend,
) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    // TeamCity queues the build, but the answer is 2 MiB (bb2tc reads at most 1 MiB).
    tc.pad_next_answer(2 * 1024 * 1024);
    push(&app, "padded", "main", 1).await;
    let done = wait_for_state(&app, "done").await;
    // The retry asked TeamCity first and found the build by its job mark.
    let asked = tc.wait_for(1, |r| r.path == "/app/rest/builds").await;
    assert!(asked[0].locator().unwrap().contains("state:any"));
    assert_eq!(tc.build_calls().len(), 1, "posted once");
    assert_eq!(done["build_id"].as_u64(), Some(101));
    assert!(
        done["warning"]
            .as_str()
            .unwrap()
            .contains("found in TeamCity"),
        "{done}"
    );
}

/// A TeamCity (or a proxy before it) whose `200` body drips: the first answer's body stalls
/// past `timeout_secs`. That is a timeout of that call, retried — and since TeamCity had
/// answered 200, the retry first asks TeamCity whether the build exists (here it does not:
/// the fake lists none), then posts.
async fn a_200_whose_body_stalls_is_retried_after_asking_teamcity(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, posts) = (seen.clone(), posts.clone());
                tokio::spawn(async move {
                    let mut head = vec![0; 65536];
                    let n = stream.read(&mut head).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&head[..n]).into_owned();
                    let line = text.lines().next().unwrap_or("").to_owned();
                    seen.lock().unwrap().push(line.clone());
                    let body = if line.starts_with("POST /app/rest/buildQueue") {
                        if posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":")
                                .await;
                            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                            return;
                        }
                        r#"{"id":7,"state":"queued","branchName":"main"}"#
                    } else {
                        r#"{"count":0,"build":[]}"#
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
    }
    let config = standard_config(&url, "")
        .replace("retry_schedule_secs = [1, 1]", FAST_RETRIES)
        .replace("timeout_secs = 5", "timeout_secs = 1");
    let Some(app) = TestApp::spawn_backend(backend, &config).await else {
        return;
    };
    let registered = app
        .admin(Method::POST, "/tokens")
        .json(&serde_json::json!({"source": "dc", "user": "jdoe", "teamcity": "main", "token": "t", "verify": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    push(&app, "drip", "main", 1).await;
    let done = wait_for_state(&app, "done").await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["build_id"].as_u64(), Some(7));
    let seen = seen.lock().unwrap().clone();
    let order: Vec<&str> = seen
        .iter()
        .map(|l| {
            l.split('?')
                .next()
                .unwrap_or(l)
                .split_whitespace()
                .take(2)
                .last()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        order,
        vec![
            "/app/rest/buildQueue",
            "/app/rest/builds",
            "/app/rest/buildQueue"
        ],
        "{seen:?}"
    );
}

/// Deliveries that arrive together are decided as if one after the other (on PostgreSQL they
/// share transactions, see `group_commit`): 8 commits, each pushed under 3 delivery ids,
/// each id sent twice, all 48 at once. Every commit is built once; of each commit's ids one
/// made the build and the others say it was already seen; of each id's two sends one is
/// the delivery and the other its duplicate.
async fn concurrent_deliveries_are_decided_as_one_after_another(backend: Backend) {
    let Some((tc, app)) = app_with(backend, "").await else {
        return;
    };
    const COMMITS: u32 = 8;
    let sends = (1..=COMMITS).flat_map(|n| {
        ["a", "b", "c"].into_iter().flat_map(move |id| {
            [
                (n, format!("together-{n}-{id}")),
                (n, format!("together-{n}-{id}")),
            ]
        })
    });
    let app = &app;
    let answers = futures_util::future::join_all(sends.map(|(n, id)| async move {
        let body = dc_payload(
            "jdoe",
            "PROJ/repo",
            &[(&format!("refs/heads/b{n}"), &sha(n), "UPDATE")],
        );
        let (status, answer) = app.dc_push(&body, &id).await;
        (n, id, status, answer)
    }))
    .await;
    for n in 1..=COMMITS {
        let of_commit: Vec<_> = answers.iter().filter(|a| a.0 == n).collect();
        let built = of_commit
            .iter()
            .filter(|a| a.2 == 202 && a.3["jobs"] == 1)
            .count();
        let seen = of_commit
            .iter()
            .filter(|a| {
                a.2 == 202
                    && a.3["jobs"] == 0
                    && a.3["skipped"][0]["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("already seen"))
            })
            .count();
        let duplicates = of_commit
            .iter()
            .filter(|a| a.2 == 200 && a.3 == serde_json::json!({"result": "duplicate"}))
            .count();
        assert_eq!(
            (built, seen, duplicates),
            (1, 2, 3),
            "commit {n}: {of_commit:#?}"
        );
        for id in ["a", "b", "c"] {
            let id = format!("together-{n}-{id}");
            let sent: Vec<u16> = of_commit
                .iter()
                .filter(|a| a.1 == id)
                .map(|a| a.2)
                .collect();
            assert_eq!(
                sent.iter().filter(|s| **s == 202).count(),
                1,
                "{id}: {sent:?}"
            );
        }
    }
    let calls = tc.wait_for_builds(COMMITS as usize).await;
    for n in 1..=COMMITS {
        let of_commit = calls
            .iter()
            .filter(|c| c.json()["branchName"] == format!("b{n}"))
            .count();
        assert_eq!(of_commit, 1, "commit {n}");
    }
    assert_eq!(app.api_jobs("").await.len(), COMMITS as usize);
}

async fn every_202_is_listed_by_the_next_request(backend: Backend) {
    // With sled, a delivery reaches the trees a moment after its 202 (the intake log's
    // applier); an operator's script that pushes and then lists must still find it.
    let Some((_tc, app)) = app_with(backend, "").await else {
        return;
    };
    for n in 1..=40 {
        let id = format!("listed-at-once-{n}");
        push(&app, &id, &format!("b{n}"), n).await;
        let jobs = app.api_jobs("").await;
        assert!(
            jobs.iter().any(|j| j["sha"] == sha(n)),
            "push {n} is not listed: {jobs:#?}"
        );
        assert_eq!(app.api_deliveries(1).await[0]["id"], id.as_str());
    }
}

crate::on_both_backends!(
    three_503s_then_200_is_exactly_one_build,
    client_errors_are_dead_at_once_with_teamcity_text,
    exhausted_schedule_is_dead_and_admin_can_retry_or_remove,
    retry_after_is_honoured,
    a_different_branch_in_the_answer_is_a_warning,
    quick_pushes_to_one_branch_coalesce_into_the_newest,
    a_hung_server_does_not_delay_another,
    deliveries_are_listed_with_their_outcome,
    an_oversized_answer_to_a_queued_build_is_checked_in_teamcity_not_posted_twice,
    a_200_whose_body_stalls_is_retried_after_asking_teamcity,
    concurrent_deliveries_are_decided_as_one_after_another,
    every_202_is_listed_by_the_next_request,
);
