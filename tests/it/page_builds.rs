//! The token page shows a user's builds with what became of them, and runs builds as that
//! user (SPEC §6.3): Run again, Run a build, CSRF and ownership checks.

use crate::support::*;
use std::time::Duration;

/// jdoe signed in with a token for `main`, and one push of theirs built.
async fn jdoe_with_a_build(world: &PageWorld) -> PageClient {
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert_eq!(jdoe.add_token("main", "tc-jdoe").await.status, 303);
    let push = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/feature/page", &sha(1), "UPDATE")],
    );
    assert_eq!(world.app.dc_push(&push, "page-push-1").await.0, 202);
    world.teamcity.wait_for_builds(1).await;
    for _ in 0..200 {
        if !world.app.api_jobs("?state=done").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    jdoe
}

#[tokio::test]
async fn a_user_sees_their_builds_and_runs_one_again_as_themselves() {
    let world = PageWorld::start("").await;
    let mut jdoe = jdoe_with_a_build(&world).await;
    let page = jdoe.get("/").await;
    assert!(page.body.contains("Your builds"), "{}", page.body);
    assert!(page.body.contains("feature/page") && page.body.contains(&sha(1)[..7]));
    assert!(
        page.body.contains("Proj_Build") && page.body.contains("in TeamCity"),
        "{}",
        page.body
    );
    let job = world.app.api_jobs("?state=done").await.remove(0);
    let id = job["id"].as_str().unwrap();
    assert!(page.body.contains(&format!("/builds/{id}/again")));

    // Another user sees none of it, and cannot run it.
    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    let theirs = mallory.get("/").await;
    assert!(!theirs.body.contains("feature/page"), "{}", theirs.body);
    let forged = mallory
        .post(&format!("/builds/{id}/again"), &[("csrf", &theirs.csrf())])
        .await;
    assert_eq!(forged.status, 404);
    // A form without the session's CSRF value is refused.
    let no_csrf = jdoe.post(&format!("/builds/{id}/again"), &[]).await;
    assert_eq!(no_csrf.status, 403);
    assert_eq!(world.teamcity.build_calls().len(), 1);

    let again = jdoe
        .post(&format!("/builds/{id}/again"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(again.status, 303, "{}", again.body);
    let calls = world.teamcity.wait_for_builds(2).await;
    let body = calls[1].json();
    assert_eq!(calls[1].authorization.as_deref(), Some("Bearer tc-jdoe"));
    assert_eq!(
        (
            body["branchName"].as_str(),
            body["buildType"]["id"].as_str()
        ),
        (Some("feature/page"), Some("Proj_Build"))
    );
    let page = jdoe.get("/?notice=queued").await;
    assert!(page.body.contains("Queued"), "{}", page.body);
}

#[tokio::test]
async fn run_a_build_applies_the_routes_like_a_push_with_the_users_token() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert_eq!(jdoe.add_token("main", "tc-jdoe").await.status, 303);
    let page = jdoe.get("/").await;
    let csrf = page.csrf();
    let commit = sha(42);
    let ran = jdoe
        .post(
            "/builds",
            &[
                ("csrf", &csrf),
                ("repository", "PROJ/repo"),
                ("branch", "release/2.0"),
                ("commit", &commit),
                ("user", "mallory"),
            ],
        )
        .await;
    assert_eq!(ran.status, 303, "{}", ran.body);
    let call = world.teamcity.wait_for_builds(1).await.remove(0);
    assert_eq!(
        call.authorization.as_deref(),
        Some("Bearer tc-jdoe"),
        "as the signed-in user, whatever the form says"
    );
    assert_eq!(call.json()["branchName"], "release/2.0");
    assert!(comment_without_mark(&call.json()).ends_with(&commit[..7]));
    // The job names the delivery the page recorded for it.
    let job = world
        .app
        .api_jobs("")
        .await
        .into_iter()
        .find(|j| j["branch"] == "release/2.0")
        .unwrap();
    let deliveries = world.app.api_deliveries(50).await;
    assert!(
        deliveries
            .iter()
            .any(|d| d["id"] == job["delivery"] && d["event"] == "page:run"),
        "{job} {deliveries:?}"
    );
    // Bad input: a clear 400 saying what to give.
    for (repository, branch, commit, says) in [
        ("repo", "main", sha(1), "PROJECT/repo"),
        ("PROJ/repo", "", sha(1), "branch"),
        ("PROJ/repo", "main", "abc".to_owned(), "40 hex digits"),
        // No commit, and no status_token to look the head up with.
        ("PROJ/repo", "main", String::new(), "status_token"),
    ] {
        let page = jdoe
            .post(
                "/builds",
                &[
                    ("csrf", &csrf),
                    ("repository", repository),
                    ("branch", branch),
                    ("commit", &commit),
                ],
            )
            .await;
        assert_eq!(page.status, 400, "{repository} {branch} {commit}");
        assert!(page.body.contains(says), "{}", page.body);
    }
    // The admin runs nothing (no token of their own).
    let mut admin = world.client();
    admin.sign_in_admin(ADMIN_TOKEN).await;
    let admin_page = admin.get("/").await;
    assert!(
        admin_page.body.contains("Recent builds"),
        "{}",
        admin_page.body
    );
    let refused = admin
        .post(
            "/builds",
            &[
                ("csrf", &admin_page.csrf()),
                ("repository", "PROJ/repo"),
                ("branch", "main"),
                ("commit", &commit),
            ],
        )
        .await;
    assert_eq!(refused.status, 403);
}

#[tokio::test]
async fn runs_from_the_page_are_limited_per_user() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert_eq!(jdoe.add_token("main", "tc-jdoe").await.status, 303);
    let csrf = jdoe.get("/").await.csrf();
    let mut statuses = Vec::new();
    for n in 0..12 {
        let commit = sha(100 + n);
        let page = jdoe
            .post(
                "/builds",
                &[
                    ("csrf", &csrf),
                    ("repository", "PROJ/repo"),
                    ("branch", "main"),
                    ("commit", &commit),
                ],
            )
            .await;
        statuses.push(page.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
}

#[tokio::test]
async fn a_push_that_built_nothing_is_shown_with_what_to_do() {
    let world = PageWorld::start("").await;
    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    let push = dc_payload(
        "mallory",
        "PROJ/repo",
        &[("refs/heads/feature/tokenless", &sha(5), "UPDATE")],
    );
    let (status, answer) = world.app.dc_push(&push, "tokenless-1").await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    let page = mallory.get("/").await;
    assert!(
        page.body.contains("Pushes of yours that built nothing"),
        "{}",
        page.body
    );
    assert!(page.body.contains("feature/tokenless"));
    assert!(page.body.contains("no token for mallory on main"));
    assert!(
        page.body
            .contains("Add a TeamCity token for that server above")
    );
    // Someone else does not see it.
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert!(!jdoe.get("/").await.body.contains("feature/tokenless"));
}
