//! `GET /healthz` (the process serves), `GET /readyz` (the store takes writes and every
//! server's worker is alive) and `GET /metrics`.

use super::error::ApiError;
use super::response::{Body, json};
use crate::app::App;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// How long the store's write probe may take before the store counts as not ready.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness.
/// Liveness: 503 when the process cannot recover by itself (the store's directory is gone),
/// so that a liveness probe restarts it; the reason is logged and answered.
pub fn live(app: &App) -> Response<Body> {
    match app.store.fatal_problem() {
        Ok(()) => json(StatusCode::OK, &json!({"status": "ok"})),
        Err(e) => {
            tracing::error!(error = %e, "not live: bb2tc needs a restart");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "failing", "error": e.to_string()}),
            )
        }
    }
}

/// Readiness, with one entry per component.
pub async fn ready(app: &App) -> Response<Body> {
    let mut components = Map::new();
    let mut ready = true;
    let probed = tokio::time::timeout(STORE_PROBE_TIMEOUT, app.store.probe_write()).await;
    let store = match probed {
        Ok(Ok(())) => match app.store.space_problem() {
            None => json!({"status": "ok"}),
            Some(why) => {
                ready = false;
                json!({"status": "failing", "error": why})
            }
        },
        Ok(Err(e)) => {
            ready = false;
            json!({"status": "failing", "error": e.to_string()})
        }
        Err(_) => {
            ready = false;
            json!({"status": "failing", "error": "write probe timed out"})
        }
    };
    let mut store = store;
    store["backend"] = json!(app.store.backend_name());
    if let Some((open, idle, max)) = app.store.pool_status() {
        store["connections"] = json!({"open": open, "idle": idle, "max": max});
    }
    components.insert("store".into(), store);
    let held = app.queue.held_servers();
    for (server, alive) in app.queue.liveness() {
        ready &= alive;
        let status = if alive { "ok" } else { "failing" };
        let mut worker = json!({"status": status});
        if app.store.is_shared() {
            // Another instance sending this server's jobs is normal, not a failure.
            let lease = if held.contains(&server) {
                "held"
            } else {
                "elsewhere"
            };
            worker["dispatch_lease"] = json!(lease);
        }
        components.insert(format!("worker:{server}"), worker);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &json!({
            "status": if ready { "ready" } else { "not ready" },
            "components": Value::Object(components),
        }),
    )
}

/// Prometheus text exposition.
pub fn metrics(app: &App) -> Result<Response<Body>, ApiError> {
    let text = app.metrics.render(&app.config, &app.store)?;
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::with_servers;
    use crate::ids::ServerId;
    use crate::queue::Queue;
    use crate::shutdown::Shutdown;
    use crate::store::test_support::temp_store;
    use crate::teamcity::TeamCityClient;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn readyz_names_a_worker_that_is_gone() {
        let config = with_servers(
            "[[teamcity]]\nid = \"main\"\nurl = \"http://127.0.0.1:1\"\n[[teamcity]]\nid = \"other\"\nurl = \"http://127.0.0.1:2\"",
        );
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let clients: Vec<TeamCityClient> = config
            .servers
            .iter()
            .map(|s| TeamCityClient::new(s).unwrap())
            .collect();
        let (_stop, stopping) = Shutdown::new();
        let (queue, _tasks) = Queue::start(
            store.clone(),
            Arc::default(),
            &clients,
            Vec::new(),
            stopping,
            || 0.0,
        )
        .await
        .unwrap();
        queue.abort_worker(&ServerId::new("main"));
        while queue
            .liveness()
            .iter()
            .any(|(id, alive)| id.as_str() == "main" && *alive)
        {
            tokio::task::yield_now().await;
        }
        let web = crate::web::WebState::new(&config).unwrap();
        let app = App::new(
            config,
            store,
            queue,
            Default::default(),
            Arc::default(),
            web,
            [0; 32],
        )
        .unwrap();
        let response = ready(&app).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["components"]["worker:main"]["status"], "failing");
        assert_eq!(body["components"]["worker:other"]["status"], "ok");
        assert_eq!(body["components"]["store"]["status"], "ok");
    }
}
