//! Pull-request builds on Data Center and Cloud (SPEC §5.4), on the shared fixtures and on
//! payloads made from them: what builds, what is skipped and why, one build for a push and a
//! pull request of the same commit, and superseded builds cancelled in TeamCity's queue.

use crate::support::*;
use serde_json::{Value, json};

/// The Cloud repository access token the bridge is given as `status_token`.
const STATUS_TOKEN: &str = "bb-repo-token";

/// Sources `dc` and `cloud` (whose API is the fake Bitbucket, and whose `status_token` is
/// [`STATUS_TOKEN`] unless `cloud_status_token` is false), server `main`, and routes taking
/// pushes and pull requests into `master`.
fn config(tc: &str, bb: &str, cloud_status_token: bool, dc_route: &str) -> String {
    let status_token = if cloud_status_token {
        format!("status_token = \"{STATUS_TOKEN}\"")
    } else {
        String::new()
    };
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["{DC_SECRET}"]

[[bitbucket]]
id = "cloud"
kind = "cloud"
secrets = ["{CLOUD_SECRET}"]
url = "{bb}"
{status_token}

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
events = ["push", "pull_request"]
target_branches = ["master", "main"]
{dc_route}

[[route]]
source = "cloud"
repository = "*"
teamcity = "main"
build_types = ["Cloud_Build"]
events = ["push", "pull_request"]
target_branches = ["master"]
vcs_root_id = "Cloud_Root"
cancel_superseded = true
"#
    )
}

struct World {
    tc: FakeTeamCity,
    bb: FakeBitbucket,
    app: TestApp,
}

/// Data Center users gopher, admin and amuniz, and two Cloud users, have TeamCity tokens.
async fn world_with(cloud_status_token: bool, dc_route: &str) -> World {
    let tc = FakeTeamCity::start().await;
    let bb = FakeBitbucket::start().await;
    bb.add_access_token(STATUS_TOKEN, "amuniz/test-repos");
    let app = TestApp::spawn(&config(&tc.url, &bb.url, cloud_status_token, dc_route)).await;
    for (source, user, token) in [
        ("dc", "gopher", "tc-gopher"),
        ("dc", "admin", "tc-admin"),
        ("dc", "amuniz", "tc-amuniz"),
        (
            "cloud",
            "{6b47f1dc-23a0-4b99-9964-d13e665f5d8e}",
            "tc-falco",
        ),
        (
            "cloud",
            "{7d3a178a-a087-4756-b2da-2f9eadf50ba8}",
            "tc-falco2",
        ),
    ] {
        tc.add_token(token, user);
        app.register_token(source, user, "main", token).await;
    }
    World { tc, bb, app }
}

async fn world() -> World {
    world_with(true, "pr_properties = true\ncancel_superseded = true").await
}

async fn deliver(app: &TestApp, source: &str, event: &str, body: &[u8], id: &str) -> (u16, Value) {
    let secret = if source == "dc" {
        DC_SECRET
    } else {
        CLOUD_SECRET
    };
    let response = app
        .webhook(source, Some(event), body, Some(secret), Some(id))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn edit(fixture_name: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(fixture_name)).unwrap();
    change(&mut value);
    value.to_string().into_bytes()
}

/// `dc-pr-opened.json` (pull request #5 of `~gopher/webhook-test`, feature/wip → master)
/// with its head at `head`.
fn dc_opened_at(head: &str) -> Vec<u8> {
    edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["fromRef"]["latestCommit"] = head.into();
    })
}

/// The shape of `dc-pr-from_ref_updated-sanitized.json` (whose hashes are not real) made
/// into pull request #5 of `~gopher/webhook-test`, moved from `previous` to `head`.
fn dc_from_ref_updated(previous: &str, head: &str) -> Vec<u8> {
    let opened: Value = serde_json::from_slice(&dc_opened_at(head)).unwrap();
    edit("dc-pr-from_ref_updated-sanitized.json", |v| {
        v["pullRequest"] = opened["pullRequest"].clone();
        v["actor"] = opened["actor"].clone();
        v["previousFromHash"] = previous.into();
    })
}

