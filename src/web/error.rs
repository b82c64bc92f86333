//! The token page's error type and the one place that decides each failure's status.
//! Failures are answered as HTML pages (browsers read them), not as JSON.

use super::html;
use super::respond;
use crate::http::response::Body;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

/// A failure on a page path.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// No session: the browser is sent to the sign-in page.
    #[error("sign-in required")]
    SignInRequired,
    /// A form without the right CSRF value, or an action the principal may not take.
    #[error("{0}")]
    Forbidden(String),
    /// Unknown path, or a token that is not the signed-in user's.
    #[error("{0}")]
    NotFound(String),
    /// Known path, other method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A malformed form or query.
    #[error("{0}")]
    BadRequest(String),
    /// A form over the size limit.
    #[error("The form is larger than {0} bytes.")]
    TooLarge(u64),
    /// The form did not arrive within `read_timeout_secs`.
    #[error("The form did not arrive in time.")]
    Timeout,
    /// Too many sign-in attempts from this address.
    #[error("Too many sign-in attempts from your address. Wait a minute and try again.")]
    TooManyAttempts,
    /// Too many tokens added (each checked with TeamCity) by this user.
    #[error("You have added many tokens in a short time. Wait a minute and try again.")]
    TooManyTokenChecks,
    /// Too many builds run from the page by this user.
    #[error("You have run many builds in a short time. Wait a minute and try again.")]
    TooManyRuns,
    /// The store did not take a write.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are logged, not shown.
    #[error("Something went wrong in bb2tc; the details are in its log.")]
    Internal(String),
}

impl PageError {
    /// The status code for each failure — decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        match self {
            PageError::SignInRequired => StatusCode::SEE_OTHER,
            PageError::Forbidden(_) => StatusCode::FORBIDDEN,
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            PageError::Timeout => StatusCode::REQUEST_TIMEOUT,
            PageError::TooManyAttempts | PageError::TooManyTokenChecks | PageError::TooManyRuns => {
                StatusCode::TOO_MANY_REQUESTS
            }
            PageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer: a redirect to the sign-in page, or an error page.
    pub fn into_response(self) -> Response<Body> {
        if let PageError::SignInRequired = self {
            return respond::redirect("/signin");
        }
        if let PageError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error on the token page");
        }
        let title = match self.status() {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::TOO_MANY_REQUESTS => "Slow down",
            StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
            StatusCode::INTERNAL_SERVER_ERROR => "Error",
            _ => "Bad request",
        };
        let mut response = respond::html(self.status(), html::error_page(title, &self.to_string()));
        if let PageError::TooManyAttempts | PageError::TooManyTokenChecks | PageError::TooManyRuns =
            self
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("60"));
        }
        response
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError::Unavailable(format!(
            "bb2tc's store is unavailable ({e}); try again shortly."
        ))
    }
}
