//! A fleet: several gateways sharing limits and budgets through a real Redis (started here on
//! a Unix socket), Redis lost and back mid-run, and leases of a crashed gateway expiring.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{client, metric_eventually, openai_error, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";
const KEY: &str = "sk-fleet";

/// A gateway on `redis` with one model `m` on `sim` and tenant `team` (`tenant` is YAML
/// under it), `shared` extra YAML under `shared:`.
fn gateway(redis: &Redis, sim: &Sim, pool_extra: &str, tenant: &str, shared: &str) -> Gateway {
    Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n{pool_extra}    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n    default_max_tokens: 900\ntenants:\n  team:\n    keys: [\"{}\"]\n{tenant}shared:\n  redis: \"{}\"\n  timeout: 500ms\n{shared}",
        sim.url(),
        common::key_digest(KEY),
        redis.url(),
    ))
}

async fn connected(gw: &Gateway, up: f64) {
    metric_eventually(&gw.admin_url("/metrics"), "switchyard_shared_store_up", up).await;
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn status(gw: &Gateway, max_tokens: u64) -> u16 {
    post(gw, &chat(max_tokens)).await.status().as_u16()
}

#[tokio::test]
async fn two_gateways_share_one_request_limit() {
    let redis = Redis::start();
    let sim = Sim::fast(SERVED);
    let limits = "    limits: {requests_per_minute: 10}\n";
    let a = gateway(&redis, &sim, "", limits, "");
    let b = gateway(&redis, &sim, "", limits, "");
    connected(&a, 1.0).await;
    connected(&b, 1.0).await;
    let (mut ok, mut refused) = (0, 0);
    for i in 0..30 {
        let resp = post(if i % 2 == 0 { &a } else { &b }, &chat(2)).await;
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "retry-after {retry}");
                assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "10");
                assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
                let e = openai_error(resp, 429).await;
                assert_eq!(e["error"]["code"], "rate_limit_exceeded");
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!((ok, refused), (10, 20), "the limit holds for the fleet");
    assert_eq!(sim.metric("vllm:request_success_total").await, 10.0);
}

/// A request reserves its estimate in the shared bucket and settles to its usage when it
/// ends, whichever gateway it went through.
#[tokio::test]
async fn token_reservations_and_settlements_are_shared() {
    let redis = Redis::start();
    // 16 tokens at 30 ms: a request is in flight for about half a second.
    let sim = Sim::paced(SERVED, 30, &[]);
    let limits = "    limits: {tokens_per_minute: 1000}\n";
    let a = gateway(&redis, &sim, "", limits, "");
    let b = gateway(&redis, &sim, "", limits, "");
    connected(&a, 1.0).await;
    connected(&b, 1.0).await;
    // No max_tokens: reserves the model's default_max_tokens (900) and the prompt's estimate
    // while in flight; the simulator then writes its own default of 16 tokens.
    let unbounded = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let url = a.url("/v1/chat/completions");
    let body = unbounded.clone();
    let first = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    });
    sim.wait_running(1.0).await;
    // While it is in flight, B sees A's reservation.
    let resp = post(&b, &unbounded).await;
    let remaining: u64 = resp.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining < 100,
        "A's reservation is not seen by B: {remaining}"
    );
    let e = openai_error(resp, 429).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute"),
        "{e}"
    );
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    let used = first.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(used < 100, "{used}");
    // Settled to its usage: B's large request fits now.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = post(&b, &unbounded).await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            Instant::now() < deadline,
            "A's reservation was never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_gateways() {
    let redis = Redis::start();
    let sim = Sim::paced(SERVED, 50, &[]);
    let limits = "    limits: {concurrent_requests: 4}\n";
    let a = gateway(&redis, &sim, "", limits, "");
    let b = gateway(&redis, &sim, "", limits, "");
    connected(&a, 1.0).await;
    connected(&b, 1.0).await;
    // 40 at once, each holding its permit for ~1 s of decoding.
    let calls = (0..40).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        status(gw, 20)
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (4, 36), "{statuses:?}");
    // Released when they ended: the next 4 are admitted.
    let again =
        futures_util::future::join_all((0..4).map(|i| status(if i % 2 == 0 { &a } else { &b }, 1)))
            .await;
    assert!(again.iter().all(|s| *s == 200), "{again:?}");
}

