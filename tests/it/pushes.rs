//! Pushes in, TeamCity calls out: the exact buildQueue requests of SPEC §6.

use crate::support::*;
use serde_json::{Value, json};

async fn app_with(extra: &str) -> (FakeTeamCity, TestApp) {
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn(&standard_config(&tc.url, extra)).await;
    (tc, app)
}

#[tokio::test]
async fn dc_branch_push_queues_one_build_as_the_pusher() {
    let (tc, app) = app_with("").await;
    tc.add_token("tc-token-of-admin", "admin");
    tc.add_token("tc-token-of-someone-else", "other");
    app.register_token("dc", "admin", "main", "tc-token-of-admin")
        .await;
    app.register_token("dc", "other", "main", "tc-token-of-someone-else")
        .await;

    let (status, answer) = app
        .dc_push(&fixture("dc-refs_changed-branch-update.json"), "d1")
        .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let calls = tc.wait_for_builds(1).await;
    let call = &calls[0];
    assert_eq!(
        call.authorization.as_deref(),
        Some("Bearer tc-token-of-admin")
    );
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    let mut body = call.json();
    assert_eq!(
        comment_without_mark(&body),
        "Bitbucket push by admin: PA/simply_vulnerable_react master 2f46e2f"
    );
    body["comment"]["text"] = json!("(checked)");
    assert_eq!(
        body,
        json!({
            "buildType": {"id": "Proj_Build"},
            "branchName": "master",
            "comment": {"text": "(checked)"},
        })
    );
}

#[tokio::test]
async fn cloud_branch_push_uses_the_actor_uuid_or_account_id() {
    let (tc, app) = app_with("").await;
    tc.add_token("cloud-token", "nfalco");
    // Registered by account id; the push carries both uuid and account id.
    app.register_token(
        "cloud",
        "557058:270a1f96-cd27-4013-ade6-85df2ab9820c",
        "main",
        "cloud-token",
    )
    .await;
    let body = fixture("cloud-push-branch-create-signed.json");
    let response = app
        .http
        .post(format!("{}/hooks/bitbucket/cloud", app.url))
        .header("X-Event-Key", "repo:push")
        .header("X-Request-UUID", "cloud-delivery-1")
        .header(
            "X-Hub-Signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035",
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["jobs"], 1, "{answer}");
    let calls = tc.wait_for_builds(1).await;
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let change = &payload["push"]["changes"][0]["new"];
    let branch = change["name"].as_str().unwrap();
    let sha = change["target"]["hash"].as_str().unwrap();
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some("Bearer cloud-token")
    );
    let sent = calls[0].json();
    assert_eq!(sent["buildType"]["id"], "Cloud_Build");
    assert_eq!(sent["branchName"], branch);
    let comment = comment_without_mark(&sent);
    assert!(
        comment.starts_with("Bitbucket push by ") && comment.ends_with(&sha[..7]),
        "{comment}"
    );
    let repository = payload["repository"]["full_name"].as_str().unwrap();
    assert!(comment.contains(repository), "{comment}");
}

#[tokio::test]
async fn tags_trigger_only_where_a_route_allows_them() {
    let (tc, app) = app_with("").await;
    tc.add_token("t", "admin");
    app.register_token("dc", "admin", "main", "t").await;
    let (status, answer) = app
        .dc_push(&fixture("dc-refs_changed-tag-push.json"), "tag-1")
        .await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    assert_eq!(answer["skipped"][0]["ref"], "refs/tags/simple-tag");
    assert!(
        answer["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no route")
    );
    drop(app);

    let tags_route = r#"
[[route]]
source = "dc"
repository = "*"
teamcity = "main"
build_types = ["Release"]
branches = []
tags = true
tag_patterns = ["annotated-*", "simple-*"]
"#;
    let (tc, app) = app_with(tags_route).await;
    tc.add_token("t", "admin");
    app.register_token("dc", "admin", "main", "t").await;
    let (_, answer) = app
        .dc_push(&fixture("dc-refs_changed-annotated-tag-push.json"), "tag-2")
        .await;
    assert_eq!(answer["jobs"], 1, "{answer}");
    let calls = tc.wait_for_builds(1).await;
    let sent = calls[0].json();
    assert_eq!(
        (
            sent["buildType"]["id"].as_str(),
            sent["branchName"].as_str()
        ),
        (Some("Release"), Some("annotated-tag"))
    );
    // The annotated tag's peeled commit, not the tag object.
    assert!(comment_without_mark(&sent).ends_with("fb522a6"));
}

