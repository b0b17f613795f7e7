//! The `ProxyHttp` implementation: Pingora's phases in the order it calls them, each
//! delegating to one module.
//!
//! ```text
//! request_filter ─────────── classify path; read, parse and route the request (intake.rs,
//!   │                         decide.rs → routing/), admit it, mirror it (shadow.rs)
//!   │ Ok(true): answered here (respond.rs)
//! upstream_peer ──────────── the route's next step with a server left; pick one (balance)
//! upstream_request_filter ── rewrite headers (headers.rs), Content-Length of the buffered body
//! request_body_filter ────── substitute the complete buffered body (body.rs explains why)
//! upstream_response_filter ─ 429/5xx before the first byte: cooldown, retry elsewhere
//! response_filter ────────── x-request-id, x-switchyard-model/-route/-overhead-us; notes SSE
//! response_body_filter ───── usage, SSE tracking, timings (relay.rs); chunks pass unbuffered
//! fail_to_connect / error_while_proxy ── retry decisions (never after the first byte)
//! fail_to_proxy ──────────── one mapping of errors to OpenAI bodies, or an SSE error event
//! logging ────────────────── metrics, access log; dropping ctx releases the guards
//! ```

mod body;
pub mod cache;
pub mod call;
mod cors;
mod ctx;
mod decide;
pub mod edge;
mod errors;
mod head;
mod headers;
mod hold;
mod intake;
mod log;
mod relay;
mod respond;
mod retry;
mod shadow;
mod tenancy;
mod trace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{Ctx, MAX_ATTEMPTS};
pub use decide::{dry_run, Caller};
pub use hold::HeldPool;
pub use log::{AccessLogBuffer, FLUSH_EVERY as ACCESS_LOG_FLUSH_EVERY};

use crate::openai::{request, ApiError, Target};
use crate::state::Shared;
use crate::upstream::{self, retry_after};
use body::BodyError;
use errors::{as_read_timeout, classify, client_gone};