/// One dollar per token.
const DOLLAR_PER_TOKEN: &str = "    cost: {input_per_mtok: 1000000, output_per_mtok: 1000000}\n";

#[tokio::test]
async fn a_budget_spent_through_one_gateway_is_spent_for_all_and_after_restarts() {
    let redis = Redis::start();
    let sim = Sim::fast(SERVED);
    let budget = "    budget: {usd_per_day: 40}\n";
    let a = gateway(&redis, &sim, DOLLAR_PER_TOKEN, budget, "");
    connected(&a, 1.0).await;
    let mut spent = 0;
    loop {
        let resp = post(&a, &chat(10)).await;
        if resp.status() != 200 {
            break;
        }
        spent += resp.json::<Value>().await.unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap();
        assert!(spent <= 40, "admitted past the budget");
    }
    assert!(spent > 0);
    let b = gateway(&redis, &sim, DOLLAR_PER_TOKEN, budget, "");
    connected(&b, 1.0).await;
    let e = openai_error(post(&b, &chat(10)).await, 429).await;
    assert_eq!(e["error"]["code"], "budget_exceeded");
    drop((a, b));
    let a = gateway(&redis, &sim, DOLLAR_PER_TOKEN, budget, "");
    let b = gateway(&redis, &sim, DOLLAR_PER_TOKEN, budget, "");
    connected(&a, 1.0).await;
    connected(&b, 1.0).await;
    for gw in [&a, &b] {
        let e = openai_error(post(gw, &chat(10)).await, 429).await;
        assert_eq!(e["error"]["code"], "budget_exceeded", "after a restart");
    }
    // What is stored is what was spent, to the micro-dollar.
    let keys = redis.cli(&["--scan", "--pattern", "switchyard:tenant/team/spend/day/*"]);
    let key = keys
        .lines()
        .find(|k| !k.ends_with("/held"))
        .expect(&keys)
        .to_owned();
    let stored: u64 = redis.cli(&["GET", &key]).parse().unwrap();
    assert_eq!(stored, spent * 1_000_000);
}

#[tokio::test]
async fn redis_lost_and_back_each_on_error_mode_then_sharing_resumes() {
    let mut redis = Redis::start();
    let sim = Sim::fast(SERVED);
    let limits = "    limits: {requests_per_minute: 4}\n";
    let local = gateway(
        &redis,
        &sim,
        "",
        limits,
        "  on_error: local\n  expected_instances: 2\n",
    );
    let open = gateway(&redis, &sim, "", limits, "  on_error: open\n");
    let closed = gateway(&redis, &sim, "", limits, "  on_error: closed\n");
    for gw in [&local, &open, &closed] {
        connected(gw, 1.0).await;
    }
    // Shared: 4 for all three together.
    let shared: Vec<u16> = futures_util::future::join_all(
        [&local, &open, &closed, &local, &open].map(|gw| status(gw, 1)),
    )
    .await;
    assert_eq!(
        shared.iter().filter(|s| **s == 200).count(),
        4,
        "{shared:?}"
    );

    redis.kill();
    for gw in [&local, &open, &closed] {
        connected(gw, 0.0).await;
    }
    // local: this instance's own bucket, half of the limit.
    let started = Instant::now();
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..4).map(|_| status(&local, 1))).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    // open: no limit.
    for _ in 0..6 {
        assert_eq!(status(&open, 1).await, 200);
    }
    // closed: 503, retry.
    let resp = post(&closed, &chat(1)).await;
    assert_eq!(resp.headers()["x-should-retry"], "true");
    let e = openai_error(resp, 503).await;
    assert_eq!(e["error"]["code"], "limits_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "requests waited on a dead store"
    );
    let text = common::get_text(&local.admin_url("/metrics")).await;
    assert!(
        common::metric_value(
            &text,
            "switchyard_shared_store_fallbacks_total{on_error=\"local\"}"
        )
        .unwrap()
            >= 4.0,
        "{text}"
    );

    // Back (empty: it lost its data): sharing resumes without a restart.
    redis.restart();
    for gw in [&local, &open, &closed] {
        connected(gw, 1.0).await;
    }
    let after: Vec<u16> = futures_util::future::join_all(
        [&local, &open, &closed, &local, &open, &closed].map(|gw| status(gw, 1)),
    )
    .await;
    assert_eq!(after.iter().filter(|s| **s == 200).count(), 4, "{after:?}");
}

