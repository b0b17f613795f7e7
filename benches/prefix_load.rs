//! Workload of benches/prefix.sh (not a criterion bench): multi-turn conversations over a few
//! long shared system prompts, plus a share of requests with a unique long prompt, sent
//! open-loop through a gateway in front of `switchyard sim` servers; reports TTFT, throughput,
//! the cluster's prefix cache hit rate and how evenly the servers were loaded: their queues
//! (running + waiting, sampled every 100 ms; a time average per server) and the requests and
//! tokens each served.
//!
//! Sessions start at Poisson times (`--rate` requests per second on average, counting every
//! turn); a conversation's next turn leaves when the previous answer has streamed in and a
//! think time (exponential, `--think-ms` mean) has passed, carrying the whole conversation so
//! far, as a chat client does. Everything the requests contain and when they leave follows from
//! `--seed`, so two runs through two policies send the same work. The servers' counters
//! (vLLM's names on their /metrics) are read before and after.
//!
//! cargo bench --bench prefix_load -- --url http://127.0.0.1:8080 --model m --sims 127.0.0.1:8001,...
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser, Clone)]
struct Args {
    /// The gateway, http://host:port.
    #[arg(long)]
    url: String,
    #[arg(long)]
    model: String,
    /// The simulators' addresses (host:port, comma-separated), for their /metrics.
    #[arg(long, value_delimiter = ',')]
    sims: Vec<String>,
    /// Label of the result row (the policy).
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in all (turns of conversations and unique requests).
    #[arg(long, default_value_t = 240)]
    requests: usize,
    /// Mean request rate, per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Shared system prompts (0: none, every session unique).
    #[arg(long, default_value_t = 4)]
    system_prompts: usize,
    /// Tokens of a system prompt (4 bytes each).
    #[arg(long, default_value_t = 2000)]
    system_tokens: usize,
    /// Turns of a conversation.
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Share of sessions that are one request with a unique prompt of `system_tokens`.
    #[arg(long, default_value_t = 0.2)]
    unique_share: f64,
    /// Tokens of a user turn, and of the assistant's answer carried into the next turn.
    #[arg(long, default_value_t = 100)]
    user_tokens: usize,
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Mean think time between a conversation's turns, ms.
    #[arg(long, default_value_t = 300.0)]
    think_ms: f64,
    /// Print a header row first.
    #[arg(long)]
    header: bool,
}

/// Words of about 4 bytes (one simulated token) each, from the rng.
fn text(rng: &mut fastrand::Rng, tokens: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "fu", "ga", "ho", "ji", "pe", "qu",
        "zo",
    ];
    let mut s = String::with_capacity(tokens * 4);
    for _ in 0..tokens {
        s.push_str(SYLLABLES[rng.usize(..16)]);
        s.push(SYLLABLES[rng.usize(..16)].as_bytes()[0] as char);
        s.push(' ');
    }
    s
}

struct Session {
    start: Duration,
    /// The system prompt (shared or unique) and the user turns.
    system: Arc<String>,
    turns: Vec<String>,
    answers: Vec<String>,
    thinks: Vec<Duration>,
    user: String,
}

fn exp(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.f64()).ln()
}

fn plan(a: &Args) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let systems: Vec<Arc<String>> = (0..a.system_prompts)
        .map(|_| Arc::new(text(&mut rng, a.system_tokens)))
        .collect();
    let turns = a.turns.max(1);
    let unique = if systems.is_empty() {
        1.0
    } else {
        a.unique_share
    };
    let per_session = unique + (1.0 - unique) * turns as f64;
    let session_rate = a.rate / per_session;
    let mut at = 0.0;
    let mut out = Vec::new();
    let mut planned = 0;
    while planned < a.requests {
        at += exp(&mut rng, 1.0 / session_rate);
        let single = systems.is_empty() || rng.f64() < unique;
        let n = if single {
            1
        } else {
            turns.min(a.requests - planned)
        };
        let system = if single {
            Arc::new(text(&mut rng, a.system_tokens))
        } else {
            systems[rng.usize(..systems.len())].clone()
        };
        out.push(Session {
            start: Duration::from_secs_f64(at),
            system,
            turns: (0..n).map(|_| text(&mut rng, a.user_tokens)).collect(),
            answers: (0..n).map(|_| text(&mut rng, a.user_tokens / 2)).collect(),
            thinks: (0..n)
                .map(|_| Duration::from_secs_f64(exp(&mut rng, a.think_ms / 1e3)))
                .collect(),
            user: format!("user-{}", out.len()),
        });
        planned += n;
    }
    out
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    ttft: Option<Duration>,
    tokens: u64,
    ok: bool,
}

async fn send(
    client: &reqwest::Client,
    a: &Args,
    messages: &serde_json::Value,
    user: &str,
) -> Outcome {
    let body = serde_json::json!({
        "model": a.model, "messages": messages, "max_tokens": a.max_tokens, "stream": true,
        "stream_options": {"include_usage": true}, "user": user,
    });
    let t0 = Instant::now();
    let Ok(resp) = client
        .post(format!("{}/v1/chat/completions", a.url))
        .json(&body)
        .send()
        .await
    else {
        return Outcome::default();
    };
    if !resp.status().is_success() {
        return Outcome::default();
    }
    let mut out = Outcome::default();
    let mut tail = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Outcome::default();
        };
        if out.ttft.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            out.ttft = Some(t0.elapsed());
        }
        tail.push_str(&String::from_utf8_lossy(&chunk));
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 2048);
        }
    }
    if let Some(i) = tail.rfind("\"completion_tokens\":") {
        let digits: String = tail[i + 20..]
            .chars()
            .skip_while(|c| *c == ' ')
            .take_while(char::is_ascii_digit)
            .collect();
        out.tokens = digits.parse().unwrap_or(0);
    }
    out.ok = tail.contains("[DONE]") && !tail.contains("\"error\"");
    out
}

