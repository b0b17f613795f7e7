//! SIGTERM: stop accepting, let requests in flight finish within the grace period, end what is
//! still running with a server_shutting_down error event, exit 0 — without sleeping the whole
//! grace period when nothing is left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, Gateway, Sim};
use futures_util::StreamExt;
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn sigterm(gw: &Gateway) {
    common::signal(gw.proc.pid(), nix::sys::signal::Signal::SIGTERM);
}

/// Waits for the process to exit (up to `limit`) and returns its code and how long it took.
fn exit_within(gw: &mut Gateway, limit: Duration) -> (i32, Duration) {
    let start = Instant::now();
    let status = gw
        .proc
        .wait_timeout(limit)
        .unwrap_or_else(|| panic!("gateway still running {limit:?} after the signal"));
    (status.code().unwrap_or(-1), start.elapsed())
}

async fn open_stream(gw: &Gateway, tokens: u32) -> reqwest::Response {
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": true, "max_tokens": tokens,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

async fn rest_of(resp: reqwest::Response) -> String {
    let mut s = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = s.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    text
}

#[tokio::test]
async fn a_stream_in_flight_finishes_and_the_gateway_exits_without_waiting_out_the_grace() {
    let sim = Sim::paced(SERVED, 20, &[]);
    let mut gw = Gateway::single(SERVED, &[sim.url()], "server:\n  grace_period: 20s\n");
    let resp = open_stream(&gw, 25).await;
    sigterm(&gw);
    gw.proc.wait_for_stderr("SIGTERM: stopped accepting", 1);
    // Not ready any more, and the public port no longer accepts.
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        std::net::TcpStream::connect(gw.api).is_err(),
        "still accepting"
    );

    let text = rest_of(resp).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let (code, took) = exit_within(&mut gw, Duration::from_secs(10));
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(10));
}

#[tokio::test]
async fn streams_still_running_at_the_end_of_the_grace_period_end_with_an_error_event() {
    let sim = Sim::paced(SERVED, 20, &[]);
    let mut gw = Gateway::single(SERVED, &[sim.url()], "server:\n  grace_period: 1s\n");
    let resp = open_stream(&gw, 100_000).await;
    let started = Instant::now();
    sigterm(&gw);
    let text = rest_of(resp).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended before the grace period"
    );
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() > 3, "{text}");
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let err: Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "server_shutting_down");
    let (code, _) = exit_within(&mut gw, Duration::from_secs(10));
    assert_eq!(code, 0);
}

/// An idle gateway with `extra` config exits at once, cleanly, on SIGTERM.
async fn idle_exits_at_once_on_sigterm(extra: &str) {
    let sim = Sim::fast(SERVED);
    let mut gw = Gateway::single(SERVED, &[sim.url()], extra);
    // A served request first, so that a keep-alive connection is open.
    assert_eq!(gw.tiny_completion("m").await, 200);
    sigterm(&gw);
    let (code, took) = exit_within(&mut gw, Duration::from_secs(8));
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(8), "{took:?} with {extra:?}");
}

#[tokio::test]
async fn an_idle_gateway_exits_at_once_on_sigterm() {
    // The default grace period: 60 s.
    idle_exits_at_once_on_sigterm("").await;
}

/// A grace period past the clock's range (the config takes any duration) is a wait without
/// end, not an overflow.
#[tokio::test]
async fn a_grace_period_of_any_length_is_no_overflow() {
    idle_exits_at_once_on_sigterm("server:\n  grace_period: 500000000000y\n").await;
}

#[tokio::test]
async fn sigint_exits_at_once_even_with_a_stream_in_flight() {
    let sim = Sim::paced(SERVED, 20, &[]);
    let mut gw = Gateway::single(SERVED, &[sim.url()], "server:\n  grace_period: 60s\n");
    let _stream = open_stream(&gw, 100_000).await;
    common::signal(gw.proc.pid(), nix::sys::signal::Signal::SIGINT);
    let (_, took) = exit_within(&mut gw, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5), "{took:?}");
}
