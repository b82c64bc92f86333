//! Reading the token page's form posts and checking their CSRF value.

use super::error::PageError;
use crate::http::ApiError;
use crate::http::response::read_body;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{HeaderMap, Request};
use std::collections::HashMap;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Largest form accepted: a token and a few fields.
const MAX_FORM_BYTES: u64 = 16 * 1024;

/// A posted form's fields (the first value of each name).
#[derive(Default)]
pub struct Form {
    fields: HashMap<String, String>,
}

/// Field names only: forms carry tokens (TeamCity, Bitbucket, admin) and CSRF values.
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        write!(f, "Form({names:?}, values redacted)")
    }
}

impl Form {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub async fn read(
        request: Request<Incoming>,
        timeout: Duration,
    ) -> Result<(HeaderMap, Self), PageError> {
        let (parts, body) = request.into_parts();
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(PageError::BadRequest(
                "expected a form (application/x-www-form-urlencoded)".into(),
            ));
        }
        let bytes = read_body(&parts.headers, body, MAX_FORM_BYTES, timeout)
            .await
            .map_err(|e| match e {
                ApiError::PayloadTooLarge(limit) => PageError::TooLarge(limit),
                ApiError::RequestTimeout => PageError::Timeout,
                other => PageError::BadRequest(other.to_string()),
            })?;
        let mut fields = HashMap::new();
        for (key, value) in form_urlencoded::parse(&bytes) {
            fields
                .entry(key.into_owned())
                .or_insert_with(|| value.into_owned());
        }
        Ok((parts.headers, Self { fields }))
    }

    /// A field's value, trimmed; `None` when missing or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A required field.
    pub fn require(&self, name: &str) -> Result<&str, PageError> {
        self.get(name)
            .ok_or_else(|| PageError::BadRequest(format!("the form is missing {name:?}")))
    }

    /// Refuses the form unless its `csrf` field equals `expected` (compared in constant time).
    pub fn check_csrf(&self, expected: &str) -> Result<(), PageError> {
        let presented = self.get("csrf").unwrap_or("");
        let same: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
        if same && !expected.is_empty() {
            Ok(())
        } else {
            Err(PageError::Forbidden(
                "This form has expired or did not come from bb2tc's page (CSRF check failed). \
                 Reload the page and try again."
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_fields_but_never_their_values() {
        let form = Form {
            fields: HashMap::from([
                ("token".to_string(), "eyJ0eXAi.SECRET-TOKEN".to_string()),
                ("csrf".to_string(), "csrf-value".to_string()),
            ]),
        };
        let text = format!("{form:?}");
        assert_eq!(text, r#"Form(["csrf", "token"], values redacted)"#);
        let session = crate::store::Session {
            principal: crate::store::Principal::Admin {
                token_fingerprint: "f".into(),
            },
            csrf: "csrf-value".into(),
            expires_at: 1,
        };
        assert!(!format!("{session:?}").contains("csrf-value"));
    }
}
