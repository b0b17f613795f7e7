//! Reading, parsing and routing an inference request before any upstream is chosen: the body
//! is read whole, parsed into the request view, routed ([`crate::routing`]), admitted under
//! the tenant's limits, and the body to forward is prepared for the route's first pool.

use std::sync::Arc;

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use pingora_core::connectors::http::Connector;

use super::body::{self, BodyError};
use super::call::Calls;
use super::ctx::Routed;
use super::{decide, tenancy, Ctx};
use crate::balance;
use crate::openai::{request, ApiError, Endpoint, RequestView};
use crate::routing::classify::Known;
use crate::routing::{Chain, Route};
use crate::state::{Runtime, Shared};

/// Reads, parses and routes an inference request; the body to forward lands in `ctx`.
pub(super) async fn admit(
    session: &mut Session,
    ctx: &mut Ctx,
    runtime: Arc<Runtime>,
    endpoint: Endpoint,
    calls: &Connector,
    shared: &Shared,
) -> Result<(), BodyError> {
    let metrics = &shared.metrics;
    let limits = &runtime.config.limits;
    let raw = body::read(
        session,
        limits.max_body_size,
        runtime.config.timeouts.request_body,
    )
    .await?;
    let view = RequestView::parse(&raw).map_err(BodyError::Reject)?;
    let mut known = Known::default();
    let backend = Calls {
        runtime: &runtime,
        connector: calls,
        request_id: ctx.request.request_id.as_ref(),
    };
    let req = session.req_header();
    let routed = route(
        req, ctx, &runtime, endpoint, &view, &raw, &backend, &mut known,
    )
    .await;
    for (c, verdict) in known.iter() {
        if let Some(classifier) = runtime.router.classifiers.get(c) {
            metrics.classify.classified(classifier, verdict);
        }
    }
    let route = routed.map_err(BodyError::Reject)?;
    if let Some(Some(counter)) = runtime.decisions.get(route.decision as usize) {
        counter.inc();
    }
    ctx.request.stream = view.stream;
    features(
        ctx,
        &runtime,
        &route.chain,
        endpoint,
        &view,
        &raw,
        session.req_header(),
    );
    ctx.request.raw_body = raw.clone();
    ctx.request.model_span = view.model_span.clone();
    // The router read the request's preferences; the servers never see them.
    let spans: Vec<_> = view.preference_spans(&raw).collect();
    if !spans.is_empty() {
        let (stripped, model_span) = request::remove_members(&raw, &spans, view.model_span.clone())
            .ok_or(BodyError::Reject(ApiError::Internal))?;
        ctx.request.raw_body = stripped;
        ctx.request.model_span = model_span;
    }
    ctx.routed = Some(Routed {
        runtime: runtime.clone(),
        route,
        step: 0,
    });
    if super::cache::applies(ctx) {
        // Boxed: a request to a model without a cache carries no lookup in its future.
        Box::pin(super::cache::lookup(
            shared,
            ctx,
            &raw,
            session.req_header(),
            calls,
        ))
        .await
        .map_err(BodyError::Reject)?;
    }
    tenancy::admit(shared, &runtime, ctx, endpoint, &view)
        .await
        .map_err(BodyError::Reject)?;
    let pool = ctx.routed.as_ref().map_or(0, Routed::pool_index);
    ctx.request.body = request::replace_model(
        &ctx.request.raw_body,
        ctx.request.model_span.clone(),
        &runtime.pools[pool].served_model_json,
    );
    Ok(())
}

/// Resolves the model the request names, checks the tenant may use it, and asks the router
/// where it goes.
#[allow(clippy::too_many_arguments)]
async fn route(
    req: &RequestHeader,
    ctx: &Ctx,
    runtime: &Runtime,
    endpoint: Endpoint,
    view: &RequestView<'_>,
    raw: &[u8],
    backend: &Calls<'_>,
    known: &mut Known,
) -> Result<Route, ApiError> {
    let tenant = ctx.tenancy.tenant.and_then(|t| runtime.tenants.list.get(t));
    let allowed = |m: usize| tenant.is_none_or(|t| t.allows(m));
    let model = decide::resolve(&runtime.router, view, &allowed).inspect_err(|_| {
        // A model that exists but is not the tenant's: counted as the tenant's refusal.
        if let Some(t) = tenant.filter(|_| runtime.router.resolve(&view.model).is_some()) {
            t.metrics.reject("model_not_found");
        }
    })?;
    let caller = decide::Caller {
        tenant: tenant.map(|t| &*t.name),
        allowed: &allowed,
    };
    decide::route(
        &runtime.router,
        runtime,
        model,
        endpoint,
        view,
        raw,
        &req.headers,
        &caller,
        backend,
        known,
        None,
    )
    .await
}

/// What the route's pools' policies read about the request (the prefix chain and session key
/// only when one of them uses them).
fn features(
    ctx: &mut Ctx,
    runtime: &Runtime,
    chain: &Chain,
    endpoint: Endpoint,
    view: &RequestView<'_>,
    raw: &[u8],
    req: &RequestHeader,
) {
    let prompt = raw.get(view.prompt_span.clone()).unwrap_or_default();
    let f = &mut ctx.request.features;
    f.prompt_bytes = prompt.len();
    f.prompt_tokens = (prompt.len() as u64).div_ceil(4);
    let pools = || chain.iter().map(|s| s.pool as usize);
    if pools().any(|p| runtime.pools[p].policy.wants_prefix()) {
        f.prefix_hashes = balance::prefix_hashes(endpoint, view, raw);
    }
    if let Some(p) = pools().find(|&p| runtime.pools[p].policy.wants_session()) {
        let header = &runtime.config.pools[p].session_header;
        f.session = req
            .headers
            .get(header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .or(view.user.as_deref().map(str::as_bytes))
            .map(balance::session_hash);
    }
}
