//! Several bb2tc instances on one PostgreSQL (SPEC §7.1): deliveries spread over them, one
//! killed mid-stream, the dispatch lease taken over, the rate limit across the cluster,
//! tokens and sessions shared.

use crate::support::*;

#[tokio::test]
async fn a_push_is_built_on_postgres() {
    let Some(url) = postgres::database("a_push_is_built_on_postgres").await else {
        return;
    };
    let tc = FakeTeamCity::start().await;
    let app = TestApp::spawn_postgres(&standard_config(&tc.url, ""), &url).await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    let (status, answer) = app.dc_push(&body, "pg-1").await;
    assert_eq!(status, 202, "{answer}");
    let (status, again) = app.dc_push(&body, "pg-1").await;
    assert_eq!(
        (status, again["result"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    let builds = tc.wait_for_builds(1).await;
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer t"));
    app.stop().await;
}