#[tokio::test]
async fn deletions_never_trigger() {
    let (tc, app) = app_with("").await;
    tc.add_token("t", "admin");
    app.register_token("dc", "admin", "main", "t").await;
    for (file, id) in [
        ("dc-refs_changed-branch-delete.json", "del-1"),
        ("dc-refs_changed-tag-delete.json", "del-2"),
    ] {
        let (status, answer) = app.dc_push(&fixture(file), id).await;
        assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
        assert_eq!(answer["skipped"][0]["reason"], "deleted");
    }
    let body = fixture("cloud-push-branch-delete.json");
    let response = app
        .webhook(
            "cloud",
            Some("repo:push"),
            &body,
            Some(CLOUD_SECRET),
            Some("del-3"),
        )
        .await;
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (
            answer["jobs"].as_u64(),
            answer["skipped"][0]["reason"].as_str()
        ),
        (Some(0), Some("deleted"))
    );
    assert!(tc.build_calls().is_empty());
}

#[tokio::test]
async fn two_changes_in_one_push_make_two_builds() {
    let (tc, app) = app_with("").await;
    tc.add_token("t", "hypro999");
    app.register_token("dc", "HYPRO999", "main", "t").await;
    let (_, answer) = app
        .dc_push(&fixture("dc-refs_changed-multiple-changes.json"), "multi")
        .await;
    assert_eq!(answer["jobs"], 2);
    let calls = tc.wait_for_builds(2).await;
    let mut branches: Vec<String> = calls
        .iter()
        .map(|c| c.json()["branchName"].as_str().unwrap().to_owned())
        .collect();
    branches.sort();
    assert_eq!(branches, vec!["branch1", "master"]);
}

#[tokio::test]
async fn a_pusher_without_a_token_is_skipped_and_nothing_is_called() {
    let (tc, app) = app_with("").await;
    tc.add_token("t", "someone");
    app.register_token("dc", "someone", "main", "t").await;
    let (status, answer) = app
        .dc_push(&fixture("dc-refs_changed-branch-update.json"), "nt")
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["jobs"], 0);
    assert_eq!(
        answer["skipped"],
        json!([{"ref": "refs/heads/master", "reason": "no token for admin on main"}])
    );
    // Prove the queue is idle: a push by the token owner is the first and only call.
    let body = dc_payload(
        "someone",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    app.dc_push(&body, "owner").await;
    let calls = tc.wait_for_builds(1).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].json()["branchName"], "main");
}

#[tokio::test]
async fn two_routes_on_two_servers_each_get_their_own_token() {
    let other = FakeTeamCity::start().await;
    let extra = format!(
        r#"
[[teamcity]]
id = "second"
url = "{}"

[[route]]
source = "dc"
repository = "PROJ/*"
teamcity = "second"
build_types = ["Second_A", "Second_B"]
branches = ["main", "release/*"]
properties = {{ "env.FROM_BB2TC" = "1" }}
vcs_root_id = "Proj_GitRoot"
"#,
        other.url
    );
    let (tc, app) = app_with(&extra).await;
    tc.add_token("main-token", "jdoe");
    other.add_token("second-token", "jdoe");
    app.register_token("dc", "jdoe", "main", "main-token").await;
    app.register_token("dc", "jdoe", &other.url, "second-token")
        .await;
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/release/1.0", &sha(7), "UPDATE")],
    );
    let (_, answer) = app.dc_push(&push, "two").await;
    assert_eq!(answer["jobs"], 3, "{answer}");
    let main_calls = tc.wait_for_builds(1).await;
    assert_eq!(
        main_calls[0].authorization.as_deref(),
        Some("Bearer main-token")
    );
    let second_calls = other.wait_for_builds(2).await;
    let mut types = Vec::new();
    for call in &second_calls {
        assert_eq!(call.authorization.as_deref(), Some("Bearer second-token"));
        let sent = call.json();
        types.push(sent["buildType"]["id"].as_str().unwrap().to_owned());
        assert_eq!(sent["branchName"], "release/1.0");
        assert_eq!(
            sent["properties"],
            json!({"property": [{"name": "env.FROM_BB2TC", "value": "1"}]})
        );
        assert_eq!(
            sent["revisions"],
            json!({"failOnMissingRevisions": false, "revision": [{"version": sha(7),
                "vcsBranchName": "refs/heads/release/1.0", "vcs-root-instance": {"vcs-root-id": "Proj_GitRoot"}}]})
        );
    }
    types.sort();
    assert_eq!(types, vec!["Second_A", "Second_B"]);
    // A branch the second route filters out goes to the first server only.
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/feature/x", &sha(8), "UPDATE")],
    );
    let (_, answer) = app.dc_push(&push, "one").await;
    assert_eq!(answer["jobs"], 1);
    tc.wait_for_builds(2).await;
    assert_eq!(other.build_calls().len(), 2);
}

