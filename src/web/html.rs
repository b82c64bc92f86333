//! The token page's HTML, rendered on the server: plain forms, no script, every value escaped.

use crate::config::{Config, SourceKind};
use crate::store::{Principal, TokenInfo, TokenStatus};

/// The stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("style.css");
/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/static/bb2tc.css";

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A message shown above the page's content.
#[derive(Debug, Clone)]
pub enum Banner {
    /// Something worked.
    Notice(String),
    /// Something failed; says what to do.
    Error(String),
}

fn banner(banner: Option<&Banner>) -> String {
    match banner {
        None => String::new(),
        Some(Banner::Notice(text)) => {
            format!(r#"<p class="notice" role="status">{}</p>"#, escape(text))
        }
        Some(Banner::Error(text)) => {
            format!(r#"<p class="error" role="alert">{}</p>"#, escape(text))
        }
    }
}

/// A whole page. `who` and `csrf` are given when someone is signed in (for the sign-out form).
pub fn layout(title: &str, who: Option<(&Principal, &str)>, content: &str) -> String {
    document(title, "", who, content)
}

fn document(
    title: &str,
    head_extra: &str,
    who: Option<(&Principal, &str)>,
    content: &str,
) -> String {
    let header = match who {
        None => String::new(),
        Some((principal, csrf)) => format!(
            r#"<form class="who" method="post" action="/signout">
<span>Signed in as <strong>{}</strong></span>
<input type="hidden" name="csrf" value="{}">
<button type="submit">Sign out</button>
</form>"#,
            escape(&describe(principal)),
            escape(csrf)
        ),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · bb2tc</title>
<link rel="stylesheet" href="{STYLESHEET_PATH}">
{head_extra}</head>
<body>
<header><a class="brand" href="/">bb2tc</a>{header}</header>
<main>
{content}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
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
    let csrf = escape(csrf);
    let mut content = format!(
        "<h1>TeamCity access tokens</h1>\n{}\n<p>Sign in with your Bitbucket account to manage \
         the TeamCity access tokens bb2tc uses to start builds as you when you push.</p>\n",
        banner(message)
    );
    for source in &config.sources {
        let Some(url) = &source.url else { continue };
        let id = escape(source.id.as_str());
        let product = match source.kind {
            SourceKind::DataCenter => "Bitbucket Data Center",
            SourceKind::Cloud => "Bitbucket Cloud",
        };
        content.push_str(&format!(
            r#"<section class="source" aria-labelledby="source-{id}">
<h2 id="source-{id}">{product} <span class="muted">({id} · {url})</span></h2>
"#,
            url = escape(url.as_str().trim_end_matches('/')),
        ));
        if source.oauth_client_id.is_some() {
            content.push_str(&format!(
                r#"<p><a class="button primary" href="/signin/oauth/{id}">Sign in with Bitbucket</a></p>
"#
            ));
        }
        let (how, email) = match source.kind {
            SourceKind::DataCenter => (
                "a personal HTTP access token (Bitbucket: <em>Manage account → HTTP access \
                 tokens</em>; read permissions are enough)",
                String::new(),
            ),
            SourceKind::Cloud => (
                "an Atlassian API token with your account's email (<em>Atlassian account → \
                 Security → API tokens</em>)",
                format!(
                    r#"<label for="email-{id}">Email</label>
<input id="email-{id}" name="email" type="email" autocomplete="username" required>
"#
                ),
            ),
        };
        content.push_str(&format!(
            r#"<details{open}>
<summary>Sign in with a Bitbucket token</summary>
<form method="post" action="/signin/token" class="stack">
<p class="muted">Paste {how}. bb2tc uses it once to learn who you are and does not keep it.</p>
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="source" value="{id}">
{email}<label for="token-{id}">Bitbucket token</label>
<input id="token-{id}" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button>
</form>
</details>
</section>
"#,
            open = if source.oauth_client_id.is_none() {
                " open"
            } else {
                ""
            },
        ));
    }
    if !config.sources.iter().any(|s| s.url.is_some()) {
        content.push_str(
            "<p class=\"error\">No Bitbucket source has a <code>url</code> in bb2tc's \
             configuration, so users cannot sign in yet. Ask your build engineers.</p>\n",
        );
    }
    content.push_str(&format!(
        r#"<details class="admin">
<summary>Administrator</summary>
<form method="post" action="/signin/admin" class="stack">
<input type="hidden" name="csrf" value="{csrf}">
<label for="admin-token">Admin token</label>
<input id="admin-token" name="admin_token" type="password" autocomplete="off" required>
<button type="submit">Sign in as administrator</button>
</form>
</details>
"#
    ));
    layout("Sign in", None, &content)
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
}

/// The token page.
pub fn tokens_page(config: &Config, view: &TokensView<'_>) -> String {
    let csrf = escape(view.csrf);
    let admin = matches!(view.principal, Principal::Admin { .. });
    let mut content = format!("<h1>TeamCity access tokens</h1>\n{}\n", banner(view.banner));
    if admin {
        content.push_str(&format!(
            r#"<p>All users' tokens. Users add their own after signing in with Bitbucket; scripts use <code>bb2tc token add</code>.</p>
<form method="get" action="/" class="inline" role="search">
<label for="user-filter">User</label>
<input id="user-filter" name="user" value="{}">
<button type="submit">Filter</button>
</form>
"#,
            escape(view.user_filter.unwrap_or(""))
        ));
    } else {
        content.push_str(&add_form(config, &csrf));
    }
    content.push_str(&token_table(view.tokens, &csrf, admin));
    layout(
        "TeamCity access tokens",
        Some((view.principal, view.csrf)),
        &content,
    )
}

fn add_form(config: &Config, csrf: &str) -> String {
    let options: String = config
        .servers
        .iter()
        .map(|s| {
            format!(
                r#"<option value="{}">{}</option>"#,
                escape(s.id.as_str()),
                escape(s.base_url())
            )
        })
        .collect();
    format!(
        r#"<p>bb2tc starts TeamCity builds as you when you push. For that it needs an access token of yours for each TeamCity server: create one in TeamCity under <em>My Profile → Access Tokens</em> (TeamCity 2019.1 or later; an expiry date is optional) and add it here. A new token for the same server replaces the old one.</p>
<details class="add" open>
<summary>Add a token</summary>
<form method="post" action="/tokens" class="stack">
<input type="hidden" name="csrf" value="{csrf}">
<label for="teamcity">TeamCity</label>
<select id="teamcity" name="teamcity" required>{options}</select>
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit" class="primary">Create</button>
</form>
</details>
"#
    )
}

fn token_table(tokens: &[TokenInfo], csrf: &str, admin: bool) -> String {
    if tokens.is_empty() {
        return "<p class=\"empty\">No tokens yet.</p>\n".into();
    }
    let user_header = if admin {
        "<th scope=\"col\">User</th>"
    } else {
        ""
    };
    let mut rows = String::new();
    for token in tokens {
        let user_cell = if admin {
            format!(
                "<td>{} <span class=\"muted\">({})</span></td>",
                escape(&token.user),
                escape(token.source.as_str())
            )
        } else {
            String::new()
        };
        let (status, advice) = match token.status {
            TokenStatus::Valid => ("valid", ""),
            TokenStatus::Invalid => (
                "invalid",
                "TeamCity no longer accepts this token (expired or revoked). Create a new one \
                 in TeamCity and add it: it replaces this one.",
            ),
            TokenStatus::Unverified => ("unverified", "Not checked with TeamCity yet."),
        };
        rows.push_str(&format!(
            r#"<tr>
{user_cell}<td>{teamcity}</td>
<td>{teamcity_user}</td>
<td>{added}</td>
<td>{last}</td>
<td><span class="status {status}">{status}</span>{advice}</td>
<td><form method="post" action="/tokens/{id}/delete">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit" class="danger" aria-label="Delete the token for {teamcity}">Delete</button>
</form></td>
</tr>
"#,
            teamcity = escape(&token.teamcity),
            teamcity_user = escape(token.teamcity_user.as_deref().unwrap_or("—")),
            added = shown_time(Some(&token.added_at)),
            last = shown_time(token.last_authenticated_at.as_deref()),
            advice = if advice.is_empty() {
                String::new()
            } else {
                format!("<br><span class=\"advice\">{advice}</span>")
            },
            id = escape(&token.id),
        ));
    }
    format!(
        r#"<table>
<caption>Deleting a token only removes it from bb2tc; it remains in TeamCity until you revoke it there.</caption>
<thead><tr>{user_header}<th scope="col">TeamCity</th><th scope="col">TeamCity user</th><th scope="col">Date added</th><th scope="col">Last authenticated</th><th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
<tbody>
{rows}</tbody>
</table>
"#
    )
}

/// `2026-11-28T10:00:00Z` → `2026-11-28 10:00 UTC`; none → "never".
fn shown_time(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        None => "never".into(),
        Some(t) if t.len() >= 16 => format!("{} {} UTC", &t[..10], &t[11..16]),
        Some(t) => escape(t),
    }
}

/// A page for a failure that has no better place to be shown.
pub fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        None,
        &format!(
            "<h1>{}</h1>\n<p class=\"error\" role=\"alert\">{}</p>\n<p><a href=\"/\">Back to the token page</a></p>\n",
            escape(title),
            escape(message)
        ),
    )
}

/// After OAuth: a same-site step to the token page, so the browser sends the new
/// `SameSite=Strict` session cookie (it would not on a redirect that began at Bitbucket).
pub fn continue_page() -> String {
    document(
        "Signed in",
        "<meta http-equiv=\"refresh\" content=\"0;url=/\">\n",
        None,
        "<h1>Signed in</h1>\n<p><a class=\"button primary\" href=\"/\">Continue to your tokens</a></p>\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn times_are_shown_in_utc_minutes() {
        assert_eq!(
            shown_time(Some("2026-11-28T10:05:09Z")),
            "2026-11-28 10:05 UTC"
        );
        assert_eq!(shown_time(None), "never");
    }
}
