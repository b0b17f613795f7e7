//! Reading, parsing and routing an inference request before any upstream is chosen.

use std::sync::Arc;

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::body::{self, BodyError};
use super::ctx::Routed;
use super::{tenancy, Ctx};
use crate::balance;
use crate::openai::{request, ApiError, Endpoint, RequestView};
use crate::state::Runtime;

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
    let Some(model) = runtime.routes.resolve(&view.model) else {
        return Err(BodyError::Reject(ApiError::ModelNotFound {
            model: crate::openai::error::echo(&view.model),
        }));
    };
    let pool = runtime.models[model].pool;
    ctx.request.stream = view.stream;
    features(ctx, &runtime, pool, &view, &raw, session.req_header());
    ctx.request.model_span = view.model_span.clone();
    ctx.request.raw_body = raw.clone();
    ctx.routed = Some(Routed {
        runtime: runtime.clone(),
        model,
        pool,
        fallbacks_used: 0,
    });
    tenancy::admit(&runtime, ctx, model, endpoint, &view).map_err(BodyError::Reject)?;
    ctx.request.body = request::replace_model(
        &ctx.request.raw_body,
        ctx.request.model_span.clone(),
        &runtime.pools[pool].served_model_json,
    );
    Ok(())
}

/// What the pool's policy reads about the request (the prefix chain and session key only
/// when it uses them).
fn features(
    ctx: &mut Ctx,
    runtime: &Runtime,
    pool: usize,
    view: &RequestView<'_>,
    raw: &[u8],
    req: &RequestHeader,
) {
    let prompt = raw.get(view.prompt_span.clone()).unwrap_or_default();
    let f = &mut ctx.request.features;
    f.prompt_bytes = prompt.len();
    f.prompt_tokens = (prompt.len() as u64).div_ceil(4);
    let policy = runtime.pools[pool].policy;
    if policy.wants_prefix() {
        f.prefix_hashes = balance::prefix_hashes(prompt);
    }
    if policy.wants_session() {
        let header = &runtime.config.pools[pool].session_header;
        f.session = req
            .headers
            .get(header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .or(view.user.as_deref().map(str::as_bytes))
            .map(balance::session_hash);
    }
}
