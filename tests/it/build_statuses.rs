//! Build statuses back to Bitbucket (SPEC §6.2) against a fake Bitbucket that checks the
//! Bearer status token, the required fields and their lengths, and a fake TeamCity whose
//! builds start and finish. Also a build run from the token page without a commit, whose
//! branch head is asked of Bitbucket with the same token.

use crate::support::*;
use std::time::Duration;

const STATUS_TOKEN: &str = "bb-status-token";

/// Source `dc` (Data Center) and `cloud` at the fake Bitbucket, each with a status token;
/// routes reporting `mode` ("triggers" or "builds").
pub(crate) fn config(tc: &str, bb: &str, mode: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["{DC_SECRET}"]
url = "{bb}"
status_token = "{STATUS_TOKEN}"

[[bitbucket]]
id = "cloud"
kind = "cloud"
secrets = ["{CLOUD_SECRET}"]
url = "{bb}"
status_token = "{STATUS_TOKEN}"

[[teamcity]]
id = "main"
url = "{tc}"
rate_per_second = 1000.0
burst = 1000
retry_schedule_secs = [1, 1]
timeout_secs = 5

[[route]]
source = "dc"
repository = "*"
teamcity = "main"
build_types = ["Proj_Build"]
report_status = "{mode}"
cancel_superseded = true

[[route]]
source = "cloud"
repository = "*"
teamcity = "main"
build_types = ["Cloud_Project_Subproject_IntegrationTests"]
report_status = "{mode}"
"#
    )
}

struct World {
    tc: FakeTeamCity,
    bb: FakeBitbucket,
    app: TestApp,
}

async fn world(mode: &str) -> World {
    world_on(Backend::Sled, mode).await.unwrap()
}

async fn world_on(backend: Backend, mode: &str) -> Option<World> {
    let tc = FakeTeamCity::start().await;
    let bb = FakeBitbucket::start().await;
    bb.add_access_token(STATUS_TOKEN, "PROJ/*");
    bb.add_access_token("other-token", "OTHER/*");
    let app = TestApp::spawn_backend(backend, &config(&tc.url, &bb.url, mode)).await?;
    tc.add_token("tc-jdoe", "jdoe");
    app.register_token("dc", "jdoe", "main", "tc-jdoe").await;
    Some(World { tc, bb, app })
}

fn push_of(user: &str, branch: &str, n: u32) -> Vec<u8> {
    dc_payload(
        user,
        "PROJ/repo",
        &[(&format!("refs/heads/{branch}"), &sha(n), "UPDATE")],
    )
}

async fn a_trigger_is_reported_as_queued_as_the_user_under_bb2tcs_own_key(backend: Backend) {
    let Some(w) = world_on(backend, "triggers").await else {
        return;
    };
    let (status, _) = w.app.dc_push(&push_of("jdoe", "main", 1), "t-1").await;
    assert_eq!(status, 202);
    let posted = w.bb.wait_for_statuses(1).await.remove(0);
    assert_eq!(posted.kind, "datacenter");
    assert_eq!(
        (posted.repository.as_str(), posted.sha.as_str()),
        ("PROJ/repo", sha(1).as_str())
    );
    assert_eq!(posted.authorization, format!("Bearer {STATUS_TOKEN}"));
    let body = posted.body;
    assert_eq!(body["key"], "bb2tc-Proj_Build");
    assert_eq!(body["parent"], "bb2tc-Proj_Build");
    assert_eq!(body["ref"], "refs/heads/main");
    assert_eq!(body["state"], "SUCCESSFUL");
    assert_eq!(body["description"], "Queued in TeamCity as jdoe");
    assert!(
        body["url"].as_str().unwrap().contains("viewQueued.html"),
        "{body}"
    );
    // One status per trigger: nothing more while the build runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.bb.statuses().len(), 1);
    let jobs = w.app.api_jobs("").await;
    assert!(
        jobs.iter()
            .any(|j| j["purpose"] == "report_status" && j["state"] == "done"),
        "{jobs:?}"
    );
}

