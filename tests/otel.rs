//! OpenTelemetry trace export (`otel:`) to an OTLP/HTTP receiver started here: a span per
//! request and per attempt with GenAI attributes, the client's trace continued, the attempt's
//! span id sent upstream as `traceparent`, and sampling that follows the client's flag.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::canned::{Answer, Canned};
use common::{client, dead_addr, Gateway};
use serde_json::{json, Value};

const SERVED: &str = "served-model";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OpenAI-shaped upstream: a chat answer with usage, or a short stream with a usage event.
async fn upstream() -> Canned {
    Canned::start(|_, _| {
        Answer::new(
            200,
            "application/json",
            json!({"id": "c", "object": "chat.completion", "model": SERVED,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
            .to_string(),
        )
    })
    .await
}

/// A collector: answers every export 200 and keeps what it was sent.
async fn collector() -> Canned {
    Canned::start(|_, _| Answer::new(200, "application/json", "{}")).await
}

/// Every span the collector received, flattened, with its attributes as a map.
fn spans(collector: &Canned) -> Vec<Value> {
    let mut out = Vec::new();
    for seen in collector.seen() {
        assert!(seen.head.starts_with("POST /v1/traces "), "{}", seen.head);
        let body: Value = serde_json::from_slice(&seen.body).unwrap();
        for rs in body["resourceSpans"].as_array().unwrap() {
            let service = attributes(&rs["resource"]["attributes"])["service.name"].clone();
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    let mut span = span.clone();
                    span["attrs"] = attributes(&span["attributes"]);
                    span["service"] = service.clone();
                    out.push(span);
                }
            }
        }
    }
    out
}

/// OTLP/JSON's `[{key, value: {stringValue | intValue | doubleValue | boolValue}}]` as a map.
fn attributes(list: &Value) -> Value {
    let mut map = serde_json::Map::new();
    for kv in list.as_array().into_iter().flatten() {
        let v = &kv["value"];
        let value = if let Some(s) = v.get("stringValue") {
            s.clone()
        } else if let Some(i) = v.get("intValue") {
            // int64 travels as a string in OTLP/JSON.
            json!(i
                .as_i64()
                .or_else(|| i.as_str().and_then(|s| s.parse().ok()))
                .unwrap())
        } else if let Some(d) = v.get("doubleValue") {
            d.clone()
        } else {
            v.get("boolValue").cloned().unwrap_or(Value::Null)
        };
        map.insert(kv["key"].as_str().unwrap().to_owned(), value);
    }
    Value::Object(map)
}

/// The spans once there are at least `n` (the batch goes out every 100 ms here).
async fn wait_spans(collector: &Canned, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = spans(collector);
        if s.len() >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "{} spans of {n}: {s:?}", s.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gateway(servers: &[String], collector: &Canned, otel_extra: &str) -> Gateway {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {s}\n"))
        .collect();
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: openai\n    balance: weighted_round_robin\n    \
         health:\n      enabled: false\n    servers:\n{list}models:\n  m:\n    pool: p\n\
         otel:\n  endpoint: {}\n  protocol: http/json\n  batch_delay: 100ms\n  service_name: gw-test\n{otel_extra}",
        collector.url()
    ))
}

