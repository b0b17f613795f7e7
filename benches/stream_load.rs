//! Streaming load tool for benches/load.sh (not a criterion bench).
//!
//! `stream` mode: N concurrent streaming chat completions against a simulator started with
//! `--event-timestamps`; reports time to first event (client-measured), the hops' share of it
//! (request sent → read by the simulator, plus the first event's lag), and per-event lag
//! (client receive time minus the simulator's send stamp; same machine, same clock).
//! `idle` mode: opens N streams that stay silent after their first event (simulator with
//! `--fault stall_after=1`),
//! waits until every response header arrived, then reports the RSS of a process (the
//! gateway) so that load.sh can divide the growth by N.
//!
//! cargo bench --bench stream_load -- stream --url http://127.0.0.1:8080 --model fast --streams 100 --tokens 50
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Stream {
        #[arg(long)]
        url: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 100)]
        streams: usize,
        #[arg(long, default_value_t = 50)]
        tokens: u32,
    },
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Process whose RSS is reported.
        #[arg(long)]
        pid: u32,
    },
    /// Prints one process's RSS in KiB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn body(model: &str, tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"max_tokens":{tokens},"messages":[{{"role":"user","content":"Tell me about prefix caching."}}]}}"#
    )
}

fn client(n: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(n)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// What one stream measured (µs).
#[derive(Default)]
struct Outcome {
    /// Time to first event, as the client sees it.
    ttft: u64,
    /// The hops' share of it: request sent → read by the simulator, plus the first event's
    /// lag. Unlike `ttft` it leaves out the wait for the engine's next decode step, which
    /// moves by up to a step between runs.
    hops: u64,
    /// The first part of `hops`: request sent → read by the simulator.
    forward: u64,
    /// Receive time minus send stamp, per event.
    lags: Vec<u64>,
    error: bool,
}

async fn one(c: reqwest::Client, url: String, body: String) -> Outcome {
    let failed = |lags| Outcome {
        lags,
        error: true,
        ..Outcome::default()
    };
    let start = Instant::now();
    let sent_us = now_us();
    let Ok(resp) = c
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    else {
        return failed(vec![]);
    };
    if !resp.status().is_success() {
        return failed(vec![]);
    }
    let received_us = resp
        .headers()
        .get("x-sim-received-us")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut s = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut ttft = None;
    let mut lags = Vec::new();
    while let Some(chunk) = s.next().await {
        let Ok(chunk) = chunk else {
            return failed(lags);
        };
        let t = now_us();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if text.contains("\"error\"") {
                return failed(lags);
            }
            if let Some(i) = text.find("\"x_sim_ts_us\":") {
                let digits: String = text[i + 14..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(sent) = digits.parse::<u64>() {
                    ttft.get_or_insert(start.elapsed().as_micros() as u64);
                    lags.push(t.saturating_sub(sent));
                }
            }
        }
    }
    let (Some(ttft), Some(received_us)) = (ttft, received_us) else {
        return failed(lags);
    };
    let forward = received_us.saturating_sub(sent_us);
    Outcome {
        ttft,
        hops: forward + lags[0],
        forward,
        lags,
        error: false,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench binary with `--bench`: this tool only runs when asked.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        return;
    }
    match Args::parse().mode {
        Mode::Rss { pid } => println!("{}", rss_kib(pid)),
        Mode::Stream {
            url,
            model,
            streams,
            tokens,
        } => {
            let c = client(streams);
            let tasks: Vec<_> = (0..streams)
                .map(|_| tokio::spawn(one(c.clone(), url.clone(), body(&model, tokens))))
                .collect();
            let (mut ttfts, mut hops, mut forwards, mut lags, mut errors) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
            for t in tasks {
                let o = t.await.unwrap();
                if o.error {
                    errors += 1;
                } else {
                    ttfts.push(o.ttft);
                    hops.push(o.hops);
                    forwards.push(o.forward);
                }
                lags.extend(o.lags);
            }
            let events = lags.len();
            println!(
                "RESULT ttft_p50_us={} ttft_p99_us={} hops_p50_us={} hops_p99_us={} forward_p50_us={} forward_p99_us={} lag_p50_us={} lag_p99_us={} events={events} errors={errors}",
                percentile(&mut ttfts, 0.5),
                percentile(&mut ttfts, 0.99),
                percentile(&mut hops, 0.5),
                percentile(&mut hops, 0.99),
                percentile(&mut forwards, 0.5),
                percentile(&mut forwards, 0.99),
                percentile(&mut lags, 0.5),
                percentile(&mut lags, 0.99),
            );
        }
        Mode::Idle {
            url,
            model,
            streams,
            pid,
        } => {
            let before = rss_kib(pid);
            let c = client(streams);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(streams);
            let mut held = Vec::with_capacity(streams);
            for _ in 0..streams {
                let (c, url, body, tx) = (c.clone(), url.clone(), body(&model, 4), tx.clone());
                held.push(tokio::spawn(async move {
                    match c
                        .post(format!("{url}/v1/chat/completions"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = tx.send(true).await;
                            // Hold the stream open, idle, until the process ends.
                            let mut s = resp.bytes_stream();
                            while s.next().await.is_some() {}
                        }
                        _ => {
                            let _ = tx.send(false).await;
                        }
                    }
                }));
            }
            let (mut ok, mut failed) = (0, 0);
            while ok + failed < streams {
                match rx.recv().await {
                    Some(true) => ok += 1,
                    Some(false) => failed += 1,
                    None => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = rss_kib(pid);
            println!(
                "RESULT streams={ok} failed={failed} rss_before_kib={before} rss_after_kib={after} per_stream_kib={:.1}",
                (after.saturating_sub(before)) as f64 / ok.max(1) as f64
            );
            std::process::exit(0);
        }
    }
}
