//! The request path's side of the response cache: whether a request may be served from it
//! or stored in it, the answer of a hit, and the collection of a miss's answer as the client
//! receives it. A model without `cache` costs a request one branch.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL};
use http::HeaderName;
use pingora_error::Result;
use pingora_proxy::Session;

use super::ctx::{CacheState, Fill};
use super::{headers, Ctx};
use crate::cache::{self, Entry};
use crate::openai::ApiError;
use crate::state::Shared;

pub const X_SWITCHYARD_CACHE: HeaderName = HeaderName::from_static("x-switchyard-cache");

fn has(value: Option<&HeaderValue>, directive: &str) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',')
            .any(|d| d.trim().eq_ignore_ascii_case(directive))
    })
}

/// Whether the requested model has a cache.
pub fn applies(ctx: &Ctx) -> bool {
    ctx.routed.as_ref().is_some_and(|r| {
        r.runtime
            .config
            .models
            .get(usize::from(r.route.requested))
            .is_some_and(|m| m.cache.is_some())
    })
}

/// Looks the request up when its model has a cache: sets `ctx.cache`. `x-switchyard-cache:
/// use` (default) | `bypass` (neither read nor stored) | `refresh` (not read, stored);
/// `Cache-Control: no-store` from the client: not stored, `no-cache`: not read.
pub async fn lookup(
    shared: &Shared,
    ctx: &mut Ctx,
    raw: &Bytes,
    req: &pingora_http::RequestHeader,
    connector: &pingora_core::connectors::http::Connector,
) -> Result<(), ApiError> {
    let Some(routed) = &ctx.routed else {
        return Ok(());
    };
    let requested = usize::from(routed.route.requested);
    let Some(spec) = routed
        .runtime
        .config
        .models
        .get(requested)
        .and_then(|m| m.cache)
    else {
        return Ok(());
    };
    let model = routed.requested().name.as_str();
    let (mut read, mut store) = match req.headers.get(&X_SWITCHYARD_CACHE).map(|v| v.as_bytes()) {
        None | Some(b"use") => (true, true),
        Some(b"refresh") => (false, true),
        Some(b"bypass") => (false, false),
        Some(_) => {
            return Err(ApiError::invalid(
                "x-switchyard-cache must be one of: use, bypass, refresh",
                None,
            ))
        }
    };
    let control = req.headers.get(CACHE_CONTROL);
    store &= !has(control, "no-store");
    read &= !has(control, "no-cache");
    let body: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    let lookups = &shared.metrics.cache.lookups;
    if !(read || store) || !(spec.always || cache::deterministic(&body)) {
        lookups.with_label_values(&[model, "bypass"]).inc();
        ctx.cache = Some(Box::new(CacheState {
            key: 0,
            result: "bypass",
            hit: None,
            fill: None,
        }));
        return Ok(());
    }
    let scope = (!spec.shared_across_tenants).then(|| ctx.tenancy.name.as_deref().unwrap_or(""));
    let key = cache::key(scope, model, &body);
    let mut hit = if read {
        shared.cache.get(key).await
    } else {
        None
    };
    let mut result = if hit.is_some() { "hit" } else { "miss" };
    // Not there as written: an answer to a prompt that means nearly the same, when the model
    // asks for it and the prompt's embedding comes within the budget.
    let mut semantic = None;
    if let (None, Some(sem), Some(text)) = (&hit, spec.semantic, cache::prompt_text(&body)) {
        let calls = super::call::Calls {
            runtime: &routed.runtime,
            connector,
            request_id: ctx.request.request_id.as_ref(),
        };
        if let Some(vector) = embed(&calls, sem.model, &text, sem.budget).await {
            let partition = cache::partition(scope, model, &body);
            if read {
                if let Some((near, _)) =
                    shared
                        .cache
                        .semantic
                        .nearest(partition, &vector, sem.similarity)
                {
                    hit = shared.cache.get(near).await;
                    if hit.is_some() {
                        result = "semantic_hit";
                    }
                }
            }
            semantic = Some((partition, vector, sem.entries));
        }
    }
    lookups.with_label_values(&[model, result]).inc();
    ctx.cache = Some(Box::new(CacheState {
        key,
        result: if hit.is_some() { "hit" } else { "miss" },
        fill: (hit.is_none() && store).then(|| Fill {
            body: BytesMut::new(),
            max: spec.max_entry,
            ttl: spec.ttl,
            semantic,
        }),
        hit,
    }));
    Ok(())
}

