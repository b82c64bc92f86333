//! The worker on a paused clock, against a scripted in-memory TeamCity: the retry schedule,
//! `Retry-After`, the rate limit and the check for an interrupted job's build are exact.

use super::*;
use crate::config::test_support::with_servers;
use crate::ids::{BuildTypeId, SourceId, TeamCityToken};
use crate::store::jobs::ChangeJobs;
use crate::store::test_support::temp_store;
use crate::store::{DeliveryRecord, JobState, RecordOutcome};
use crate::teamcity::{BuildRequest, Comment, QueuedBuild, TeamCityError, WaitingBuild};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Clone)]
struct Scripted {
    server: crate::config::TeamCityServer,
    answers: Arc<Mutex<VecDeque<Result<QueuedBuild, TeamCityError>>>>,
    waiting: Arc<Mutex<Vec<WaitingBuild>>>,
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
    called: Arc<Notify>,
}

impl Scripted {
    fn new(retry_schedule: &str, rate: &str) -> Self {
        let config = with_servers(&format!(
            "[[teamcity]]\nid = \"main\"\nurl = \"http://127.0.0.1:1\"\nservice_token = \"svc\"\nretry_schedule_secs = {retry_schedule}\n{rate}"
        ));
        Self {
            server: config.servers[0].clone(),
            answers: Arc::default(),
            waiting: Arc::default(),
            calls: Arc::default(),
            called: Arc::default(),
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

    async fn queued_builds(
        &self,
        _: &TeamCityToken,
        _: &BuildTypeId,
    ) -> Result<Vec<WaitingBuild>, TeamCityError> {
        self.record("GET queue".into());
        Ok(self.waiting.lock().unwrap().clone())
    }
}

fn job(branch: &str) -> Job {
    crate::store::test_support::job(branch, 'a')
}

fn enqueue(store: &Store, jobs: Vec<Job>) -> Vec<Job> {
    let delivery = DeliveryRecord {
        id: "d".into(),
        source: SourceId::new("dc"),
        event: "repo:refs_changed".into(),
        result: "accepted".into(),
        jobs: 0,
        skipped: vec![],
        received_at: clock::now_ms(),
    };
    let changes: Vec<ChangeJobs> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| ChangeJobs {
            reference: job.full_ref.clone(),
            seen_key: format!("k{i}").into_bytes(),
            jobs: vec![job],
        })
        .collect();
    match store.record_push(&delivery, false, &changes).unwrap() {
        RecordOutcome::Recorded { jobs, .. } => jobs,
        RecordOutcome::Duplicate => unreachable!(),
    }
}

/// Starts the queue with one scripted server; keep the trigger and tasks alive.
fn start(
    store: &Arc<Store>,
    teamcity: &Scripted,
    jitter: fn() -> f64,
) -> (crate::shutdown::ShutdownTrigger, Queue, QueueTasks) {
    let (stop, stopping) = Shutdown::new();
    let (queue, tasks) = Queue::start(
        store.clone(),
        Arc::default(),
        std::slice::from_ref(teamcity),
        stopping,
        jitter,
    )
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
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0);
    let job = enqueue(&store, vec![job("main")]).remove(0);
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
        if store.job(job.id).unwrap().unwrap().state == JobState::Done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let done = store.job(job.id).unwrap().unwrap();
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
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 1.0);
    queue.schedule(&enqueue(&store, vec![job("main")])[0]);
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
    let (_stop, queue, _tasks) = start(&store, &teamcity, || 0.0);
    for job in enqueue(&store, (0..20).map(|i| job(&format!("b{i}"))).collect()) {
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

#[tokio::test(start_paused = true)]
async fn an_interrupted_job_already_in_teamcitys_queue_is_not_posted_again() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let teamcity = Scripted::new("[1]", "");
    let mut jobs = enqueue(&store, vec![job("main"), job("other")]);
    // Both were in flight when bb2tc died; TeamCity queued the first before the crash.
    for job in &jobs {
        store.claim_job(job.id).unwrap().unwrap();
    }
    teamcity.waiting.lock().unwrap().push(WaitingBuild {
        id: Some(77),
        branch_name: Some("main".into()),
        web_url: Some("http://tc/viewQueued.html?itemId=77".into()),
        comment: Some(Comment {
            text: Some(dispatch::comment(&jobs[0])),
        }),
        revisions: None,
    });
    let (_stop, _queue, _tasks) = start(&store, &teamcity, || 0.0);
    let calls = teamcity.wait_for_calls(3).await;
    let what: Vec<&str> = calls.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(what, vec!["GET queue", "GET queue", "POST other"]);
    for _ in 0..100 {
        if jobs
            .iter()
            .all(|j| store.job(j.id).unwrap().unwrap().state == JobState::Done)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    jobs = jobs
        .iter()
        .map(|j| store.job(j.id).unwrap().unwrap())
        .collect();
    assert_eq!(jobs[0].build_id, Some(77));
    assert!(
        jobs[0]
            .warning
            .as_deref()
            .unwrap()
            .contains("already queued")
    );
    assert_eq!((jobs[1].state, jobs[1].build_id), (JobState::Done, Some(1)));
}
