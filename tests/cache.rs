//! The response cache: a miss then hits the server never sees, streams replayed as they were
//! sent, tenants kept apart, the client's and the server's say (bypass, refresh, no-store),
//! nothing stored that was cut or failed, the fleet's shared tier, and what a hit costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::canned::{Answer, Canned};
use common::redis::Redis;
use common::{client, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";
const KEY_A: &str = "sk-cache-a";
const KEY_B: &str = "sk-cache-b";

/// Model `m` on `upstream` with `cache` (YAML flow map), tenants a and b (`limits` for a),
/// `extra` top-level YAML.
fn gateway(upstream: &str, cache: &str, limits: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    cost: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}\n    servers:\n      - url: {upstream}\nmodels:\n  m:\n    pool: p\n    aliases: [m-alias]\n    cache: {cache}\ntenants:\n  a:\n    keys: [\"{}\"]\n{limits}  b:\n    keys: [\"{}\"]\n{extra}",
        common::key_digest(KEY_A),
        common::key_digest(KEY_B),
    ))
}

fn chat(content: &str) -> Value {
    json!({"model": "m", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": content}]})
}

async fn send(gw: &Gateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let cache = resp.headers()["x-switchyard-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    (cache, resp.text().await.unwrap())
}

async fn served(sim: &Sim) -> f64 {
    sim.metric("vllm:request_success_total").await
}

#[tokio::test]
async fn a_miss_then_hits_the_server_never_sees() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim.url(), "{ttl: 10m}", "", "");
    let (first, body) = send(&gw, KEY_A, &chat("hello"), &[]).await;
    assert_eq!(first, "miss");
    // An alias, members in another order and 0.0 for 0: the same request.
    let same = json!({"messages": [{"content": "hello", "role": "user"}], "max_tokens": 8, "temperature": 0.0, "model": "m-alias"});
    for _ in 0..3 {
        let (again, replay) = send(&gw, KEY_A, &same, &[]).await;
        assert_eq!(again, "hit");
        assert_eq!(replay, body);
    }
    assert_eq!(served(&sim).await, 1.0);
    let (other, _) = send(&gw, KEY_A, &chat("hello!"), &[]).await;
    assert_eq!(other, "miss", "another message");
    let text = common::get_text(&gw.admin_url("/metrics")).await;
    let v = |name: &str| common::metric_value(&text, name).unwrap_or(0.0);
    assert_eq!(
        v(r#"switchyard_cache_lookups_total{model="m",result="hit"}"#),
        3.0
    );
    assert_eq!(
        v(r#"switchyard_cache_lookups_total{model="m",result="miss"}"#),
        2.0
    );
    assert!(v("switchyard_cache_bytes") > 0.0, "{text}");
    let log = gw.access_log_lines(5).await;
    assert_eq!(log[1]["cache"], "hit", "{log:?}");
    assert_eq!(log[1]["server"], Value::Null, "no server answered a hit");
}

#[tokio::test]
async fn a_stream_is_replayed_as_it_was_sent_with_its_usage_when_asked() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim.url(), "{ttl: 10m}", "", "");
    let mut with_usage = chat("stream me");
    with_usage["stream"] = json!(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let (first, original) = send(&gw, KEY_A, &with_usage, &[]).await;
    let (second, replay) = send(&gw, KEY_A, &with_usage, &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!(replay, original);
    assert!(replay.contains("\"usage\""), "{replay}");
    assert!(replay.ends_with("data: [DONE]\n\n"), "{replay}");
    // Without include_usage: another key, and the gateway's own usage event is not in it.
    let mut plain = chat("stream me");
    plain["stream"] = json!(true);
    let (first, original) = send(&gw, KEY_A, &plain, &[]).await;
    let (second, replay) = send(&gw, KEY_A, &plain, &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!(replay, original);
    assert!(!replay.contains("\"usage\""), "{replay}");
    assert_eq!(served(&sim).await, 2.0);
}

#[tokio::test]
async fn tenants_do_not_share_answers_unless_the_model_says_so() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim.url(), "{ttl: 10m}", "", "");
    assert_eq!(send(&gw, KEY_A, &chat("x"), &[]).await.0, "miss");
    assert_eq!(send(&gw, KEY_B, &chat("x"), &[]).await.0, "miss");
    assert_eq!(send(&gw, KEY_B, &chat("x"), &[]).await.0, "hit");
    let shared = gateway(
        &sim.url(),
        "{ttl: 10m, shared_across_tenants: true}",
        "",
        "",
    );
    assert_eq!(send(&shared, KEY_A, &chat("y"), &[]).await.0, "miss");
    assert_eq!(send(&shared, KEY_B, &chat("y"), &[]).await.0, "hit");
}

#[tokio::test]
async fn bypass_refresh_no_store_and_sampled_requests() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim.url(), "{ttl: 10m}", "", "");
    let body = chat("z");
    let bypass = [("x-switchyard-cache", "bypass")];
    assert_eq!(send(&gw, KEY_A, &body, &bypass).await.0, "bypass");
    assert_eq!(
        send(&gw, KEY_A, &body, &[]).await.0,
        "miss",
        "bypass stored nothing"
    );
    assert_eq!(
        send(&gw, KEY_A, &body, &bypass).await.0,
        "bypass",
        "nor read"
    );
    let refresh = [("x-switchyard-cache", "refresh")];
    assert_eq!(send(&gw, KEY_A, &body, &refresh).await.0, "miss");
    assert_eq!(served(&sim).await, 4.0, "refresh went to the server");
    assert_eq!(send(&gw, KEY_A, &body, &[]).await.0, "hit");
    let no_store = [("cache-control", "no-store")];
    assert_eq!(send(&gw, KEY_A, &chat("w"), &no_store).await.0, "miss");
    assert_eq!(
        send(&gw, KEY_A, &chat("w"), &[]).await.0,
        "miss",
        "no-store"
    );
    // Sampling without a seed: never cached; with a seed, cached.
    let mut sampled = chat("v");
    sampled["temperature"] = json!(0.8);
    assert_eq!(send(&gw, KEY_A, &sampled, &[]).await.0, "bypass");
    assert_eq!(send(&gw, KEY_A, &sampled, &[]).await.0, "bypass");
    sampled["seed"] = json!(3);
    assert_eq!(send(&gw, KEY_A, &sampled, &[]).await.0, "miss");
    assert_eq!(send(&gw, KEY_A, &sampled, &[]).await.0, "hit");
    // `cache: always`: sampled requests too.
    let always = gateway(&sim.url(), "always", "", "");
    sampled["seed"] = Value::Null;
    assert_eq!(send(&always, KEY_A, &sampled, &[]).await.0, "miss");
    assert_eq!(send(&always, KEY_A, &sampled, &[]).await.0, "hit");
    // A header value the gateway does not know is an error, not a guess.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .header("x-switchyard-cache", "sometimes")
        .json(&body)
        .send()
        .await
        .unwrap();
    let e = common::openai_error(resp, 400).await;
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("use, bypass, refresh"));
}

