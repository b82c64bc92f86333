//! Reading the `Cookie` header and writing `Set-Cookie` for the token page's three cookies.

use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderValue};

/// The signed-in session (`SameSite=Strict`).
pub const SESSION: &str = "bb2tc_session";
/// The sign-in forms' CSRF value, before there is a session (`SameSite=Strict`).
pub const SIGN_IN: &str = "bb2tc_signin";
/// The OAuth `state`, binding Bitbucket's redirect back to the browser that started it.
/// `SameSite=Lax`: it must come along on the top-level navigation back from Bitbucket.
pub const OAUTH_STATE: &str = "bb2tc_oauth";

/// `SameSite` policy.
#[derive(Debug, Clone, Copy)]
pub enum SameSite {
    /// Never sent on cross-site requests.
    Strict,
    /// Sent on cross-site top-level navigations (GET).
    Lax,
}

/// The name a cookie has on the wire. With `Secure`, a prefix the browser enforces: `__Host-`
/// (only this origin over HTTPS can set it, for `Path=/`, no `Domain`) — so a sibling
/// subdomain or a plain-HTTP page cannot plant a sign-in cookie (login CSRF) — or, for the
/// OAuth state on its callback path, `__Secure-`. Without `Secure` browsers refuse both
/// prefixes, so the plain name is used.
pub fn wire_name(name: &str, secure: bool) -> String {
    match (secure, name) {
        (false, _) => name.to_owned(),
        (true, OAUTH_STATE) => format!("__Secure-{name}"),
        (true, _) => format!("__Host-{name}"),
    }
}

/// The value of cookie `name` (as [`wire_name`] spells it), if the request carries it.
pub fn get<'a>(headers: &'a HeaderMap, name: &str, secure: bool) -> Option<&'a str> {
    let name = wire_name(name, secure);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name.as_str())
        .map(|(_, value)| value.trim())
}

/// A `Set-Cookie` value: HttpOnly always; `Secure` unless configured off.
pub fn set(
    name: &str,
    value: &str,
    path: &str,
    max_age_secs: u64,
    same_site: SameSite,
    secure: bool,
) -> HeaderValue {
    let same_site = match same_site {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
    };
    let name = wire_name(name, secure);
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite={same_site}{secure}"
    );
    // Names and values are ours (base64url), so this cannot fail; an empty cookie is harmless.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` value that removes cookie `name`.
pub fn clear(name: &str, path: &str, secure: bool) -> HeaderValue {
    set(name, "", path, 0, SameSite::Strict, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_several_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; bb2tc_session=abc"));
        headers.append(COOKIE, HeaderValue::from_static("bb2tc_oauth=st"));
        assert_eq!(get(&headers, SESSION, false), Some("abc"));
        assert_eq!(get(&headers, OAUTH_STATE, false), Some("st"));
        assert_eq!(get(&headers, SIGN_IN, false), None);
    }

    #[test]
    fn secure_cookies_carry_a_prefix_and_unprefixed_ones_are_ignored() {
        let mut headers = HeaderMap::new();
        // Planted over plain HTTP or from a sibling domain: no prefix, not taken.
        headers.append(COOKIE, HeaderValue::from_static("bb2tc_signin=planted"));
        assert_eq!(get(&headers, SIGN_IN, true), None);
        headers.append(
            COOKIE,
            HeaderValue::from_static("__Host-bb2tc_signin=ours; __Secure-bb2tc_oauth=st"),
        );
        assert_eq!(get(&headers, SIGN_IN, true), Some("ours"));
        assert_eq!(get(&headers, OAUTH_STATE, true), Some("st"));
    }

    #[test]
    fn cookies_are_http_only_and_secure_by_default() {
        let value = set(SESSION, "v", "/", 60, SameSite::Strict, true);
        assert_eq!(
            value.to_str().unwrap(),
            "__Host-bb2tc_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        let state = set(OAUTH_STATE, "s", "/oauth/callback", 60, SameSite::Lax, true);
        assert!(
            state
                .to_str()
                .unwrap()
                .starts_with("__Secure-bb2tc_oauth=s; Path=/oauth/callback;")
        );
        let cleared = clear(SESSION, "/", false);
        assert_eq!(
            cleared.to_str().unwrap(),
            "bb2tc_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }
}