fn skipped_reasons(answer: &Value) -> Vec<String> {
    answer["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the build of a sentinel push to `sentinel/<n>` reached TeamCity: every job
/// made before it was sent by then (one worker sends in order), so a count taken after it
/// holds.
async fn settle(w: &World, n: u32) -> Vec<fake_teamcity::Recorded> {
    let branch = format!("refs/heads/sentinel/{n}");
    let push = dc_payload(
        "gopher",
        "PROJ/repo",
        &[(&branch, &sha(9000 + n), "UPDATE")],
    );
    let (status, _) = w.app.dc_push(&push, &format!("sentinel-{n}")).await;
    assert_eq!(status, 202);
    let name = format!("sentinel/{n}");
    w.tc.wait_for(1, |r| {
        r.path == "/app/rest/buildQueue" && r.body.contains(&name)
    })
    .await;
    w.tc.build_calls()
        .into_iter()
        .filter(|r| !r.body.contains("sentinel/"))
        .collect()
}

fn property(request: &Value, name: &str) -> Option<String> {
    request["properties"]["property"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["value"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_data_center_pull_request_builds_its_source_branch_at_its_head_as_its_author() {
    let w = world().await;
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:opened",
        &fixture("dc-pr-opened.json"),
        "o-1",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let call = w.tc.wait_for_builds(1).await.remove(0);
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-gopher"));
    let body = call.json();
    // The source branch, as a push of it would send it: TeamCity's Pull Requests feature
    // builds pull requests as their source branch.
    assert_eq!(body["branchName"], "feature/wip");
    assert_eq!(body["buildType"]["id"], "Proj_Build");
    assert_eq!(
        comment_without_mark(&body),
        "Bitbucket pull request #5 by gopher: ~gopher/webhook-test feature/wip 32a0b8a"
    );
    for (name, value) in [
        ("bitbucket.pr.id", "5"),
        ("bitbucket.pr.title", "Update README"),
        (
            "bitbucket.pr.url",
            "https://server.bitbucket.local/users/gopher/repos/webhook-test/pull-requests/5",
        ),
        ("bitbucket.pr.source.branch", "feature/wip"),
        ("bitbucket.pr.target.branch", "master"),
        ("bitbucket.pr.author", "gopher"),
    ] {
        assert_eq!(property(&body, name).as_deref(), Some(value), "{name}");
    }

    // Data Center 10: ISO timestamps and `draft: false` are read.
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:opened",
        &fixture("dc10-pr-opened.json"),
        "o-2",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let call = w.tc.wait_for_builds(2).await.remove(1);
    assert_eq!(call.json()["branchName"], "feature/diffstat");
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-admin"));
}

#[tokio::test]
async fn without_pr_properties_no_parameters_are_sent() {
    let w = world_with(true, "").await;
    let (status, _) = deliver(
        &w.app,
        "dc",
        "pr:opened",
        &fixture("dc-pr-opened.json"),
        "p-1",
    )
    .await;
    assert_eq!(status, 202);
    let body = w.tc.wait_for_builds(1).await.remove(0).json();
    assert!(body.get("properties").is_none(), "{body}");
}

#[tokio::test]
async fn a_push_and_a_pull_request_of_one_commit_make_one_build_in_either_order() {
    let w = world().await;
    let head = "32a0b8a740c2963c6f56bd8baf3dc05683d299e0";
    // Push first, then the pull request is opened on that head.
    let push = dc_payload(
        "gopher",
        "~gopher/webhook-test",
        &[("refs/heads/feature/wip", head, "UPDATE")],
    );
    let (status, answer) = w.app.dc_push(&push, "push-1").await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(1)));
    let (status, answer) = deliver(&w.app, "dc", "pr:opened", &dc_opened_at(head), "pr-1").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    assert!(
        skipped_reasons(&answer)[0].starts_with("already seen"),
        "{answer}"
    );

    // The pull request's event first (Bitbucket sends both on a push to its source branch).
    let next = sha(2);
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:from_ref_updated",
        &dc_from_ref_updated(head, &next),
        "pr-2",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let push = dc_payload(
        "gopher",
        "~gopher/webhook-test",
        &[("refs/heads/feature/wip", &next, "UPDATE")],
    );
    let (status, answer) = w.app.dc_push(&push, "push-2").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    assert!(skipped_reasons(&answer)[0].starts_with("already seen"));

    let builds = settle(&w, 1).await;
    let shas: Vec<String> = builds
        .iter()
        .map(|c| comment_without_mark(&c.json()))
        .collect();
    assert_eq!(builds.len(), 2, "{shas:?}");
    assert!(
        shas[0].ends_with("32a0b8a") && shas[0].starts_with("Bitbucket push"),
        "{shas:?}"
    );
    assert!(shas[1].starts_with("Bitbucket pull request #5"), "{shas:?}");
}

#[tokio::test]
async fn the_source_branch_updated_builds_only_when_its_head_moved() {
    let w = world().await;
    let head = sha(10);
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:from_ref_updated",
        &dc_from_ref_updated(&head, &head),
        "u-1",
    )
    .await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    assert!(
        skipped_reasons(&answer)[0].contains("head did not change"),
        "{answer}"
    );
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:from_ref_updated",
        &dc_from_ref_updated(&sha(9), &head),
        "u-2",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    // The sanitized capture's hashes are not commits (39 digits): a clear 400.
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:from_ref_updated",
        &fixture("dc-pr-from_ref_updated-sanitized.json"),
        "u-3",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("latestCommit"),
        "{answer}"
    );
    assert_eq!(settle(&w, 1).await.len(), 1);
}

#[tokio::test]
async fn a_draft_is_skipped_then_built_when_it_becomes_ready() {
    let w = world().await;
    let head = sha(20);
    let draft = edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["fromRef"]["latestCommit"] = head.clone().into();
        v["pullRequest"]["draft"] = true.into();
    });
    let (_, answer) = deliver(&w.app, "dc", "pr:opened", &draft, "d-1").await;
    assert_eq!(answer["jobs"], 0);
    assert!(
        skipped_reasons(&answer)[0].contains("is a draft"),
        "{answer}"
    );
    // A title edit of the draft: modified, still a draft.
    let edited = edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["fromRef"]["latestCommit"] = head.clone().into();
        v["pullRequest"]["draft"] = true.into();
        v["previousTitle"] = "Old title".into();
    });
    let (status, answer) = deliver(&w.app, "dc", "pr:modified", &edited, "d-2").await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    assert!(
        skipped_reasons(&answer)[0].contains("not made ready"),
        "{answer}"
    );
    // Marked ready for review.
    let ready = edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["fromRef"]["latestCommit"] = head.clone().into();
        v["pullRequest"]["draft"] = false.into();
        v["previousDraft"] = true.into();
    });
    let (status, answer) = deliver(&w.app, "dc", "pr:modified", &ready, "d-3").await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let builds = settle(&w, 1).await;
    assert_eq!(builds.len(), 1);
    assert!(comment_without_mark(&builds[0].json()).ends_with(&head[..7]));

    // With draft_pull_requests a draft builds at once.
    let w = world_with(true, "draft_pull_requests = true").await;
    let (_, answer) = deliver(&w.app, "dc", "pr:opened", &draft, "d-4").await;
    assert_eq!(answer["jobs"], 1, "{answer}");
}

