//! A real PostgreSQL for the tests of that backend: the server `.ci/run` started
//! (`BB2TC_TEST_DATABASE_URL`), or else a throw-away cluster under a temp dir started here
//! from Debian's `postgresql` (as the `postgres` user when run as root: PostgreSQL refuses
//! root), listening on 127.0.0.1 only and stopped when the test process ends. Each test gets
//! a database of its own.
//!
//! Without PostgreSQL the tests skip with a notice; `BB2TC_REQUIRE_POSTGRES=1` (set by
//! `.ci/run`) makes them fail instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static SERVER: OnceLock<Option<String>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty database's URL; `None` (with a notice) when there is no PostgreSQL.
pub async fn database(test: &str) -> Option<String> {
    let server = SERVER.get_or_init(server).clone();
    let Some(server) = server else {
        assert!(
            std::env::var("BB2TC_REQUIRE_POSTGRES").ok().as_deref() != Some("1"),
            "BB2TC_REQUIRE_POSTGRES=1 but no PostgreSQL could be started (see tests/it/support/postgres.rs)"
        );
        eprintln!(
            "SKIPPED {test}: no PostgreSQL (install Debian's postgresql, or set BB2TC_TEST_DATABASE_URL)"
        );
        return None;
    };
    let name = format!(
        "bb2tc_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::SeqCst)
    );
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a test database is created");
    drop(client);
    let _ = driver.await;
    Some(with_database(&server, &name))
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

/// The server to create databases in.
fn server() -> Option<String> {
    if let Ok(url) = std::env::var("BB2TC_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return Some(url);
    }
    let bin = pg_bin()?;
    let dir = std::env::temp_dir().join(format!("bb2tc-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let as_root = is_root();
    if as_root {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .ok()?;
    }
    let data = dir.join("data");
    let ok = run_as_postgres(
        as_root,
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str()?,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ],
    );
    if !ok {
        eprintln!("initdb failed");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c shared_buffers=64MB",
        dir.display()
    );
    let log = dir.join("log");
    let ok = run_as_postgres(
        as_root,
        &bin.join("pg_ctl"),
        &[
            "-D",
            data.to_str()?,
            "-o",
            &options,
            "-l",
            log.to_str()?,
            "-w",
            "start",
        ],
    );
    if !ok {
        eprintln!(
            "pg_ctl start failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        return None;
    }
    stop_when_gone(as_root, &bin, &data, &dir);
    Some(format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
}

/// Debian's PostgreSQL binaries, newest version first.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run_as_postgres(as_root: bool, program: &Path, args: &[&str]) -> bool {
    let mut command = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A watchdog that stops the cluster and removes it once this test process is gone.
fn stop_when_gone(as_root: bool, bin: &Path, data: &Path, dir: &Path) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_root {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
