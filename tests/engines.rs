//! The engines the CI machine cannot run (vLLM, SGLang, TGI need GPUs) answer here as their
//! recorded `/metrics` and `/health` say they do (tests/fixtures/engines/), through the same
//! scraper and health probes as a live server: each pool reads its engine's load, KV usage only
//! where the engine reports it, and a server whose `/health` turns to 503 (loading, or its
//! engine dead) is taken out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::canned::{Answer, Canned};
use common::Gateway;
use serde_json::Value;

/// (engine, fixture, its `/health` body when serving, running + waiting, KV usage).
const ENGINES: [(&str, &str, &str, f64, Option<f64>); 5] = [
    ("vllm", "vllm-0.6.3-metrics.txt", "", 16.0, Some(0.6875)),
    ("vllm", "vllm-0.11-metrics.txt", "", 67.0, Some(0.8125)),
    ("sglang", "sglang-0.4-metrics.txt", "", 155.0, Some(0.41)),
    ("tgi", "tgi-3.x-metrics.txt", "", 33.0, None),
    (
        "llamacpp",
        "llamacpp-11434-metrics.txt",
        r#"{"status":"ok"}"#,
        3.0,
        None,
    ),
];

/// llama.cpp while it loads its model; the others answer an empty 503 when not serving.
const LLAMACPP_LOADING: &str =
    r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;

#[tokio::test]
async fn recorded_engines_are_read_and_probed_as_live_ones() {
    let health = Arc::new(AtomicU16::new(200));
    let mut servers = Vec::new();
    for (engine, fixture, ok_body, _, _) in ENGINES {
        let metrics = std::fs::read_to_string(format!(
            "{}/tests/fixtures/engines/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let health = health.clone();
        servers.push(
            Canned::start(move |_, path| match path {
                "/metrics" => Answer::new(200, "text/plain; version=0.0.4", metrics.as_str()),
                "/health" => match health.load(Ordering::Relaxed) {
                    200 => Answer::new(200, "application/json", ok_body),
                    s if engine == "llamacpp" => {
                        Answer::new(s, "application/json", LLAMACPP_LOADING)
                    }
                    s => Answer::new(s, "application/json", ""),
                },
                _ => Answer::new(404, "application/json", "{}"),
            })
            .await,
        );
    }
    let mut yaml = String::from("pools:\n");
    for (i, ((engine, ..), server)) in ENGINES.iter().zip(&servers).enumerate() {
        yaml.push_str(&format!(
            "  p{i}:\n    model: m{i}\n    engine: {engine}\n    balance: least_load\n    \
             engine_metrics:\n      interval: 100ms\n    health:\n      interval: 100ms\n      \
             unhealthy_after: 1\n      healthy_after: 1\n    panic_mode: false\n    servers:\n      - url: {}\n",
            server.url()
        ));
    }
    yaml.push_str("models:\n");
    for i in 0..ENGINES.len() {
        yaml.push_str(&format!("  m{i}:\n    pool: p{i}\n"));
    }
    let gw = Gateway::start(&yaml);

    let server = |v: &Value, i: usize| v["pools"][i]["servers"][0].clone();
    let v = every_server(&gw, |s| s["load"].is_number() && s["health"] == "healthy").await;
    for (i, (engine, fixture, _, load, kv)) in ENGINES.iter().enumerate() {
        let s = server(&v, i);
        assert_eq!(s["load"].as_f64(), Some(*load), "{engine} {fixture}: {s}");
        assert_eq!(s["kv_cache_usage"].as_f64(), *kv, "{engine} {fixture}: {s}");
    }
    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    let kv_gauges = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_kv_cache_usage{"))
        .count();
    assert_eq!(kv_gauges, 3, "{metrics}");

    // Loading, or the engine died: /health answers 503 and every server is out (no panic
    // mode here: these pools answer 503 rather than try servers health checks marked down).
    health.store(503, Ordering::Relaxed);
    every_server(&gw, |s| s["health"] == "unhealthy").await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            &serde_json::json!({
                "model": "m4", "messages": [{"role": "user", "content": "x"}]
            }),
        )
        .await;
    let v = common::openai_error(resp, 503).await;
    assert_eq!(v["error"]["code"], "no_healthy_upstream");
    // Serving again.
    health.store(200, Ordering::Relaxed);
    every_server(&gw, |s| s["health"] == "healthy").await;
}

/// `/admin/servers` once `want` holds for the one server of every pool (10 s at most).
async fn every_server(gw: &Gateway, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = common::get_json(&gw.admin_url("/admin/servers")).await;
        if v["pools"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| want(&p["servers"][0]))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "never as wanted: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
