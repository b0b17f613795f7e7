//! Per-request state carried through Pingora's phases. Dropping it releases every guard
//! (in-flight counts now; permits and token reservations later), on every exit path.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;

use crate::balance::Features;
use crate::lifecycle::{RequestGuard, UpstreamHandle};
use crate::openai::sse::SseTracker;
use crate::openai::usage::UsageScanner;
use crate::openai::ApiError;
use crate::state::Runtime;
use crate::upstream::InflightGuard;

/// At most this many servers are tried for one request (1 + 2 retries; RELIABILITY.md).
pub const MAX_ATTEMPTS: usize = 3;

/// Servers already tried for this request, without allocating.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    servers: [u32; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn contains(&self, server: usize) -> bool {
        self.servers[..self.len]
            .iter()
            .any(|&s| s as usize == server)
    }

    /// Records an attempt; returns false when the attempt budget is spent.
    pub fn push(&mut self, server: usize) -> bool {
        if self.len == MAX_ATTEMPTS {
            return false;
        }
        self.servers[self.len] = server as u32;
        self.len += 1;
        true
    }

    pub fn attempts(&self) -> usize {
        self.len
    }
}

/// The request's route, once its model is known.
pub struct Routed {
    pub runtime: Arc<Runtime>,
    /// Index into `runtime.models`.
    pub model: usize,
    /// Index into `runtime.pools`.
    pub pool: usize,
}

pub struct Ctx {
    pub started: Instant,
    /// `x-request-id`, the client's when valid, else generated.
    pub request_id: Option<HeaderValue>,
    pub routed: Option<Routed>,
    /// The complete body to forward (model name already rewritten).
    pub body: Bytes,
    pub stream: bool,
    pub features: Features,
    pub tried: Tried,
    /// The server of the current attempt, index into the pool's servers.
    pub server: Option<usize>,
    pub inflight: Option<InflightGuard>,
    /// Counts the request for graceful shutdown.
    pub request_guard: Option<RequestGuard>,
    /// The current attempt's upstream socket, registered so shutdown can end it.
    pub upstream_socket: Option<UpstreamHandle>,
    pub upstream_status: Option<u16>,
    /// When the request (headers and body) was ready to go upstream, last attempt.
    pub upstream_sent: Option<Instant>,
    /// When the upstream response header arrived.
    pub upstream_header: Option<Instant>,
    /// Time spent in the gateway itself, excluding the upstream's work (see `overhead`).
    pub overhead: Option<std::time::Duration>,
    /// When the first response body byte arrived from the upstream.
    pub first_byte: Option<Instant>,
    /// Set when the response is `text/event-stream`: what has been relayed of it.
    pub sse: Option<SseTracker>,
    /// When the last SSE event was completed (inter-token latency).
    pub last_event: Option<Instant>,
    /// Token counts the server reported in `usage`.
    pub usage: UsageScanner,
    /// The stream was cut after its first byte and ended with this error event.
    pub interrupted: Option<&'static str>,
    /// An upstream status the gateway chose to retry (429/502/503/504 before the first byte).
    pub retry_status: Option<u16>,
    /// Set by a phase that fails on purpose; `fail_to_proxy` answers with it.
    pub error: Option<ApiError>,
    /// Status sent to the client by the gateway itself (early answers and errors).
    pub answered: Option<u16>,
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            request_id: None,
            routed: None,
            body: Bytes::new(),
            stream: false,
            features: Features::default(),
            tried: Tried::default(),
            server: None,
            inflight: None,
            request_guard: None,
            upstream_socket: None,
            upstream_status: None,
            upstream_sent: None,
            upstream_header: None,
            overhead: None,
            first_byte: None,
            sse: None,
            last_event: None,
            usage: UsageScanner::default(),
            retry_status: None,
            interrupted: None,
            error: None,
            answered: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_refuses_more_than_max_attempts() {
        let mut t = Tried::default();
        assert!(t.push(4));
        assert!(t.push(1));
        assert!(t.push(7));
        assert!(!t.push(2));
        assert!(t.contains(1) && t.contains(4) && t.contains(7));
        assert!(!t.contains(2));
        assert_eq!(t.attempts(), 3);
    }
}
