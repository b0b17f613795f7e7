//! HTTP/1 at the edge, byte by byte: heads Pingora refuses and heads RELIABILITY.md refuses
//! get OpenAI's error shape with the right status, close the connection, and are counted and
//! logged; pipelined requests are answered in order; an HTTP/1.0 client gets HTTP/1.0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{get_text, metric_value, Gateway, Sim};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn gateway(sim: &Sim) -> Gateway {
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    servers:\n      - url: {}\n\
         models:\n  m:\n    pool: p\n",
        sim.url()
    ))
}

const CHAT: &str = r#"{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"x"}]}"#;

fn post(version: &str, extra: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/{version}\r\nhost: gw\r\ncontent-type: application/json\r\n\
         {extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `raw` on a new connection; everything the gateway sends until it closes (10 s at
/// most, `None` if it does not close).
async fn exchange(gw: &Gateway, raw: &[u8]) -> Option<String> {
    let mut conn = TcpStream::connect(gw.api).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn refused_heads_get_openai_errors_with_their_status_and_are_closed_counted_and_logged() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim);
    let fields = |n: usize| (0..n).map(|i| format!("x-f{i}: 1\r\n")).collect::<String>();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        // Refused by Pingora's parser, before any hook.
        (
            "conflicting Content-Length",
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".into(),
            400,
            "invalid_request_head",
        ),
        (
            "obs-fold",
            "GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-a: 1\r\n  folded\r\n\r\n".into(),
            400,
            "invalid_request_head",
        ),
        (
            "absolute-form target",
            "GET http://elsewhere/v1/models HTTP/1.1\r\nhost: gw\r\n\r\n".into(),
            400,
            "invalid_request_head",
        ),
        (
            "300 fields",
            format!("GET /v1/models HTTP/1.1\r\nhost: gw\r\n{}\r\n", fields(300)),
            431,
            "request_header_fields_too_large",
        ),
        // Let through by Pingora, refused by the gateway.
        (
            "101 fields",
            format!("GET /v1/models HTTP/1.1\r\nhost: gw\r\n{}\r\n", fields(100)),
            431,
            "request_header_fields_too_large",
        ),
        (
            "a 70 KiB field",
            format!("GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)),
            431,
            "request_header_fields_too_large",
        ),
        (
            "a 9 KiB URI",
            format!("GET /v1/models?{} HTTP/1.1\r\nhost: gw\r\n\r\n", "a".repeat(9000)),
            414,
            "uri_too_long",
        ),
        (
            "no Host",
            "GET /v1/models HTTP/1.1\r\n\r\n".into(),
            400,
            "invalid_request_head",
        ),
        (
            // A request smuggled behind a chunked body must never be served.
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n\r\n{}",
                CHAT.len(),
                post("1.1", "", CHAT)
            ),
            400,
            "invalid_request_head",
        ),
    ];
    for (what, raw, status, code) in &cases {
        let text = exchange(&gw, raw.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: the connection stayed open"));
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {text}"
        );
        assert_eq!(
            text.matches("HTTP/1.1 4").count(),
            1,
            "{what}: one answer: {text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("server: pingora"),
            "{what}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{what}: {text}"
        );
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["error"]["code"], *code, "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
    }
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 0.0);
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    for (code, n) in [
        ("invalid_request_head", 5.0),
        ("request_header_fields_too_large", 3.0),
        ("uri_too_long", 1.0),
    ] {
        let name = format!("switchyard_rejected_requests_total{{reason=\"{code}\"}}");
        assert_eq!(metric_value(&metrics, &name), Some(n), "{code}: {metrics}");
    }
    let log = gw.access_log_lines(cases.len()).await;
    for (line, (what, _, status, _)) in log.iter().zip(&cases) {
        assert_eq!(line["status"], *status, "{what}: {line}");
        assert_eq!(line["outcome"], "rejected", "{what}");
    }
}

/// Two requests in one write: both answered, in order, on the same connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim);
    let chat = post("1.1", "", CHAT);
    let raw = format!("{chat}GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n{chat}");
    let mut conn = TcpStream::connect(gw.api).await.unwrap();
    conn.write_all(raw.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    while got.matches("HTTP/1.1 200 ").count() < 3 || !got.ends_with('}') {
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        let n = read.expect("an answer is missing").unwrap();
        assert!(n > 0, "closed after: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let bodies: Vec<&str> = got.split("HTTP/1.1 200 ").skip(1).collect();
    assert_eq!(bodies.len(), 3, "{got}");
    assert!(bodies[0].contains("chat.completion"), "{}", bodies[0]);
    assert!(bodies[1].contains("\"object\":\"list\""), "{}", bodies[1]);
    assert!(bodies[2].contains("chat.completion"), "{}", bodies[2]);
    assert!(
        !got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
}

/// An HTTP/1.0 client: a stream without chunked coding, delimited by the close; no
/// keep-alive unless it asked for it.
#[tokio::test]
async fn an_http10_client_gets_http10_semantics() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim);
    let stream = CHAT.replace("\"max_tokens\":2", "\"stream\":true,\"max_tokens\":3");
    let text = exchange(&gw, post("1.0", "", &stream).as_bytes())
        .await
        .expect("the stream ends with the connection");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.starts_with("data: {"), "not chunk-framed: {body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // Not asked: closed after the answer.
    let text = exchange(&gw, post("1.0", "", CHAT).as_bytes()).await;
    let text = text.expect("closed after the answer");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // Asked: kept open for the next request.
    let mut conn = TcpStream::connect(gw.api).await.unwrap();
    let asked = post("1.0", "connection: keep-alive\r\n", CHAT);
    for i in 0..2 {
        conn.write_all(asked.as_bytes()).await.unwrap();
        let text = one_answer(&mut conn).await;
        assert!(text.starts_with("HTTP/1.1 200 "), "request {i}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: keep-alive"),
            "{text}"
        );
    }
}

/// One answer with a Content-Length body, read off a kept-alive connection.
async fn one_answer(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        let n = read.expect("no answer").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.to_ascii_lowercase().lines().find_map(|l| {
                l.strip_prefix("content-length: ")
                    .and_then(|v| v.parse::<usize>().ok())
            });
            if len.is_some_and(|len| body.len() >= len) {
                return text;
            }
        }
    }
}
