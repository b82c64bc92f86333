//! The token page end to end in a real headless Chromium: sign in by OAuth and by a pasted
//! token, add a token (accepted, then refused by TeamCity), see it, push and see *last
//! authenticated* change, delete it; a second user sees none of it; a forged form from
//! another origin is refused; a service user cannot sign in. Few and fast: the details are
//! covered at the HTTP level in `token_page.rs`.

use crate::support::browser::Browser;
use crate::support::{PageWorld, dc_payload, sha};
use std::time::Duration;

/// Chromium only keeps `Secure` cookies from a secure origin, and treats `http://127.0.0.1`
/// as one, so the tests run with the default `cookie_secure = true`.
const WEB: &str = "sign_in_attempts_per_minute = 100";

#[tokio::test]
async fn oauth_sign_in_add_a_token_push_and_delete_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let world = PageWorld::start(WEB).await;
    world.bitbucket.consent_as(Some("jdoe"));
    let app = &world.app.url;

    browser.goto(&format!("{app}/")).await;
    assert_eq!(browser.path().await, "/signin");
    browser.screenshot("sign-in").await;
    browser.click("a[href='/signin/oauth/dc']").await;
    // Bitbucket's consent, the callback, then the same-site step to the token page.
    assert!(
        browser
            .text("header .who")
            .await
            .contains("Jane Doe (jdoe) on dc")
    );
    browser.wait_for_path("/").await;
    assert_eq!(browser.text("p.empty").await, "No tokens yet.");

    // Add a token by keyboard only: pick the server, type the token, press Enter.
    browser
        .element("#teamcity")
        .await
        .select_by_value("main")
        .await
        .unwrap();
    browser.type_into("#token", "tc-jdoe\u{E007}").await;
    browser.wait_for_text("p.notice", "Token added.").await;
    let row = browser.text("tbody tr").await;
    assert!(row.contains(&world.teamcity.url), "{row}");
    assert!(row.contains("jdoe"), "{row}");
    assert!(row.contains("valid"), "{row}");
    assert!(row.contains("never"), "not used yet: {row}");

    // A token TeamCity refuses.
    browser.type_into("#token", "tc-expired\u{E007}").await;
    let error = browser.text("p.error").await;
    assert!(error.contains("did not accept this token"), "{error}");
    assert!(
        !browser
            .client
            .source()
            .await
            .unwrap()
            .contains("tc-expired")
    );
    browser.screenshot("token-refused").await;

    // jdoe pushes; the build is triggered with the token, and the page shows when.
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(7), "UPDATE")],
    );
    assert_eq!(world.app.dc_push(&body, "browser-push").await.0, 202);
    let builds = world.teamcity.wait_for_builds(1).await;
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer tc-jdoe"));
    let mut row = String::new();
    for _ in 0..100 {
        browser.goto(&format!("{app}/")).await;
        row = browser.text("tbody tr").await;
        if !row.contains("never") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(row.contains(" UTC"), "last authenticated is shown: {row}");
    assert!(!row.contains("never"), "{row}");
    browser.screenshot("tokens").await;

    browser.click("button.danger").await;
    browser.wait_for_text("p.notice", "Token deleted").await;
    assert_eq!(browser.text("p.empty").await, "No tokens yet.");
    assert!(world.api_tokens().await.is_empty());
    browser.close().await;
}

