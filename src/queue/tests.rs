//! The worker on a paused clock, against a scripted in-memory TeamCity: the retry schedule,
//! `Retry-After`, the rate limit and the check for an interrupted job's build are exact.

use super::*;
use crate::config::test_support::with_servers;
use crate::ids::{BuildTypeId, SourceId, TeamCityToken};
use crate::store::jobs::ChangeJobs;
use crate::store::test_support::temp_store;
use crate::store::{JobState, RecordOutcome};
use crate::teamcity::{BuildRequest, Comment, FoundBuild, QueuedBuild, TeamCityError};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Clone)]
struct Scripted {
    server: crate::config::TeamCityServer,
    answers: Arc<Mutex<VecDeque<Result<QueuedBuild, TeamCityError>>>>,
    builds: Arc<Mutex<Vec<FoundBuild>>>,
    /// Build-queue calls panic while set (a bug inside the call).
    panics: Arc<std::sync::atomic::AtomicBool>,
    /// While set, each build-queue call waits for a permit of `release` before answering.
    gated: Arc<std::sync::atomic::AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
    called: Arc<Notify>,
    /// Builds asked about (following), apart from `calls`.
    follows: Arc<Mutex<Vec<(Instant, u64)>>>,
    /// What following a build answers next (default: still queued).
    observations: Arc<Mutex<VecDeque<Result<crate::job::follow::Observation, TeamCityError>>>>,
}

impl Scripted {
    fn new(retry_schedule: &str, rate: &str) -> Self {
        let config = with_servers(&format!(
            "[[teamcity]]\nid = \"main\"\nurl = \"http://127.0.0.1:1\"\nservice_token = \"svc\"\nretry_schedule_secs = {retry_schedule}\n{rate}"
        ));
        Self {
            server: config.servers[0].clone(),
            answers: Arc::default(),
            builds: Arc::default(),
            panics: Arc::default(),
            gated: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            calls: Arc::default(),
            called: Arc::default(),
            observations: Arc::default(),
            follows: Arc::default(),
        }
    }

    fn answer(&self, answer: Result<QueuedBuild, TeamCityError>) {
        self.answers.lock().unwrap().push_back(answer);
    }

    fn record(&self, what: String) {
        self.calls.lock().unwrap().push((Instant::now(), what));
        self.called.notify_waiters();
    }

    async fn wait_for_calls(&self, n: usize) -> Vec<(Instant, String)> {
        loop {
            let notified = self.called.notified();
            let calls = self.calls.lock().unwrap().clone();
            if calls.len() >= n {
                return calls;
            }
            notified.await;
        }
    }
}

impl Trigger for Scripted {
    fn server(&self) -> &crate::config::TeamCityServer {
        &self.server
    }

    async fn queue_build(
        &self,
        _: &TeamCityToken,
        request: &BuildRequest<'_>,
    ) -> Result<QueuedBuild, TeamCityError> {
        self.record(format!("POST {}", request.branch));
        if self.gated.load(std::sync::atomic::Ordering::SeqCst) {
            self.release.acquire().await.unwrap().forget();
        }
        if self.panics.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug inside the TeamCity call");
        }
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(QueuedBuild {
                id: Some(1),
                web_url: None,
                branch_name: Some(request.branch.to_owned()),
            }))
    }

    async fn notify_commit_hook(
        &self,
        _: &TeamCityToken,
        _: &[String],
    ) -> Result<bool, TeamCityError> {
        self.record("HOOK".into());
        Ok(true)
    }

    async fn recent_builds(
        &self,
        _: &TeamCityToken,
        _: &BuildTypeId,
        branch: &str,
    ) -> Result<Vec<FoundBuild>, TeamCityError> {
        self.record(format!("GET builds {branch}"));
        Ok(self.builds.lock().unwrap().clone())
    }

    async fn follow_build(
        &self,
        _: &TeamCityToken,
        build_id: u64,
    ) -> Result<crate::job::follow::Observation, TeamCityError> {
        self.follows
            .lock()
            .unwrap()
            .push((Instant::now(), build_id));
        self.observations
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| {
                Ok(crate::job::follow::Observation {
                    state: "queued".into(),
                    ..Default::default()
                })
            })
    }

    async fn build_state(&self, _: &TeamCityToken, build_id: u64) -> Result<String, TeamCityError> {
        self.record(format!("GET state {build_id}"));
        Ok("queued".into())
    }

    async fn cancel_queued(
        &self,
        _: &TeamCityToken,
        build_id: u64,
        _: &str,
    ) -> Result<(), TeamCityError> {
        self.record(format!("CANCEL {build_id}"));
        Ok(())
    }
}

