//! A minimal browser for HTTP-level tests of the token page: keeps cookies by name (as a
//! browser would for one site), follows no redirects, and finds form values in pages.

use std::collections::HashMap;

/// One answer, with the `Set-Cookie` headers it carried.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Page {
    /// The first `csrf` form value on the page.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self
            .body
            .find(marker)
            .expect("the page has a form with csrf")
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    /// The `Set-Cookie` header for cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }
}

/// A cookie-keeping client for one bb2tc.
pub struct PageClient {
    pub base: String,
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

impl PageClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    /// `GET` of a bb2tc path or an absolute URL (e.g. the fake Bitbucket's).
    pub async fn get(&mut self, path_or_url: &str) -> Page {
        let url = self.url(path_or_url);
        let request = self.http.get(url);
        self.send(request).await
    }

    /// `POST` of a form.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let url = self.url(path);
        let request = self.http.post(url).form(fields);
        self.send(request).await
    }

    /// Signs in with a pasted Data Center token and checks that it worked.
    pub async fn sign_in_dc(&mut self, token: &str) {
        let csrf = self.get("/signin").await.csrf();
        let page = self
            .post(
                "/signin/token",
                &[("csrf", &csrf), ("source", "dc"), ("token", token)],
            )
            .await;
        assert_eq!(page.status, 303, "sign-in failed: {}", page.body);
        assert!(self.cookies.contains_key("__Host-bb2tc_session"));
    }

    /// Signs in to the Cloud source with an API token and email; returns the answer.
    pub async fn sign_in_cloud(&mut self, email: &str, token: &str) -> Page {
        let csrf = self.get("/signin").await.csrf();
        let fields = [
            ("csrf", csrf.as_str()),
            ("source", "cloud"),
            ("email", email),
            ("token", token),
        ];
        self.post("/signin/token", &fields).await
    }

    /// Signs in with an admin token; returns the answer.
    pub async fn sign_in_admin(&mut self, admin_token: &str) -> Page {
        let csrf = self.get("/signin").await.csrf();
        self.post(
            "/signin/admin",
            &[("csrf", &csrf), ("admin_token", admin_token)],
        )
        .await
    }

    /// Adds a TeamCity token on the page; returns the answer.
    pub async fn add_token(&mut self, server: &str, token: &str) -> Page {
        let csrf = self.get("/").await.csrf();
        self.post(
            "/tokens",
            &[("csrf", &csrf), ("teamcity", server), ("token", token)],
        )
        .await
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = if cookie.is_empty() {
            request
        } else {
            request.header("cookie", cookie)
        };
        let response = request.send().await.expect("request sent");
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        for set in &set_cookies {
            let pair = set.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || set.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            headers: response.headers().clone(),
            set_cookies,
            body: response.text().await.unwrap_or_default(),
        }
    }
}
