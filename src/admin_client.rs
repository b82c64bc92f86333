//! The client side of the admin API, for `bb2tc token …` and `bb2tc jobs …` (SPEC §2):
//! calls a running bridge and renders its answers as tables.

use reqwest::Method;
use serde_json::Value;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The bridge answered with an error; the message is the API's.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's `error` text.
        message: String,
    },
    /// The bridge could not be reached.
    #[error("cannot reach bb2tc at {url}: {source}")]
    Unreachable {
        /// The base URL tried.
        url: String,
        /// What went wrong.
        source: reqwest::Error,
    },
    /// The answer was not the JSON the API sends.
    #[error("unexpected answer from bb2tc: {0}")]
    BadAnswer(String),
}

/// Calls `/api/v1` of a running bridge with the admin token.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    /// A client for the bridge at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, admin_token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: url.trim_end_matches('/').to_owned(),
            token: admin_token.to_owned(),
        }
    }

    /// One call; `Value::Null` for an empty (204) answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| AdminError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| AdminError::BadAnswer(e.to_string()))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| AdminError::BadAnswer(text.clone()))?
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(AdminError::Api {
                status,
                message: value["error"].as_str().unwrap_or(&text).to_owned(),
            })
        }
    }
}

/// Renders token records (SPEC §8) as a table.
pub fn tokens_table(tokens: &[Value]) -> String {
    table(
        &[
            "ID",
            "SOURCE",
            "USER",
            "TEAMCITY",
            "TEAMCITY USER",
            "STATUS",
            "ADDED",
            "LAST AUTHENTICATED",
        ],
        tokens,
        &[
            "id",
            "source",
            "user",
            "teamcity",
            "teamcity_user",
            "status",
            "added_at",
            "last_authenticated_at",
        ],
    )
}

/// Renders jobs as a table.
pub fn jobs_table(jobs: &[Value]) -> String {
    table(
        &[
            "ID",
            "STATE",
            "SERVER",
            "BUILD TYPE",
            "BRANCH",
            "SHA",
            "USER",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "BUILD",
            "RESULT",
        ],
        jobs,
        &[
            "id",
            "state",
            "server",
            "build_type",
            "branch",
            "sha",
            "user",
            "attempts",
            "next_attempt_at",
            "build",
            "result",
        ],
    )
}

fn table(headers: &[&str], rows: &[Value], keys: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| keys.iter().map(|key| cell(row, key)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, values: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = values
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    for row in &cells {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn cell(row: &Value, key: &str) -> String {
    match key {
        "sha" => row[key]
            .as_str()
            .map(|s| s.chars().take(10).collect())
            .unwrap_or_default(),
        // The followed build: its state, a finished one's status, its number.
        "build" => match row[key]["state"].as_str() {
            Some(state) => [
                Some(state.to_owned()),
                row[key]["status"]
                    .as_str()
                    .filter(|_| state == "finished")
                    .map(str::to_owned),
                row[key]["number"].as_str().map(|n| format!("#{n}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
            None => "-".into(),
        },
        // What became of a job: its error, warning or build link.
        "result" => ["last_error", "warning", "web_url"]
            .iter()
            .find_map(|k| row[*k].as_str())
            .map(|text| text.chars().take(80).collect())
            .unwrap_or_default(),
        _ => match &row[key] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_show_missing_values_as_dashes() {
        let rows = vec![
            serde_json::json!({"id": "abc", "source": "dc", "user": "jdoe", "teamcity": "https://tc", "teamcity_user": null, "status": "valid", "added_at": "2026-11-28T10:00:00Z", "last_authenticated_at": null}),
        ];
        let text = tokens_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID   SOURCE  USER"));
        assert!(lines[1].starts_with("abc  dc      jdoe"));
        assert!(lines[1].ends_with("2026-11-28T10:00:00Z  -"));
    }

    #[test]
    fn jobs_show_their_followed_build() {
        let rows = vec![
            serde_json::json!({"id": "1", "state": "done", "build": {"state": "finished", "status": "FAILURE", "number": "41"}}),
            serde_json::json!({"id": "2", "state": "done", "build": {"state": "running", "status": "SUCCESS"}}),
            serde_json::json!({"id": "3", "state": "pending", "build": null}),
        ];
        let text = jobs_table(&rows);
        assert!(text.contains("finished FAILURE #41"), "{text}");
        let running = text.lines().nth(2).unwrap();
        assert!(
            running.contains("running") && !running.contains("SUCCESS"),
            "{text}"
        );
        assert!(text.lines().nth(3).unwrap().contains(" -"), "{text}");
    }
}
