//! What the client sent, as the gateway keeps it for every attempt.

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;

use crate::balance::Features;
use crate::lifecycle::RequestGuard;

pub struct Request {
    pub started: Instant,
    /// `x-request-id`, the client's when valid, else generated.
    pub request_id: Option<HeaderValue>,
    /// Counts the request for graceful shutdown.
    pub guard: Option<RequestGuard>,
    pub stream: bool,
    /// The complete body to forward (model name already rewritten for the current pool).
    pub body: Bytes,
    /// The body as the client sent it (with the gateway's own edits), and the span of its
    /// `model` value: a fallback pool serves another model name.
    pub raw_body: Bytes,
    pub model_span: Range<usize>,
    /// What the balancing policies read about the request.
    pub features: Features,
    /// Prompt tokens estimated before the server counted them.
    pub prompt_estimate: u64,
    /// The request's `Origin`, when `server.cors` allows it: every answer gets CORS headers.
    pub cors_origin: Option<HeaderValue>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            request_id: None,
            guard: None,
            stream: false,
            body: Bytes::new(),
            raw_body: Bytes::new(),
            model_span: 0..0,
            features: Features::default(),
            prompt_estimate: 0,
            cors_origin: None,
        }
    }
}
