//! `mode = "check-for-changes"`: TeamCity's commit hook, once per clone URL until one matches.

use crate::support::*;

const ROUTE: &str = r#"
[[route]]
source = "dc"
repository = "HOOK/*"
teamcity = "main"
build_types = ["unused"]
mode = "check-for-changes"
"#;

#[tokio::test]
async fn commit_hook_tries_clone_urls_until_one_matches() {
    let tc = FakeTeamCity::start().await;
    let config =
        standard_config(&tc.url, ROUTE).replace("repository = \"*\"", "repository = \"PROJ/*\"");
    let app = TestApp::spawn(&config).await;
    tc.add_token("t", "jdoe");
    tc.add_vcs_root("https://bitbucket.example.com/scm/hook/repo.git");
    app.register_token("dc", "jdoe", "main", "t").await;
    let push = dc_payload(
        "jdoe",
        "HOOK/repo",
        &[("refs/heads/main", &sha(3), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&push, "hook-1").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let hooks = tc
        .wait_for(2, |r| {
            r.path == "/app/rest/vcs-root-instances/commitHookNotification"
        })
        .await;
    let locators: Vec<String> = hooks.iter().map(|r| r.locator().unwrap()).collect();
    assert_eq!(
        locators,
        vec![
            "vcsRoot:(type:jetbrains.git,property:(name:url,value:ssh://git@bitbucket.example.com:7999/hook/repo.git,matchType:equals,ignoreCase:true),count:99999),count:99999",
            "vcsRoot:(type:jetbrains.git,property:(name:url,value:https://bitbucket.example.com/scm/hook/repo.git,matchType:equals,ignoreCase:true),count:99999),count:99999",
        ]
    );
    for hook in &hooks {
        assert_eq!(hook.method, "POST");
        assert_eq!(hook.authorization.as_deref(), Some("Bearer t"));
        // One query parameter, encoded as a whole.
        let query = hook.query.as_deref().unwrap();
        assert!(
            query.starts_with("locator=") && !query.contains(['(', ':', ',']),
            "{query}"
        );
    }
    assert!(tc.build_calls().is_empty());
}

#[tokio::test]
async fn service_token_is_used_when_the_pusher_has_none() {
    let tc = FakeTeamCity::start().await;
    let config = standard_config(&tc.url, ROUTE)
        .replace("repository = \"*\"", "repository = \"PROJ/*\"")
        .replace(
            "timeout_secs = 5",
            "timeout_secs = 5\nservice_token = \"svc-token\"",
        );
    let app = TestApp::spawn(&config).await;
    tc.add_token("svc-token", "bb2tc-service");
    tc.add_vcs_root("ssh://git@bitbucket.example.com:7999/hook/repo.git");
    let push = dc_payload(
        "nobody",
        "HOOK/repo",
        &[("refs/heads/main", &sha(4), "UPDATE")],
    );
    let (_, answer) = app.dc_push(&push, "hook-2").await;
    assert_eq!(answer["jobs"], 1, "{answer}");
    let hooks = tc
        .wait_for(1, |r| r.path.ends_with("commitHookNotification"))
        .await;
    assert_eq!(hooks[0].authorization.as_deref(), Some("Bearer svc-token"));
    // Build mode does not fall back without fallback_to_service_token.
    let push = dc_payload(
        "nobody",
        "PROJ/repo",
        &[("refs/heads/main", &sha(5), "UPDATE")],
    );
    let (_, answer) = app.dc_push(&push, "hook-3").await;
    assert_eq!(answer["jobs"], 0);
    assert_eq!(
        answer["skipped"][0]["reason"],
        "no token for nobody on main"
    );
}
