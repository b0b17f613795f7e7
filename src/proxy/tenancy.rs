//! The request path's side of tenants and limits: who is calling (before the body is read),
//! whether the request fits (after it is parsed), and the accounting when it ends.

use pingora_proxy::Session;

use super::Ctx;
use crate::config::shared::OnError;
use crate::limits::budget::{self, Period};
use crate::limits::{AuthError, Refusal, RefusalReason};
use crate::openai::{request, ApiError, Endpoint, RequestView};
use crate::state::{Runtime, Shared};
use crate::upstream;

/// Per-IP request rate and the API key, before any body is read.
pub fn identify(
    shared: &Shared,
    runtime: &Runtime,
    session: &Session,
    ctx: &mut Ctx,
) -> Result<(), ApiError> {
    let req = session.req_header();
    if let Some(per_second) = runtime.config.limits.requests_per_second_per_ip {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if ip.is_some_and(|ip| !shared.per_ip.request(ip, per_second)) {
            return Err(ApiError::IpRateLimited);
        }
    }
    let authorization = req
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    ctx.tenancy.tenant = runtime
        .tenants
        .identify(authorization)
        .map_err(|e| match e {
            AuthError::Missing => ApiError::MissingApiKey,
            AuthError::Invalid => ApiError::InvalidApiKey,
        })?;
    ctx.tenancy.name = ctx
        .tenancy
        .tenant
        .and_then(|t| runtime.tenants.list.get(t))
        .map(|t| t.name.clone());
    Ok(())
}

/// Asks a streaming server for usage, and admits the routed request under every limit that
/// applies: the tenant's, and those on the model it named and on the model it was routed to.
pub async fn admit(
    shared: &Shared,
    runtime: &Runtime,
    ctx: &mut Ctx,
    endpoint: Endpoint,
    view: &RequestView<'_>,
) -> Result<(), ApiError> {
    let tenant = ctx.tenancy.tenant.and_then(|t| runtime.tenants.list.get(t));
    let (requested, model) = ctx.routed.as_ref().map_or((0, 0), |r| {
        (usize::from(r.route.requested), r.model_index())
    });
    if view.stream && endpoint != Endpoint::Embeddings && !view.include_usage {
        if let Some((body, span)) = request::ask_for_usage(
            &ctx.request.raw_body,
            view.stream_options_span.clone(),
            ctx.request.model_span.clone(),
        ) {
            ctx.request.raw_body = body;
            ctx.request.model_span = span;
            ctx.response.strip = Some(Default::default());
        }
    }
    let m = &runtime.models[model];
    let prompt_bytes = view.prompt_span.len() as f64;
    ctx.request.prompt_estimate = (prompt_bytes / m.bytes_per_token).ceil() as u64;
    let completion = match endpoint {
        Endpoint::Embeddings => 0,
        _ => view.max_tokens.unwrap_or(m.default_max_tokens),
    };
    // A cached answer counts one request and no tokens.
    let hit = super::cache::is_hit(ctx);
    let tokens = if hit {
        0
    } else {
        ctx.request.prompt_estimate.saturating_add(completion)
    };
    // A budget reserves what the request may cost: on the dearest pool its route may reach.
    let micros = match (tenant, &ctx.routed) {
        (Some(t), Some(routed)) if t.has_budget() && !hit => routed
            .route
            .chain
            .iter()
            .map(|step| {
                runtime.pools[step.pool as usize]
                    .cost
                    .micros(ctx.request.prompt_estimate, completion)
            })
            .max()
            .unwrap_or(0),
        _ => 0,
    };
    let local = || {
        runtime.tenants.admit(
            tenant,
            [requested, model],
            (tokens, micros),
            upstream::now_ms(),
            budget::unix_secs(),
        )
    };
    let answer = match &shared.fleet {
        None => local(),
        Some(store) => {
            // Boxed: the request future of a gateway without a shared store stays its size.
            let fleet = Box::pin(runtime.tenants.admit_shared(
                store,
                tenant,
                [requested, model],
                (tokens, micros),
                budget::unix_secs(),
            ))
            .await;
            match fleet {
                Some(answer) => answer,
                None => {
                    let on_error = store.settings.on_error;
                    shared
                        .metrics
                        .fleet
                        .fallbacks
                        .with_label_values(&[on_error.name()])
                        .inc();
                    match on_error {
                        OnError::Local => local(),
                        OnError::Open => Ok(Default::default()),
                        OnError::Closed => return Err(ApiError::LimitsUnavailable),
                    }
                }
            }
        }
    };
    match answer {
        Ok(admission) => {
            ctx.tenancy.rate_headers = Some(admission.headers);
            ctx.tenancy.admission = admission.holds().then(|| Box::new(admission));
            Ok(())
        }
        Err(refusal) => {
            if let Some(t) = tenant {
                t.metrics.reject(refusal.reason.label());
            }
            ctx.tenancy.rate_headers = Some(refusal.headers);
            Err(refused(&refusal, &m.name))
        }
    }
}

