//! The token page's HTML, rendered on the server: plain forms, no script.
//!
//! Every page is a [maud] template: `html!` checks the markup at compile time and escapes
//! every interpolated value (nothing here uses `PreEscaped`), so a Bitbucket or TeamCity
//! value can never turn into markup.
//! (maud rather than askama: the templates stay Rust code beside the views they render,
//! typed and checked by the compiler, with no template files or runtime loading.)

use crate::config::{Config, SourceKind};
use crate::store::{Principal, TokenInfo, TokenStatus};
use maud::{DOCTYPE, Markup, html};

/// The stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("style.css");
/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/static/bb2tc.css";

/// A message shown above the page's content.
#[derive(Debug, Clone)]
pub enum Banner {
    /// Something worked.
    Notice(String),
    /// Something failed; says what to do.
    Error(String),
}

fn banner(banner: Option<&Banner>) -> Markup {
    html! {
        @match banner {
            None => {},
            Some(Banner::Notice(text)) => p.notice role="status" { (text) },
            Some(Banner::Error(text)) => p.error role="alert" { (text) },
        }
    }
}

/// A whole page. `who` and `csrf` are given when someone is signed in (for the sign-out form).
pub fn layout(title: &str, who: Option<(&Principal, &str)>, content: Markup) -> String {
    document(title, false, who, content)
}

