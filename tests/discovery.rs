//! `servers: [{dns: ...}]` against a DNS server started here on loopback: servers appear,
//! ramp up, disappear (drained: a stream in flight to one ends whole) and stay when the name
//! stops answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, get_json, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// What the DNS server answers for every A question: these addresses (none: NOERROR with no
/// records), or nothing at all while `silent`.
#[derive(Default)]
struct Zone {
    a: Vec<Ipv4Addr>,
    silent: bool,
}

/// A minimal DNS server on UDP: answers every A question with the zone's addresses (TTL 1 s)
/// and every other question with no records.
async fn dns_server(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let query = &buf[..n];
            // The question: labels up to a zero byte, then type and class.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + usize::from(query[end]);
            }
            let question_end = end + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            let (addrs, silent) = {
                let z = zone.lock().unwrap();
                (if qtype == 1 { z.a.clone() } else { vec![] }, z.silent)
            };
            if silent {
                continue;
            }
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(&query[..2]); // id
            out.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&query[12..question_end]);
            for ip in addrs {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // name at 12, A, IN
                out.extend_from_slice(&1u32.to_be_bytes()); // TTL
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&out, peer).await;
        }
    });
    addr
}

async fn servers(gw: &Gateway) -> Vec<Value> {
    let v = get_json(&gw.admin_url("/admin/servers")).await;
    v["pools"][0]["servers"].as_array().unwrap().clone()
}

/// Waits until the pool's servers are exactly `ids`.
async fn wait_servers(gw: &Gateway, ids: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = servers(gw).await;
        let mut have: Vec<String> = now
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        have.sort();
        if have == ids {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "servers {have:?}, wanted {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({"model": "m", "max_tokens": max_tokens, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_pools_servers_follow_the_names_addresses() {
    // Two simulators on one port, at two loopback addresses: what a headless Service gives.
    let first = Sim::start_at(
        SERVED,
        "127.0.0.2:0".parse().unwrap(),
        &["--decode-step-ms", "20", "--prefill-us-per-token", "0"],
    );
    let port = first.addr.port();
    let second = Sim::start_at(
        SERVED,
        SocketAddr::from(([127, 0, 0, 3], port)),
        &["--zero-delay"],
    );
    let (a, b) = (first.addr.to_string(), second.addr.to_string());
    let zone = Arc::new(Mutex::new(Zone {
        a: vec![Ipv4Addr::new(127, 0, 0, 2)],
        silent: false,
    }));
    let dns = dns_server(zone.clone()).await;
    let gw = Gateway::start(&format!(
        "server:\n  resolver: {dns}\npools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    slow_start: 2s\n    servers:\n      - dns: vllm.inference.test:{port}\n        every: 200ms\nmodels:\n  m:\n    pool: p\n"
    ));
    let found = wait_servers(&gw, std::slice::from_ref(&a)).await;
    assert_eq!(found[0]["dns"], format!("vllm.inference.test:{port}"));
    assert_eq!(
        found[0]["ramp"], 1.0,
        "the first answer fills the pool at full weight"
    );
    let one_token = chat(1, false);
    let completion = || gw.post("/v1/chat/completions", &one_token);
    assert_eq!(completion().await.status(), 200);

    // A stream in flight on the first server (the only one yet): 100 tokens at 20 ms.
    let url = gw.url("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        let resp = client()
            .post(url)
            .json(&chat(100, true))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    });
    first.wait_running(1.0).await;

    // A second address: a new server, ramping up.
    zone.lock().unwrap().a.push(Ipv4Addr::new(127, 0, 0, 3));
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    let now = wait_servers(&gw, &both).await;
    let newcomer = now.iter().find(|s| s["id"] == b.as_str()).unwrap();
    assert!(newcomer["ramp"].as_f64().unwrap() < 1.0, "{newcomer}");

    // The first address goes: the stream on it ends whole (drained), and new requests go to
    // the second server only.
    zone.lock().unwrap().a = vec![Ipv4Addr::new(127, 0, 0, 3)];
    wait_servers(&gw, std::slice::from_ref(&b)).await;
    assert_eq!(
        first.metric("vllm:num_requests_running").await,
        1.0,
        "the stream ended early"
    );
    let body = stream.await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(!body.contains("error"), "{body}");
    let before = first.metric("vllm:request_success_total").await;
    for _ in 0..10 {
        assert_eq!(completion().await.status(), 200);
    }
    assert_eq!(
        first.metric("vllm:request_success_total").await,
        before,
        "a removed server got new requests"
    );

    // The name stops answering: the servers stay as they were.
    zone.lock().unwrap().silent = true;
    gw.proc.wait_for_stderr("did not resolve", 1);
    wait_servers(&gw, std::slice::from_ref(&b)).await;
    assert_eq!(completion().await.status(), 200);
}