#[tokio::test]
async fn forks_other_targets_and_tags_are_skipped_with_a_reason() {
    let w = world().await;
    // A personal fork: the source repository is ~JDOE/webhook-test.
    let fork = edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["fromRef"]["repository"]["project"]["key"] = "~JDOE".into();
    });
    let (status, answer) = deliver(&w.app, "dc", "pr:opened", &fork, "f-1").await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    let reason = &skipped_reasons(&answer)[0];
    assert!(
        reason.contains("fork ~JDOE/webhook-test") && reason.contains("fork_pull_requests"),
        "{reason}"
    );
    // Into a branch no route's target_branches names.
    let develop = edit("dc-pr-opened.json", |v| {
        v["pullRequest"]["toRef"]["id"] = "refs/heads/develop".into();
    });
    let (_, answer) = deliver(&w.app, "dc", "pr:opened", &develop, "f-2").await;
    assert_eq!(answer["jobs"], 0);
    assert!(
        skipped_reasons(&answer)[0].contains("targets develop"),
        "{answer}"
    );
    // From a tag.
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:opened",
        &fixture("dc-pr-opened-from-tag.json"),
        "f-3",
    )
    .await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    assert!(
        skipped_reasons(&answer)[0].contains("refs/tags/v1.0 is not a branch"),
        "{answer}"
    );
    assert!(settle(&w, 1).await.is_empty());

    // With fork_pull_requests the fork builds.
    let w = world_with(true, "fork_pull_requests = true").await;
    let (_, answer) = deliver(&w.app, "dc", "pr:opened", &fork, "f-4").await;
    assert_eq!(answer["jobs"], 1, "{answer}");
}

