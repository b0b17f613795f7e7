//! The response on its way to the client: whether it is an event stream, the usage it reports
//! (read before the usage event the gateway asked for is taken out again), events counted,
//! first-byte and inter-token timings, and the stream's total time limit. Chunks pass through
//! unbuffered.

use std::time::Instant;

use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};

use pingora_proxy::Session;

use super::Ctx;
use crate::openai::carry::ChunkFilter;
use crate::openai::rename::ModelRename;
use crate::openai::sse::SseTracker;
use crate::openai::ApiError;
use crate::upstream;

/// Before the response header goes out: an event stream is tracked; anything else needs no
/// usage strip.
pub fn start(response: &mut http::HeaderMap, ctx: &mut Ctx) {
    let is_sse = response
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        ctx.response.sse = Some(SseTracker::default());
        if ctx.response.strip.is_some() {
            // Events may be taken out: the length changes.
            response.remove(http::header::CONTENT_LENGTH);
        }
    } else {
        ctx.response.strip = None;
    }
}

/// `server.response_model: public`: a successful answer's `model` will say the public name of
/// the model that answered (its length changes).
pub fn rename(response: &mut pingora_http::ResponseHeader, ctx: &mut Ctx) {
    let Some(routed) = ctx.routed.as_ref() else {
        return;
    };
    if !routed.runtime.config.server.public_response_model || response.status != 200 {
        return;
    }
    let (from, to) = (&routed.pool().served_model_json, &routed.model().name_json);
    if from != to {
        ctx.response.rename = Some(ModelRename::new(from.clone(), to.clone()));
        response.remove_header(&http::header::CONTENT_LENGTH);
    }
}

/// One chunk of the response body (`None` at the end of some streams).
pub fn chunk(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) -> Result<()> {
    if end_of_stream {
        // The upstream is done with: its socket goes back to Pingora's pool now.
        ctx.attempt.upstream_socket = None;
    }
    if let Some(chunk) = body.as_ref() {
        // Usage is read before the usage event may be taken out.
        ctx.response.usage.observe(chunk);
        ctx.response.bytes += chunk.len() as u64;
    }
    if let Some(strip) = &mut ctx.response.strip {
        strip.pass(body, end_of_stream);
    }
    if let Some(rename) = &mut ctx.response.rename {
        rename.pass(body, end_of_stream);
    }
    let Some(chunk) = body.as_ref().filter(|b| !b.is_empty()) else {
        return Ok(());
    };
    let now = Instant::now();
    if ctx.response.first_byte.is_none() {
        ctx.response.first_byte = Some(now);
        if let (Some(routed), Some(server), Some(sent)) =
            (&ctx.routed, ctx.attempt.server, ctx.attempt.upstream_sent)
        {
            let state = &routed.pool().servers[server].state;
            let waited = now.duration_since(sent);
            let at = upstream::now_ms();
            state.observe_ttfb(waited, at);
            if ctx.request.stream {
                state.observe_ttft(waited, at);
            }
        }
    }
    if ctx.request.stream {
        if let Some(routed) = &ctx.routed {
            if now.duration_since(ctx.request.started) > routed.runtime.config.timeouts.stream_total
            {
                ctx.response.total_limit_hit = true;
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "stream exceeded timeouts.stream_total",
                );
            }
        }
    }
    if let Some(sse) = &mut ctx.response.sse {
        let events = match sse.observe(chunk) {
            Ok(events) => events,
            Err(cut) => {
                // What no client can parse ends the stream here: the whole events before it
                // still go out, then the error event (`end_early`).
                ctx.response.held_back = chunk.slice(..cut);
                ctx.response.malformed = true;
                ctx.response.error = Some(ApiError::StreamInterrupted);
                return Error::e_explain(ErrorType::ReadError, "malformed event from the server");
            }
        };
        if events > 0 {
            // Inter-token latency: the gap to the previous event for the first event of
            // the chunk; events that arrived together count as 0.
            if let (Some(routed), Some(last)) = (&ctx.routed, ctx.response.last_event) {
                if let Some(m) = &routed.model().metrics {
                    m.itl.observe(now.duration_since(last).as_secs_f64());
                    for _ in 1..events {
                        m.itl.observe(0.0);
                    }
                }
            }
            ctx.response.last_event = Some(now);
        }
    }
    Ok(())
}

/// Ends a stream the client already has a 200 and events of, honestly: the error event and
/// `data: [DONE]` (unless its `[DONE]` went out already).
pub async fn end_early(session: &mut Session, ctx: &mut Ctx, answer: Option<ApiError>) {
    let Some(sse) = &ctx.response.sse else { return };
    let Some(api) = answer.filter(|_| !sse.done) else {
        return;
    };
    let api = match api {
        ApiError::ShuttingDown | ApiError::UpstreamTimeout => api,
        _ => ApiError::StreamInterrupted,
    };
    ctx.response.interrupted = api.code();
    let tail = sse.interruption(&ctx.response.held_back, &api.body());
    let _ = session.write_response_body(Some(tail), true).await;
}

/// At the end of a stream: its decode rate (tokens after the first, over the time between the
/// first and the last event) feeds its server's estimate, which the router's `throughput`
/// preference reads.
pub fn observe_decode_rate(ctx: &Ctx) {
    let (Some(routed), Some(server), Some(sse), Some(first), Some(last)) = (
        &ctx.routed,
        ctx.attempt.server,
        &ctx.response.sse,
        ctx.response.first_byte,
        ctx.response.last_event,
    ) else {
        return;
    };
    let tokens = ctx
        .response
        .usage
        .completion_tokens
        .unwrap_or(u64::from(sse.events.saturating_sub(u32::from(sse.done))));
    let secs = last.duration_since(first).as_secs_f64();
    if tokens >= 2 && secs > 0.0 {
        if let Some(s) = routed.pool().servers.get(server) {
            s.state
                .observe_decode_rate((tokens - 1) as f64 / secs, upstream::now_ms());
        }
    }
}

/// Whether the client was sent the whole stream: its `[DONE]` went out and the gateway did not
/// end it early. A client that leaves after this point (the sync OpenAI SDK closes before the
/// closing chunk) did not abort anything.
pub fn relayed_whole(ctx: &Ctx) -> bool {
    ctx.response.interrupted.is_none() && ctx.response.sse.as_ref().is_some_and(|s| s.done)
}
