//! A real headless Chromium for the token page's end-to-end tests, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs).
//!
//! Without `chromedriver` the browser tests say so and skip, unless `BB2TC_REQUIRE_BROWSER`
//! is set (as `.ci/run` does), where a missing browser fails them. With
//! `BB2TC_SCREENSHOTS=<dir>` they save the README's screenshots there.

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A browser session with its own chromedriver and empty profile.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium; `None` (after saying why) when it is not installed and not required.
    pub async fn start() -> Option<Self> {
        let driver_path = std::env::var("BB2TC_CHROMEDRIVER").unwrap_or(CHROMEDRIVER.into());
        if !std::path::Path::new(&driver_path).exists() {
            if std::env::var_os("BB2TC_REQUIRE_BROWSER").is_some() {
                panic!("{driver_path} is missing: install chromium and chromium-driver");
            }
            eprintln!(
                "SKIPPED: {driver_path} is not installed (apt-get install chromium \
                 chromium-driver; .ci/run does)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser it starts goes with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("BB2TC_CHROMIUM").unwrap_or(CHROMIUM.into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-breakpad",
                    "--disable-crash-reporter", "--window-size=1100,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        // Wait until chromedriver answers: a WebDriver session asked for earlier fails, and
        // asking again after such a failure was seen to hang.
        let status = format!("{webdriver}/status");
        let mut ready = false;
        for _ in 0..200 {
            if reqwest::get(&status)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not come up on {webdriver}");
        // chromedriver is on loopback: plain HTTP, no TLS stack needed.
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| panic!("could not start a browser session: {e}"));
        Some(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Opens a URL.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The current URL's path.
    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits (up to 10 s) until the browser is at `path`: a click that submits a form returns
    /// before the browser has followed it.
    pub async fn wait_for_path(&self, path: &str) {
        for _ in 0..200 {
            if self.path().await == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the browser stayed at {} instead of {path}",
            self.path().await
        );
    }

    /// Waits for an element and returns its text.
    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    /// Waits (up to 10 s) until an element's text contains `needle`, and returns that text.
    /// After a submit the old page may still be shown, with an element of the same kind (the
    /// notice of the step before): this finds the element anew until the new page has it.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let mut seen = String::from("(no such element)");
        for _ in 0..200 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                // A page replaced between the find and the read makes the element stale.
                if let Ok(text) = element.text().await {
                    if text.contains(needle) {
                        return text;
                    }
                    seen = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css:?} never read {needle:?}; the last text was {seen:?}");
    }

    /// Waits (up to 10 s) for an element.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"))
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Types into a field.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.element(css).await.send_keys(text).await.unwrap();
    }

    /// Saves a screenshot as `<name>.png` when `BB2TC_SCREENSHOTS` names a directory.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("BB2TC_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.unwrap();
        let path = PathBuf::from(dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// Stops chromedriver and any browser it started (also when a test failed).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