#[tokio::test]
async fn an_ended_pull_request_builds_nothing_and_cancels_its_queued_build() {
    let w = world().await;
    let (_, answer) = deliver(
        &w.app,
        "dc",
        "pr:opened",
        &fixture("dc-pr-opened.json"),
        "e-1",
    )
    .await;
    assert_eq!(answer["jobs"], 1);
    w.tc.wait_for_builds(1).await;
    let queued = w.tc.builds()[0].0;
    // The job must be done (TeamCity's build id kept) before the end is enqueued.
    wait_done(&w.app, 1).await;
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:merged",
        &fixture("dc-pr-merged.json"),
        "e-2",
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let cancel =
        w.tc.wait_for(1, |r| {
            r.method == "POST" && r.path == format!("/app/rest/buildQueue/id:{queued}")
        })
        .await
        .remove(0);
    // TeamCity's buildCancelRequest, with the token that queued the build.
    assert_eq!(
        cancel.json(),
        json!({"comment": "pull request #5 ended (bb2tc)", "readdIntoQueue": false})
    );
    assert_eq!(cancel.authorization.as_deref(), Some("Bearer tc-gopher"));
    assert_eq!(
        w.tc.build_state(queued),
        (
            "finished".to_owned(),
            Some("pull request #5 ended (bb2tc)".to_owned())
        )
    );
    // Nothing was built for the merge; declined and deleted build nothing either.
    for (i, event) in ["pr:declined", "pr:deleted"].into_iter().enumerate() {
        let (status, _) = deliver(
            &w.app,
            "dc",
            event,
            &fixture("dc-pr-merged.json"),
            &format!("e-{}", i + 3),
        )
        .await;
        assert_eq!(status, 202);
    }
    assert_eq!(settle(&w, 1).await.len(), 1);
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"bb2tc_builds_cancelled_total{server="main",outcome="cancelled"} 1"#),
        "{metrics}"
    );
    // Without cancel_superseded the end is only noted.
    let w = world_with(true, "").await;
    let (status, answer) = deliver(
        &w.app,
        "dc",
        "pr:merged",
        &fixture("dc-pr-merged.json"),
        "e-9",
    )
    .await;
    assert_eq!((status, answer["jobs"].as_u64()), (202, Some(0)));
    assert!(
        skipped_reasons(&answer)[0].contains("merged: nothing to build"),
        "{answer}"
    );
}

