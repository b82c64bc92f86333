//! `/api/v1/tokens` (SPEC §8) and what TeamCity's 401 does to a registered token.

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn app(backend: Backend) -> Option<(FakeTeamCity, TestApp)> {
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn_backend(backend, &standard_config(&tc.url, "")).await?;
    Some((tc, app))
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut request = app.admin(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn admin_token_is_required(backend: Backend) {
    let Some((_tc, app)) = app(backend).await else {
        return;
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some(ADMIN_TOKEN),
    ] {
        let mut request = app.http.get(format!("{}/api/v1/tokens", app.url));
        if let Some(value) = auth {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
    }
}

async fn register_verify_replace_list_delete(backend: Backend) {
    let Some((tc, app)) = app(backend).await else {
        return;
    };
    tc.add_token("secret-token-1", "jdoe-in-tc");
    tc.add_token("secret-token-2", "jdoe-in-tc");
    let (status, first, text) = call(
        &app,
        Method::POST,
        "/tokens",
        Some(json!({"user": "jdoe", "source": "dc", "teamcity": format!("{}/", tc.url.to_uppercase().replace("HTTP://", "http://")), "token": "secret-token-1"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert!(!text.contains("secret-token"));
    assert_eq!(first["user"], "jdoe");
    assert_eq!(first["source"], "dc");
    assert_eq!(first["teamcity"], tc.url);
    assert_eq!(first["teamcity_user"], "jdoe-in-tc");
    assert_eq!(first["status"], "valid");
    assert_eq!(first["last_authenticated_at"], Value::Null);
    assert!(first["added_at"].as_str().unwrap().ends_with('Z'));
    let users_current = tc
        .wait_for(1, |r| r.path == "/app/rest/users/current")
        .await;
    assert_eq!(
        users_current[0].authorization.as_deref(),
        Some("Bearer secret-token-1")
    );

    let (status, second, text) = call(
        &app,
        Method::POST,
        "/tokens",
        Some(
            json!({"user": "JDOE", "source": "dc", "teamcity": "main", "token": "secret-token-2"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        (second["replaced"].as_bool(), &second["id"]),
        (Some(true), &first["id"])
    );

    let (status, _, text) = call(&app, Method::POST, "/tokens", Some(json!({"user": "amy", "source": "dc", "teamcity": "main", "token": "unchecked", "verify": false}))).await;
    assert_eq!(status, 201, "{text}");
    let (_, listed, text) = call(&app, Method::GET, "/tokens", None).await;
    assert!(!text.contains("secret-token") && !text.contains("unchecked"));
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2);
    let (_, filtered, _) = call(&app, Method::GET, "/tokens?user=AMY", None).await;
    assert_eq!(filtered["tokens"][0]["status"], "unverified");
    assert_eq!(filtered["tokens"].as_array().unwrap().len(), 1);
    let (_, by_server, _) = call(
        &app,
        Method::GET,
        &format!("/tokens?teamcity={}&source=dc", tc.url),
        None,
    )
    .await;
    assert_eq!(by_server["tokens"].as_array().unwrap().len(), 2);

    let id = first["id"].as_str().unwrap();
    let (status, _, text) = call(&app, Method::DELETE, &format!("/tokens/{id}"), None).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, body, _) = call(&app, Method::DELETE, &format!("/tokens/{id}"), None).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

async fn bad_registrations_are_refused_clearly(backend: Backend) {
    let Some((tc, app)) = app(backend).await else {
        return;
    };
    tc.add_token("good", "jdoe");
    let cases = [
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "rejected-token", "source": "dc"}),
            422,
            "rejected",
        ),
        // Unverified tokens that could never be sent as a Bearer header.
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "line\r\nbreak", "source": "dc", "verify": false}),
            400,
            "printable ASCII",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "tökén", "source": "dc", "verify": false}),
            400,
            "printable ASCII",
        ),
        (
            json!({"user": "jdoe", "teamcity": "https://evil.example.com", "token": "good", "source": "dc"}),
            422,
            "not a configured TeamCity server",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "good", "source": "gitlab"}),
            422,
            "unknown source",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "good"}),
            400,
            "source is required",
        ),
        (
            json!({"user": "", "teamcity": "main", "token": "good", "source": "dc"}),
            400,
            "user",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "token": " ", "source": "dc"}),
            400,
            "token",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "source": "dc"}),
            400,
            "token",
        ),
        (
            json!({"user": "jdoe", "teamcity": "main", "token": "good", "source": "dc", "extra": 1}),
            400,
            "extra",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, answer, text) = call(&app, Method::POST, "/tokens", Some(body.clone())).await;
        assert_eq!(got, status, "{body} -> {text}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{body} -> {text}"
        );
        assert!(!text.contains("rejected-token"));
    }
    let response = app
        .admin(Method::POST, "/tokens")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _, _) = call(&app, Method::PUT, "/tokens", None).await;
    assert_eq!(status, 405);
}

async fn unreachable_teamcity_is_502(backend: Backend) {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let Some(app) = TestApp::spawn_backend(backend, &standard_config(&closed, "")).await else {
        return;
    };
    let (status, body, _) = call(
        &app,
        Method::POST,
        "/tokens",
        Some(json!({"user": "u", "source": "dc", "teamcity": "main", "token": "x"})),
    )
    .await;
    assert_eq!(status, 502);
    assert!(body["error"].as_str().unwrap().contains("could not verify"));
}

async fn teamcity_401_marks_the_token_invalid_and_a_200_stamps_last_authenticated(
    backend: Backend,
) {
    let Some((tc, app)) = app(backend).await else {
        return;
    };
    tc.add_token("revoked-soon", "jdoe");
    tc.add_token("other", "admin");
    app.register_token("dc", "jdoe", "main", "revoked-soon")
        .await;
    app.register_token("dc", "admin", "main", "other").await;
    app.dc_push(&fixture("dc-refs_changed-branch-update.json"), "ok-push")
        .await;
    tc.wait_for_builds(1).await;
    tc.revoke_token("revoked-soon");
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(9), "UPDATE")],
    );
    app.dc_push(&push, "revoked").await;
    tc.wait_for(1, |r| {
        r.authorization.as_deref() == Some("Bearer revoked-soon") && r.path.ends_with("buildQueue")
    })
    .await;
    let status_of = |user: &'static str| {
        let app = &app;
        async move {
            for _ in 0..200 {
                let (_, listed, _) =
                    call(app, Method::GET, &format!("/tokens?user={user}"), None).await;
                let token = listed["tokens"][0].clone();
                if token["status"] != "valid" || token["last_authenticated_at"].is_string() {
                    return token;
                }
                tokio::task::yield_now().await;
            }
            panic!("token of {user} never changed");
        }
    };
    assert_eq!(status_of("jdoe").await["status"], "invalid");
    assert!(status_of("admin").await["last_authenticated_at"].is_string());
    // An invalid token makes no more jobs until it is replaced.
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(10), "UPDATE")],
    );
    let (_, answer) = app.dc_push(&push, "after-revoke").await;
    assert_eq!(answer["jobs"], 0);
    assert!(
        answer["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("rejected by TeamCity")
    );
}

crate::on_both_backends!(
    admin_token_is_required,
    register_verify_replace_list_delete,
    bad_registrations_are_refused_clearly,
    unreachable_teamcity_is_502,
    teamcity_401_marks_the_token_invalid_and_a_200_stamps_last_authenticated,
);
