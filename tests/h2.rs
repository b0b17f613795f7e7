//! HTTP/2 limits from RELIABILITY.md, with a client that can misbehave: at most 100
//! concurrent streams and a 64 KiB header list, and a rapid-reset flood (CVE-2023-44487:
//! streams opened and cancelled at once) ends that connection while other clients are served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Gateway, Sim};
use h2::client::SendRequest;
use tokio::net::TcpStream;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// An h2c (prior knowledge) connection to the gateway, driven in the background; the
/// connection task's result says how it ended.
async fn connect(
    gw: &Gateway,
) -> (
    SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(gw.api).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://gw{path}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn streams_and_header_lists_are_bounded() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let (client, _conn) = connect(&gw).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/v1/models"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // The server's SETTINGS are in by now.
    assert_eq!(client.current_max_send_streams(), 100);
    // A header list over 64 KiB is not served.
    let mut client = client.ready().await.unwrap();
    let big = http::Request::get("http://gw/v1/models")
        .header("x-big", "a".repeat(70 * 1024))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(big, true).unwrap();
    match tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
    {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e:?}"),
    }
}

#[tokio::test]
async fn a_rapid_reset_flood_ends_that_connection_and_others_are_served() {
    let sim = Sim::fast(SERVED);
    let gw = Gateway::single(SERVED, &[sim.url()], "");
    let (mut flood, conn) = connect(&gw).await;
    let mut opened = 0;
    let mut cut_off = false;
    for _ in 0..10_000 {
        flood = match flood.ready().await {
            Ok(c) => c,
            Err(_) => {
                cut_off = true;
                break;
            }
        };
        match flood.send_request(get("/v1/models"), false) {
            Ok((_resp, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => {
                cut_off = true;
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let ended = ended
        .expect("the flooding connection was not closed")
        .unwrap();
    assert!(
        cut_off || ended.is_err(),
        "after {opened} resets: {ended:?}"
    );
    if let Err(e) = ended {
        assert!(e.is_go_away() || e.is_io() || e.is_reset(), "{e:?}");
    }
    // Another client is served meanwhile and after.
    let (client, _conn) = connect(&gw).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/v1/models"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(gw.tiny_completion("m").await, 200);
    // The flood was cut before the gateway served its streams: the two requests above are
    // about all it logged, not thousands of answered and cancelled ones.
    let log = gw.access_log_lines(2).await;
    assert!(log.len() < 100, "{} requests logged", log.len());
}
