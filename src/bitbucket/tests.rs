//! Parsing the captured payloads in `tests/fixtures/bitbucket/` (copied byte-exact from
//! `shared/fixtures`, see `SOURCES.md` there).

use super::*;
use crate::ids::{Secret, UserKey};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/bitbucket/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dc(name: &str) -> Push {
    parse_push(SourceKind::DataCenter, &fixture(name)).unwrap()
}

fn cloud(name: &str) -> Push {
    parse_push(SourceKind::Cloud, &fixture(name)).unwrap()
}

fn summary(push: &Push) -> Vec<(String, RefKind, Option<String>)> {
    push.changes
        .iter()
        .map(|c| {
            (
                c.logical_name().to_owned(),
                c.kind,
                c.target.as_ref().map(|s| s.as_str().to_owned()),
            )
        })
        .collect()
}

#[test]
fn published_signature_vectors_verify() {
    for (file, secret, header) in [
        (
            "dc-refs_changed-branch-update.json",
            "password",
            "sha256=49435c7bac158ed23f5f5edbb7b6937be9a87fecebe1707d6f498227f79a9074",
        ),
        (
            "dc-pr-comment-added-signed.json",
            "mysecret",
            "sha256=ed11f92d1565a4de586727fe8260558277d58009e8957a79eb4749a7009ce083",
        ),
        (
            "cloud-push-branch-create-signed.json",
            "Gkvl$k$wyNpQAF42",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035",
        ),
    ] {
        let body = fixture(file);
        assert_eq!(signature::sign(secret.as_bytes(), &body), header, "{file}");
        let secrets = [Secret::new(secret)];
        assert_eq!(
            signature::verify(&secrets, Some(header.as_bytes()), &body),
            Ok(())
        );
    }
    // The same JBS test asserts the neighbouring digest is rejected.
    let body = fixture("cloud-push-branch-create-signed.json");
    let wrong = "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a036";
    assert_eq!(
        signature::verify(
            &[Secret::new("Gkvl$k$wyNpQAF42")],
            Some(wrong.as_bytes()),
            &body
        ),
        Err(signature::SignatureError::Mismatch)
    );
}

#[test]
fn event_keys_are_classified_per_source_kind() {
    use EventClass::*;
    assert_eq!(classify(SourceKind::DataCenter, "diagnostics:ping"), Ping);
    assert_eq!(classify(SourceKind::DataCenter, "repo:refs_changed"), Push);
    assert_eq!(
        classify(SourceKind::DataCenter, "mirror:repo_synchronized"),
        Push
    );
    assert_eq!(classify(SourceKind::DataCenter, "repo:push"), Other);
    assert_eq!(classify(SourceKind::DataCenter, "pr:opened"), PullRequest);
    assert_eq!(classify(SourceKind::DataCenter, "pr:comment:added"), Other);
    assert_eq!(classify(SourceKind::Cloud, "repo:push"), Push);
    assert_eq!(classify(SourceKind::Cloud, "repo:refs_changed"), Other);
    assert_eq!(
        classify(SourceKind::Cloud, "pullrequest:updated"),
        PullRequest
    );
}

#[test]
fn dc_branch_update() {
    let push = dc("dc-refs_changed-branch-update.json");
    assert_eq!(push.repository, "PA/simply_vulnerable_react");
    let actor = push.actor.as_ref().unwrap();
    assert_eq!(actor.name, "admin");
    assert_eq!(actor.keys, vec![UserKey::parse("admin").unwrap()]);
    assert_eq!(
        summary(&push),
        vec![(
            "master".into(),
            RefKind::Branch,
            Some("2f46e2fa1a1a067bd1b87e7aa16d7e0caf90d801".into())
        )]
    );
    assert_eq!(push.clone_urls.len(), 2);
}

#[test]
fn dc_branch_create_with_utf8_and_dc10_iso_timestamps() {
    let push = dc("dc-refs_changed-branch-create.json");
    assert_eq!(summary(&push)[0].0, "test_merge");
    assert!(summary(&push)[0].2.is_some());
    let push = dc("dc10-refs_changed-branch-create.json");
    assert_eq!(push.changes.len(), 1);
    assert!(push.changes[0].target.is_some());
    let push = dc("dc-refs_changed-branch-update-9x.json");
    assert_eq!(summary(&push)[0].0, "main");
}

