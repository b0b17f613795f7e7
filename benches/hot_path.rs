//! Hot paths beside their naive versions: the request view (parse + model rewrite) against a
//! full `serde_json::Value` round trip; the SSE tracker and usage scanner over a 200-token
//! stream cut at random boundaries against buffering it whole; route resolution; balancer
//! picks over 8 and 256 servers. Before the timings, allocations per operation are counted
//! with a counting global allocator and printed (the target is zero per chunk and per pick).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::sync::Arc;
use switchyard::balance::{Balance, Candidates, Features, Policy, PolicySettings};
use switchyard::openai::request::replace_model;
use switchyard::openai::sse::SseTracker;
use switchyard::openai::strip::UsageStrip;
use switchyard::openai::usage::UsageScanner;
use switchyard::openai::RequestView;
use switchyard::routing::Router;
use switchyard::upstream::engine_load::EngineLoad;
use switchyard::upstream::ServerState;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A vLLM-like chat stream of `tokens` content events, a finish event, a usage event, [DONE].
fn sse_stream(tokens: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..tokens {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-8f3a\",\"object\":\"chat.completion.chunk\",\"created\":1795245859,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-8f3a\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n");
    out.push_str("data: {\"id\":\"chatcmpl-8f3a\",\"choices\":[],\"usage\":{\"prompt_tokens\":812,\"completion_tokens\":200,\"total_tokens\":1012}}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// The stream cut at pseudo-random boundaries (1..=400 bytes), as TCP reads deliver it.
fn chunks(stream: &[u8]) -> Vec<bytes::Bytes> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = rng.usize(1..=400).min(stream.len() - at);
        out.push(bytes::Bytes::copy_from_slice(&stream[at..at + n]));
        at += n;
    }
    out
}

/// A router over 32 models with two aliases each: 96 names.
fn routes() -> Router {
    let mut yaml = String::from(
        "pools:\n  p:\n    model: m\n    servers: [{url: \"http://127.0.0.1:1\"}]\nmodels:\n",
    );
    for i in 0..32 {
        yaml.push_str(&format!(
            "  model-{i}:\n    pool: p\n    aliases: [alias-{i}-a, alias-{i}-b]\n"
        ));
    }
    let config = switchyard::config::parse(&yaml).unwrap();
    switchyard::state::router(&config, Default::default()).unwrap()
}

/// Allocations made by `f`, run `n` times, per run.
fn allocs_per(n: usize, mut f: impl FnMut()) -> f64 {
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        f();
    }
    region.change().allocations as f64 / n as f64
}

