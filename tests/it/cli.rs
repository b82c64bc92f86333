//! The real binary: `check-config` and `sign`.

use crate::support::*;
use std::process::Command;

fn bb2tc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bb2tc"))
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let output = bb2tc()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/bb2tc.toml"),
        ])
        .env_remove("BB2TC_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("dc (datacenter): webhook URL http://127.0.0.1:8080/hooks/bitbucket/dc"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route[0]: dc repositories PROJ/*"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        standard_config("http://127.0.0.1:1", "").replace("burst = 1000", "burst = 0\nratee = 1"),
    )
    .unwrap();
    let output = bb2tc()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("teamcity[0]") && stderr.contains("ratee"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        standard_config("http://127.0.0.1:1", "").replace("burst = 1000", "burst = 0"),
    )
    .unwrap();
    let output = bb2tc()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("teamcity[0] (id \"main\").burst: must be at least 1"),
        "{stderr}"
    );

    let output = bb2tc()
        .args(["check-config", "--config", "/nonexistent/bb2tc.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn sign_prints_the_published_signature() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bitbucket/cloud-push-branch-create-signed.json"
    );
    let output = bb2tc()
        .args(["sign", "--secret", CLOUD_SECRET, path])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
    );
}
