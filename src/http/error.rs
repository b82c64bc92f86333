//! The HTTP layer's error type: every failure an endpoint can answer with, and the one place
//! that decides each one's status code.

use super::response::{Body, json};
use hyper::{Response, StatusCode};

/// An error answered as `{"error": "<message>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown path, source, token or job.
    #[error("{0}")]
    NotFound(String),
    /// Known path, other method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Request line and headers over 64 KiB.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// Body over `max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// The client took longer than `read_timeout_secs` to send the request.
    #[error("request not received in time")]
    RequestTimeout,
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Webhook signature missing, malformed or wrong.
    #[error("invalid signature")]
    InvalidSignature,
    /// Missing or wrong admin token.
    #[error("missing or invalid admin token")]
    Unauthorized,
    /// Well-formed but not acceptable (unknown server, token rejected by TeamCity).
    #[error("{0}")]
    Unprocessable(String),
    /// The request does not fit the resource's state (e.g. retrying a job that is not dead).
    #[error("{0}")]
    Conflict(String),
    /// TeamCity could not be reached to check something.
    #[error("{0}")]
    BadGateway(String),
    /// The store cannot take the write; the sender should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The memory for request bodies is taken by other requests; retry in a moment.
    #[error("too many requests are being received at once; retry shortly")]
    Busy,
    /// A bug or an unexpected failure; details are logged, not answered.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status code for each error — decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidSignature | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<Body> {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut response = json(
            self.status(),
            &serde_json::json!({ "error": self.to_string() }),
        );
        if matches!(self, ApiError::Busy) {
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// The detail (paths, the OS's words) goes to the log, not to the client.
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::Unavailable("bb2tc's store cannot take the request right now; retry later".into())
    }
}
