//! `POST /hooks/bitbucket/{source}`: the checks of SPEC §5.1, in their order, then the push
//! is planned and stored durably before the 202.

use super::error::ApiError;
use super::response::{Body, declared_length, json, read_body};
use crate::app::App;
use crate::bitbucket::{self, EventClass, PullRequest, PullRequestAction, signature};
use crate::clock;
use crate::config::Source;
use crate::ingest;
use crate::log_text::Escaped;
use crate::store::{DeliveryRecord, RecordOutcome};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::json;

/// Handles one delivery. `request_id` is Bitbucket's id when it sent one.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    source_id: &str,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    let source = app
        .config
        .source(source_id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown source {source_id:?}")))?;
    // The event label is the event key when bb2tc knows it, so that clients cannot
    // create label values at will.
    let event = header(request.headers(), "x-event-key")
        .filter(|key| bitbucket::classify(source.kind, key) != EventClass::Other)
        .unwrap_or("other")
        .to_owned();
    let answer = deliver(app, source, request, request_id).await;
    let result = match &answer {
        Ok((_, result)) => *result,
        Err(ApiError::InvalidSignature) => "invalid_signature",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(ApiError::Busy) => "busy",
        Err(_) => "rejected",
    };
    app.metrics.webhook(source.id.as_str(), &event, result);
    if let Err(error) = &answer {
        // The successful outcomes log their own line, with their details.
        tracing::warn!(delivery = %request_id, source = %source.id, event, result, %error, "delivery refused");
        if matches!(error, ApiError::InvalidSignature) {
            app.metrics.signature_failure(source.id.as_str());
        }
    }
    answer.map(|(response, _)| response)
}