async fn chat(gw: &Gateway, traceparent: Option<&str>) -> reqwest::Response {
    let mut req = client().post(gw.url("/v1/chat/completions")).json(&json!({
        "model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]
    }));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// A client's sampled trace is continued: the request's span hangs under the client's span,
/// carries the GenAI attributes, and its attempt's span id is the `traceparent` the server got.
#[tokio::test]
async fn a_request_and_its_attempt_are_spans_of_the_clients_trace() {
    let (up, col) = (upstream().await, collector().await);
    let gw = gateway(&[up.url()], &col, "");
    chat(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")))
        .await
        .bytes()
        .await
        .unwrap();
    let spans = wait_spans(&col, 2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    let attempt = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    assert_eq!(server["traceId"], CLIENT_TRACE);
    assert_eq!(server["parentSpanId"], CLIENT_SPAN);
    assert_eq!(server["name"], "chat m");
    assert_eq!(server["service"], "gw-test");
    let a = &server["attrs"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.request.model"], "m");
    assert_eq!(a["gen_ai.response.model"], SERVED);
    assert_eq!(a["gen_ai.usage.input_tokens"], 11);
    assert_eq!(a["gen_ai.usage.output_tokens"], 2);
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["switchyard.attempts"], 1);
    assert!(
        a.get("gen_ai.server.time_to_first_token").is_none(),
        "not a stream: {a}"
    );
    assert_eq!(attempt["traceId"], CLIENT_TRACE);
    assert_eq!(attempt["parentSpanId"], server["spanId"]);
    assert_eq!(attempt["name"], format!("chat {SERVED}"));
    assert_eq!(attempt["attrs"]["server.port"], up.addr.port());
    assert_eq!(attempt["attrs"]["server.address"], "127.0.0.1");
    let sent = up.seen()[0]
        .header("traceparent")
        .expect("traceparent upstream");
    assert_eq!(
        sent,
        format!(
            "00-{CLIENT_TRACE}-{}-01",
            attempt["spanId"].as_str().unwrap()
        )
    );
}

/// A connect failure and the retry that answered are two attempt spans of one trace started
/// here; the failed one says why.
#[tokio::test]
async fn a_failed_over_request_has_a_span_per_attempt() {
    let (up, col) = (upstream().await, collector().await);
    let dead = format!("http://{}", dead_addr());
    let gw = gateway(&[dead, up.url()], &col, "");
    // Round robin: one of two requests meets the dead server first.
    for _ in 0..2 {
        chat(&gw, None).await.bytes().await.unwrap();
    }
    let spans = wait_spans(&col, 5).await;
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2 && s["attrs"]["switchyard.attempts"] == 2)
        .unwrap_or_else(|| panic!("no request with two attempts: {spans:?}"));
    assert!(
        server.get("parentSpanId").is_none_or(|p| p == ""),
        "a root: {server}"
    );
    let mut attempts: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == 3 && s["parentSpanId"] == server["spanId"])
        .collect();
    attempts.sort_by_key(|s| {
        s["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
    });
    assert_eq!(attempts.len(), 2, "{spans:?}");
    assert_eq!(attempts[0]["attrs"]["error.type"], "connect_refused");
    assert_eq!(
        attempts[0]["status"]["code"], 2,
        "error status: {}",
        attempts[0]
    );
    assert_eq!(attempts[1]["attrs"]["http.response.status_code"], 200);
    assert!(attempts.iter().all(|a| a["traceId"] == server["traceId"]));
}

/// Sampling: with `sample_ratio: 0` a trace started here is not recorded, a client's sampled
/// trace is; a client's unsampled trace is not, but its trace id and flag still go upstream.
#[tokio::test]
async fn sampling_follows_the_ratio_and_the_clients_flag() {
    let (up, col) = (upstream().await, collector().await);
    let gw = gateway(&[up.url()], &col, "  sample_ratio: 0\n");
    chat(&gw, None).await.bytes().await.unwrap();
    chat(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00")))
        .await
        .bytes()
        .await
        .unwrap();
    chat(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")))
        .await
        .bytes()
        .await
        .unwrap();
    wait_spans(&col, 2).await;
    // One more sampled request, and its spans: the unsampled ones would have gone out by then.
    chat(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")))
        .await
        .bytes()
        .await
        .unwrap();
    let spans = wait_spans(&col, 4).await;
    assert_eq!(spans.len(), 4, "{spans:?}");
    assert!(spans.iter().all(|s| s["traceId"] == CLIENT_TRACE));
    let seen = up.seen();
    let unsampled = seen[1].header("traceparent").unwrap();
    assert!(
        unsampled.starts_with(&format!("00-{CLIENT_TRACE}-")),
        "{unsampled}"
    );
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    assert!(
        !unsampled.contains(CLIENT_SPAN),
        "a span of its own: {unsampled}"
    );
    assert!(seen[0].header("traceparent").unwrap().ends_with("-00"));
}

/// Without `otel:` a client's `traceparent` passes through untouched and nothing is exported.
#[tokio::test]
async fn without_otel_the_clients_traceparent_passes_through() {
    let up = upstream().await;
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: openai\n    health:\n      enabled: false\n    \
         servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        up.url()
    ));
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    chat(&gw, Some(&tp)).await.bytes().await.unwrap();
    assert_eq!(up.seen()[0].header("traceparent"), Some(tp));
}

/// A stream's request span carries its time to first token and the usage the server reported.
#[tokio::test]
async fn a_stream_span_has_its_time_to_first_token_and_usage() {
    let sim = common::Sim::fast(SERVED);
    let col = collector().await;
    let gw = gateway(&[sim.url()], &col, "");
    let body = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "max_tokens": 3, "stream": true,
                      "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    let spans = wait_spans(&col, 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let a = &server["attrs"];
    let ttft = a["gen_ai.server.time_to_first_token"].as_f64().unwrap();
    assert!(ttft > 0.0 && ttft < 5.0, "{a}");
    assert_eq!(a["gen_ai.usage.output_tokens"], 3, "{a}");
    assert!(a["gen_ai.usage.input_tokens"].as_i64().unwrap() > 0, "{a}");
    assert_eq!(a["switchyard.stream"], true);
}

/// The default protocol is OTLP/HTTP protobuf, as collectors expect.
#[tokio::test]
async fn the_default_export_is_protobuf() {
    let (up, col) = (upstream().await, collector().await);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: openai\n    health:\n      enabled: false\n    \
         servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n\
         otel:\n  endpoint: {}\n  batch_delay: 100ms\n",
        up.url(),
        col.url()
    ));
    chat(&gw, None).await.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while col.seen().is_empty() {
        assert!(Instant::now() < deadline, "nothing exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let export = &col.seen()[0];
    assert!(
        export.head.starts_with("POST /v1/traces "),
        "{}",
        export.head
    );
    assert_eq!(
        export.header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    // The request span's name is in the message as bytes.
    let body = String::from_utf8_lossy(&export.body);
    assert!(body.contains("chat m"), "{body:?}");
}
