//! OpenTelemetry trace export: the OTLP/HTTP exporter and its batch processor (a thread of its
//! own, so the proxy's runtimes never wait on a collector), W3C `traceparent` in and out, and
//! the sampling decision. Built once at start from `otel:`; absent, nothing here runs.
//!
//! Spans are built when a request ends, from times and ids the request kept: the request's
//! span (kind server) and one span per attempt at a server (kind client), whose id is the
//! `traceparent` the server received. Attributes follow OpenTelemetry's GenAI semantic
//! conventions (`gen_ai.*`) and HTTP conventions.

use std::time::SystemTime;

use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol as OtlpProtocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::otel::{OtelSettings, Protocol};

pub struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Root traces recorded when their id's low 64 bits fall under this.
    sample_below: u64,
    pub settings: OtelSettings,
}

/// A trace id and the span the next hop hangs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// One finished span, as the request path kept it.
pub struct Finished {
    pub name: String,
    pub kind: SpanKind,
    pub span_id: SpanId,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// `Some(description)`: the span ended in error.
    pub error: Option<String>,
}

impl Otel {
    /// The exporter and its batch thread. Fails only on a settings problem `check` would have
    /// named (an unparsable endpoint).
    pub fn start(settings: &OtelSettings) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.endpoint.clone())
            .with_protocol(match settings.protocol {
                Protocol::Protobuf => OtlpProtocol::HttpBinary,
                Protocol::Json => OtlpProtocol::HttpJson,
            })
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| format!("otel.endpoint: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.batch_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Sampling is decided here, at the request's start, so that the traceparent sent
            // upstream says it; the SDK records what it is given.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Self {
            provider,
            tracer,
            sample_below: (settings.sample_ratio * u64::MAX as f64) as u64,
            settings: settings.clone(),
        })
    }

    /// Sends what is still batched; at exit.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("otel: spans not sent at exit: {e}");
        }
    }

    /// A new trace, sampled by its id (the ratio-based rule OpenTelemetry's SDKs use), or the
    /// client's trace when its `traceparent` is valid (its sampled flag decides).
    pub fn begin(&self, client: Option<&HeaderValue>) -> Parent {
        if let Some(parent) = client.and_then(|v| parse_traceparent(v.as_bytes())) {
            return parent;
        }
        let trace_id = TraceId::from(fastrand::u128(1..));
        let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
        Parent {
            trace_id,
            span_id: SpanId::INVALID,
            sampled: low < self.sample_below || self.sample_below == u64::MAX,
        }
    }

    /// Records a request's span (`root`) under the trace's parent, and `children` under it.
    pub fn record(&self, parent: Parent, root: Finished, children: Vec<Finished>) {
        let under = |span_id: SpanId| {
            Context::new().with_remote_span_context(SpanContext::new(
                parent.trace_id,
                span_id,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        };
        let root_cx = if parent.span_id == SpanId::INVALID {
            Context::new()
        } else {
            under(parent.span_id)
        };
        let children_cx = under(root.span_id);
        self.span(parent.trace_id, root, &root_cx);
        for child in children {
            self.span(parent.trace_id, child, &children_cx);
        }
    }

    fn span(&self, trace_id: TraceId, s: Finished, parent_cx: &Context) {
        use opentelemetry::trace::Span as _;
        let mut span = self
            .tracer
            .span_builder(s.name)
            .with_kind(s.kind)
            .with_trace_id(trace_id)
            .with_span_id(s.span_id)
            .with_start_time(s.start)
            .with_attributes(s.attributes)
            .start_with_context(&self.tracer, parent_cx);
        if let Some(e) = s.error {
            span.set_status(opentelemetry::trace::Status::error(e));
        }
        span.end_with_timestamp(s.end);
    }
}

/// A fresh span id.
pub fn span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// `traceparent: 00-<trace id>-<span id>-<flags>` (W3C Trace Context), for the next hop.
/// Written by hand into a stack buffer: it goes out with every attempt of a traced gateway,
/// sampled or not.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    for (i, b) in trace_id.to_bytes().iter().enumerate() {
        out[3 + 2 * i] = HEX[usize::from(b >> 4)];
        out[4 + 2 * i] = HEX[usize::from(b & 15)];
    }
    out[35] = b'-';
    for (i, b) in span_id.to_bytes().iter().enumerate() {
        out[36 + 2 * i] = HEX[usize::from(b >> 4)];
        out[37 + 2 * i] = HEX[usize::from(b & 15)];
    }
    out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// Reads a client's `traceparent`; `None` when it is not a valid version-00-shaped one (W3C:
/// then the trace starts here).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let text = std::str::from_utf8(v).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; a later version may add some.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let p =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        let out = traceparent(p.trace_id, SpanId::from(0x1234), false);
        assert_eq!(
            out,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-00"
        );
        assert_eq!(
            parse_traceparent(out.as_bytes()).map(|p| p.sampled),
            Some(false)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
