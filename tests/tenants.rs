//! Tenants, API keys, token-aware limits, budgets and per-IP caps, through the real gateway
//! against simulator servers (whose `usage` is the truth).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, get_text, metric_eventually, metric_value, openai_error, Gateway, Sim};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";
const KEY_A: &str = "sk-team-a";
const KEY_B: &str = "sk-team-b";

/// Two models on one simulator pool: `m` (alias `m-alias`) and `other`; `tenants` is YAML
/// under `tenants:`, `extra` top-level YAML.
fn gateway(sim: &Sim, pool_extra: &str, tenants: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n{pool_extra}    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n    aliases: [m-alias]\n  other:\n    pool: p\ntenants:\n{tenants}{extra}",
        sim.url()
    ))
}

fn team_a(limits: &str) -> String {
    format!(
        "  team-a:\n    keys: [\"{}\"]\n    models: [m-alias]\n{limits}",
        common::key_digest(KEY_A)
    )
}

fn team_b(rest: &str) -> String {
    format!(
        "  team-b:\n    keys: [\"{}\"]\n{rest}",
        common::key_digest(KEY_B)
    )
}

async fn post(gw: &Gateway, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = client().post(gw.url("/v1/chat/completions")).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", resp.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    header(resp, name).parse().unwrap()
}

#[tokio::test]
async fn missing_unknown_and_malformed_keys_are_401_and_a_good_key_passes() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "", &team_a(""), "");
    for key in [None, Some("sk-wrong"), Some("")] {
        let resp = post(&gw, key, &chat(2)).await;
        assert_eq!(header(&resp, "www-authenticate"), "Bearer");
        let e = openai_error(resp, 401).await;
        assert_eq!(e["error"]["type"], "authentication_error", "{key:?}");
        assert_eq!(e["error"]["code"], "invalid_api_key");
        assert!(
            !e.to_string().contains("sk-wrong"),
            "the key is echoed: {e}"
        );
    }
    let basic = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Basic {KEY_A}"))
        .json(&chat(2))
        .send()
        .await
        .unwrap();
    openai_error(basic, 401).await;
    let models = client().get(gw.url("/v1/models")).send().await.unwrap();
    openai_error(models, 401).await;

    let ok = post(&gw, Some(KEY_A), &chat(2)).await;
    assert_eq!(ok.status(), 200);
    // Keys never reach the access log.
    let log = gw.access_log_lines(6).await;
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(KEY_A) && !text.contains("sk-wrong"));
    assert_eq!(log.last().unwrap()["tenant"], "team-a");
}

#[tokio::test]
async fn models_outside_the_list_look_like_models_that_do_not_exist() {
    let sim = Sim::fast(SERVED);
    let tenants = team_a("") + &team_b("    models: \"*\"\n");
    let gw = gateway(&sim, "", &tenants, "");
    // team-a allowed the alias: the name works too.
    for model in ["m", "m-alias"] {
        let body = json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(post(&gw, Some(KEY_A), &body).await.status(), 200, "{model}");
    }
    let forbidden = json!({"model": "other", "max_tokens": 1, "messages": []});
    let missing = json!({"model": "nope", "max_tokens": 1, "messages": []});
    let a = openai_error(post(&gw, Some(KEY_A), &forbidden).await, 404).await;
    let b = openai_error(post(&gw, Some(KEY_A), &missing).await, 404).await;
    assert_eq!(a["error"]["code"], "model_not_found");
    assert_eq!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .replace("other", "X"),
        b["error"]["message"].as_str().unwrap().replace("nope", "X"),
        "a forbidden model must read like a missing one"
    );
    assert_eq!(post(&gw, Some(KEY_B), &forbidden).await.status(), 200);
    // The models list shows each tenant its own models only.
    let list = |key: &'static str| {
        let url = gw.url("/v1/models");
        async move {
            let v: Value = client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(list(KEY_A).await, ["m", "m-alias"]);
    assert_eq!(list(KEY_B).await, ["m", "m-alias", "other"]);
}

