//! Health checks, circuit breakers, fallback pools, first-token and total timeouts, through
//! the real gateway against simulator servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, dead_addr, get_json, get_text, metric_value, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Polls `/admin/servers` until `check` holds for server `i` of pool `p` (index), or fails
/// after 10 s with the last answer.
async fn server_eventually(gw: &Gateway, pool: usize, i: usize, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let servers = get_json(&gw.admin_url("/admin/servers")).await;
        if check(&servers["pools"][pool]["servers"][i]) {
            return;
        }
        assert!(Instant::now() < deadline, "condition never held: {servers}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A streamed chat completion of up to `max_tokens` from model `m`: its whole text, once the
/// answer was a 200.
async fn stream_text(gw: &Gateway, max_tokens: u32) -> String {
    let resp = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "stream": true, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// A stream's events, without their blank lines.
fn events(text: &str) -> Vec<&str> {
    text.split("\n\n").filter(|e| !e.is_empty()).collect()
}

/// A stream the gateway cut on an upstream timeout: its last events are the error and
/// `[DONE]`, and the abort is counted.
async fn ends_on_an_upstream_timeout(gw: &Gateway, events: &[&str]) {
    let [.., error, done] = events else {
        panic!("too few events: {events:?}");
    };
    assert_eq!(*done, "data: [DONE]");
    let error: Value = serde_json::from_str(error.trim_start_matches("data: ")).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_streams_aborted_total{model="m",reason="upstream_timeout"}"#,
        1.0,
    )
    .await;
}

/// Four streams through a pool of a server silent with `fault` and a good one (round robin,
/// first_token_timeout 300 ms) each come back whole, without an error event, and at least
/// one of them was retried after a timeout.
async fn silent_beside_good(fault: &str) {
    let silent = Sim::start(SERVED, &["--zero-delay", "--fault", fault]);
    let good = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    balance: weighted_round_robin\n    health:\n      enabled: false\n    servers:\n      - url: {}\n      - url: {}\nmodels:\n  m:\n    pool: p\n    first_token_timeout: 300ms\n",
        silent.url(),
        good.url()
    ));
    for _ in 0..4 {
        let started = Instant::now();
        let text = stream_text(&gw, 3).await;
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(!text.contains("\"error\""), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    let retried = metric_value(
        &metrics,
        r#"switchyard_retries_total{outcome="ok",pool="p",reason="timeout"}"#,
    );
    assert!(retried.is_some_and(|n| n >= 1.0), "{metrics}");
}

async fn counter(gw: &Gateway, name: &str) -> f64 {
    metric_value(&get_text(&gw.admin_url("/metrics")).await, name).unwrap_or(0.0)
}

/// A server that refuses connections is marked down by the first probe, so within one
/// interval no request is even attempted on it.
#[tokio::test]
async fn a_refusing_server_is_out_of_rotation_within_one_interval() {
    let sim = Sim::fast(SERVED);
    let dead = dead_addr();
    let started = Instant::now();
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: weighted_round_robin\n    health:\n      interval: 2s\n    servers:\n      - url: http://{dead}\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        sim.url()
    ));
    server_eventually(&gw, 0, 0, |s| s["health"] == "unhealthy").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    server_eventually(&gw, 0, 1, |s| s["health"] == "healthy").await;
    let refused = r#"switchyard_upstream_errors_total{kind="connect_refused",pool="p"}"#;
    let before = counter(&gw, refused).await;
    for _ in 0..10 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    assert_eq!(counter(&gw, refused).await, before);
    for line in gw.access_log_lines(10).await {
        assert_eq!(line["attempts"], 1, "{line}");
    }
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!("switchyard_upstream_healthy{{pool=\"p\",server=\"{dead}\"}}")
        ),
        Some(0.0)
    );
}

/// Five 502s in a row open the server's breaker: it gets no more requests, the client never
/// sees the failures (each was retried on the healthy server).
#[tokio::test]
async fn consecutive_failures_open_the_breaker_and_traffic_stops() {
    let broken = Sim::start(SERVED, &["--zero-delay", "--fault", "status=502"]);
    let good = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    balance: weighted_round_robin\n    servers:\n      - url: {}\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        broken.url(),
        good.url()
    ));
    for _ in 0..30 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    assert_eq!(
        broken.metric("switchyard_sim_http_requests_total").await,
        5.0
    );
    server_eventually(&gw, 0, 0, |s| {
        s["breaker"] == "open" && s["usable"] == false
    })
    .await;
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"switchyard_retries_total{outcome="ok",pool="p",reason="status_502"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"switchyard_upstream_errors_total{kind="status_502",pool="p"}"#
        ),
        Some(5.0)
    );
}