#[test]
fn dc_deletions_have_no_target() {
    for file in [
        "dc-refs_changed-branch-delete.json",
        "dc-refs_changed-tag-delete.json",
        "dc-refs_changed-branch-delete-personal-repo.json",
    ] {
        let push = dc(file);
        assert!(push.changes.iter().all(|c| c.target.is_none()), "{file}");
    }
    let personal = dc("dc-refs_changed-branch-delete-personal-repo.json");
    assert!(
        personal.repository.starts_with("~GOPHER/") || personal.repository.starts_with("~gopher/")
    );
}

#[test]
fn dc_tags_use_the_peeled_commit() {
    let lightweight = dc("dc-refs_changed-tag-push.json");
    assert_eq!(summary(&lightweight)[0].0, "simple-tag");
    assert_eq!(summary(&lightweight)[0].1, RefKind::Tag);
    let annotated = dc("dc-refs_changed-annotated-tag-push.json");
    assert_eq!(
        summary(&annotated)[0],
        (
            "annotated-tag".into(),
            RefKind::Tag,
            Some("fb522a6f08c7c7df337312e4e65ec1b57710672e".into())
        )
    );
}

#[test]
fn dc_multiple_and_empty_changes_and_mirror() {
    let names: Vec<String> = summary(&dc("dc-refs_changed-multiple-changes.json"))
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(names, vec!["branch1", "master"]);
    assert!(dc("dc-refs_changed-empty-changes.json").changes.is_empty());
    let mirror = dc("dc-mirror-repo_synchronized.json");
    assert_eq!(summary(&mirror)[0].0, "main");
    let limited = dc("dc-mirror-repo_synchronized-ref-limit-exceeded.json");
    assert!(limited.ref_limit_exceeded && limited.changes.is_empty());
    assert_eq!(dc("dc-refs_changed-docs-example.json").changes.len(), 1);
}

#[test]
fn cloud_pushes() {
    let push = cloud("cloud-push-branch.json");
    assert_eq!(push.repository, "amuniz/test-repos");
    let actor = push.actor.as_ref().unwrap();
    assert_eq!(
        actor.keys,
        vec![
            UserKey::parse("{7d3a178a-a087-4756-b2da-2f9eadf50ba8}").unwrap(),
            UserKey::parse("557058:270a1f96-cd27-4013-ade6-85df2ab9820c").unwrap()
        ]
    );
    assert_eq!(summary(&push)[0].0, "feature/issue-819");
    assert_eq!(
        push.clone_urls[0],
        "https://bitbucket.org/amuniz/test-repos.git"
    );

    let created = cloud("cloud-push-branch-create-signed.json");
    assert!(created.changes[0].target.is_some());

    for file in [
        "cloud-push-branch-delete.json",
        "cloud-push-tag-delete.json",
    ] {
        let push = cloud(file);
        assert!(push.changes.iter().all(|c| c.target.is_none()), "{file}");
    }
    let deleted = cloud("cloud-push-branch-delete.json");
    assert_eq!(summary(&deleted)[0].0, "feature/test");

    let tag = cloud("cloud-push-tag.json");
    assert_eq!(summary(&tag)[0].1, RefKind::Tag);
    let annotated = cloud("cloud-push-annotated-tag.json");
    assert_eq!(summary(&annotated)[0].1, RefKind::Tag);

    let multi = cloud("cloud-push-multiple-changes-legacy.json");
    let kinds: Vec<RefKind> = multi.changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![RefKind::Branch, RefKind::Branch, RefKind::Tag]);
    assert_eq!(multi.actor.as_ref().unwrap().keys.len(), 1);
}

#[test]
fn bad_bodies_are_payload_errors() {
    for body in [&b""[..], b"not json", b"[]", b"{}", b"{\"repository\":{}}"] {
        assert!(parse_push(SourceKind::DataCenter, body).is_err());
        assert!(parse_push(SourceKind::Cloud, body).is_err());
    }
    let bad_hash = br#"{"repository":{"slug":"r","project":{"key":"P"}},
        "changes":[{"ref":{"id":"refs/heads/x"},"toHash":"nothex","type":"UPDATE"}]}"#;
    assert_eq!(
        parse_push(SourceKind::DataCenter, bad_hash),
        Err(PayloadError::Invalid("changes[].toHash"))
    );
}

fn pr(kind: SourceKind, event: &str, name: &str) -> PullRequest {
    parse_pull_request(kind, event, &fixture(name)).unwrap()
}

