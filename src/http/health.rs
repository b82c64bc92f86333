//! `GET /healthz` (the process serves) and `GET /readyz` (the store takes writes and every
//! server's worker is alive).

use super::response::{Body, json};
use crate::app::App;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// How long the store's write probe may take before the store counts as not ready.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness.
pub fn live() -> Response<Body> {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// Readiness, with one entry per component.
pub async fn ready(app: &App) -> Response<Body> {
    let mut components = Map::new();
    let mut ready = true;
    let store = match tokio::time::timeout(STORE_PROBE_TIMEOUT, app.store.probe_write()).await {
        Ok(Ok(())) => json!({"status": "ok"}),
        Ok(Err(e)) => {
            ready = false;
            json!({"status": "failing", "error": e.to_string()})
        }
        Err(_) => {
            ready = false;
            json!({"status": "failing", "error": "write probe timed out"})
        }
    };
    components.insert("store".into(), store);
    for (server, alive) in app.queue.liveness() {
        ready &= alive;
        let status = if alive { "ok" } else { "failing" };
        components.insert(format!("worker:{server}"), json!({"status": status}));
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
