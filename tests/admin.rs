//! The admin API on the admin listener: server state, drain/undrain (surviving reloads),
//! the effective config; none of it on the public port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn send(gw: &Gateway, n: usize) {
    for _ in 0..n {
        assert_eq!(gw.tiny_completion("m").await, 200);
    }
}

#[tokio::test]
async fn drained_server_gets_no_new_requests_even_across_a_reload_until_undrained() {
    let a = Sim::fast(SERVED);
    let b = Sim::fast(SERVED);
    // Round robin: after the undrain the four requests split 2 / 2 whatever the engines'
    // scraped load readings say at that moment (least_load would follow them).
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: weighted_round_robin\n    servers:\n      - url: {}\n      - url: {}\nmodels:\n  m:\n    pool: p\n    aliases: [m-alias]\n",
        a.url(),
        b.url()
    ));
    let c = client();
    let drain = |what: &str| {
        c.post(gw.admin_url(&format!("/admin/pools/p/servers/{}/{what}", a.addr)))
            .send()
    };
    let resp = drain("drain").await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["draining"], true);

    send(&gw, 6).await;
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 0.0);
    assert_eq!(b.metric("switchyard_sim_http_requests_total").await, 6.0);

    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    let gauge = |name: &str, server: &Sim| {
        common::metric_value(
            &metrics,
            &format!(r#"{name}{{pool="p",server="{}"}}"#, server.addr),
        )
    };
    assert_eq!(gauge("switchyard_upstream_draining", &a), Some(1.0));
    assert_eq!(gauge("switchyard_upstream_usable", &a), Some(0.0));
    assert_eq!(gauge("switchyard_upstream_usable", &b), Some(1.0));
    assert_eq!(gauge("switchyard_upstream_inflight", &b), Some(0.0));

    let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
    let list = servers["pools"][0]["servers"].as_array().unwrap();
    assert_eq!(servers["pools"][0]["name"], "p");
    assert_eq!(list.len(), 2);
    let entry = |id: String| {
        list.iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap()
            .clone()
    };
    assert_eq!(entry(a.addr.to_string())["draining"], true);
    assert_eq!(entry(b.addr.to_string())["draining"], false);
    assert_eq!(entry(b.addr.to_string())["inflight"], 0);
    assert_eq!(entry(b.addr.to_string())["weight"], 1);

    // The drain is per-server state: a reload that keeps the server keeps it drained.
    let resp = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    send(&gw, 2).await;
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 0.0);

    assert_eq!(drain("undrain").await.unwrap().status(), 200);
    send(&gw, 4).await;
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, 2.0);

    let missing = c
        .post(gw.admin_url("/admin/pools/p/servers/10.9.9.9:1/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn effective_config_has_defaults_and_admin_paths_are_not_public() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let c = client();
    let cfg = common::get_json(&gw.admin_url("/admin/config")).await;
    assert_eq!(cfg["timeouts"]["connect"], "3s");
    assert_eq!(cfg["limits"]["max_body_size"], 8 * 1024 * 1024);
    assert_eq!(cfg["pools"][0]["model"], SERVED);
    // A vLLM pool balances on the engine's own queues; health checks are on by default.
    assert_eq!(cfg["pools"][0]["balance"], "least_load");
    assert_eq!(cfg["pools"][0]["health"]["path"], "/health");
    assert_eq!(cfg["pools"][0]["health"]["interval"], "5s");
    assert_eq!(cfg["pools"][0]["breaker"]["consecutive_failures"], 5);
    assert_eq!(cfg["models"][0]["first_token_timeout"], "1m");
    assert_eq!(cfg["models"][0]["aliases"][0], "m-alias");
    for path in ["/admin/servers", "/admin/config"] {
        assert_eq!(
            c.get(gw.url(path)).send().await.unwrap().status(),
            404,
            "{path}"
        );
    }
    let post = c
        .post(gw.url(&format!("/admin/pools/p/servers/{}/drain", sim.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
}

#[tokio::test]
async fn admin_token_guards_everything_but_the_health_probes() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start_env(
        &format!(
            "admin_token_env: SY_TEST_ADMIN_TOKEN\nserver:\n  log_format: json\npools:\n  p:\n    model: {SERVED}\n    servers: [{{url: \"{}\"}}]\nmodels:\n  m: {{pool: p}}\n",
            sim.url()
        ),
        &[("SY_TEST_ADMIN_TOKEN", "s3cret-token")],
    );
    let c = client();
    for path in ["/admin/servers", "/admin/config", "/metrics"] {
        let resp = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let wrong = c
            .get(gw.admin_url(path))
            .bearer_auth("s3cret-tokem")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = c
            .get(gw.admin_url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    let reload = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 401);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            c.get(gw.admin_url(probe)).send().await.unwrap().status(),
            200
        );
    }
    let cfg = c
        .get(gw.admin_url("/admin/config"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!cfg.contains("s3cret"), "{cfg}");
    assert!(cfg.contains("<redacted>"));
    // server.log_format: json: every log line on stderr is a JSON object.
    let lines = gw.proc.stderr.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

/// Every metric the shipped Grafana dashboard queries exists in /metrics after traffic, so the
/// dashboard cannot drift away from the names the gateway exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_gateway_exports() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let sim = Sim::fast(SERVED);
    // A dead server (upstream errors, retries) beside a scraped vLLM-like one (engine load).
    let dead = common::dead_addr();
    let gw = Gateway::start(&format!(
        "pools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: weighted_round_robin\n    health:\n      enabled: false\n    servers:\n      - url: http://{dead}\n      - url: {}\nmodels:\n  m:\n    pool: p\n  auto:\n    baseline: m\n    shadow: {{to: m}}\n    route:\n      - to: m\ntenants:\n  t:\n    keys: [\"sha256:101e79fe08703a87435b8d8f154c786969f607df11ee4419804c9477e6bfd701\"]\n    limits: {{requests_per_minute: 4}}\n",
        sim.url()
    ));
    // Through a virtual model with a baseline and a shadow: decisions, costs, mirrors.
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-dash")
        .json(&json!({"model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // Round robin puts the dead server first for one of the first two requests; the fourth
    // request is over the tenant's limit (the one to `auto` took one).
    for fault in ["", "", "die_after=1", ""] {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-dash")
            .header("x-sim-fault", fault)
            .json(&json!({"model": "m", "stream": true, "max_tokens": 3,
                          "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !common::get_text(&gw.admin_url("/metrics"))
        .await
        .contains("switchyard_upstream_engine_load{")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "engine load never scraped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-dash")
        .json(&json!({"model": "unknown"}))
        .send()
        .await
        .unwrap();
    common::metric_eventually(
        &gw.admin_url("/metrics"),
        // ok or error: the mirror may meet the dead server (one try, no retry).
        r#"switchyard_shadow_requests_total{model="auto","#,
        1.0,
    )
    .await;
    let metrics = common::metric_eventually(
        &gw.admin_url("/metrics"),
        r#"switchyard_rejected_requests_total{reason="model_not_found"}"#,
        1.0,
    )
    .await;
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("switchyard_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "dashboard queries {name}, which /metrics does not export"
        );
    }
}
