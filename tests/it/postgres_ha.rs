//! Several bb2tc instances on one PostgreSQL (SPEC §7.1): deliveries spread over them, one
//! killed mid-stream, the dispatch lease taken over, the rate limit across the cluster,
//! tokens and sessions shared.

use crate::support::*;

#[tokio::test]
async fn a_push_is_built_on_postgres() {
    let Some(url) = postgres::database("a_push_is_built_on_postgres").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn_postgres(&standard_config(&tc.url, ""), &url).await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&body, "pg-1").await;
    assert_eq!(status, 202, "{answer}");
    let (status, again) = app.dc_push(&body, "pg-1").await;
    assert_eq!(
        (status, again["result"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    let builds = tc.wait_for_builds(1).await;
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer t"));
    // Readiness reports the database, and where this server's jobs are sent from.
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(
        ready["components"]["store"]["backend"], "postgres",
        "{ready}"
    );
    assert_eq!(
        ready["components"]["store"]["connections"]["max"], 8,
        "{ready}"
    );
    assert_eq!(
        ready["components"]["worker:main"]["dispatch_lease"], "held",
        "{ready}"
    );
    let metrics = app.metrics().await;
    for line in [
        "bb2tc_dispatch_lease{server=\"main\"} 1",
        "bb2tc_store_pool_connections{state=\"max\"} 8",
        "bb2tc_job_claim_duration_seconds_count{server=\"main\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
    app.stop().await;
}

use crate::support::process::Bridge;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A config file in `dir` for a bridge process on the database at `url`: the standard
/// world, TeamCity timeouts of 2 s (so a killed instance's claims are taken back after
/// 14 s), `replace` applied to it.
fn process_config(
    dir: &Path,
    name: &str,
    url: &str,
    tc_url: &str,
    replace: (&str, &str),
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let world = standard_config(tc_url, "")
        .replace("timeout_secs = 5", "timeout_secs = 2")
        .replace(replace.0, replace.1);
    let text = format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\n{world}",
        postgres_storage(url)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether the bridge at `url` holds server `main`'s dispatch lease (its metrics say).
async fn holds_lease(url: &str) -> bool {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .and_then(|r| r.error_for_status());
    match text {
        Ok(r) => r
            .text()
            .await
            .unwrap_or_default()
            .contains("bb2tc_dispatch_lease{server=\"main\"} 1"),
        Err(_) => false,
    }
}

/// The index of the bridge that holds the lease, waiting for one to take it.
async fn lease_holder(urls: &[String]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, url) in urls.iter().enumerate() {
            if holds_lease(url).await {
                return i;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the dispatch lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two bridge processes on one database, jdoe's token `t` registered through the first;
/// the bridges, their URLs, and which one holds server `main`'s lease.
async fn two_bridges(config: &Path) -> ([Option<Bridge>; 2], Vec<String>, usize) {
    let bridges = [
        Some(Bridge::start(config, "")),
        Some(Bridge::start(config, "")),
    ];
    let urls: Vec<String> = bridges
        .iter()
        .map(|b| b.as_ref().unwrap().url.clone())
        .collect();
    register_token_at(&urls[0], "jdoe", "t").await;
    let holder = lease_holder(&urls).await;
    (bridges, urls, holder)
}

/// Waits until TeamCity has a build of every branch `b1`..`b{pushes}`; then asserts that
/// each was built exactly once.
async fn assert_each_built_once(tc: &FakeTeamCity, pushes: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let per_branch = tc.builds_per_branch();
        let lost: Vec<u32> = (1..=pushes)
            .filter(|n| !per_branch.contains_key(&format!("b{n}")))
            .collect();
        if lost.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes never built: {lost:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything sent twice would have arrived by now, too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let doubled: Vec<(String, usize)> = tc
        .builds_per_branch()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(doubled.is_empty(), "pushes built twice: {doubled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_killed_mid_stream_build_every_202_once() {
    const PUSHES: u32 = 300;
    const SENDERS: u32 = 6;
    let Some(url) = postgres::database("two_instances_one_killed_mid_stream").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    tc.agents(Duration::from_millis(5), Duration::from_millis(100));
    // Each call takes 100 ms: at any moment the holder has calls under way.
    tc.post_delay(Duration::from_millis(100));
    let retries = (
        "retry_schedule_secs = [1, 1]",
        "retry_schedule_secs = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]",
    );
    let config = process_config(dir.path(), "a", &url, &tc.url, retries);
    let (mut bridges, urls, holder) = two_bridges(&config).await;

    let http = reqwest::Client::new();
    let targets = Arc::new(Mutex::new(urls.clone()));
    let answered = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(HashMap::<u32, u16>::new()));
    let mut senders = Vec::new();
    for lane in 0..SENDERS {
        let (http, targets, answered, answers) = (
            http.clone(),
            targets.clone(),
            answered.clone(),
            answers.clone(),
        );
        senders.push(tokio::spawn(async move {
            for n in (1..=PUSHES).filter(|n| n % SENDERS == lane) {
                let status = deliver_push(&http, &targets, lane as usize, "ha", n).await;
                answers.lock().unwrap().insert(n, status);
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    while answered.load(Ordering::SeqCst) < 120 || tc.build_calls().len() < 20 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The instance sending the builds dies with calls under way; senders fail over.
    let killed_at = tokio::time::Instant::now();
    bridges[holder].take().unwrap().kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), PUSHES as usize);
    for (n, status) in &answers {
        assert!(matches!(status, 202 | 200), "push {n} answered {status}");
    }
    let survivor = bridges[1 - holder].take().unwrap();
    assert_each_built_once(&tc, PUSHES, Duration::from_secs(60)).await;
    // The killed instance's claims in flight come back to the survivor (their lease runs
    // out after 14 s): then nothing is left pending or in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while jobs_in(&survivor.url, &["pending", "inflight"]).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Those claims were asked of TeamCity, not posted again.
    assert_each_built_once(&tc, PUSHES, Duration::from_secs(5)).await;
    let log = survivor.log();
    assert!(log.contains("holding the dispatch lease"), "{log}");
    let taken_back = log.matches("took back a claim").count();
    eprintln!(
        "claims taken back: {taken_back}; found in TeamCity, not posted again: {}; all built {:?} after the kill",
        log.matches("found in TeamCity; not posted again").count(),
        killed_at.elapsed()
    );
    // The kill caught calls under way: their claims came back to the survivor.
    assert!(
        taken_back > 0,
        "no claim of the killed instance was taken back"
    );
    assert!(survivor.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_taken_over_within_15_s_of_a_kill() {
    let Some(url) = postgres::database("the_lease_is_taken_over").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = process_config(dir.path(), "a", &url, &tc.url, ("", ""));
    let (mut bridges, urls, holder) = two_bridges(&config).await;
    let other = 1 - holder;
    assert!(!holds_lease(&urls[other]).await, "one holder at a time");
    bridges[holder].take().unwrap().kill();
    let killed_at = std::time::Instant::now();
    let targets = Mutex::new(vec![urls[other].clone()]);
    let http = reqwest::Client::new();
    assert_eq!(deliver_push(&http, &targets, 0, "takeover", 1).await, 202);
    let builds = tc
        .wait_for_within(1, Duration::from_secs(20), |r| {
            r.method == "POST" && r.path == "/app/rest/buildQueue"
        })
        .await;
    let took = killed_at.elapsed();
    assert!(took <= Duration::from_secs(15), "taken over after {took:?}");
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer t"));
    assert!(holds_lease(&urls[other]).await);
    let survivor = bridges[other].take().unwrap();
    assert!(survivor.log().contains("holding the dispatch lease"));
    assert!(survivor.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_instances_and_a_handover() {
    const PUSHES: u32 = 40;
    let Some(url) = postgres::database("the_rate_limit_holds_across_instances").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = process_config(
        dir.path(),
        "a",
        &url,
        &tc.url,
        (
            "rate_per_second = 1000.0\nburst = 1000",
            "rate_per_second = 5.0\nburst = 2",
        ),
    );
    let (mut bridges, urls, holder) = two_bridges(&config).await;
    let http = reqwest::Client::new();
    let targets = Mutex::new(urls.clone());
    for n in 1..=PUSHES {
        assert_eq!(
            deliver_push(&http, &targets, n as usize, "rate", n).await,
            202
        );
    }
    // Mid-backlog the holder stops (SIGTERM gives the lease up): the other one takes over
    // with an empty bucket, however much of its burst the first one had just spent.
    tc.wait_for_builds(12).await;
    assert!(bridges[holder].take().unwrap().terminate().success());
    assert_each_built_once(&tc, PUSHES, Duration::from_secs(40)).await;
    let calls: Vec<tokio::time::Instant> = tc
        .requests()
        .into_iter()
        .filter(|r| r.path != "/app/rest/users/current")
        .map(|r| r.at)
        .collect();
    for (i, start) in calls.iter().enumerate() {
        let in_window = calls[i..]
            .iter()
            .filter(|&&t| t < *start + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 7,
            "{in_window} calls within a second from call {i}"
        );
    }
    let survivor = bridges[1 - holder].take().unwrap();
    assert!(survivor.log().contains("holding the dispatch lease"));
    assert!(survivor.terminate().success());
}

#[tokio::test]
async fn tokens_and_sessions_are_shared_between_instances() {
    let Some(url) = postgres::database("tokens_and_sessions_are_shared").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = standard_config(&tc.url, "");
    let a = TestApp::spawn_postgres(&config, &url).await;
    let b = TestApp::spawn_postgres(&config, &url).await;
    let registered = a.register_token("dc", "jdoe", "main", "t").await;
    let on_b = b.api_tokens().await;
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0]["id"], registered["id"]);
    assert!(
        !on_b[0].to_string().contains("\"t\""),
        "the token itself is never shown"
    );
    // A push to b is built with the token registered through a.
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(7), "UPDATE")],
    );
    let (status, answer) = b.dc_push(&body, "shared-1").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["jobs"], 1, "{answer}");
    let builds = tc.wait_for_builds(1).await;
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer t"));
    // Signed in on a, still signed in on b; signed out on b, out on a too.
    let mut browser = PageClient::new(&a.url);
    let signed_in = browser.sign_in_admin(ADMIN_TOKEN).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    browser.base = b.url.clone();
    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign out"), "{}", page.body);
    let csrf = page.csrf();
    assert_eq!(
        browser.post("/signout", &[("csrf", &csrf)]).await.status,
        303
    );
    browser.base = a.url.clone();
    let page = browser.get("/").await;
    assert_ne!(page.status, 200, "the session ended everywhere");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_posted_once_whichever_instance_took_the_push() {
    const PUSHES: u32 = 12;
    let Some(url) = postgres::database("statuses_are_posted_once").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    let bb = FakeBitbucket::start().await;
    bb.add_access_token("bb-status-token", "PROJ/*");
    tc.add_token("tc-jdoe", "jdoe");
    let config = crate::build_statuses::config(&tc.url, &bb.url, "triggers");
    let a = TestApp::spawn_postgres(&config, &url).await;
    let b = TestApp::spawn_postgres(&config, &url).await;
    a.register_token("dc", "jdoe", "main", "tc-jdoe").await;
    for n in 1..=PUSHES {
        let app = if n % 2 == 0 { &a } else { &b };
        let (status, answer) = app.dc_push(&signed_push(n).0, &format!("st-{n}")).await;
        assert_eq!(status, 202, "{answer}");
    }
    let posted = bb.wait_for_statuses(PUSHES as usize).await;
    // Whatever instance queued the build and whichever holds the source's status lease:
    // one status per commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_commit: HashMap<String, usize> = HashMap::new();
    for status in bb.statuses() {
        assert_eq!(status.body["state"], "SUCCESSFUL", "{}", status.body);
        *per_commit.entry(status.sha).or_default() += 1;
    }
    assert_eq!(per_commit.len(), PUSHES as usize, "{posted:?}");
    assert!(per_commit.values().all(|&n| n == 1), "{per_commit:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_bitbucket_sign_in_started_on_one_instance_finishes_on_the_other() {
    let Some(url) = postgres::database("a_bitbucket_sign_in_started_on_one_instance").await else {
        return;
    };
    let world = PageWorld::start_on(Some(&url), "").await;
    // Behind one load balancer: one public URL; Bitbucket sends the browser back to it.
    let same_public_url = format!(
        "{}\n[server]\npublic_url = \"{}\"\n",
        page_config(&world.bitbucket.url, &world.teamcity.url, ""),
        world.app.url
    );
    let b = TestApp::spawn_postgres(&same_public_url, &url).await;
    world.bitbucket.consent_as(Some("jdoe"));
    let mut browser = world.client();
    let start = browser.get("/signin/oauth/dc").await;
    assert_eq!(start.status, 303);
    let state = browser.cookies["__Secure-bb2tc_oauth"].clone();
    let consent = browser.get(&start.location.unwrap()).await;
    assert_eq!(consent.status, 302, "{}", consent.body);
    let back = consent.location.unwrap();
    let path = back.strip_prefix(&world.app.url).expect("back to bb2tc");
    // The load balancer sends the callback to the other instance.
    browser.base = b.url.clone();
    let callback = browser.get(path).await;
    assert_eq!(callback.status, 200, "{}", callback.body);
    assert!(callback.set_cookie("__Host-bb2tc_session").is_some());
    assert!(world.bitbucket.asked("/rest/oauth2/latest/token").is_some());
    // Once only: the same callback again is refused, on either instance (with the state
    // cookie a replay would carry).
    for base in [&b.url, &world.app.url] {
        browser.base = base.clone();
        browser
            .cookies
            .insert("__Secure-bb2tc_oauth".into(), state.clone());
        let again = browser.get(path).await;
        assert_eq!(again.status, 400, "{}", again.body);
        assert!(again.body.contains("expired or was already used"));
    }
    b.stop().await;
}

/// The `[storage]` settings of a bridge on the database at `url`.
fn storage_settings(url: &str, master_key: &str) -> bb2tc::config::StorageSettings {
    let text = format!(
        "{}{}",
        postgres_storage(url).replace(MASTER_KEY, master_key),
        standard_config("http://127.0.0.1:9", "")
    );
    bb2tc::config::Config::from_toml_str(&text, &|_| None)
        .unwrap()
        .storage
}

async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.query(sql, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once_and_a_newer_schema_or_another_key_is_refused() {
    let Some(url) = postgres::database("instances_starting_together_migrate_once").await else {
        return;
    };
    let settings = storage_settings(&url, MASTER_KEY);
    let (a, b, c) = tokio::join!(
        bb2tc::store::Store::connect(&settings),
        bb2tc::store::Store::connect(&settings),
        bb2tc::store::Store::connect(&settings),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.id(), b.id());
    assert_eq!(b.id(), c.id());
    let versions: Vec<i32> = query(&url, "SELECT version FROM bb2tc_schema ORDER BY version")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2], "each migration ran once");
    drop((a, b, c));

    // Another master key: refused, naming the key to check.
    let other = storage_settings(&url, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=");
    let err = bb2tc::store::Store::connect(&other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("master key") && err.contains("storage.master_key"),
        "{err}"
    );

    // A schema from a newer bb2tc: refused, nothing changed.
    query(&url, "INSERT INTO bb2tc_schema (version) VALUES (99)").await;
    let err = bb2tc::store::Store::connect(&settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("version 99") && err.contains("newer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_still_under_way_at_a_handover_is_retried_by_the_new_holder() {
    let Some(url) = postgres::database("a_call_still_under_way_at_a_handover").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = process_config(
        dir.path(),
        "a",
        &url,
        &tc.url,
        ("timeout_secs = 2", "timeout_secs = 8"),
    );
    let (mut bridges, urls, holder) = two_bridges(&config).await;
    // The first call takes 5 s and is answered 503: when it ends, the holder is stopping and
    // the other instance took the lease (within 2 s of the SIGTERM) while the job was in
    // flight — it never saw it pending.
    tc.post_delay(Duration::from_secs(5));
    tc.fail_next(503, "TeamCity is starting", None);
    let targets = Mutex::new(vec![urls[holder].clone()]);
    let http = reqwest::Client::new();
    assert_eq!(deliver_push(&http, &targets, 0, "handover", 1).await, 202);
    tc.wait_for(1, |r| r.method == "POST").await;
    let stopping = bridges[holder].take().unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || stopping.terminate_and_log())
        .await
        .unwrap();
    assert!(status.success());
    assert!(log.contains("outcome=\"retry\""), "{log}");
    tc.post_delay(Duration::ZERO);
    let builds = tc
        .wait_for_within(2, Duration::from_secs(20), |r| {
            r.method == "POST" && r.path == "/app/rest/buildQueue"
        })
        .await;
    assert_eq!(builds.len(), 2, "the retry, sent by the new holder");
    assert_eq!(builds[1].authorization.as_deref(), Some("Bearer t"));
    let survivor = bridges[1 - holder].take().unwrap();
    assert!(survivor.log().contains("holding the dispatch lease"));
    assert!(survivor.terminate().success());
}

/// Concurrent deliveries share transactions (`group_commit`); one the database refuses
/// (here a trigger refuses its record) fails alone, and leaves nothing behind: the others of
/// its group are built once each, and it is built once delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_database_refuses_fails_alone_in_its_group() {
    let Some(url) = postgres::database("a_delivery_the_database_refuses_fails_alone").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let app = TestApp::spawn_postgres(&standard_config(&tc.url, ""), &url).await;
    app.register_token("dc", "jdoe", "main", "t").await;
    query(
        &url,
        "CREATE FUNCTION refuse_delivery() RETURNS trigger LANGUAGE plpgsql \
         AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    )
    .await;
    query(
        &url,
        "CREATE TRIGGER refuse_delivery BEFORE INSERT ON bb2tc_deliveries FOR EACH ROW \
         WHEN (NEW.id = 'refused') EXECUTE FUNCTION refuse_delivery()",
    )
    .await;
    const PUSHES: u32 = 40;
    let push = |n: u32| {
        dc_payload(
            "jdoe",
            "PROJ/repo",
            &[(&format!("refs/heads/b{n}"), &sha(n), "UPDATE")],
        )
    };
    let app = &app;
    let sends = (1..=PUSHES + 1).map(|n| async move {
        let id = if n > PUSHES {
            "refused".to_owned()
        } else {
            format!("group-{n}")
        };
        app.dc_push(&push(n), &id).await
    });
    let answers = futures_util::future::join_all(sends).await;
    let (refused, accepted) = answers.split_last().unwrap();
    assert_eq!(refused.0, 503, "{}", refused.1);
    for (status, answer) in accepted {
        assert_eq!(
            (*status, answer["jobs"].as_u64()),
            (202, Some(1)),
            "{answer}"
        );
    }
    assert_each_built_once(&tc, PUSHES, Duration::from_secs(15)).await;
    assert!(
        !tc.builds_per_branch()
            .contains_key(&format!("b{}", PUSHES + 1))
    );

    query(&url, "DROP TRIGGER refuse_delivery ON bb2tc_deliveries").await;
    let (status, again) = app.dc_push(&push(PUSHES + 1), "refused").await;
    assert_eq!((status, again["jobs"].as_u64()), (202, Some(1)), "{again}");
    assert_each_built_once(&tc, PUSHES + 1, Duration::from_secs(15)).await;
}