/// Waits until `n` jobs are done.
async fn wait_done(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let done = app.api_jobs("?state=done").await;
        if done.len() >= n {
            return done;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} jobs done: {:?}", app.api_jobs("").await);
}

#[tokio::test]
async fn a_newer_commit_cancels_the_older_queued_build_never_a_started_one() {
    let w = world().await;
    let push = |n: u32| {
        dc_payload(
            "gopher",
            "PROJ/repo",
            &[("refs/heads/feature/x", &sha(n), "UPDATE")],
        )
    };
    w.app.dc_push(&push(1), "s-1").await;
    w.tc.wait_for_builds(1).await;
    wait_done(&w.app, 1).await;
    let first = w.tc.builds()[0].0;
    w.app.dc_push(&push(2), "s-2").await;
    let cancel =
        w.tc.wait_for(1, |r| {
            r.method == "POST" && r.path == format!("/app/rest/buildQueue/id:{first}")
        })
        .await
        .remove(0);
    assert_eq!(
        cancel.json()["comment"],
        format!("superseded by {} (bb2tc)", sha(2))
    );
    assert_eq!(w.tc.build_state(first).0, "finished");
    wait_done(&w.app, 2).await;
    let second = w.tc.builds()[1].0;
    // An agent takes the second build: the third commit does not stop it.
    w.tc.start_queued();
    w.app.dc_push(&push(3), "s-3").await;
    w.tc.wait_for(1, |r| {
        r.method == "GET" && r.path == format!("/app/rest/buildQueue/id:{second}")
    })
    .await;
    wait_done(&w.app, 3).await;
    assert_eq!(w.tc.build_state(second), ("running".to_owned(), None));
    assert_eq!(
        w.tc.cancel_calls().len(),
        1,
        "only the queued build was cancelled"
    );
    let jobs = w.app.api_jobs("?state=done").await;
    let third = jobs.iter().find(|j| j["sha"] == sha(3)).unwrap();
    assert!(
        third["warning"]
            .as_str()
            .unwrap()
            .contains(&format!("superseded build {second} was running already")),
        "{third}"
    );
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"bb2tc_builds_cancelled_total{server="main",outcome="started"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cloud_pull_request_is_pinned_at_its_whole_head_commit() {
    let w = world().await;
    let full = format!("d31df3425c5b{}", "0123456789abcdef0123456789ab");
    w.bb.add_commit("amuniz/test-repos", &full);
    let (status, answer) = deliver(
        &w.app,
        "cloud",
        "pullrequest:created",
        &fixture("cloud-pullrequest-created.json"),
        "c-1",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let call = w.tc.wait_for_builds(1).await.remove(0);
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-falco"));
    let body = call.json();
    assert_eq!(body["branchName"], "feature/test");
    assert_eq!(body["revisions"]["revision"][0]["version"], full.as_str());
    assert_eq!(
        body["revisions"]["revision"][0]["vcsBranchName"],
        "refs/heads/feature/test"
    );
    assert_eq!(
        comment_without_mark(&body),
        "Bitbucket pull request #735 by Nikolas Falco: amuniz/test-repos feature/test d31df34"
    );
    assert_eq!(
        w.bb.count("/2.0/repositories/amuniz/test-repos/commit/d31df3425c5b"),
        1
    );

    // `updated` for a title edit: the same head, nothing new to build.
    let (status, answer) = deliver(
        &w.app,
        "cloud",
        "pullrequest:updated",
        &edit("cloud-pullrequest-created.json", |v| {
            v["pullrequest"]["title"] = "BUILD test, renamed".into();
        }),
        "c-2",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(0)),
        "{answer}"
    );
    assert!(
        skipped_reasons(&answer)[0].starts_with("already seen"),
        "{answer}"
    );
    // `updated` with a new head builds it; the push of that commit (whole hash) after it is
    // the same build.
    let newer = format!("abcdef012345{}", "fedcba9876543210fedcba987654");
    w.bb.add_commit("amuniz/test-repos", &newer);
    let moved = edit("cloud-pullrequest-created.json", |v| {
        v["pullrequest"]["source"]["commit"]["hash"] = newer[..12].into();
    });
    let (_, answer) = deliver(&w.app, "cloud", "pullrequest:updated", &moved, "c-3").await;
    assert_eq!(answer["jobs"], 1, "{answer}");
    let push = edit("cloud-push-branch.json", |v| {
        v["repository"]["full_name"] = "amuniz/test-repos".into();
        v["actor"] = json!({"uuid": "{6b47f1dc-23a0-4b99-9964-d13e665f5d8e}", "display_name": "Nikolas Falco"});
        let change = &mut v["push"]["changes"][0];
        change["new"]["name"] = "feature/test".into();
        change["new"]["target"]["hash"] = newer.clone().into();
    });
    let (_, answer) = deliver(&w.app, "cloud", "repo:push", &push, "c-4").await;
    assert_eq!(answer["jobs"], 0, "{answer}");
    assert_eq!(w.tc.wait_for_builds(2).await.len(), 2);

    // Merged (the legacy capture, another repository): nothing built, nothing to cancel.
    let (status, answer) = deliver(
        &w.app,
        "cloud",
        "pullrequest:fulfilled",
        &fixture("cloud-pullrequest-fulfilled-legacy.json"),
        "c-5",
    )
    .await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    assert_eq!(settle(&w, 1).await.len(), 2);
}

