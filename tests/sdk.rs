//! The official OpenAI Python SDK raises on a stream the gateway had to end early, instead of
//! returning a truncated answer as complete. Needs `python3` with the `openai` package
//! (`.ci/run` installs it); without them the test fails rather than skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gateway, Sim};

#[tokio::test]
async fn the_openai_sdk_raises_on_an_interrupted_stream() {
    let sim = Sim::fast("served");
    let gw = Gateway::single("served", &[sim.url()], "");
    let base = format!("http://{}", gw.api);
    let stdout = common::sdk("stream_error.py", &[&base], &[]).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("complete "), "{stdout}");
    assert_eq!(
        lines[1], "raised APIError upstream_stream_interrupted",
        "{stdout}"
    );
}
