//! The access log: one JSON line per request on stdout. Never prompts, completions or keys.
//! And the request's metrics, recorded beside its line.
//!
//! Lines are written in batches: they are appended to one buffer, which goes out in one
//! `write` when it holds [`BATCH`] bytes, every [`FLUSH_EVERY`] (app::AccessLogFlush), and at
//! exit. A `write` per line, with both worker threads taking the stdout lock, cost 18–23 % of
//! the throughput at concurrency 64 on 2 cores (benches/load.sh, log on against off); nginx's
//! unbuffered log costs it 7–10 %.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::errors::client_gone;
use super::{relay, tenancy, trace, Ctx};
use crate::config::AccessLog;
use crate::state::Shared;

#[derive(Serialize)]
pub(super) struct Line<'a> {
    pub(super) time: String,
    pub(super) request_id: &'a str,
    pub(super) tenant: Option<&'a str>,
    /// The model that answered (the route's model at the last attempt).
    pub(super) model: Option<&'a str>,
    /// The decision, as `x-switchyard-route` says it.
    pub(super) route: Option<&'a str>,
    pub(super) pool: Option<&'a str>,
    pub(super) server: Option<&'a str>,
    pub(super) status: u16,
    pub(super) attempts: usize,
    pub(super) stream: bool,
    pub(super) ttft_ms: Option<f64>,
    pub(super) duration_ms: f64,
    pub(super) overhead_us: Option<u64>,
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) outcome: &'static str,
    /// What the response cache did (`hit`, `miss`, `bypass`), for models with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cache: Option<&'static str>,
    /// A mirrored request (`models.X.shadow`), whose answer no client saw.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) shadow: bool,
}

pub(super) fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Everything a finished request leaves behind: its token settlement, its metrics, its spans
/// (`otel:`) and its access log line; then the guards it held are let go. `written`: the
/// status the client was sent, if any.
pub fn request_done(
    shared: &Shared,
    log: &AccessLogBuffer,
    written: Option<u16>,
    e: Option<&pingora_error::Error>,
    ctx: &mut Ctx,
) {
    // A client that closes right after the stream's `[DONE]` (the sync OpenAI SDK does, before
    // the closing chunk) got its whole answer: that is a success, not an abort.
    let gone = e
        .and_then(client_gone)
        .filter(|_| !relay::relayed_whole(ctx));
    let client_gone = gone.is_some();
    let status = if client_gone {
        499
    } else {
        ctx.response.answered.or(written).unwrap_or(0)
    };
    tenancy::settle(ctx);
    super::cache::finish(shared, ctx, status, e.is_some());
    relay::observe_decode_rate(ctx);
    let now = Instant::now();
    metrics(&shared.metrics, ctx, status, gone, now);
    if let Some(otel) = &shared.otel {
        trace::finish(otel, ctx, status, outcome(ctx, status, client_gone));
    }
    access(log, shared, ctx, status, client_gone, now);
    ctx.attempt.retry_tokens.clear();
    ctx.tenancy.admission = None;
    ctx.attempt.inflight = None;
    ctx.attempt.upstream_socket = None;
    ctx.request.guard = None;
}

/// Writes the access log line for a finished request, if the access log is on.
pub fn access(
    log: &AccessLogBuffer,
    shared: &Shared,
    ctx: &Ctx,
    status: u16,
    client_gone: bool,
    now: Instant,
) {
    let runtime = ctx.routed.as_ref().map(|r| &r.runtime);
    let setting = runtime.map_or_else(
        || shared.runtime().config.server.access_log,
        |rt| rt.config.server.access_log,
    );
    if setting == AccessLog::Off {
        return;
    }
    let routed = ctx.routed.as_ref();
    let pool = routed.map(|r| r.pool());
    let outcome = outcome(ctx, status, client_gone);
    let line = Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: ctx
            .request
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        tenant: ctx.tenancy.name.as_deref(),
        model: routed.map(|r| r.model().name.as_str()),
        route: routed.and_then(|r| r.decision()).map(|d| d.label.as_str()),
        pool: pool.map(|p| p.name.as_str()),
        server: pool
            .zip(ctx.attempt.server)
            .and_then(|(p, s)| p.servers.get(s))
            .map(|s| s.id.as_str()),
        status,
        attempts: ctx.attempt.tried.attempts(),
        stream: ctx.request.stream,
        ttft_ms: ctx
            .response
            .first_byte
            .filter(|_| ctx.request.stream)
            .map(|t| ms(t.duration_since(ctx.request.started))),
        duration_ms: ms(now.duration_since(ctx.request.started)),
        overhead_us: ctx.response.overhead.map(|d| d.as_micros() as u64),
        prompt_tokens: ctx.response.usage.prompt_tokens,
        completion_tokens: ctx.response.usage.completion_tokens,
        outcome,
        cache: ctx.cache.as_ref().map(|c| c.result),
        shadow: false,
    };
    log.push(&line);
}

/// The access log line of a request the edge answered before the proxy saw it (a head that
/// came too late, or that could not be parsed), if the access log is on.
pub fn edge(log: &AccessLogBuffer, shared: &Shared, status: u16, waited: std::time::Duration) {
    if shared.runtime().config.server.access_log == AccessLog::Off {
        return;
    }
    log.push(&Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: "",
        tenant: None,
        model: None,
        route: None,
        pool: None,
        server: None,
        status,
        attempts: 0,
        stream: false,
        ttft_ms: None,
        duration_ms: ms(waited),
        overhead_us: None,
        prompt_tokens: None,
        completion_tokens: None,
        outcome: "rejected",
        cache: None,
        shadow: false,
    });
}

