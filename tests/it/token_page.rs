//! The token page at the HTTP level: sign-in (OAuth for Data Center and Cloud, pasted
//! Bitbucket tokens, the admin token), sessions, CSRF, isolation between users, the rate
//! limit, and adding and deleting tokens against the fake TeamCity.

use crate::support::{
    ADA_UUID, Account, FakeBitbucket, FakeTeamCity, PageClient, PageWorld, dc_payload, page_config,
    process, sha,
};
use reqwest::Url;

#[tokio::test]
async fn pages_need_a_session_and_carry_strict_security_headers() {
    let world = PageWorld::start("").await;
    let mut browser = world.client();

    let root = browser.get("/").await;
    assert_eq!(root.status, 303);
    assert_eq!(root.location.as_deref(), Some("/signin"));

    let sign_in = browser.get("/signin").await;
    assert_eq!(sign_in.status, 200);
    let csp = sign_in.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert_eq!(sign_in.headers["x-frame-options"], "DENY");
    assert_eq!(sign_in.headers["cache-control"], "no-store");
    assert_eq!(sign_in.headers["referrer-policy"], "no-referrer");
    assert!(!sign_in.body.contains("<script"), "no script on the page");
    assert!(!sign_in.body.contains(" style="), "no inline styles");
    let cookie = sign_in
        .set_cookie("__Host-bb2tc_signin")
        .expect("a sign-in CSRF cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(sign_in.body.contains("href=\"/signin/oauth/dc\""));
    assert!(sign_in.body.contains("href=\"/signin/oauth/cloud\""));

    let css = browser.get("/static/bb2tc.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    for (method_is_post, path) in [
        (true, "/tokens"),
        (true, "/tokens/abc/delete"),
        (false, "/"),
    ] {
        let page = if method_is_post {
            browser.post(path, &[("csrf", "x")]).await
        } else {
            browser.get(path).await
        };
        assert_eq!(page.status, 303, "{path} without a session");
    }
    assert_eq!(browser.get("/no-such-page").await.status, 404);
    assert_eq!(browser.post("/signin", &[]).await.status, 405);
}