fn job(branch: &str) -> Job {
    crate::store::test_support::job(branch, 'a')
}

async fn enqueue(store: &Store, jobs: Vec<Job>) -> Vec<Job> {
    let delivery = crate::store::test_support::delivery("d");
    let changes: Vec<ChangeJobs> = jobs
        .into_iter()
        .map(|job| ChangeJobs {
            reference: job.full_ref.clone(),
            legacy_mark: None,
            deduplicate: true,
            jobs: vec![job],
        })
        .collect();
    let (outcome, durable) = store.record_push(delivery, false, changes).await.unwrap();
    durable.unwrap();
    store.wait_applied().await;
    match outcome {
        RecordOutcome::Recorded { jobs, .. } => jobs,
        RecordOutcome::Duplicate => unreachable!(),
    }
}

/// Starts the queue with one scripted server; keep the trigger and tasks alive.
async fn start(
    store: &Arc<Store>,
    teamcity: &Scripted,
    jitter: fn() -> f64,
) -> (crate::shutdown::ShutdownTrigger, Queue, QueueTasks) {
    let (stop, stopping) = Shutdown::new();
    let (queue, tasks) = Queue::start(
        store.clone(),
        Arc::default(),
        std::slice::from_ref(teamcity),
        Vec::new(),
        stopping,
        jitter,
    )
    .await
    .unwrap();
    (stop, queue, tasks)
}

fn unavailable(retry_after: Option<u64>) -> Result<QueuedBuild, TeamCityError> {
    Err(TeamCityError::Unavailable {
        status: 503,
        text: "starting".into(),
        retry_after: retry_after.map(Duration::from_secs),
    })
}

fn gaps(calls: &[(Instant, String)]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[tokio::test(start_paused = true)]
async fn three_503s_then_200_follow_the_schedule_exactly() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1, 5, 30, 120]", "");
    for _ in 0..3 {
        teamcity.answer(unavailable(None));
    }
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let job = enqueue(&store, vec![job("main")]).await.remove(0);
    queue.schedule(&job);
    let calls = teamcity.wait_for_calls(4).await;
    assert_eq!(
        gaps(&calls),
        vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30)
        ]
    );
    // Let the worker record the success.
    for _ in 0..100 {
        if store.job(job.id).await.unwrap().unwrap().state == JobState::Done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let done = store.job(job.id).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Done, 4));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(teamcity.calls.lock().unwrap().len(), 4, "exactly one build");
}

