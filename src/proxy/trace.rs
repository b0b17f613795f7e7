//! The request path's side of tracing (`otel:`): a trace begins with the request (the client's
//! `traceparent` continued, or a new one), each attempt at a server gets a span whose id goes
//! upstream as `traceparent`, and at the end the spans are handed to the exporter. Without
//! `otel:` every function here returns at its first line.

use std::time::SystemTime;

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use pingora_proxy::Session;

use super::ctx::{AttemptSpan, Trace};
use super::{headers, Ctx};
use crate::openai::Endpoint;
use crate::otel::{self, Finished, Otel};

/// Starts the request's trace.
pub fn begin(otel: &Otel, session: &Session, ctx: &mut Ctx, endpoint: Endpoint) {
    let parent = otel.begin(session.req_header().headers.get(headers::TRACEPARENT));
    ctx.trace = Some(Box::new(Trace {
        parent,
        span_id: otel::span_id(),
        start: SystemTime::now(),
        operation: match endpoint {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        },
        attempts: Vec::new(),
    }));
}

/// A new attempt at `server` of `pool` (chosen, not yet connected): its span starts.
pub fn attempt(ctx: &mut Ctx, pool: usize, server: usize) {
    let Some(trace) = ctx.trace.as_deref_mut() else {
        return;
    };
    let now = SystemTime::now();
    if let Some(previous) = trace.current() {
        previous.end = Some(now);
    }
    trace.attempts.push(AttemptSpan {
        span_id: otel::span_id(),
        start: now,
        end: None,
        pool,
        server,
        status: None,
        error: None,
    });
}

/// The `traceparent` the current attempt's server is sent: the attempt's span as its parent.
pub fn traceparent(ctx: &Ctx) -> Option<http::HeaderValue> {
    let trace = ctx.trace.as_deref()?;
    let a = trace.attempts.last().filter(|a| a.end.is_none())?;
    let p = trace.parent;
    Some(otel::traceparent(p.trace_id, a.span_id, p.sampled))
}

/// The server answered with `status` (the attempt may still be retried on another).
pub fn attempt_status(ctx: &mut Ctx, status: u16) {
    if let Some(a) = ctx.trace.as_deref_mut().and_then(Trace::current) {
        a.status = Some(status);
    }
}

/// The attempt failed (`kind`: connect_refused, reset, timeout, ...).
pub fn attempt_failed(ctx: &mut Ctx, kind: &'static str) {
    if let Some(a) = ctx.trace.as_deref_mut().and_then(Trace::current) {
        a.error = Some(kind);
        a.end = Some(SystemTime::now());
    }
}

/// The request is over: its spans go to the exporter, when the trace is sampled.
pub fn finish(otel: &Otel, ctx: &mut Ctx, status: u16, outcome: &'static str) {
    let Some(trace) = ctx.trace.take() else {
        return;
    };
    if !trace.parent.sampled {
        return;
    }
    let end = SystemTime::now();
    let routed = ctx.routed.as_ref();
    let requested = routed.map(|r| r.requested().name.as_str());
    let answered = routed.map(|r| {
        let pool = &r.runtime.config.pools[r.pool_index()];
        (r.model().name.as_str(), pool)
    });
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", trace.operation),
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("switchyard.outcome", outcome),
        KeyValue::new("switchyard.attempts", ctx.attempt.tried.attempts() as i64),
        KeyValue::new("switchyard.stream", ctx.request.stream),
    ];
    if let Some(model) = requested {
        attrs.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
    }
    if let Some((model, pool)) = answered {
        attrs.push(KeyValue::new(
            "gen_ai.response.model",
            pool.served_model.clone(),
        ));
        attrs.push(KeyValue::new("switchyard.model", model.to_owned()));
        attrs.push(KeyValue::new("switchyard.pool", pool.name.clone()));
    }
    if let Some(d) = routed.and_then(|r| r.decision()) {
        attrs.push(KeyValue::new("switchyard.route", d.label.clone()));
    }
    if let Some(t) = &ctx.tenancy.name {
        attrs.push(KeyValue::new("switchyard.tenant", t.clone()));
    }
    let usage = &ctx.response.usage;
    if let Some(n) = usage.prompt_tokens {
        attrs.push(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
    }
    if let Some(n) = usage.completion_tokens {
        attrs.push(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
    }
    if let Some(first) = ctx.response.first_byte.filter(|_| ctx.request.stream) {
        let ttft = first.duration_since(ctx.request.started).as_secs_f64();
        attrs.push(KeyValue::new("gen_ai.server.time_to_first_token", ttft));
    }
    let failed = outcome != "ok";
    if failed {
        attrs.push(KeyValue::new("error.type", outcome));
    }
    let root = Finished {
        name: format!("{} {}", trace.operation, requested.unwrap_or("unknown")),
        kind: SpanKind::Server,
        span_id: trace.span_id,
        start: trace.start,
        end,
        attributes: attrs,
        error: failed.then(|| outcome.to_owned()),
    };
    let mut spans = Vec::with_capacity(trace.attempts.len());
    for a in &trace.attempts {
        let mut attrs = vec![KeyValue::new("gen_ai.operation.name", trace.operation)];
        let spec = routed.and_then(|r| r.runtime.config.pools.get(a.pool));
        let served = spec.map_or("unknown", |p| p.served_model.as_str());
        if let Some(pool) = routed.and_then(|r| r.runtime.pools.get(a.pool)) {
            if let Some(server) = pool.servers.get(a.server) {
                let (host, port) = server.id.rsplit_once(':').unwrap_or((&server.id, ""));
                attrs.push(KeyValue::new("server.address", host.to_owned()));
                if let Ok(port) = port.parse::<i64>() {
                    attrs.push(KeyValue::new("server.port", port));
                }
            }
            attrs.push(KeyValue::new("switchyard.pool", pool.name.clone()));
            if let Some(spec) = spec {
                attrs.push(KeyValue::new(
                    "gen_ai.request.model",
                    spec.served_model.clone(),
                ));
                attrs.push(KeyValue::new("switchyard.engine", spec.engine.name()));
            }
        }
        if let Some(s) = a.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        let error = a
            .error
            .map(str::to_owned)
            .or_else(|| a.status.filter(|s| *s >= 500).map(|s| s.to_string()));
        if let Some(e) = &error {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        spans.push(Finished {
            name: format!("{} {served}", trace.operation),
            kind: SpanKind::Client,
            span_id: a.span_id,
            start: a.start,
            end: a.end.unwrap_or(end),
            attributes: attrs,
            error,
        });
    }
    otel.record(trace.parent, root, spans);
}
