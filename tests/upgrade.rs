//! Zero-downtime binary upgrade: a new process started with `run --upgrade` takes the
//! listening sockets over from the old one on SIGQUIT (Pingora's hand-over); requests keep
//! being answered throughout and a stream in flight on the old process finishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{dead_addr, spawn, Sim};
use serde_json::json;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A client that opens a new connection per request, so that no request lands on a
/// keep-alive connection the old process is closing.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn sigquit_hands_the_sockets_to_the_new_process_without_failing_a_request() {
    let sim = Sim::start(
        SERVED,
        &["--decode-step-ms", "20", "--decode-us-per-seq", "0"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (api, admin) = (dead_addr(), dead_addr());
    let sock = dir.path().join("upgrade.sock");
    let cfg = dir.path().join("switchyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {api}\nadmin: {admin}\nserver:\n  upgrade_sock: {}\npools:\n  p:\n    model: {SERVED}\n    servers: [{{url: \"{}\"}}]\nmodels:\n  m: {{pool: p}}\n",
            sock.display(),
            sim.url()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let (old, addrs) = spawn(&["run", "-c", &cfg], &["api", "admin"]);
    assert_eq!(addrs[0], api);
    let url = format!("http://{api}/v1/chat/completions");

    // A stream in flight on the old process.
    let stream = fresh_client()
        .post(&url)
        .json(&json!({"model": "m", "stream": true, "max_tokens": 40,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // Requests all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, url) = (stop.clone(), url.clone());
        async move {
            let c = fresh_client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .post(&url)
                    .json(&json!({"model": "m", "max_tokens": 1, "messages": []}))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {n} failed during the upgrade: {e}"));
                assert_eq!(resp.status(), 200, "request {n}");
                n += 1;
            }
            n
        }
    });

    // SIGQUIT the old process once the new one waits on the hand-over socket.
    let old_pid = old.pid();
    let sock_path = sock.clone();
    let quitter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock_path.exists() {
            assert!(
                Instant::now() < deadline,
                "the new process never opened {sock_path:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        common::signal(old_pid, nix::sys::signal::Signal::SIGQUIT);
    });
    let (new, new_addrs) = tokio::task::spawn_blocking(move || {
        spawn(&["run", "-c", &cfg, "--upgrade"], &["api", "admin"])
    })
    .await
    .unwrap();
    quitter.join().unwrap();
    assert_eq!(new_addrs, [api, admin]);
    new.wait_for_stderr("listening on", 2);

    let text = stream.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");

    // The new process serves on the same address; stop the load once it did for a while.
    let c = fresh_client();
    for _ in 0..10 {
        let resp = c
            .post(&url)
            .json(&json!({"model": "m", "max_tokens": 1, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    stop.store(true, Ordering::Relaxed);
    let served = load.await.unwrap();
    assert!(served > 10, "only {served} requests during the upgrade");
    drop(old);
}