#[tokio::test]
async fn optional_auth_puts_keyless_requests_in_the_anonymous_tenant_or_refuses_them() {
    let sim = Sim::fast(SERVED);
    let with_anonymous = format!("{}  anonymous:\n    models: [other]\n", team_a(""));
    let gw = gateway(&sim, "", &with_anonymous, "auth: optional\n");
    let other = json!({"model": "other", "max_tokens": 1, "messages": []});
    assert_eq!(post(&gw, None, &other).await.status(), 200);
    openai_error(post(&gw, None, &chat(1)).await, 404).await;
    openai_error(post(&gw, Some("sk-wrong"), &other).await, 401).await;
    assert_eq!(post(&gw, Some(KEY_A), &chat(1)).await.status(), 200);
    let log = gw.access_log_lines(4).await;
    assert_eq!(log[0]["tenant"], "anonymous");

    let without = gateway(&sim, "", &team_a(""), "auth: optional\n");
    openai_error(post(&without, None, &other).await, 401).await;
    assert_eq!(post(&without, Some(KEY_A), &chat(1)).await.status(), 200);
}

#[tokio::test]
async fn the_client_key_never_reaches_the_upstream_and_the_pool_key_does() {
    let sim = Sim::fast(SERVED);
    let yaml = format!(
        "pools:\n  p:\n    model: {SERVED}\n    api_key_env: SWITCHYARD_TEST_UPSTREAM_KEY\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n    aliases: [m-alias]\ntenants:\n{}",
        sim.url(),
        team_a("")
    );
    let gw = Gateway::start_env(&yaml, &[("SWITCHYARD_TEST_UPSTREAM_KEY", "sk-upstream")]);
    let seen: Value = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .header("x-sim-echo", "headers")
        .json(&chat(1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["authorization"], "Bearer sk-upstream", "{seen}");
    assert!(!seen.to_string().contains(KEY_A));
    let config = get_text(&gw.admin_url("/admin/config")).await;
    assert!(!config.contains("sk-upstream"), "{config}");
}

#[tokio::test]
async fn requests_per_minute_counts_down_in_the_headers_then_429_with_retry_after() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(
        &sim,
        "",
        &team_a("    limits:\n      requests_per_minute: 3\n"),
        "",
    );
    for left in [2, 1, 0] {
        let resp = post(&gw, Some(KEY_A), &chat(1)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header_u64(&resp, "x-ratelimit-limit-requests"), 3);
        assert_eq!(header_u64(&resp, "x-ratelimit-remaining-requests"), left);
        let reset = header(&resp, "x-ratelimit-reset-requests");
        assert!(reset.ends_with('s') && reset != "0s", "{reset}");
    }
    let resp = post(&gw, Some(KEY_A), &chat(1)).await;
    assert_eq!(header_u64(&resp, "x-ratelimit-remaining-requests"), 0);
    assert_eq!(header(&resp, "x-ratelimit-limit-requests"), "3");
    // One request refills every 20 s; a little of that has passed.
    let retry_after = header_u64(&resp, "retry-after");
    assert!((19..=20).contains(&retry_after), "{retry_after}");
    let e = openai_error(resp, 429).await;
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "requests");
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"switchyard_tenant_rejections_total{reason="requests_per_minute",tenant="team-a"}"#
        ),
        Some(1.0)
    );
}

/// Bytes of the prompt as the gateway measures it (the raw `messages` value).
fn prompt_estimate(body: &Value) -> u64 {
    (serde_json::to_vec(&body["messages"]).unwrap().len() as u64).div_ceil(4)
}

/// Tokens a minute of `limit` refills in `elapsed`, rounded up.
fn refill(limit: u64, elapsed: Duration) -> u64 {
    (elapsed.as_millis() as u64 * limit).div_ceil(60_000)
}

