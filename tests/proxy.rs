//! The proxy, black-box: routing, body integrity, errors, headers, balancing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, dead_addr, h2c_client, openai_error, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The request body a test sends, and the one the upstream must receive.
fn bodies(model: &str, padding: usize) -> (String, String) {
    let make = |m: &str| {
        // The tail is at least `padding` bytes; the JSON stays valid at any size.
        format!(
            r#"{{"model":"{m}","prompt":"{}","max_tokens":1}}"#,
            "x".repeat(padding)
        )
    };
    (make(model), make(SERVED))
}

#[tokio::test]
async fn models_list_names_every_model_and_alias() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let v = common::get_json(&gw.url("/v1/models")).await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m", "m-alias"]);
    assert_eq!(v["data"][0]["object"], "model");
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): a model or alias as the list shows it,
/// a name with a slash plain or percent-encoded, 404 `model_not_found` for another, and the
/// access log calls the answers `ok` and `rejected`.
#[tokio::test]
async fn a_model_is_retrieved_by_its_name() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    servers:\n      - url: {}\n\
         models:\n  m:\n    pool: p\n    aliases: [org/m-alias]\n",
        sim.url()
    ));
    for id in ["m", "org/m-alias", "org%2Fm-alias"] {
        let v = common::get_json(&gw.url(&format!("/v1/models/{id}"))).await;
        assert_eq!(v["object"], "model", "{id}: {v}");
        assert_eq!(v["id"], id.replace("%2F", "/"));
        assert_eq!(v["owned_by"], "switchyard");
    }
    let resp = client()
        .get(gw.url("/v1/models/nope"))
        .send()
        .await
        .unwrap();
    let v = openai_error(resp, 404).await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let resp = client().post(gw.url("/v1/models/m")).send().await.unwrap();
    openai_error(resp, 405).await;
    let log = gw.access_log_lines(5).await;
    let outcomes: Vec<&str> = log.iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "rejected", "rejected"]);
}

/// `Expect: 100-continue` is answered at once when the declared size is acceptable (a client
/// waits for it before sending the body), and not at all when it is too large: the 413 comes
/// first. The upstream is not asked to continue: the gateway has the body.
#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "limits:\n  max_body_size: 1KiB\n");
    let body = r#"{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"x"}]}"#;
    let mut conn = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 25];
    tokio::time::timeout(std::time::Duration::from_secs(2), conn.read_exact(&mut got))
        .await
        .expect("no 100 Continue within 2 s")
        .unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut rest = [0u8; 12];
    conn.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"HTTP/1.1 200", "one 100, then the answer");

    let mut big = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    big.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\n\
          content-type: application/json\r\ncontent-length: 4096\r\n\r\n",
    )
    .await
    .unwrap();
    let mut status = [0u8; 12];
    big.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 413");
}

#[tokio::test]
async fn chat_completion_by_alias_reaches_the_pool_with_the_served_name() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m-alias", "max_tokens": 3,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    // The simulator answers 404 for any other model name, so a 200 proves the rewrite.
    assert_eq!(v["model"], SERVED);
}

