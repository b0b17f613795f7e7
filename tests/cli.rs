//! `switchyard check`: every file in conf/ passes, and each kind of error is reported with its
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! YAML path, all of them at once, with a non-zero exit.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn check(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_shipped_config_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok ("), "{stdout}");
            n += 1;
        }
    }
    assert!(n >= 2, "conf/ should hold switchyard.yaml and demo.yaml");
}

#[test]
fn check_lists_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
pools:
  llama-8b:
    model: meta-llama/Llama-3.1-8B-Instruct
    balance: random_guess
    servers:
      - url: http://127.0.0.1:8001
      - url: http://127.0.0.1:8002
        weight: 0
models:
  smart:
    pool: qwen
"#,
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            r#"pools.llama-8b.balance: "random_guess" is not one of: weighted_round_robin, p2c_ewma, least_load, consistent_hash"#,
            "pools.llama-8b.servers[1].weight: must be greater than 0",
            r#"models.smart.pool: no pool named "qwen""#,
        ]
    );
}

#[test]
fn check_reports_unknown_fields_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:8080\nlisten_port: 9\n").unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(stderr.contains("unknown field `listen_port`"), "{stderr}");
    let (ok, _, stderr) = check(&dir.path().join("missing.yaml"));
    assert!(!ok);
    assert!(stderr.contains("cannot read"), "{stderr}");
}
