//! Each balancing policy through the gateway, against simulator servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, get_json, Gateway, Sim};
use serde_json::json;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn pool(balance: &str, engine: &str, servers: &[&Sim], extra: &str) -> String {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {}\n", s.url()))
        .collect();
    format!(
        "server:\n  access_log: stdout\npools:\n  p:\n    model: {SERVED}\n    engine: {engine}\n    balance: {balance}\n{extra}    servers:\n{list}models:\n  m:\n    pool: p\n"
    )
}

async fn requests(sim: &Sim) -> f64 {
    sim.metric("switchyard_sim_http_requests_total").await
}

/// p2c_ewma learns that one server answers slowly and stops sending it requests.
#[tokio::test]
async fn p2c_ewma_shifts_traffic_away_from_a_slow_server() {
    let fast = Sim::fast(SERVED);
    let slow = Sim::start(
        SERVED,
        &["--zero-delay", "--fault", "first_token_delay_ms=150"],
    );
    let gw = Gateway::start(&pool("p2c_ewma", "openai", &[&fast, &slow], ""));
    for _ in 0..30 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    // Before its first answer the slow server is unmeasured and may be tried; after it, a
    // 150 ms peak against ~1 ms never wins a comparison of two idle servers.
    let slow_n = requests(&slow).await;
    assert!(slow_n <= 2.0, "slow server got {slow_n} of 30");
    assert_eq!(requests(&fast).await + slow_n, 30.0);
    let servers = get_json(&gw.admin_url("/admin/servers")).await;
    let ewma = servers["pools"][0]["servers"][1]["ewma_ms"].as_f64();
    if slow_n > 0.0 {
        assert!(ewma.unwrap() >= 150.0, "{servers}");
    }
}

/// least_load reads the engines' own queues: a server with a long queue gets nothing while
/// another is idle.
#[tokio::test]
async fn least_load_avoids_the_server_whose_queue_is_long() {
    let busy = Sim::start(
        SERVED,
        &[
            "--max-num-seqs",
            "1",
            "--decode-step-ms",
            "50",
            "--prefill-us-per-token",
            "0",
        ],
    );
    let idle = Sim::fast(SERVED);
    // Six long generations sent straight to `busy`: one runs, five wait.
    let background = busy.occupy(SERVED, 6, 2000);
    let gw = Gateway::start(&pool(
        "least_load",
        "vllm",
        &[&busy, &idle],
        "    engine_metrics:\n      interval: 100ms\n",
    ));
    // Wait until the gateway has scraped the queue.
    gw.wait_server_load(0, |l| l >= 6.0).await;
    let before = requests(&busy).await;
    for _ in 0..20 {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
    assert_eq!(
        requests(&busy).await,
        before,
        "the busy server got requests"
    );
    assert_eq!(requests(&idle).await, 20.0);
    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("switchyard_upstream_engine_load{pool=\"p\",server=\""),
        "{metrics}"
    );
    for b in background {
        b.abort();
    }
}

/// consistent_hash keeps a session on one server (by header, or by the body's `user`), and
/// spreads sessions over the pool.
#[tokio::test]
async fn consistent_hash_keeps_sessions_on_one_server() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::fast(SERVED)).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let gw = Gateway::start(&pool("consistent_hash", "openai", &refs, ""));
    let c = client();
    let sessions = 8;
    for round in 0..4 {
        for s in 0..sessions {
            let body = json!({"model": "m", "prompt": "x", "max_tokens": 1});
            let resp = c
                .post(gw.url("/v1/completions"))
                .header("x-session-id", format!("session-{s}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            resp.bytes().await.unwrap();
        }
        for u in ["alice", "bob"] {
            let body = json!({"model": "m", "prompt": "x", "max_tokens": 1, "user": u});
            assert_eq!(gw.post("/v1/completions", &body).await.status(), 200);
        }
    }
    let lines = gw.access_log_lines(4 * (sessions + 2)).await;
    let mut homes = std::collections::BTreeMap::<usize, std::collections::BTreeSet<String>>::new();
    for (k, line) in lines.iter().enumerate() {
        let key = k % (sessions + 2);
        homes
            .entry(key)
            .or_default()
            .insert(line["server"].as_str().unwrap().to_owned());
    }
    for (key, servers) in &homes {
        assert_eq!(servers.len(), 1, "session {key} moved: {servers:?}");
    }
    let used: std::collections::BTreeSet<_> = homes.values().flatten().collect();
    assert!(used.len() >= 2, "all sessions on one server: {used:?}");
}