/// The unit-length embedding of `text` by `model`, within `budget`; `None` when it did not
/// come (the request then goes on without a semantic lookup).
async fn embed(
    calls: &super::call::Calls<'_>,
    model: usize,
    text: &str,
    budget: std::time::Duration,
) -> Option<Box<[f32]>> {
    use crate::routing::classify::Backend as _;
    let body = |served: &str| {
        serde_json::json!({"model": served, "input": text})
            .to_string()
            .into_bytes()
    };
    let answer = tokio::time::timeout(budget, calls.post(model, "/v1/embeddings", &body))
        .await
        .ok()?
        .ok()?;
    let mut v = crate::routing::classify::run::first_vector(&answer)?;
    crate::routing::classify::knn::normalise(&mut v);
    Some(v.into_boxed_slice())
}

/// Whether the request is answered from the cache (it takes no tokens and costs nothing).
pub fn is_hit(ctx: &Ctx) -> bool {
    ctx.cache.as_ref().is_some_and(|c| c.hit.is_some())
}

/// Writes a hit's answer.
pub async fn answer(session: &mut Session, ctx: &mut Ctx, entry: &Entry) -> Result<()> {
    let kind = if entry.sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut resp = super::respond::typed_header(200, kind, entry.body.len(), ctx)?;
    headers::edit_response(&mut resp, |h| {
        h.insert(X_SWITCHYARD_CACHE, HeaderValue::from_static("hit"));
        if let Some(r) = &ctx.tenancy.rate_headers {
            headers::rate_limits(h, r);
        }
    });
    ctx.response.answered = Some(200);
    ctx.response.bytes = entry.body.len() as u64;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(entry.body.clone()), true)
        .await
}

/// The response header of a cacheable model's answer: says what the cache did, and gives up
/// collecting an answer that must not be stored (not a 200, or `no-store` from the server).
pub fn response(h: &mut http::HeaderMap, status: u16, ctx: &mut Ctx) {
    let Some(state) = &mut ctx.cache else { return };
    if status != 200 || has(h.get(CACHE_CONTROL), "no-store") {
        state.fill = None;
    }
    h.insert(X_SWITCHYARD_CACHE, HeaderValue::from_static(state.result));
}

/// A chunk the client was sent: collected while it fits `max_entry`.
pub fn chunk(body: &Option<Bytes>, ctx: &mut Ctx) {
    let Some(state) = &mut ctx.cache else { return };
    let Some(fill) = &mut state.fill else { return };
    if let Some(b) = body {
        if fill.body.len() + b.len() > fill.max {
            state.fill = None;
        } else {
            fill.body.extend_from_slice(b);
        }
    }
}

/// At the end: a complete, error-free answer is stored (a stream only when the client got
/// its `[DONE]`).
pub fn finish(shared: &Shared, ctx: &mut Ctx, status: u16, failed: bool) {
    let Some((key, fill)) = ctx
        .cache
        .as_mut()
        .and_then(|s| Some((s.key, s.fill.take()?)))
    else {
        return;
    };
    let sse = ctx.response.sse.is_some();
    let whole = if sse {
        super::relay::relayed_whole(ctx)
    } else {
        !failed
    };
    if status != 200 || !whole || ctx.response.error.is_some() || ctx.response.malformed {
        return;
    }
    if let Some((partition, vector, entries)) = fill.semantic {
        shared
            .cache
            .semantic
            .insert(partition, vector, key, fill.ttl, entries);
    }
    shared
        .cache
        .put(key, Entry::new(sse, fill.body.freeze(), fill.ttl));
}
