//! Upstream faults the client must not notice (before the first byte), and honest endings
//! when it must (after it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, dead_addr, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn chat(stream: bool, max_tokens: u32) -> Value {
    json!({"model": "m", "stream": stream, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello"}]})
}

/// A pool of one dead port, one server answering 503 with Retry-After and one healthy server
/// answers every request, cold and warm; the 503 server is left alone during its cooldown.
#[tokio::test]
async fn dead_and_overloaded_servers_are_failed_over_before_the_first_byte() {
    let busy = Sim::start(
        SERVED,
        &["--zero-delay", "--fault", "status=503,retry_after=60"],
    );
    let good = Sim::fast(SERVED);
    let dead = format!("http://{}", dead_addr());
    let gw = Gateway::single(SERVED, &[dead, busy.url(), good.url()], "");
    let c = client();
    for i in 0..12 {
        let resp = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(i % 2 == 0, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("\"error\""), "request {i}: {body}");
    }
    assert_eq!(
        good.metric("switchyard_sim_http_requests_total").await,
        12.0
    );
    assert_eq!(
        busy.metric("switchyard_sim_http_requests_total").await,
        1.0,
        "the 503 server must be in its 60 s cooldown after one answer"
    );
    let log = gw.access_log_lines(12).await;
    assert!(log
        .iter()
        .all(|l| l["status"] == 200 && l["outcome"] == "ok"));
    assert!(log.iter().any(|l| l["attempts"].as_u64() > Some(1)));
}

#[tokio::test]
async fn the_last_servers_answer_is_relayed_when_no_server_is_left() {
    let a = Sim::start(SERVED, &["--zero-delay", "--fault", "status=502"]);
    let b = Sim::start(SERVED, &["--zero-delay", "--fault", "status=502"]);
    let gw = Gateway::single(SERVED, &[a.url(), b.url()], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 1.0);
    assert_eq!(b.metric("switchyard_sim_http_requests_total").await, 1.0);
}

#[tokio::test]
async fn every_server_in_cooldown_is_503_no_healthy_upstream_without_contacting_them() {
    let a = Sim::start(
        SERVED,
        &["--zero-delay", "--fault", "status=429,retry_after=60"],
    );
    let gw = Gateway::single(SERVED, &[a.url()], "");
    let c = client();
    let first = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 429, "the only server's answer is relayed");
    let second = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(second.headers()["x-should-retry"], "false");
    assert!(second.headers().contains_key("retry-after"));
    let v = common::openai_error(second, 503).await;
    assert_eq!(v["error"]["code"], "no_healthy_upstream");
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 1.0);
}

/// After the first byte the gateway never retries: the client gets every event received,
/// then an error event and [DONE] — never a silent truncation or a made-up finish_reason.
#[tokio::test]
async fn upstream_death_mid_stream_ends_with_an_error_event_and_done() {
    // Tokens 5 ms apart, as a server produces them (an abort right after a burst can discard
    // bytes still in the sending socket, which is not what a dying GPU server does).
    let sim = Sim::paced(SERVED, 5, &["--fault", "die_after=3"]);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(true, 20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("the stream must end cleanly");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 5, "{text}");
    for e in &events[..3] {
        assert!(e.contains("\"content\""), "{e}");
        assert!(
            !e.contains("finish_reason\":\""),
            "no fabricated finish_reason: {e}"
        );
    }
    let err: Value = serde_json::from_str(events[3].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_stream_interrupted");
    assert_eq!(events[4], "data: [DONE]");
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["outcome"], "upstream_error");
}