/// The gateway's proxy logic; one instance serves every request.
pub struct Proxy {
    shared: Arc<Shared>,
    access_log: Arc<AccessLogBuffer>,
    held: Arc<HeldPool>,
    /// Connections of the gateway's own requests (call.rs: mirrors, classifications), apart
    /// from the client's.
    calls: Arc<pingora_core::connectors::http::Connector>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, access_log: Arc<AccessLogBuffer>, held: Arc<HeldPool>) -> Self {
        Self {
            shared,
            access_log,
            held,
            calls: Arc::new(pingora_core::connectors::http::Connector::new(None)),
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// `Ok(true)`: the gateway answered (models list, or an error); `Ok(false)`: proxy it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        edge::head_done(session.stream());
        ctx.request.guard = Some(self.shared.lifecycle.start_request());
        ctx.request.request_id = Some(headers::request_id(session.req_header()));
        let runtime = self.shared.runtime();
        head::keepalive(session, runtime.config.timeouts.keepalive_idle);
        // Pingora arms this timer only when a write cannot complete at once (a full socket).
        session.set_write_timeout(Some(runtime.config.timeouts.client_write));
        if let Some(cors) = &runtime.config.server.cors {
            match cors::check(session, cors, ctx) {
                cors::Check::Pass => {}
                cors::Check::Preflight => {
                    cors::preflight(session, cors, ctx).await?;
                    return Ok(true);
                }
                cors::Check::Refused(e) => {
                    respond::error(session, ctx, &e).await?;
                    return Ok(true);
                }
            }
        }
        let target = {
            let req = session.req_header();
            Target::classify(&req.method, req.uri.path())
        };
        if let (Some(otel), Target::Inference(endpoint)) = (&self.shared.otel, target) {
            trace::begin(otel, session, ctx, endpoint);
        }
        let identified = head::check(session).and_then(|()| match target {
            Target::Inference(_) | Target::ListModels | Target::RetrieveModel => {
                tenancy::identify(&self.shared, &runtime, session, ctx)
            }
            _ => Ok(()),
        });
        let answer = match (target, identified) {
            (_, Err(e)) => e,
            (Target::Inference(endpoint), _) => {
                let (calls, shared) = (&self.calls, &*self.shared);
                match intake::admit(session, ctx, runtime, endpoint, calls, shared).await {
                    Ok(()) => {
                        if let Some(entry) = ctx.cache.as_ref().and_then(|c| c.hit.clone()) {
                            cache::answer(session, ctx, &entry).await?;
                            return Ok(true);
                        }
                        let uri = &session.req_header().uri;
                        let path = uri
                            .path_and_query()
                            .map_or(uri.path(), |p| p.as_str())
                            .as_bytes();
                        shadow::start(ctx, path, &self.shared, &self.access_log, &self.calls);
                        return Ok(false);
                    }
                    Err(BodyError::Reject(e)) => e,
                    Err(BodyError::ClientGone) => {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            "client closed during upload",
                        )
                        .map_err(|e| e.into_down())
                    }
                }
            }
            (Target::ListModels, _) => {
                match respond::models(session, ctx, &runtime, false).await? {
                    None => return Ok(true),
                    Some(e) => e,
                }
            }
            (Target::RetrieveModel, _) => {
                match respond::models(session, ctx, &runtime, true).await? {
                    None => return Ok(true),
                    Some(e) => e,
                }
            }
            (Target::WrongMethod { allow }, _) => {
                let req = session.req_header();
                ApiError::MethodNotAllowed {
                    method: req.method.to_string(),
                    path: crate::openai::error::echo(req.uri.path()),
                    allow,
                }
            }
            (Target::Unknown, _) => {
                let req = session.req_header();
                ApiError::UnknownPath {
                    method: req.method.to_string(),
                    path: crate::openai::error::echo(req.uri.path()),
                }
            }
        };
        self.shared
            .metrics
            .reject(answer.code().unwrap_or("invalid_request"));
        respond::error(session, ctx, &answer).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if std::mem::take(&mut ctx.attempt.backoff) {
            tokio::time::sleep(retry::backoff(ctx.attempt.tried.attempts())).await;
        }
        let Some(routed) = &mut ctx.routed else {
            ctx.response.error = Some(ApiError::Internal);
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let runtime = routed.runtime.clone();
        let tried = ctx.attempt.tried;
        // The route's steps in order (the model's pool, its fallbacks, other models), until
        // one has a server left.
        let (pool_index, i) = loop {
            let pool_index = routed.pool_index();
            let picked = tried
                .can_retry(pool_index)
                .then(|| {
                    routed
                        .pool()
                        .pick(&ctx.request.features, &|i| !tried.contains(pool_index, i))
                })
                .flatten();
            if let Some(i) = picked {
                break (pool_index, i);
            }
            let Some(next) = routed.route.chain.get(usize::from(routed.step) + 1) else {
                ctx.response.error = Some(if tried.attempts() == 0 {
                    ApiError::NoHealthyUpstream
                } else {
                    ApiError::UpstreamUnavailable
                });
                return Error::e_explain(ErrorType::HTTPStatus(503), "no server left to try");
            };
            routed.step += 1;
            // The next pool serves its own model name.
            let pool = &runtime.pools[next.pool as usize];
            ctx.request.body = request::replace_model(
                &ctx.request.raw_body,
                ctx.request.model_span.clone(),
                &pool.served_model_json,
            );
            tracing::debug!(model = %routed.model().name, pool = %pool.name, "falling back");
        };
        let model = routed.model();
        if !ctx.attempt.tried.push(pool_index, i) {
            ctx.response.error = Some(ApiError::UpstreamUnavailable);
            return Error::e_explain(ErrorType::HTTPStatus(502), "attempt budget spent");
        }
        let pool = &runtime.pools[pool_index];
        let server = &pool.servers[i];
        ctx.attempt.server = Some(i);
        ctx.attempt.outcome_recorded = false;
        ctx.attempt.inflight = Some(server.state.start(upstream::now_ms()));
        let mut peer = Box::new(server.peer.clone());
        let t = &runtime.config.timeouts;
        if ctx.request.stream {
            // Streams connect through the hold (hold/), in their own connection group. Its
            // socket bounds the wait for the first event and every gap after it (the model's
            // first-token timeout): a silent server before the response header is failed
            // over; after it, the stream ends with an error event.
            let hold = Arc::new(hold::HoldConnect::new(
                t.connect,
                model.first_token_timeout,
                self.shared.lifecycle.clone(),
                self.held.clone(),
                runtime.config.server.upstream_keepalive_pool,
                pool.tls.clone().zip(server.tls_name.clone()),
            ));
            ctx.attempt.hold = Some(hold.clone());
            peer.options.custom_l4 = Some(hold);
            // An `https://` server's TLS is the hold's (below its framing): Pingora speaks
            // plain HTTP over it.
            peer.scheme = pingora_core::upstreams::peer::Scheme::HTTP;
            peer.options.read_timeout = None;
            peer.group_key = 1;
        } else {
            // A non-streamed answer comes whole after the generation: its header wait is the
            // request's total limit.
            peer.options.read_timeout = Some(
                t.request_total
                    .saturating_sub(ctx.request.started.elapsed())
                    .max(Duration::from_millis(1)),
            );
        }
        trace::attempt(ctx, pool_index, i);
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A held stream's socket (fd -1 to Pingora) registered itself when it connected.
        if fd >= 0 {
            ctx.attempt.upstream_socket = Some(self.shared.lifecycle.register_upstream(fd));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.attempt.upstream_sent = Some(Instant::now());
        let traceparent = trace::traceparent(ctx);
        let server = ctx
            .routed
            .as_ref()
            .zip(ctx.attempt.server)
            .map(|(r, s)| (r.pool(), s));
        let target = headers::Upstream {
            host: server.map(|(p, s)| &p.servers[s].host),
            auth: server.and_then(|(p, _)| p.upstream_auth.as_ref()),
            traceparent,
        };
        headers::to_upstream(upstream, session.client_addr(), target, ctx);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Whatever Pingora replays from its retry buffer is a tail of what ctx.request.body holds.
        *body = (end_of_stream && !ctx.request.body.is_empty()).then(|| ctx.request.body.clone());
        Ok(())
    }

    /// Before anything reached the client: a server that answers 429/502/503/504 is put in
    /// the cooldown its `Retry-After` asks for, and the request goes to another server when
    /// one is left and the pool's retry budget allows (the held body is replayed). Otherwise
    /// the answer is relayed as is. Every status feeds the server's breaker.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream.status.as_u16();
        ctx.attempt.upstream_status = Some(status);
        trace::attempt_status(ctx, status);
        ctx.attempt.upstream_header = Some(Instant::now());
        let (Some(routed), Some(server)) = (&ctx.routed, ctx.attempt.server) else {
            return Ok(());
        };
        let pool = routed.pool();
        let asked = matches!(status, 429 | 503)
            .then(|| retry_after::cooldown(&upstream.headers, std::time::SystemTime::now()))
            .flatten();
        if let Some(d) = asked {
            pool.servers[server].state.cool_down(upstream::now_ms(), d);
        }
        let outcome = match status {
            429 => upstream::Outcome::Neutral,
            503 if asked.is_some() => upstream::Outcome::Neutral,
            500 | 502..=504 => upstream::Outcome::Failure,
            _ => upstream::Outcome::Success,
        };
        if outcome == upstream::Outcome::Failure {
            self.shared
                .metrics
                .upstream_error(&pool.name, retry::status_kind(status));
        }
        self.record(ctx, outcome);
        if !matches!(status, 429 | 502 | 503 | 504) {
            return Ok(());
        }
        let (Some(routed), tried) = (&ctx.routed, ctx.attempt.tried) else {
            return Ok(());
        };
        if !self.can_try_again(routed, &tried) {
            return Ok(());
        }
        let pool = routed.pool();
        let Some(token) = pool.take_retry() else {
            ctx.attempt.budget_refused = true;
            return Ok(());
        };
        ctx.attempt.retry_tokens.push(token);
        ctx.attempt.retry_status = Some(status);
        ctx.attempt.backoff = true;
        self.note_retry(ctx, retry::status_kind(status));
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "retryable upstream status");
        e.set_retry(true);
        Err(e)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        head::for_http10(session, response);
        relay::rename(response, ctx);
        // The client is about to see this answer: no fallback will rewrite the body for another
        // pool any more, so the client's original body is let go (a stream can stay open for
        // minutes). `ctx.request.body` stays: Pingora may still be sending it.
        ctx.request.raw_body = Bytes::new();
        if let (Some(sent), Some(header)) = (ctx.attempt.upstream_sent, ctx.attempt.upstream_header)
        {
            // The gateway's own time: arrival until the request was ready for the upstream,
            // plus upstream header until now. The upstream's own work is not in it.
            ctx.response.overhead =
                Some(sent.duration_since(ctx.request.started) + header.elapsed());
        }
        let status = response.status.as_u16();
        headers::edit_response(response, |h| {
            cache::response(h, status, ctx);
            headers::strip_upstream(h);
            cors::answer(h, ctx);
            // The map was sized for the upstream's headers: one growth for all of ours
            // instead of one per power of two they cross (~1 500 instructions each).
            h.reserve(
                4 + if ctx.tenancy.rate_headers.is_some() {
                    6
                } else {
                    0
                },
            );
            if let Some(id) = &ctx.request.request_id {
                h.insert(headers::X_REQUEST_ID, id.clone());
            }
            if let Some(r) = &ctx.tenancy.rate_headers {
                headers::rate_limits(h, r);
            }
            if let Some(overhead) = ctx.response.overhead {
                let us = overhead.as_micros() as u64;
                h.insert(headers::X_SWITCHYARD_OVERHEAD_US, us.into());
            }
            if let Some(routed) = &ctx.routed {
                headers::route(h, routed);
            }
            relay::start(h, ctx);
        });
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        relay::chunk(body, end_of_stream, ctx).inspect_err(|_| {
            if ctx.response.malformed {
                self.stream_malformed(ctx);
            }
        })?;
        cache::chunk(body, ctx);
        Ok(None)
    }

    /// A client that went away is an outcome (`client_abort`, in metrics and the access log),
    /// not an error worth Pingora's error log line.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        client_gone(error).is_some()
    }

    /// An error after the connection was made. Never retried once the client has seen the
    /// response header. A retryable status (see `upstream_response_filter`) is retried. A
    /// dead pooled connection is retried as Pingora decides, even for POST, which its default
    /// refuses: the body is held in `ctx` and replayed intact. A reset or a timeout before the
    /// response header on a fresh connection is retried within the retry budget.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        as_read_timeout(&mut e);
        if ctx.attempt.retry_status.take().is_some() {
            return e;
        }
        let upstream_fault = e.esource() == &ErrorSource::Upstream;
        if upstream_fault && !ctx.attempt.outcome_recorded {
            self.record(ctx, upstream::Outcome::Failure);
        } else if upstream_fault && session.response_written().is_some() {
            // Died mid-stream after a good header: a failure all the same.
            self.record_again(ctx, upstream::Outcome::Failure);
        }
        let no_first_event = ctx.attempt.hold.as_ref().and_then(|h| h.no_first_event());
        let kind = match (no_first_event, e.etype()) {
            (Some(kind), _) => kind,
            (None, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => "timeout",
            _ => "reset",
        };
        if upstream_fault {
            trace::attempt_failed(ctx, kind);
        }
        if let Some(routed) = &ctx.routed {
            if upstream_fault && !ctx.response.total_limit_hit {
                let pool = routed.pool();
                self.shared.metrics.upstream_error(&pool.name, kind);
            }
        }
        if session.response_written().is_some() || !upstream_fault {
            e.set_retry(false);
            return e;
        }
        // A held stream's pooled connection is reused outside Pingora's pool (hold/).
        let reused = client_reused || ctx.attempt.hold.as_ref().is_some_and(|h| h.stale());
        e.retry.decide_reuse(reused);
        if e.retry() {
            // A pooled connection the server had closed: nothing was processed.
            self.note_retry(ctx, "stale_connection");
            return e;
        }
        let Some(routed) = &ctx.routed else {
            return e;
        };
        if !self.can_try_again(routed, &ctx.attempt.tried) {
            return e;
        }
        match routed.pool().take_retry() {
            Some(token) => {
                ctx.attempt.retry_tokens.push(token);
                ctx.attempt.backoff = true;
                self.note_retry(ctx, kind);
                e.set_retry(true);
            }
            None => ctx.attempt.budget_refused = true,
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.record(ctx, upstream::Outcome::Failure);
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => "connect_timeout",
            ErrorType::ConnectRefused => "connect_refused",
            _ => "connect_error",
        };
        trace::attempt_failed(ctx, kind);
        if let Some(routed) = &ctx.routed {
            let pool = routed.pool();
            self.shared.metrics.upstream_error(&pool.name, kind);
        }
        // Nothing reached the server: always safe to try another one, within the cap and
        // outside the retry budget.
        if ctx
            .routed
            .as_ref()
            .is_some_and(|r| self.can_try_again(r, &ctx.attempt.tried))
        {
            self.note_retry(ctx, kind);
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // An upstream failure while shutdown ends requests is the shutdown, not the server.
        let answer = if ctx.response.total_limit_hit {
            Some(ApiError::UpstreamTimeout)
        } else {
            ctx.response.error.take().or_else(|| classify(e))
        };
        let answer = answer.map(|a| {
            if self.shared.lifecycle.is_aborting() && a.kind() == "upstream_error" {
                ApiError::ShuttingDown
            } else {
                a
            }
        });
        // Mid-stream: the client has a 200 and events; end the stream honestly.
        if let Some(status) = session.response_written().map(|r| r.status) {
            if ctx.response.sse.is_some() {
                relay::end_early(session, ctx, answer).await;
                return FailToProxy {
                    error_code: status.as_u16(),
                    can_reuse_downstream: false,
                };
            }
        }
        let error_code = match answer {
            Some(api) if session.response_written().is_none() => {
                let status = api.status();
                if respond::error(session, ctx, &api).await.is_err() {
                    0
                } else {
                    status
                }
            }
            Some(api) => api.status(),
            None => 0,
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        edge::response_done(session.stream());
        let written = session.response_written().map(|r| r.status.as_u16());
        log::request_done(&self.shared, &self.access_log, written, e, ctx);
    }
}
