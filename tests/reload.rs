//! Hot reload: SIGHUP and POST /admin/reload swap the config atomically; a bad file is
//! refused with its errors and the old config keeps serving; reloads under load lose nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{client, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn config(servers: &[&Sim], aliases: &[&str]) -> String {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {}\n", s.url()))
        .collect();
    format!(
        "pools:\n  p:\n    model: {SERVED}\n    servers:\n{list}models:\n  m:\n    pool: p\n    aliases: [{}]\n",
        aliases.join(", ")
    )
}

async fn status_of(gw: &Gateway, model: &str) -> u16 {
    gw.tiny_completion(model).await
}

/// `switchyard_config_loads_total` (ok, error).
async fn config_loads(gw: &Gateway) -> (Option<f64>, Option<f64>) {
    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    let loads = |result: &str| {
        let name = format!(r#"switchyard_config_loads_total{{result="{result}"}}"#);
        common::metric_value(&metrics, &name)
    };
    (loads("ok"), loads("error"))
}

#[tokio::test]
async fn admin_reload_applies_a_good_file_and_refuses_a_bad_one_with_its_errors() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&config(&[&sim], &["old"]));
    assert_eq!(status_of(&gw, "old").await, 200);
    assert_eq!(status_of(&gw, "new").await, 404);

    gw.rewrite_config(&config(&[&sim], &["new"]));
    let resp = gw.reload().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(status_of(&gw, "new").await, 200);
    assert_eq!(status_of(&gw, "old").await, 404);

    gw.rewrite_config(&config(&[&sim], &["newer"]).replace("pool: p", "pool: nowhere"));
    let resp = gw.reload().await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["path"], "models.m.pool");
    assert_eq!(v["errors"][0]["message"], r#"no pool named "nowhere""#);
    assert!(v["error"].is_string());
    // The previous config keeps serving.
    assert_eq!(status_of(&gw, "new").await, 200);
    assert_eq!(status_of(&gw, "newer").await, 404);

    assert_eq!(config_loads(&gw).await, (Some(2.0), Some(1.0)));
    // The public port does not expose the admin API.
    let resp = client().post(gw.url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn sighup_reloads_the_file_and_does_not_stop_the_gateway() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::start(&config(&[&sim], &["old"]));
    gw.rewrite_config(&config(&[&sim], &["new"]));
    common::signal(gw.proc.pid(), nix::sys::signal::Signal::SIGHUP);
    gw.proc.wait_for_stderr("config reloaded", 1);
    assert_eq!(status_of(&gw, "new").await, 200);
    assert_eq!(status_of(&gw, "old").await, 404);
}

#[tokio::test]
async fn a_watched_file_is_reloaded_when_it_changes_and_a_refused_content_is_not_retried() {
    let sim = Sim::fast(SERVED);
    let watched = |aliases: &[&str]| {
        format!(
            "server: {{watch_config: 10ms}}\n{}",
            config(&[&sim], aliases)
        )
    };
    let gw = Gateway::start(&watched(&["old"]));
    gw.rewrite_config(&watched(&["new"]));
    gw.proc.wait_for_stderr("config reloaded", 1);
    assert_eq!(status_of(&gw, "new").await, 200);
    assert_eq!(status_of(&gw, "old").await, 404);

    gw.rewrite_config(&watched(&["newer"]).replace("pool: p", "pool: nowhere"));
    gw.proc.wait_for_stderr("config reload refused", 1);
    // The old config keeps serving while the bad file stands (over several periods).
    for _ in 0..20 {
        assert_eq!(status_of(&gw, "new").await, 200);
    }
    gw.rewrite_config(&watched(&["newest"]));
    gw.proc.wait_for_stderr("config reloaded", 2);
    assert_eq!(status_of(&gw, "newest").await, 200);
    // The start, two changes; the bad content tried once while it stood for several periods.
    assert_eq!(config_loads(&gw).await, (Some(3.0), Some(1.0)));
}

/// Streams and plain requests run while the config flips eleven times between two server sets
/// and alias sets: none fails or is cut short, and afterwards new requests follow the last
/// config (its alias, and only its servers).
#[tokio::test]
async fn reloads_under_load_lose_no_request_and_new_requests_follow_the_new_config() {
    let a = Sim::start(
        SERVED,
        &["--decode-step-ms", "2", "--decode-us-per-seq", "0"],
    );
    let b = Sim::start(
        SERVED,
        &["--decode-step-ms", "2", "--decode-us-per-seq", "0"],
    );
    let gw = Arc::new(Gateway::start(&config(&[&a, &b], &["x"])));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (gw, stop) = (gw.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut done = 0u32;
            while !stop.load(Ordering::Relaxed) || done == 0 {
                let stream = w % 2 == 0;
                let resp = c
                    .post(gw.url("/v1/chat/completions"))
                    .json(&json!({"model": "m", "stream": stream, "max_tokens": 20,
                                  "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let text = resp.text().await.unwrap();
                if stream {
                    assert!(text.ends_with("data: [DONE]\n\n"), "truncated: {text}");
                    assert!(!text.contains("\"error\""), "{text}");
                } else {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["usage"]["completion_tokens"], 20);
                }
                done += 1;
            }
            done
        }));
    }
    let c = client();
    // Eleven reloads, alternating, ending on the single-server config with alias y.
    for i in 0..11 {
        let yaml = if i % 2 == 0 {
            config(&[&b], &["y"])
        } else {
            config(&[&a, &b], &["x"])
        };
        gw.rewrite_config(&yaml);
        let resp = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total >= 12, "only {total} requests completed");
    // The last config has alias y and only server b.
    assert_eq!(status_of(&gw, "y").await, 200);
    assert_eq!(status_of(&gw, "x").await, 404);
    let before = a.metric("switchyard_sim_http_requests_total").await;
    for _ in 0..5 {
        assert_eq!(status_of(&gw, "m").await, 200);
    }
    assert_eq!(a.metric("switchyard_sim_http_requests_total").await, before);
}
