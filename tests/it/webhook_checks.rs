//! Every row of SPEC §5.1, in order.

use crate::support::*;
use serde_json::Value;

async fn app() -> (FakeTeamCity, TestApp) {
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn(&standard_config(&tc.url, "")).await;
    (tc, app)
}

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn unknown_source_is_404() {
    let (_tc, app) = app().await;
    let (status, json) = body(
        app.webhook(
            "nope",
            Some("repo:refs_changed"),
            b"{}",
            Some(DC_SECRET),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert!(json["error"].as_str().unwrap().contains("unknown source"));
}

#[tokio::test]
async fn other_methods_are_405() {
    let (_tc, app) = app().await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = app
            .http
            .request(method, format!("{}/hooks/bitbucket/dc", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_by_length_and_while_reading() {
    let tc = FakeTeamCity::start().await;
    let config = standard_config(&tc.url, "")
        .replace("[admin]", "[server]\nmax_body_bytes = 1000\n\n[admin]");
    let app = TestApp::spawn(&config).await;
    let big = vec![b'x'; 5000];
    let (status, json) = body(
        app.webhook("dc", Some("repo:refs_changed"), &big, Some(DC_SECRET), None)
            .await,
    )
    .await;
    assert_eq!(status, 413);
    assert!(json["error"].as_str().unwrap().contains("larger than 1000"));
    // Chunked, without Content-Length: cut off while reading.
    let mut request = b"POST /hooks/bitbucket/dc HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        request.extend_from_slice(format!("1f4\r\n{}\r\n", "y".repeat(500)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(&app.url, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A body just under the limit is read (and then fails the signature).
    let small = vec![b'z'; 999];
    assert_eq!(
        app.webhook("dc", Some("repo:refs_changed"), &small, None, None)
            .await
            .status(),
        401
    );
}

/// Sends raw bytes and returns what the server answered (until it closes or 5 s pass).
async fn raw_request(url: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("server answered")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn ping_is_answered_unsigned_without_side_effects() {
    let (tc, app) = app().await;
    let ping = fixture("dc-diagnostics-ping.json");
    let (status, json) = body(
        app.webhook("dc", Some("diagnostics:ping"), &ping, None, Some("ping-1"))
            .await,
    )
    .await;
    assert_eq!((status, json), (200, serde_json::json!({"result": "pong"})));
    let deliveries = app
        .admin(reqwest::Method::GET, "/tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(deliveries.status(), 200);
    assert!(tc.requests().is_empty());
}

#[tokio::test]
async fn bad_signatures_are_401() {
    let (_tc, app) = app().await;
    let push = fixture("dc-refs_changed-branch-update.json");
    let other_body = bb2tc::bitbucket::signature::sign(DC_SECRET.as_bytes(), b"another body");
    let truncated = "sha256=49435c7bac158ed23f5f5edbb7b6937be9a87fecebe1707d6f498227f79a90";
    let sha1 = "sha1=0b3f2c6d6c7d1c0e7e1d3a3f2b0c5a5e6d7c8b9a";
    for header in [
        None,
        Some(other_body.as_str()),
        Some(truncated),
        Some(sha1),
        Some("garbage"),
    ] {
        let mut request = app
            .http
            .post(format!("{}/hooks/bitbucket/dc", app.url))
            .header("X-Event-Key", "repo:refs_changed")
            .body(push.clone());
        if let Some(value) = header {
            request = request.header("X-Hub-Signature", value);
        }
        let (status, json) = body(request.send().await.unwrap()).await;
        assert_eq!(
            (status, json),
            (401, serde_json::json!({"error": "invalid signature"})),
            "{header:?}"
        );
    }
    // A secret of another source does not sign for this one.
    let response = app
        .webhook(
            "dc",
            Some("repo:refs_changed"),
            &push,
            Some(CLOUD_SECRET),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn published_signature_is_accepted_with_uppercase_header_names_and_hex() {
    let (_tc, app) = app().await;
    let push = fixture("dc-refs_changed-branch-update.json");
    let response = app
        .http
        .post(format!("{}/hooks/bitbucket/dc", app.url))
        .header("X-EVENT-KEY", "repo:refs_changed")
        .header(
            "x-hub-SIGNATURE",
            "sha256=49435C7BAC158ED23F5F5EDBB7B6937BE9A87FECEBE1707D6F498227F79A9074",
        )
        .body(push)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn missing_event_key_is_400() {
    let (_tc, app) = app().await;
    let push = fixture("dc-refs_changed-branch-update.json");
    let (status, json) = body(app.webhook("dc", None, &push, Some(DC_SECRET), None).await).await;
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().contains("X-Event-Key"));
}

#[tokio::test]
async fn other_events_are_ignored_with_202() {
    let (tc, app) = app().await;
    let comment = fixture("dc-pr-comment-added-signed.json");
    let response = app
        .http
        .post(format!("{}/hooks/bitbucket/dc", app.url))
        .header("X-Event-Key", "pr:comment:added")
        .header(
            "X-Hub-Signature",
            "sha256=ed11f92d1565a4de586727fe8260558277d58009e8957a79eb4749a7009ce083",
        )
        .body(comment)
        .send()
        .await
        .unwrap();
    let (status, json) = body(response).await;
    assert_eq!(status, 202);
    assert_eq!(json["result"], "ignored");
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("pr:comment:added")
    );
    // Reviewer and approval events (the wire key is `needs_work`, not the documented
    // `changes_requested`) are not pull-request events bb2tc acts on.
    let pr = fixture("dc-pr-opened.json");
    for key in [
        "pr:reviewer:needs_work",
        "pr:reviewer:approved",
        "pr:reviewer:unapproved",
        "pr:reviewer:updated",
        "pr:comment:edited",
    ] {
        let (status, json) = body(
            app.webhook("dc", Some(key), &pr, Some(DC_SECRET), None)
                .await,
        )
        .await;
        assert_eq!(
            (status, json["result"].as_str()),
            (202, Some("ignored")),
            "{key}"
        );
    }
    assert!(tc.requests().is_empty());
}

#[tokio::test]
async fn malformed_payloads_are_400() {
    let (_tc, app) = app().await;
    for bad in [
        &b"not json"[..],
        b"{}",
        b"[1,2]",
        br#"{"repository":{"slug":"r","project":{"key":"P"}},"changes":[{"ref":{"id":"refs/heads/x"},"toHash":"xyz","type":"UPDATE"}]}"#,
    ] {
        let (status, json) = body(app.webhook("dc", Some("repo:refs_changed"), bad, Some(DC_SECRET), None).await).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(json["error"].is_string());
    }
    let (status, _) = body(
        app.webhook(
            "cloud",
            Some("repo:push"),
            b"{\"push\":{}}",
            Some(CLOUD_SECRET),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn same_delivery_twice_is_one_job_and_a_duplicate() {
    let (tc, app) = app().await;
    tc.add_token("tok-admin", "admin");
    app.register_token("dc", "admin", "main", "tok-admin").await;
    let push = fixture("dc-refs_changed-branch-update.json");
    let (status, first) = app.dc_push(&push, "delivery-1").await;
    assert_eq!((status, first["jobs"].as_u64()), (202, Some(1)));
    let (status, second) = app.dc_push(&push, "delivery-1").await;
    assert_eq!(
        (status, second),
        (200, serde_json::json!({"result": "duplicate"}))
    );
    // The same change under another delivery id makes no new job either.
    let (status, third) = app.dc_push(&push, "delivery-2").await;
    assert_eq!((status, third["jobs"].as_u64()), (202, Some(0)));
    assert!(
        third["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("already seen")
    );
    tc.wait_for_builds(1).await;
    assert_eq!(app.api_tokens().await.len(), 1);
    assert_eq!(tc.build_calls().len(), 1);
}

#[tokio::test]
async fn accepted_answer_lists_jobs_and_skips_and_every_answer_has_a_request_id() {
    let (_tc, app) = app().await;
    let push = fixture("dc-refs_changed-branch-update.json");
    let response = app
        .webhook(
            "dc",
            Some("repo:refs_changed"),
            &push,
            Some(DC_SECRET),
            Some("bb-id-42"),
        )
        .await;
    assert_eq!(response.headers()["x-request-id"], "bb-id-42");
    let (status, json) = body(response).await;
    assert_eq!(status, 202);
    assert_eq!(
        json,
        serde_json::json!({"result": "accepted", "delivery": "bb-id-42", "jobs": 0,
            "skipped": [{"ref": "refs/heads/master", "reason": "no token for admin on main"}]})
    );
    for response in [
        app.http
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .unwrap(),
        app.http
            .get(format!("{}/nowhere", app.url))
            .send()
            .await
            .unwrap(),
        app.webhook("dc", Some("repo:refs_changed"), b"{}", None, None)
            .await,
    ] {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("bb2tc-") && id.len() > 10, "{id}");
    }
    let cloud = app
        .http
        .post(format!("{}/hooks/bitbucket/cloud", app.url))
        .header("X-Request-UUID", "5f4b1a3c-cloud")
        .send()
        .await
        .unwrap();
    assert_eq!(cloud.headers()["x-request-id"], "5f4b1a3c-cloud");
}

#[tokio::test]
async fn health_and_readiness() {
    let (_tc, app) = app().await;
    let health: Value = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let ready = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["components"]["store"]["status"], "ok");
    assert_eq!(ready["components"]["worker:main"]["status"], "ok");
}
