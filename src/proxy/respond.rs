//! Answers the gateway writes itself: the models list and OpenAI-shaped errors.

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::Ctx;
use crate::openai::ApiError;

fn header(status: u16, len: usize, ctx: &Ctx) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", len)?;
    if let Some(id) = &ctx.request_id {
        resp.insert_header("x-request-id", id.clone())?;
    }
    Ok(resp)
}

/// Writes a complete JSON response.
pub async fn json(session: &mut Session, ctx: &mut Ctx, status: u16, body: Bytes) -> Result<()> {
    let resp = header(status, body.len(), ctx)?;
    ctx.answered = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes an error in OpenAI's shape, with `Retry-After`/`Allow` where they apply, and closes
/// the connection when the request body may not have been read completely.
pub async fn error(session: &mut Session, ctx: &mut Ctx, e: &ApiError) -> Result<()> {
    let body = e.body();
    let mut resp = header(e.status(), body.len(), ctx)?;
    if let Some(secs) = e.retry_after() {
        resp.insert_header("retry-after", secs)?;
    }
    if e.should_not_retry() {
        resp.insert_header("x-should-retry", "false")?;
    }
    if let ApiError::MethodNotAllowed { allow, .. } = e {
        resp.insert_header("allow", *allow)?;
    }
    if e.status() == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(h) = &ctx.rate_headers {
        super::headers::rate_limits(&mut resp, h)?;
    }
    if e.closes_connection() {
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    ctx.answered = Some(e.status());
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
