//! `/api/v1/jobs` and `/api/v1/deliveries`: inspect, requeue and remove jobs, and see what
//! became of recent deliveries (SPEC §8).

use super::error::ApiError;
use super::response::{Body, empty, json};
use crate::app::App;
use crate::store::{JobState, Unchanged};
use hyper::{Method, Response, StatusCode};
use serde_json::json;

/// Default and largest `limit`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// Routes `/api/v1/jobs[/{id}[/retry]]`; `rest` is the path after `/api/v1/jobs`.
pub async fn jobs(
    app: &App,
    method: &Method,
    query: Option<&str>,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => list(app, query).await,
        (&Method::POST, [id, "retry"]) => retry(app, parse_id(id)?).await,
        (&Method::DELETE, [id]) => remove(app, parse_id(id)?).await,
        (_, [] | [_] | [_, "retry"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound("no such path".into())),
    }
}

/// `GET /api/v1/deliveries[?limit=]`.
pub async fn deliveries(
    app: &App,
    method: &Method,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "limit" => limit = parse_limit(&value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let deliveries = app.store.list_deliveries(limit).await?;
    Ok(json(StatusCode::OK, &json!({ "deliveries": deliveries })))
}

async fn list(app: &App, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut state = None;
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "state" => {
                state = Some(JobState::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "state {value:?} must be pending, inflight, dead or done"
                    ))
                })?)
            }
            "limit" => limit = parse_limit(&value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let jobs: Vec<serde_json::Value> = app
        .store
        .list_jobs(state, limit)
        .await?
        .iter()
        .map(|j| j.to_api())
        .collect();
    Ok(json(StatusCode::OK, &json!({ "jobs": jobs })))
}

async fn retry(app: &App, id: u64) -> Result<Response<Body>, ApiError> {
    match app.store.revive_job(id, crate::clock::now_ms()).await? {
        Err(Unchanged::Gone) => Err(ApiError::NotFound(format!("no job {id}"))),
        Err(Unchanged::InState(state)) => Err(ApiError::Conflict(format!(
            "job {id} is {}; only dead jobs can be retried",
            state.as_str()
        ))),
        Err(Unchanged::NotDue { .. }) => Err(ApiError::Conflict(format!(
            "job {id} is pending; only dead jobs can be retried"
        ))),
        Ok(job) => {
            // Pending in the store either way: schedule it even if the sync failed.
            let durable = app.store.commit().await;
            app.queue.schedule(&job);
            durable?;
            tracing::info!(job = id, server = %job.server, "dead job requeued by an admin");
            Ok(json(StatusCode::ACCEPTED, &job.to_api()))
        }
    }
}

async fn remove(app: &App, id: u64) -> Result<Response<Body>, ApiError> {
    if app.store.remove_job(id).await? {
        app.store.commit().await?;
        tracing::info!(job = id, "job removed by an admin");
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::NotFound(format!("no job {id}")))
    }
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::NotFound(format!("no job {text:?}")))
}

fn parse_limit(text: &str) -> Result<usize, ApiError> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}
