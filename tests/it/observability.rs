//! `/metrics` (SPEC §10): counters move with deliveries, calls and failures; the gauges
//! follow the store.

use crate::support::*;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_follow_deliveries_calls_and_failures() {
    let tc = FakeTeamCity::start().await;
    tc.add_token("t", "jdoe");
    let config = standard_config(&tc.url, "").replace(
        "retry_schedule_secs = [1, 1]",
        "retry_schedule_secs = [0.02]",
    );
    let app = TestApp::spawn(&config).await;
    app.register_token("dc", "jdoe", "main", "t").await;

    let before = app.metrics().await;
    // Every configured source and server has its series from the start.
    assert_eq!(
        value(&before, r#"bb2tc_signature_failures_total{source="cloud"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &before,
            r#"bb2tc_triggers_total{server="main",outcome="dead"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&before, r#"bb2tc_jobs_coalesced_total{server="main"}"#),
        Some(0.0)
    );
    assert_eq!(value(&before, r#"bb2tc_tokens{status="valid"}"#), Some(1.0));
    assert_eq!(
        value(
            &before,
            r#"bb2tc_queue_depth{server="main",state="pending"}"#
        ),
        Some(0.0)
    );
    // A delivery and a successful call.
    app.dc_push(
        &dc_payload(
            "jdoe",
            "PROJ/repo",
            &[("refs/heads/main", &sha(1), "UPDATE")],
        ),
        "m1",
    )
    .await;
    tc.wait_for_builds(1).await;
    // A bad signature.
    app.webhook("dc", Some("repo:refs_changed"), b"{}", Some("wrong"), None)
        .await;
    // A call TeamCity refuses twice: one retry, then dead.
    tc.fail_next(503, "down", None);
    tc.fail_next(503, "down", None);
    app.dc_push(
        &dc_payload(
            "jdoe",
            "PROJ/repo",
            &[("refs/heads/dev", &sha(2), "UPDATE")],
        ),
        "m2",
    )
    .await;
    tc.wait_for_builds(3).await;
    let text = loop {
        let text = app.metrics().await;
        // The call's outcome is counted when it ends; the job's state is written just after.
        if value(
            &text,
            r#"bb2tc_triggers_total{server="main",outcome="dead"}"#,
        ) == Some(1.0)
            && value(&text, r#"bb2tc_queue_depth{server="main",state="dead"}"#) == Some(1.0)
        {
            break text;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        value(
            &text,
            r#"bb2tc_webhooks_total{source="dc",event="repo:refs_changed",result="accepted"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bb2tc_webhooks_total{source="dc",event="repo:refs_changed",result="invalid_signature"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bb2tc_signature_failures_total{source="dc"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bb2tc_jobs_enqueued_total{server="main"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bb2tc_triggers_total{server="main",outcome="queued"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bb2tc_triggers_total{server="main",outcome="retry"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bb2tc_trigger_duration_seconds_count{server="main"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(&text, r#"bb2tc_queue_depth{server="main",state="dead"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bb2tc_queue_depth{server="main",state="done"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bb2tc_queue_oldest_age_seconds{server="main"}"#),
        Some(0.0)
    );
    for name in [
        "bb2tc_webhooks_total",
        "bb2tc_signature_failures_total",
        "bb2tc_jobs_enqueued_total",
        "bb2tc_triggers_total",
        "bb2tc_trigger_duration_seconds",
        "bb2tc_queue_depth",
        "bb2tc_queue_oldest_age_seconds",
        "bb2tc_tokens",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
}
