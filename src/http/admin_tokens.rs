//! `/api/v1/tokens`: register, list and forget TeamCity tokens (SPEC §8).

use super::error::ApiError;
use super::response::{Body, empty, json, read_body};
use crate::app::App;
use crate::ids::{SourceId, TeamCityToken, UserKey};
use crate::store::TokenFilter;
use crate::teamcity::TeamCityError;
use crate::token_registration::{self, RegistrationError};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

/// Largest admin request body; a token registration is tiny.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    source: Option<String>,
    user: String,
    teamcity: String,
    token: String,
    #[serde(default = "yes")]
    verify: bool,
}

fn yes() -> bool {
    true
}

/// Routes `/api/v1/tokens[/{id}]`; `rest` is the path after `/api/v1/tokens`.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    match (request.method().clone(), rest) {
        (Method::POST, []) => register(app, request).await,
        (Method::GET, []) => list(app, request.uri().query()).await,
        (Method::DELETE, [id]) => remove(app, id).await,
        (_, [] | [_]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound("no such path".into())),
    }
}

async fn register(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        MAX_ADMIN_BODY,
        app.config.http.read_timeout,
    )
    .await?;
    let registration: Registration = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid token registration: {e}")))?;
    if UserKey::parse(&registration.user).is_none() {
        return Err(ApiError::BadRequest("user must not be empty".into()));
    }
    let token = registration.token.trim();
    if token.is_empty() {
        return Err(ApiError::BadRequest("token must not be empty".into()));
    }
    let token = TeamCityToken::new(token);
    let source = match (&registration.source, app.config.sources.as_slice()) {
        (Some(id), _) => app
            .config
            .source(id)
            .ok_or_else(|| ApiError::Unprocessable(format!("unknown source {id:?}")))?,
        (None, [only]) => only,
        (None, _) => {
            return Err(ApiError::BadRequest(
                "source is required when several Bitbucket sources are configured".into(),
            ));
        }
    };
    let server = app
        .config
        .server_by_id_or_url(&registration.teamcity)
        .ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "{:?} is not a configured TeamCity server (configured: {})",
                registration.teamcity,
                app.config
                    .servers
                    .iter()
                    .map(|s| format!("{} = {}", s.id, s.base_url()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let (info, replaced) = token_registration::register(
        app,
        source,
        &registration.user,
        server,
        &token,
        registration.verify,
    )
    .await
    .map_err(|e| match e {
        RegistrationError::Refused {
            server_url,
            error: TeamCityError::Unauthorized(_),
        } => ApiError::Unprocessable(format!("TeamCity {server_url} rejected the token (401)")),
        RegistrationError::Refused { error, .. } => ApiError::Unprocessable(error.to_string()),
        unreachable @ RegistrationError::Unreachable { .. } => {
            ApiError::BadGateway(unreachable.to_string())
        }
        malformed @ RegistrationError::Malformed => ApiError::BadRequest(malformed.to_string()),
        RegistrationError::Store(e) => e.into(),
    })?;
    let mut answer = serde_json::to_value(&info).map_err(|e| ApiError::Internal(e.to_string()))?;
    if replaced {
        answer["replaced"] = json!(true);
        Ok(json(StatusCode::OK, &answer))
    } else {
        Ok(json(StatusCode::CREATED, &answer))
    }
}

async fn list(app: &App, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut filter = TokenFilter::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "source" => filter.source = Some(SourceId::new(value.into_owned())),
            "user" => filter.user = UserKey::parse(&value),
            "teamcity" => {
                let server = app.config.server_by_id_or_url(&value).ok_or_else(|| {
                    ApiError::Unprocessable(format!(
                        "{value:?} is not a configured TeamCity server"
                    ))
                })?;
                filter.server = Some(server.id.clone());
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let tokens = app.store.list_tokens(filter).await?;
    Ok(json(StatusCode::OK, &json!({ "tokens": tokens })))
}

async fn remove(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    if app.store.remove_token(id.to_owned()).await? {
        tracing::info!(token = id, "token removed");
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::NotFound(format!("no token with id {id:?}")))
    }
}
