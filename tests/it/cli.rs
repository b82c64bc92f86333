//! The real binary: `check-config` and `sign`.

use crate::support::process;
use crate::support::*;
use std::process::Command;

fn bb2tc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bb2tc"))
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let output = bb2tc()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/bb2tc.toml"),
        ])
        .env_remove("BB2TC_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("dc (datacenter): webhook URL http://127.0.0.1:8080/hooks/bitbucket/dc"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route[0]: dc repositories PROJ/*"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        standard_config("http://127.0.0.1:1", "").replace("burst = 1000", "burst = 0\nratee = 1"),
    )
    .unwrap();
    let output = bb2tc()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("teamcity[0]") && stderr.contains("ratee"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        standard_config("http://127.0.0.1:1", "").replace("burst = 1000", "burst = 0"),
    )
    .unwrap();
    let output = bb2tc()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("teamcity[0] (id \"main\").burst: must be at least 1"),
        "{stderr}"
    );

    let output = bb2tc()
        .args(["check-config", "--config", "/nonexistent/bb2tc.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn sign_prints_the_published_signature() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bitbucket/cloud-push-branch-create-signed.json"
    );
    let output = bb2tc()
        .args(["sign", "--secret", CLOUD_SECRET, path])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
    );
}

/// Runs the binary without blocking the test's runtime (the bridge runs on it).
async fn run(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Option<String>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut command = bb2tc();
        command
            .args(&args)
            .env_remove("BB2TC_ADMIN_TOKEN")
            .env_remove("BB2TC_CONFIG");
        for (key, value) in env {
            command.env(key, value);
        }
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn token_and_jobs_commands_against_a_running_bridge() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("cli-secret-token", "jdoe");
    let config = standard_config(&tc.url, "");
    let app = TestApp::spawn(&config).await;
    let env = vec![("BB2TC_ADMIN_TOKEN", ADMIN_TOKEN.to_string())];

    // add, with the token on standard input
    let out = run(
        args(&[
            "token",
            "add",
            "--url",
            &app.url,
            "--user",
            "jdoe",
            "--teamcity",
            "main",
            "--source",
            "dc",
            "--token",
            "-",
            "--json",
        ]),
        env.clone(),
        Some("cli-secret-token\n".into()),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (added["user"].as_str(), added["status"].as_str()),
        (Some("jdoe"), Some("valid"))
    );
    let id = added["id"].as_str().unwrap().to_owned();

    // list, as a table and as JSON parsed back
    let out = run(
        args(&["token", "list", "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("ID") && table.contains(&id) && table.contains("valid"),
        "{table}"
    );
    assert!(!table.contains("cli-secret-token"));
    let out = run(
        args(&[
            "token", "list", "--url", &app.url, "--user", "JDOE", "--json",
        ]),
        env.clone(),
        None,
    )
    .await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["tokens"][0]["id"], id.as_str());

    // a rejected token: non-zero exit with the API's message
    let out = run(
        args(&[
            "token",
            "add",
            "--url",
            &app.url,
            "--user",
            "amy",
            "--teamcity",
            "main",
            "--source",
            "dc",
            "--token",
            "bogus",
        ]),
        env.clone(),
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rejected the token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a dead job: listed, retried, removed
    tc.fail_next(400, "Build configuration is paused", None);
    app.dc_push(
        &dc_payload(
            "jdoe",
            "PROJ/repo",
            &[("refs/heads/main", &sha(1), "UPDATE")],
        ),
        "cli-push",
    )
    .await;
    let job_id = loop {
        let out = run(
            args(&[
                "jobs", "list", "--url", &app.url, "--state", "dead", "--json",
            ]),
            env.clone(),
            None,
        )
        .await;
        let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(job) = jobs["jobs"].as_array().unwrap().first() {
            break job["id"].as_str().unwrap().to_owned();
        }
    };
    let out = run(
        args(&["jobs", "list", "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("dead") && table.contains("Build configuration is paused"),
        "{table}"
    );
    let out = run(
        args(&["jobs", "retry", &job_id, "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("job {job_id} requeued")
    );
    tc.wait_for_builds(2).await;
    let out = run(
        args(&["jobs", "remove", &job_id, "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    assert!(out.status.success());
    let out = run(
        args(&["jobs", "remove", &job_id, "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no job {job_id}")));

    // remove the token; a wrong admin token fails with 401's message
    let out = run(
        args(&["token", "remove", &id, "--url", &app.url]),
        env.clone(),
        None,
    )
    .await;
    assert!(out.status.success());
    let out = run(
        args(&["token", "list", "--url", &app.url, "--admin-token", "wrong"]),
        vec![],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing or invalid admin token"));
}

#[tokio::test]
async fn rotate_key_keeps_tokens_usable_and_a_wrong_key_fails_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("rotating-token", "jdoe");
    // A key file (no configured master key) this time.
    let (config_path, store) =
        crate::support::write_process_config(dir.path(), &standard_config(&tc.url, ""));
    let config = std::fs::read_to_string(&config_path).unwrap();
    let bridge = process::Bridge::start(&config_path, "");
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/api/v1/tokens", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"source": "dc", "user": "jdoe", "teamcity": "main", "token": "rotating-token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(bridge.terminate().success());

    let old_key = std::fs::read_to_string(store.join("master.key")).unwrap();
    let config_arg = config_path.display().to_string();
    let out = run(args(&["rotate-key", "--config", &config_arg]), vec![], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-encrypted 1 token(s)"));
    assert_ne!(
        std::fs::read_to_string(store.join("master.key")).unwrap(),
        old_key
    );

    let bridge = process::Bridge::start(&config_path, "");
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    let response = http
        .post(format!("{}/hooks/bitbucket/dc", bridge.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let calls = tc.wait_for_builds(1).await;
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some("Bearer rotating-token")
    );
    assert!(bridge.terminate().success());

    // The old key no longer opens the store: start-up fails, saying so.
    let wrong = config.replace(
        "[storage]\n",
        &format!("[storage]\nmaster_key = \"{}\"\n", old_key.trim()),
    );
    std::fs::write(&config_path, wrong).unwrap();
    let out = run(args(&["serve", "--config", &config_arg]), vec![], None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("master key does not match"), "{stderr}");
}

#[tokio::test]
async fn no_token_in_debug_logs_or_store_files() {
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    let token = "SENSITIVE-TOKEN-0123456789";
    tc.add_token(token, "jdoe");
    let (config_path, store) =
        crate::support::write_process_config(dir.path(), &standard_config(&tc.url, ""));
    let bridge = process::Bridge::start(&config_path, "export RUST_LOG=debug");
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/api/v1/tokens", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"source": "dc", "user": "jdoe", "teamcity": "main", "token": token}))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains(token));
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    http.post(format!("{}/hooks/bitbucket/dc", bridge.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    tc.wait_for_builds(1).await;
    // A branch name with a line break (Git forbids it, a forged payload need not): it must
    // not start a line of its own in the text log.
    let forged = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[(
            "refs/heads/evil\n2026-12-01T00:00:00Z  INFO forged: admin token accepted",
            &sha(2),
            "UPDATE",
        )],
    );
    http.post(format!("{}/hooks/bitbucket/dc", bridge.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &forged),
        )
        .body(forged)
        .send()
        .await
        .unwrap();
    tc.wait_for_builds(2).await;
    let jobs = http
        .get(format!("{}/api/v1/jobs", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!jobs.contains(token));
    let (status, logged) = bridge.terminate_and_log();
    assert!(status.success());
    assert!(
        logged.contains("TeamCity call") && logged.contains("DEBUG"),
        "debug logging was on: {logged}"
    );
    assert!(!logged.contains(token), "the token is in the log");
    assert!(
        !logged
            .lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z  INFO forged")),
        "a payload forged a log line: {logged}"
    );
    assert!(
        logged.contains(r"evil\n2026-12-01"),
        "escaped instead: {logged}"
    );
    crate::support::assert_no_file_holds(&store, &[token]);
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_the_flag_goes_anywhere() {
    for position in [
        ["--log-format", "json", "check-config"],
        ["check-config", "--log-format", "json"],
    ] {
        let mut argv = args(&position);
        argv.extend(args(&[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/bb2tc.toml"),
        ]));
        let out = run(argv, vec![], None).await;
        assert!(
            out.status.success(),
            "{position:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let (config_path, _) =
        crate::support::write_process_config(dir.path(), &standard_config(&tc.url, ""));
    let bridge = process::Bridge::start(&config_path, "BB2TC_ARGS='--log-format json'");
    let http = reqwest::Client::new();
    http.post(format!("{}/api/v1/tokens", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &serde_json::json!({"source": "dc", "user": "jdoe", "teamcity": "main", "token": "t"}),
        )
        .send()
        .await
        .unwrap();
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    let response = http
        .post(format!("{}/hooks/bitbucket/dc", bridge.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header("X-Request-Id", "json-log-1")
        .header(
            "X-Hub-Signature",
            bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "json-log-1");
    tc.wait_for_builds(1).await;
    let (status, log) = bridge.terminate_and_log();
    assert!(status.success());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let accepted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "accepted")
        .expect("a line for the accepted delivery");
    // A delivery's lines name it themselves (no span per webhook request: issue 12).
    assert_eq!(accepted["fields"]["delivery"], "json-log-1");
    assert_eq!(accepted["fields"]["jobs"], 1);
    let call = lines
        .iter()
        .find(|l| l["fields"]["message"] == "TeamCity call")
        .expect("a line for the call");
    assert_eq!(call["fields"]["delivery"], "json-log-1");
    assert_eq!(call["fields"]["build_type"], "Proj_Build");
    assert_eq!(call["fields"]["branch"], "main");
    assert_eq!(call["fields"]["outcome"], "queued");
    assert!(call["fields"]["duration_ms"].is_u64());
}