fn document(
    title: &str,
    refresh_to_root: bool,
    who: Option<(&Principal, &str)>,
    content: Markup,
) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bb2tc" }
                link rel="stylesheet" href=(STYLESHEET_PATH);
                @if refresh_to_root {
                    meta http-equiv="refresh" content="0;url=/";
                }
            }
            body {
                header {
                    a.brand href="/" { "bb2tc" }
                    @if let Some((principal, csrf)) = who {
                        form.who method="post" action="/signout" {
                            span { "Signed in as " strong { (describe(principal)) } }
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
    .into_string()
}

/// "Jane Doe (jdoe) on dc" or "administrator".
pub fn describe(principal: &Principal) -> String {
    match principal {
        Principal::Admin { .. } => "administrator".into(),
        Principal::User {
            source,
            user,
            display_name,
            ..
        } if display_name.eq_ignore_ascii_case(user.as_str()) => format!("{user} on {source}"),
        Principal::User {
            source,
            user,
            display_name,
            ..
        } => format!("{display_name} ({user}) on {source}"),
    }
}

/// The sign-in page: per source, "Sign in with Bitbucket" (when OAuth is set up) and the
/// pasted-token form; then the administrator's form.
pub fn sign_in_page(config: &Config, csrf: &str, message: Option<&Banner>) -> String {
    let content = html! {
        h1 { "TeamCity access tokens" }
        (banner(message))
        p {
            "Sign in with your Bitbucket account to manage the TeamCity access tokens bb2tc \
             uses to start builds as you when you push."
        }
        @for source in &config.sources {
            @if let Some(url) = &source.url {
                (source_sign_in(source, url.as_str().trim_end_matches('/'), csrf))
            }
        }
        @if !config.sources.iter().any(|s| s.url.is_some()) {
            p.error {
                "No Bitbucket source has a " code { "url" } " in bb2tc's configuration, so \
                 users cannot sign in yet. Ask your build engineers."
            }
        }
        details.admin {
            summary { "Administrator" }
            form.stack method="post" action="/signin/admin" {
                input type="hidden" name="csrf" value=(csrf);
                label for="admin-token" { "Admin token" }
                input #admin-token name="admin_token" type="password" autocomplete="off" required;
                button type="submit" { "Sign in as administrator" }
            }
        }
    };
    layout("Sign in", None, content)
}

fn source_sign_in(source: &crate::config::Source, url: &str, csrf: &str) -> Markup {
    let id = source.id.as_str();
    let product = match source.kind {
        SourceKind::DataCenter => "Bitbucket Data Center",
        SourceKind::Cloud => "Bitbucket Cloud",
    };
    let how = match source.kind {
        SourceKind::DataCenter => html! {
            "a personal HTTP access token (Bitbucket: " em { "Manage account → HTTP access tokens" }
            "; read permissions are enough)"
        },
        SourceKind::Cloud => html! {
            "an Atlassian API token with your account's email ("
            em { "Atlassian account → Security → API tokens" } ")"
        },
    };
    html! {
        section.source aria-labelledby={ "source-" (id) } {
            h2 id={ "source-" (id) } { (product) " " span.muted { "(" (id) " · " (url) ")" } }
            @if source.oauth_client_id.is_some() {
                p { a.button.primary href={ "/signin/oauth/" (id) } { "Sign in with Bitbucket" } }
            }
            details open[source.oauth_client_id.is_none()] {
                summary { "Sign in with a Bitbucket token" }
                form.stack method="post" action="/signin/token" {
                    p.muted {
                        "Paste " (how) ". bb2tc uses it once to learn who you are and does not keep it."
                    }
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="source" value=(id);
                    @if source.kind == SourceKind::Cloud {
                        label for={ "email-" (id) } { "Email" }
                        input id={ "email-" (id) } name="email" type="email" autocomplete="username" required;
                    }
                    label for={ "token-" (id) } { "Bitbucket token" }
                    input id={ "token-" (id) } name="token" type="password" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
            }
        }
    }
}

/// What the token page shows.
pub struct TokensView<'a> {
    /// Who is signed in.
    pub principal: &'a Principal,
    /// The session's form value.
    pub csrf: &'a str,
    /// The tokens to list (already filtered to what this principal may see).
    pub tokens: &'a [TokenInfo],
    /// The admin's user filter, if any.
    pub user_filter: Option<&'a str>,
    /// A message to show.
    pub banner: Option<&'a Banner>,
    /// Recent builds: the user's, or (for the admin) everyone's.
    pub builds: &'a [crate::job::Job],
    /// The user's recent pushes that built nothing, and why.
    pub not_built: &'a [super::builds_view::NotBuilt],
}

/// The token page.
pub fn tokens_page(config: &Config, view: &TokensView<'_>) -> String {
    let admin = matches!(view.principal, Principal::Admin { .. });
    let content = html! {
        h1 { "TeamCity access tokens" }
        (banner(view.banner))
        @if admin {
            p {
                "All users' tokens. Users add their own after signing in with Bitbucket; \
                 scripts use " code { "bb2tc token add" } "."
            }
            form.inline method="get" action="/" role="search" {
                label for="user-filter" { "User" }
                input #user-filter name="user" value=(view.user_filter.unwrap_or(""));
                button type="submit" { "Filter" }
            }
        } @else {
            (add_form(config, view.csrf))
        }
        (token_table(view.tokens, view.csrf, admin))
        (super::builds_view::builds_section(view.builds, view.not_built, view.csrf, !admin))
    };
    layout(
        "TeamCity access tokens",
        Some((view.principal, view.csrf)),
        content,
    )
}

fn add_form(config: &Config, csrf: &str) -> Markup {
    html! {
        p {
            "bb2tc starts TeamCity builds as you when you push. For that it needs an access \
             token of yours for each TeamCity server: create one in TeamCity under "
            em { "My Profile → Access Tokens" }
            " (TeamCity 2019.1 or later; an expiry date is optional) and add it here. A new \
             token for the same server replaces the old one."
        }
        details.add open {
            summary { "Add a token" }
            form.stack method="post" action="/tokens" {
                input type="hidden" name="csrf" value=(csrf);
                label for="teamcity" { "TeamCity" }
                select #teamcity name="teamcity" required {
                    @for server in &config.servers {
                        option value=(server.id.as_str()) { (server.base_url()) }
                    }
                }
                label for="token" { "Access token" }
                input #token name="token" type="password" autocomplete="off" required;
                button.primary type="submit" { "Create" }
            }
        }
    }
}

fn token_table(tokens: &[TokenInfo], csrf: &str, admin: bool) -> Markup {
    if tokens.is_empty() {
        return html! { p.empty { "No tokens yet." } };
    }
    html! {
        table {
            caption {
                "Deleting a token only removes it from bb2tc; it remains in TeamCity until you \
                 revoke it there."
            }
            thead {
                tr {
                    @if admin { th scope="col" { "User" } }
                    th scope="col" { "TeamCity" }
                    th scope="col" { "TeamCity user" }
                    th scope="col" { "Date added" }
                    th scope="col" { "Last authenticated" }
                    th scope="col" { "Status" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                }
            }
            tbody {
                @for token in tokens {
                    (token_row(token, csrf, admin))
                }
            }
        }
    }
}

fn token_row(token: &TokenInfo, csrf: &str, admin: bool) -> Markup {
    let (status, advice) = match token.status {
        TokenStatus::Valid => ("valid", None),
        TokenStatus::Invalid => (
            "invalid",
            Some(
                "TeamCity no longer accepts this token (expired or revoked). Create a new one \
                 in TeamCity and add it: it replaces this one.",
            ),
        ),
        TokenStatus::Unverified => ("unverified", Some("Not checked with TeamCity yet.")),
    };
    html! {
        tr {
            @if admin {
                td { (token.user) " " span.muted { "(" (token.source.as_str()) ")" } }
            }
            td { (token.teamcity) }
            td { (token.teamcity_user.as_deref().unwrap_or("—")) }
            td { (shown_time(Some(&token.added_at))) }
            td { (shown_time(token.last_authenticated_at.as_deref())) }
            td {
                span class={ "status " (status) } { (status) }
                @if let Some(advice) = advice {
                    br;
                    span.advice { (advice) }
                }
            }
            td {
                form method="post" action={ "/tokens/" (token.id) "/delete" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" aria-label={ "Delete the token for " (token.teamcity) } { "Delete" }
                }
            }
        }
    }
}

/// `2026-11-28T10:00:00Z` → `2026-11-28 10:00 UTC`; none → "never".
fn shown_time(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        None => "never".into(),
        Some(t) => match (t.get(..10), t.get(11..16)) {
            (Some(day), Some(minute)) => format!("{day} {minute} UTC"),
            _ => t.to_owned(),
        },
    }
}

/// A page for a failure that has no better place to be shown.
pub fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to the token page" } }
        },
    )
}

