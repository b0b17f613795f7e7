//! Shadow traffic (`models.X.shadow`): a sample of a model's admitted requests is sent to
//! another model as well, its answer read to the end and discarded. The mirror runs in a task
//! of its own after admission: it never delays, fails or alters the client's answer, and it
//! counts against no tenant limit or budget. Over `max_inflight` mirrors of a model, a mirror
//! is skipped. Each mirror is counted (`switchyard_shadow_requests_total`) and logged with
//! `"shadow": true`; its server's in-flight count and breaker see it like any request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_core::connectors::http::Connector;

use super::log::{AccessLogBuffer, Line};
use super::Ctx;
use crate::openai::request;
use crate::openai::usage::UsageScanner;
use crate::state::{Runtime, Shared};
use crate::upstream::{self, Outcome};

/// What a mirror needs once the request has moved on.
pub struct Mirror {
    pub runtime: Arc<Runtime>,
    /// The model whose shadow this is (the one the client named).
    pub model: usize,
    pub target: usize,
    pub path: Bytes,
    pub body: Bytes,
    pub model_span: std::ops::Range<usize>,
    pub stream: bool,
    pub request_id: Option<http::HeaderValue>,
    pub tenant: Option<Arc<str>>,
    pub features: crate::balance::Features,
}

/// Mirrors the request in `ctx` to its route's shadow, if it has one and the shadow has room.
pub fn start(
    ctx: &Ctx,
    path: &[u8],
    shared: &Arc<Shared>,
    log: &Arc<AccessLogBuffer>,
    connector: &Arc<Connector>,
) {
    let Some(routed) = &ctx.routed else { return };
    let Some(crate::routing::Mirror { of, to }) = routed.route.shadow else {
        return;
    };
    let (model, target) = (usize::from(of), usize::from(to));
    let runtime = &routed.runtime;
    let limit = runtime.router.shadow(model).map_or(0, |s| s.max_inflight);
    let inflight = runtime.models[model].shadows_inflight.clone();
    let (name, target_name) = (&runtime.models[model].name, &runtime.models[target].name);
    if inflight.fetch_add(1, Ordering::Relaxed) >= limit {
        inflight.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.shadow(name, target_name, "skipped");
        return;
    }
    let slot = Slot(inflight);
    let mirror = Mirror {
        runtime: runtime.clone(),
        model,
        target,
        path: Bytes::copy_from_slice(path),
        body: ctx.request.raw_body.clone(),
        model_span: ctx.request.model_span.clone(),
        stream: ctx.request.stream,
        request_id: ctx.request.request_id.clone(),
        tenant: ctx.tenancy.name.clone(),
        features: ctx.request.features.clone(),
    };
    let (shared, log, connector) = (shared.clone(), log.clone(), connector.clone());
    tokio::spawn(async move {
        let _slot = slot;
        run(mirror, &shared, &log, &connector).await;
    });
}

/// A mirror's place under `max_inflight`, given back when it ends.
struct Slot(Arc<AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(m: Mirror, shared: &Shared, log: &AccessLogBuffer, connector: &Connector) {
    let started = Instant::now();
    let rt = &m.runtime;
    let (name, target) = (&rt.models[m.model].name, &rt.models[m.target].name);
    let picked = rt.router.pools(m.target).iter().find_map(|&p| {
        let pool = &rt.pools[p];
        pool.pick(&m.features, &|_| true).map(|s| (pool, s))
    });
    let Some((pool, server)) = picked else {
        shared.metrics.shadow(name, target, "error");
        log_line(
            log,
            &m,
            target,
            None,
            0,
            started.elapsed(),
            &UsageScanner::default(),
        );
        return;
    };
    let s = &pool.servers[server];
    let _inflight = s.state.start(upstream::now_ms());
    let body = request::replace_model(&m.body, m.model_span.clone(), &pool.served_model_json);
    let t = &rt.config.timeouts;
    let limit = if m.stream {
        t.stream_total
    } else {
        t.request_total
    };
    let mut usage = UsageScanner::default();
    let mut observe = |chunk: &[u8]| usage.observe(chunk);
    let exchange = super::call::exchange(
        connector,
        s,
        pool,
        &m.path,
        body,
        m.request_id.as_ref(),
        &mut observe,
    );
    let result = tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(()));
    let outcome = match result {
        Ok(status) if (200..300).contains(&status) => "ok",
        _ => "error",
    };
    let server_fault = match result {
        Ok(status) => matches!(status, 500 | 502..=504),
        Err(()) => true,
    };
    s.state.record(
        if server_fault {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        upstream::now_ms(),
    );
    shared.metrics.shadow(name, target, outcome);
    log_line(
        log,
        &m,
        target,
        Some((&pool.name, &s.id)),
        result.unwrap_or(0),
        started.elapsed(),
        &usage,
    );
}

/// The access log line of a mirror: `model` is the shadow target, `route` says whose shadow.
fn log_line(
    log: &AccessLogBuffer,
    m: &Mirror,
    target: &str,
    server: Option<(&str, &str)>,
    status: u16,
    duration: Duration,
    usage: &UsageScanner,
) {
    let route = format!("{}#shadow", m.runtime.models[m.model].name);
    log.push(&Line {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        request_id: m
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        tenant: m.tenant.as_deref(),
        model: Some(target),
        route: Some(&route),
        pool: server.map(|(p, _)| p),
        server: server.map(|(_, s)| s),
        status,
        attempts: usize::from(server.is_some()),
        stream: m.stream,
        ttft_ms: None,
        duration_ms: super::log::ms(duration),
        overhead_us: None,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        outcome: if (200..300).contains(&status) {
            "ok"
        } else {
            "upstream_error"
        },
        cache: None,
        shadow: true,
    });
}
