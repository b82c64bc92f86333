//! Sends each request to its endpoint, answers errors as JSON, and stamps `X-Request-Id`.

use super::error::ApiError;
use super::response::Body;
use super::{admin_jobs, admin_tokens, health, webhook};
use crate::app::App;
use crate::web;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use std::net::IpAddr;
use tracing::Instrument;

/// Where Bitbucket's deliveries arrive (`/hooks/bitbucket/{source}`).
const WEBHOOK_PREFIX: &str = "/hooks/";

/// Longest request id taken from a client; longer or odd ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Handles one request.
pub async fn handle(app: &App, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let request_id = request_id(&request);
    // A webhook's lines name their delivery (its request id) themselves, `delivery = …`: a
    // span per delivery — its fields formatted, entered and left at every poll — was about
    // 5 % of bb2tc's CPU per delivery under load (BENCHMARKS.md, issue 12). Every other
    // request runs in one.
    let answer = if request.uri().path().starts_with(WEBHOOK_PREFIX) {
        route(app, request, peer, &request_id).await
    } else {
        let span = tracing::info_span!(
            "request",
            id = %request_id,
            method = %request.method(),
            path = %request.uri().path(),
        );
        route(app, request, peer, &request_id)
            .instrument(span)
            .await
    };
    let mut response = answer.unwrap_or_else(ApiError::into_response);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn route(
    app: &App,
    request: Request<Incoming>,
    peer: IpAddr,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    // hyper stops reading a head at its buffer size, but a head that arrives in one read
    // can be parsed a little past it: the documented limit is checked here, exactly.
    let head_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if head_bytes > super::server::MAX_HEAD_BYTES {
        return Err(ApiError::HeadersTooLarge(super::server::MAX_HEAD_BYTES));
    }
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["hooks", "bitbucket", source] => webhook::handle(app, request, source, request_id).await,
        ["healthz"] => only_get(&request).map(|()| health::live(app)),
        ["readyz"] => {
            only_get(&request)?;
            Ok(health::ready(app).await)
        }
        ["metrics"] => {
            only_get(&request)?;
            health::metrics(app)
        }
        ["api", "v1", rest @ ..] => {
            authorize(app, &request)?;
            match rest {
                ["tokens", rest @ ..] => admin_tokens::handle(app, request, rest).await,
                ["jobs", rest @ ..] => {
                    admin_jobs::jobs(app, request.method(), request.uri().query(), rest).await
                }
                ["deliveries"] => {
                    admin_jobs::deliveries(app, request.method(), request.uri().query()).await
                }
                _ => Err(ApiError::NotFound(format!("no such path {path}"))),
            }
        }
        page if web::is_page_path(page) => Ok(web::handle(app, request, peer, page).await),
        _ => Err(ApiError::NotFound(format!("no such path {path}"))),
    }
}

fn only_get(request: &Request<Incoming>) -> Result<(), ApiError> {
    match *request.method() {
        Method::GET | Method::HEAD => Ok(()),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `Authorization: Bearer <admin token>`.
fn authorize(app: &App, request: &Request<Incoming>) -> Result<(), ApiError> {
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if app.is_admin_token(token) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Bitbucket's own id (`X-Request-Id` from Data Center, `X-Request-UUID` from Cloud) when it
/// is a sane header value, else a fresh one.
fn request_id(request: &Request<Incoming>) -> String {
    ["x-request-id", "x-request-uuid"]
        .iter()
        .filter_map(|name| request.headers().get(*name))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("bb2tc-{}", hex::encode(rand::random::<[u8; 12]>())))
}
