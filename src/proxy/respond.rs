//! Answers the gateway writes itself: the models list and OpenAI-shaped errors.

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use http::header::{
    HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};

use super::{headers, Ctx};
use crate::openai::ApiError;

fn header(status: u16, len: usize, ctx: &Ctx) -> Result<ResponseHeader> {
    typed_header(status, "application/json", len, ctx)
}

/// The head of an answer the gateway writes itself: its type and length, the request id, the
/// route and CORS.
pub(super) fn typed_header(
    status: u16,
    content_type: &'static str,
    len: usize,
    ctx: &Ctx,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build_no_case(status, Some(10))?;
    headers::edit_response(&mut resp, |h| {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(id) = &ctx.request.request_id {
            h.insert(headers::X_REQUEST_ID, id.clone());
        }
        if let Some(routed) = &ctx.routed {
            headers::route(h, routed);
        }
        super::cors::answer(h, ctx);
    });
    Ok(resp)
}

/// `GET /v1/models` (`one`: false) or `GET /v1/models/{id}` as the caller's tenant sees them:
/// answered (`None`), or the error to answer.
pub async fn models(
    session: &mut Session,
    ctx: &mut Ctx,
    runtime: &crate::state::Runtime,
    one: bool,
) -> Result<Option<ApiError>> {
    let list = ctx
        .tenancy
        .tenant
        .and_then(|t| runtime.tenants.list.get(t))
        .map_or_else(|| runtime.models_body.clone(), |t| t.models_body.clone());
    if !one {
        json(session, ctx, 200, list).await?;
        return Ok(None);
    }
    let path = session.req_header().uri.path().to_owned();
    let id = &path["/v1/models/".len()..];
    match model_entry(&list, id) {
        Some(body) => {
            json(session, ctx, 200, body).await?;
            Ok(None)
        }
        None => Ok(Some(ApiError::ModelNotFound {
            model: crate::openai::error::echo(id),
        })),
    }
}

/// The entry of `id` (percent-decoded: `meta-llama%2FLlama-3.1-8B` names
/// `meta-llama/Llama-3.1-8B`) in a models list body, as `GET /v1/models/{id}` answers it.
pub fn model_entry(list: &[u8], id: &str) -> Option<Bytes> {
    let id = percent_decode(id)?;
    let list: serde_json::Value = serde_json::from_slice(list).ok()?;
    let entry = list["data"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id.as_str())?;
    serde_json::to_vec(entry).ok().map(Bytes::from)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Writes a complete JSON response.
pub async fn json(session: &mut Session, ctx: &mut Ctx, status: u16, body: Bytes) -> Result<()> {
    let resp = header(status, body.len(), ctx)?;
    ctx.response.answered = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes an error in OpenAI's shape, with `Retry-After`/`Allow` where they apply, and closes
/// the connection when the request body may not have been read completely.
pub async fn error(session: &mut Session, ctx: &mut Ctx, e: &ApiError) -> Result<()> {
    let body = e.body();
    let mut resp = header(e.status(), body.len(), ctx)?;
    let closes = e.closes_connection();
    headers::edit_response(&mut resp, |h| {
        if let Some(secs) = e.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(retry) = e.should_retry() {
            let value = if retry { "true" } else { "false" };
            h.insert(X_SHOULD_RETRY, HeaderValue::from_static(value));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = e {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if e.status() == 401 {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(r) = &ctx.tenancy.rate_headers {
            headers::rate_limits(h, r);
        }
        if closes {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    });
    if closes {
        session.set_keepalive(None);
    }
    ctx.response.answered = Some(e.status());
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