async fn why_no_build_will_run_is_reported_failed_with_where_to_fix_it(backend: Backend) {
    let Some(w) = world_on(backend, "triggers").await else {
        return;
    };
    // No token: the status links the token page.
    let (_, answer) = w.app.dc_push(&push_of("stranger", "main", 2), "n-1").await;
    assert_eq!(answer["jobs"], 0, "statuses are not builds: {answer}");
    let posted = w.bb.wait_for_statuses(1).await.remove(0).body;
    assert_eq!(posted["state"], "FAILED");
    assert!(
        posted["description"]
            .as_str()
            .unwrap()
            .contains("no token for stranger on main"),
        "{posted}"
    );
    assert_eq!(posted["url"], format!("{}/", w.app.url));
    // No such build type in TeamCity (404): the status says so.
    w.tc.fail_next(
        404,
        "No build type nor template is found by id 'Proj_Build'.",
        None,
    );
    w.app.dc_push(&push_of("jdoe", "feature", 3), "n-2").await;
    let posted = w.bb.wait_for_statuses(2).await.remove(1).body;
    assert_eq!(posted["state"], "FAILED");
    assert!(
        posted["description"]
            .as_str()
            .unwrap()
            .contains("no such build configuration"),
        "{posted}"
    );
    // TeamCity queued the default branch instead (the branch is not in its VCS root's
    // branch specification): no build of this branch will run.
    w.tc.answer_with_branch("<default>");
    w.app
        .dc_push(&push_of("jdoe", "unknown-to-tc", 6), "n-4")
        .await;
    let posted = w.bb.wait_for_statuses(3).await.remove(2).body;
    assert_eq!(posted["state"], "FAILED");
    assert!(
        posted["description"]
            .as_str()
            .unwrap()
            .starts_with("Not this branch"),
        "{posted}"
    );
    w.tc.answer_with_branch("unknown-to-tc");
    // TeamCity refused the token (401): the token page again.
    w.tc.revoke_token("tc-jdoe");
    w.app.dc_push(&push_of("jdoe", "other", 4), "n-3").await;
    let posted = w.bb.wait_for_statuses(4).await.remove(3).body;
    assert!(
        posted["description"]
            .as_str()
            .unwrap()
            .contains("refused the token of jdoe (401)"),
        "{posted}"
    );
    assert_eq!(posted["url"], format!("{}/", w.app.url));
}

#[tokio::test]
async fn with_builds_the_followed_build_is_reported_until_it_ends() {
    let w = world("builds").await;
    w.tc.agents(Duration::from_millis(500), Duration::from_millis(500));
    w.tc.finish_as("FAILURE", "Tests failed: 1");
    w.app.dc_push(&push_of("jdoe", "main", 5), "b-1").await;
    let first = w.bb.wait_for_statuses(1).await.remove(0).body;
    assert_eq!(
        (first["state"].as_str(), first["description"].as_str()),
        (Some("INPROGRESS"), Some("Queued in TeamCity as jdoe"))
    );
    // The first poll (5–10 s later) finds it finished.
    for _ in 0..150 {
        if w.bb.statuses().iter().any(|s| s.body["state"] == "FAILED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = w.bb.statuses().pop().unwrap().body;
    assert_eq!(last["state"], "FAILED", "{last}");
    assert_eq!(
        last["description"],
        "Build #1 by jdoe failed: Tests failed: 1"
    );
    assert!(
        last["url"].as_str().unwrap().contains("viewLog.html"),
        "{last}"
    );
    assert_eq!(
        last["key"], first["key"],
        "one key per build type: the status is updated"
    );
}

#[tokio::test]
async fn a_cloud_status_fits_clouds_key_limit_and_a_503_is_retried_without_delaying_the_trigger() {
    let w = world("triggers").await;
    w.tc.add_token("tc-cloud", "cloud");
    w.app
        .register_token("cloud", "{c10d}", "main", "tc-cloud")
        .await;
    w.bb.fail_statuses(1);
    let push = edit_cloud_push();
    let response = w
        .app
        .webhook(
            "cloud",
            Some("repo:push"),
            &push,
            Some(CLOUD_SECRET),
            Some("c-1"),
        )
        .await;
    assert_eq!(response.status(), 202);
    // The trigger goes at once; the status comes after Bitbucket's 503, a second later.
    let call = w.tc.wait_for_builds(1).await.remove(0);
    let posted = w.bb.wait_for_statuses(1).await.remove(0);
    assert!(
        call.at.elapsed() >= Duration::from_millis(700),
        "the status was retried after its delay (1 s ± 20 %)"
    );
    assert_eq!(posted.kind, "cloud");
    let key = posted.body["key"].as_str().unwrap();
    assert!(
        key.chars().count() <= 40 && key.starts_with("bb2tc-Cloud_Project"),
        "{key}"
    );
    assert_eq!(posted.body["refname"], "feature/x");
    assert_eq!(posted.body["state"], "SUCCESSFUL");
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"bb2tc_status_posts_total{source="cloud",outcome="retry"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"bb2tc_status_posts_total{source="cloud",outcome="posted"} 1"#),
        "{metrics}"
    );
}

/// A Cloud push of `PROJ/repo` feature/x by a user with a token.
fn edit_cloud_push() -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&fixture("cloud-push-branch.json")).unwrap();
    value["repository"]["full_name"] = "PROJ/repo".into();
    value["actor"] = serde_json::json!({"uuid": "{c10d}", "display_name": "Cloud User"});
    value["push"]["changes"][0]["new"]["name"] = "feature/x".into();
    value["push"]["changes"][0]["new"]["target"]["hash"] = sha(7).into();
    value.to_string().into_bytes()
}