/// After OAuth: a same-site step to the token page, so the browser sends the new
/// `SameSite=Strict` session cookie (it would not on a redirect that began at Bitbucket).
pub fn continue_page() -> String {
    document(
        "Signed in",
        true,
        None,
        html! {
            h1 { "Signed in" }
            p { a.button.primary href="/" { "Continue to your tokens" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SourceId, UserKey};

    #[test]
    fn values_from_outside_are_escaped_everywhere() {
        let principal = Principal::User {
            source: SourceId::new("dc"),
            user: UserKey::parse("<b>x</b>").unwrap(),
            aliases: vec![],
            display_name: "\"><script>alert(1)</script>".into(),
        };
        let page = layout("t<i>", Some((&principal, "c\"sv")), html! { p { "ok" } });
        assert!(
            !page.contains("<script>") && !page.contains("<b>x"),
            "{page}"
        );
        assert!(
            page.contains("&lt;script&gt;") && page.contains("c&quot;sv"),
            "{page}"
        );
        assert!(page.contains("<title>t&lt;i&gt; · bb2tc</title>"), "{page}");
        let error = error_page("<h1>", "a & b");
        assert!(error.contains("<h1>&lt;h1&gt;</h1>") && error.contains("a &amp; b"));
    }

    #[test]
    fn times_are_shown_in_utc_minutes() {
        assert_eq!(
            shown_time(Some("2026-11-28T10:05:09Z")),
            "2026-11-28 10:05 UTC"
        );
        assert_eq!(shown_time(None), "never");
        assert_eq!(shown_time(Some("ééééééééééé")), "ééééééééééé");
    }
}
