//! Hot paths beside their naive versions: the request view (parse + model rewrite) against
//! a full `serde_json::Value` round trip, and balancer picks over 8 and 256 servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard::balance::{Features, Policy};
use switchyard::openai::request::replace_model;
use switchyard::openai::RequestView;

/// A chat request of about `size` bytes: a system prompt and turns of conversation.
fn chat_body(size: usize) -> Vec<u8> {
    let turn = r#"{"role":"user","content":"Summarise the following paragraph about GPU scheduling and prefix caches in two sentences, keeping the numbers."},{"role":"assistant","content":"Continuous batching keeps the GPU busy; a warm prefix cache skips most of the prefill."},"#;
    let mut messages =
        String::from(r#"{"role":"system","content":"You are a helpful assistant."},"#);
    while messages.len() + turn.len() < size.saturating_sub(120) {
        messages.push_str(turn);
    }
    messages.pop();
    format!(r#"{{"model":"fast","messages":[{messages}],"stream":true,"max_tokens":256,"temperature":0.7}}"#)
        .into_bytes()
}

fn naive(body: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let stream = v["stream"].as_bool();
    v["model"] = serde_json::Value::from("meta-llama/Llama-3.1-8B-Instruct");
    black_box(stream);
    serde_json::to_vec(&v).unwrap()
}

fn request_view(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_view");
    for size in [1024, 32 * 1024, 1024 * 1024] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("view_and_splice", size),
            &body,
            |b, body| {
                b.iter(|| {
                    let v = RequestView::parse(body).unwrap();
                    replace_model(
                        body,
                        v.model_span.clone(),
                        br#""meta-llama/Llama-3.1-8B-Instruct""#,
                    )
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("naive_value_roundtrip", size),
            &body,
            |b, body| b.iter(|| naive(body)),
        );
    }
    g.finish();
}

fn balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [8usize, 256] {
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 5).collect();
        let wrr = Policy::WeightedRoundRobin.build(&weights);
        let f = Features::default();
        g.bench_function(BenchmarkId::new("weighted_round_robin", n), |b| {
            b.iter(|| wrr.pick(&f, &|_| true))
        });
        // Skipping the first two (tried) servers, as a retry does.
        g.bench_function(BenchmarkId::new("weighted_round_robin_skip2", n), |b| {
            b.iter(|| wrr.pick(&f, &|i| i > 1))
        });
    }
    g.finish();
}

criterion_group!(benches, request_view, balance);
criterion_main!(benches);