#[tokio::test(start_paused = true)]
async fn retry_after_and_jitter_stretch_the_wait_within_bounds() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[10, 10]", "");
    teamcity.answer(unavailable(Some(15)));
    teamcity.answer(unavailable(Some(3600)));
    // Jitter +1 would be +20 %: 12 s.
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 1.0).await;
    queue.schedule(&enqueue(&store, vec![job("main")]).await[0]);
    let calls = teamcity.wait_for_calls(3).await;
    // 15 s asked > 12 s jittered; 3600 s asked is capped at twice the step.
    assert_eq!(
        gaps(&calls),
        vec![Duration::from_secs(15), Duration::from_secs(20)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_spaces_calls() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "rate_per_second = 4.0\nburst = 2");
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    for job in enqueue(&store, (0..20).map(|i| job(&format!("b{i}"))).collect()).await {
        queue.schedule(&job);
    }
    let calls = teamcity.wait_for_calls(20).await;
    // The bucket's promise: at most burst + rate × T calls in any window of T seconds.
    // (Calls may come later than the ideal schedule — the paused clock runs ahead while the
    // in-flight mark is synced on a real thread — but never earlier.)
    let start = calls[0].0;
    let t: Vec<f64> = calls
        .iter()
        .map(|(at, _)| (*at - start).as_secs_f64())
        .collect();
    for i in 0..t.len() {
        for j in i..t.len() {
            let allowed = 2.0 + 4.0 * (t[j] - t[i]);
            assert!(
                (j - i + 1) as f64 <= allowed + 1e-9,
                "calls {i}..={j} at {t:?}"
            );
        }
    }
    assert!(
        t[19] >= 4.5 - 1e-9,
        "18 calls after the burst take 4.5 s at 4/s: {t:?}"
    );
}

