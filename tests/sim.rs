//! The simulator as the tests and benchmarks rely on it: deterministic output, faults on
//! demand, vLLM metrics that reflect the prefix cache and the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, Sim};
use serde_json::{json, Value};

const MODEL: &str = "sim-model";

async fn complete(sim: &Sim, prompt: &str, fault: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/completions", sim.url()))
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": 8}));
    if let Some(f) = fault {
        req = req.header("x-sim-fault", f);
    }
    req.send().await.unwrap()
}

async fn text_of(sim: &Sim, prompt: &str) -> String {
    let v: Value = complete(sim, prompt, None).await.json().await.unwrap();
    v["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn equal_seeds_and_prompts_give_equal_answers() {
    let a = Sim::start(MODEL, &["--zero-delay", "--seed", "7"]);
    let b = Sim::start(MODEL, &["--zero-delay", "--seed", "7"]);
    let c = Sim::start(MODEL, &["--zero-delay", "--seed", "8"]);
    let (ta, tb, tc) = (
        text_of(&a, "hello").await,
        text_of(&b, "hello").await,
        text_of(&c, "hello").await,
    );
    assert_eq!(ta, tb);
    assert_ne!(ta, tc);
    assert_ne!(ta, text_of(&a, "another prompt").await);
}

#[tokio::test]
async fn status_fault_carries_retry_after_headers() {
    let sim = Sim::fast(MODEL);
    let resp = complete(
        &sim,
        "x",
        Some("status=429,retry_after=3,retry_after_ms=2500"),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(resp.headers()["retry-after-ms"], "2500");
    // The run-level fault applies to every request.
    let down = Sim::start(MODEL, &["--zero-delay", "--fault", "status=503"]);
    assert_eq!(complete(&down, "x", None).await.status(), 503);
}

#[tokio::test]
async fn refuse_and_die_after_cut_the_connection() {
    let sim = Sim::fast(MODEL);
    let err = client()
        .post(format!("{}/v1/completions", sim.url()))
        .header("x-sim-fault", "refuse")
        .json(&json!({"model": MODEL, "prompt": "x"}))
        .send()
        .await;
    assert!(err.is_err(), "refuse must not answer");
    // A server that dies has put the events before its death on the wire: each of many
    // attempts (tokens come at once here, so a lost write buffer would show) gets exactly two.
    for _ in 0..50 {
        let mut resp = client()
            .post(format!("{}/v1/completions", sim.url()))
            .header("x-sim-fault", "die_after=2")
            .json(&json!({"model": MODEL, "prompt": "x", "stream": true, "max_tokens": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        let end = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                other => break other,
            }
        };
        let body = String::from_utf8(body).unwrap();
        assert!(
            end.is_err(),
            "the stream must end in an error, got {body:?}"
        );
        assert_eq!(body.matches("data: ").count(), 2, "{body}");
    }
}

#[tokio::test]
async fn first_token_delay_holds_the_first_event() {
    let sim = Sim::fast(MODEL);
    let start = Instant::now();
    let resp = complete(&sim, "x", Some("first_token_delay_ms=300")).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn repeated_long_prompt_is_served_from_the_prefix_cache() {
    let sim = Sim::fast(MODEL);
    let prompt = "a shared system prompt. ".repeat(40); // 960 bytes = 240 tokens = 15 blocks
    let first: Value = complete(&sim, &prompt, None).await.json().await.unwrap();
    let second: Value = complete(&sim, &prompt, None).await.json().await.unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        240
    );
    assert_eq!(sim.metric("vllm:prefix_cache_hits_total").await, 240.0);
    assert_eq!(sim.metric("vllm:prefix_cache_queries_total").await, 480.0);
    assert_eq!(sim.metric("vllm:request_success_total").await, 2.0);
}

#[tokio::test]
async fn requests_beyond_max_num_seqs_wait_and_show_in_metrics() {
    let sim = Sim::start(
        MODEL,
        &[
            "--max-num-seqs",
            "1",
            "--decode-step-ms",
            "50",
            "--decode-us-per-seq",
            "0",
        ],
    );
    let url = format!("{}/v1/completions", sim.url());
    let c = client();
    let running = c
        .post(&url)
        .json(&json!({"model": MODEL, "prompt": "a", "max_tokens": 200, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), 200);
    let queued = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move {
            c.post(&url)
                .json(&json!({"model": MODEL, "prompt": "b", "max_tokens": 1}))
                .send()
                .await
        }
    });
    // The second request is waiting as long as the first one holds the only slot.
    let mut waited = false;
    for _ in 0..200 {
        if sim.metric("vllm:num_requests_waiting").await == 1.0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waited, "second request never showed as waiting");
    assert_eq!(sim.metric("vllm:num_requests_running").await, 1.0);
    // Dropping the streaming client aborts it and frees the slot for the queued one.
    drop(running);
    let done = queued.await.unwrap().unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(
        sim.metric("switchyard_sim_requests_aborted_total").await,
        1.0
    );
}
