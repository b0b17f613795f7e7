//! The access log: one JSON line per request on stdout. Never prompts, completions or keys.

use std::io::Write as _;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::Ctx;
use crate::config::AccessLog;
use crate::state::Gateway;

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    tenant: Option<&'a str>,
    model: Option<&'a str>,
    pool: Option<&'a str>,
    server: Option<&'a str>,
    status: u16,
    attempts: usize,
    stream: bool,
    ttft_ms: Option<f64>,
    duration_ms: f64,
    overhead_us: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    outcome: &'static str,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Writes the access log line for a finished request, if the access log is on.
pub fn access(gateway: &Gateway, ctx: &Ctx, status: u16, client_gone: bool, now: Instant) {
    let runtime = ctx.routed.as_ref().map(|r| &r.runtime);
    let setting = runtime.map_or_else(
        || gateway.runtime().config.server.access_log,
        |rt| rt.config.server.access_log,
    );
    if setting == AccessLog::Off {
        return;
    }
    let routed = ctx.routed.as_ref();
    let pool = routed.map(|r| &r.runtime.pools[r.pool]);
    let outcome = match status {
        _ if client_gone => "client_abort",
        _ if ctx.interrupted == Some("upstream_timeout") => "timeout",
        _ if ctx.interrupted.is_some() => "upstream_error",
        401 | 429 if ctx.answered.is_some() => "rejected",
        _ if routed.is_none() => "rejected",
        504 if ctx.answered.is_some() => "timeout",
        _ if ctx.answered.is_some() => "upstream_error",
        500.. => "upstream_error",
        _ => "ok",
    };
    let line = Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        tenant: ctx.tenant_name.as_deref(),
        model: routed.map(|r| r.runtime.models[r.model].name.as_str()),
        pool: pool.map(|p| p.name.as_str()),
        server: pool
            .zip(ctx.server)
            .and_then(|(p, s)| p.servers.get(s))
            .map(|s| s.id.as_str()),
        status,
        attempts: ctx.tried.attempts(),
        stream: ctx.stream,
        ttft_ms: ctx.first_byte.map(|t| ms(t.duration_since(ctx.started))),
        duration_ms: ms(now.duration_since(ctx.started)),
        overhead_us: ctx.overhead.map(|d| d.as_micros() as u64),
        prompt_tokens: ctx.usage.prompt_tokens,
        completion_tokens: ctx.usage.completion_tokens,
        outcome,
    };
    let Ok(mut buf) = serde_json::to_vec(&line) else {
        return;
    };
    buf.push(b'\n');
    // One write per line keeps lines whole under concurrency; a full or closed stdout must not
    // fail the request.
    let _ = std::io::stdout().lock().write_all(&buf);
}