async fn wait_until_state(store: &Store, id: u64, state: JobState) -> Job {
    // Up to 60 s of the paused clock: past the 5 s back-off after a store error.
    for _ in 0..3000 {
        if let Some(job) = store.job(id).await.unwrap()
            && job.state == state
        {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "job {id} never became {state:?}: {:?}",
        store.job(id).await.unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_job_whose_build_already_started_is_not_posted_again() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    let jobs = enqueue(&store, vec![job("main"), job("other")]).await;
    // Both were in flight when bb2tc died; TeamCity got the first call, and its agent
    // took the build out of the queue at once: only /app/rest/builds still shows it.
    for job in &jobs {
        store.claim_job(job.id).await.unwrap().unwrap();
    }
    teamcity.builds.lock().unwrap().push(FoundBuild {
        id: Some(77),
        state: Some("running".into()),
        branch_name: Some("main".into()),
        web_url: Some("http://tc/viewLog.html?buildId=77".into()),
        comment: Some(Comment {
            text: Some(dispatch::comment(&jobs[0], store.id())),
        }),
    });
    let (_stop, _queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let calls = teamcity.wait_for_calls(3).await;
    let mut what: Vec<&str> = calls.iter().map(|(_, w)| w.as_str()).collect();
    what.sort();
    assert_eq!(
        what,
        vec!["GET builds main", "GET builds other", "POST other"]
    );
    let first = wait_until_state(&store, jobs[0].id, JobState::Done).await;
    assert_eq!(first.build_id, Some(77));
    assert!(
        first
            .warning
            .as_deref()
            .unwrap()
            .contains("found in TeamCity")
    );
    let second = wait_until_state(&store, jobs[1].id, JobState::Done).await;
    assert_eq!(second.build_id, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_build_of_another_job_or_installation_is_not_taken_for_this_one() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    let jobs = enqueue(&store, vec![job("main")]).await;
    store.claim_job(jobs[0].id).await.unwrap().unwrap();
    // Same push text, but the mark of another store (another bb2tc on this TeamCity).
    let mut other = jobs[0].clone();
    other.id += 1;
    for text in [
        dispatch::comment(&jobs[0], "0000beef"),
        dispatch::comment(&other, store.id()),
    ] {
        teamcity.builds.lock().unwrap().push(FoundBuild {
            id: Some(5),
            state: Some("finished".into()),
            branch_name: Some("main".into()),
            web_url: None,
            comment: Some(Comment { text: Some(text) }),
        });
    }
    let (_stop, _queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    teamcity.wait_for_calls(2).await;
    let done = wait_until_state(&store, jobs[0].id, JobState::Done).await;
    assert_eq!(
        done.build_id,
        Some(1),
        "posted: none of the builds was its own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_inside_the_call_does_not_strand_the_job() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    teamcity
        .panics
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let job = enqueue(&store, vec![job("main")]).await.remove(0);
    queue.schedule(&job);
    teamcity.wait_for_calls(1).await;
    // Before, the job stayed in flight until a restart. Now it is pending again, flagged
    // so that TeamCity is asked first, and tried again.
    let pending = wait_until_state(&store, job.id, JobState::Pending).await;
    assert!(pending.interrupted);
    teamcity
        .panics
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let calls = teamcity.wait_for_calls(3).await;
    let what: Vec<&str> = calls.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(what, vec!["POST main", "GET builds main", "POST main"]);
    wait_until_state(&store, job.id, JobState::Done).await;
}

#[tokio::test(start_paused = true)]
async fn a_superseded_job_whose_call_fails_is_not_built_after_the_newer_one() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    teamcity.answer(unavailable(None));
    teamcity
        .gated
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let mut older = job("main");
    older.sha = crate::ids::Sha::parse(&"1".repeat(40)).unwrap();
    let older = enqueue(&store, vec![older]).await.remove(0);
    queue.schedule(&older);
    teamcity.wait_for_calls(1).await;
    // While the older call is under way (it will fail with 503), a newer push comes in.
    let mut newer = job("main");
    newer.sha = crate::ids::Sha::parse(&"2".repeat(40)).unwrap();
    let newer = enqueue(&store, vec![newer]).await.remove(0);
    teamcity
        .gated
        .store(false, std::sync::atomic::Ordering::SeqCst);
    teamcity.release.add_permits(1);
    queue.schedule(&newer);
    let calls = teamcity.wait_for_calls(2).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(teamcity.calls.lock().unwrap().len(), 2, "{calls:?}");
    assert!(
        store.job(older.id).await.unwrap().is_none(),
        "dropped, not retried"
    );
    wait_until_state(&store, newer.id, JobState::Done).await;
}

#[tokio::test(start_paused = true)]
async fn no_call_without_a_durable_in_flight_mark() {
    let (dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let job = enqueue(&store, vec![job("main")]).await.remove(0);
    // The disk is full: the in-flight mark cannot be made durable. Before, the call was made
    // anyway (a crash after it would then not know it happened); now the job goes back.
    let failing = crate::store::sled::group_commit::hold::fail(&dir.path().join("data"));
    queue.schedule(&job);
    let pending = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = store.job(job.id).await.unwrap().unwrap();
        if now.state == JobState::Pending && now.attempts == 0 {
            break now;
        }
    };
    assert!(
        teamcity.calls.lock().unwrap().is_empty(),
        "no call was made"
    );
    assert!(!pending.interrupted);
    // Space is freed: the job is tried again and sent once.
    drop(failing);
    teamcity.wait_for_calls(1).await;
    wait_until_state(&store, job.id, JobState::Done).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(teamcity.calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_of_the_result_is_retried_not_left_in_flight() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let job = enqueue(&store, vec![job("main")]).await.remove(0);
    // The call succeeds, but recording that fails twice (a full disk, say). Before, the
    // error was only logged and the job stayed in flight until a restart.
    store.fail_next("finish_job", 2);
    queue.schedule(&job);
    let done = wait_until_state(&store, job.id, JobState::Done).await;
    assert_eq!(done.build_id, Some(1));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(teamcity.calls.lock().unwrap().len(), 1, "sent once");
}

#[tokio::test(start_paused = true)]
async fn a_store_error_reading_the_token_retries_the_job() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1, 1]", "");
    let (token, _) = store
        .upsert_token(crate::store::NewToken {
            source: SourceId::new("dc"),
            user: "jdoe".into(),
            server: crate::ids::ServerId::new("main"),
            teamcity: "http://127.0.0.1:1".into(),
            token: TeamCityToken::new("tc-jdoe"),
            status: crate::store::TokenStatus::Valid,
            teamcity_user: None,
        })
        .await
        .unwrap();
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let mut with_token = job("main");
    with_token.token = crate::store::TokenRef::User(token.id);
    let job = enqueue(&store, vec![with_token]).await.remove(0);
    // Before, a store error here killed the job ("cannot read the token").
    store.fail_next("token_secret", 1);
    queue.schedule(&job);
    let done = wait_until_state(&store, job.id, JobState::Done).await;
    assert_eq!(
        done.attempts, 2,
        "the first attempt could not read the token"
    );
    assert_eq!(teamcity.calls.lock().unwrap().len(), 1);
}

fn observed(
    state: &str,
    status: Option<&str>,
) -> Result<crate::job::follow::Observation, TeamCityError> {
    Ok(crate::job::follow::Observation {
        state: state.into(),
        status: status.map(str::to_owned),
        status_text: status.map(|_| "Tests passed: 3".to_owned()),
        number: Some("7".into()),
        ..Default::default()
    })
}

async fn wait_until_done(store: &Store, id: u64) -> Job {
    for _ in 0..1000 {
        if let Some(job) = store.job(id).await.unwrap()
            && job.state == JobState::Done
        {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("job {id} not done");
}

#[tokio::test(start_paused = true)]
async fn a_queued_build_is_followed_every_five_to_ten_seconds_until_it_finishes() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    teamcity.observations.lock().unwrap().extend([
        observed("running", None),
        observed("finished", Some("SUCCESS")),
    ]);
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let job = enqueue(&store, vec![job("main")]).await.remove(0);
    queue.schedule(&job);
    let done = wait_until_done(&store, job.id).await;
    assert_eq!(done.build.as_ref().unwrap().state, "queued");
    let called = teamcity.calls.lock().unwrap()[0].0;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let follows = teamcity.follows.lock().unwrap().clone();
    assert_eq!(
        follows.len(),
        2,
        "asked until it finished, then no more: {follows:?}"
    );
    let first = follows[0].0 - called;
    let second = follows[1].0 - follows[0].0;
    for gap in [first, second] {
        assert!(
            (Duration::from_secs(5)..=Duration::from_secs(10)).contains(&gap),
            "{gap:?}"
        );
    }
    let kept = store.job(job.id).await.unwrap().unwrap();
    let build = kept.build.unwrap();
    assert_eq!(
        (
            build.state.as_str(),
            build.status.as_deref(),
            build.number.as_deref()
        ),
        ("finished", Some("SUCCESS"), Some("7"))
    );
    assert_eq!(
        (build.next_poll_at, build.result()),
        (None, Some("success"))
    );
    assert_eq!(build.status_text.as_deref(), Some("Tests passed: 3"));
}

#[tokio::test(start_paused = true)]
async fn polls_never_slow_a_backlog_of_triggers() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    // A build being followed, its first poll due in 5–10 s, and a backlog of 20 s of
    // triggers, all there when the queue starts.
    let followed = enqueue(&store, vec![job("followed")]).await.remove(0);
    let claimed = store.claim_job(followed.id).await.unwrap().unwrap();
    store.persist_claim(&claimed).await.unwrap();
    let done = crate::store::Finish::Done {
        build_id: Some(9),
        web_url: None,
        warning: None,
    };
    let kept = store
        .finish_job(followed.id, done, crate::clock::now_ms())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(kept.build.unwrap().next_poll_at.is_some());
    enqueue(&store, (0..20).map(|i| job(&format!("b{i}"))).collect()).await;
    let teamcity = Scripted::new("[1]", "rate_per_second = 1.0\nburst = 1");
    let (_stop, _queue, _tasks) = start(&store, &teamcity, || 0.0).await;
    let calls = teamcity.wait_for_calls(20).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let follows = teamcity.follows.lock().unwrap().clone();
    assert!(!follows.is_empty());
    // The poll was due long before, and waited until no trigger was due.
    assert!(
        follows[0].0 > calls[19].0,
        "a poll at {:?} before the last trigger at {:?}: {:?}",
        follows[0].0 - calls[0].0,
        calls[19].0 - calls[0].0,
        calls
            .iter()
            .map(|(at, what)| (*at - calls[0].0, what.clone()))
            .collect::<Vec<_>>()
    );
}