#[tokio::test]
async fn tokens_are_reserved_up_front_and_settled_to_the_servers_usage() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(
        &sim,
        "",
        &team_a("    limits:\n      tokens_per_minute: 1000\n"),
        "",
    );
    let started = Instant::now();
    let first = chat(50);
    let resp = post(&gw, Some(KEY_A), &first).await;
    assert_eq!(resp.status(), 200);
    let reserved = prompt_estimate(&first) + 50;
    assert_eq!(header_u64(&resp, "x-ratelimit-limit-tokens"), 1000);
    let remaining = header_u64(&resp, "x-ratelimit-remaining-tokens");
    assert!(
        (1000 - reserved..=1000 - reserved + refill(1000, started.elapsed())).contains(&remaining),
        "{remaining}"
    );
    let body: Value = resp.json().await.unwrap();
    let used = body["usage"]["total_tokens"].as_u64().unwrap();
    assert_ne!(
        used, reserved,
        "the test needs usage to differ from the estimate"
    );

    // Settled streamed too: the client did not ask for usage, the gateway counted it anyway.
    let stream = json!({"model": "m", "stream": true, "max_tokens": 30,
                        "messages": [{"role": "user", "content": "tell me more"}]});
    let resp = post(&gw, Some(KEY_A), &stream).await;
    let text = resp.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    let direct: Value = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(&json!({"model": SERVED, "max_tokens": 30,
                      "messages": [{"role": "user", "content": "tell me more"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let streamed_used = direct["usage"]["total_tokens"].as_u64().unwrap();

    // A request is settled just after its last byte went out: wait until both were.
    let settled = |third: u64| {
        body["usage"]["completion_tokens"].as_u64().unwrap()
            + direct["usage"]["completion_tokens"].as_u64().unwrap()
            + third
    };
    let completion = r#"switchyard_tenant_tokens_total{kind="completion",model="m",source="usage",tenant="team-a"}"#;
    metric_eventually(&gw.admin_url("/metrics"), completion, settled(0) as f64).await;

    // The next response shows what is left once both were settled.
    let third = chat(1);
    let resp = post(&gw, Some(KEY_A), &third).await;
    let expected = 1000 - used - streamed_used - (prompt_estimate(&third) + 1);
    let remaining = header_u64(&resp, "x-ratelimit-remaining-tokens");
    assert!(
        (expected..=expected + refill(1000, started.elapsed())).contains(&remaining),
        "remaining {remaining}, expected {expected} (+ refill)"
    );
    metric_eventually(&gw.admin_url("/metrics"), completion, settled(1) as f64).await;

    // A request larger than the whole minute's tokens can never pass.
    let huge = chat(5000);
    let resp = post(&gw, Some(KEY_A), &huge).await;
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let e = openai_error(resp, 429).await;
    assert_eq!(e["error"]["type"], "tokens");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Limit 1000"),
        "{e}"
    );
}

/// The data lines of an SSE body, each parsed, without the fields that differ per request.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            let mut v: Value = serde_json::from_str(d).unwrap_or(Value::String(d.to_owned()));
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
                o.remove("created");
            }
            v
        })
        .collect()
}

#[tokio::test]
async fn streams_carry_the_usage_chunk_only_when_the_client_asked_for_it() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "", &team_a(""), "");
    for include in [None, Some(false), Some(true)] {
        let mut body = json!({"stream": true, "max_tokens": 6,
                              "messages": [{"role": "user", "content": "count"}]});
        if let Some(i) = include {
            body["stream_options"] = json!({"include_usage": i});
        }
        let mut through = body.clone();
        through["model"] = json!("m");
        let mut direct = body.clone();
        direct["model"] = json!(SERVED);
        let via_gateway = post(&gw, Some(KEY_A), &through).await.text().await.unwrap();
        let from_server = client()
            .post(format!("{}/v1/chat/completions", sim.url()))
            .json(&direct)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            events(&via_gateway),
            events(&from_server),
            "include_usage {include:?}"
        );
        assert_eq!(via_gateway.contains("\"usage\""), include == Some(true));
    }
    // All three were counted from the server's usage, none estimated.
    let metrics = metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_tenant_tokens_total{kind="completion",model="m",source="usage",tenant="team-a"}"#,
        18.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"switchyard_tenant_tokens_total{kind="completion",model="m",source="estimated",tenant="team-a"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn an_aborted_stream_is_counted_from_the_events_it_relayed() {
    let sim = Sim::start(SERVED, &["--zero-delay", "--fault", "die_after=4"]);
    let gw = gateway(&sim, "", &team_a(""), "");
    let body = json!({"model": "m", "stream": true, "max_tokens": 20,
                      "messages": [{"role": "user", "content": "x"}]});
    let text = post(&gw, Some(KEY_A), &body).await.text().await.unwrap();
    assert!(text.contains("upstream_stream_interrupted"), "{text}");
    // The server died after 4 tokens; what reached the client is what counts.
    let relayed = events(&text)
        .iter()
        .filter(|e| e.get("choices").is_some())
        .count();
    assert!((1..=4).contains(&relayed), "{text}");
    metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_tenant_tokens_total{kind="completion",model="m",source="estimated",tenant="team-a"}"#,
        relayed as f64,
    )
    .await;
}

/// One dollar per token: a budget of a few dollars holds a few small requests.
const DOLLAR_PER_TOKEN: &str = "    cost: {input_per_mtok: 1000000, output_per_mtok: 1000000}\n";