/// A gateway killed with requests in flight cannot keep their concurrency permits: its
/// leases expire and the others admit again.
#[tokio::test]
async fn a_crashed_gateways_permits_expire() {
    let redis = Redis::start();
    let sim = Sim::paced(SERVED, 100, &[]);
    let limits = "    limits: {concurrent_requests: 2}\n";
    let lease = "  lease: 3s\n";
    let mut a = gateway(&redis, &sim, "", limits, lease);
    let b = gateway(&redis, &sim, "", limits, lease);
    connected(&a, 1.0).await;
    connected(&b, 1.0).await;
    // Two long requests hold A's permits (1000 tokens at 100 ms each).
    let a_url = a.url("/v1/chat/completions");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = a_url.clone();
            tokio::spawn(async move {
                client()
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&chat(1000))
                    .send()
                    .await
            })
        })
        .collect();
    sim.wait_running(2.0).await;
    assert_eq!(status(&b, 1).await, 429, "A holds both permits");
    // Still held after a lease period while A lives: A renews them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status(&b, 1).await, 429, "A's leases were renewed");
    common::signal(a.proc.pid(), nix::sys::signal::Signal::SIGKILL);
    a.proc.wait();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(10);
    while status(&b, 1).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the dead gateway's permits never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed.elapsed() <= Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
    drop(held);
}

/// Every instance places a session alike: the split arm (weighted rendezvous over FNV-1a) and
/// the server on the consistent-hash ring (XXH3 with a fixed seed) are functions of the key
/// alone, not of the process. Two gateways, 1 000 sessions each, the same answers. (The ring's
/// bounded load passes a session on from a server over `load_factor` × the mean, as each
/// instance sees the load; a load factor no load reaches leaves the hash alone to decide.)
#[tokio::test]
async fn two_gateways_place_a_thousand_sessions_alike() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::fast(SERVED)).collect();
    let servers: String = sims
        .iter()
        .map(|s| format!("      - url: {}\n", s.url()))
        .collect();
    let yaml = format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: consistent_hash\n    affinity: {{load_factor: 100}}\n    servers:\n{servers}models:\n  a:\n    pool: p\n  b:\n    pool: p\n  v:\n    route:\n      - split: [{{to: a, weight: 30}}, {{to: b, weight: 70}}]\n        sticky: session\n"
    );
    let gateways = [Gateway::start(&yaml), Gateway::start(&yaml)];
    let mut placements = Vec::new();
    for gw in &gateways {
        let mut models = Vec::with_capacity(1000);
        for i in 0..1000 {
            let resp = client()
                .post(gw.url("/v1/chat/completions"))
                .header("x-session-id", format!("session-{i}"))
                .json(&json!({"model": "v", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            models.push(
                resp.headers()["x-switchyard-model"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let log = gw.access_log_lines(1000).await;
        assert_eq!(log.len(), 1000);
        let servers: Vec<String> = log
            .iter()
            .map(|l| l["server"].as_str().unwrap().to_owned())
            .collect();
        placements.push((models, servers));
    }
    let differ: Vec<usize> = (0..1000)
        .filter(|&i| {
            placements[0].0[i] != placements[1].0[i] || placements[0].1[i] != placements[1].1[i]
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of 1000 sessions placed differently, e.g. session-{}: {:?} / {:?}",
        differ.len(),
        differ[0],
        (&placements[0].0[differ[0]], &placements[0].1[differ[0]]),
        (&placements[1].0[differ[0]], &placements[1].1[differ[0]]),
    );
    // And the placement is a real spread, not one arm or one server for everyone.
    let (models, servers) = &placements[0];
    let a = models.iter().filter(|m| *m == "a").count();
    assert!(
        (200..400).contains(&a),
        "arm a got {a} of 1000 at weight 30"
    );
    for s in &sims {
        let n = servers
            .iter()
            .filter(|x| x.contains(&s.addr.port().to_string()))
            .count();
        assert!(n > 150, "server {} got {n}", s.addr);
    }
}