#[tokio::test]
async fn a_cut_stream_a_failed_answer_a_servers_no_store_and_a_large_answer_are_not_stored() {
    let sim = Sim::fast(SERVED);
    let gw = gateway(&sim.url(), "{ttl: 10m, max_entry: 2KiB}", "", "");
    let mut stream = chat("cut");
    stream["stream"] = json!(true);
    stream["max_tokens"] = json!(5);
    let (_, cut) = send(&gw, KEY_A, &stream, &[("x-sim-fault", "die_after=3")]).await;
    assert!(cut.contains("upstream_stream_interrupted"), "{cut}");
    assert_eq!(
        send(&gw, KEY_A, &stream, &[]).await.0,
        "miss",
        "the cut stream was stored"
    );
    assert_eq!(send(&gw, KEY_A, &stream, &[]).await.0, "hit");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .header("x-sim-fault", "status=500")
        .json(&chat("fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(send(&gw, KEY_A, &chat("fail"), &[]).await.0, "miss");
    let mut large = chat("large");
    large["max_tokens"] = json!(400);
    assert_eq!(send(&gw, KEY_A, &large, &[]).await.0, "miss");
    assert_eq!(
        send(&gw, KEY_A, &large, &[]).await.0,
        "miss",
        "over max_entry"
    );

    let canned = Canned::start(|_, _| {
        Answer::new(
            200,
            "application/json",
            r#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        )
        .header("cache-control", "no-store")
    })
    .await;
    let gw = gateway(&canned.url(), "{ttl: 10m}", "", "");
    assert_eq!(send(&gw, KEY_A, &chat("q"), &[]).await.0, "miss");
    assert_eq!(send(&gw, KEY_A, &chat("q"), &[]).await.0, "miss");
    let chats = canned
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST /v1/chat/completions"))
        .count();
    assert_eq!(chats, 2);
}

/// A hit counts one request against the tenant's request limit, no tokens, and costs
/// nothing (one dollar per token here).
#[tokio::test]
async fn a_hit_takes_a_request_and_no_tokens() {
    let sim = Sim::fast(SERVED);
    let limits = "    limits: {requests_per_minute: 100, tokens_per_minute: 10000}\n";
    let gw = gateway(&sim.url(), "{ttl: 10m}", limits, "");
    let remaining = |resp: &reqwest::Response, what: &str| -> u64 {
        resp.headers()[format!("x-ratelimit-remaining-{what}").as_str()]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let post = || {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&chat("count me"))
            .send()
    };
    let miss = post().await.unwrap();
    assert_eq!(miss.headers()["x-switchyard-cache"], "miss");
    let tokens_after_miss = remaining(&miss, "tokens");
    assert!(tokens_after_miss < 10_000);
    let used = miss.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    let spend = r#"switchyard_tenant_spend_usd_total{tenant="a"}"#;
    common::metric_eventually(&gw.admin_url("/metrics"), spend, used as f64).await;
    let hit = post().await.unwrap();
    assert_eq!(hit.headers()["x-switchyard-cache"], "hit");
    assert_eq!(remaining(&hit, "requests"), 98);
    assert!(
        remaining(&hit, "tokens") >= tokens_after_miss,
        "a hit took tokens"
    );
    drop(hit);
    gw.access_log_lines(2).await;
    let text = common::get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        common::metric_value(&text, spend),
        Some(used as f64),
        "a hit cost"
    );
    assert_eq!(served(&sim).await, 1.0);
}

#[tokio::test]
async fn a_miss_through_one_gateway_is_a_hit_through_another() {
    let redis = Redis::start();
    let sim = Sim::fast(SERVED);
    let shared = format!("shared:\n  redis: \"{}\"\n  timeout: 500ms\n", redis.url());
    let a = gateway(&sim.url(), "{ttl: 10m}", "", &shared);
    let b = gateway(&sim.url(), "{ttl: 10m}", "", &shared);
    for gw in [&a, &b] {
        common::metric_eventually(&gw.admin_url("/metrics"), "switchyard_shared_store_up", 1.0)
            .await;
    }
    let (first, body) = send(&a, KEY_A, &chat("fleet"), &[]).await;
    assert_eq!(first, "miss");
    // The shared tier is written off the request path: B finds it once it is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (result, replay) =
            send(&b, KEY_A, &chat("fleet"), &[("x-switchyard-cache", "use")]).await;
        if result == "hit" {
            assert_eq!(replay, body);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in the shared tier"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "switchyard:cache/*"])
            .lines()
            .count(),
        1
    );
}

/// `cache.semantic`: a prompt that means nearly the same (here: the simulator's embeddings, a
/// hashed bag of words and trigrams) is served the stored answer; other prompts, and the same
/// prompt with other generation parameters, are not.
#[tokio::test]
async fn a_near_prompt_is_served_from_the_semantic_cache() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    servers:\n      - url: {}\nmodels:\n  embedder:\n    pool: p\n  m:\n    pool: p\n    cache: {{ttl: 10m, semantic: {{model: embedder, similarity: 0.9}}}}\n",
        sim.url()
    ));
    let ask = |content: &str, max_tokens: u64| json!({"model": "m", "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]});
    let post = |body: Value| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let resp = client().post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let cache = resp.headers()["x-switchyard-cache"]
                .to_str()
                .unwrap()
                .to_owned();
            (cache, resp.text().await.unwrap())
        }
    };
    let (first, answer) = post(ask("What is the capital city of France?", 8)).await;
    assert_eq!(first, "miss");
    let (near, replay) = post(ask("what is the capital city of france", 8)).await;
    assert_eq!(near, "hit", "a near prompt");
    assert_eq!(replay, answer);
    assert_eq!(
        post(ask("Write a haiku about autumn leaves falling.", 8))
            .await
            .0,
        "miss"
    );
    assert_eq!(
        post(ask("what is the capital city of france", 9)).await.0,
        "miss",
        "other generation parameters"
    );
    // Three answers generated (the simulator counts completions, not embeddings).
    assert_eq!(sim.metric("vllm:request_success_total").await, 3.0);
    let text = common::get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        common::metric_value(
            &text,
            r#"switchyard_cache_lookups_total{model="m",result="semantic_hit"}"#
        ),
        Some(1.0)
    );
}
