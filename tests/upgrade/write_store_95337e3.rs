//! Writes a store that `tests/it/upgrade.rs` opens: what bb2tc at commit 95337e3 (the last
//! release of store format 5: every job in `jobs` or `finished_jobs`, each with its entry
//! in `latest_jobs`) keeps after a little use — the same contents as
//! `write_store_08992d1.rs`. The process ends without closing the store, as a `kill -9`
//! would, so the intake log still holds its entries and the next start replays them. Built
//! and run against that commit by `tests/upgrade/regenerate.sh 95337e3`; it is not part of
//! this crate's build.
//!
//! Contents (source `dc`, server `main`, master key `MASTER_KEY` of the tests):
//! - tokens: `tc-jdoe` for jdoe (valid, TeamCity user jdoe), `tc-asmith` for asmith (unverified)
//! - a token-page session for jdoe; the store keeps only its hash, so the cookie value is
//!   written to `session.txt` beside the store
//! - delivery `old-delivery-1`: pending jobs for refs/heads/pending-a and pending-b
//! - delivery `old-delivery-2`: a job for refs/heads/interrupted left in flight
//! - delivery `old-delivery-3`: a job for refs/heads/dead, dead after a 404
//! - delivery `old-delivery-4`: a job for refs/heads/finished, done (TeamCity build 7),
//!   its build no longer followed (TeamCity said it is gone)
//! - delivery `old-delivery-5`: a job for refs/heads/followed, done (TeamCity build 8), its
//!   build still followed
//! - the de-duplication marks of those builds

