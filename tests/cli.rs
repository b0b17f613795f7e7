//! `switchyard check`: every file in conf/ passes, and each kind of error is reported with its
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! YAML path, all of them at once, with a non-zero exit.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn check(path: &std::path::Path) -> (bool, String, String) {
    // conf/fleet.yaml names the variable holding the Redis password; check reads it.
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .env("SWITCHYARD_REDIS_PASSWORD", "test")
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
            r#"pools.llama-8b.balance: "random_guess" is not one of: weighted_round_robin, p2c_ewma, least_load, consistent_hash, prefix_aware"#,
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

#[test]
fn check_refuses_route_loops_unknown_targets_and_bad_regexes_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        r#"
pools:
  p:
    model: served
    servers:
      - url: http://127.0.0.1:8001
models:
  plain:
    pool: p
  a:
    route:
      - when: {regex: '(?i)\bsummari[sz]e('}
        to: plain
      - to: b
  b:
    route:
      - when: {keywords: [x]}
        to: coder
      - to: a
"#,
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("models."))
        .collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].starts_with("models.a.route[0].when.regex: not a valid regular expression"));
    assert_eq!(
        lines[1],
        r#"models.a.route[1].to: "b" is a virtual model; virtual models route only to models served by pools ("b" routes back to "a": a loop)"#
    );
    assert_eq!(lines[2], r#"models.b.route[0].to: no model named "coder""#);
    assert_eq!(
        lines[3],
        r#"models.b.route[1].to: "a" is a virtual model; virtual models route only to models served by pools ("a" routes back to "b": a loop)"#
    );
}

#[test]
fn check_names_unknown_classifiers_labels_and_models_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("classifiers.yaml");
    std::fs::write(
        &path,
        r#"
pools:
  p: {model: served, servers: [{url: "http://127.0.0.1:8001"}]}
models:
  plain: {pool: p}
  auto:
    sticky: conversation
    switch_confidence: 1.5
    route:
      - when: {class: {task: code, shape: round}}
        to: plain
      - when: {class: {task: [math, poetry]}}
        to: plain
      - to: plain
classifiers:
  task:
    method: ensemble
    labels:
      code: {examples: ["fix my loop"]}
      math: {examples: []}
    embedding: {model: embed-small}
    llm: {model: auto, max_tokens: 0}
    ensemble: {lexical: 1, llm: -2, vibes: 1}
    fallback: chat
    scope: last_user
    turns: 3
    budget: soon
"#,
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("models.") || l.starts_with("classifiers."))
        .collect();
    let expected = [
        "models.auto.route[0].when.class.shape: no classifier named \"shape\"",
        "models.auto.route[1].when.class.task[1]: \"poetry\" is not a label of task (code, math)",
        "models.auto.switch_confidence: 1.5 is not within 0..=1",
        "classifiers.task.labels.math.examples: needs at least one example",
        "classifiers.task.embedding.model: no model or alias named \"embed-small\"",
        "classifiers.task.llm.max_tokens: must be greater than 0",
        "classifiers.task.llm.model: \"auto\" is a virtual model; a classifier calls a model served by a pool",
        "classifiers.task.ensemble.llm: must be 0 or more",
        "classifiers.task.ensemble.vibes: \"vibes\" is not one of: lexical, embedding, llm",
        "classifiers.task.fallback: \"chat\" is not one of its labels",
        "classifiers.task.turns: applies to `scope: conversation` only",
    ];
    for want in expected {
        assert!(lines.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("classifiers.task.budget: \"soon\" is not a duration")),
        "{stderr}"
    );
}

/// `switchyard route` with `stdin` as the request; exit code, stdout, stderr.
fn route(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .arg("route")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const ROUTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/router.yaml");

#[test]
fn route_prints_each_rule_tried_and_the_decision_without_a_socket() {
    // conf/router.yaml names servers on 10.0.0.x that do not exist here: nothing is contacted.
    let (code, out, err) = route(
        &["-c", ROUTER],
        r#"{"model":"auto","messages":[{"role":"user","content":"my rust code segfaults"}]}"#,
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(r#"request: model "auto" (virtual), chat/completions"#),
        "{out}"
    );
    assert_eq!(lines[1], "rule  1  when tools → qwen-2.5-72b: not matched");
    assert_eq!(lines[2], "           ✗ tools: tools absent");
    assert_eq!(lines[5], "rule  3  when keywords → coder: matched");
    assert_eq!(
        lines[6],
        r#"           ✓ keywords: keyword "rust" in the last user message"#
    );
    assert!(
        out.contains(
            "rule  6  when default → best by price of [llama-3.1-8b, qwen-2.5-72b]: not reached"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "decision: coder (x-switchyard-route: auto#3:keywords)\nchain: coder (pool coder)\n"
        ),
        "{out}"
    );

    // A tenant and a header, and candidates with their prices.
    let (code, out, _) = route(
        &["-c", ROUTER, "--tenant", "internal", "-H", "x-team: docs"],
        r#"{"model":"router","messages":[{"role":"user","content":"hello"}],"max_tokens":100}"#,
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains(r#"request: model "auto" as "router""#),
        "{out}"
    );
    assert!(out.contains("candidates (best first):"), "{out}");
    let best = out.lines().find(|l| l.starts_with("  → ")).unwrap();
    assert!(
        best.contains("llama-3.1-8b") && best.contains("llama-8b") && best.contains("8192"),
        "{best}"
    );
    assert!(
        out.contains("decision: llama-3.1-8b (x-switchyard-route: auto#6:price=llama-3.1-8b)"),
        "{out}"
    );

    // JSON, as /admin/route answers.
    let (code, out, _) = route(
        &["-c", ROUTER, "--json"],
        r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
    );
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["decision"]["route"], "auto#1:tools");
    assert_eq!(v["rules"][0]["when"][0]["holds"], true);
}

#[test]
fn route_exits_1_with_the_refusal_and_2_on_bad_input() {
    let long = format!(
        r#"{{"model":"qwen-2.5-72b","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(200_000)
    );
    let (code, out, _) = route(&["-c", ROUTER], &long);
    assert_eq!(code, Some(1));
    assert!(out.contains(r#""code":"context_length_exceeded""#), "{out}");
    let (code, out, _) = route(&["-c", ROUTER], r#"{"model":"gpt-9"}"#);
    assert_eq!(code, Some(1));
    assert!(out.contains("model_not_found"), "{out}");
    let (code, _, err) = route(&["-c", ROUTER, "--tenant", "ghost"], "{}");
    assert_eq!(code, Some(2));
    assert!(err.contains("no tenant"), "{err}");
}

/// `run` resolves every server's host at start; `check` refuses what `run` would.
#[test]
fn check_refuses_a_server_host_that_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dns.yaml");
    std::fs::write(
        &path,
        "pools:\n  p:\n    model: m\n    servers:\n      - url: http://127.0.0.1:8001\n      - url: http://no-such-host.invalid:8000\nmodels:\n  m:\n    pool: p\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        r#"pools.p.servers[1].url: cannot resolve host "no-such-host.invalid""#
    );
}

/// A build without the `tls` feature refuses a config that asks for TLS, and says how to get it.
#[cfg(not(feature = "tls"))]
#[test]
fn a_build_without_tls_refuses_a_tls_config_and_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nserver:\n  tls: {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\npools:\n  p:\n    model: m\n    servers:\n      - url: https://127.0.0.1:8001\nmodels:\n  m:\n    pool: p\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.tls: this build has no TLS: build with `--features tls`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pools.p.tls.ca_file: this build has no TLS"),
        "{stderr}"
    );
}
