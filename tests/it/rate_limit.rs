//! The per-server rate limit, observed as the fake TeamCity's call times.

use crate::support::*;
use std::time::Duration;

#[tokio::test]
async fn two_per_second_with_burst_one() {
    let tc = FakeTeamCity::start().await;
    let config = standard_config(&tc.url, "")
        .replace("rate_per_second = 1000.0", "rate_per_second = 2.0")
        .replace("burst = 1000", "burst = 1");
    let app = TestApp::spawn(&config).await;
    tc.add_token("t", "jdoe");
    app.register_token("dc", "jdoe", "main", "t").await;
    let changes: Vec<(String, String)> = (0..5)
        .map(|i| (format!("refs/heads/b{i}"), sha(i)))
        .collect();
    let changes: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|(r, s)| (r.as_str(), s.as_str(), "UPDATE"))
        .collect();
    let (_, answer) = app
        .dc_push(&dc_payload("jdoe", "PROJ/repo", &changes), "rate")
        .await;
    assert_eq!(answer["jobs"], 5);
    let calls = tc.wait_for_builds(5).await;
    let times: Vec<Duration> = calls.iter().map(|c| c.at - calls[0].at).collect();
    // burst 1: never two calls in the same half second; 5 calls take at least 2 s.
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(450),
            "calls too close: {times:?}"
        );
    }
    assert!(times[4] >= Duration::from_millis(1950), "{times:?}");
    assert!(
        times[4] < Duration::from_millis(3500),
        "rate far below 2/s: {times:?}"
    );
}