/// An open breaker sends nothing until its time is up; then a probe that succeeds closes it.
#[tokio::test]
async fn a_successful_probe_closes_the_breaker() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    breaker:\n      consecutive_failures: 2\n      open_for: 1s\n      half_open_probes: 1\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        sim.url()
    ));
    let c = client();
    let body = json!({"model": "m", "prompt": "x", "max_tokens": 1});
    for _ in 0..2 {
        let resp = c
            .post(gw.url("/v1/completions"))
            .header("x-sim-fault", "status=500")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
    }
    // Open: the gateway answers itself and says a client retry cannot help.
    let resp = gw.post("/v1/completions", &body).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "no_healthy_upstream");
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 2.0);
    // After the open period the next request is the probe.
    server_eventually(&gw, 0, 0, |s| s["breaker"] == "half_open").await;
    assert_eq!(gw.tiny_completion("m").await, 200);
    server_eventually(&gw, 0, 0, |s| s["breaker"] == "closed").await;
    assert_eq!(gw.tiny_completion("m").await, 200);
}

/// A model whose pool is down falls back to the pool it names, which gets the request with
/// its own served model name.
#[tokio::test]
async fn a_model_falls_back_to_the_next_pool_with_its_served_name() {
    let small = Sim::fast("small-model");
    let dead = dead_addr();
    let dead2 = dead_addr();
    let gw = Gateway::start(&format!(
        "pools:\n  big:\n    model: big-model\n    health:\n      enabled: false\n    servers:\n      - url: http://{dead}\n      - url: http://{dead2}\n  small:\n    model: small-model\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: big\n    fallback: [small]\n",
        small.url()
    ));
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-sim-echo", "body")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["model"], "small-model");
    assert_eq!(echoed["messages"][0]["content"], "hi");
    let line = &gw.access_log_lines(1).await[0];
    assert_eq!(line["pool"], "small");
    assert_eq!(
        line["attempts"], 3,
        "two dead servers, then the fallback: {line}"
    );
}

/// A stream whose server sends nothing, not even a response header, is failed over once the
/// model's first-token timeout passes.
#[tokio::test]
async fn a_silent_server_is_failed_over_after_the_first_token_timeout() {
    silent_beside_good("hang").await;
}

/// A stream longer than `timeouts.stream_total` is ended honestly: the events so far, an
/// error event, `[DONE]`.
#[tokio::test]
async fn a_stream_over_the_total_limit_ends_with_an_error_event() {
    let sim = Sim::start(SERVED, &["--decode-step-ms", "100"]);
    let gw = Gateway::single(SERVED, &[sim.url()], "timeouts:\n  stream_total: 1s\n");
    let text = stream_text(&gw, 100).await;
    let events = events(&text);
    assert!(events.len() > 3, "{text}");
    ends_on_an_upstream_timeout(&gw, &events).await;
}