fn report_allocations() {
    let body = chat_body(32 * 1024);
    let stream = sse_stream(200);
    let parts = chunks(&stream);
    let t = routes();
    let weights = [3, 1, 2, 5, 1, 1, 2, 4];
    let states = server_states(weights.len());
    let f = Features {
        session: Some(42),
        ..Features::default()
    };
    let mut tracker = SseTracker::default();
    let mut usage = UsageScanner::default();
    let per_chunk_sse = allocs_per(1, || {
        for p in &parts {
            let _ = black_box(tracker.observe(p));
        }
    }) / parts.len() as f64;
    let per_chunk_usage = allocs_per(1, || {
        for p in &parts {
            usage.observe(p);
        }
    }) / parts.len() as f64;
    println!("allocations per operation (counting allocator):");
    println!(
        "  request view + model splice, 32 KB body: {:.1}",
        allocs_per(100, || {
            let v = RequestView::parse(&body).unwrap();
            black_box(replace_model(&body, v.model_span.clone(), b"\"served\""));
        })
    );
    println!(
        "  naive serde_json::Value round trip, 32 KB: {:.1}",
        allocs_per(100, || {
            black_box(naive(&body));
        })
    );
    println!(
        "  SSE tracker, per chunk ({} chunks): {per_chunk_sse:.2}",
        parts.len()
    );
    println!("  usage scanner, per chunk: {per_chunk_usage:.2}");
    // The usage strip holds an event cut by a chunk boundary until its end: that costs an
    // allocation; chunks that end on event boundaries (one event per upstream write, as
    // vLLM writes them) cost none.
    // Pingora's chunks are slices of its read buffer; cloning them costs no allocation. Clone
    // once here so that these (Vec-backed) ones are shared too before counting.
    for p in &parts {
        drop(p.clone());
    }
    let mut strip = UsageStrip::default();
    let per_chunk_strip = allocs_per(1, || {
        for p in &parts {
            black_box(strip.filter(p.clone()));
        }
    }) / parts.len() as f64;
    let events: Vec<bytes::Bytes> = stream
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|e| bytes::Bytes::from(e.concat()))
        .collect();
    for e in &events {
        drop(e.clone());
    }
    let mut strip = UsageStrip::default();
    let per_event_strip = allocs_per(1, || {
        for e in &events {
            black_box(strip.filter(e.clone()));
        }
    }) / events.len() as f64;
    println!("  usage strip, per chunk at random boundaries: {per_chunk_strip:.2}");
    println!("  usage strip, per chunk of one event: {per_event_strip:.2} (the usage event's chunk is copied once)");
    println!(
        "  route resolution: {:.2}",
        allocs_per(1000, || {
            black_box(t.resolve("alias-17-b"));
        })
    );
    for policy in POLICIES {
        let b = policy.build(&weights, &PolicySettings::default(), None);
        let c = candidates(&states, &weights, &|_| true);
        println!(
            "  {} pick, 8 servers: {:.2}",
            policy.name(),
            allocs_per(1000, || {
                black_box(b.pick(&f, &c));
            })
        );
    }
    for n in [8usize, 64] {
        let (p, f, states, weights) = prefix_aware(n);
        let c = candidates(&states, &weights, &|_| true);
        println!(
            "  prefix_aware pick, {n} servers, 32 KB conversation it holds: {:.2}",
            allocs_per(1000, || {
                black_box(p.pick(&f, &c));
            })
        );
    }
}

/// A prefix-aware pool of `n` servers whose index has seen the benchmark's 32 KB conversation
/// go to one of them (so that a pick walks all 128 blocks), and that conversation's features.
fn prefix_aware(n: usize) -> (Box<dyn Balance>, Features, Vec<Arc<ServerState>>, Vec<u32>) {
    use switchyard::balance::PrefixIndex;
    let weights = vec![1u32; n];
    let states = server_states(n);
    let index = Arc::new(PrefixIndex::default());
    let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8000")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let slots = index.attach(&ids, 8192).unwrap();
    let policy =
        Policy::PrefixAware.build(&weights, &PolicySettings::default(), Some((index, slots)));
    let body = chat_body(32 * 1024);
    let view = RequestView::parse(&body).unwrap();
    let f = Features {
        prefix_hashes: switchyard::balance::prefix_hashes(
            switchyard::openai::Endpoint::ChatCompletions,
            &view,
            &body,
        ),
        ..Features::default()
    };
    let c = candidates(&states, &weights, &|_| true);
    policy.pick(&f, &c);
    (policy, f, states, weights)
}

const POLICIES: [Policy; 4] = [
    Policy::WeightedRoundRobin,
    Policy::P2cEwma,
    Policy::LeastLoad,
    Policy::ConsistentHash,
];

/// Server states with some in flight, a measured latency and an engine reading each, so that
/// every policy does its full work.
fn server_states(n: usize) -> Vec<Arc<ServerState>> {
    (0..n)
        .map(|i| {
            let s = Arc::new(ServerState::default());
            s.observe_ttfb(std::time::Duration::from_millis(20 + i as u64 % 7), 1);
            s.set_engine_load(
                EngineLoad {
                    running: (i % 5) as f64,
                    waiting: (i % 3) as f64,
                    kv_usage: Some(0.3),
                    kv_tokens: 0.0,
                },
                1,
            );
            std::mem::forget(s.start(1));
            s
        })
        .collect()
}