#[tokio::test]
async fn completions_and_embeddings_are_routed() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let c = client();
    let v: Value = c
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "m", "prompt": "once upon", "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let v: Value = c
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "m", "input": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    // A list of inputs: one vector each, in order, equal for equal texts.
    let v: Value = c
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "m", "input": ["hello", "world", "hello"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    let indices: Vec<u64> = data.iter().map(|d| d["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
}

/// The upstream receives the body byte for byte (model rewritten) for sizes around Pingora's
/// 64 KiB retry buffer and far beyond it, over HTTP/1.1 and h2c.
#[tokio::test]
async fn upstream_receives_the_body_intact_at_every_size() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let overhead = bodies("m", 0).0.len();
    let sizes: [usize; 6] = [
        100,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        1024 * 1024,
        8 * 1024 * 1024 - 64,
    ];
    for (name, c) in [("http1", client()), ("h2c", h2c_client())] {
        for size in sizes {
            let (sent, expected) = bodies("m", size.saturating_sub(overhead));
            assert!(sent.len() == size || size < overhead);
            let resp = c
                .post(gw.url("/v1/completions"))
                .header("x-sim-echo", "body")
                .header("content-type", "application/json")
                .body(sent.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name} size {size}");
            let got = resp.bytes().await.unwrap();
            assert_eq!(got.len(), expected.len(), "{name} size {size}");
            assert!(
                got == expected.as_bytes(),
                "{name} size {size}: body differs"
            );
        }
    }
}

#[tokio::test]
async fn body_over_the_cap_is_413_without_contacting_the_upstream() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "limits:\n  max_body_size: 1MiB\n");
    let (ok, _) = bodies("m", 1024 * 1024 - 100);
    assert!(ok.len() <= 1024 * 1024);
    let resp = client()
        .post(gw.url("/v1/completions"))
        .header("x-sim-echo", "body")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (big, _) = bodies("m", 1024 * 1024 + 1);
    let resp = client()
        .post(gw.url("/v1/completions"))
        .body(big)
        .send()
        .await
        .unwrap();
    let v = openai_error(resp, 413).await;
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 1.0);
}

#[tokio::test]
async fn malformed_requests_get_openai_errors_and_no_upstream_call() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let c = client();
    let post = |body: &'static str| {
        c.post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let v = openai_error(post("{\"model\": ").await.unwrap(), 400).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let v = openai_error(post(r#"{"messages": []}"#).await.unwrap(), 400).await;
    assert_eq!(v["error"]["param"], "model");
    let v = openai_error(post(r#"{"model": 7}"#).await.unwrap(), 400).await;
    assert_eq!(v["error"]["param"], "model");
    let v = openai_error(
        post(r#"{"model": "m", "stream": "yes"}"#).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["param"], "stream");
    let v = openai_error(post(r#"{"model": "gpt-4o"}"#).await.unwrap(), 404).await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let resp = c.get(gw.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    openai_error(resp, 405).await;
    for path in ["/v2/whatever", "/metrics", "/healthz", "/readyz"] {
        let v = openai_error(c.get(gw.url(path)).send().await.unwrap(), 404).await;
        assert_eq!(v["error"]["code"], "unknown_url");
    }
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 0.0);
}

#[tokio::test]
async fn unreachable_pool_is_a_5xx_that_names_no_address() {
    let dead = dead_addr();
    let gw = Gateway::single(SERVED, &[format!("http://{dead}")], "");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert!(status == 502 || status == 503, "status {status}");
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(
        !text.contains(&dead.port().to_string()),
        "address leaked: {text}"
    );
    assert!(!text.contains("127.0.0.1"), "address leaked: {text}");
}

#[tokio::test]
async fn request_id_and_forwarding_headers() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let resp = client()
        .post(gw.url("/v1/completions"))
        .header("x-sim-echo", "headers")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil")
        .header("authorization", "Bearer sk-client-secret")
        .header("x-request-id", "req-42")
        .header("x-custom", "kept")
        .json(&json!({"model": "m", "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["x-request-id"], "req-42");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(seen.get("x-forwarded-host").is_none(), "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["host"], sim.addr.to_string());

    // Without a client id, one is generated and returned.
    let resp = client()
        .post(gw.url("/v1/completions"))
        .header("x-sim-echo", "headers")
        .json(&json!({"model": "m", "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["x-request-id"], id.as_str());
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let a = Sim::fast(SERVED);
    let b = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    balance: weighted_round_robin\n    servers:\n      - url: {}\n        weight: 2\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        a.url(),
        b.url()
    ));
    for _ in 0..30 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 20.0);
    assert_eq!(b.metric("switchyard_sim_http_requests_total").await, 10.0);
}

#[tokio::test]
async fn admin_serves_metrics_health_and_readiness() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let c = client();
    for stream in [false, true] {
        let resp = c
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "stream": stream, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // A request is counted (and logged) after its last byte went out: wait for both, so that
    // the rejection below is the third line of the access log.
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_requests_total{model="m",pool="p",status="200"}"#,
        2.0,
    )
    .await;
    gw.post("/v1/chat/completions", &json!({"model": "nope"}))
        .await;
    let text = common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_rejected_requests_total{reason="model_not_found"}"#,
        1.0,
    )
    .await;
    let v = |name: &str| common::metric_value(&text, name);
    assert_eq!(
        v(r#"switchyard_requests_total{model="m",pool="p",status="200"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v(r#"switchyard_request_duration_seconds_count{model="m",pool="p"}"#),
        Some(2.0)
    );
    // Streams only: one of the two.
    assert_eq!(
        v(r#"switchyard_time_to_first_token_seconds_count{model="m",pool="p"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"switchyard_gateway_overhead_seconds_count{model="m",pool="p"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"switchyard_rejected_requests_total{reason="model_not_found"}"#),
        Some(1.0)
    );
    let health = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // One access log line per request, without prompts.
    let log = gw.access_log_lines(3).await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0]["model"], "m");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[1]["stream"], true);
    assert_eq!(log[2]["outcome"], "rejected");
}

/// Bodies without Content-Length (chunked uploads) are accepted up to Pingora's 64 KiB retry
/// buffer and refused with 411 above it, never forwarded half.
#[tokio::test]
async fn chunked_uploads_are_forwarded_intact_up_to_64_kib_and_411_above() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let chunked = |body: String| {
        let parts: Vec<Result<String, std::io::Error>> = body
            .as_bytes()
            .chunks(4096)
            .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(parts))
    };
    let (small, expected) = bodies("m", 20_000);
    let resp = client()
        .post(gw.url("/v1/completions"))
        .header("x-sim-echo", "body")
        .body(chunked(small))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == expected.as_bytes());

    let (big, _) = bodies("m", 100_000);
    let resp = client()
        .post(gw.url("/v1/completions"))
        .body(chunked(big))
        .send()
        .await
        .unwrap();
    let v = openai_error(resp, 411).await;
    assert_eq!(v["error"]["code"], "length_required");
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 1.0);
}

