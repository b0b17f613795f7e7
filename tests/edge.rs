//! The public port against hostile and careless clients: a request head that does not arrive
//! within `timeouts.request_header` (a byte at a time, or nothing at all) gets 408 and the
//! connection is closed; `limits.max_connections` closes what is over it at once, so that a
//! flood of sockets cannot take the descriptors the admin listener and upstreams need.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{metric_value, Gateway, Sim};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn gateway(sim: &Sim, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    servers:\n      - url: {}\n\
         models:\n  m:\n    pool: p\n{extra}",
        sim.url()
    ))
}

fn request() -> Vec<u8> {
    let body = r#"{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"x"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Everything the gateway sends until it closes (10 s at most).
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One answer on a kept-alive connection: its head and its Content-Length body.
async fn answer(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

fn assert_408(text: &str) {
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{text}");
}

/// Slowloris: a head sent a byte every 200 ms, then one that sends nothing at all; both get
/// 408 and are closed once `timeouts.request_header` (1 s) has passed since the accept.
#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "timeouts:\n  request_header: 1s\n");
    let mut slow = TcpStream::connect(gw.api).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let (mut rx, mut tx) = slow.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..50 {
            if tx.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut out)).await;
    let took = started.elapsed();
    drip.abort();
    assert_408(&String::from_utf8_lossy(&out));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let mut silent = TcpStream::connect(gw.api).await.unwrap();
    let started = Instant::now();
    assert_408(&until_closed(&mut silent).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_rejected_requests_total{reason="request_header_timeout"}"#,
        2.0,
    )
    .await;
}

/// On a kept-alive connection the idle wait is `keepalive_idle`'s: a client that pauses longer
/// than `request_header` between requests is served; its next head, once begun, has the
/// deadline again.
#[tokio::test]
async fn a_kept_alive_connection_may_idle_but_its_next_head_has_the_deadline() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "timeouts:\n  request_header: 1s\n");
    let mut conn = TcpStream::connect(gw.api).await.unwrap();
    conn.write_all(&request()).await.unwrap();
    assert!(answer(&mut conn).await.starts_with("HTTP/1.1 200 "));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(&request()).await.unwrap();
    assert!(answer(&mut conn).await.starts_with("HTTP/1.1 200 "));
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert_408(&until_closed(&mut conn).await);
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// Over `limits.max_connections` a new connection is closed at once (not after the head
/// deadline), and counted; when one closes, the next is served.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "limits:\n  max_connections: 3\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(gw.api).await.unwrap();
        c.write_all(&request()).await.unwrap();
        assert!(answer(&mut c).await.starts_with("HTTP/1.1 200 "));
        held.push(c);
    }
    let mut over = TcpStream::connect(gw.api).await.unwrap();
    let started = Instant::now();
    let _ = over.write_all(&request()).await;
    let text = until_closed(&mut over).await;
    assert!(text.is_empty(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_rejected_requests_total{reason="max_connections"}"#,
        1.0,
    )
    .await;
    drop(held.pop());
    // The closed one is counted out once the gateway sees it go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = TcpStream::connect(gw.api).await.unwrap();
        let _ = c.write_all(&request()).await;
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).await.is_ok() {
            assert_eq!(&buf, b"HTTP/1.1 200");
            break;
        }
        assert!(Instant::now() < deadline, "never admitted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With 128 descriptors (`ulimit -n`), the default cap is derived from them: 300 idle sockets
/// on the public port leave the admin listener answering `/metrics` and `/healthz`, and the
/// API serving a request once the flood is gone.
#[tokio::test]
async fn a_flood_of_sockets_leaves_the_admin_listener_answering() {
    let sim = Sim::fast(SERVED);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\npools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    \
             servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
            sim.url()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -n 128 && exec \"$0\" run -c \"$1\""])
        .arg(common::BIN)
        .arg(&config)
        .env("RUST_LOG", "info");
    let (mut api, mut admin): (Option<SocketAddr>, Option<SocketAddr>) = (None, None);
    let proc = common::start(
        cmd,
        "switchyard under ulimit -n 128",
        Duration::from_secs(30),
        |line| {
            let addr = |label: &str| {
                line.split("listening on ")
                    .nth(1)
                    .filter(|rest| rest.ends_with(label))
                    .and_then(|rest| rest.split(' ').next()?.parse().ok())
            };
            api = api.or_else(|| addr("(api)"));
            admin = admin.or_else(|| addr("(admin)"));
            api.is_some() && admin.is_some()
        },
    );
    let (api, admin) = (api.unwrap(), admin.unwrap());
    assert!(
        proc.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("client connections capped at 32")),
        "{:?}",
        proc.stderr.lock().unwrap()
    );
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(c) = TcpStream::connect(api).await {
            flood.push(c);
        }
    }
    // The listener works through its backlog: all but the 32 it keeps are closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = common::get_text(&format!("http://{admin}/metrics")).await;
        let refused = metric_value(
            &metrics,
            r#"switchyard_rejected_requests_total{reason="max_connections"}"#,
        );
        if refused >= Some((flood.len() - 32) as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{refused:?} of {} refused",
            flood.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = common::client()
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = TcpStream::connect(api).await.unwrap();
        let _ = c.write_all(&request()).await;
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).await.is_ok() {
            assert_eq!(&buf, b"HTTP/1.1 200");
            break;
        }
        assert!(Instant::now() < deadline, "the API never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(proc);
}
