//! The real binary under failure: a store that cannot take writes answers 503, a `kill -9`
//! loses no accepted push, SIGTERM exits cleanly.

use crate::support::process::Bridge;
use crate::support::*;
use std::collections::HashMap;
use std::path::Path;

fn write_config(dir: &Path, tc_url: &str, retry: &str) -> std::path::PathBuf {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n[storage]\npath = {:?}\nmaster_key = \"{MASTER_KEY}\"\n{}",
        dir.join("data").display().to_string(),
        standard_config(tc_url, "").replace("retry_schedule_secs = [1, 1]", retry)
    );
    let path = dir.join("bb2tc.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn signed_push(user: &str, n: u32) -> (Vec<u8>, String) {
    let body = dc_payload(
        user,
        "PROJ/repo",
        &[(&format!("refs/heads/b{n}"), &sha(n), "UPDATE")],
    );
    let signature = bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body);
    (body, signature)
}

async fn send(http: &reqwest::Client, url: &str, n: u32) -> Result<u16, reqwest::Error> {
    let (body, signature) = signed_push("jdoe", n);
    let response = http
        .post(format!("{url}/hooks/bitbucket/dc"))
        .header("X-Event-Key", "repo:refs_changed")
        .header("X-Hub-Signature", signature)
        .header("X-Request-Id", format!("crash-{n}"))
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn an_unwritable_store_answers_503_and_readyz_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        "retry_schedule_secs = [3600]",
    );
    // Files may not grow past 512 KiB: sled's log hits EFBIG after some deliveries.
    let bridge = Bridge::start(&config, "trap '' XFSZ; ulimit -f 1024");
    let http = reqwest::Client::new();
    let mut codes: HashMap<u16, usize> = HashMap::new();
    for n in 1..=20_000 {
        let code = send(&http, &bridge.url, n).await.unwrap();
        *codes.entry(code).or_default() += 1;
        if code != 202 {
            break;
        }
    }
    assert_eq!(codes.get(&503), Some(&1), "{codes:?}");
    assert_eq!(codes.len(), 2, "only 202 and then 503: {codes:?}");
    let ready = http
        .get(format!("{}/readyz", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["components"]["store"]["status"], "failing");
    let live = http
        .get(format!("{}/healthz", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    bridge.kill();
}

#[tokio::test]
async fn kill_9_during_a_stream_of_pushes_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // TeamCity is down: its port is reserved, then closed.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tc_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let config = write_config(
        dir.path(),
        &format!("http://{tc_addr}"),
        "retry_schedule_secs = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]",
    );
    let bridge = Bridge::start(&config, "");
    let http = reqwest::Client::new();
    let registered = http
        .post(format!("{}/api/v1/tokens", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"source": "dc", "user": "jdoe", "teamcity": "main", "token": "t", "verify": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    // 300 pushes from 8 concurrent senders; bb2tc is killed after the 150th answer.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut senders = Vec::new();
    for lane in 0..8u32 {
        let (http, url, accepted, answered) = (
            http.clone(),
            bridge.url.clone(),
            accepted.clone(),
            answered.clone(),
        );
        senders.push(tokio::spawn(async move {
            for n in (1..=300u32).filter(|n| n % 8 == lane) {
                match send(&http, &url, n).await {
                    Ok(202) => accepted.lock().unwrap().push(n),
                    Ok(other) => panic!("push {n} answered {other}"),
                    Err(_) => {} // the connection died with the process: not accepted
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    let killer = {
        let answered = answered.clone();
        tokio::spawn(async move {
            while answered.load(std::sync::atomic::Ordering::SeqCst) < 150 {
                tokio::task::yield_now().await;
            }
            bridge.kill();
            let _ = killed_tx.send(());
        })
    };
    killed_rx.await.unwrap();
    killer.await.unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 150, "{} accepted", accepted.len());

    // TeamCity comes up on its port, bb2tc restarts on the same store.
    let tc = FakeTeamCity::serve(tokio::net::TcpListener::bind(tc_addr).await.unwrap());
    tc.add_token("t", "jdoe");
    let bridge = Bridge::start(&config, "");
    tc.wait_for_builds(accepted.len()).await;
    // Wait until nothing is pending or in flight, then count the builds per push.
    wait_until_drained(&bridge.url).await;
    let branches: Vec<String> = accepted.iter().map(|n| format!("b{n}")).collect();
    assert_built_exactly_once(&tc, &branches);
    let status = bridge.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

#[tokio::test]
async fn sigterm_mid_backlog_exits_0_and_the_rest_is_sent_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let slow = write_config(dir.path(), &tc.url, "retry_schedule_secs = [1]");
    let text = std::fs::read_to_string(&slow)
        .unwrap()
        .replace("rate_per_second = 1000.0", "rate_per_second = 0.01")
        .replace("burst = 1000", "burst = 1");
    std::fs::write(&slow, text).unwrap();
    let bridge = Bridge::start(&slow, "");
    let http = reqwest::Client::new();
    register_token_at(&bridge.url, "jdoe", "t").await;
    for n in 1..=4 {
        assert_eq!(send(&http, &bridge.url, n).await.unwrap(), 202);
    }
    tc.wait_for_builds(1).await;
    let started = std::time::Instant::now();
    let status = bridge.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "did not wait out the backlog"
    );
    assert_eq!(tc.build_calls().len(), 1);

    let fast = write_config(dir.path(), &tc.url, "retry_schedule_secs = [1]");
    let bridge = Bridge::start(&fast, "");
    let calls = tc.wait_for_builds(4).await;
    let mut branches: Vec<String> = calls
        .iter()
        .map(|c| c.json()["branchName"].as_str().unwrap().to_owned())
        .collect();
    branches.sort();
    assert_eq!(branches, vec!["b1", "b2", "b3", "b4"]);
    assert!(bridge.terminate().success());
}

#[tokio::test]
async fn a_store_directory_removed_at_runtime_is_noticed_never_a_202_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn_on(&standard_config(&tc.url, ""), &store).await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    assert_eq!(app.dc_push(&push, "before").await.0, 202);
    // Someone moves the store away (a wrong cleanup script, a volume swapped under it).
    std::fs::rename(&store, dir.path().join("moved")).unwrap();
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/dev", &sha(2), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&push, "after").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        !answer.to_string().contains("moved"),
        "no paths in the answer: {answer}"
    );
    for (path, status) in [("/readyz", 503), ("/healthz", 503)] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    // The same directory back in place: writes are durable again. Nothing of the 503'd
    // delivery was kept, so Bitbucket's retry of it is taken anew; a second retry is then
    // a duplicate.
    std::fs::rename(dir.path().join("moved"), &store).unwrap();
    let (status, answer) = app.dc_push(&push, "after").await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    let (status, answer) = app.dc_push(&push, "after").await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("duplicate"))
    );
    let live = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}