/// Serial requests: each reserves its estimate (prompt estimate + max_tokens) and settles to
/// its usage; the first whose estimate does not fit what is left is refused until midnight.
#[tokio::test]
async fn a_budget_refuses_the_request_it_cannot_cover() {
    let sim = Sim::fast(SERVED);
    let budget = 30;
    let gw = gateway(
        &sim,
        DOLLAR_PER_TOKEN,
        &team_a(&format!("    budget:\n      usd_per_day: {budget}\n")),
        "",
    );
    let body = chat(10);
    let estimate = prompt_estimate(&body) + 10;
    let mut spent = 0;
    let refused = loop {
        let resp = post(&gw, Some(KEY_A), &body).await;
        if resp.status() != 200 {
            break resp;
        }
        assert!(spent + estimate <= budget, "admitted past the budget");
        let v: Value = resp.json().await.unwrap();
        spent += v["usage"]["total_tokens"].as_u64().unwrap();
        assert!(spent <= 10 * budget, "never refused");
    };
    assert!(spent + estimate > budget, "refused with room left: {spent}");
    assert!(spent > 0, "refused before anything was spent");
    metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_tenant_spend_usd_total{tenant="team-a"}"#,
        spent as f64,
    )
    .await;
    assert_eq!(header(&refused, "x-should-retry"), "false");
    let retry_after = header_u64(&refused, "retry-after");
    assert!(
        (1..=86_400).contains(&retry_after),
        "until UTC midnight: {retry_after}"
    );
    let e = openai_error(refused, 429).await;
    assert_eq!(e["error"]["code"], "budget_exceeded");
    assert_eq!(e["error"]["type"], "insufficient_quota");
}

/// Concurrent requests reserve their estimated cost at admission: spend stays within the
/// budget (usage here is below the estimates), and those refused only because of what others
/// hold are told to retry shortly.
#[tokio::test]
async fn concurrent_requests_cannot_spend_past_a_budget() {
    // Slow enough (10 tokens × 20 ms) that the burst is in flight together.
    let sim = Sim::paced(SERVED, 20, &[]);
    let budget = 100;
    let gw = gateway(
        &sim,
        DOLLAR_PER_TOKEN,
        &team_a(&format!("    budget:\n      usd_per_day: {budget}\n")),
        "",
    );
    let body = chat(10);
    let estimate = prompt_estimate(&body) + 10;
    let c = client();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let req = c
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(KEY_A)
                .json(&body);
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                // Retry soon: `retry-after: 1` and no `x-should-retry: false`.
                let soon = resp.headers().get("retry-after").is_some_and(|v| v == "1")
                    && !resp.headers().contains_key("x-should-retry");
                let v: Value = resp.json().await.unwrap();
                (status, soon, v)
            })
        })
        .collect();
    let (mut ok, mut spent, mut held) = (0, 0, 0);
    for t in tasks {
        let (status, soon, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                let used = v["usage"]["total_tokens"].as_u64().unwrap();
                assert!(
                    used <= estimate,
                    "usage {used} over the estimate {estimate}"
                );
                spent += used;
            }
            429 => {
                assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                held += usize::from(soon);
            }
            other => panic!("status {other}: {v}"),
        }
    }
    assert!(spent <= budget, "spent {spent} of {budget}");
    assert!(ok >= budget / estimate, "only {ok} admitted");
    assert!(
        held > 0,
        "no refusal said it was only held by requests in flight"
    );
    metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_tenant_spend_usd_total{tenant="team-a"}"#,
        spent as f64,
    )
    .await;
}

/// Fires `n` concurrent requests with `key`; returns (answered 200, tokens they used).
async fn burst(gw: &Gateway, key: &'static str, n: usize, body: &Value) -> (u64, u64) {
    let c = client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = c
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(body);
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap();
                (status, v["usage"]["total_tokens"].as_u64().unwrap_or(0))
            })
        })
        .collect();
    let (mut ok, mut tokens) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, used) => {
                ok += 1;
                tokens += used;
            }
            (429, _) => {}
            (other, _) => panic!("status {other}"),
        }
    }
    (ok, tokens)
}