fn candidates<'a>(
    states: &'a [Arc<ServerState>],
    weights: &'a [u32],
    eligible: &'a dyn Fn(usize) -> bool,
) -> Candidates<'a> {
    Candidates {
        states,
        weights,
        eligible,
        now_ms: 2,
    }
}

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
        let states = server_states(n);
        let f = Features {
            session: Some(7),
            ..Features::default()
        };
        for policy in POLICIES {
            let p = policy.build(&weights, &PolicySettings::default(), None);
            let all = candidates(&states, &weights, &|_| true);
            g.bench_function(BenchmarkId::new(policy.name(), n), |b| {
                b.iter(|| p.pick(&f, &all))
            });
            // Skipping the first two (tried) servers, as a retry does.
            let skip2 = candidates(&states, &weights, &|i| i > 1);
            g.bench_function(
                BenchmarkId::new(format!("{}_skip2", policy.name()), n),
                |b| b.iter(|| p.pick(&f, &skip2)),
            );
        }
    }
    for n in [8usize, 64] {
        let (p, f, states, weights) = prefix_aware(n);
        let all = candidates(&states, &weights, &|_| true);
        // 32 KB of JSON renders to ~26 KB of roles and text: ~100 blocks of 256 bytes.
        assert!(
            f.prefix_hashes.len() > 96,
            "{} blocks",
            f.prefix_hashes.len()
        );
        g.bench_function(BenchmarkId::new("prefix_aware_32KB", n), |b| {
            b.iter(|| p.pick(&f, &all))
        });
    }
    g.finish();
}

fn sse(c: &mut Criterion) {
    let stream = sse_stream(200);
    let parts = chunks(&stream);
    let mut g = c.benchmark_group("sse_200_tokens");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("tracker_and_usage_per_chunk", |b| {
        b.iter(|| {
            let mut t = SseTracker::default();
            let mut u = UsageScanner::default();
            for p in &parts {
                let _ = t.observe(p);
                u.observe(p);
            }
            (t.events, u.completion_tokens)
        })
    });
    // Everything a stream's chunk goes through when the gateway asked for usage on the
    // client's behalf: event count, usage, and taking the usage event out.
    g.bench_function("tracker_usage_and_strip_per_chunk", |b| {
        b.iter(|| {
            let mut t = SseTracker::default();
            let mut u = UsageScanner::default();
            let mut s = UsageStrip::default();
            let mut out = 0;
            for p in &parts {
                let _ = t.observe(p);
                u.observe(p);
                out += s.filter(p.clone()).len();
            }
            (t.events, u.completion_tokens, out)
        })
    });
    // Naive: buffer the whole stream, split events, parse each as JSON for usage.
    g.bench_function("naive_buffer_and_parse_events", |b| {
        b.iter(|| {
            let mut all = Vec::new();
            for p in &parts {
                all.extend_from_slice(p);
            }
            let text = String::from_utf8(all).unwrap();
            let mut completion = None;
            let mut events = 0;
            for e in text.split("\n\n").filter(|e| !e.is_empty()) {
                events += 1;
                if let Some(json) = e.strip_prefix("data: ").filter(|j| *j != "[DONE]") {
                    let v: serde_json::Value = serde_json::from_str(json).unwrap();
                    if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                        completion = Some(n);
                    }
                }
            }
            (events, completion)
        })
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    let t = routes();
    c.bench_function("route_resolve_alias_of_96", |b| {
        b.iter(|| t.resolve(black_box("alias-17-b")))
    });
}

criterion_group!(benches, request_view, sse, route, balance);

fn main() {
    // `cargo bench --no-run` builds this; `cargo bench` runs it with `--bench`.
    report_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