#[tokio::test]
async fn pasted_token_sign_in_keeps_users_apart_and_refuses_forgeries() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let world = PageWorld::start(WEB).await;
    let app = &world.app.url;

    // jdoe signs in with a pasted Bitbucket token and adds a TeamCity token.
    sign_in_with_token(&browser, app, "bb-jdoe").await;
    assert!(browser.text("header .who").await.contains("jdoe"));
    browser.type_into("#token", "tc-jdoe\u{E007}").await;
    browser.wait_for_text("p.notice", "Token added.").await;
    let jdoe_token = world.api_tokens().await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    browser.click("header .who button").await;
    browser.wait_for_path("/signin").await;

    // mallory sees none of it, not even in the page source.
    sign_in_with_token(&browser, app, "bb-mallory").await;
    assert!(browser.text("header .who").await.contains("mallory"));
    assert_eq!(browser.text("p.empty").await, "No tokens yet.");
    assert!(!browser.client.source().await.unwrap().contains(&jdoe_token));

    // A page on another origin posts a form into mallory's session: refused, nothing added.
    browser
        .goto(&format!(
            "{}/forged?action={app}/tokens",
            world.bitbucket.url
        ))
        .await;
    browser.click("#claim").await;
    let refusal = browser.text("p.error").await;
    assert!(refusal.contains("CSRF check failed"), "{refusal}");
    let tokens = world.api_tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["user"], "jdoe");

    // A service user's token does not sign anyone in.
    browser.goto(&format!("{app}/")).await;
    browser.click("header .who button").await;
    browser.wait_for_path("/signin").await;
    sign_in_with_token(&browser, app, "bb-bot").await;
    let error = browser.text("p.error").await;
    assert!(error.contains("service users"), "{error}");
    browser.wait_for_path("/signin/token").await;
    browser.screenshot("service-user-refused").await;

    // The administrator sees everyone's tokens.
    browser.goto(&format!("{app}/signin")).await;
    browser.click("details.admin summary").await;
    browser
        .type_into(
            "#admin-token",
            &format!("{}\u{E007}", crate::support::ADMIN_TOKEN),
        )
        .await;
    assert!(browser.text("header .who").await.contains("administrator"));
    assert!(browser.text("tbody tr").await.contains("jdoe"));
    browser.screenshot("admin").await;
    browser.close().await;
}

/// From the sign-in page: open "Sign in with a Bitbucket token" for `dc` and submit.
async fn sign_in_with_token(browser: &Browser, app: &str, token: &str) {
    browser.goto(&format!("{app}/signin")).await;
    browser
        .click("section[aria-labelledby='source-dc'] details summary")
        .await;
    browser
        .type_into("#token-dc", &format!("{token}\u{E007}"))
        .await;
}

#[tokio::test]
async fn a_build_is_run_from_the_page_and_listed_with_its_outcome() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let world = PageWorld::start(WEB).await;
    let app = &world.app.url;
    sign_in_with_token(&browser, app, "bb-jdoe").await;
    browser.type_into("#token", "tc-jdoe\u{E007}").await;
    browser.wait_for_text("p.notice", "Token added.").await;

    // Run a build: open the form, fill it in, submit.
    browser.click("details.run summary").await;
    browser.type_into("#run-repository", "PROJ/repo").await;
    browser.type_into("#run-branch", "feature/from-page").await;
    let commit = sha(77);
    browser
        .type_into("#run-commit", &format!("{commit}\u{E007}"))
        .await;
    browser.wait_for_text("p.notice", "Queued").await;
    let call = world.teamcity.wait_for_builds(1).await.remove(0);
    assert_eq!(call.authorization.as_deref(), Some("Bearer tc-jdoe"));
    assert_eq!(call.json()["branchName"], "feature/from-page");

    // The page lists it with TeamCity's link once it is queued there.
    let mut row = String::new();
    for _ in 0..100 {
        browser.goto(&format!("{app}/")).await;
        row = browser.text("table.builds tbody tr").await;
        if row.contains("in TeamCity") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        row.contains("feature/from-page") && row.contains(&commit[..7]),
        "{row}"
    );
    assert!(
        row.contains("queued") && row.contains("in TeamCity"),
        "{row}"
    );
    browser.screenshot("builds").await;

    // Run again from the list.
    browser.click("table.builds button").await;
    browser.wait_for_text("p.notice", "Queued").await;
    world.teamcity.wait_for_builds(2).await;
    browser.close().await;
}