#[tokio::test]
async fn thousands_of_concurrent_requests_never_overshoot_the_limits() {
    let sim = Sim::fast(SERVED);
    let tenants = team_a("    limits:\n      tokens_per_minute: 5000\n")
        + &team_b("    limits:\n      requests_per_minute: 50\n");
    let gw = gateway(&sim, "", &tenants, "");
    let body = chat(100);
    let reserve = prompt_estimate(&body) + 100;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        burst(&gw, KEY_A, 1000, &body),
        burst(&gw, KEY_B, 1000, &body)
    );
    let elapsed = started.elapsed();
    // Tokens: each admission reserves `reserve`; what was used never exceeds the minute's
    // tokens plus the refill (settling gives back what a request did not use).
    let (ok_a, used_a) = a;
    assert!(ok_a >= 5000 / reserve, "only {ok_a} passed");
    assert!(
        used_a <= 5000 + refill(5000, elapsed),
        "{used_a} tokens in {elapsed:?}"
    );
    // Requests: the burst of 50, plus the refill while the test ran.
    let (ok_b, _) = b;
    assert!(ok_b >= 50, "only {ok_b} passed");
    assert!(
        ok_b <= 50 + refill(50, elapsed),
        "{ok_b} passed in {elapsed:?}"
    );
}

/// Opens a raw connection and returns it with what the gateway answered to a request on it
/// within `wait` (empty when it answered nothing yet).
async fn raw_request(gw: &Gateway, wait: Duration) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-team-a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn connections_per_ip_are_capped_and_answered_429() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim, "", &team_a(""), "limits:\n  connections_per_ip: 2\n");
    let (first, a) = raw_request(&gw, Duration::from_secs(5)).await;
    let (second, b) = raw_request(&gw, Duration::from_secs(5)).await;
    assert!(
        a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"),
        "{a}\n{b}"
    );
    // Both stay open (keep-alive): a third is over the cap.
    let (_third, c) = raw_request(&gw, Duration::from_secs(5)).await;
    assert!(c.starts_with("HTTP/1.1 429"), "{c}");
    assert!(c.contains("\"code\":\"rate_limit_exceeded\""), "{c}");
    drop((first, second));
    // Closing frees the slots (the gateway notices the close on its side).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_s, d) = raw_request(&gw, Duration::from_secs(5)).await;
        if d.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert!(
        metric_value(
            &metrics,
            r#"switchyard_rejected_requests_total{reason="too_many_connections"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn requests_per_second_per_ip_are_refused_before_the_body_is_read() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(
        &sim,
        "",
        &team_a(""),
        "limits:\n  requests_per_second_per_ip: 5\n",
    );
    let mut limited = 0;
    for _ in 0..20 {
        let resp = post(&gw, Some(KEY_A), &chat(1)).await;
        if resp.status() == 429 {
            assert_eq!(header(&resp, "connection"), "close");
            let e = openai_error(resp, 429).await;
            assert_eq!(e["error"]["code"], "rate_limit_exceeded");
            limited += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert!(limited >= 5, "{limited} of 20 limited");
}

/// With `server.state_dir`, a budget's spend survives a restart: written at exit (and every
/// few seconds), read at start.
#[tokio::test]
async fn a_budgets_spend_survives_a_restart_with_a_state_dir() {
    let sim = Sim::fast(SERVED);
    let state = tempfile::tempdir().unwrap();
    let start = || {
        gateway(
            &sim,
            DOLLAR_PER_TOKEN,
            &team_a("    budget:\n      usd_per_day: 40\n"),
            &format!("server:\n  state_dir: {}\n", state.path().display()),
        )
    };
    let mut gw = start();
    let mut spent = 0;
    loop {
        let resp = post(&gw, Some(KEY_A), &chat(10)).await;
        if resp.status() != 200 {
            break;
        }
        let v: Value = resp.json().await.unwrap();
        spent += v["usage"]["total_tokens"].as_u64().unwrap();
        assert!(spent <= 40, "admitted past the budget");
    }
    common::signal(gw.proc.pid(), nix::sys::signal::Signal::SIGTERM);
    assert!(gw.proc.wait().success());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state.path().join("spend.json")).unwrap()).unwrap();
    assert_eq!(
        saved["spend"]["tenant/team-a/spend/day"][1].as_u64(),
        Some(spent * 1_000_000),
        "{saved}"
    );
    let gw = start();
    let e = openai_error(post(&gw, Some(KEY_A), &chat(10)).await, 429).await;
    assert_eq!(e["error"]["code"], "budget_exceeded", "the spend came back");
    // And without the file, the same gateway starts from nothing.
    drop(gw);
    std::fs::remove_file(state.path().join("spend.json")).unwrap();
    let gw = start();
    assert_eq!(post(&gw, Some(KEY_A), &chat(10)).await.status(), 200);
}
