//! What a traced request keeps for its spans (`otel:` on): ids and times, written when the
//! request ends. Boxed in the context, so that an untraced request carries one null pointer.

use std::time::SystemTime;

use opentelemetry::trace::SpanId;

use crate::otel::Parent;

pub struct Trace {
    /// The trace, and the client's span when it sent a `traceparent`.
    pub parent: Parent,
    /// The request's own span.
    pub span_id: SpanId,
    pub start: SystemTime,
    /// `chat`, `text_completion`, `embeddings` (GenAI's `gen_ai.operation.name`).
    pub operation: &'static str,
    pub attempts: Vec<AttemptSpan>,
}

/// One try at a server: its span id is the `traceparent` the server was sent.
pub struct AttemptSpan {
    pub span_id: SpanId,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    /// `pool`/`server` indices into the routed runtime.
    pub pool: usize,
    pub server: usize,
    pub status: Option<u16>,
    /// Why it failed (`connect_refused`, `reset`, `timeout`, ...).
    pub error: Option<&'static str>,
}

impl Trace {
    /// The attempt under way, if one is.
    pub fn current(&mut self) -> Option<&mut AttemptSpan> {
        self.attempts.last_mut().filter(|a| a.end.is_none())
    }
}