/// What the access log's `outcome` says about a finished request.
pub fn outcome(ctx: &Ctx, status: u16, client_gone: bool) -> &'static str {
    let routed = ctx.routed.as_ref();
    match status {
        _ if client_gone => "client_abort",
        _ if ctx.response.interrupted == Some("upstream_timeout") => "timeout",
        _ if ctx.response.interrupted.is_some() => "upstream_error",
        // The models list, a CORS preflight: answered, and well.
        100..=399 => "ok",
        401 | 429 if ctx.response.answered.is_some() => "rejected",
        _ if routed.is_none() => "rejected",
        504 if ctx.response.answered.is_some() => "timeout",
        _ if ctx.response.answered.is_some() => "upstream_error",
        500.. => "upstream_error",
        _ => "ok",
    }
}

/// The request's metrics, on the model that answered: status, durations, tokens, retries by
/// reason and outcome, and a stream that ended early (`gone`: why the client left, if it did).
pub fn metrics(
    metrics: &crate::metrics::Metrics,
    ctx: &Ctx,
    status: u16,
    gone: Option<&'static str>,
    now: Instant,
) {
    let Some(routed) = &ctx.routed else { return };
    if let Some(m) = &routed.model().metrics {
        m.count(status);
        m.duration
            .observe(now.duration_since(ctx.request.started).as_secs_f64());
        // Time to first *token*: a streamed answer's first event. A whole answer's first byte
        // comes after its last token, so it would only blur the histogram.
        if let Some(first) = ctx.response.first_byte.filter(|_| ctx.request.stream) {
            m.ttft
                .observe(first.duration_since(ctx.request.started).as_secs_f64());
        }
        if let Some(overhead) = ctx.response.overhead {
            m.overhead.observe(overhead.as_secs_f64());
        }
        if let Some(n) = ctx.response.usage.prompt_tokens {
            m.prompt_tokens.inc_by(n);
        }
        if let Some(n) = ctx.response.usage.completion_tokens {
            m.completion_tokens.inc_by(n);
        }
    }
    let ok = (200..300).contains(&status);
    let pool = &routed.pool().name;
    for reason in ctx.attempt.retries.iter().flatten() {
        metrics.retry(pool, reason, ok);
    }
    let unfinished = ctx.response.sse.as_ref().is_some_and(|s| !s.done);
    if let Some(reason) = ctx.response.interrupted.or(gone.filter(|_| unfinished)) {
        metrics.stream_aborted(&routed.model().name, reason);
    }
}

/// A batch goes out once it holds this much.
pub const BATCH: usize = 32 * 1024;
/// Lines wait at most about this long (app::AccessLogFlush).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The access log's lines not written out yet, in the order requests finished.
pub struct AccessLogBuffer {
    buf: Mutex<Vec<u8>>,
    /// Where batches go: stdout (tests write elsewhere).
    out: fn(&[u8]),
}

impl Default for AccessLogBuffer {
    fn default() -> Self {
        Self {
            buf: Mutex::default(),
            out: write_out,
        }
    }
}

impl AccessLogBuffer {
    pub(super) fn push(&self, line: &Line<'_>) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            // Formatted outside the lock; only the copy happens under it.
            scratch.clear();
            if serde_json::to_writer(&mut *scratch, line).is_err() {
                return;
            }
            scratch.push(b'\n');
            let mut buf = self.lock();
            buf.extend_from_slice(scratch);
            if buf.len() >= BATCH {
                // Written under the lock, so batches keep their order.
                (self.out)(&buf);
                buf.clear();
            }
        });
    }

    /// Writes out every buffered line.
    pub fn flush(&self) {
        let mut buf = self.lock();
        if !buf.is_empty() {
            (self.out)(&buf);
            buf.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        crate::lock(&self.buf)
    }
}

/// One `write_all` per batch keeps lines whole; a full or closed stdout must not fail
/// requests.
fn write_out(batch: &[u8]) {
    let _ = std::io::stdout().lock().write_all(batch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> Line<'_> {
        Line {
            time: "2026-11-21T00:00:00.000Z".to_owned(),
            request_id: id,
            tenant: None,
            model: None,
            route: None,
            pool: None,
            server: None,
            status: 200,
            attempts: 1,
            stream: false,
            ttft_ms: None,
            duration_ms: 1.0,
            overhead_us: None,
            prompt_tokens: None,
            completion_tokens: None,
            outcome: "ok",
            cache: None,
            shadow: false,
        }
    }

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture(batch: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(batch);
    }

    #[test]
    fn lines_wait_in_the_buffer_until_a_batch_is_full() {
        let log = AccessLogBuffer {
            out: capture,
            ..AccessLogBuffer::default()
        };
        log.push(&line("a"));
        let held = log.lock().clone();
        assert!(held.ends_with(b"\"outcome\":\"ok\"}\n"), "{held:?}");
        log.push(&line("b"));
        assert_eq!(log.lock().len(), 2 * held.len());
        assert!(
            WRITTEN.lock().unwrap().is_empty(),
            "written before a batch was full"
        );
        // Past a batch the buffer is written out and starts again.
        for _ in 0..BATCH / held.len() {
            log.push(&line("a"));
        }
        assert!(log.lock().len() < BATCH);
        log.flush();
        assert!(log.lock().is_empty());
        // Everything came out whole and in order: "a", "b", then the rest.
        let written = WRITTEN.lock().unwrap().clone();
        let ids: Vec<String> = written
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!(ids.len(), 2 + BATCH / held.len());
        assert_eq!(ids[..2], ["\"a\"", "\"b\""]);
    }
}