/// A server that answers `200 text/event-stream` and then ends, or sends what no client can
/// parse, before its first event has failed before the first byte: the request goes to the
/// other server, and the failure counts against this one (its breaker opens after five in a
/// row, and it gets nothing more).
#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_is_retried_and_counted() {
    for (fault, kind) in [
        ("die_after=0", "stream_ended_early"),
        ("garbage=0", "stream_malformed"),
    ] {
        let bad = Sim::start(SERVED, &["--zero-delay", "--fault", fault]);
        let good = Sim::fast(SERVED);
        // Round robin: the bad server's own load (a cut stream may still run in it) must not
        // keep traffic away from it.
        let gw = Gateway::start(&format!(
            "pools:\n  p:\n    model: {SERVED}\n    balance: weighted_round_robin\n    servers:\n      - url: {}\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
            bad.url(),
            good.url()
        ));
        let c = client();
        // Until five failures opened its breaker, then more.
        let mut sent = 0;
        let mut after_open = 0;
        while after_open < 10 {
            if sent >= 300 {
                let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
                let n = bad.metric("switchyard_sim_http_requests_total").await;
                panic!("{fault}: the bad server never failed five times ({n}): {servers}");
            }
            let resp = c
                .post(gw.url("/v1/chat/completions"))
                .json(&chat(true, 3))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{fault}: request {sent}");
            let text = resp.text().await.unwrap();
            assert!(!text.contains("error"), "{fault}: request {sent}: {text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{fault}: {text}");
            sent += 1;
            if after_open > 0 || bad.metric("switchyard_sim_http_requests_total").await >= 5.0 {
                after_open += 1;
            }
        }
        let failed = bad.metric("switchyard_sim_http_requests_total").await;
        assert_eq!(
            failed, 5.0,
            "{fault}: five failures open the breaker, then nothing more"
        );
        let metrics = common::get_text(&gw.admin_url("/metrics")).await;
        let name = format!("switchyard_upstream_errors_total{{kind=\"{kind}\",pool=\"p\"}}");
        assert_eq!(
            common::metric_value(&metrics, &name),
            Some(5.0),
            "{metrics}"
        );
        let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
        assert_eq!(
            servers["pools"][0]["servers"][0]["breaker"], "open",
            "{servers}"
        );
        let log = gw.access_log_lines(sent).await;
        assert!(log
            .iter()
            .all(|l| l["outcome"] == "ok" && l["status"] == 200));
        let retried = log.iter().filter(|l| l["attempts"] == 2).count();
        assert_eq!(retried, 5, "{fault}");
    }
}

/// What no client can parse after the first event ends the stream there: the events before
/// it, the error event and `[DONE]`; logged and counted as the server's failure.
#[tokio::test]
async fn a_malformed_event_mid_stream_ends_the_stream_with_an_error_event() {
    let sim = Sim::paced(SERVED, 5, &["--fault", "garbage=2"]);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(true, 20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("the stream must end cleanly");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    for e in &events[..2] {
        let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert!(v["choices"][0]["delta"]["content"].is_string(), "{e}");
    }
    let err: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_stream_interrupted");
    assert_eq!(events[3], "data: [DONE]");
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["outcome"], "upstream_error");
    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    let name = "switchyard_upstream_errors_total{kind=\"stream_malformed\",pool=\"p\"}";
    assert_eq!(common::metric_value(&metrics, name), Some(1.0), "{metrics}");
}

/// A client that disconnects mid-stream frees the GPU: the gateway closes the upstream
/// connection and the (simulated) engine aborts the generation within a second.
#[tokio::test]
async fn client_disconnect_mid_stream_aborts_the_upstream_generation() {
    let sim = Sim::paced(SERVED, 20, &[]);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(true, 10_000))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    stream.next().await.unwrap().unwrap();
    let dropped = Instant::now();
    drop(stream);
    loop {
        if sim.metric("switchyard_sim_requests_aborted_total").await == 1.0 {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(1),
            "upstream generation still running 1 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.metric("vllm:num_requests_running").await, 0.0);
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["outcome"], "client_abort");
}

/// A server that streams 8 KiB events as fast as the gateway takes them, until the gateway
/// closes the connection; returns its address and what it saw: when its first write failed.
async fn firehose() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Instant>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        // The request: its head, then as many body bytes as its content-length says.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let whole = |r: &[u8]| {
            let text = String::from_utf8_lossy(r).to_ascii_lowercase();
            let (head, body) = text.split_once("\r\n\r\n")?;
            let length = head
                .split("content-length: ")
                .nth(1)?
                .split("\r\n")
                .next()?;
            (body.len() >= length.parse::<usize>().ok()?).then_some(())
        };
        while whole(&request).is_none() {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let header = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n";
        conn.write_all(header.as_bytes()).await.unwrap();
        let event = format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": "x".repeat(8192)}}]})
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        while conn.write_all(chunk.as_bytes()).await.is_ok() {}
        let _ = closed.send(Instant::now());
    });
    (addr, seen)
}

/// A client that stops reading mid-stream is cut off once a write to it has waited
/// `timeouts.client_write`, and its upstream connection is closed (which makes a GPU server
/// abort the generation): a stuck reader holds neither for longer.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, closed) = firehose().await;
    let gw = Gateway::start(&format!(
        "timeouts:\n  client_write: 1s\npools:\n  p:\n    model: {SERVED}\n    engine: openai\n    \
         health:\n      enabled: false\n    servers:\n      - url: http://{upstream}\n\
         models:\n  m:\n    pool: p\n"
    ));
    let mut conn = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    let body = chat(true, 100_000).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    conn.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    // From here on the client reads nothing; the server would stream for ever.
    let stopped = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the upstream connection still open 20 s after the client stopped reading")
        .unwrap();
    assert!(closed - stopped >= Duration::from_secs(1));
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["status"], 499, "{log:?}");
    assert_eq!(log[0]["outcome"], "client_abort");
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_streams_aborted_total{model="m",reason="client_write_timeout"}"#,
        1.0,
    )
    .await;
    drop(conn);
}
