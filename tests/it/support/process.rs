//! The real `bb2tc` binary as a child process, for tests that kill it or limit its resources.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `bb2tc serve`.
pub struct Bridge {
    child: Child,
    pub url: String,
}

impl Bridge {
    /// Starts `bb2tc serve --config <config>` through `sh -c "<prelude>; exec bb2tc …"`
    /// (e.g. a `ulimit`), and waits for its "bb2tc ready" log line to learn the port.
    pub fn start(config: &Path, prelude: &str) -> Self {
        let script = format!("{prelude}\nexec \"$0\" serve --config \"$1\"",);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_bb2tc"))
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bb2tc starts");
        let stderr = child.stderr.take().unwrap();
        let (ready, wait) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("bb2tc ready")
                    && let Some(addr) = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                {
                    let _ = ready.send(format!("http://{addr}"));
                }
            }
        });
        let url = wait
            .recv_timeout(Duration::from_secs(20))
            .expect("bb2tc became ready");
        Self { child, url }
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