#[test]
fn pull_request_events_are_classified_and_reviews_are_not() {
    use SourceKind::{Cloud, DataCenter};
    for key in [
        "pr:opened",
        "pr:from_ref_updated",
        "pr:modified",
        "pr:merged",
        "pr:declined",
        "pr:deleted",
    ] {
        assert_eq!(classify(DataCenter, key), EventClass::PullRequest, "{key}");
        assert_eq!(classify(Cloud, key), EventClass::Other, "{key}");
    }
    for key in [
        "pullrequest:created",
        "pullrequest:updated",
        "pullrequest:fulfilled",
        "pullrequest:rejected",
    ] {
        assert_eq!(classify(Cloud, key), EventClass::PullRequest, "{key}");
    }
    // The wire key is `needs_work` (the documented `changes_requested` is never sent).
    for key in [
        "pr:reviewer:needs_work",
        "pr:reviewer:approved",
        "pr:reviewer:unapproved",
        "pr:comment:added",
        "pullrequest:approved",
        "pullrequest:comment_created",
    ] {
        assert_eq!(classify(DataCenter, key), EventClass::Other, "{key}");
        assert_eq!(classify(Cloud, key), EventClass::Other, "{key}");
    }
}

#[test]
fn data_center_pull_requests_read_their_source_target_and_state() {
    let opened = pr(SourceKind::DataCenter, "pr:opened", "dc-pr-opened.json");
    assert_eq!(opened.id, 5);
    assert_eq!(opened.repository, "~gopher/webhook-test");
    assert!(!opened.is_fork());
    assert_eq!(opened.source.full_ref, "refs/heads/feature/wip");
    assert_eq!(
        opened.source.target.as_ref().map(|s| s.as_str()),
        Some("32a0b8a740c2963c6f56bd8baf3dc05683d299e0")
    );
    assert_eq!(opened.target_branch, "master");
    assert_eq!(opened.action, PullRequestAction::Build);
    assert_eq!(opened.author, "gopher");
    assert_eq!(
        opened.actor.unwrap().keys,
        vec![UserKey::parse("gopher").unwrap()]
    );
    // Data Center 10: ISO timestamps, `draft`.
    let dc10 = pr(SourceKind::DataCenter, "pr:opened", "dc10-pr-opened.json");
    assert_eq!(
        (dc10.source.logical_name(), dc10.draft),
        ("feature/diffstat", false)
    );
    // A tag as the source.
    let tag = pr(
        SourceKind::DataCenter,
        "pr:opened",
        "dc-pr-opened-from-tag.json",
    );
    assert_eq!(tag.source.kind, RefKind::Tag);
    let merged = pr(SourceKind::DataCenter, "pr:merged", "dc-pr-merged.json");
    assert_eq!(merged.action, PullRequestAction::Ended("merged"));
    // The sanitized capture's hashes are 39 digits: refused, not guessed.
    assert_eq!(
        parse_pull_request(
            SourceKind::DataCenter,
            "pr:from_ref_updated",
            &fixture("dc-pr-from_ref_updated-sanitized.json")
        ),
        Err(PayloadError::Invalid("pullRequest.fromRef.latestCommit"))
    );
}

#[test]
fn cloud_pull_requests_keep_their_abbreviated_head() {
    let created = pr(
        SourceKind::Cloud,
        "pullrequest:created",
        "cloud-pullrequest-created.json",
    );
    assert_eq!(
        (created.id, created.repository.as_str()),
        (735, "amuniz/test-repos")
    );
    let head = created.source.target.clone().unwrap();
    assert_eq!((head.as_str(), head.is_full()), ("d31df3425c5b", false));
    assert_eq!(created.source.full_ref, "refs/heads/feature/test");
    assert_eq!(created.target_branch, "master");
    assert_eq!(
        created.url.as_deref(),
        Some("https://bitbucket.org/amuniz/test-repos/pull-requests/735")
    );
    assert!(!created.is_fork());
    let updated = pr(
        SourceKind::Cloud,
        "pullrequest:updated",
        "cloud-pullrequest-updated.json",
    );
    assert_eq!(updated.source.logical_name(), "release/release-1");
    assert_eq!(updated.author, "Former user");
    let fulfilled = pr(
        SourceKind::Cloud,
        "pullrequest:fulfilled",
        "cloud-pullrequest-fulfilled-legacy.json",
    );
    assert_eq!(fulfilled.action, PullRequestAction::Ended("merged"));
    // Another repository as the source: a fork.
    let mut value: serde_json::Value =
        serde_json::from_slice(&fixture("cloud-pullrequest-created.json")).unwrap();
    value["pullrequest"]["source"]["repository"]["full_name"] = "someone/test-repos".into();
    let fork = parse_pull_request(
        SourceKind::Cloud,
        "pullrequest:created",
        value.to_string().as_bytes(),
    )
    .unwrap();
    assert!(fork.is_fork());
    assert_eq!(fork.source_repository, "someone/test-repos");
}
