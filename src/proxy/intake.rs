//! Reading, parsing and routing an inference request before any upstream is chosen: the body
//! is read whole, parsed into the request view, routed ([`crate::routing`]), admitted under
//! the tenant's limits, and the body to forward is prepared for the route's first pool.

use std::sync::Arc;

use http::HeaderName;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::body::{self, BodyError};
use super::ctx::Routed;
use super::{tenancy, Ctx};
use crate::balance;
use crate::openai::error::echo;
use crate::openai::{request, ApiError, Endpoint, RequestView};
use crate::routing::{prefs, Ask, Chain, Prefs, Refusal, Route};
use crate::state::Runtime;

const MAX_TTFT: HeaderName = HeaderName::from_static(prefs::MAX_TTFT_HEADER);

/// Reads, parses and routes an inference request; the body to forward lands in `ctx`.
pub(super) async fn admit(
    session: &mut Session,
    ctx: &mut Ctx,
    runtime: Arc<Runtime>,
    endpoint: Endpoint,
) -> Result<(), BodyError> {
    let limits = &runtime.config.limits;
    let raw = body::read(
        session,
        limits.max_body_size,
        runtime.config.timeouts.request_body,
    )
    .await?;
    let view = RequestView::parse(&raw).map_err(BodyError::Reject)?;
    let route = decide(session.req_header(), ctx, &runtime, endpoint, &view, &raw)
        .map_err(BodyError::Reject)?;
    if let Some(Some(counter)) = runtime.decisions.get(route.decision as usize) {
        counter.inc();
    }
    ctx.request.stream = view.stream;
    features(
        ctx,
        &runtime,
        &route.chain,
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
    tenancy::admit(&runtime, ctx, endpoint, &view).map_err(BodyError::Reject)?;
    let pool = ctx.routed.as_ref().map_or(0, Routed::pool_index);
    ctx.request.body = request::replace_model(
        &ctx.request.raw_body,
        ctx.request.model_span.clone(),
        &runtime.pools[pool].served_model_json,
    );
    Ok(())
}

/// Resolves the model the request names and asks the router where it goes.
fn decide(
    req: &RequestHeader,
    ctx: &Ctx,
    runtime: &Runtime,
    endpoint: Endpoint,
    view: &RequestView<'_>,
    raw: &[u8],
) -> Result<Route, ApiError> {
    let router = &runtime.router;
    let not_found = || ApiError::ModelNotFound {
        model: echo(&view.model),
    };
    let tenant = ctx.tenancy.tenant.and_then(|t| runtime.tenants.list.get(t));
    let allowed = |m: usize| tenant.is_none_or(|t| t.allows(m));
    let Some(model) = router.resolve(&view.model) else {
        return Err(not_found());
    };
    if !allowed(model) {
        if let Some(t) = tenant {
            t.metrics.reject("model_not_found");
        }
        // The same answer as for a model that does not exist.
        return Err(not_found());
    }
    let headers = &req.headers;
    let max_ttft = headers.get(MAX_TTFT);
    let prefs = if view.preferences.iter().any(Option::is_some) || max_ttft.is_some() {
        let [models, provider, ttft] = view.preferences;
        Prefs::parse(models, provider, ttft, max_ttft, |name| {
            router.resolve(name).filter(|&m| allowed(m))
        })
        .map_err(|r| refused(r, &view.model))?
    } else {
        Prefs::default()
    };
    let ask = Ask {
        model,
        name: &view.model,
        endpoint,
        view,
        body: raw,
        headers,
        tenant: tenant.map(|t| &*t.name),
        allowed: &allowed,
        prefs: &prefs,
    };
    router
        .decide(&ask, runtime, None)
        .map_err(|r| refused(r, &view.model))
}

/// The client's answer to a request the router could not place.
fn refused(r: Refusal, model: &str) -> ApiError {
    match r {
        Refusal::UnknownModel { name } => ApiError::ModelNotFound { model: echo(&name) },
        Refusal::NotAllowed => ApiError::ModelNotFound { model: echo(model) },
        Refusal::ContextLengthExceeded { needed, largest } => ApiError::ContextLengthExceeded {
            needed,
            window: largest,
        },
        Refusal::OverMaxPrice { max } => ApiError::OverMaxPrice {
            prompt: max.input_per_mtok.to_string(),
            completion: max.output_per_mtok.to_string(),
        },
        Refusal::NoRule => ApiError::NoMatchingRoute { model: echo(model) },
        Refusal::BadPreference { param, message } => ApiError::invalid(message, Some(param)),
    }
}

/// What the route's pools' policies read about the request (the prefix chain and session key
/// only when one of them uses them).
fn features(
    ctx: &mut Ctx,
    runtime: &Runtime,
    chain: &Chain,
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
        f.prefix_hashes = balance::prefix_hashes(prompt);
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
