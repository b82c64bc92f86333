//! The real `bb2tc` binary as a child process, for tests that kill it or limit its resources.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// A running `bb2tc serve`.
pub struct Bridge {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Starts `bb2tc serve --config <config>` through `sh -c "<prelude>; exec bb2tc …"`
    /// (e.g. a `ulimit`; `BB2TC_ARGS` set there go before `serve`), and waits for its
    /// "bb2tc ready" log line to learn the port.
    pub fn start(config: &Path, prelude: &str) -> Self {
        // `BB2TC_BIN`: another build to start instead (benchmarks compare two commits).
        let binary =
            std::env::var("BB2TC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bb2tc").to_owned());
        Self::start_binary(&binary, config, prelude)
    }

    /// [`start`](Self::start) with the build at `binary`.
    pub fn start_binary(binary: &str, config: &Path, prelude: &str) -> Self {
        let script = format!("{prelude}\nexec \"$0\" ${{BB2TC_ARGS:-}} serve --config \"$1\"");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(binary)
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bb2tc starts");
        let stderr = child.stderr.take().unwrap();
        let (ready, wait) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let collected = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                drop(all);
                if line.contains("bb2tc ready")
                    && let Some(addr) = listen_address(&line)
                {
                    let _ = ready.send(format!("http://{addr}"));
                }
            }
        });
        let url = wait
            .recv_timeout(Duration::from_secs(20))
            .expect("bb2tc became ready");
        Self {
            child,
            url,
            log,
            reader: Some(reader),
        }
    }

    /// The child's process id (the benchmarks read its memory).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.terminate_and_log().0
    }

    /// SIGTERM; the exit status and everything it logged.
    pub fn terminate_and_log(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        // The log reader ends when the exited process's stderr closes.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }
}

/// The `listen` field of the "bb2tc ready" line, in text or JSON log format.
fn listen_address(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value["fields"]["listen"].as_str().map(str::to_owned);
    }
    let rest = line.split("listen=").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
