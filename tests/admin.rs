//! The admin API on the admin listener: server state, drain/undrain (surviving reloads),
//! the effective config; none of it on the public port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn send(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let resp = client()
            .post(gw.url("/v1/completions"))
            .json(&json!({"model": "m", "prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn drained_server_gets_no_new_requests_even_across_a_reload_until_undrained() {
    let a = Sim::fast(SERVED);
    let b = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[a.url(), b.url()], "");
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

    let servers: Value = c
        .get(gw.admin_url("/admin/servers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let cfg: Value = c
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["timeouts"]["connect"], "3s");
    assert_eq!(cfg["limits"]["max_body_size"], 8 * 1024 * 1024);
    assert_eq!(cfg["pools"][0]["model"], SERVED);
    assert_eq!(cfg["pools"][0]["balance"], "weighted_round_robin");
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
