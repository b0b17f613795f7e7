//! Per-request state carried through Pingora's phases. Dropping it releases every guard
//! (in-flight counts now; permits and token reservations later), on every exit path.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;

use crate::balance::Features;
use crate::lifecycle::{RequestGuard, UpstreamHandle};
use crate::limits::{Admission, RateHeaders};
use crate::openai::sse::SseTracker;
use crate::openai::strip::UsageStrip;
use crate::openai::usage::UsageScanner;
use crate::openai::ApiError;
use crate::state::{RetryToken, Runtime};
use crate::upstream::InflightGuard;

/// At most this many tries per pool: 1 + 2 retries (RELIABILITY.md).
pub const MAX_ATTEMPTS_PER_POOL: usize = 3;

/// At most this many tries in all, fallback pools included (Pingora's `max_retries`).
pub const MAX_ATTEMPTS: usize = 6;

/// Servers already tried for this request, as (pool, server), without allocating.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    entries: [(u16, u32); MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn contains(&self, pool: usize, server: usize) -> bool {
        self.entries[..self.len]
            .iter()
            .any(|&(p, s)| p as usize == pool && s as usize == server)
    }

    /// Tries made on `pool`.
    pub fn in_pool(&self, pool: usize) -> usize {
        self.entries[..self.len]
            .iter()
            .filter(|&&(p, _)| p as usize == pool)
            .count()
    }

    /// Records an attempt; false when the pool's or the request's cap is reached.
    pub fn push(&mut self, pool: usize, server: usize) -> bool {
        if self.len == MAX_ATTEMPTS || self.in_pool(pool) >= MAX_ATTEMPTS_PER_POOL {
            return false;
        }
        self.entries[self.len] = (pool as u16, server as u32);
        self.len += 1;
        true
    }

    /// Whether another try on `pool` is within the caps.
    pub fn can_retry(&self, pool: usize) -> bool {
        self.len < MAX_ATTEMPTS && self.in_pool(pool) < MAX_ATTEMPTS_PER_POOL
    }

    pub fn attempts(&self) -> usize {
        self.len
    }
}

/// Why an attempt was retried; a metric label.
pub type RetryReason = &'static str;

/// The request's route, once its model is known.
pub struct Routed {
    pub runtime: Arc<Runtime>,
    /// Index into `runtime.models`.
    pub model: usize,
    /// Index into `runtime.pools`: the pool of the current attempt (the model's own, or a
    /// fallback).
    pub pool: usize,
    /// How many of the model's fallback pools have been entered.
    pub fallbacks_used: usize,
}

pub struct Ctx {
    pub started: Instant,
    /// `x-request-id`, the client's when valid, else generated.
    pub request_id: Option<HeaderValue>,
    pub routed: Option<Routed>,
    /// The complete body to forward (model name already rewritten for the current pool).
    pub body: Bytes,
    /// The body as the client sent it, and the span of its `model` value: a fallback pool
    /// serves another model name.
    pub raw_body: Bytes,
    pub model_span: std::ops::Range<usize>,
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
    /// A stream's connector for the current attempt (hold/).
    pub hold: Option<std::sync::Arc<super::hold::HoldConnect>>,
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
    /// Retries taken, by reason (at most one per extra attempt).
    pub retries: [Option<RetryReason>; MAX_ATTEMPTS],
    /// A retry was wanted but the pool's retry budget was spent.
    pub budget_refused: bool,
    /// Budget slots held by this request's retries; released when it ends.
    pub retry_tokens: Vec<RetryToken>,
    /// The next attempt waits a jittered backoff first (the server had the request).
    pub backoff: bool,
    /// The current attempt's outcome reached the server's breaker.
    pub outcome_recorded: bool,
    /// The stream was cut by the gateway's own limit (total duration).
    pub total_limit_hit: bool,
    /// Set by a phase that fails on purpose; `fail_to_proxy` answers with it.
    pub error: Option<ApiError>,
    /// Status sent to the client by the gateway itself (early answers and errors).
    pub answered: Option<u16>,
    /// The caller's tenant (index into `runtime.tenants.list`); `None` on an open gateway.
    pub tenant: Option<usize>,
    /// Its name, for the access log.
    pub tenant_name: Option<Arc<str>>,
    /// Permits and token reservations; settled and released when the request ends.
    pub admission: Option<Admission>,
    /// `x-ratelimit-*` values for the response.
    pub rate_headers: Option<RateHeaders>,
    /// Prompt tokens estimated before the server counted them.
    pub prompt_estimate: u64,
    /// Set when the gateway asked for the usage chunk the client did not want.
    pub strip: Option<UsageStrip>,
    /// Response body bytes relayed (the completion estimate when usage is missing).
    pub response_bytes: u64,
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
            raw_body: Bytes::new(),
            model_span: 0..0,
            stream: false,
            features: Features::default(),
            tried: Tried::default(),
            server: None,
            inflight: None,
            request_guard: None,
            upstream_socket: None,
            hold: None,
            upstream_status: None,
            upstream_sent: None,
            upstream_header: None,
            overhead: None,
            first_byte: None,
            sse: None,
            last_event: None,
            usage: UsageScanner::default(),
            retry_status: None,
            retries: [None; MAX_ATTEMPTS],
            budget_refused: false,
            retry_tokens: Vec::new(),
            backoff: false,
            outcome_recorded: false,
            total_limit_hit: false,
            interrupted: None,
            error: None,
            answered: None,
            tenant: None,
            tenant_name: None,
            admission: None,
            rate_headers: None,
            prompt_estimate: 0,
            strip: None,
            response_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_caps_attempts_per_pool_and_in_all() {
        let mut t = Tried::default();
        assert!(t.push(0, 4));
        assert!(t.push(0, 1));
        assert!(t.can_retry(0));
        assert!(t.push(0, 7));
        assert!(!t.can_retry(0));
        assert!(!t.push(0, 2), "a fourth try on one pool");
        assert!(t.contains(0, 1) && t.contains(0, 4) && t.contains(0, 7));
        assert!(!t.contains(1, 1), "same index, other pool");
        assert!(t.push(1, 0) && t.push(1, 1) && t.push(1, 2));
        assert!(!t.push(2, 0), "six in all");
        assert_eq!(t.attempts(), 6);
    }
}