/// The checks and the work; the answer and the result label for the metrics.
async fn deliver(
    app: &App,
    source: &Source,
    request: Request<Incoming>,
    request_id: &str,
) -> Result<(Response<Body>, &'static str), ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let (parts, body) = request.into_parts();
    let http = &app.config.http;
    // Room for the body in the shared budget, held until the answer: a declared length is
    // checked against the limit first, an undeclared one counts as the largest allowed.
    let declared = declared_length(&parts.headers, http.max_body_bytes)?;
    let _room = app
        .body_budget
        .reserve(declared.unwrap_or(http.max_body_bytes))
        .await?;
    let body = read_body(&parts.headers, body, http.max_body_bytes, http.read_timeout).await?;
    let event_key = header(&parts.headers, "x-event-key");
    if event_key == Some("diagnostics:ping") {
        tracing::info!(delivery = %request_id, source = %source.id, "ping");
        return Ok((json(StatusCode::OK, &json!({"result": "pong"})), "pong"));
    }
    if !source.secrets.is_empty() {
        let presented = parts.headers.get("x-hub-signature").map(|v| v.as_bytes());
        if let Err(e) = signature::verify(&source.secrets, presented, &body) {
            tracing::debug!(delivery = %request_id, source = %source.id, reason = %e, "signature check failed");
            return Err(ApiError::InvalidSignature);
        }
    }
    let event_key =
        event_key.ok_or_else(|| ApiError::BadRequest("missing X-Event-Key header".into()))?;
    // Bitbucket's own delivery id makes redeliveries recognisable; without one the delivery
    // cannot be de-duplicated.
    let bitbucket_id = header(&parts.headers, "x-request-id")
        .or_else(|| header(&parts.headers, "x-request-uuid"))
        .is_some();
    let mut record = DeliveryRecord {
        id: request_id.to_owned(),
        source: source.id.clone(),
        event: event_key.to_owned(),
        result: "ignored".into(),
        jobs: 0,
        skipped: Vec::new(),
        received_at: clock::now_ms(),
        user: None,
        repository: None,
    };
    let class = bitbucket::classify(source.kind, event_key);
    let (plan, repository) = match class {
        EventClass::Push => {
            let push = bitbucket::parse_push(source.kind, &body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let plan = ingest::plan(&app.config, &app.store, source, &push, request_id).await?;
            record.user = first_key(push.actor.as_ref());
            record.repository = Some(push.repository.clone());
            (plan, push.repository)
        }
        EventClass::PullRequest => {
            let mut pr = bitbucket::parse_pull_request(source.kind, event_key, &body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            complete_head_commit(app, source, &mut pr, request_id).await;
            let plan =
                ingest::plan_pull_request(&app.config, &app.store, source, &pr, request_id).await?;
            record.user = first_key(pr.actor.as_ref());
            record.repository = Some(pr.repository.clone());
            (plan, pr.repository)
        }
        _ => {
            let reason = format!("{event_key} is not an event bb2tc acts on");
            tracing::info!(delivery = %request_id, source = %source.id, event = event_key, %reason, "ignored");
            note(app, &record).await;
            let answer = json!({"result": "ignored", "reason": reason});
            return Ok((json(StatusCode::ACCEPTED, &answer), "ignored"));
        }
    };
    if let Some(jobs) = plan.too_many_jobs {
        app.metrics.delivery_too_large(source.id.as_str());
        tracing::warn!(
            delivery = %request_id, source = %source.id, event = event_key,
            repository = %Escaped(&repository), jobs,
            limit = app.config.http.max_jobs_per_delivery,
            "delivery would make more jobs than server.max_jobs_per_delivery; nothing queued"
        );
    }
    record.result = "accepted".into();
    record.skipped = plan.skipped;
    // The store syncs the write itself, on the store that took it (see `Store::record_push`).
    let (outcome, durable) = app
        .store
        .record_push(record.clone(), bitbucket_id, plan.changes)
        .await?;
    let RecordOutcome::Recorded { jobs, delivery } = outcome else {
        // The first delivery with this id may still be waiting for its fsync: "duplicate"
        // promises its jobs are stored, so it is answered only once they are durable.
        durable?;
        tracing::info!(delivery = %request_id, source = %source.id, event = event_key, "duplicate delivery");
        record.result = "duplicate".into();
        note(app, &record).await;
        let answer = json!({"result": "duplicate"});
        return Ok((json(StatusCode::OK, &answer), "duplicate"));
    };
    // The workers get the jobs from the store once it applied them (`Store::take_applied`).
    durable?;
    for job in jobs
        .iter()
        .filter(|j| j.purpose != crate::job::Purpose::ReportStatus)
    {
        app.metrics.job_enqueued(job.server.as_str());
    }
    tracing::info!(
        delivery = %request_id, source = %source.id, event = event_key, repository = %Escaped(&repository),
        jobs = delivery.jobs, skipped = delivery.skipped.len(), "accepted"
    );
    let answer = AcceptedAnswer {
        delivery: &delivery.id,
        jobs: delivery.jobs,
        result: "accepted",
        skipped: &delivery.skipped,
    };
    Ok((json(StatusCode::ACCEPTED, &answer), "accepted"))
}

/// The 202 of an accepted delivery (SPEC §4), written straight from the record; its keys
/// in the order the other answers' (`serde_json::Value`'s) have, alphabetical.
#[derive(serde::Serialize)]
struct AcceptedAnswer<'a> {
    delivery: &'a str,
    jobs: usize,
    result: &'static str,
    skipped: &'a [crate::store::Skipped],
}

/// A Cloud pull request's 12-digit head made whole through the Cloud API, with the source's
/// `status_token` (SPEC §5.4). Without the token, or when Cloud cannot answer, the jobs keep
/// the short hash: TeamCity builds the branch without pinning the commit, and the push of
/// the same commit is still recognised by the first 12 digits.
async fn complete_head_commit(app: &App, source: &Source, pr: &mut PullRequest, request_id: &str) {
    let (Some(sha), Some(token), Some(api)) =
        (&pr.source.target, &source.status_token, &source.url)
    else {
        return;
    };
    if sha.is_full() || !matches!(pr.action, PullRequestAction::Build) {
        return;
    }
    match app
        .cloud_api
        .full_commit(api, &pr.source_repository, sha, token)
        .await
    {
        Ok(full) => pr.source.target = Some(full),
        Err(e) => tracing::warn!(
            delivery = %request_id, source = %source.id, pull_request = pr.id, commit = sha.as_str(), error = %e,
            "cannot make the pull request's head commit whole; building its branch without pinning the commit"
        ),
    }
}

/// The key a delivery is listed under for its user on the token page.
fn first_key(actor: Option<&bitbucket::Actor>) -> Option<String> {
    actor.and_then(|a| a.keys.first()).map(|k| k.to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Keeps a record of a delivery that made no jobs, for the admin API; failures only logged.
async fn note(app: &App, record: &DeliveryRecord) {
    if let Err(e) = app.store.record_delivery(record.clone()).await {
        tracing::warn!(delivery = %record.id, error = %e, "could not record the delivery");
    }
}

#[cfg(test)]
mod tests {
    use crate::store::sled::group_commit::hold;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The race of the storage issue: a redelivery answered "duplicate" while the first
    /// delivery of the same id still waited for its fsync. Bitbucket then has an answer that
    /// says "stored" for jobs that a crash would lose.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_is_answered_only_once_the_first_delivery_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data");
        let text = format!(
            r#"
[storage]
path = {store:?}
[admin]
token = "admin"
[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["s"]
[[teamcity]]
id = "main"
url = "http://127.0.0.1:1"
service_token = "svc"
fallback_to_service_token = true
retry_schedule_secs = [3600]
[[route]]
repository = "*"
teamcity = "main"
build_types = ["Bt"]
"#
        );
        let config = crate::config::Config::from_toml_str(&text, &|_| None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let bridge = tokio::spawn(crate::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let body: &[u8] =
            include_bytes!("../../tests/fixtures/bitbucket/dc-refs_changed-branch-update.json");
        let signature = crate::bitbucket::signature::sign(b"s", body);
        let http = reqwest::Client::new();
        let deliver = move || {
            http.post(format!("{url}/hooks/bitbucket/dc"))
                .header("X-Event-Key", "repo:refs_changed")
                .header("X-Hub-Signature", &signature)
                .header("X-Request-Id", "the-same-delivery")
                .body(body)
                .send()
        };
        let held = hold::hold(&store);
        let first = tokio::spawn(deliver());
        // Give the first delivery time to be recorded and to wait for its fsync, then send
        // the same delivery again.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let released = Arc::new(AtomicBool::new(false));
        let second = {
            let released = released.clone();
            let request = deliver();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                (response.status().as_u16(), released.load(Ordering::SeqCst))
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        released.store(true, Ordering::SeqCst);
        drop(held);
        assert_eq!(first.await.unwrap().unwrap().status(), 202);
        let (status, after_release) = second.await.unwrap();
        assert_eq!(status, 200, "duplicate");
        assert!(
            after_release,
            "answered before the first delivery was durable"
        );
        let _ = stop.send(());
        bridge.await.unwrap().unwrap();
    }
}