/// The 429 of a refusal, worded as OpenAI words its own.
fn refused(r: &Refusal, model: &str) -> ApiError {
    let secs = |ms: u64| ms.div_ceil(1000).max(1);
    let (message, kind, code, retry_after_secs, retry) = match &r.reason {
        RefusalReason::Requests { wait_ms } => (
            format!(
                "Rate limit reached for {model} on requests per minute. Please try again in {}s.",
                secs(*wait_ms)
            ),
            "requests",
            "rate_limit_exceeded",
            secs(*wait_ms),
            true,
        ),
        RefusalReason::Tokens { wait_ms } => (
            format!(
                "Rate limit reached for {model} on tokens per minute. Please try again in {}s.",
                secs(*wait_ms)
            ),
            "tokens",
            "rate_limit_exceeded",
            secs(*wait_ms),
            true,
        ),
        RefusalReason::TooLarge { limit, requested } => (
            format!(
                "Request too large for {model} on tokens per minute: Limit {limit}, Requested {requested}. Send a shorter prompt or a lower max_tokens."
            ),
            "tokens",
            "rate_limit_exceeded",
            60,
            false,
        ),
        RefusalReason::Concurrency { limit } => (
            format!("Too many concurrent requests for {model} (limit {limit}). Please retry when one has finished."),
            "requests",
            "rate_limit_exceeded",
            1,
            true,
        ),
        RefusalReason::Budget {
            period,
            retry_after_secs,
            held,
        } => {
            let period = match period {
                Period::Day => "day (UTC)",
                Period::Month => "month (UTC)",
            };
            let message = if *held {
                format!("The rest of your budget for this {period} is held by requests in flight; retry when they have finished.")
            } else {
                format!("Your budget for this {period} does not cover this request; requests are refused until it ends. Send a lower max_tokens, or wait.")
            };
            (
                message,
                "insufficient_quota",
                "budget_exceeded",
                *retry_after_secs,
                *held,
            )
        }
    };
    ApiError::RateLimited {
        message,
        kind,
        code,
        retry_after_secs,
        retry,
    }
}

/// Tokens a finished request used: the server's `usage` when it reported it, else what was
/// estimated or counted (`exact` false). Nothing when no answer came from a server.
pub fn used_tokens(ctx: &Ctx) -> (u64, u64, bool) {
    let (p, c) = (
        ctx.response.usage.prompt_tokens,
        ctx.response.usage.completion_tokens,
    );
    if let (Some(p), Some(c)) = (p, c) {
        return (p, c, true);
    }
    if ctx.response.first_byte.is_none()
        || !ctx
            .attempt
            .upstream_status
            .is_some_and(|s| (200..300).contains(&s))
    {
        return (0, 0, false);
    }
    let completion = match &ctx.response.sse {
        // One event per token, without the final `data: [DONE]`.
        Some(sse) => u64::from(sse.events.saturating_sub(u32::from(sse.done))),
        None => ctx.response.bytes.div_ceil(4),
    };
    (
        p.unwrap_or(ctx.request.prompt_estimate),
        c.unwrap_or(completion),
        false,
    )
}

/// Settles the reservation to what was used, and counts tokens and spend: the tenant's, the
/// requested model's, and what a virtual model's baseline would have cost.
pub fn settle(ctx: &mut Ctx) {
    let (prompt, completion, exact) = used_tokens(ctx);
    let cost = ctx.routed.as_ref().map(|r| r.pool().cost);
    let micros = cost.map_or(0, |c| c.micros(prompt, completion));
    if let Some(a) = &mut ctx.tenancy.admission {
        a.settle(
            prompt + completion,
            micros,
            upstream::now_ms(),
            budget::unix_secs(),
        );
    }
    let (Some(routed), Some(cost)) = (&ctx.routed, cost) else {
        return;
    };
    if !cost.is_free() {
        let requested = routed.requested();
        requested
            .cost
            .inc_by(cost.dollars_e6(prompt, completion) / 1e6);
        if let Some((counter, baseline)) = &requested.baseline {
            counter.inc_by(baseline.dollars_e6(prompt, completion) / 1e6);
        }
    }
    let Some(tenant) = ctx
        .tenancy
        .tenant
        .and_then(|t| routed.runtime.tenants.list.get(t))
    else {
        return;
    };
    tenant
        .metrics
        .tokens(routed.model_index(), prompt, completion, exact);
    tenant.spend(micros);
}