/// A server that goes silent mid-stream, connection open, is cut once the model's first-token
/// timeout (the limit of every gap between events) passes: the events so far, an error event,
/// `[DONE]`.
#[tokio::test]
async fn a_server_silent_mid_stream_is_cut_after_the_first_token_timeout() {
    let sim = Sim::paced(SERVED, 5, &["--fault", "stall_after=2"]);
    let gw = Gateway::single(SERVED, &[sim.url()], "    first_token_timeout: 300ms\n");
    let started = Instant::now();
    let text = stream_text(&gw, 20).await;
    let took = started.elapsed();
    let events = events(&text);
    assert_eq!(events.len(), 4, "two tokens, the error, [DONE]: {text}");
    assert!(
        events[..2].iter().all(|e| e.contains("\"content\"")),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    ends_on_an_upstream_timeout(&gw, &events).await;
}

/// A server that answers `200 text/event-stream` at once and then stays silent is failed
/// over too: the gateway holds the response header back until the first event, so the
/// client sees only the other server's complete stream.
#[tokio::test]
async fn a_server_silent_after_its_header_is_failed_over_before_the_client_sees_it() {
    silent_beside_good("first_token_delay_ms=60000").await;
}

/// A non-streamed answer that does not come within `timeouts.request_total` is a 504 in
/// OpenAI's shape (the header wait of a non-streamed request is its whole generation).
#[tokio::test]
async fn a_non_streamed_request_over_the_total_limit_is_a_504() {
    let sim = Sim::start(SERVED, &["--zero-delay", "--fault", "hang"]);
    let gw = Gateway::single(SERVED, &[sim.url()], "timeouts:\n  request_total: 300ms\n");
    let started = Instant::now();
    let resp = gw
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(resp.status(), 504);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A server that was not listening when the gateway started is in rotation about two seconds
/// after it listens (probes every second while it is down), not after two 5 s intervals.
#[tokio::test]
async fn a_server_refused_at_start_serves_soon_after_it_listens() {
    let addr = dead_addr();
    let gw = Gateway::single(SERVED, &[format!("http://{addr}")], "");
    server_eventually(&gw, 0, 0, |s| s["health"] == "unhealthy").await;
    let _sim = Sim::start_at(SERVED, addr, &["--zero-delay"]);
    let listening = Instant::now();
    server_eventually(&gw, 0, 0, |s| s["health"] == "healthy").await;
    let took = listening.elapsed();
    assert!(took < Duration::from_millis(4500), "back after {took:?}");
    assert_eq!(gw.tiny_completion("m").await, 200);
}

/// When health checks mark every server of a pool down but the servers still answer (a
/// health endpoint that fails under load), panic mode sends requests to them anyway, and
/// counts them; with `panic_mode: false` the pool is out. /readyz reports the pool in panic
/// and its model down, and stays ready.
#[tokio::test]
async fn a_pool_whose_health_checks_all_fail_is_tried_anyway_in_panic_mode() {
    let sim = Sim::fast(SERVED);
    for (panic, status) in [(true, 200), (false, 503)] {
        let gw = Gateway::start(&format!(
            "pools:\n  p:\n    model: {SERVED}\n    panic_mode: {panic}\n    health:\n      path: /nope\n      interval: 100ms\n      unhealthy_after: 1\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
            sim.url()
        ));
        server_eventually(&gw, 0, 0, |s| s["health"] == "unhealthy").await;
        for _ in 0..2 {
            assert_eq!(gw.tiny_completion("m").await, status, "panic_mode {panic}");
        }
        let metrics = get_text(&gw.admin_url("/metrics")).await;
        let panics = metric_value(&metrics, r#"switchyard_pool_panic_total{pool="p"}"#);
        assert_eq!(panics, panic.then_some(2.0), "{metrics}");
        let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let v: Value = ready.json().await.unwrap();
        assert_eq!(v["pools"]["p"]["panic"], panic, "{v}");
        assert_eq!(v["pools"]["p"]["usable"], 0, "{v}");
        assert_eq!(v["models"]["m"], "down", "{v}");
    }
}

/// /readyz is about this gateway, not one model: a dead pool is reported (its model down, a
/// model with a live fallback `fallback`) but the gateway stays ready, unless
/// `server.ready_requires` names a model that is down; draining is not ready.
#[tokio::test]
async fn readiness_reports_pools_and_models_and_requires_only_named_models() {
    let live = Sim::fast(SERVED);
    let dead = format!("http://{}", dead_addr());
    let yaml = |requires: &str| {
        format!(
            "server:\n  ready_requires: [{requires}]\npools:\n  dead:\n    model: {SERVED}\n    panic_mode: false\n    servers:\n      - url: {dead}\n  live:\n    model: {SERVED}\n    servers:\n      - url: {}\nmodels:\n  a:\n    pool: dead\n    fallback: [live]\n  b:\n    pool: live\n    aliases: [b-alias]\n  c:\n    pool: dead\n  auto:\n    route:\n      - to: c\n",
            live.url()
        )
    };
    let gw = Gateway::start(&yaml("b-alias"));
    server_eventually(&gw, 0, 0, |s| s["health"] == "unhealthy").await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["models"]["a"], "fallback", "{v}");
    assert_eq!(v["models"]["b"], "serving", "{v}");
    assert_eq!(v["models"]["c"], "down", "{v}");
    assert_eq!(v["models"]["auto"], "down", "{v}");
    assert_eq!(v["pools"]["dead"]["servers"], 1);
    assert_eq!(v["pools"]["dead"]["usable"], 0);
    assert_eq!(v["pools"]["live"]["usable"], 1);
    // Requiring the dead model: not ready, and it says which.
    gw.rewrite_config(&yaml("b, c"));
    assert_eq!(gw.reload().await.status(), 200);
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["missing"], json!(["c"]));
    // A name that is no model is refused, and the old config keeps serving.
    gw.rewrite_config(&yaml("nope"));
    let refused: Value = gw.reload().await.json().await.unwrap();
    assert!(
        refused.to_string().contains("server.ready_requires[0]"),
        "{refused}"
    );
}
