//! What came back, and what the gateway answered itself.

use std::time::{Duration, Instant};

use crate::openai::sse::SseTracker;
use crate::openai::strip::UsageStrip;
use crate::openai::usage::UsageScanner;
use crate::openai::ApiError;

#[derive(Default)]
pub struct Response {
    /// Time spent in the gateway itself, excluding the upstream's work (see `overhead`).
    pub overhead: Option<Duration>,
    /// When the first response body byte arrived from the upstream.
    pub first_byte: Option<Instant>,
    /// Set when the response is `text/event-stream`: what has been relayed of it.
    pub sse: Option<SseTracker>,
    /// When the last SSE event was completed (inter-token latency).
    pub last_event: Option<Instant>,
    /// Token counts the server reported in `usage`.
    pub usage: UsageScanner,
    /// Set when the gateway asked for the usage chunk the client did not want.
    pub strip: Option<UsageStrip>,
    /// `server.response_model: public`: the answer's `model` is renamed.
    pub rename: Option<crate::openai::rename::ModelRename>,
    /// Response body bytes relayed (the completion estimate when usage is missing).
    pub bytes: u64,
    /// The stream was cut after its first byte and ended with this error event.
    pub interrupted: Option<&'static str>,
    /// The stream was cut by the gateway's own limit (total duration).
    pub total_limit_hit: bool,
    /// The server's stream turned malformed after its first event; `held_back` is what was
    /// well-formed of the chunk it happened in (it goes out before the error event).
    pub malformed: bool,
    pub held_back: bytes::Bytes,
    /// Set by a phase that fails on purpose; `fail_to_proxy` answers with it.
    pub error: Option<ApiError>,
    /// Status sent to the client by the gateway itself (early answers and errors).
    pub answered: Option<u16>,
}