async fn run_session(
    client: reqwest::Client,
    a: Arc<Args>,
    s: Session,
    t0: Instant,
) -> Vec<Outcome> {
    tokio::time::sleep_until((t0 + s.start).into()).await;
    let mut messages = vec![serde_json::json!({"role": "system", "content": *s.system})];
    let mut out = Vec::new();
    for (k, turn) in s.turns.iter().enumerate() {
        messages.push(serde_json::json!({"role": "user", "content": turn}));
        out.push(
            send(
                &client,
                &a,
                &serde_json::Value::from(messages.clone()),
                &s.user,
            )
            .await,
        );
        messages.push(serde_json::json!({"role": "assistant", "content": s.answers[k]}));
        if k + 1 < s.turns.len() {
            tokio::time::sleep(s.thinks[k]).await;
        }
    }
    out
}

/// The value of the first sample named `name` in a /metrics body (0 when absent).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// One simulator's running + waiting requests now.
async fn queue(client: &reqwest::Client, sim: &str) -> f64 {
    let Ok(resp) = client.get(format!("http://{sim}/metrics")).send().await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    sample(&text, "vllm:num_requests_running") + sample(&text, "vllm:num_requests_waiting")
}

/// The counters of one simulator's /metrics that the report reads.
#[derive(Default, Debug, Clone, Copy)]
struct Counters {
    queries: f64,
    hits: f64,
    prompt: f64,
    generation: f64,
    success: f64,
}

async fn counters(client: &reqwest::Client, sim: &str) -> Counters {
    let text = client
        .get(format!("http://{sim}/metrics"))
        .send()
        .await
        .expect("sim /metrics")
        .text()
        .await
        .expect("sim /metrics body");
    let read = |name: &str| sample(&text, name);
    Counters {
        queries: read("vllm:prefix_cache_queries_total"),
        hits: read("vllm:prefix_cache_hits_total"),
        prompt: read("vllm:prompt_tokens_total"),
        generation: read("vllm:generation_tokens_total"),
        success: read("vllm:request_success_total"),
    }
}

fn max_over_mean(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.iter().cloned().fold(0.0, f64::max) / mean.max(f64::MIN_POSITIVE)
}

#[tokio::main]
async fn main() {
    let a = Arc::new(Args::parse());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let before: Vec<Counters> =
        futures_util::future::join_all(a.sims.iter().map(|s| counters(&client, s))).await;
    let sessions = plan(&a);
    // Each server's queue (running + waiting), sampled every 100 ms while the load runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (client, sims, sampling) = (client.clone(), a.sims.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut sums = vec![0.0; sims.len()];
            let mut samples = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let now =
                    futures_util::future::join_all(sims.iter().map(|s| queue(&client, s))).await;
                for (sum, q) in sums.iter_mut().zip(now) {
                    *sum += q;
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sums.iter()
                .map(|s| s / samples.max(1) as f64)
                .collect::<Vec<f64>>()
        })
    };
    let t0 = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| tokio::spawn(run_session(client.clone(), a.clone(), s, t0)))
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let queues = sampler.await.unwrap();
    let after: Vec<Counters> =
        futures_util::future::join_all(a.sims.iter().map(|s| counters(&client, s))).await;

    let mut ttfts: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.ok)
        .filter_map(|o| o.ttft)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    ttfts.sort_by(f64::total_cmp);
    let errors = outcomes.iter().filter(|o| !o.ok).count();
    let mean = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
    let p90 = ttfts
        .get((ttfts.len() * 9 / 10).min(ttfts.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let tokens: u64 = outcomes.iter().map(|o| o.tokens).sum();
    let delta: Vec<Counters> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Counters {
            queries: a.queries - b.queries,
            hits: a.hits - b.hits,
            prompt: a.prompt - b.prompt,
            generation: a.generation - b.generation,
            success: a.success - b.success,
        })
        .collect();
    let queries: f64 = delta.iter().map(|c| c.queries).sum();
    let hits: f64 = delta.iter().map(|c| c.hits).sum();
    let requests: Vec<f64> = delta.iter().map(|c| c.success).collect();
    let work: Vec<f64> = delta.iter().map(|c| c.prompt + c.generation).collect();
    if a.header {
        println!("| policy | requests | errors | mean TTFT ms | p90 TTFT ms | output tok/s | prefix hit rate | max/mean queue | max/mean requests | max/mean tokens | mean queue per server | requests per server |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    }
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} % | {:.2} | {:.2} | {:.2} | {} | {} |",
        a.label,
        outcomes.len(),
        errors,
        mean,
        p90,
        tokens as f64 / elapsed,
        100.0 * hits / queries.max(1.0),
        max_over_mean(&queues),
        max_over_mean(&requests),
        max_over_mean(&work),
        queues
            .iter()
            .map(|q| format!("{q:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        requests
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
    );
}
