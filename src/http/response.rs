//! Building answers and reading request bodies within the limits of `[server]`.

use super::error::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use std::time::Duration;

/// Every answer's body type.
pub type Body = Full<Bytes>;

/// A JSON answer. Written with `serde_json::to_vec`: formatting a `Value` through
/// `Display` took twice as long, about 1 % of bb2tc's CPU per delivery (BENCHMARKS.md).
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        // Only a map with keys that are not strings fails; no answer of bb2tc's has one.
        Err(e) => {
            tracing::error!(error = %e, "cannot write an answer as JSON");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":"internal error: the answer could not be written as JSON"}"#.to_vec(),
            )
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An empty answer (204).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The body length the client declared (`Content-Length`), or 413 when it is over `limit`.
pub fn declared_length(headers: &hyper::HeaderMap, limit: u64) -> Result<Option<u64>, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(declared)
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A declared
/// `Content-Length` over the limit is refused before reading; an undeclared one is cut off
/// as soon as it passes the limit, so nothing beyond it is buffered.
pub async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    declared_length(headers, limit)?;
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}
