//! SSE passes through unbuffered: events leave the gateway when the server produces them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, h2c_client, Gateway, Sim};
use futures_util::StreamExt;
use serde_json::json;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Streams a completion and returns each received `data:` event with its arrival time.
async fn stream_events(c: &reqwest::Client, url: &str, tokens: u32) -> Vec<(Duration, String)> {
    let start = Instant::now();
    let resp = c
        .post(url)
        .json(&json!({"model": "m", "stream": true, "max_tokens": tokens,
                      "messages": [{"role": "user", "content": "count"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            events.push((start.elapsed(), event.trim().to_owned()));
        }
    }
    events
}

/// With a 100 ms decode step, token events must arrive about 100 ms apart, not in a burst.
async fn events_arrive_at_the_servers_pace(c: reqwest::Client) {
    let sim = Sim::paced(SERVED, 100, &[]);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let events = stream_events(&c, &gw.url("/v1/chat/completions"), 6).await;
    let tokens: Vec<Duration> = events
        .iter()
        .filter(|(_, e)| e.contains("\"content\""))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tokens.len(), 6, "{events:?}");
    for pair in tokens.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(60) && gap <= Duration::from_millis(250),
            "gap {gap:?} between token events: {tokens:?}"
        );
    }
    assert_eq!(events.last().unwrap().1, "data: [DONE]");
}

#[tokio::test]
async fn sse_events_stream_unbuffered_over_http1() {
    events_arrive_at_the_servers_pace(client()).await;
}

#[tokio::test]
async fn sse_events_stream_unbuffered_over_h2c() {
    events_arrive_at_the_servers_pace(h2c_client()).await;
}

#[tokio::test]
async fn usage_chunk_passes_through_when_asked_for() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let text = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": true, "max_tokens": 3,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"completion_tokens\":3"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    // The gateway read the usage chunk as it passed: tokens in metrics and the access log.
    let metrics = common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_tokens_total{kind="completion",model="m",pool="p"}"#,
        3.0,
    )
    .await;
    let prompt = common::metric_value(
        &metrics,
        r#"switchyard_tokens_total{kind="prompt",model="m",pool="p"}"#,
    );
    assert!(prompt.is_some_and(|p| p > 0.0), "{metrics}");
    // 6 events (3 tokens, the finish chunk, the usage chunk, [DONE]); 5 gaps after the first.
    assert_eq!(
        common::metric_value(
            &metrics,
            r#"switchyard_inter_token_latency_seconds_count{model="m",pool="p"}"#
        ),
        Some(5.0)
    );
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["completion_tokens"], 3);
    assert_eq!(log[0]["prompt_tokens"].as_f64(), prompt);
}

/// A stream's upstream connection carries the next stream once the first ended whole
/// (proxy/hold/): five streams in a row open one connection to the server, not five.
#[tokio::test]
async fn streams_in_a_row_share_one_upstream_connection() {
    let sim = Sim::fast(SERVED);
    // No probes or scrapes: every connection the server counts is a stream's.
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    health:\n      enabled: false\n    \
         engine_metrics:\n      enabled: false\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        sim.url()
    ));
    // Each read of the server's metrics is a connection of its own.
    let before = sim.metric("switchyard_sim_connections_total").await;
    let c = client();
    for _ in 0..5 {
        let events = stream_events(&c, &gw.url("/v1/chat/completions"), 3).await;
        assert_eq!(events.last().unwrap().1, "data: [DONE]");
    }
    let after = sim.metric("switchyard_sim_connections_total").await;
    assert_eq!(after - before, 2.0, "the streams' one and this read's");
    // Five inference requests went through it.
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 5.0);
}