/// The gateway reports its own time per request, which is less than what the client waited.
#[tokio::test]
async fn overhead_header_reports_the_gateways_own_time() {
    let sim = Sim::start(
        SERVED,
        &["--decode-step-ms", "30", "--decode-us-per-seq", "0"],
    );
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let start = std::time::Instant::now();
    let resp = client()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "m", "prompt": "x", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    let waited = start.elapsed();
    let overhead: u64 = resp.headers()["x-switchyard-overhead-us"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    resp.bytes().await.unwrap();
    // Three 30 ms decode steps happened upstream and are not gateway time.
    assert!(waited.as_micros() as u64 >= 90_000, "{waited:?}");
    assert!(overhead < 60_000, "overhead {overhead} µs of {waited:?}");
    let log = gw.access_log_lines(1).await;
    assert_eq!(log[0]["overhead_us"], overhead);
}

/// `server.response_model: public`: an answer's `model`, whole or in every event of a stream,
/// names the public model that answered; by default it is what the server said.
#[tokio::test]
async fn response_model_public_names_the_public_model_in_answers_and_events() {
    let sim = Sim::fast(SERVED);
    for (extra, want) in [("", SERVED), ("server:\n  response_model: public\n", "m")] {
        let gw = Gateway::single(SERVED, &[sim.url()], extra);
        let c = client();
        let whole: serde_json::Value = c
            .post(gw.url("/v1/chat/completions"))
            .json(&serde_json::json!({"model": "m-alias", "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(whole["model"], want, "{extra}");
        assert_eq!(whole["usage"]["completion_tokens"], 3, "{whole}");
        let text = c
            .post(gw.url("/v1/chat/completions"))
            .json(
                &serde_json::json!({"model": "m", "stream": true, "max_tokens": 5,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(events.len(), 7, "{text}");
        assert!(events.iter().all(|e| e["model"] == want), "{extra}: {text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