use bb2tc::config::{ReportStatus, StorageSettings, TriggerMode};
use bb2tc::job::Purpose;
use bb2tc::job::follow::Seen;
use bb2tc::ids::{BuildTypeId, Secret, ServerId, Sha, SourceId, TeamCityToken, UserKey};
use bb2tc::store::jobs::ChangeJobs;
use bb2tc::store::tokens::NewToken;
use bb2tc::store::{
    DeliveryRecord, Finish, Job, JobState, Principal, RecordOutcome, Store, TokenRef, TokenStatus,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[tokio::main]
async fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("output directory"));
    let settings = StorageSettings {
        path: out.join("data"),
        master_key: Some(Secret::new(MASTER_KEY.to_owned())),
        intake_segment_bytes: bb2tc::config::DEFAULT_INTAKE_SEGMENT_BYTES,
        postgres: None,
    };
    let store = Store::open(&settings).unwrap();
    let (dc, main) = (SourceId::new("dc"), ServerId::new("main"));
    let (jdoe, _) = store
        .upsert_token(NewToken {
            source: dc.clone(),
            user: "jdoe".into(),
            server: main.clone(),
            teamcity: "http://127.0.0.1:1".into(),
            token: TeamCityToken::new("tc-jdoe"),
            status: TokenStatus::Valid,
            teamcity_user: Some("jdoe".into()),
        })
        .await
        .unwrap();
    store
        .upsert_token(NewToken {
            source: dc.clone(),
            user: "asmith".into(),
            server: main.clone(),
            teamcity: "http://127.0.0.1:1".into(),
            token: TeamCityToken::new("tc-asmith"),
            status: TokenStatus::Unverified,
            teamcity_user: None,
        })
        .await
        .unwrap();
    let (session, _) = store
        .create_session(
            Principal::User {
                source: dc.clone(),
                user: UserKey::parse("jdoe").unwrap(),
                aliases: vec![],
                display_name: "Jane Doe".into(),
            },
            // A century: the upgrade test must find it alive.
            100 * 365 * 24 * 3600 * 1000,
        )
        .await
        .unwrap();
    std::fs::write(out.join("session.txt"), &session).unwrap();

    let token = TokenRef::User(jdoe.id.clone());
    let mut recorded = Vec::new();
    for (delivery, branches) in [
        ("old-delivery-1", vec![("pending-a", 'a'), ("pending-b", 'b')]),
        ("old-delivery-2", vec![("interrupted", 'c')]),
        ("old-delivery-3", vec![("dead", 'd')]),
        ("old-delivery-4", vec![("finished", 'e')]),
        ("old-delivery-5", vec![("followed", 'f')]),
    ] {
        let received_at = now_ms();
        let changes: Vec<ChangeJobs> = branches
            .iter()
            .map(|(branch, digit)| {
                let sha = digit.to_string().repeat(40);
                ChangeJobs {
                    reference: format!("refs/heads/{branch}"),
                    legacy_mark: None,
                    jobs: vec![job(delivery, branch, &sha, &token, received_at)],
                    deduplicate: true,
                }
            })
            .collect();
        let record = DeliveryRecord {
            id: delivery.into(),
            source: SourceId::new("dc"),
            event: "repo:refs_changed".into(),
            result: "accepted".into(),
            jobs: 0,
            skipped: vec![],
            received_at,
            user: Some("jdoe".into()),
            repository: Some("PROJ/repo".into()),
        };
        let (outcome, durable) = store.record_push(record, true, changes).await.unwrap();
        durable.unwrap();
        match outcome {
            RecordOutcome::Recorded { jobs, .. } => recorded.push(jobs),
            RecordOutcome::Duplicate => panic!("duplicate"),
        }
    }
    let (interrupted, dead) = (&recorded[1], &recorded[2]);
    let (finished, followed) = (&recorded[3], &recorded[4]);
    // Jobs reach sled shortly after their 202: wait for them before claiming.
    for id in [interrupted[0].id, dead[0].id, finished[0].id, followed[0].id] {
        while store.job(id).await.unwrap().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let claimed = store.claim_job(interrupted[0].id).await.unwrap().unwrap();
    store.persist_claim(&claimed).await.unwrap();
    let claimed = store.claim_job(dead[0].id).await.unwrap().unwrap();
    store.persist_claim(&claimed).await.unwrap();
    store
        .finish_job(
            dead[0].id,
            Finish::Dead {
                error: "TeamCity answered 404: No build type nor template is found by id 'Proj_Build'"
                    .into(),
            },
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    for (done, build_id) in [(finished, 7), (followed, 8)] {
        let claimed = store.claim_job(done[0].id).await.unwrap().unwrap();
        store.persist_claim(&claimed).await.unwrap();
        store
            .finish_job(
                done[0].id,
                Finish::Done {
                    build_id: Some(build_id),
                    web_url: Some(format!(
                        "http://127.0.0.1:1/viewQueued.html?itemId={build_id}"
                    )),
                    warning: None,
                },
                now_ms(),
            )
            .await
            .unwrap()
            .unwrap();
    }
    let gone = store
        .observe_build(
            finished[0].id,
            Seen::Gone("TeamCity answered 404: no build with id 7".into()),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(gone.build.unwrap().next_poll_at.is_none());
    store.commit().await.unwrap();
    // No orderly close: the intake log stays as a crash leaves it.
    std::process::exit(0);
}

fn job(delivery: &str, branch: &str, sha: &str, token: &TokenRef, now: u64) -> Job {
    Job {
        id: 0,
        state: JobState::Pending,
        source: SourceId::new("dc"),
        delivery: delivery.into(),
        server: ServerId::new("main"),
        mode: TriggerMode::Build,
        build_type: Some(BuildTypeId::new("Proj_Build")),
        repository: "PROJ/repo".into(),
        full_ref: format!("refs/heads/{branch}"),
        branch: branch.into(),
        sha: Sha::parse(sha).unwrap(),
        user: "jdoe".into(),
        token: token.clone(),
        properties: BTreeMap::new(),
        vcs_root_id: None,
        clone_urls: vec![],
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
        last_error: None,
        interrupted: false,
        build_id: None,
        web_url: None,
        warning: None,
        finished_at: None,
        pull_request: None,
        cancel_superseded: false,
        supersedes: vec![],
        purpose: Purpose::Build,
        build: None,
        report_status: ReportStatus::Off,
        status: None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