#[tokio::test]
async fn without_a_status_token_a_cloud_pull_request_builds_its_branch_unpinned() {
    let w = world_with(false, "").await;
    let (status, answer) = deliver(
        &w.app,
        "cloud",
        "pullrequest:updated",
        &fixture("cloud-pullrequest-updated.json"),
        "n-1",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let call = w.tc.wait_for_builds(1).await.remove(0);
    let body = call.json();
    assert_eq!(body["branchName"], "release/release-1");
    assert!(
        body.get("revisions").is_none(),
        "an abbreviated commit is not pinned: {body}"
    );
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-falco2"));
    let done = wait_done(&w.app, 1).await;
    assert!(
        done[0]["warning"].as_str().unwrap().contains("abbreviated"),
        "{}",
        done[0]
    );
    assert_eq!(
        w.bb.count("/2.0/repositories/nfalco79/test-repos/commit/f945c96c71d0"),
        0
    );
    // A push of the same commit (whole hash) is still recognised as the same build.
    let push = edit("cloud-push-branch.json", |v| {
        v["repository"]["full_name"] = "nfalco79/test-repos".into();
        v["actor"] = json!({"uuid": "{7d3a178a-a087-4756-b2da-2f9eadf50ba8}"});
        let change = &mut v["push"]["changes"][0];
        change["new"]["name"] = "release/release-1".into();
        change["new"]["target"]["hash"] = format!("f945c96c71d0{}", "1".repeat(28)).into();
    });
    let (_, answer) = deliver(&w.app, "cloud", "repo:push", &push, "n-2").await;
    assert_eq!(answer["jobs"], 0, "{answer}");
}

#[tokio::test]
async fn a_cloud_api_that_refuses_leaves_the_build_unpinned_not_lost() {
    let w = world().await;
    // The commit is unknown to the fake Bitbucket: 404.
    let (status, answer) = deliver(
        &w.app,
        "cloud",
        "pullrequest:created",
        &fixture("cloud-pullrequest-created.json"),
        "r-1",
    )
    .await;
    assert_eq!(
        (status, answer["jobs"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let body = w.tc.wait_for_builds(1).await.remove(0).json();
    assert!(body.get("revisions").is_none(), "{body}");
    assert_eq!(
        w.bb.count("/2.0/repositories/amuniz/test-repos/commit/d31df3425c5b"),
        1
    );
}