#[tokio::test]
async fn a_build_run_from_the_page_without_a_commit_builds_the_branchs_head() {
    let w = world("off").await;
    w.bb.add_account(Account::datacenter("jdoe", 1, "Jane Doe"), "bb-jdoe");
    w.bb.add_branch("PROJ/repo", "release/2.0", &sha(31));
    let mut jdoe = PageClient::new(&w.app.url);
    jdoe.sign_in_dc("bb-jdoe").await;
    let csrf = jdoe.get("/").await.csrf();
    let ran = jdoe
        .post(
            "/builds",
            &[
                ("csrf", &csrf),
                ("repository", "PROJ/repo"),
                ("branch", "release/2.0"),
                ("commit", ""),
            ],
        )
        .await;
    assert_eq!(ran.status, 303, "{}", ran.body);
    let call = w.tc.wait_for_builds(1).await.remove(0);
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-jdoe"));
    assert!(
        comment_without_mark(&call.json()).ends_with(&sha(31)[..7]),
        "the head"
    );
    // A branch Bitbucket does not have: said so.
    let missing = jdoe
        .post(
            "/builds",
            &[
                ("csrf", &csrf),
                ("repository", "PROJ/repo"),
                ("branch", "gone"),
                ("commit", ""),
            ],
        )
        .await;
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("no branch gone"), "{}", missing.body);
}

#[tokio::test]
async fn a_cancelled_build_is_reported_cancelled_where_data_center_takes_it() {
    let w = world("builds").await;
    w.bb.take_cancelled_status();
    // The first build stays queued; the second commit cancels it in TeamCity's queue.
    w.app.dc_push(&push_of("jdoe", "main", 8), "x-1").await;
    w.tc.wait_for_builds(1).await;
    for _ in 0..200 {
        if !w.app.api_jobs("?state=done").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.app.dc_push(&push_of("jdoe", "main", 9), "x-2").await;
    w.tc.wait_for(1, |r| {
        r.method == "POST" && r.path.starts_with("/app/rest/buildQueue/id:")
    })
    .await;
    // The first build's next poll finds it cancelled.
    let mut cancelled = None;
    for _ in 0..150 {
        cancelled =
            w.bb.statuses()
                .into_iter()
                .find(|s| s.sha == sha(8) && s.body["state"] != "INPROGRESS");
        if cancelled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = cancelled.expect("a final status for the first commit").body;
    assert_eq!(cancelled["state"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["description"], "Build by jdoe was cancelled");
}

crate::on_both_backends!(
    a_trigger_is_reported_as_queued_as_the_user_under_bb2tcs_own_key,
    why_no_build_will_run_is_reported_failed_with_where_to_fix_it,
);