#[tokio::test]
async fn full_branch_names_and_excluded_branches() {
    let extra = r#"
[[route]]
source = "dc"
repository = "FULL/*"
teamcity = "main"
build_types = ["Full"]
exclude_branches = ["wip/*"]
branch_name = "full"
"#;
    let (tc, app) = app_with(extra).await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let push = dc_payload(
        "jdoe",
        "FULL/repo",
        &[
            ("refs/heads/wip/x", &sha(1), "UPDATE"),
            ("refs/heads/dev", &sha(2), "UPDATE"),
        ],
    );
    let (_, answer) = app.dc_push(&push, "full").await;
    // route[0] (repository "*") takes both, route[2] only dev.
    assert_eq!(answer["jobs"], 3, "{answer}");
    let calls = tc.wait_for_builds(3).await;
    let full: Vec<Value> = calls
        .iter()
        .map(|c| c.json())
        .filter(|b| b["buildType"]["id"] == "Full")
        .collect();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0]["branchName"], "refs/heads/dev");
}

#[tokio::test]
async fn a_delivery_asking_for_more_jobs_than_allowed_queues_nothing() {
    let tc = FakeTeamCity::start().await;
    let config = format!(
        "[server]\nmax_jobs_per_delivery = 2\n{}",
        standard_config(&tc.url, "")
    );
    let app = TestApp::spawn(&config).await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let changes: Vec<(String, String)> = (1..=3)
        .map(|n| (format!("refs/heads/b{n}"), sha(n)))
        .collect();
    let refs: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|(r, s)| (r.as_str(), s.as_str(), "UPDATE"))
        .collect();
    let (status, answer) = app
        .dc_push(&dc_payload("jdoe", "PROJ/repo", &refs), "too-many")
        .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    let reason = answer["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ref"] == "*")
        .and_then(|s| s["reason"].as_str())
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("would make 3 jobs") && reason.contains("max_jobs_per_delivery = 2"),
        "{reason}"
    );
    assert!(app.api_jobs("").await.is_empty());
    assert!(
        app.metrics()
            .await
            .contains(r#"bb2tc_deliveries_too_large_total{source="dc"} 1"#)
    );
    // Two changes are within the limit.
    let (_, answer) = app
        .dc_push(&dc_payload("jdoe", "PROJ/repo", &refs[..2]), "fine")
        .await;
    assert_eq!(answer["jobs"].as_u64(), Some(2), "{answer}");
    tc.wait_for_builds(2).await;
}

#[tokio::test]
async fn a_ref_with_an_empty_name_is_skipped_not_sent_as_the_default_branch() {
    let (tc, app) = app_with("").await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let push = dc_payload("jdoe", "PROJ/repo", &[("refs/heads/", &sha(1), "UPDATE")]);
    let (status, answer) = app.dc_push(&push, "empty-branch").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    assert_eq!(answer["skipped"][0]["reason"], "empty branch or tag name");
    assert!(tc.build_calls().is_empty());
}
