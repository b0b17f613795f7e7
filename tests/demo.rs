//! `switchyard demo` as the README tells a new user to run it: the gateway in front of three
//! simulated servers, every model and alias answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, spawn};
use serde_json::{json, Value};

#[tokio::test]
async fn demo_serves_every_model_and_alias_with_metrics() {
    let (_demo, addrs) = spawn(
        &["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        &["api", "admin"],
    );
    let (api, admin) = (addrs[0], addrs[1]);
    let c = client();
    let models = common::get_json(&format!("http://{api}/v1/models")).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "auto",
            "router",
            "llama-3.1-8b",
            "fast",
            "default",
            "qwen-2.5-72b",
            "smart"
        ]
    );
    for (model, served) in [
        ("fast", "meta-llama/Llama-3.1-8B-Instruct"),
        ("default", "meta-llama/Llama-3.1-8B-Instruct"),
        ("smart", "Qwen/Qwen2.5-72B-Instruct"),
    ] {
        let v: Value = c
            .post(format!("http://{api}/v1/chat/completions"))
            .json(&json!({"model": model, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "Hello!"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["model"], served, "{model}: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }
    // The virtual model of the README's "Routing by request": code goes to the big model,
    // small talk to the cheapest. Requests count on the model that answered.
    for (text, model, route) in [
        (
            "Why does my Rust code not compile?",
            "qwen-2.5-72b",
            "auto#3:keywords",
        ),
        ("Hello!", "llama-3.1-8b", "auto#5:price=llama-3.1-8b"),
    ] {
        let resp = c
            .post(format!("http://{api}/v1/chat/completions"))
            .json(&json!({"model": "auto", "max_tokens": 2,
                          "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-model"], model, "{text}");
        assert_eq!(resp.headers()["x-switchyard-route"], route, "{text}");
    }
    common::metric_eventually(
        &format!("http://{admin}/metrics"),
        r#"switchyard_requests_total{model="qwen-2.5-72b",pool="qwen-72b",status="200"}"#,
        2.0,
    )
    .await;
}

/// A taken port: the demo says which flag picks another, and prints no banner first.
#[test]
fn a_taken_port_is_said_with_the_flag_that_picks_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, other) in [("--listen", "--admin"), ("--admin", "--listen")] {
        let out = std::process::Command::new(common::BIN)
            .args(["demo", flag, &addr, other, "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&addr) && stderr.contains(flag), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("Switchyard demo"),
            "banner before the error: {stdout}"
        );
    }
}
