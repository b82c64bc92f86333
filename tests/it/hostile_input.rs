//! Hostile input: every fixture truncated, mistyped and oversized, signed and sent through the
//! webhook endpoint — always a 2xx or 4xx, never a 5xx, and the bridge keeps serving. Slow
//! clients are cut off while others are served.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitbucket");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// (source, event key) a fixture is delivered as; pull-request and other events too.
fn route(name: &str) -> (&'static str, &'static str) {
    match name {
        n if n.starts_with("cloud-push") => ("cloud", "repo:push"),
        n if n.starts_with("cloud-") => ("cloud", "pullrequest:updated"),
        n if n.contains("mirror") => ("dc", "mirror:repo_synchronized"),
        n if n.contains("refs_changed") => ("dc", "repo:refs_changed"),
        n if n.contains("ping") => ("dc", "diagnostics:ping"),
        _ => ("dc", "pr:opened"),
    }
}

/// The first 40 fields of `value` (depth first), each replaced in turn by two values of
/// other types (which two rotates along the fields).
fn mistyped(value: &Value) -> Vec<Value> {
    let replacements = [
        Value::Null,
        Value::from(12345),
        Value::from("text"),
        Value::from(vec![1, 2]),
        serde_json::json!({"a": 1}),
        Value::from(true),
    ];
    let mut paths = Vec::new();
    collect_paths(value, &mut Vec::new(), &mut paths);
    let mut out = Vec::new();
    for (n, path) in paths.iter().take(40).enumerate() {
        for replacement in [&replacements[n % 6], &replacements[(n + 3) % 6]] {
            let mut copy = value.clone();
            if let Some(slot) = pointer_mut(&mut copy, path)
                && slot != replacement
            {
                *slot = replacement.clone();
                out.push(copy);
            }
        }
    }
    out
}

fn collect_paths(value: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if !here.is_empty() {
        out.push(here.clone());
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                here.push(key.clone());
                collect_paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(3) {
                here.push(i.to_string());
                collect_paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let pointer: String = path
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect();
    value.pointer_mut(&pointer)
}

#[tokio::test]
async fn every_fixture_variant_is_answered_without_a_server_error() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "admin");
    let config = standard_config(&tc.url, "")
        .replace("[admin]", "[server]\nmax_body_bytes = 65536\n\n[admin]");
    let app = TestApp::spawn(&config).await;
    app.register_token("dc", "admin", "main", "t").await;
    let mut sent = 0;
    for (name, body) in fixtures() {
        let (source, event) = route(&name);
        let secret = if source == "dc" {
            DC_SECRET
        } else {
            CLOUD_SECRET
        };
        let mut variants: Vec<Vec<u8>> = [1, 2, 3]
            .iter()
            .map(|q| body[..body.len() * q / 4].to_vec())
            .collect();
        variants.push(body[..body.len() - 1].to_vec());
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        variants.extend(mistyped(&parsed).iter().map(|v| v.to_string().into_bytes()));
        let mut oversized = body.clone();
        oversized.extend(std::iter::repeat_n(b' ', 70_000));
        variants.push(oversized);
        for (i, variant) in variants.iter().enumerate() {
            let id = format!("{name}-{i}");
            let response = app
                .webhook(source, Some(event), variant, Some(secret), Some(&id))
                .await;
            let status = response.status().as_u16();
            assert!((200..500).contains(&status), "{name} variant {i}: {status}");
            sent += 1;
        }
    }
    assert!(sent > 1000, "{sent} variants");
    let health = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Opens a connection and sends `head` one byte at a time, `pause` apart; returns what the
/// server answered and whether it closed the connection before the client finished.
async fn slow_client(url: &str, head: &[u8], pause: Duration) -> (String, bool) {
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut cut_off = false;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        cut_off || !answer.is_empty(),
    )
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let tc = FakeTeamCity::start().await;
    let config = standard_config(&tc.url, "").replace(
        "[admin]",
        "[server]\nread_timeout_secs = 1\nmax_connections = 3\n\n[admin]",
    );
    let app = TestApp::spawn(&config).await;
    let started = tokio::time::Instant::now();
    // Three slow-loris clients take every connection slot: a slow request head, a slow body.
    let head =
        b"POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\n\r\n"
            .to_vec();
    let body_then = b"POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\nContent-Length: 100\r\n\r\n".to_vec();
    let slow_head = tokio::spawn({
        let url = app.url.clone();
        async move { slow_client(&url, &head, Duration::from_millis(200)).await }
    });
    let slow_body = tokio::spawn({
        let url = app.url.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
                .await
                .unwrap();
            stream.write_all(&body_then).await.unwrap();
            for _ in 0..50 {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    });
    let idle = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // A normal request meanwhile: served once a slot frees, within the read timeout or so.
    let response = app
        .http
        .get(format!("{}/healthz", app.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let (_, cut_off) = slow_head.await.unwrap();
    assert!(cut_off, "slow request head was not cut off");
    let answer = slow_body.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "slow body: {answer}");
    drop(idle);
}

#[tokio::test]
async fn oversized_request_heads_are_refused_and_serving_goes_on() {
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn(&standard_config(&tc.url, "")).await;
    let mut request = b"POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        request.extend_from_slice(format!("X-Padding-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let health = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Bodies held in memory are bounded by `server.body_budget_bytes`: an unauthenticated
/// client that declares 1 MiB and sends it slowly holds the whole (1 MiB) budget, so a
/// signed push meanwhile gets 503 with `Retry-After` (Cloud retries) instead of memory
/// growing with every such connection; once the slow one is gone, pushes are accepted.
#[tokio::test]
async fn the_body_budget_bounds_memory_and_heals() {
    let tc = FakeTeamCity::start().await;
    let config = format!(
        "[server]\nbody_budget_bytes = 1048576\n{}",
        standard_config(&tc.url, "")
    );
    let app = TestApp::spawn(&config).await;
    let address = app.url.trim_start_matches("http://").to_owned();
    let mut hog = tokio::net::TcpStream::connect(&address).await.unwrap();
    hog.write_all(
        b"POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await
    .unwrap();
    hog.write_all(&[b'{'; 1000]).await.unwrap();
    // Let the bridge take the hog's reservation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    let started = std::time::Instant::now();
    let response = app
        .webhook(
            "dc",
            Some("repo:refs_changed"),
            &push,
            Some(DC_SECRET),
            Some("budget-1"),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    drop(hog);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, answer) = app.dc_push(&push, "budget-2").await;
    assert_eq!(status, 202, "{answer}");
    assert!(app.metrics().await.contains(
        r#"bb2tc_webhooks_total{source="dc",event="repo:refs_changed",result="busy"} 1"#
    ));
}

/// One header of 100 000 bytes that arrives at once: hyper may parse it past its buffer
/// size; the documented 64 KiB head limit still holds.
#[tokio::test]
async fn a_single_huge_header_is_refused_with_431() {
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn(&standard_config(&tc.url, "")).await;
    let response = app
        .http
        .post(format!("{}/hooks/bitbucket/dc", app.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header("X-Padding", "a".repeat(100_000))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let small = app
        .http
        .post(format!("{}/hooks/bitbucket/dc", app.url))
        .header("X-Event-Key", "repo:refs_changed")
        .header("X-Padding", "a".repeat(60_000))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        small.status(),
        401,
        "a head within the limit is read (then the signature fails)"
    );
}