#[tokio::test]
async fn a_developer_signs_in_with_a_pasted_token_and_manages_their_tokens() {
    let world = PageWorld::start("").await;
    let mut browser = world.client();
    let csrf = browser.get("/signin").await.csrf();
    let signed_in = browser
        .post(
            "/signin/token",
            &[("csrf", &csrf), ("source", "dc"), ("token", "bb-jdoe")],
        )
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/"));
    let session = signed_in
        .set_cookie("__Host-bb2tc_session")
        .expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=43200"] {
        assert!(session.contains(attribute), "{session} lacks {attribute}");
    }

    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Jane Doe (jdoe) on dc"), "{}", page.body);
    assert!(page.body.contains("No tokens yet."));
    assert!(page.body.contains("My Profile → Access Tokens"));

    let added = browser.add_token("main", "tc-jdoe").await;
    assert_eq!(added.status, 303, "{}", added.body);
    assert_eq!(added.location.as_deref(), Some("/?notice=added"));
    let page = browser.get("/?notice=added").await;
    assert!(page.body.contains("Token added."));
    assert!(page.body.contains(&world.teamcity.url));
    assert!(page.body.contains("<td>jdoe</td>"), "TeamCity user shown");
    assert!(page.body.contains("never"), "not used yet");
    assert!(!page.body.contains("tc-jdoe"), "the token is never shown");
    let tokens = world.api_tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["user"], "jdoe");
    assert_eq!(tokens[0]["source"], "dc");
    assert_eq!(tokens[0]["status"], "valid");

    // TeamCity refuses a token: said in words, nothing stored, the token not echoed.
    let refused = browser.add_token("main", "tc-typo").await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("did not accept this token"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("tc-typo"));
    let unreachable = browser.add_token("offline", "tc-jdoe").await;
    assert_eq!(unreachable.status, 502);
    assert!(
        unreachable
            .body
            .contains("could not reach TeamCity at http://127.0.0.1:1")
    );
    assert_eq!(world.api_tokens().await.len(), 1);

    // A push by jdoe uses the token and stamps "last authenticated".
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(1), "UPDATE")],
    );
    assert_eq!(world.app.dc_push(&body, "page-push-1").await.0, 202);
    let builds = world.teamcity.wait_for_builds(1).await;
    assert_eq!(builds[0].authorization.as_deref(), Some("Bearer tc-jdoe"));
    let mut stamped = false;
    for _ in 0..500 {
        if !browser.get("/").await.body.contains("never") {
            stamped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(stamped, "last authenticated shown after the push");

    // The token is revoked in TeamCity: the next push's call gets 401, and the page says
    // what to do.
    world.teamcity.revoke_token("tc-jdoe");
    let body = dc_payload(
        "jdoe",
        "PROJ/repo",
        &[("refs/heads/main", &sha(2), "UPDATE")],
    );
    assert_eq!(world.app.dc_push(&body, "page-push-2").await.0, 202);
    let mut page = browser.get("/").await;
    for _ in 0..500 {
        if page.body.contains("status invalid") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        page = browser.get("/").await;
    }
    assert!(
        page.body
            .contains(r#"<span class="status invalid">invalid</span>"#),
        "{}",
        page.body
    );
    assert!(page.body.contains("TeamCity no longer accepts this token"));

    // Delete.
    let page = browser.get("/").await;
    let id = tokens[0]["id"].as_str().unwrap();
    assert!(page.body.contains(&format!("/tokens/{id}/delete")));
    let deleted = browser
        .post(&format!("/tokens/{id}/delete"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(deleted.status, 303);
    let page = browser.get("/?notice=deleted").await;
    assert!(page.body.contains("still exists in TeamCity"));
    assert!(page.body.contains("No tokens yet."));
    assert!(world.api_tokens().await.is_empty());
}

#[tokio::test]
async fn users_never_see_or_change_each_others_tokens() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert_eq!(jdoe.add_token("main", "tc-jdoe").await.status, 303);
    let jdoe_token = world.api_tokens().await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    let page = mallory.get("/").await;
    assert!(page.body.contains("No tokens yet."));
    assert!(!page.body.contains(&jdoe_token));
    // Editing the URL: the admin's user filter does nothing for a user.
    let page = mallory.get("/?user=jdoe").await;
    assert!(!page.body.contains(&jdoe_token));
    // Editing a form's URL: someone else's token is answered like an unknown one.
    let csrf = page.csrf();
    let forged = mallory
        .post(&format!("/tokens/{jdoe_token}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(forged.status, 404);
    // Adding fields: the user comes from the session only.
    let added = mallory
        .post(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("teamcity", "main"),
                ("token", "tc-mallory"),
                ("user", "jdoe"),
                ("source", "cloud"),
            ],
        )
        .await;
    assert_eq!(added.status, 303);
    let tokens = world.api_tokens().await;
    assert_eq!(
        tokens.len(),
        2,
        "jdoe's token is still there, mallory's is added"
    );
    assert!(
        tokens
            .iter()
            .any(|t| t["id"] == jdoe_token.as_str() && t["user"] == "jdoe")
    );
    assert!(
        tokens
            .iter()
            .any(|t| t["user"] == "mallory" && t["source"] == "dc")
    );
    // jdoe still sees only theirs.
    let page = jdoe.get("/").await;
    assert!(page.body.contains(&jdoe_token));
    assert!(!page.body.contains("<td>mallory</td>"));
}

#[tokio::test]
async fn forms_without_the_right_csrf_value_are_refused() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    let mallory_csrf = mallory.get("/").await.csrf();

    for fields in [
        vec![("teamcity", "main"), ("token", "tc-jdoe")],
        vec![("csrf", ""), ("teamcity", "main"), ("token", "tc-jdoe")],
        vec![
            ("csrf", mallory_csrf.as_str()),
            ("teamcity", "main"),
            ("token", "tc-jdoe"),
        ],
    ] {
        let page = jdoe.post("/tokens", &fields).await;
        assert_eq!(page.status, 403, "{fields:?}");
        assert!(page.body.contains("CSRF check failed"));
    }
    assert!(world.api_tokens().await.is_empty());
    assert_eq!(jdoe.post("/signout", &[]).await.status, 403);

    // Sign-in forms are bound to the browser's sign-in cookie.
    let mut stranger = world.client();
    let page = stranger
        .post(
            "/signin/token",
            &[
                ("csrf", &mallory_csrf),
                ("source", "dc"),
                ("token", "bb-jdoe"),
            ],
        )
        .await;
    assert_eq!(page.status, 403);
    assert!(!stranger.cookies.contains_key("__Host-bb2tc_session"));

    // Not a form at all.
    let answer = world
        .app
        .http
        .post(format!("{}/tokens", world.app.url))
        .header(
            "cookie",
            format!(
                "__Host-bb2tc_session={}",
                jdoe.cookies["__Host-bb2tc_session"]
            ),
        )
        .json(&serde_json::json!({"token": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
}

#[tokio::test]
async fn service_users_inactive_users_and_wrong_tokens_cannot_sign_in() {
    let world = PageWorld::start("").await;
    let mut browser = world.client();
    for (source, token, email, status, words) in [
        ("dc", "bb-bot", None, 403, "service users"),
        ("dc", "bb-repo-bot", None, 403, "would not show the account"),
        ("dc", "bb-left", None, 403, "deactivated"),
        ("dc", "bb-nobody", None, 401, "did not accept"),
        (
            "cloud",
            "bb-cloud-bot",
            Some("bot@example.com"),
            403,
            "not a Bitbucket user account",
        ),
        (
            "cloud",
            "bb-cloud-ada",
            Some("eve@example.com"),
            401,
            "did not accept",
        ),
    ] {
        let csrf = browser.get("/signin").await.csrf();
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("source", source),
            ("token", token),
        ];
        if let Some(email) = email {
            fields.push(("email", email));
        }
        let page = browser.post("/signin/token", &fields).await;
        assert_eq!(page.status, status, "{token}: {}", page.body);
        assert!(page.body.contains(words), "{token}: {}", page.body);
        assert!(!page.body.contains(token), "the token is not echoed");
        assert!(!browser.cookies.contains_key("__Host-bb2tc_session"));
    }
}

#[tokio::test]
async fn cloud_users_sign_in_with_an_api_token_and_email() {
    let world = PageWorld::start("").await;
    let mut browser = world.client();
    let page = browser
        .sign_in_cloud("ada@example.com", "bb-cloud-ada")
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(browser.add_token("main", "tc-ada").await.status, 303);
    let tokens = world.api_tokens().await;
    assert_eq!(tokens[0]["source"], "cloud");
    assert_eq!(
        tokens[0]["user"],
        ADA_UUID.to_lowercase(),
        "keyed by the uuid webhooks carry"
    );
    // The user name with non-ASCII letters arrives percent-encoded in X-AUSERNAME.
    let mut muller = world.client();
    muller.sign_in_dc("bb-muller").await;
    assert!(
        muller
            .get("/")
            .await
            .body
            .contains("Jürgen Müller (j.müller) on dc")
    );
}

/// Follows "Sign in with Bitbucket" through the fake consent screen; returns the callback
/// page.
async fn oauth(browser: &mut PageClient, source: &str) -> crate::support::page_client::Page {
    let start = browser.get(&format!("/signin/oauth/{source}")).await;
    assert_eq!(start.status, 303);
    let state_cookie = start
        .set_cookie("__Secure-bb2tc_oauth")
        .expect("state cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/oauth/callback", "Secure"] {
        assert!(
            state_cookie.contains(attribute),
            "{state_cookie} lacks {attribute}"
        );
    }
    let authorize = start.location.unwrap();
    let consent = browser.get(&authorize).await;
    assert_eq!(consent.status, 302, "{}", consent.body);
    let back = consent.location.unwrap();
    assert!(
        back.starts_with(&format!("{}/oauth/callback?", browser.base)),
        "{back}"
    );
    browser.get(&back).await
}

#[tokio::test]
async fn sign_in_with_bitbucket_uses_pkce_and_a_browser_bound_state() {
    // Every client here is 127.0.0.1: allow more than the default 10 attempts a minute.
    let world = PageWorld::start("sign_in_attempts_per_minute = 100").await;

    // Data Center.
    world.bitbucket.consent_as(Some("jdoe"));
    let mut browser = world.client();
    let callback = oauth(&mut browser, "dc").await;
    assert_eq!(callback.status, 200, "{}", callback.body);
    assert!(
        callback
            .body
            .contains("http-equiv=\"refresh\" content=\"0;url=/\"")
    );
    assert!(callback.set_cookie("__Host-bb2tc_session").is_some());
    assert!(
        callback
            .set_cookie("__Secure-bb2tc_oauth")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(
        browser
            .get("/")
            .await
            .body
            .contains("Jane Doe (jdoe) on dc")
    );
    let authorize = world
        .bitbucket
        .asked("/rest/oauth2/latest/authorize")
        .unwrap();
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(authorize.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(params["scope"], "REPO_READ");
    assert_eq!(
        params["redirect_uri"],
        format!("{}/oauth/callback", world.app.url)
    );
    // The fake's token endpoint refuses a wrong verifier, so signing in proves the PKCE pair.
    assert!(world.bitbucket.asked("/rest/oauth2/latest/token").is_some());

    // Cloud.
    world.bitbucket.consent_as(Some("Ada Lovelace"));
    let mut ada = world.client();
    assert_eq!(oauth(&mut ada, "cloud").await.status, 200);
    assert!(ada.get("/").await.body.contains("Ada Lovelace"));
    assert!(world.bitbucket.asked("/site/oauth2/access_token").is_some());

    // A redirect back that this browser did not start (no or another state cookie).
    world.bitbucket.consent_as(Some("jdoe"));
    let mut victim = world.client();
    let mut attacker = world.client();
    let start = attacker.get("/signin/oauth/dc").await;
    let consent = attacker.get(&start.location.unwrap()).await;
    let page = victim.get(&consent.location.clone().unwrap()).await;
    assert_eq!(page.status, 403);
    assert!(!victim.cookies.contains_key("__Host-bb2tc_session"));
    // Each state works once.
    let first = attacker.get(&consent.location.clone().unwrap()).await;
    assert_eq!(first.status, 200);
    attacker.cookies.insert("__Secure-bb2tc_oauth".into(), {
        let url = Url::parse(&consent.location.unwrap()).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned()
    });
    let replay = attacker
        .get(&format!(
            "{}/oauth/callback?code=x&state={}",
            world.app.url, attacker.cookies["__Secure-bb2tc_oauth"]
        ))
        .await;
    assert_eq!(replay.status, 400);

    // The user denies access on Bitbucket's consent screen.
    world.bitbucket.consent_as(None);
    let mut denied = world.client();
    let page = oauth(&mut denied, "dc").await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("did not grant access (access_denied)"));

    // A source without OAuth has no such sign-in.
    assert_eq!(denied.get("/signin/oauth/nope").await.status, 404);
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let world = PageWorld::start("sign_in_attempts_per_minute = 3").await;
    let mut browser = world.client();
    let csrf = browser.get("/signin").await.csrf();
    let wrong = [("csrf", csrf.as_str()), ("admin_token", "guess")];
    for _ in 0..3 {
        assert_eq!(browser.post("/signin/admin", &wrong).await.status, 401);
    }
    let limited = browser.post("/signin/admin", &wrong).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "60");
    // Even the right token waits: guessing cannot go faster than the limit.
    let right = [
        ("csrf", csrf.as_str()),
        ("admin_token", crate::support::ADMIN_TOKEN),
    ];
    assert_eq!(browser.post("/signin/admin", &right).await.status, 429);
    assert_eq!(browser.get("/signin/oauth/dc").await.status, 429);
    // Pages other than sign-in are not limited.
    assert_eq!(browser.get("/signin").await.status, 200);
    let metrics = browser.get("/metrics").await.body;
    for line in [
        r#"bb2tc_sign_ins_total{method="admin",result="refused"} 3"#,
        r#"bb2tc_sign_ins_total{method="admin",result="limited"} 2"#,
        r#"bb2tc_sign_ins_total{method="oauth",result="limited"} 1"#,
        r#"bb2tc_sign_ins_total{method="bitbucket_token",result="ok"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn the_admin_sees_and_deletes_everyones_tokens() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    assert_eq!(jdoe.add_token("main", "tc-jdoe").await.status, 303);
    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    assert_eq!(mallory.add_token("main", "tc-mallory").await.status, 303);

    let mut admin = world.client();
    let csrf = admin.get("/signin").await.csrf();
    let wrong = admin
        .post("/signin/admin", &[("csrf", &csrf), ("admin_token", "nope")])
        .await;
    assert_eq!(wrong.status, 401);
    // (maud leaves ' as it is in text: only &, <, > and " need escaping there.)
    assert!(wrong.body.contains("not bb2tc's admin token"));
    let csrf = wrong.csrf();
    let page = admin
        .post(
            "/signin/admin",
            &[
                ("csrf", &csrf),
                ("admin_token", crate::support::ADMIN_TOKEN),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    let page = admin.get("/").await;
    assert!(
        page.body
            .contains("Signed in as <strong>administrator</strong>")
    );
    assert!(page.body.contains("<td>jdoe <span"), "{}", page.body);
    assert!(page.body.contains("<td>mallory <span"));
    let filtered = admin.get("/?user=MALLORY").await;
    assert!(filtered.body.contains("<td>mallory <span"));
    assert!(!filtered.body.contains("<td>jdoe <span"));
    // Admins do not add tokens on the page.
    let added = admin
        .post(
            "/tokens",
            &[
                ("csrf", &filtered.csrf()),
                ("teamcity", "main"),
                ("token", "tc-jdoe"),
            ],
        )
        .await;
    assert_eq!(added.status, 403);

    let mallory_token = world
        .api_tokens()
        .await
        .into_iter()
        .find(|t| t["user"] == "mallory")
        .unwrap();
    let deleted = admin
        .post(
            &format!("/tokens/{}/delete", mallory_token["id"].as_str().unwrap()),
            &[("csrf", &filtered.csrf())],
        )
        .await;
    assert_eq!(deleted.status, 303);
    let left = world.api_tokens().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["user"], "jdoe");
}

#[tokio::test]
async fn sessions_survive_a_restart_and_end_at_sign_out() {
    let world = PageWorld::start("").await;
    let mut browser = world.client();
    browser.sign_in_dc("bb-jdoe").await;
    let PageWorld {
        app,
        teamcity,
        bitbucket,
    } = world;
    let config_teamcity = teamcity.url.clone();
    let (temp, store_dir) = app.stop().await;
    // Same config, same store, new process state.
    let restarted = crate::support::TestApp::spawn_on(
        &restart_config(
            &bitbucket.url,
            &config_teamcity,
            crate::support::ADMIN_TOKEN,
        ),
        &store_dir,
    )
    .await;
    browser.base = restarted.url.clone();
    let page = browser.get("/").await;
    assert_eq!(page.status, 200, "the session survived the restart");
    assert!(page.body.contains("Jane Doe (jdoe) on dc"));

    let session = browser.cookies["__Host-bb2tc_session"].clone();
    let out = browser.post("/signout", &[("csrf", &page.csrf())]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location.as_deref(), Some("/signin"));
    assert!(
        out.set_cookie("__Host-bb2tc_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    // The old cookie is worthless now, even if a browser kept it.
    let mut replay = PageClient::new(&restarted.url);
    replay
        .cookies
        .insert("__Host-bb2tc_session".into(), session);
    assert_eq!(replay.get("/").await.status, 303);
    restarted.stop().await;
    drop(temp);
}

fn restart_config(bitbucket: &str, teamcity: &str, admin_token: &str) -> String {
    format!(
        r#"
[admin]
token = "{admin_token}"

[[bitbucket]]
id = "dc"
kind = "datacenter"
secrets = ["s"]
url = "{bitbucket}"

[[teamcity]]
id = "main"
url = "{teamcity}"
"#
    )
}

#[tokio::test]
async fn bad_input_on_the_page_paths_gets_a_clear_4xx() {
    let world = PageWorld::start("sign_in_attempts_per_minute = 1000").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    let session = format!(
        "__Host-bb2tc_session={}",
        jdoe.cookies["__Host-bb2tc_session"]
    );
    let url = |path: &str| format!("{}{path}", world.app.url);
    let http = &reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        // A form far over the limit.
        (
            http.post(url("/tokens"))
                .header("cookie", &session)
                .header("content-type", form)
                .body(format!("token={}", "a".repeat(100_000))),
            413,
        ),
        // Not UTF-8, broken percent-encoding.
        (
            http.post(url("/tokens"))
                .header("cookie", &session)
                .header("content-type", form)
                .body(vec![0xff, b'=', b'%', b'z', 0xfe]),
            403,
        ),
        // A token longer than any TeamCity token, with a valid CSRF value.
        (
            http.post(url("/tokens")).header("cookie", &session).form(&[
                ("csrf", jdoe.get("/").await.csrf().as_str()),
                ("teamcity", "main"),
                ("token", &"t".repeat(5000)),
            ]),
            400,
        ),
        (
            http.post(url("/tokens")).header("cookie", &session).form(&[
                ("csrf", jdoe.get("/").await.csrf().as_str()),
                ("teamcity", "nope"),
                ("token", "x"),
            ]),
            400,
        ),
        // Odd cookies and sessions.
        (
            http.get(url("/"))
                .header("cookie", "__Host-bb2tc_session=%%%; ;;=;"),
            303,
        ),
        (
            http.get(url("/")).header(
                "cookie",
                format!("__Host-bb2tc_session={}", "x".repeat(5000)),
            ),
            303,
        ),
        // OAuth callbacks with nothing, or with junk.
        (http.get(url("/oauth/callback")), 403),
        (http.get(url("/oauth/callback?state=%ff%fe&code=")), 403),
        (http.get(url("/signin/oauth/%00nope")), 404),
        (
            http.post(url("/signin/token"))
                .header("content-type", form)
                .body("source=dc"),
            403,
        ),
        (http.delete(url("/tokens/x/delete")), 405),
    ];
    for (i, (request, status)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "case {i}");
    }
    // Nothing was stored by any of it, and the page still works.
    assert!(world.api_tokens().await.is_empty());
    assert_eq!(jdoe.get("/").await.status, 200);
}

#[tokio::test]
async fn no_credential_or_session_id_in_debug_logs_or_store_files() {
    const BITBUCKET_TOKEN: &str = "SENSITIVE-BITBUCKET-PAT-0123";
    const TEAMCITY_TOKEN: &str = "SENSITIVE-TEAMCITY-TOKEN-4567";
    let teamcity = FakeTeamCity::start().await;
    teamcity.add_token(TEAMCITY_TOKEN, "sam");
    let bitbucket = FakeBitbucket::start().await;
    bitbucket.add_account(Account::datacenter("sam", 9, "Sam"), BITBUCKET_TOKEN);
    bitbucket.consent_as(Some("sam"));
    let dir = tempfile::tempdir().unwrap();
    let (config_path, store) = crate::support::write_process_config(
        dir.path(),
        &page_config(&bitbucket.url, &teamcity.url, ""),
    );
    let bridge = process::Bridge::start(&config_path, "export RUST_LOG=debug");

    let mut browser = PageClient::new(&bridge.url);
    browser.sign_in_dc(BITBUCKET_TOKEN).await;
    let pasted_session = browser.cookies["__Host-bb2tc_session"].clone();
    assert_eq!(browser.add_token("main", TEAMCITY_TOKEN).await.status, 303);
    let page = browser.get("/").await;
    assert!(!page.body.contains(TEAMCITY_TOKEN));
    let mut oauth = PageClient::new(&bridge.url);
    let start = oauth.get("/signin/oauth/dc").await;
    let consent = oauth.get(&start.location.unwrap()).await;
    assert_eq!(oauth.get(&consent.location.unwrap()).await.status, 200);
    let oauth_session = oauth.cookies["__Host-bb2tc_session"].clone();

    let (status, logged) = bridge.terminate_and_log();
    assert!(status.success());
    assert!(logged.contains("DEBUG"), "debug logging was on");
    assert!(
        logged.contains("signed in with Bitbucket (OAuth)"),
        "{logged}"
    );
    // The fake's OAuth access tokens all start with "oauth-".
    for secret in [
        BITBUCKET_TOKEN,
        TEAMCITY_TOKEN,
        "oauth-",
        &pasted_session,
        &oauth_session,
    ] {
        assert!(!logged.contains(secret), "{secret} is in the log");
    }
    crate::support::assert_no_file_holds(
        &store,
        &[
            BITBUCKET_TOKEN,
            TEAMCITY_TOKEN,
            "oauth-",
            &pasted_session,
            &oauth_session,
        ],
    );
}

#[tokio::test]
async fn replacing_the_admin_token_ends_admin_sessions() {
    let world = PageWorld::start("").await;
    let mut admin = world.client();
    let page = admin.sign_in_admin(crate::support::ADMIN_TOKEN).await;
    assert_eq!(page.status, 303);
    assert_eq!(admin.get("/").await.status, 200);
    let PageWorld {
        app,
        teamcity,
        bitbucket,
    } = world;
    let (temp, store_dir) = app.stop().await;
    let config = restart_config(&bitbucket.url, &teamcity.url, "a-new-admin-token");
    let restarted = crate::support::TestApp::spawn_on(&config, &store_dir).await;
    admin.base = restarted.url.clone();
    let page = admin.get("/").await;
    assert_eq!(page.status, 303, "the old admin token's session is void");
    assert_eq!(page.location.as_deref(), Some("/signin"));
    restarted.stop().await;
    drop(temp);
}

#[tokio::test]
async fn tokens_registered_under_a_users_other_key_are_theirs_too() {
    let world = PageWorld::start("").await;
    // An admin registered tokens under the Data Center slug and the Cloud account id, which
    // webhooks match as well (SPEC §1).
    let muller = world
        .app
        .register_token("dc", "j_müller", "main", "tc-jdoe")
        .await;
    let ada = world
        .app
        .register_token("cloud", "5f0", "main", "tc-ada")
        .await;

    let mut browser = world.client();
    browser.sign_in_dc("bb-muller").await;
    let page = browser.get("/").await;
    assert!(
        page.body.contains(muller["id"].as_str().unwrap()),
        "{}",
        page.body
    );
    assert!(!page.body.contains(ada["id"].as_str().unwrap()));
    let deleted = browser
        .post(
            &format!("/tokens/{}/delete", muller["id"].as_str().unwrap()),
            &[("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(deleted.status, 303);

    let mut cloud = world.client();
    let page = cloud.sign_in_cloud("ada@example.com", "bb-cloud-ada").await;
    assert_eq!(page.status, 303);
    assert!(
        cloud
            .get("/")
            .await
            .body
            .contains(ada["id"].as_str().unwrap())
    );

    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    let page = jdoe.get("/").await;
    assert!(page.body.contains("No tokens yet."), "{}", page.body);
    let remaining = world.api_tokens().await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["user"], "5f0");
}

#[tokio::test]
async fn token_checks_are_limited_per_user_so_teamcity_is_not_flooded() {
    let world = PageWorld::start("").await;
    let mut jdoe = world.client();
    jdoe.sign_in_dc("bb-jdoe").await;
    for _ in 0..10 {
        assert_eq!(jdoe.add_token("main", "tc-guess").await.status, 422);
    }
    let limited = jdoe.add_token("main", "tc-jdoe").await;
    assert_eq!(limited.status, 429);
    assert!(limited.body.contains("Wait a minute"));
    let checks = |path: &str| {
        world
            .teamcity
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .count()
    };
    assert_eq!(
        checks("/app/rest/users/current"),
        10,
        "the 11th never reached TeamCity"
    );
    // Another user is not held up.
    let mut mallory = world.client();
    mallory.sign_in_dc("bb-mallory").await;
    assert_eq!(mallory.add_token("main", "tc-mallory").await.status, 303);
}
